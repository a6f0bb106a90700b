"""vm/report/capacity.py and vm/scenarios/capacity.py: the switch-capacity map's points, the
prediction each is held to, the table, the words and the picture.

The made-up points here pin the rules; test_capacity_recorded.py holds the same functions to
a map measured on a real VM (tests/unit/data/capacity_bookworm.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support import WALKTHROUGH, fake_machine, sent_steps

from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.report.capacity import (
    agreement,
    clear_problems,
    disagreements,
    failed_total,
    guidance,
    markdown,
    point_id,
    point_record,
    prediction,
    table,
    write_capacity,
    zero_downtime_end,
)
from pytest_portable_upgrade.scenarios.capacity import (
    BACKLOG_DROPIN,
    DELAY_DROPIN,
    CapacityPoint,
    capacity_points,
    read_after_point,
)


def point(backlog: int | None = 16, effective: int | None = 16, gap: float | None = 3.0,
          rate: float = 20.0, sent: float | None = 20.0, clients: int = 10,
          overflows: int | None = 0, verdict: str = "pass", **more: Any) -> dict[str, Any]:
    return {"id": point_id(backlog, 2.0, rate, clients), "backlog": backlog,
            "backlog_effective": effective, "start_delay_s": 2.0, "probe_rate": rate,
            "concurrency": clients, "probe_sent_per_s": sent, "restart_gap_probe_s": gap,
            "listen_overflows": overflows, "listen_drops": overflows, "tcp_syn_retrans": 0,
            "verdict": verdict, "verdict_kind": "pass" if verdict == "pass" else "fail",
            "problems": [] if verdict == "pass" else ["3 requests failed"],
            "ab_failed": 0, "ab_non_2xx": 0, "probe_failures": {"timeout": 0},
            "switch_p50_ms": 300.0, "switch_p99_ms": 1900.0, "switch_max_ms": 2100.0,
            "max_latency_ms": 2100.0, "restart_gap_journal_s": 0.4, **more}


def test_arrivals_are_the_probes_rate_times_the_gap_plus_abs_clients() -> None:
    pred = prediction(point(effective=64, gap=3.0, sent=19.5, clients=10))
    assert pred == {"arrivals": 68.5, "queue": 65, "excess": 3.5, "overflows": True,
                    "clear": False}
    # the measured rate wins over the asked one; the kernel's backlog over the drop-in's
    assert prediction(point(backlog=16, effective=4096, sent=None, rate=20.0)) == {
        "arrivals": 70.0, "queue": 4097, "excess": -4027.0, "overflows": False, "clear": True}
    assert prediction(point(gap=None)) is None
    assert prediction(point(backlog=None, effective=None)) is None


def test_a_point_agrees_when_the_kernel_overflowed_exactly_where_predicted() -> None:
    assert agreement(point(effective=4, overflows=120)) == "agrees"
    assert agreement(point(effective=4096, overflows=0)) == "agrees"
    assert agreement(point(effective=4, overflows=0)) == "disagrees"
    assert agreement(point(effective=4096, overflows=3)) == "disagrees"
    assert agreement(point(overflows=None)) == "not judged"
    assert agreement(point(gap=None)) == "not judged"


def test_only_a_clear_disagreement_or_a_loss_where_it_fits_fails_the_point() -> None:
    assert clear_problems(point(effective=4, overflows=120)) == []
    (line,) = clear_problems(point(effective=4, overflows=0))
    assert line == ("backlog16-delay2-rate20x10: arrivals 70 (probe 20/s x gap 3 s + 10 ab "
                    "clients) against a queue of 5: predicted overflows, the kernel counted none")
    (line,) = clear_problems(point(effective=4096, overflows=2))
    assert line.endswith("predicted none, the kernel counted 2 overflows")
    (line,) = clear_problems(point(effective=4096, verdict="FAIL"))
    assert line.endswith("fits, yet the verdict is FAIL: 3 requests failed")
    # near the line (70 arrivals, a queue of 65) a disagreement is reported, not failed
    assert clear_problems(point(effective=64, overflows=0)) == []
    assert disagreements([point(effective=64, overflows=0)]) == [
        "Backlog=16, start delay 2 s, probe 20/s + ab -c 10: arrivals 70 against a queue of 65 "
        "predicted overflows, the kernel counted 0"]


def test_the_point_record_takes_failures_by_class_from_every_window() -> None:
    row = {"verdict": "pass", "verdict_kind": "pass", "problems": [], "complete": 900,
           "failed": 1, "failed_connect": 1, "non_2xx": 2, "requests_per_second": 88.0,
           "probe_requests": 400, "probe_sent_per_s": 19.9, "listen_overflows": 7,
           "listen_drops": 7, "tcp_syn_retrans": 9, "max_latency_ms": 3100.0,
           "restart_gap_probe_s": 3.2, "restart_gap_journal_s": 0.4, "reattach_s": 2.5,
           "load_s": 20.0,
           "latency": {"before": {"failures": {"timeout": 0, "reset": 1}},
                       "switch": {"failures": {"timeout": 2}, "p50_ms": 500.0,
                                  "p99_ms": 3000.0, "max_ms": 3100.0},
                       "after": {"failures": {}}}}
    p = point_record(backlog=4, start_delay_s=2.0, probe_rate=20.0, concurrency=10, row=row,
                     backlog_effective=4, wall_s=41.26)
    assert p["id"] == "backlog4-delay2-rate20x10" and p["wall_s"] == 41.3
    assert p["probe_failures"]["timeout"] == 2 and p["probe_failures"]["reset"] == 1
    assert (p["switch_p50_ms"], p["switch_p99_ms"], p["switch_max_ms"]) == (500.0, 3000.0,
                                                                            3100.0)
    assert (p["listen_overflows"], p["tcp_syn_retrans"], p["ab_non_2xx"]) == (7, 9, 2)
    assert failed_total(p) == 1 + 2 + 3


def test_the_table_claims_no_column_it_did_not_measure() -> None:
    text = table([point(effective=4, overflows=120), point(backlog=None, effective=4096)])
    head = text.splitlines()[0]
    assert "SYN/SYN-ACK retransmits" in head and "syn_1s" not in head
    rows = text.splitlines()[2:]
    assert rows[0].startswith("| 16 (4) | 2.0 | 20.0 | 10 | pass | 0 | 0 | 120 |")
    assert rows[1].startswith("| default (4096) |")
    assert rows[0].endswith("| 70.0 | 5 | overflows | agrees |")
    assert "| - |" in table([point(gap=None)])  # not measured: a dash, never 0


def numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?", text))


def test_the_words_are_rendered_from_the_points() -> None:
    held = point(backlog=None, effective=4096, gap=5.1, sent=19.8, clients=10)
    over = point(backlog=4, effective=4, gap=5.3, sent=19.9, clients=10, overflows=133,
                 tcp_syn_retrans=150, switch_max_ms=7300.0, max_latency_ms=7400.0)
    words = " ".join(guidance([held, over]))
    assert "5.1 to 5.3 s" in words
    assert "needs `Backlog=` >= 116" in words  # ceil(19.9 x 5.3 + 10)
    assert "0 listen overflows at 1 of 2 points" in words
    assert "133 to 133 overflows, 150 to 150 SYN/SYN-ACK retransmits" in words
    assert "reached 7.3 s" in words and "against 2.1 s where the queue held" in words
    assert "No request was lost in this map: the longest wait measured was 7.4 s" in words
    assert "in flight" not in words  # no latency before the switch was recorded
    calm, busy = dict(held, before_p50_ms=40.0), dict(over, probe_rate=50.0, concurrency=30,
                                                      probe_sent_per_s=49.0, before_p50_ms=200.0)
    flight = " ".join(guidance([calm, busy]))
    assert "0.8-0.8 at probe 20/s + ab -c 10; 9.8-9.8 at probe 50/s + ab -c 30" in flight
    # other measurements, other words: nothing is a fixed figure
    slower = [dict(held, restart_gap_probe_s=8.0), dict(over, restart_gap_probe_s=9.0)]
    assert "8.0 to 9.0 s" in " ".join(guidance(slower))
    assert numbers(" ".join(guidance(slower))) != numbers(words)


def test_the_words_name_what_was_lost_where() -> None:
    lost = point(backlog=4, effective=4, overflows=900, verdict="FAIL", gap=8.0,
                 probe_errors={"abandoned": 9, "timeout": 1}, ab_failed=2,
                 switch_max_ms=18700.0, max_latency_ms=30020.0)
    words = " ".join(guidance([lost, point(backlog=None, effective=4096)]))
    assert ("at 1 of 2 points requests got no answer while the load ran: 9 abandoned, "
            "1 timeout, 2 failed in ab at Backlog=4, start delay 2 s, probe 20/s + ab -c 10. "
            "The longest wait that was answered took 18.7 s; the longest a lost request waited "
            "before it was given up, 30.0 s.") in words
    older = dict(lost, probe_errors=None, probe_failures={"other": 9, "timeout": 1})
    assert "9 other, 1 timeout, 2 failed in ab at" in " ".join(guidance([older]))


def test_where_zero_downtime_ended_is_the_failed_point_of_least_excess() -> None:
    a = point(backlog=4, effective=4, overflows=300, verdict="FAIL", gap=9.0)
    b = point(backlog=16, effective=16, overflows=200, verdict="FAIL", gap=9.0)
    c = point(backlog=None, effective=4096, overflows=0)
    assert zero_downtime_end([a, b, c]).startswith(
        "Zero-downtime ended at Backlog=16, start delay 2 s, probe 20/s + ab -c 10: FAIL")
    assert "2 of 3 points failed" in zero_downtime_end([a, b, c])
    assert zero_downtime_end([c, point(effective=4, overflows=5, switch_max_ms=3200.0)]) == (
        "Zero-downtime held at every one of the 2 points (verdict pass: no request failed); "
        "at 1 of them clients waited in SYN retransmits (longest 3.2 s).")


def test_capacity_files_are_written(tmp_path: Path) -> None:
    points = [point(backlog=4, effective=4, overflows=90), point(backlog=None, effective=4096),
              point(gap=None)]
    write_capacity(tmp_path, points, {"box": "debian-bookworm", "systemd_version": 252,
                                      "run_id": "r", "scenario": "s", "wall_s": 600.0})
    md = (tmp_path / "capacity.md").read_text()
    assert "3 points on one VM (debian-bookworm, systemd 252), run r, 10.0 min" in md
    assert "## Guidance" in md and "None: every judged point agrees." in md
    assert (tmp_path / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    assert '"agreement": "not judged"' in (tmp_path / "capacity.json").read_text()


def test_the_grid_is_every_combination_and_each_point_its_own_dropins() -> None:
    settings = Settings(capacity_backlogs="4,default", capacity_delays="0,2.5",
                        capacity_rates="20/10")
    points = capacity_points(settings)
    assert [p.id for p in points] == [
        "backlog4-delay0-rate20x10", "backlogdefault-delay0-rate20x10",
        "backlog4-delay2.5-rate20x10", "backlogdefault-delay2.5-rate20x10"]
    four = points[2].overrides()
    assert four.socket_dropins == {BACKLOG_DROPIN: "[Socket]\nBacklog=4\n"}
    assert four.service_dropins == {DELAY_DROPIN: "[Service]\nEnvironment=PW_START_DELAY=2.5\n"}
    assert points[1].overrides().socket_dropins == {}  # default: the unit's own
    load = CapacityPoint(None, 0.0, 50.0, 30).settings(settings).load
    assert (load.probe_rate, load.concurrency) == (50.0, 30)
    assert len(capacity_points(Settings())) == 4 * 3 * 2


@pytest.mark.parametrize("name", [BACKLOG_DROPIN, DELAY_DROPIN])
def test_the_dropins_are_named_for_the_reset_to_remove(name: str) -> None:
    from pytest_portable_upgrade.subject.spec import DROPIN_PREFIX

    assert name.startswith(DROPIN_PREFIX) and name.endswith(".conf")


def test_the_default_markdown_names_the_prediction() -> None:
    md = markdown([point()], {})
    assert "arrivals = the probe's rate x the restart gap (probe) + ab's clients" in md


def test_the_backlog_and_the_counters_after_a_point_are_one_call_of_the_load_program() -> None:
    listening = "LISTEN 0 16 *:8080 *:*\n"
    answer = {"ok": True, "answers": [{"listeners": listening}, {"netstat": None}]}
    machine, fake = fake_machine({"load.py": (0, json.dumps(answer) + "\n")})
    service = SimpleNamespace(machine=machine, subject=WALKTHROUGH)
    assert read_after_point(service) == (listening, "")  # type: ignore[arg-type]
    (command,) = fake.commands
    assert sent_steps(command, program="load.py") == [
        {"step": "listeners", "port": WALKTHROUGH.port},
        {"step": "netstat", "path": "/proc/net/netstat"}]
