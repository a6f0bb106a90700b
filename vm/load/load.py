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

The same round trips read the guest kernel's TCP counters (``kernel.NETSTAT``) before the load
starts and after it stops, and, when the service's unit is named, its journal since the load
start (the restart gap as the manager logged it, ``journal.py``). Each read is a section of
the command's output (``split_sections``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pytest_portable_upgrade.core.config import LoadSettings
from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.core.resources import resource
from pytest_portable_upgrade.core.retry import retry
from pytest_portable_upgrade.load.ab import (
    AbResult,
    ab_command,
    parse_ab_output,
    write_body_command,
)
from pytest_portable_upgrade.load.hey import HeyResult, hey_command, parse_hey_output
from pytest_portable_upgrade.load.journal import (
    RestartGap,
    journal_command,
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
from pytest_portable_upgrade.machine.machine import Machine

GUEST_DIR = "/run/pwt"
PROBE_SOURCE = resource("pytest_portable_upgrade.load", "guest/probe.py")
# The long-lived keep-alive clients (their host-side summary: long_lived.py).
HOLD_CONNECTIONS_SOURCE = resource("pytest_portable_upgrade.load", "guest/hold_connections.py")
AB_UNIT = "pwt-ab.service"
PROBE_UNIT = "pwt-probe.service"
HOLDERS_UNIT = "pwt-holders.service"
HEY_UNIT = "pwt-hey.service"
BODY_FILE = f"{GUEST_DIR}/body"  # a POST's body, for ab -p and hey -D


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


POLL_MARK = "PWT-PROBE-LOG"
SECTION = "PWT-SECTION:"


def split_sections(output: str) -> dict[str, str]:
    """``head`` (before the first marker) and each ``PWT-SECTION:<name>`` part of ``output``."""
    sections = {"head": ""}
    name = "head"
    for line in output.splitlines(keepends=True):
        if line.startswith(SECTION):
            name = line[len(SECTION):].strip()
            sections[name] = ""
        else:
            sections[name] += line
    return sections


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
        self.client_args = shlex.join(client_args)
        self.holders = holders
        self.settings = settings
        self.keepalive = keepalive
        self.url = url
        self.probe_port = probe_port
        self.started = 0.0
        self.ab_started = 0.0
        self._probe_text = ""  # the probe log read so far (whole lines)
        self._tcp_before: Counts = not_read()
        self.then_output = ""  # what stop's ``then`` printed
        self.method = method
        self.body = body
        body_file = BODY_FILE if method == "POST" else None
        self.command = shlex.join(ab_command(url, settings.concurrency, settings.max_s, keepalive,
                                             method, body_file, content_type))
        self.hey_command = shlex.join(hey_command(
            url, settings.concurrency, settings.max_s, keepalive, method, body_file,
            content_type)) if hey else None

    def start(self) -> None:
        """Start the probe (and the long-lived holders), then ab, in one guest round trip.

        The guest scripts are uploaded once per boot. ``started`` is the guest's clock before
        the probe starts, ``ab_started`` just before ab does."""
        self.started_from(self.machine.succeed(self.start_command()))

    def start_command(self) -> str:
        """``start``'s command, to run at the end of another round trip (the attach's);
        ``started_from`` then reads what it printed. Uploads the guest scripts first."""
        m = self.machine
        bound = int(self.settings.max_s + 60)
        m.copy_from_host(PROBE_SOURCE, f"{GUEST_DIR}/probe.py", mode="0755", once=True)
        if self.holders:
            m.copy_from_host(HOLD_CONNECTIONS_SOURCE, f"{GUEST_DIR}/hold_connections.py",
                             mode="0755", once=True)
        steps = [
            # One by one: newer systemd refuses a whole `stop A B` when one is not loaded.
            f"for u in {AB_UNIT} {PROBE_UNIT} {HOLDERS_UNIT} {HEY_UNIT}; do systemctl stop $u"
            f" 2>/dev/null; done; mkdir -p {GUEST_DIR} && rm -f {GUEST_DIR}/ab.out"
            f" {GUEST_DIR}/probe.jsonl {GUEST_DIR}/holders.jsonl {GUEST_DIR}/hey.out {BODY_FILE}"
            + (f" && {write_body_command(BODY_FILE, self.body or '')}"
               if self.method == "POST" else ""),
            "date +%s.%N",
            f"systemd-run --quiet --collect --unit={PROBE_UNIT} -p RuntimeMaxSec={bound}"
            f" python3 {GUEST_DIR}/probe.py --port {self.probe_port} {self.client_args}"
            f" --rate {self.settings.probe_rate:g}"
            f" --max-in-flight {self.settings.probe_max_in_flight}"
            f" --out {GUEST_DIR}/probe.jsonl --max-seconds {self.settings.max_s:.0f}",
        ]
        if self.holders:
            steps.append(
                f"systemd-run --quiet --collect --unit={HOLDERS_UNIT} -p RuntimeMaxSec={bound}"
                f" python3 {GUEST_DIR}/hold_connections.py --port {self.probe_port}"
                f" {self.client_args} --connections {self.holders} --out {GUEST_DIR}/holders.jsonl"
                f" --max-seconds {self.settings.max_s:.0f}"
            )
        if self.hey_command is not None:
            steps.append(
                f"systemd-run --quiet --collect --unit={HEY_UNIT} -p RuntimeMaxSec={bound}"
                f" -p StandardOutput=file:{GUEST_DIR}/hey.out -p StandardError=journal"
                f" {self.hey_command}")
        steps += [
            "date +%s.%N",
            f"systemd-run --quiet --collect --unit={AB_UNIT} -p RuntimeMaxSec={bound}"
            f" -p StandardOutput=file:{GUEST_DIR}/ab.out -p StandardError=journal"
            f" {self.command}",
        ]
        # The counters first (a missing file is "not read"), then the clocks and the clients.
        return (f"{steps[0]}; echo {SECTION}netstat; cat {NETSTAT} 2>/dev/null;"
                f" echo {SECTION}clocks; " + " && ".join(steps[1:]))

    def started_from(self, out: str) -> None:
        """The clocks and the counters ``start_command`` printed."""
        sections = split_sections(out)
        stamps = [float(word) for word in sections.get("clocks", "").split()]
        self.started, self.ab_started = stamps[0], stamps[-1]
        self._tcp_before = tcp_counters(sections.get("netstat"))
        self._probe_text = ""

    def poll(self) -> tuple[float, bool, str]:
        """One guest round trip: (guest clock, both clients still running, the probe log so
        far). Only what the probe wrote since the last poll travels."""
        offset = len(self._probe_text.encode())
        out = self.machine.execute(
            f"date +%s.%N; systemctl is-active {AB_UNIT} {PROBE_UNIT}; echo {POLL_MARK};"
            f" tail -c +{offset + 1} {GUEST_DIR}/probe.jsonl 2>/dev/null; true"
        ).stdout
        head, _, new = out.partition(f"{POLL_MARK}\n")
        lines = head.split()
        # Keep whole lines only: the probe may be writing the last one right now.
        complete = new[: new.rfind("\n") + 1]
        self._probe_text += complete
        running = len(lines) >= 3 and all(w in ("active", "activating") for w in lines[1:3])
        return float(lines[0]), running, self._probe_text

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
        m = self.machine
        stop_units = PROBE_UNIT + (f" {HOLDERS_UNIT}" if self.holders else "")
        interrupted = AB_UNIT + (f" {HEY_UNIT}" if self.hey_command is not None else "")
        journal = "" if self.service_unit is None else (
            f" echo {SECTION}journal; {journal_command(self.service_unit, self.started)}"
            " 2>/dev/null;")
        out = m.execute(
            f"date +%s.%N; for u in {interrupted}; do systemctl kill --signal=SIGINT $u; done;"
            f" for i in $(seq 600); do systemctl is-active --quiet {AB_UNIT} || break;"
            f" sleep 0.1; done; systemctl is-active --quiet {AB_UNIT} && echo AB-STILL-RUNNING;"
            + (f" for i in $(seq 600); do systemctl is-active --quiet {HEY_UNIT} || break;"
               f" sleep 0.1; done; systemctl is-active --quiet {HEY_UNIT} &&"
               f" echo HEY-STILL-RUNNING; echo {SECTION}hey; cat {GUEST_DIR}/hey.out; echo;"
               if self.hey_command is not None else "") +
            f" for u in {stop_units}; do systemctl stop $u; done;"
            f" echo {SECTION}netstat; cat {NETSTAT} 2>/dev/null;{journal}"
            f" echo {SECTION}ab; cat {GUEST_DIR}/ab.out;"
            f" echo; echo {SECTION}probe; cat {GUEST_DIR}/probe.jsonl 2>/dev/null;"
            f" echo {SECTION}holders; cat {GUEST_DIR}/holders.jsonl 2>/dev/null;"
            + (f" echo; echo {SECTION}then; {then};" if then is not None else "") + " true",
            timeout=120,
        ).stdout
        sections = split_sections(out)
        self.then_output = sections.get("then", "")
        stopped = float(sections["head"].split()[0])
        if "AB-STILL-RUNNING" in sections["head"]:
            raise GuestError(f"ab did not exit within 60 s of SIGINT:\n{out[-2000:]}")
        hey = None
        if self.hey_command is not None:
            if "HEY-STILL-RUNNING" in sections["head"]:
                raise GuestError(f"hey did not exit within 60 s of SIGINT:\n{out[-2000:]}")
            try:
                hey = parse_hey_output(sections.get("hey", ""))
            except ValueError as e:
                raise GuestError(f"hey printed no report ({e}):\n"
                                 f"{sections.get('hey', '')[-2000:]}") from e
        holders = None
        if self.holders:
            records = parse_holder_log(sections.get("holders", ""))
            holders = summarise(records, self.holders, old, new)
        output = sections.get("ab", "")
        try:
            ab = parse_ab_output(output)
        except ValueError as e:
            raise GuestError(f"ab printed no report ({e}):\n{output[-2000:]}") from e
        text = sections.get("probe", "")
        timeline = Timeline.build(parse_probe_log(text), self.started, old, new,
                                  skipped=parse_probe_skips(text))
        tcp = counter_delta(self._tcp_before, tcp_counters(sections.get("netstat")))
        read = "journal" in sections
        gap = journal_restart_gap(parse_journal_json(sections["journal"]), self.service_unit,
                                  after=self.started) if read else None
        return LoadOutcome(ab, output, timeline, self.started, stopped, self.command, holders,
                           self.ab_started, tcp=tcp, journal_gap=gap, journal_read=read,
                           hey=hey, hey_output=sections.get("hey", ""),
                           hey_command=self.hey_command, method=self.method)
