"""vm/load/timeline.py: the probe's JSON lines and what they prove about a reattach."""

from __future__ import annotations

import json

import pytest
from support import answer, failure

from pytest_portable_upgrade.load.timeline import (
    ProbeRecord,
    Timeline,
    parse_probe_log,
    parse_probe_skips,
)


def line(**fields: object) -> str:
    return json.dumps(fields)


def test_parse_probe_log_reads_records_sorted_by_send_time() -> None:
    text = "\n".join([
        line(t=10.4, latency_ms=2.5, status=200, greeting="Hello", visitor=7),
        line(t=10.0, latency_ms=1.0, error="connect-refused"),
        "",
        line(t=10.2, latency_ms=3.0, status=503),
    ]) + "\n"
    records = parse_probe_log(text)
    assert [r.t for r in records] == [10.0, 10.2, 10.4]
    assert records[0] == ProbeRecord(t=10.0, latency_ms=1.0, error="connect-refused")
    assert records[2].greeting == "Hello" and records[2].visitor == 7
    assert [r.ok for r in records] == [False, False, True]


def test_parse_probe_log_drops_a_torn_last_line() -> None:
    good = line(t=1.0, latency_ms=2.0, status=200, greeting="Hola", visitor=1)
    torn = '{"t": 1.2, "latency_ms": 3.1, "sta'
    records = parse_probe_log(f"{good}\n{torn}")
    assert records == [ProbeRecord(t=1.0, latency_ms=2.0, status=200, greeting="Hola",
                                   visitor=1)]


def test_parse_probe_log_raises_on_a_bad_line_in_the_middle() -> None:
    good = line(t=1.0, latency_ms=2.0, status=200, greeting="Hola", visitor=1)
    with pytest.raises(json.JSONDecodeError):
        parse_probe_log(f"{good}\n{{not json\n{good}\n")


def test_parse_probe_log_of_nothing() -> None:
    assert parse_probe_log("") == []


def test_record_ok_needs_200_and_a_visitor() -> None:
    assert answer(1.0, "Hello", 1).ok
    assert not ProbeRecord(t=1.0, latency_ms=1.0, status=200).ok  # 200 without an answer
    assert not ProbeRecord(t=1.0, latency_ms=1.0, status=503, visitor=3).ok
    assert not failure(1.0, "reset").ok
    assert answer(2.0, "Hello", 1, latency_ms=250.0).done_at == pytest.approx(2.25)


def test_build_counts_errors_by_kind() -> None:
    records = [
        answer(1.0, "Hello", 1), failure(1.2, "reset"), failure(1.4, "reset"),
        ProbeRecord(t=1.6, latency_ms=1.0, status=503), failure(1.8, "timeout"),
        answer(2.0, "Hola", 2),
    ]
    tl = Timeline.build(records, 0.0, "Hello", "Hola")
    assert tl.errors == {"reset": 2, "http-503": 1, "timeout": 1}
    assert [r.visitor for r in tl.answered] == [1, 2]
    assert (tl.old, tl.new, tl.t0) == ("Hello", "Hola", 0.0)


def test_build_without_errors() -> None:
    tl = Timeline.build([answer(1.0, "Hello", 1)], 0.0, "Hello", "Hola")
    assert tl.errors == {}


def test_switch_at_is_when_the_first_new_answer_completed() -> None:
    records = [answer(1.0, "Hello", 1), answer(1.2, "Hola", 2, latency_ms=300.0),
               answer(1.4, "Hola", 3)]
    tl = Timeline.build(records, 0.0, "Hello", "Hola")
    # Open loop: the Hola sent at 1.4 s completed before the one sent at 1.2 s (done 1.5 s).
    assert tl.switch_at == pytest.approx(records[2].done_at) and records[2].done_at < 1.5
    assert tl.first("Hola") == records[2] and tl.last("Hola") == records[1]
    assert tl.last("Hello") == records[0]


