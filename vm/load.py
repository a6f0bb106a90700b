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
from pathlib import Path

from vm.ab import AbResult, ab_command, parse_ab_output
from vm.config import LoadSettings
from vm.errors import GuestError
from vm.holders import HolderSummary, parse_holder_log, summarise
from vm.machine import Machine
from vm.timeline import ProbeRecord, Timeline, parse_probe_log, parse_probe_skips

GUEST_DIR = "/run/pwt"
PROBE_SOURCE = Path(__file__).with_name("guest") / "probe.py"
HOLDERS_SOURCE = Path(__file__).with_name("guest") / "holders.py"
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


def guest_now(machine: Machine) -> float:
    return float(machine.succeed("date +%s.%N"))


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
        self.command = shlex.join(ab_command(url, settings.concurrency, settings.max_s, keepalive))

    def start(self) -> None:
        m = self.machine
        bound = int(self.settings.max_s + 60)
        m.succeed(f"systemctl stop {AB_UNIT} {PROBE_UNIT} 2>/dev/null; mkdir -p {GUEST_DIR}"
                  f" && rm -f {GUEST_DIR}/ab.out {GUEST_DIR}/probe.jsonl")
        m.copy_from_host(PROBE_SOURCE, f"{GUEST_DIR}/probe.py", mode="0755")
        self.started = guest_now(m)
        m.succeed(
            f"systemd-run --quiet --collect --unit={PROBE_UNIT} -p RuntimeMaxSec={bound}"
            f" python3 {GUEST_DIR}/probe.py --port {self.probe_port} {self.client_args}"
            f" --rate {self.settings.probe_rate:g}"
            f" --max-in-flight {self.settings.probe_max_in_flight}"
            f" --out {GUEST_DIR}/probe.jsonl --max-seconds {self.settings.max_s:.0f}"
        )
        if self.holders:
            m.copy_from_host(HOLDERS_SOURCE, f"{GUEST_DIR}/holders.py", mode="0755")
            m.succeed(
                f"rm -f {GUEST_DIR}/holders.jsonl; systemd-run --quiet --collect"
                f" --unit={HOLDERS_UNIT} -p RuntimeMaxSec={bound} python3 {GUEST_DIR}/holders.py"
                f" --port {self.probe_port} {self.client_args} --connections {self.holders}"
                f" --out {GUEST_DIR}/holders.jsonl --max-seconds {self.settings.max_s:.0f}"
            )
        out = m.succeed(
            f"date +%s.%N; systemd-run --quiet --collect --unit={AB_UNIT} -p RuntimeMaxSec={bound}"
            f" -p StandardOutput=file:{GUEST_DIR}/ab.out -p StandardError=journal"
            f" {self.command}"
        )
        self.ab_started = float(out.split()[0])

    def probe_log(self) -> str:
        return self.machine.succeed(f"cat {GUEST_DIR}/probe.jsonl || true")

    def probe_records(self) -> list[ProbeRecord]:
        return parse_probe_log(self.probe_log())

    def elapsed(self) -> float:
        return guest_now(self.machine) - self.started

    def wait_until_serving(self, greeting: str, for_seconds: float,
                           after: float | None = None) -> Timeline:
        """Wait until the probe has seen ``greeting`` answered for ``for_seconds``; bounded by
        the load's upper bound. Gives up early when, since ``after`` (guest epoch), the probe
        has seen nothing but errors for ``for_seconds``: the port is dead (a socket shipped in
        the image can be left inactive). Returns the timeline seen when the wait ended."""
        while True:
            records = self.probe_records()
            timeline = Timeline.build(records, self.started, "", greeting)
            if timeline.answered_seconds_of(greeting) >= for_seconds:
                return timeline
            if after is not None and dead_since(records, after) >= for_seconds:
                return timeline
            if self.elapsed() >= self.settings.max_s - 2:
                return timeline
            for unit in (AB_UNIT, PROBE_UNIT):
                if self.machine.unit_state(unit) not in ("active", "activating"):
                    return timeline  # a client ended by itself: the verdict says what is missing
            time.sleep(2)

    def stop(self, old: str, new: str) -> LoadOutcome:
        """SIGINT ab (it prints its report and exits), stop the probe, collect both."""
        m = self.machine
        stopped = guest_now(m)
        m.execute(f"systemctl kill --signal=SIGINT {AB_UNIT}")
        m.wait_until_succeeds(f"! systemctl is-active --quiet {AB_UNIT}", timeout=60)
        m.execute(f"systemctl stop {PROBE_UNIT}")
        holders = None
        if self.holders:
            m.execute(f"systemctl stop {HOLDERS_UNIT}")
            records = parse_holder_log(m.succeed(f"cat {GUEST_DIR}/holders.jsonl || true"))
            holders = summarise(records, self.holders, old, new)
        output = m.succeed(f"cat {GUEST_DIR}/ab.out")
        try:
            ab = parse_ab_output(output)
        except ValueError as e:
            raise GuestError(f"ab printed no report ({e}):\n{output[-2000:]}") from e
        text = self.probe_log()
        timeline = Timeline.build(parse_probe_log(text), self.started, old, new,
                                  skipped=parse_probe_skips(text))
        return LoadOutcome(ab, output, timeline, self.started, stopped, self.command, holders,
                           self.ab_started)
