"""Load inside the guest during a reattach: ab plus the per-request probe (and hey beside ab).

Both run as transient systemd units (``systemd-run``) with ``RuntimeMaxSec``, so a stuck
client is killed by the guest's own service manager even if the harness is gone. ab's ``-t``
is only the upper bound: the run is stopped (SIGINT: ab prints its report) once the new version
has answered for a while, so the load provably spans the switch.

With ``hey=True`` the second client (``hey.py``: Go's HTTP stack, which resends an idempotent
request whose reused connection died) runs beside ab as its own unit, bounded the same way
(``-z`` and RuntimeMaxSec) and stopped the same way (SIGINT: it finishes the request each
worker is in and prints its report). A POST load (``method="POST"``) writes the body to
``BODY_FILE`` in the guest first; ab sends it with ``-p``, hey with ``-D``, the probe and the
long-lived clients from their own arguments (``client_args``).

Each of start, poll and stop is one call of the load's guest program (guest/load.py, shipped
once per boot beside probe.py), in one round trip, answered in JSON (vm/machine/guest_program.py).
The same round trips read the guest kernel's TCP counters (``kernel.NETSTAT``) before the load
starts and after it stops, and, when the service's unit is named, its journal since the load
start (the restart gap as the manager logged it, ``journal.py``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from pytest_portable_upgrade.core.config import LoadSettings
from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.core.resources import resource
from pytest_portable_upgrade.core.retry import retry
from pytest_portable_upgrade.load.ab import AbResult, ab_command, parse_ab_output
from pytest_portable_upgrade.load.hey import HeyResult, hey_command, parse_hey_output
from pytest_portable_upgrade.load.journal import (
    RestartGap,
    journal_argv,
    journal_restart_gap,
    parse_journal_json,
)
from pytest_portable_upgrade.load.kernel import (
    NETSTAT,
    Counts,
    counter_delta,
    not_read,
    tcp_counters,
)
from pytest_portable_upgrade.load.long_lived import HolderSummary, parse_holder_log, summarise
from pytest_portable_upgrade.load.timeline import (
    ProbeRecord,
    Timeline,
    parse_probe_log,
    parse_probe_skips,
)
from pytest_portable_upgrade.machine.guest_program import (
    GUEST_DIR,
    GuestProgram,
    Request,
    and_then,
    answers_of,
    printed_after,
)
from pytest_portable_upgrade.machine.machine import Machine

PROBE_SOURCE = resource("pytest_portable_upgrade.load", "guest/probe.py")
# The guest program of the load's steps (start, poll, stop; listeners and netstat).
PROGRAM = GuestProgram(resource("pytest_portable_upgrade.load", "guest/load.py"),
                       companions=(PROBE_SOURCE,))
# The long-lived keep-alive clients (their host-side summary: long_lived.py).
HOLD_CONNECTIONS_SOURCE = resource("pytest_portable_upgrade.load", "guest/hold_connections.py")
AB_UNIT = "pwt-ab.service"
PROBE_UNIT = "pwt-probe.service"
HOLDERS_UNIT = "pwt-holders.service"
HEY_UNIT = "pwt-hey.service"
BODY_FILE = f"{GUEST_DIR}/body"  # a POST's body, for ab -p and hey -D
# The stop's round trip: ab and hey waited for (60 s at most), each unit's stop (up to its
# stop timeout, guest/load.py STOP_TIMEOUT_S), the reads and the ``then`` command after it.
STOP_ROUND_TRIP_S = 480.0
AB_OUT, HEY_OUT = f"{GUEST_DIR}/ab.out", f"{GUEST_DIR}/hey.out"
PROBE_LOG, HOLDERS_LOG = f"{GUEST_DIR}/probe.jsonl", f"{GUEST_DIR}/holders.jsonl"


def load_steps(machine: Machine, *requests: Request, then: str | None = None,
               timeout: float = 120.0) -> tuple[list[dict[str, Any]], str]:
    """Send ``requests`` to the load's guest program in one round trip, ``then`` (a command)
    after them; their answers and what ``then`` printed. GuestError with the guest's words
    when a step fails."""
    result = machine.execute(and_then(PROGRAM.command(machine, list(requests)), then),
                             timeout=timeout)
    answers = answers_to(result.stdout, result.stderr, result.rc)
    return answers, printed_after(result.stdout) if then is not None else ""


def answers_to(out: str, err: str = "", rc: int = 0) -> list[dict[str, Any]]:
    """The answers the load's guest program printed in ``out`` (also when it ended another
    round trip); GuestError with the guest's words when a step failed."""
    answer = answers_of(out, err, rc)
    if not answer["ok"]:
        raise GuestError(f"the load's step {answer.get('step')}: {answer.get('error')}")
    answers: list[dict[str, Any]] = answer["answers"]
    return answers


