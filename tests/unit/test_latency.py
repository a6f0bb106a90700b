"""vm/load/latency.py over recorded probe logs (tests/unit/data/probe_*.jsonl, see README.md there).

probe_restart and probe_syn_step were recorded with the real probe and the real server on
127.0.0.1; probe_classes is hand-written to hold every failure class (and two older names).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import DATA, T0, answer, failure, outcome, reattach

from pytest_portable_upgrade.load.latency import (
    SWITCH_TAIL_S,
    WINDOWS,
    LatencyReport,
    latency_report,
    longest_gap,
    percentile,
    stall_problems,
    syn_steps,
)
from pytest_portable_upgrade.load.timeline import (
    FAILURE_CLASSES,
    Timeline,
    parse_probe_log,
    parse_probe_skips,
)
from pytest_portable_upgrade.scenarios.verdict import _stall


def recorded(name: str) -> tuple[LatencyReport, Timeline, dict[str, Any]]:
    text = (DATA / f"{name}.jsonl").read_text()
    meta = json.loads((DATA / f"{name}.meta.json").read_text())
    tl = Timeline.build(parse_probe_log(text), meta["t0"], "Hello", "Hola",
                        skipped=parse_probe_skips(text))
    return latency_report(tl, meta["reattach_started"], meta["stopped"]), tl, meta


def no_failures() -> dict[str, int]:
    return dict.fromkeys(FAILURE_CLASSES, 0)


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([], 50, None), ([7.0], 99, 7.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    ([float(i) for i in range(1, 101)], 99, 99.0), ([float(i) for i in range(1, 101)], 100, 100.0),
    ([float(i) for i in range(1, 61)], 99, 60.0),  # 60 samples: p99 is the slowest one
])
def test_percentile_is_nearest_rank(values: list[float], p: float, expected: float | None
                                    ) -> None:
    assert percentile(values, p) == expected


def test_restart_windows_show_the_queue_in_the_switch_window_only() -> None:
    """v1 stopped at +3.0 s, nothing served for 1.5 s, v2 on the same socket: every request
    sent meanwhile waited in the socket's queue and was answered; none failed."""
    report, tl, meta = recorded("probe_restart")
    before, switch, after = (report.window(name) for name in WINDOWS)
    assert sum(w.requests for w in report.windows) == len(tl.records)
    assert all(w.failures == no_failures() for w in report.windows)
    assert before.p99_ms is not None and before.p99_ms < 50
    assert after.p99_ms is not None and after.p99_ms < 50
    # The queue: the first request sent into the dead time waited about all of it.
    assert switch.max_ms is not None and 1300 < switch.max_ms < 2000
    assert switch.p99_ms == switch.max_ms  # 72 requests: p99 is the slowest
    assert switch.p50_ms is not None and switch.p50_ms < 50  # most came after v2 was back
    # Window bounds: the reattach start, and v2's first answer + 2 s.
    assert before.end == switch.start == meta["reattach_started"]
    assert tl.switch_at is not None
    assert switch.end == after.start == pytest.approx(tl.switch_at + SWITCH_TAIL_S)
    assert after.end is None
    assert 1400 < report.longest_gap_ms < 2000
    assert report.longest_gap_start is not None
    assert report.longest_gap_start - meta["t0"] == pytest.approx(3.0, abs=0.1)
    assert report.sent_per_s == pytest.approx(20.0, abs=0.5)
    assert report.not_sent == 0


def test_a_queue_draining_through_the_band_is_the_syn_count_background() -> None:
    """A linear drain at 20/s passes the [1.0, 1.2) s band in 0.2 s: about 4 requests. The
    documented background that a real step must stand out from."""
    report, _, _ = recorded("probe_restart")
    assert report.syn_1s <= 5 and report.syn_3s == 0


def test_syn_retransmit_steps_are_counted_in_the_switch_window() -> None:
    """Accept queue of 2, nothing accepting for 2.5 s: the kernel dropped SYNs and the probe's
    connects went through on the retransmits 1 s and 3 s later (recorded on 127.0.0.1)."""
    report, tl, _ = recorded("probe_syn_step")
    restart, _, _ = recorded("probe_restart")
    switch = report.window("switch")
    assert switch.syn_1s >= 15 and switch.syn_1s >= 3 * restart.syn_1s
    assert switch.syn_3s >= 5
    assert report.window("before").syn_1s == report.window("after").syn_1s == 0
    assert (report.syn_1s, report.syn_3s) == (switch.syn_1s, switch.syn_3s)
    assert switch.p50_ms is not None and switch.p50_ms > 1000  # most waited a retransmit
    assert switch.failures == no_failures()  # slow, not lost
    assert syn_steps(tl.records) == {"syn_1s": report.syn_1s, "syn_3s": report.syn_3s}


