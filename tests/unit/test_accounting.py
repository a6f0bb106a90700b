"""vm/load/accounting.py: done but unanswered, exact from visitor numbers or bounded by what
was in flight at stop; the verdict's problem line where 0 is expected."""

from __future__ import annotations

import json

import pytest
from support import DATA, T0, ab_result, answer, failure

from pytest_portable_upgrade.load.accounting import (
    AB_IN_FLIGHT,
    HEY_IN_FLIGHT,
    HOLDERS_IN_FLIGHT,
    KILLED_IN_FLIGHT,
    PROBE_IN_FLIGHT,
    ClientCount,
    Unanswered,
    ab_count,
    bounded_unanswered,
    done_between,
    exact_unanswered,
    expects_no_unanswered,
    hey_count,
    holders_count,
    probe_count,
    unanswered_figure,
    unanswered_problems,
    visitor_facts,
)
from pytest_portable_upgrade.load.hey import parse_hey_output
from pytest_portable_upgrade.load.long_lived import HolderSummary


def recorded(name: str) -> tuple[int, ClientCount]:
    """(what the server counted, hey's side) of a recorded run (data/README.md)."""
    result = parse_hey_output((DATA / f"{name}.txt").read_text())
    meta = json.loads((DATA / f"{name}.meta.json").read_text())
    done = meta["server_count"] if "server_count" in meta else meta["server"]["requests_read"]
    return done, ClientCount("hey", result.answered, 0, HEY_IN_FLIGHT)


def test_done_between_leaves_out_the_first_readings_own_request() -> None:
    # Reading before: count 100 (its own request became 101); the load took 102..250; the
    # reading after found 250 before its own request.
    assert done_between(100, 250) == 149
    assert done_between(7, 8) == 0
    with pytest.raises(ValueError, match="went back: 300 before, 250 after"):
        done_between(300, 250)


# --- exact: from recorded hey runs (hey leaves nothing in flight) ------------------------------


def test_recorded_naive_post_has_exactly_one_done_and_unanswered() -> None:
    done, hey = recorded("hey_naive_post")
    figure = bounded_unanswered(done, [hey])
    assert (figure.low, figure.high, figure.exact) == (1, 1, True)
    assert (figure.server_done, figure.answered) == (1449, 1448)
    assert "no request in flight at stop" in figure.reason


def test_recorded_naive_get_matches_the_count() -> None:
    done, hey = recorded("hey_naive_get")
    figure = bounded_unanswered(done, [hey])
    assert (figure.low, figure.high, figure.exact) == (0, 0, True)


def test_recorded_rude_get_counts_the_resent_and_the_timed_out() -> None:
    # 1164 read, 1099 answered: 34 resent after a reset, 12 answered after hey's timeout,
    # 19 answered with garbage.
    done, hey = recorded("hey_rude_get")
    figure = bounded_unanswered(done, [hey])
    assert (figure.low, figure.high, figure.exact) == (65, 65, True)


# --- bounded: ab leaves up to its concurrency in flight ----------------------------------------


def test_ab_and_probe_give_a_bound_with_the_reason_in_words() -> None:
    clients = [ClientCount("ab", 7000, 10, AB_IN_FLIGHT),
               ClientCount("probe", 540, 2, PROBE_IN_FLIGHT)]
    figure = bounded_unanswered(7546, clients)
    assert (figure.low, figure.high, figure.exact) == (-6, 6, False)
    assert (figure.server_done, figure.answered) == (7546, 7540)
    assert "ab 7000 + probe 540" in figure.reason
    assert "less up to 12 in flight at stop" in figure.reason
    assert AB_IN_FLIGHT in figure.reason and PROBE_IN_FLIGHT in figure.reason
    assert figure.describe().startswith("done but unanswered: -6..6 (bounded; server did 7546,")


def test_a_bound_that_excludes_zero() -> None:
    clients = [ClientCount("ab", 7000, 10, AB_IN_FLIGHT),
               ClientCount("hey", 8000, 0, HEY_IN_FLIGHT)]
    figure = bounded_unanswered(15_018, clients)
    assert (figure.low, figure.high) == (8, 18)
    assert "hey: " not in figure.reason  # only the clients that can leave some in flight


def test_a_client_without_words_says_its_bound() -> None:
    figure = bounded_unanswered(20, [ClientCount("holders", 15, 3)])
    assert "holders: up to 3 in flight" in figure.reason


def test_counts_are_not_negative() -> None:
    with pytest.raises(ValueError, match="ab: answered and in_flight_at_stop are counts"):
        ClientCount("ab", -1, 0)


# --- exact: from visitor numbers ---------------------------------------------------------------


def test_visitor_facts_missing_duplicates_and_outside() -> None:
    facts = visitor_facts([5, 6, 6, 8, 9, 12], first=5, last=10)
    assert facts.missing == (7, 10)
    assert facts.duplicates == (6,)
    assert facts.outside == (12,)


def test_exact_figure_from_visitor_numbers() -> None:
    # The probe alone between the readings took 102..120; 108 and 115 reached no one.
    numbers = [n for n in range(102, 121) if n not in (108, 115)]
    figure = exact_unanswered(visitor_facts(numbers, 102, 120))
    assert (figure.low, figure.high, figure.exact) == (2, 2, True)
    assert (figure.server_done, figure.answered) == (19, 17)
    assert "visitor numbers 102..120: 2 received by no client" in figure.reason