@dataclass(frozen=True)
class LoadOutcome:
    ab: AbResult
    ab_output: str
    timeline: Timeline
    started: float  # guest epoch seconds
    stopped: float
    ab_command: str
    holders: HolderSummary | None = None
    # When ab's unit was started (guest epoch): after the probe and the holders, which under
    # TCG can take seconds. ab itself starts a moment later, so started + time taken is an
    # estimate of its end that is early, never late.
    ab_started: float | None = None
    # The kernel's TCP counters over the load (kernel.COUNTERS keys; None: not read).
    tcp: Counts = field(default_factory=not_read)
    # Old main process gone -> new one started, from the service's journal (None: not read,
    # or no restart in it); journal_read says whether it was read at all.
    journal_gap: RestartGap | None = None
    journal_read: bool = False
    # The second client (None: it did not run) and the method every client sent.
    hey: HeyResult | None = None
    hey_output: str = ""
    hey_command: str | None = None
    method: str = "GET"

    @property
    def ab_ended(self) -> float:
        return (self.ab_started if self.ab_started is not None else self.started) \
            + self.ab.time_taken_s

    @property
    def duration_s(self) -> float:
        return self.stopped - self.started


def dead_since(records: list[ProbeRecord], after: float) -> float:
    """Seconds the probe has seen only failures, counted from ``after`` or the last answer."""
    recent = [r for r in records if r.t >= after]
    if not recent or recent[-1].ok:
        return 0.0
    last_ok = max((r.t for r in recent if r.ok), default=after)
    return recent[-1].t - last_ok


