"""The switch-capacity map's points, each one real reattach under load on the session's VM.

``capacity_points`` makes the grid of --capacity-backlogs x --capacity-delays x
--capacity-rates; ``measure_point`` runs one: the ``host-socket-no-keepalive`` scenario with
a host drop-in for the socket's ``Backlog=`` (none for ``default``) and one for the service's
``PW_START_DELAY``, the probe at the point's rate and ab at its concurrency. The socket is
created anew for every point (the reset stops it, the attach starts it after the drop-ins),
so the backlog takes effect; ``ss`` then reads the backlog the kernel holds. ``verdict_of``
judges the run; report/capacity.py holds the point to the prediction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from pytest_portable_upgrade.core.config import Settings, backlogs_of, delays_of, rates_of
from pytest_portable_upgrade.load.kernel import NETSTAT, parse_listen_backlog
from pytest_portable_upgrade.load.load import load_steps
from pytest_portable_upgrade.report.capacity import Point, point_id, point_record
from pytest_portable_upgrade.scenarios.catalogue import get_scenario
from pytest_portable_upgrade.scenarios.record import summary_row
from pytest_portable_upgrade.scenarios.run import Overrides, ScenarioRun, run_scenario
from pytest_portable_upgrade.scenarios.verdict import Verdict, verdict_of
from pytest_portable_upgrade.subject.spec import DROPIN_PREFIX
from pytest_portable_upgrade.systemd.portable import PortableService

SCENARIO = "host-socket-no-keepalive"
BACKLOG_DROPIN = f"{DROPIN_PREFIX}capacity-backlog.conf"
DELAY_DROPIN = f"{DROPIN_PREFIX}capacity-start-delay.conf"


@dataclass(frozen=True)
class CapacityPoint:
    backlog: int | None  # None: the socket unit's own (no drop-in)
    start_delay_s: float
    probe_rate: float
    concurrency: int

    @property
    def id(self) -> str:
        return point_id(self.backlog, self.start_delay_s, self.probe_rate, self.concurrency)

    def overrides(self) -> Overrides:
        sockets = {} if self.backlog is None else {
            BACKLOG_DROPIN: f"[Socket]\nBacklog={self.backlog}\n"}
        service = {DELAY_DROPIN: f"[Service]\nEnvironment=PW_START_DELAY={self.start_delay_s:g}\n"}
        return Overrides(socket_dropins=sockets, service_dropins=service)

    def settings(self, settings: Settings) -> Settings:
        """``settings`` with the point's load (the probe's rate, ab's concurrency)."""
        return replace(settings, load=replace(settings.load, probe_rate=self.probe_rate,
                                              concurrency=self.concurrency))


def capacity_points(settings: Settings) -> list[CapacityPoint]:
    """Every combination of the three lists: rate, then delay, then backlog."""
    return [CapacityPoint(backlog, delay, rate, clients)
            for rate, clients in rates_of(settings.capacity_rates)
            for delay in delays_of(settings.capacity_delays)
            for backlog in backlogs_of(settings.capacity_backlogs)]


@dataclass(frozen=True)
class Measured:
    point: Point  # the record capacity.json keeps
    run: ScenarioRun
    verdict: Verdict
    listeners: str  # ss' lines of the socket, read after the load
    netstat_after: str  # /proc/net/netstat after the load (the record's counters: LoadRun's)


def read_after_point(service: PortableService) -> tuple[str, str]:
    """The socket's listeners (``ss``) and /proc/net/netstat, in one round trip of the load's
    guest program ("" for a file not there)."""
    answers, _ = load_steps(service.machine, {"step": "listeners", "port": service.subject.port},
                            {"step": "netstat", "path": NETSTAT}, timeout=30)
    return str(answers[0]["listeners"]), str(answers[1]["netstat"] or "")


def measure_point(service: PortableService, settings: Settings, point: CapacityPoint,
                  systemd_package: str = "") -> Measured:
    """One reattach under load at ``point``, judged by ``verdict_of``; the socket's backlog
    is read before the reset."""
    start = time.monotonic()
    run = run_scenario(service, point.settings(settings), get_scenario(SCENARIO),
                       point.overrides())
    listeners, netstat = read_after_point(service)
    verdict = verdict_of(run)
    row: dict[str, Any] = summary_row(run, settings.box, service.systemd_major, verdict,
                                      systemd_package=systemd_package)
    record = point_record(backlog=point.backlog, start_delay_s=point.start_delay_s,
                          probe_rate=point.probe_rate, concurrency=point.concurrency, row=row,
                          backlog_effective=parse_listen_backlog(listeners),
                          wall_s=time.monotonic() - start)
    return Measured(record, run, verdict, listeners, netstat)
