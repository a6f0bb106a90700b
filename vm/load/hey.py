"""hey, the second client beside ab: the command line the suite runs and a parser for its report.

Why hey and not wrk (both are packaged in Debian from bookworm on; hey 0.1.4, wrk 4.1):
hey's requests go through Go's ``net/http`` client, the HTTP stack of Go programs and, in
what matters here, of browsers: it keeps connections alive and reuses them, and when a reused
connection dies before any byte of the answer arrived, it sends the request again on a new
connection if the request is idempotent (GET, HEAD, OPTIONS, TRACE, or one with an
``Idempotency-Key``) and has no body it cannot rewind. hey's POST carries a body with no
``GetBody``, so Go never sends a POST twice. wrk (like ab) never resends: a request whose
connection died is an error. The suite's question is what a client of the kind users have
sees, and what the server did that no client saw answered: hey answers both, and with ab beside
it the report has the client that resends and the one that does not.

What hey reports (its default text summary, ``requester/print.go``): the answers by status
(``Status code distribution:``, ``[200]\t7874 responses``) and the errors by their Go message
(``Error distribution:``, ``[11]\tPost "http://…": read tcp …: connection reset by peer``).
A message carries the client's own address, so one kind is spread over many lines: the parser
sums them by kind (``ERROR_KINDS``). It prints no total: answered + failed is every request it
ended. The status distribution is empty when no request was answered, and counts at most the
first 1,000,000 answers (``maxRes``).

How hey stops: on ``-z`` running out or on SIGINT each worker finishes the request it is in
(bounded by ``-t``) and sends no more; then hey prints the report. So a stopped hey leaves no
request of its own unended: every request it sent is in the report, answered or failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

DEFAULT_CONTENT_TYPE = "text/plain"


class ErrorKind(StrEnum):
    """What kind of failure a hey error line is (the order is the order of the tests)."""

    RESET = "reset"  # connection reset by peer (a RST: the server died or closed hard)
    EOF = "eof"  # the connection closed before a full answer (Go: "EOF", "unexpected EOF")
    REFUSED = "refused"  # nothing listened: connect refused
    TIMEOUT = "timeout"  # -t ran out (Client.Timeout, i/o timeout, deadline exceeded)
    OTHER = "other"  # anything else (a malformed answer, a broken pipe, ...)


# (kind, what in Go's message says it), tried in order: the first match wins.
ERROR_KINDS: tuple[tuple[ErrorKind, re.Pattern[str]], ...] = (
    (ErrorKind.RESET, re.compile(r"connection reset by peer")),
    (ErrorKind.REFUSED, re.compile(r"connection refused")),
    (ErrorKind.TIMEOUT, re.compile(r"Client\.Timeout exceeded|i/o timeout|deadline exceeded"
                                   r"|timeout awaiting")),
    (ErrorKind.EOF, re.compile(r"(?:^|: )(?:unexpected )?EOF$|server closed idle connection")),
)


def error_kind(message: str) -> ErrorKind:
    """The kind of one of hey's error messages (``ERROR_KINDS``; OTHER when none matches)."""
    for kind, pattern in ERROR_KINDS:
        if pattern.search(message):
            return kind
    return ErrorKind.OTHER


@dataclass(frozen=True)
class HeyResult:
    """What hey reported. ``answered`` is every request that got an answer (any status);
    ``failed_by_kind`` sums the error lines by ``ErrorKind`` (every kind present, 0 if none)."""

    status_counts: dict[int, int]
    failed_by_kind: dict[str, int]
    errors: dict[str, int] = field(default_factory=dict)  # hey's own lines: message -> count
    total_s: float = 0.0
    requests_per_second: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.status_counts.values())

    @property
    def successful(self) -> int:
        """Answers with a 2xx status."""
        return sum(n for code, n in self.status_counts.items() if 200 <= code < 300)

    @property
    def non_2xx(self) -> int:
        return self.answered - self.successful

    @property
    def failed(self) -> int:
        return sum(self.failed_by_kind.values())

    @property
    def requests(self) -> int:
        """Every request hey ended: answered or failed (hey prints no total of its own)."""
        return self.answered + self.failed

    def as_dict(self) -> dict[str, object]:
        return {
            "answered": self.answered, "successful": self.successful, "non_2xx": self.non_2xx,
            "failed": self.failed, "requests": self.requests,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "failed_by_kind": dict(self.failed_by_kind), "total_s": self.total_s,
            "requests_per_second": self.requests_per_second,
        }

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in self.failed_by_kind.items() if n)
        return (f"{self.answered} answered ({self.non_2xx} non-2xx), {self.failed} failed"
                f"{f' ({kinds})' if kinds else ''}, {self.requests_per_second:.1f} req/s over"
                f" {self.total_s:.1f} s")


class HeyParseError(ValueError):
    """hey printed no report, or not the parts the suite reads (one line: what is missing)."""


_TOTAL = re.compile(r"^\s*Total:\s+([\d.]+) secs$", re.MULTILINE)
_RPS = re.compile(r"^\s*Requests/sec:\s+([\d.]+|NaN|\+Inf)$", re.MULTILINE)
_STATUS_HEAD = "Status code distribution:"
_ERROR_HEAD = "Error distribution:"
_STATUS_LINE = re.compile(r"^\s+\[(\d{3})\]\s+(\d+) responses$")
_ERROR_LINE = re.compile(r"^\s+\[(\d+)\]\t(.*)$")