def test_switch_at_ignores_failed_records_and_is_none_without_new_answers() -> None:
    tl = Timeline.build([answer(1.0, "Hello", 1), failure(1.2, "reset")], 0.0, "Hello", "Hola")
    assert tl.switch_at is None
    assert tl.first("Hola") is None


def test_switched_cleanly_old_then_new() -> None:
    records = [answer(1.0, "Hello", 1), answer(1.2, "Hello", 2), answer(1.4, "Hola", 3),
               answer(1.6, "Hola", 4)]
    assert Timeline.build(records, 0.0, "Hello", "Hola").switched_cleanly is True


def test_switched_cleanly_false_when_old_answers_again() -> None:
    records = [answer(1.0, "Hello", 1), answer(1.2, "Hola", 2), answer(1.4, "Hello", 3),
               answer(1.6, "Hola", 4)]
    assert Timeline.build(records, 0.0, "Hello", "Hola").switched_cleanly is False


@pytest.mark.parametrize("greetings", [["Hello", "Hello"], ["Hola", "Hola"], []])
def test_switched_cleanly_false_without_both_versions(greetings: list[str]) -> None:
    records = [answer(1.0 + i, g, i + 1) for i, g in enumerate(greetings)]
    assert Timeline.build(records, 0.0, "Hello", "Hola").switched_cleanly is False


def test_longest_gap_between_completed_answers() -> None:
    records = [
        answer(10.0, "Hello", 1, latency_ms=0.0),   # done 10.0
        answer(10.2, "Hello", 2, latency_ms=0.0),   # done 10.2
        failure(10.4, "reset"),                     # not an answer: no end
        answer(10.3, "Hola", 3, latency_ms=1500.0),  # done 11.8: gap 1.6 s
        answer(12.0, "Hola", 4, latency_ms=0.0),    # done 12.0
    ]
    tl = Timeline.build(records, 10.0, "Hello", "Hola")
    assert tl.longest_gap_ms == pytest.approx(1600.0)


def test_longest_gap_with_fewer_than_two_answers() -> None:
    assert Timeline.build([], 0.0, "Hello", "Hola").longest_gap_ms == 0.0
    assert Timeline.build([answer(1.0, "Hola", 1)], 0.0, "Hello", "Hola").longest_gap_ms == 0.0


def test_max_latency_includes_failed_requests() -> None:
    records = [answer(1.0, "Hello", 1, latency_ms=12.5), failure(1.2, "timeout", 30000.0),
               answer(1.4, "Hola", 2, latency_ms=3.0)]
    assert Timeline.build(records, 0.0, "Hello", "Hola").max_latency_ms == 30000.0
    assert Timeline.build([], 0.0, "Hello", "Hola").max_latency_ms == 0.0


def test_counter_regressions() -> None:
    visitors = [1, 5, 5, 9, 3, 4, 10]
    records = [answer(1.0 + i / 2, "Hello", v) for i, v in enumerate(visitors)]
    records.insert(2, failure(1.15, "reset"))  # failures do not break the chain
    tl = Timeline.build(records, 0.0, "Hello", "Hola")
    # 5 twice; 3 and 4 below numbers answered a second or more before them (a reset).
    assert tl.counter_regressions() == [(5, 5), (5, 3), (9, 4)]


def test_overlapping_answers_may_complete_in_either_order() -> None:
    # Seen with the open-loop probe: a request sent 50 ms later got the smaller number
    # (711 then 709 by send time). That is concurrency, not a lost count.
    records = [answer(1.00, "Hello", 711, latency_ms=300.0), answer(1.05, "Hello", 709,
                                                                     latency_ms=150.0),
               answer(1.10, "Hello", 712, latency_ms=20.0), answer(3.0, "Hello", 720)]
    assert Timeline.build(records, 0.0, "Hello", "Hola").counter_regressions() == []


def test_a_counter_reset_is_a_regression_once_a_second_has_passed() -> None:
    records = [answer(1.0 + i / 20, "Hello", 500 + i) for i in range(20)]
    records += [answer(2.5 + i / 20, "Hola", 1 + i) for i in range(5)]
    regressions = Timeline.build(records, 0.0, "Hello", "Hola").counter_regressions()
    # The first v2 answer is below every number answered a second or more before it.
    assert regressions and regressions[0] == (510, 1)


