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
    WAIT_MARGIN_MS,
    WINDOWS,
    LatencyReport,
    latency_report,
    longest_gap,
    percentile,
    probe_restart_gap,
    stall_problems,
)
from pytest_portable_upgrade.load.timeline import (
    FAILURE_CLASSES,
    ProbeRecord,
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


def test_no_latency_band_is_reported_as_a_retransmit() -> None:
    """A queue draining after a restart passes through 1 s (probe_restart: 4 answers in
    [1.0, 1.2) s, none dropped): no field may count latencies as SYN retransmits. The
    kernel's counters say that (kernel.py)."""
    report, tl, _ = recorded("probe_restart")
    assert sum(1000 <= r.latency_ms < 1200 for r in tl.records) >= 3  # the drain is in the band
    fields = report.summary_fields()
    keys = set(fields) | {k for w in fields["latency"].values() for k in w}
    assert [k for k in keys if "syn" in k.lower() or "retrans" in k.lower()] == []


def test_a_full_accept_queue_shows_in_latency_as_slowness_not_loss() -> None:
    """Accept queue of 2, nothing accepting for 2.5 s: the kernel dropped SYNs and the probe's
    connects went through on the retransmits 1 s and 3 s later (recorded on 127.0.0.1)."""
    report, _, _ = recorded("probe_syn_step")
    switch = report.window("switch")
    assert switch.p50_ms is not None and switch.p50_ms > 1000  # most waited a retransmit
    assert switch.max_ms is not None and switch.max_ms > 3000
    assert switch.failures == no_failures()  # slow, not lost
    assert report.window("before").max_ms is not None and report.window("before").max_ms < 50


@pytest.mark.parametrize("name", ["probe_restart", "probe_syn_step"])
def test_the_probe_restart_gap_is_the_time_nothing_served(name: str) -> None:
    """Both recordings: v1 got SIGTERM at +3.0 s and v2 served after ``nothing_serves_s``
    (1.5 s, 2.5 s). The first request that waited was sent within one probe interval (50 ms)
    of the SIGTERM; the gap ends at v2's first answer."""
    report, tl, meta = recorded(name)
    gap = probe_restart_gap(tl, meta["reattach_started"])
    assert gap is not None and gap == report.restart_gap
    start, end = gap
    assert end == tl.switch_at
    assert 0 <= start - meta["reattach_started"] <= 0.1
    assert end - start == pytest.approx(meta["nothing_serves_s"], abs=0.1)
    first = next(r for r in tl.records if r.t == start)
    assert first.greeting == "Hola" and first.latency_ms > 1000
    # The request sent just before it was answered by v1 at once: it did not wait.
    previous = max((r for r in tl.records if r.t < start), key=lambda r: r.t)
    assert previous.greeting == "Hello" and previous.latency_ms < 50
    fields = report.summary_fields()
    assert fields["restart_gap_probe_s"] == round(end - start, 2)
    assert fields["restart_gap_probe_at_s"] == round(start - meta["t0"], 2)


def gap_of(records: list[ProbeRecord], reattach_at: float = T0 + 5.0
           ) -> tuple[float, float] | None:
    return probe_restart_gap(Timeline.build(records, T0, "Hello", "Hola"), reattach_at)


def baseline() -> list[ProbeRecord]:
    """v1 answers every 0.2 s from +0.2 s to +4.8 s, p99 4 ms."""
    return [answer(T0 + 0.2 + i / 5, "Hello", 3 + i) for i in range(24)]


def test_the_probe_gap_starts_at_the_first_request_that_waited() -> None:
    after = [answer(T0 + 7.0 + i / 5, "Hola", 100 + i) for i in range(10)]
    waited = [answer(T0 + 5.4, "Hola", 90, latency_ms=1500.0),  # done +6.9: first Hola
              answer(T0 + 5.6, "Hola", 91, latency_ms=1302.0)]
    assert gap_of(baseline() + waited + after) == (T0 + 5.4, T0 + 6.9)
    # Waiting means more than WAIT_MARGIN_MS above the p99 before the reattach (4 ms).
    for latency_ms, waited_too in ((4.0 + WAIT_MARGIN_MS, False), (5.0 + WAIT_MARGIN_MS, True)):
        first = answer(T0 + 5.2, "Hola", 89, latency_ms=latency_ms)
        assert gap_of([*baseline(), first, *after]) == (
            (T0 + 5.2, first.done_at) if waited_too else None), latency_ms


def test_the_probe_gap_ignores_what_v1_answered_and_what_came_before_the_reattach() -> None:
    after = [answer(T0 + 7.0 + i / 5, "Hola", 100 + i) for i in range(10)]
    waited = [answer(T0 + 5.4, "Hola", 90, latency_ms=1500.0)]
    v1_slow = answer(T0 + 5.1, "Hello", 80, latency_ms=900.0)  # v1 busy during the reattach
    before = answer(T0 + 4.9, "Hola", 79, latency_ms=2100.0)  # sent before the reattach
    assert gap_of([*baseline(), before, v1_slow, *waited, *after]) == (T0 + 5.4, T0 + 6.9)


def test_no_probe_gap_without_a_switch_a_baseline_or_a_wait() -> None:
    waited = [answer(T0 + 5.4, "Hola", 90, latency_ms=1500.0)]
    assert gap_of(baseline()) is None  # v2 never answered
    assert gap_of(waited, reattach_at=T0 + 5.0) is None  # nothing before to compare with
    prompt = [answer(T0 + 5.0 + i / 5, "Hola", 100 + i) for i in range(10)]
    assert gap_of(baseline() + prompt) is None  # v2 answered at once: nobody waited


def test_every_failure_class_lands_in_its_window() -> None:
    report, tl, _ = recorded("probe_classes")
    before, switch, after = (report.window(name) for name in WINDOWS)
    assert before.failures == {**no_failures(), "non-2xx": 1}
    # "connect-refused" and "empty" are an older probe's names for refused and eof.
    assert switch.failures == {**no_failures(), "refused": 2, "reset": 1, "eof": 2, "other": 1}
    assert after.failures == {**no_failures(), "timeout": 1, "other": 1}  # other: abandoned
    assert (before.failed, switch.failed, after.failed) == (1, 6, 2)
    assert (switch.not_sent, before.not_sent + after.not_sent) == (1, 0)
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
    # The first request that waited: sent at +3.5 s, answered by Hola at +3.753 s.
    assert (fields["restart_gap_probe_s"], fields["restart_gap_probe_at_s"]) == (0.25, 3.5)
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
