"""One test per point of the switch-capacity map: a real reattach under load, judged by
``verdict_of``, held to the prediction (report/capacity.py). A point fails its test only where
it clearly contradicts the prediction (``clear_problems``); every point is in the map."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.plugin.outcome import VERDICT_KEY
from pytest_portable_upgrade.plugin.plugin import settings_of
from pytest_portable_upgrade.report.capacity import (
    Point,
    agreement,
    clear_problems,
    failed_total,
    write_capacity,
)
from pytest_portable_upgrade.report.report import plot_timeline
from pytest_portable_upgrade.scenarios.capacity import (
    SCENARIO,
    CapacityPoint,
    Measured,
    capacity_points,
    measure_point,
)

pytestmark = pytest.mark.vm


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "point" in metafunc.fixturenames:
        points = capacity_points(settings_of(metafunc.config))
        metafunc.parametrize("point", points, ids=[p.id for p in points])


class CapacityMap:
    """The points measured so far; capacity.md and capacity.json rewritten after each (a run
    cut short still leaves its map), capacity.png at the end."""

    def __init__(self, directory: Path, total: int, meta: dict[str, Any]) -> None:
        self.directory, self.total, self.meta = directory, total, meta
        self.points: list[Point] = []
        self.started = time.monotonic()

    def add(self, measured: Measured) -> None:
        p = measured.point
        self.points.append(p)
        evidence = self.directory / "capacity" / p["id"]
        evidence.mkdir(parents=True, exist_ok=True)
        (evidence / "ss.txt").write_text(measured.listeners)
        (evidence / "netstat-after.txt").write_text(measured.netstat_after)
        plot_timeline(evidence / "timeline.png", f"capacity {p['id']}", measured.run.outcome,
                      measured.run.upgrade)
        gap = p.get("restart_gap_probe_s")
        worst = p.get("switch_max_ms")
        log.info(f"capacity {len(self.points)}/{self.total} {p['id']}: {p['verdict']}, "
                 f"lost {failed_total(p)}, overflows {p.get('listen_overflows')}, "
                 f"backlog {p.get('backlog_effective')}, gap "
                 f"{'-' if gap is None else f'{gap:.1f} s'}, max "
                 f"{'-' if worst is None else f'{worst / 1000:.1f} s'}, {agreement(p)} "
                 f"({p['wall_s']:.0f} s)")
        self.write(picture=False)

    def write(self, picture: bool = True) -> None:
        meta = {**self.meta, "points": len(self.points), "wall_s": self.wall_s}
        write_capacity(self.directory, self.points, meta, picture=picture)

    @property
    def wall_s(self) -> float:
        return round(time.monotonic() - self.started, 1)


@pytest.fixture(scope="module")
def capacity_map(request: pytest.FixtureRequest, settings: Settings, artifacts: Path,
                 service: Any, systemd_package: str) -> Iterator[CapacityMap]:
    total = len(capacity_points(settings))
    meta = {"box": settings.box, "systemd_version": service.systemd_major,
            "systemd_package": systemd_package, "run_id": settings.run_id,
            "scenario": SCENARIO, "backlogs": settings.capacity_backlogs,
            "delays": settings.capacity_delays, "rates": settings.capacity_rates,
            "switch_after_s": settings.load.switch_after_s,
            "post_switch_s": settings.load.post_switch_s}
    log.info(f"capacity map: {total} points, {settings.capacity_backlogs} x "
             f"{settings.capacity_delays} x {settings.capacity_rates}")
    the_map = CapacityMap(artifacts, total, meta)
    yield the_map
    if the_map.points:
        the_map.write()
        log.info(f"capacity map: {artifacts}/capacity.md, capacity.png "
                 f"({len(the_map.points)} points, {the_map.wall_s / 60:.1f} min)")


def test_capacity_point(point: CapacityPoint, clean_service: Any, settings: Settings,
                        systemd_package: str, capacity_map: CapacityMap,
                        request: pytest.FixtureRequest) -> None:
    measured = measure_point(clean_service, settings, point, systemd_package)
    request.node.stash[VERDICT_KEY] = measured.verdict  # evidence of a point that lost
    capacity_map.add(measured)
    problems = clear_problems(measured.point)
    assert not problems, "; ".join(problems)