def test_exact_figure_says_which_numbers_came_twice() -> None:
    figure = exact_unanswered(visitor_facts([1, 2, 2, 3], 1, 4))
    assert (figure.low, figure.high) == (1, 1)
    assert "1 received twice: [2]" in figure.reason


def test_requests_in_flight_widen_the_exact_figure() -> None:
    figure = exact_unanswered(visitor_facts([1, 2, 4], 1, 6), in_flight_at_stop=2)
    assert (figure.low, figure.high, figure.exact) == (1, 3, False)
    assert "up to 2 of them were in flight at stop" in figure.reason


# --- the verdict's problem line ----------------------------------------------------------------


@pytest.mark.parametrize(("location", "shutdown", "proxy", "expected"), [
    ("host", "drain", None, True),
    ("host", "immediate", None, False),
    ("host", "drain", "haproxy", False),
    ("image", "drain", None, False),
])
def test_which_scenarios_expect_zero(location: str, shutdown: str, proxy: str | None,
                                     expected: bool) -> None:
    assert expects_no_unanswered(location, shutdown, proxy) is expected


def figure(low: int, high: int, done: int = 1000) -> Unanswered:
    return Unanswered(low=low, high=high, exact=low == high, server_done=done,
                      answered=done - high, reason="test")


def test_zero_expected_and_excluded_is_a_problem() -> None:
    problems = unanswered_problems(figure(8, 18), expect_zero=True)
    assert len(problems) == 1
    assert "the server did at least 8 requests whose answers no client got" in problems[0]
    assert "expected 0 with a host socket and a draining server" in problems[0]


def test_an_exact_nonzero_figure_says_so_without_at_least() -> None:
    problems = unanswered_problems(figure(1, 1), expect_zero=True)
    assert "the server did 1 requests whose" in problems[0]


@pytest.mark.parametrize(("low", "high"), [(0, 0), (-6, 6), (-10, 0)])
def test_a_bound_that_holds_zero_is_no_problem(low: int, high: int) -> None:
    assert unanswered_problems(figure(low, high), expect_zero=True) == []


def test_nonzero_where_not_expected_is_a_figure_not_a_problem() -> None:
    assert unanswered_problems(figure(11, 11), expect_zero=False) == []


def test_more_answers_than_counted_is_always_a_problem() -> None:
    for expect_zero in (True, False):
        problems = unanswered_problems(figure(-13, -3), expect_zero=expect_zero)
        assert problems == ["the clients got 1003 answers but the server counted only 1000 "
                            "requests: 3 answers the counter never counted"]


# --- each client's side ------------------------------------------------------------------------


def test_ab_counts_its_2xx_answers_and_its_concurrency_in_flight() -> None:
    count = ab_count(ab_result(complete=7000, failed=16, receive=7, exceptions=9, non_2xx=3),
                     concurrency=10)
    assert count == ClientCount("ab", 7000 - 7 - 3, 10, AB_IN_FLIGHT)


def test_hey_stopped_leaves_none_in_flight_killed_up_to_c() -> None:
    result = parse_hey_output((DATA / "hey_rude_get.txt").read_text())
    assert hey_count(result, 4) == ClientCount("hey", 1000, 0, HEY_IN_FLIGHT)  # not the 503s
    assert hey_count(result, 4, stopped=False) == ClientCount("hey", 1000, 4, KILLED_IN_FLIGHT)


def test_probe_counts_its_answers_and_its_abandoned_requests() -> None:
    records = [answer(T0 + 0.1, "Hello", 3), answer(T0 + 0.2, "Hola", 9),
               failure(T0 + 0.3, "reset"), failure(T0 + 0.4, "abandoned"),
               failure(T0 + 0.5, "abandoned")]
    assert probe_count(records) == ClientCount("probe", 2, 2, PROBE_IN_FLIGHT)


def test_holders_may_each_have_one_in_flight() -> None:
    summary = HolderSummary(connections=20, requests=1500, answered=1490, broken=0,
                            server_closed=20, connect_errors=0, switched_in_place=0)
    assert holders_count(summary) == ClientCount("holders", 1490, 20, HOLDERS_IN_FLIGHT)


def test_figure_of_a_load_between_two_readings_bounded() -> None:
    # Before: 100; ab 7000 answers (-c 10), probe 540 (none abandoned); after: 7651.
    clients = [ClientCount("ab", 7000, 10, AB_IN_FLIGHT), ClientCount("probe", 540, 0)]
    figure = unanswered_figure(100, 7651, clients)
    assert (figure.server_done, figure.low, figure.high, figure.exact) == (7550, 0, 10, False)


def test_figure_of_a_load_between_two_readings_exact_from_numbers() -> None:
    # Before: 100 (the reading took 101); the probe alone took 102..110; 105 reached no one.
    figure = unanswered_figure(100, 110, [ClientCount("probe", 8, 0)],
                               numbers=[102, 103, 104, 106, 107, 108, 109, 110])
    assert (figure.server_done, figure.low, figure.high, figure.exact) == (9, 1, 1, True)
    assert "visitor numbers 102..110" in figure.reason
