"""vm/scenarios/checks.py over hand-built measurements: each check fails for the reason it names.

The clean run (support.clean_records): load from T0 to T0+30 s, reattach at +5.0..+6.5 s,
'Hello' answered until +6.0 s, 'Hola' from +6.2 s on, ab ran 29.9 s without a failure.
"""

from __future__ import annotations

import dataclasses

import pytest
from support import (
    T0,
    ab_result,
    answer,
    clean_records,
    failure,
    healthy_socket,
    outcome,
    probe_series,
    reattach,
)

from pytest_portable_upgrade.load.load import LoadOutcome
from pytest_portable_upgrade.scenarios.checks import (
    SocketObservation,
    counter_consistent,
    load_spanned_switch,
    socket_untouched,
    switched_cleanly,
    zero_downtime_problems,
    zero_failures,
)

MIN_COMPLETE = 200
POST_SWITCH = 10.0
# Every request of the clean run counted: ab's plus the probe's, and a few more.
FINAL_COUNT = 7000 + len(clean_records()) + 17


def problems_of(out: LoadOutcome, final_count: int = FINAL_COUNT,
                socket: SocketObservation | None = None,
                post_switch_s: float = POST_SWITCH) -> list[str]:
    return zero_downtime_problems(out, reattach(), socket or healthy_socket(), final_count,
                                  MIN_COMPLETE, post_switch_s)


def test_clean_run_has_no_problems() -> None:
    out = outcome(clean_records())
    assert out.timeline.switch_at is not None
    assert problems_of(out) == []


def test_ab_failures_are_a_problem_with_the_numbers() -> None:
    ab = ab_result(failed=16, receive=7, exceptions=9, non_2xx=3)
    problems = zero_failures(outcome(clean_records(), ab=ab), MIN_COMPLETE)
    assert len(problems) == 1
    assert problems[0].startswith("ab saw failures")
    for part in ("16 failed", "receive 7", "exceptions 9", "3 non-2xx"):
        assert part in problems[0]
    assert any("ab saw failures" in p for p in problems_of(outcome(clean_records(), ab=ab)))


def test_non_2xx_alone_is_a_problem() -> None:
    problems = zero_failures(outcome(clean_records(), ab=ab_result(non_2xx=1)), MIN_COMPLETE)
    assert problems and "1 non-2xx" in problems[0]


def test_too_few_complete_requests_is_a_problem() -> None:
    problems = zero_failures(outcome(clean_records(), ab=ab_result(complete=150)), MIN_COMPLETE)
    assert problems == ["ab completed only 150 requests (< 200)"]


def test_probe_errors_are_a_problem() -> None:
    records = clean_records()
    records[31:33] = [failure(records[31].t, "connect-refused"),
                      failure(records[32].t, "connect-refused")]
    problems = zero_failures(outcome(records), MIN_COMPLETE)
    assert problems == ["the probe saw failed requests: {'connect-refused': 2}"]


def test_load_that_never_saw_the_new_version_is_a_problem() -> None:
    # The load ran 30 s clean, but only v1 ever answered: the run proves nothing.
    records = probe_series(T0 + 0.2, T0 + 30.0, "Hello", first_visitor=3)
    out = outcome(records)
    assert out.timeline.switch_at is None
    problems = load_spanned_switch(out, reattach(), POST_SWITCH)
    assert any("never saw 'Hola'" in p and "tested nothing" in p for p in problems)
    assert problems_of(out) != []
    assert any("never saw 'Hola'" in p for p in problems_of(out))


def test_load_that_ended_before_the_new_version_answered_is_a_problem() -> None:
    # Load and probe stopped at +6.1 s, before v2's first answer (+6.2 s and later).
    records = [r for r in clean_records() if r.t < T0 + 6.1]
    out = outcome(records, stopped=T0 + 6.1)
    problems = problems_of(out)
    assert any("never saw 'Hola'" in p for p in problems)


def test_new_answers_seen_only_after_the_load_stopped_are_a_problem() -> None:
    # The probe outlives ab: v2 answers after ``stopped`` must not count as load on v2.
    records = clean_records()
    out = outcome(records, stopped=T0 + 6.1, ab=ab_result(time_taken_s=6.0))
    problems = load_spanned_switch(out, reattach(), POST_SWITCH)
    assert any("answered only" in p and "ended too early" in p for p in problems)


def test_v2_served_less_than_post_switch_is_a_problem() -> None:
    records = [r for r in clean_records() if r.t < T0 + 12.0]
    out = outcome(records, stopped=T0 + 12.0)
    problems = load_spanned_switch(out, reattach(), POST_SWITCH)
    assert len(problems) == 1
    assert "answered only 5.8 s under load (wanted 10 s)" in problems[0]
    # The same run passes when 5 s of v2 were asked for.
    assert load_spanned_switch(out, reattach(), 5.0) == []


def test_ab_ending_long_before_the_window_is_a_problem() -> None:
    out = outcome(clean_records(), ab=ab_result(time_taken_s=10.0))
    problems = load_spanned_switch(out, reattach(), POST_SWITCH)
    assert problems == ["ab ran 10.0 s of the 30.0 s load window: it ended early"]
    assert problems_of(out) == problems