def test_every_failure_class_lands_in_its_window() -> None:
    report, tl, _ = recorded("probe_classes")
    before, switch, after = (report.window(name) for name in WINDOWS)
    assert before.failures == {**no_failures(), "non-2xx": 1}
    # "connect-refused" and "empty" are an older probe's names for refused and eof.
    assert switch.failures == {**no_failures(), "refused": 2, "reset": 1, "eof": 2, "other": 1}
    assert after.failures == {**no_failures(), "timeout": 1, "other": 1}  # other: abandoned
    assert (before.failed, switch.failed, after.failed) == (1, 6, 2)
    assert (switch.not_sent, before.not_sent + after.not_sent) == (1, 0)
    assert (switch.syn_1s, switch.syn_3s) == (1, 1)
    # Latencies are of answers only: the 30 s timeout is not the after window's max.
    assert after.max_ms == 3.0
    assert switch.max_ms == 3100.0
    # v2 first answered at +3.753 s (sent at +3.75); the request sent at +3.5 waited for a
    # retransmitted SYN and completed later: the switch window ends at +5.753 s.
    assert [w.requests for w in report.windows] == [8, 16, 14]
    assert sum(w.answered for w in report.windows) == len(tl.answered)


def test_summary_fields_are_json_with_times_after_the_load_start() -> None:
    report, _, _ = recorded("probe_classes")
    fields = report.summary_fields()
    json.dumps(fields)
    assert set(fields["latency"]) == set(WINDOWS)
    switch = fields["latency"]["switch"]
    assert (switch["from_s"], switch["to_s"]) == (2.0, 5.75)  # first Hola done at +3.753 s
    assert fields["latency"]["after"]["to_s"] is None
    assert switch["failures"]["refused"] == 2 and switch["not_sent"] == 1
    assert (fields["syn_retransmit_1s"], fields["syn_retransmit_3s"]) == (1, 1)
    assert fields["longest_gap_ms"] == 2000.0 and fields["longest_gap_at_s"] == 1.75
    assert fields["probe_not_sent"] == 1


def test_without_a_switch_the_switch_window_runs_to_the_end() -> None:
    records = [answer(T0 + 1.0 + i / 5, "Hello", 3 + i) for i in range(20)]
    records += [failure(T0 + 6.0 + i / 5, "refused") for i in range(10)]
    report = latency_report(Timeline.build(records, T0, "Hello", "Hola"), T0 + 5.0, T0 + 10.0)
    before, switch, after = (report.window(name) for name in WINDOWS)
    assert (before.requests, switch.requests, after.requests) == (20, 10, 0)
    assert switch.end is None and after.start is None
    assert switch.failures["refused"] == 10 and switch.p50_ms is None
    assert report.summary_fields()["latency"]["after"]["from_s"] is None


def test_longest_gap_counts_a_port_that_never_came_back() -> None:
    records = [answer(T0 + 1.0, "Hello", 1, 0.0), answer(T0 + 1.5, "Hello", 2, 0.0),
               failure(T0 + 2.0, "refused")]
    assert longest_gap(records, until=T0 + 9.5) == (8000.0, T0 + 1.5)
    # Answered until the end: only the gaps between answers.
    assert longest_gap(records, until=T0 + 1.6) == (500.0, T0 + 1.0)


def test_longest_gap_without_any_answer_is_the_whole_probe() -> None:
    assert longest_gap([failure(T0 + 2.0, "refused")], until=T0 + 12.0) == (10000.0, T0 + 2.0)
    assert longest_gap([], until=T0 + 12.0) == (0.0, None)


def test_max_stall_is_off_by_default_and_names_both_numbers() -> None:
    report, _, _ = recorded("probe_restart")  # longest gap ~1.5 s from +3.0 s
    assert stall_problems(report, None) == []
    assert stall_problems(report, 2.0) == []
    problems = stall_problems(report, 1.0)
    assert len(problems) == 1
    gap_s = report.longest_gap_ms / 1000
    assert problems[0].startswith(f"longest gap {gap_s:.1f} s exceeds --max-stall 1 s (from +3.")


def test_run_scenario_adds_the_max_stall_problem() -> None:
    """The helper run_scenario calls before it returns: gap measured to the load's end."""
    records = [answer(T0 + 1.0 + i / 5, "Hello", 3 + i) for i in range(20)]  # to +4.8 s
    out = outcome(records, stopped=T0 + 30.0)
    assert _stall(out, reattach(), None) == []
    assert _stall(out, reattach(), 30.0) == []
    assert _stall(out, reattach(), 10.0) == [
        "longest gap 25.2 s exceeds --max-stall 10 s (from +4.8 s)"]
