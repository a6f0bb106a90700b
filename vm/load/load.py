"""Load inside the guest during a reattach: ab plus the per-request probe.

Both run as transient systemd units (``systemd-run``) with ``RuntimeMaxSec``, so a stuck
client is killed by the guest's own service manager even if the harness is gone. ab's ``-t``
is only the upper bound: the run is stopped (SIGINT: ab prints its report) once the new version
has answered for a while, so the load provably spans the switch.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from pytest_portable_upgrade.core.config import LoadSettings
from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.core.resources import resource
from pytest_portable_upgrade.load.ab import AbResult, ab_command, parse_ab_output
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
                 url: str, probe_port: int, client_args: list[str], holders: int = 0) -> None:
        """``client_args``: how the probe and the holders send the subject's request and read
        its answers (``Subject.client_args``)."""
        self.machine = machine
        self.client_args = shlex.join(client_args)
        self.holders = holders
        self.settings = settings
        self.keepalive = keepalive
        self.url = url
        self.probe_port = probe_port
        self.started = 0.0
        self.ab_started = 0.0
        self._probe_text = ""  # the probe log read so far (whole lines)
        self.command = shlex.join(ab_command(url, settings.concurrency, settings.max_s, keepalive))

    def start(self) -> None:
        """Start the probe (and the long-lived holders), then ab, in one guest round trip.

        The guest scripts are uploaded once per boot. ``started`` is the guest's clock before
        the probe starts, ``ab_started`` just before ab does."""
        m = self.machine
        bound = int(self.settings.max_s + 60)
        m.copy_from_host(PROBE_SOURCE, f"{GUEST_DIR}/probe.py", mode="0755", once=True)
        if self.holders:
            m.copy_from_host(HOLD_CONNECTIONS_SOURCE, f"{GUEST_DIR}/hold_connections.py",
                             mode="0755", once=True)
        steps = [
            # One by one: newer systemd refuses a whole `stop A B` when one is not loaded.
            f"for u in {AB_UNIT} {PROBE_UNIT} {HOLDERS_UNIT}; do systemctl stop $u 2>/dev/null;"
            f" done; mkdir -p {GUEST_DIR} && rm -f {GUEST_DIR}/ab.out {GUEST_DIR}/probe.jsonl"
            f" {GUEST_DIR}/holders.jsonl",
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
        steps += [
            "date +%s.%N",
            f"systemd-run --quiet --collect --unit={AB_UNIT} -p RuntimeMaxSec={bound}"
            f" -p StandardOutput=file:{GUEST_DIR}/ab.out -p StandardError=journal"
            f" {self.command}",
        ]
        out = m.succeed(f"{steps[0]}; " + " && ".join(steps[1:]))
        stamps = [float(line) for line in out.split()]
        self.started, self.ab_started = stamps[0], stamps[-1]
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
        the image can be left inactive). Returns the timeline seen when the wait ended."""
        while True:
            now, running, text = self.poll()
            records = parse_probe_log(text)
            timeline = Timeline.build(records, self.started, "", greeting)
            if timeline.answered_seconds_of(greeting) >= for_seconds:
                return timeline
            if after is not None and dead_since(records, after) >= for_seconds:
                return timeline
            if now - self.started >= self.settings.max_s - 2:
                return timeline
            if not running:
                return timeline  # a client ended by itself: the verdict says what is missing
            time.sleep(1)

    def stop(self, old: str, new: str) -> LoadOutcome:
        """SIGINT ab (it prints its report and exits), stop the probe, collect both: one guest
        round trip, ab's exit waited for in the guest (bounded)."""
        m = self.machine
        stop_units = PROBE_UNIT + (f" {HOLDERS_UNIT}" if self.holders else "")
        out = m.execute(
            f"date +%s.%N; systemctl kill --signal=SIGINT {AB_UNIT};"
            f" for i in $(seq 600); do systemctl is-active --quiet {AB_UNIT} || break;"
            f" sleep 0.1; done; systemctl is-active --quiet {AB_UNIT} && echo AB-STILL-RUNNING;"
            f" for u in {stop_units}; do systemctl stop $u; done;"
            f" echo {SECTION}ab; cat {GUEST_DIR}/ab.out;"
            f" echo; echo {SECTION}probe; cat {GUEST_DIR}/probe.jsonl 2>/dev/null;"
            f" echo {SECTION}holders; cat {GUEST_DIR}/holders.jsonl 2>/dev/null; true",
            timeout=120,
        ).stdout
        sections = split_sections(out)
        stopped = float(sections["head"].split()[0])
        if "AB-STILL-RUNNING" in sections["head"]:
            raise GuestError(f"ab did not exit within 60 s of SIGINT:\n{out[-2000:]}")
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
        return LoadOutcome(ab, output, timeline, self.started, stopped, self.command, holders,
                           self.ab_started)