def test_ab_started_late_after_the_holders_ran_to_the_end() -> None:
    # Seen on trixie under TCG: the probe and 20 holders took 3 s to start before ab did; ab
    # then ran 30.8 s up to the stop. Measured from the load's start it looked short.
    out = outcome(clean_records(), started=T0, stopped=T0 + 33.8, ab_started=T0 + 3.0,
                  ab=ab_result(time_taken_s=30.8))
    assert load_spanned_switch(out, reattach(), POST_SWITCH) == []
    # ab stopping 5 s before the end is still caught, and the window is ab's own.
    short = outcome(clean_records(), started=T0, stopped=T0 + 33.8, ab_started=T0 + 3.0,
                    ab=ab_result(time_taken_s=25.8))
    assert load_spanned_switch(short, reattach(), POST_SWITCH) == [
        "ab ran 25.8 s of the 30.8 s load window: it ended early"]


def test_ab_a_little_shorter_than_the_window_is_fine() -> None:
    # ab's report stops a moment before the harness reads the guest clock.
    out = outcome(clean_records(), ab=ab_result(time_taken_s=27.0))
    assert load_spanned_switch(out, reattach(), POST_SWITCH) == []


def test_ab_that_ended_before_the_switch_is_a_problem_even_with_a_short_post_switch() -> None:
    # ab ended at +5.5 s (reattach +5.0..+6.5 s, first 'Hola' done at +6.2 s); only the probe
    # went on until the load was stopped at +10 s, 3.8 s after the switch.
    records = [r for r in clean_records() if r.t < T0 + 10.0]
    out = outcome(records, stopped=T0 + 10.0, ab=ab_result(time_taken_s=5.5))
    assert out.started + out.ab.time_taken_s < out.timeline.switch_at  # type: ignore[operator]
    assert problems_of(out, post_switch_s=3.0) != []


def test_load_started_after_the_reattach_is_a_problem() -> None:
    out = outcome(clean_records(), started=T0 + 5.5)
    problems = load_spanned_switch(out, reattach(), POST_SWITCH)
    assert "the load started only after the reattach began" in problems


def test_no_old_answer_before_the_reattach_is_a_problem() -> None:
    records = [r for r in clean_records() if r.greeting == "Hola"]
    problems = load_spanned_switch(outcome(records), reattach(), POST_SWITCH)
    assert "the probe saw no 'Hello' answer under load before the reattach" in problems


def test_old_answer_after_the_first_new_one_is_a_problem() -> None:
    records = clean_records()
    i = next(i for i, r in enumerate(records) if r.t > T0 + 8.0)
    records[i] = answer(records[i].t, "Hello", records[i].visitor)  # type: ignore[arg-type]
    out = outcome(records)
    problems = switched_cleanly(out)
    assert len(problems) == 1
    assert problems[0].startswith("'Hello' answered again after the first 'Hola'")
    assert "+8.2 s" in problems[0]
    assert problems[0] in problems_of(out)


def test_switched_cleanly_check_is_silent_for_a_clean_switch() -> None:
    assert switched_cleanly(outcome(clean_records())) == []


def test_restarted_socket_is_a_problem() -> None:
    obs = SocketObservation("123456789", "987654321", "active")
    problems = socket_untouched(obs)
    assert len(problems) == 1
    assert "restarted" in problems[0]
    assert "123456789 -> 987654321" in problems[0]
    assert problems[0] in problems_of(outcome(clean_records()), socket=obs)


@pytest.mark.parametrize("state", ["inactive", "failed", "activating", ""])
def test_socket_not_active_is_a_problem(state: str) -> None:
    problems = socket_untouched(SocketObservation("5", "5", state))
    assert problems == [f"the host socket is {state!r} after the reattach"]


def test_untouched_socket_has_no_problem() -> None:
    assert socket_untouched(healthy_socket()) == []


def test_counter_below_answered_requests_is_a_problem() -> None:
    out = outcome(clean_records())
    answered = out.ab.successful + len(out.timeline.answered)
    assert counter_consistent(out, answered) == []
    problems = counter_consistent(out, answered - 1)
    assert len(problems) == 1
    assert f"the counter ends at {answered - 1}, below the {answered} answered" in problems[0]
    assert f"(ab 7000 + probe {len(out.timeline.answered)})" in problems[0]
    assert problems[0] in problems_of(out, final_count=answered - 1)


def test_regressing_visitor_numbers_are_a_problem() -> None:
    records = clean_records()
    # v2 started from a lost count: its first visitors repeat v1's numbers.
    records = [r if r.greeting == "Hello" else dataclasses.replace(r, visitor=r.visitor - 900)
               for r in records]  # type: ignore[operator]
    out = outcome(records)
    regressions = out.timeline.counter_regressions()
    assert regressions and regressions[0][1] == 100 and regressions[0][0] > 100
    problems = counter_consistent(out, FINAL_COUNT)
    assert len(problems) == 1
    first = f"the counter went back or repeated: {regressions[:1]}"[:-1]
    assert problems[0].startswith(first)


def test_every_problem_is_reported_at_once() -> None:
    records = probe_series(T0 + 0.2, T0 + 30.0, "Hello", first_visitor=3)
    out = outcome(records, ab=ab_result(failed=2, receive=2, time_taken_s=3.0))
    problems = problems_of(out, final_count=0,
                           socket=SocketObservation("1", "2", "failed"))
    joined = "\n".join(problems)
    for part in ("never saw 'Hola'", "ab ran 3.0 s", "ab saw failures", "restarted",
                 "'failed' after the reattach", "the counter ends at 0"):
        assert part in joined