def _section(lines: list[str], head: str) -> list[str] | None:
    """The indented lines under ``head`` (None when the head is not there)."""
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == head)
    except StopIteration:
        return None
    body = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        body.append(line)
    return body


def parse_hey_output(text: str) -> HeyResult:
    """Parse hey's text summary (``hey`` without ``-o csv``).

    Raises HeyParseError naming what is missing when the summary is not there (hey died, or
    printed only its usage) or a line under its distributions is not one hey writes."""
    lines = text.splitlines()
    total = _TOTAL.search(text)
    if total is None or "Summary:" not in text:
        raise HeyParseError("hey output has no 'Summary:' with 'Total: N secs' (hey printed "
                            "no report: did it die, or print its usage?)")
    status_lines = _section(lines, _STATUS_HEAD)
    if status_lines is None:
        raise HeyParseError(f"hey output has no {_STATUS_HEAD!r} (the report is cut short)")
    status: dict[int, int] = {}
    for line in status_lines:
        m = _STATUS_LINE.match(line)
        if m is None:
            raise HeyParseError(f"hey's status distribution has a line it does not write:"
                                f" {line.strip()!r}")
        status[int(m.group(1))] = int(m.group(2))  # a Go map: one line a code
    errors: dict[str, int] = {}
    by_kind = {kind.value: 0 for kind in ErrorKind}
    for line in _section(lines, _ERROR_HEAD) or []:
        m = _ERROR_LINE.match(line)
        if m is None:
            raise HeyParseError(f"hey's error distribution has a line it does not write:"
                                f" {line.strip()!r}")
        count, message = int(m.group(1)), m.group(2)
        errors[message] = errors.get(message, 0) + count
        by_kind[error_kind(message).value] += count
    rps = _RPS.search(text)
    rate = float(rps.group(1)) if rps and rps.group(1) not in ("NaN", "+Inf") else 0.0
    return HeyResult(status_counts=status, failed_by_kind=by_kind, errors=errors,
                     total_s=float(total.group(1)), requests_per_second=rate)


def hey_command(url: str, concurrency: int, max_seconds: float, keepalive: bool,
                method: str = "GET", body_file: str | None = None,
                content_type: str = DEFAULT_CONTENT_TYPE, host_header: str | None = None,
                timeout_s: int = 30) -> list[str]:
    """hey's argv: ``-z`` as the upper bound (the suite stops it earlier with SIGINT, and hey
    prints its report), ``-c`` workers, ``-t`` the bound of one request (hey's default is 20 s;
    the same 30 s as ab's ``-s``), keep-alive unless ``-disable-keepalive``.

    A POST sends the file ``body_file`` (a path in the guest, written there before hey starts:
    ``-D``) with ``-T content_type``. ``-disable-compression``: the answer is read as sent."""
    if method not in ("GET", "POST"):
        raise ValueError(f"hey_command: method must be GET or POST, not {method!r}")
    if (method == "POST") != (body_file is not None):
        raise ValueError("hey_command: a POST needs body_file (and a GET takes none)")
    if concurrency < 1 or max_seconds < 1 or timeout_s < 1:
        raise ValueError("hey_command: concurrency, max_seconds and timeout_s are at least 1")
    cmd = ["hey", "-c", str(concurrency), "-z", f"{max_seconds:.0f}s", "-t", str(timeout_s),
           "-disable-compression"]
    if method == "POST":
        assert body_file is not None
        cmd += ["-m", "POST", "-D", body_file, "-T", content_type]
    if host_header is not None:
        cmd += ["-host", host_header]
    if not keepalive:
        cmd.append("-disable-keepalive")
    return [*cmd, url]


def hey_unavailable(package_manager: str, fedora_release: int | None = None) -> str | None:
    """Why a box cannot run hey (a skip reason), or None when its recipe installs it.

    Debian packages hey (``hey``, bookworm on) and the suite's Debian boxes install it. The
    Fedora provisioning installs none: the suite knows no Fedora package of the hey command
    (none was looked up: the hosts the suite runs on reach no Fedora repository), so the hey
    runs skip on Fedora boxes and ab still runs there."""
    if package_manager == "apt":
        return None
    where = f"Fedora {fedora_release}" if fedora_release is not None else package_manager
    return (f"{where} packages no hey (Debian's 'hey' is the suite's second client): the hey "
            "runs are skipped on this box; ab still runs")


def hey_plan(second_client: str, keepalive: bool, package_manager: str,
             fedora_release: int | None = None) -> str | None:
    """Why hey does not run in a scenario (the report's words), or None when it runs.

    hey runs beside ab where connections are kept alive (``--second-client hey``, the
    default): its resend of a GET happens only on a reused connection, so without keep-alive
    it would show what ab shows. A box without hey (``hey_unavailable``) runs ab alone."""
    if second_client == "none":
        return "--second-client none"
    if not keepalive:
        return "hey runs in the keep-alive scenarios only (it resends on reused connections)"
    return hey_unavailable(package_manager, fedora_release)


def hey_problems(result: HeyResult | None, min_answered: int = 1) -> list[str]:
    """The zero-downtime verdict's lines about hey (none when it did not run): any failure or
    non-2xx answer, and a load too small to count (fewer than ``min_answered`` answers)."""
    if result is None:
        return []
    problems = []
    if result.failed or result.non_2xx:
        problems.append(f"hey saw failures: {result.describe()}")
    if result.successful < min_answered:
        problems.append(f"hey got only {result.successful} answers (at least {min_answered}"
                        " make a load)")
    return problems
