"""Apache bench (ab): the command line the suite runs and a parser for its report."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AbResult:
    """What ab reported. ``failed`` is the sum of the four kinds below it."""

    complete: int
    failed: int
    failed_connect: int
    failed_receive: int
    failed_length: int
    failed_exceptions: int
    non_2xx: int
    write_errors: int
    keepalive_requests: int
    requests_per_second: float
    time_taken_s: float

    @property
    def successful(self) -> int:
        """Requests answered with a 2xx. ab counts receive and length failures inside
        "Complete requests" but connect and exception failures never (and a reset connection
        as both receive and exception), so only the former come off ``complete``."""
        return self.complete - self.failed_receive - self.failed_length - self.non_2xx

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.complete} complete, {self.failed} failed (connect {self.failed_connect}, "
            f"receive {self.failed_receive}, length {self.failed_length}, exceptions "
            f"{self.failed_exceptions}), {self.non_2xx} non-2xx, {self.requests_per_second:.1f} "
            f"req/s over {self.time_taken_s:.1f} s"
        )


class AbParseError(ValueError):
    pass


def _int(pattern: str, text: str, default: int | None = None) -> int:
    m = re.search(pattern, text, re.MULTILINE)
    if m is None:
        if default is None:
            raise AbParseError(f"ab output has no match for {pattern!r}")
        return default
    return int(m.group(1))


def parse_ab_output(text: str) -> AbResult:
    """Parse ab's report. Lines that ab prints only when non-zero default to 0.

    Raises AbParseError when the report is missing (ab died before printing it).
    """
    complete = _int(r"^Complete requests:\s+(\d+)", text)
    failed = _int(r"^Failed requests:\s+(\d+)", text)
    kinds = re.search(
        r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", text
    )
    connect, receive, length, exceptions = (int(g) for g in kinds.groups()) if kinds else (0,) * 4
    if kinds is None and failed:
        raise AbParseError("ab reports failed requests but not their kinds")
    rps = re.search(r"^Requests per second:\s+([\d.]+)", text, re.MULTILINE)
    taken = re.search(r"^Time taken for tests:\s+([\d.]+)", text, re.MULTILINE)
    return AbResult(
        complete=complete,
        failed=failed,
        failed_connect=connect,
        failed_receive=receive,
        failed_length=length,
        failed_exceptions=exceptions,
        non_2xx=_int(r"^Non-2xx responses:\s+(\d+)", text, 0),
        write_errors=_int(r"^Write errors:\s+(\d+)", text, 0),
        keepalive_requests=_int(r"^Keep-Alive requests:\s+(\d+)", text, 0),
        requests_per_second=float(rps.group(1)) if rps else 0.0,
        time_taken_s=float(taken.group(1)) if taken else 0.0,
    )


def ab_command(url: str, concurrency: int, max_seconds: float, keepalive: bool,
               method: str = "GET", body_file: str | None = None,
               content_type: str = "text/plain") -> list[str]:
    """ab's argv: -l (answers differ in length: versions, counters), -r (go on after receive
    errors, count them), -t as the upper bound; -n after -t, or -t caps it at 50000.
    -n allows 5000 req/s for the whole bound (ab allocates its stats for -n up front).

    A POST sends the file ``body_file`` (a path in the guest, written there before ab starts
    by the load's guest program) with ``-p FILE -T TYPE``."""
    if method not in ("GET", "POST"):
        raise ValueError(f"ab_command: method must be GET or POST, not {method!r}")
    if (method == "POST") != (body_file is not None):
        raise ValueError("ab_command: a POST needs body_file (and a GET takes none)")
    cmd = ["ab", "-l", "-r", "-c", str(concurrency), "-t", f"{max_seconds:.0f}",
           "-n", str(int(max_seconds * 5000)), "-s", "30"]
    if keepalive:
        cmd.append("-k")
    if body_file is not None:
        cmd += ["-p", body_file, "-T", content_type]
    return [*cmd, url]