class LoadRun:
    """ab -c N (optionally -k) against ``url`` and the probe, in the guest."""

    def __init__(self, machine: Machine, settings: LoadSettings, keepalive: bool,
                 url: str, probe_port: int, client_args: list[str], holders: int = 0,
                 service_unit: str | None = None, hey: bool = False, method: str = "GET",
                 body: str | None = None, content_type: str = "text/plain") -> None:
        """``client_args``: how the probe and the holders send the subject's request and read
        its answers (``Subject.client_args``, for the same ``method``); ``service_unit``: the
        service whose journal gives the restart gap (None: not read); ``hey``: run hey beside
        ab; ``method``, ``body``, ``content_type``: what ab and hey send (a POST's body is
        written to BODY_FILE in the guest)."""
        self.machine = machine
        self.service_unit = service_unit
        self.client_args = list(client_args)
        self.holders = holders
        self.settings = settings
        self.keepalive = keepalive
        self.url = url
        self.probe_port = probe_port
        self.started = 0.0
        self.ab_started = 0.0
        self._probe_text = ""  # the probe log read so far (whole lines)
        self._probe_offset = 0  # its length in bytes: where the next poll reads from
        self._tcp_before: Counts = not_read()
        self.then_output = ""  # what stop's ``then`` printed
        self.method = method
        self.body = body
        body_file = BODY_FILE if method == "POST" else None
        self.ab_argv = ab_command(url, settings.concurrency, settings.max_s, keepalive, method,
                                  body_file, content_type)
        self.hey_argv = hey_command(url, settings.concurrency, settings.max_s, keepalive,
                                    method, body_file, content_type) if hey else None
        # As the report and the log show them.
        self.command = shlex.join(self.ab_argv)
        self.hey_command = shlex.join(self.hey_argv) if self.hey_argv is not None else None

    def start(self) -> None:
        """Start the probe (and the long-lived holders), then ab, in one guest round trip.

        The guest programs are uploaded once per boot. ``started`` is the guest's clock before
        the probe starts, ``ab_started`` just before ab does."""
        self._ship_holders()
        answers, _ = load_steps(self.machine, self.start_request())
        self._started_with(answers[0])

    def start_request(self) -> Request:
        """The guest program's ``start``: every client unit stopped and its file removed, the
        body written (a POST), the counters read, then the probe, the holders, hey and ab."""
        bound = int(self.settings.max_s + 60)
        max_s = f"{self.settings.max_s:.0f}"
        clients: list[Request] = [{"unit": PROBE_UNIT, "bound": bound, "argv": [
            "python3", f"{GUEST_DIR}/probe.py", "--port", str(self.probe_port),
            *self.client_args, "--rate", f"{self.settings.probe_rate:g}",
            "--max-in-flight", str(self.settings.probe_max_in_flight),
            "--out", PROBE_LOG, "--max-seconds", max_s]}]
        if self.holders:
            clients.append({"unit": HOLDERS_UNIT, "bound": bound, "argv": [
                "python3", f"{GUEST_DIR}/hold_connections.py", "--port", str(self.probe_port),
                *self.client_args, "--connections", str(self.holders), "--out", HOLDERS_LOG,
                "--max-seconds", max_s]})
        if self.hey_argv is not None:
            clients.append({"unit": HEY_UNIT, "bound": bound, "stdout": HEY_OUT,
                            "argv": self.hey_argv})
        clients.append({"unit": AB_UNIT, "bound": bound, "stdout": AB_OUT,
                        "argv": self.ab_argv})
        return {"step": "start", "stop": [AB_UNIT, PROBE_UNIT, HOLDERS_UNIT, HEY_UNIT],
                "remove": [AB_OUT, PROBE_LOG, HOLDERS_LOG, HEY_OUT, BODY_FILE],
                "files": {BODY_FILE: self.body or ""} if self.method == "POST" else {},
                "netstat": NETSTAT, "clients": clients}

    def start_command(self) -> str:
        """``start``'s command, to run at the end of another round trip (the attach's);
        ``started_from`` then reads what it printed. Uploads the guest programs first."""
        self._ship_holders()
        return PROGRAM.command(self.machine, [self.start_request()])

    def _ship_holders(self) -> None:
        """The long-lived clients' script, once per boot, when this load has them."""
        if self.holders:
            self.machine.copy_from_host(HOLD_CONNECTIONS_SOURCE,
                                        f"{GUEST_DIR}/{HOLD_CONNECTIONS_SOURCE.name}",
                                        mode="0755", once=True)

    def started_from(self, out: str) -> None:
        """The clocks and the counters ``start_command`` printed (its answer line)."""
        self._started_with(answers_to(out)[0])

    def _started_with(self, answer: dict[str, Any]) -> None:
        self.started = float(answer["started"][PROBE_UNIT])
        self.ab_started = float(answer["started"][AB_UNIT])
        self._tcp_before = tcp_counters(answer.get("netstat"))
        self._probe_text, self._probe_offset = "", 0

    def poll(self) -> tuple[float, bool, str]:
        """One guest round trip: (guest clock, both clients still running, the probe log so
        far). Only what the probe wrote since the last poll travels, in whole lines."""
        answers, _ = load_steps(self.machine, {
            "step": "poll", "units": [AB_UNIT, PROBE_UNIT], "log": PROBE_LOG,
            "offset": self._probe_offset})
        answer = answers[0]
        self._probe_text += str(answer["log"])
        self._probe_offset = int(answer["offset"])
        states = answer["states"]
        running = all(states.get(u) in ("active", "activating") for u in (AB_UNIT, PROBE_UNIT))
        return float(answer["now"]), running, self._probe_text

    def wait_until_serving(self, greeting: str, for_seconds: float,
                           after: float | None = None) -> Timeline:
        """Wait until the probe has seen ``greeting`` answered for ``for_seconds``; bounded by
        the load's upper bound. Gives up early when, since ``after`` (guest epoch), the probe
        has seen nothing but errors for ``for_seconds``: the port is dead (a socket shipped in
        the image can be left inactive). Returns the timeline seen when the wait ended; the
        verdict says what is missing, never this wait."""
        seen: list[Timeline] = []

        def over(last_try: bool) -> bool:
            now, running, text = self.poll()
            records = parse_probe_log(text)
            seen[:] = [Timeline.build(records, self.started, "", greeting)]
            return (last_try or seen[0].answered_seconds_of(greeting) >= for_seconds
                    or (after is not None and dead_since(records, after) >= for_seconds)
                    or now - self.started >= self.settings.max_s - 2
                    or not running)  # a client ended by itself

        retry(over, timeout=self.settings.max_s, interval=1.0,
              what=f"{for_seconds:g} s of {greeting!r} under load")
        return seen[0]

    def stop(self, old: str, new: str, then: str | None = None) -> LoadOutcome:
        """SIGINT ab (it prints its report and exits), stop the probe, collect both, the
        kernel's counters after the load and the service's journal: one guest round trip, ab's
        exit waited for in the guest (bounded). ``then``: a command run last in the same
        round trip (the facts afterwards); what it printed is ``then_output``."""
        hey_runs = self.hey_argv is not None
        interrupted = [AB_UNIT, *([HEY_UNIT] if hey_runs else [])]
        read = {"ab": AB_OUT, "probe": PROBE_LOG, "holders": HOLDERS_LOG}
        if hey_runs:
            read["hey"] = HEY_OUT
        journal = (None if self.service_unit is None
                   else journal_argv(self.service_unit, self.started))
        answers, self.then_output = load_steps(self.machine, {
            "step": "stop", "interrupt": interrupted, "wait": 60,
            "stop": [PROBE_UNIT, *([HOLDERS_UNIT] if self.holders else [])],
            "netstat": NETSTAT, "journal": journal, "read": read}, then=then,
            timeout=STOP_ROUND_TRIP_S)
        answer = answers[0]
        files = {name: text or "" for name, text in answer["files"].items()}
        for unit, client in ((AB_UNIT, "ab"), (HEY_UNIT, "hey")):
            if unit in answer["still_running"]:
                raise GuestError(f"{client} did not exit within 60 s of SIGINT; its last "
                                 f"words: {files.get(client, '')[-600:]!r}")
        hey = None
        if hey_runs:
            try:
                hey = parse_hey_output(files["hey"])
            except ValueError as e:
                raise GuestError(f"hey printed no report ({e}):\n{files['hey'][-2000:]}") from e
        holders = None
        if self.holders:
            holders = summarise(parse_holder_log(files["holders"]), self.holders, old, new)
        output = files["ab"]
        try:
            ab = parse_ab_output(output)
        except ValueError as e:
            raise GuestError(f"ab printed no report ({e}):\n{output[-2000:]}") from e
        text = files["probe"]
        timeline = Timeline.build(parse_probe_log(text), self.started, old, new,
                                  skipped=parse_probe_skips(text))
        tcp = counter_delta(self._tcp_before, tcp_counters(answer.get("netstat")))
        journal_read = "journal" in answer
        gap = journal_restart_gap(parse_journal_json(answer["journal"]), self.service_unit,
                                  after=self.started) if journal_read else None
        return LoadOutcome(ab, output, timeline, self.started, float(answer["stopped"]),
                           self.command, holders, self.ab_started, tcp=tcp, journal_gap=gap,
                           journal_read=journal_read, hey=hey, hey_output=files.get("hey", ""),
                           hey_command=self.hey_command, method=self.method)