def test_no_counter_regressions_when_strictly_increasing() -> None:
    records = [answer(1.0 + i, "Hello", v) for i, v in enumerate([2, 30, 31, 400])]
    assert Timeline.build(records, 0.0, "Hello", "Hola").counter_regressions() == []


def test_answered_seconds_of() -> None:
    records = [answer(1.0, "Hello", 1), answer(2.0, "Hola", 2, latency_ms=500.0),
               answer(3.0, "Hello", 3), answer(7.5, "Hola", 4, latency_ms=0.0)]
    tl = Timeline.build(records, 0.0, "Hello", "Hola")
    assert tl.answered_seconds_of("Hola") == pytest.approx(7.5 - 2.5)
    assert tl.answered_seconds_of("Hello") == pytest.approx(2.0)
    assert tl.answered_seconds_of("Bonjour") == 0.0
    assert Timeline.build([answer(1.0, "Hola", 1)], 0.0, "", "Hola").answered_seconds_of(
        "Hola") == 0.0


def test_dead_since_counts_only_failures_after_the_reattach() -> None:
    from pytest_portable_upgrade.load.load import dead_since
    from pytest_portable_upgrade.load.timeline import ProbeRecord

    ok = [ProbeRecord(t=100.0 + i, latency_ms=5, status=200, greeting="Hola", visitor=i)
          for i in range(3)]
    refused = [ProbeRecord(t=103.0 + i, latency_ms=1, error="connect-refused") for i in range(8)]
    assert dead_since(ok, after=100.0) == 0.0
    assert dead_since(ok + refused, after=100.0) == pytest.approx(8.0)  # 102 -> 110
    assert dead_since(refused, after=104.0) == pytest.approx(6.0)  # 104 -> 110
    assert dead_since(ok + refused, after=200.0) == 0.0  # nothing seen yet after the reattach


@pytest.mark.parametrize(("record", "kind"), [
    (answer(1.0, "Hello", 1), None),
    (failure(1.0, "refused"), "refused"), (failure(1.0, "connect-refused"), "refused"),
    (failure(1.0, "reset"), "reset"), (failure(1.0, "eof"), "eof"),
    (failure(1.0, "empty"), "eof"), (failure(1.0, "timeout"), "timeout"),
    (ProbeRecord(t=1.0, latency_ms=1.0, status=503), "non-2xx"),
    (ProbeRecord(t=1.0, latency_ms=1.0, status=301), "non-2xx"),
    (ProbeRecord(t=1.0, latency_ms=1.0, status=200), "other"),  # 200 without a greeting
    (failure(1.0, "garbled"), "other"), (failure(1.0, "oserror-113"), "other"),
    (failure(1.0, "abandoned"), "other"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_failure_class(record: ProbeRecord, kind: str | None) -> None:
    """The issue's classes; an older probe's names ("connect-refused", "empty") read the same."""
    assert record.failure_class == kind


def test_skipped_slots_are_not_requests() -> None:
    text = "\n".join([
        line(t=10.0, latency_ms=1.0, status=200, greeting="Hello", visitor=1),
        line(t=10.1, skipped="in-flight-bound", in_flight=200),
        line(t=10.05, skipped="in-flight-bound", in_flight=200),
    ]) + "\n"
    assert [r.t for r in parse_probe_log(text)] == [10.0]
    assert parse_probe_skips(text) == [10.05, 10.1]
    tl = Timeline.build(parse_probe_log(text), 9.0, "Hello", "Hola",
                        skipped=parse_probe_skips(text))
    assert tl.errors == {} and tl.skipped == [10.05, 10.1]


def test_a_field_a_newer_probe_adds_does_not_break_the_reader() -> None:
    text = line(t=1.0, latency_ms=2.0, status=200, greeting="Hola", visitor=1, conn_ms=0.3)
    assert parse_probe_log(text) == [answer(1.0, "Hola", 1, latency_ms=2.0)]
