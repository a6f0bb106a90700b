"""The capacity map's functions on a map measured on a real VM: tests/unit/data/
capacity_bookworm/ (capacity.json as the sweep wrote it, and per point the guest's
/proc/net/netstat and ``ss`` after the load; see tests/unit/data/README.md).

The kernel's counters are parsed from the guest's own files; the points ran one after the
other on one restored guest (its counters start at 0), so the change from one point's file to
the next is what that point's load did, which LoadRun read on its own before and after the
load: the two must agree. The prediction is recomputed from the recorded measurements alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from support import DATA

from pytest_portable_upgrade.load.kernel import (
    counter_delta,
    parse_listen_backlog,
    parse_netstat,
    tcp_counters,
)
from pytest_portable_upgrade.report.capacity import (
    agreement,
    clear_problems,
    guidance,
    markdown,
    prediction,
    table,
    write_capacity,
)

MAP = DATA / "capacity_bookworm"
RECORDED = json.loads((MAP / "capacity.json").read_text())
# The measurements only: what scenarios/capacity.py recorded, without the derived keys that
# write_capacity adds for a reader.
POINTS: list[dict[str, Any]] = [
    {k: v for k, v in p.items() if k not in ("prediction", "agreement")}
    for p in RECORDED["points"]]


def guest_file(point: dict[str, Any], name: str) -> str:
    return (MAP / point["id"] / name).read_text()


def test_the_map_has_the_ci_subsets_points() -> None:
    ids = {p["id"] for p in POINTS}
    assert {"backlog4-delay2-rate20x10", "backlog16-delay2-rate20x10",
            "backlogdefault-delay2-rate20x10"} <= ids


def test_the_guests_counters_parse_and_each_points_change_is_what_its_load_counted() -> None:
    before = dict.fromkeys(("listen_overflows", "listen_drops", "tcp_syn_retrans"), 0)
    for p in POINTS:
        text = guest_file(p, "netstat-after.txt")
        assert "TcpExtListenOverflows" in parse_netstat(text)
        after = tcp_counters(text)
        assert None not in after.values(), p["id"]
        change = counter_delta(before, after)
        assert change == {k: p[k] for k in change}, p["id"]
        before = after


def test_the_kernels_backlog_is_the_dropins_and_the_default_is_somaxconn() -> None:
    for p in POINTS:
        held = parse_listen_backlog(guest_file(p, "ss.txt"))
        assert held == p["backlog_effective"]
        assert held == (p["backlog"] if p["backlog"] is not None else 4096), p["id"]


def test_the_prediction_is_computed_from_the_recorded_measurements() -> None:
    for p in POINTS:
        pred = prediction(p)
        assert pred is not None, p["id"]
        arrivals = p["probe_sent_per_s"] * p["restart_gap_probe_s"] + p["concurrency"]
        assert pred["arrivals"] == pytest.approx(arrivals, abs=0.05)
        assert pred["queue"] == p["backlog_effective"] + 1
        assert pred["overflows"] is (arrivals > p["backlog_effective"] + 1)
        # what the sweep wrote beside the point is what the measurements give today
        recorded = next(r for r in RECORDED["points"] if r["id"] == p["id"])
        assert recorded["prediction"] == pred and recorded["agreement"] == agreement(p)


def test_the_default_backlog_held_everything_and_far_below_rate_x_gap_overflowed() -> None:
    default = [p for p in POINTS if p["backlog"] is None]
    assert default and all(p["listen_overflows"] == 0 and p["verdict"] == "pass"
                           for p in default)
    far_below = [p for p in POINTS
                 if (pred := prediction(p)) is not None and pred["arrivals"] >= 2 * pred["queue"]]
    assert far_below and all(p["listen_overflows"] > 0 for p in far_below)
    assert [line for p in POINTS for line in clear_problems(p)] == []


def test_where_the_queue_overflowed_clients_resent_syns_and_where_it_held_none() -> None:
    for p in POINTS:
        assert (p["tcp_syn_retrans"] > 0) is (p["listen_overflows"] > 0), p["id"]


def test_the_words_and_the_table_come_from_the_recorded_points(tmp_path: Path) -> None:
    words = " ".join(guidance(POINTS))
    gaps = [p["restart_gap_probe_s"] for p in POINTS]
    assert f"measured {min(gaps):.1f} to {max(gaps):.1f} s" in words
    arrivals = max(pred["arrivals"] for p in POINTS if (pred := prediction(p)) is not None)
    assert f"needs `Backlog=` >= {math.ceil(arrivals)}" in words
    rows = table(POINTS).splitlines()[2:]
    assert len(rows) == len(POINTS)
    write_capacity(tmp_path, POINTS, RECORDED["meta"])
    assert (tmp_path / "capacity.md").read_text() == markdown(POINTS, RECORDED["meta"])
    assert (tmp_path / "capacity.png").stat().st_size > 10_000


def test_the_guides_guidance_is_the_recorded_maps_words() -> None:
    """docs/capacity.md quotes the guidance rendered from this map, between two markers:
    every figure in it comes from the recorded points."""
    from pytest_portable_upgrade.report.capacity import zero_downtime_end

    guide = (Path(__file__).resolve().parents[2] / "docs" / "capacity.md").read_text()
    block = guide.split("<!-- capacity-guidance -->\n")[1].split("<!-- /capacity-guidance -->")[0]
    rendered = [f"- {w}" for w in guidance(POINTS)] + [f"- {zero_downtime_end(POINTS)}"]
    assert block.strip().splitlines() == rendered, (
        "re-render: the words of tests/unit/data/capacity_bookworm/capacity.json "
        "(report/capacity.py guidance and zero_downtime_end)")
