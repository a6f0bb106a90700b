"""Whose view is "0 failed"? hey beside ab in the verdict, and the done-but-unanswered figure.

Each run is ``support.scenario_run`` (a valid run that lost nothing) with one of the recorded
hey reports (tests/unit/data) and counter readings before and after the load; then spoilt on
purpose. Every check here has a run that turns it red.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from support import (
    DATA,
    T0,
    ab_result,
    clean_records,
    failure,
    greeted,
    new_of,
    old_of,
    outcome,
    scenario_run,
)

from pytest_portable_upgrade.load.hey import HeyResult, parse_hey_output
from pytest_portable_upgrade.load.load import LoadOutcome
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.checks import counter_consistent
from pytest_portable_upgrade.scenarios.run import ScenarioRun
from pytest_portable_upgrade.scenarios.verdict import (
    EXPECTED_LOSS,
    FAIL,
    PASS,
    losses_of,
    unanswered_of,
    verdict_of,
)

DRAIN = get_scenario("host-socket-keepalive-drain")
DRAIN_POST = get_scenario("host-socket-keepalive-drain-post")
NAIVE_POST = get_scenario("host-socket-keepalive-naive-post")
HAPROXY_POST = get_scenario("host-socket-keepalive-haproxy-post")
HAPROXY = get_scenario("host-socket-keepalive-haproxy")
BEFORE = 5_000  # the counter read after the greeting, before the load


def hey(name: str) -> HeyResult:
    return parse_hey_output((DATA / f"{name}.txt").read_text())


def load(s: Scenario, hey_result: HeyResult | None, method: str = "GET",
         **ab: Any) -> LoadOutcome:
    records = greeted(clean_records(), old_of(s), new_of(s))
    out = outcome(records, ab=ab_result(**ab) if ab else None, old=old_of(s), new=new_of(s))
    return dataclasses.replace(out, hey=hey_result, method=method)


def answered(out: LoadOutcome) -> int:
    """Every 2xx answer the clients got: what the counter must have counted at least."""
    return (out.ab.successful + (out.hey.successful if out.hey else 0)
            + sum(1 for r in out.timeline.records if r.ok))


def run_of(s: Scenario, out: LoadOutcome, unanswered: int = 0, **changes: Any) -> ScenarioRun:
    """A run whose server did ``unanswered`` requests beyond every client's answers (the
    reading after the load is one request of its own)."""
    fields: dict[str, Any] = {"count_before": BEFORE,
                              "final_count": BEFORE + 1 + answered(out) + unanswered}
    fields.update(changes)
    return scenario_run(s, out, **fields)


# --- hey in the verdict ---------------------------------------------------------------------------
def test_a_clean_hey_run_beside_ab_passes_and_says_what_hey_saw() -> None:
    run = run_of(DRAIN, load(DRAIN, hey("hey_get_keepalive")))
    v = verdict_of(run)
    assert v.kind == PASS, v.explain()
    assert "hey 1001 answered (0 non-2xx), 0 failed" in v.observed


def test_hey_failures_fail_a_zero_downtime_run_that_ab_and_the_probe_saw_none_of() -> None:
    run = run_of(DRAIN_POST, load(DRAIN_POST, hey("hey_naive_post"), method="POST"))
    v = verdict_of(run)
    assert v.kind == FAIL
    assert "hey saw failures: 1448 answered (0 non-2xx), 11 failed (reset 10, eof 1), " \
           "409.0 req/s over 3.6 s" in v.problems
    why = [p for p in v.problems if p.startswith("why: hey lost 11 POSTs")]
    assert len(why) == 1 and "Go's client never resends a POST" in why[0]
    assert "drain keep-alive connections on stop" in why[0]


def test_behind_a_proxy_the_words_do_not_tell_to_put_a_proxy_in_front() -> None:
    run = run_of(HAPROXY_POST, load(HAPROXY_POST, hey("hey_naive_post"), method="POST"))
    why = [p for p in verdict_of(run).problems if p.startswith("why: hey lost")]
    assert why and "proxy in front" not in why[0]


def test_hey_losses_alone_are_the_loss_a_characterisation_shows() -> None:
    run = run_of(NAIVE_POST, load(NAIVE_POST, hey("hey_naive_post"), method="POST"))
    assert any(p.startswith("hey saw failures") for p in losses_of(run))
    assert verdict_of(run).kind == EXPECTED_LOSS
    # The same run without hey lost nothing: the characterisation would FAIL.
    without = run_of(NAIVE_POST, load(NAIVE_POST, None, method="POST"))
    assert verdict_of(without).short == "nothing lost"


def test_too_few_hey_answers_make_any_run_invalid() -> None:
    small = hey("hey_get_keepalive")  # 1001 answers
    for s in (DRAIN, NAIVE_POST):
        run = run_of(s, load(s, small, method=s.method or "GET"), min_complete=2000)
        # ab's 7000 make the bar; hey's 1001 do not.
        v = verdict_of(run)
        assert v.kind == FAIL and "hey got only 1001 answers (at least 2000 make a load)" \
            in v.problems, s.id


def test_the_counter_must_hold_heys_answers_too() -> None:
    out = load(DRAIN, hey("hey_get_keepalive"))
    without_hey = answered(out) - 1001
    assert counter_consistent(out, without_hey + 1001) == []
    short = counter_consistent(out, without_hey + 500)
    assert len(short) == 1 and "+ hey 1001 +" in short[0] and short[0].endswith("counts lost")


def test_the_report_says_why_hey_did_not_run() -> None:
    why = "Fedora 43 packages no hey (Debian's 'hey' is the suite's second client)"
    run = run_of(DRAIN, load(DRAIN, None), hey_not_run=why)
    v = verdict_of(run)
    assert v.kind == PASS and f"hey did not run: {why}" in v.observed
    plain = get_scenario("host-socket-no-keepalive")
    quiet = run_of(plain, load(plain, None), hey_not_run="keep-alive scenarios only")
    assert "hey" not in verdict_of(quiet).observed  # no client that resends to speak of


# --- done but unanswered ------------------------------------------------------------------------
def test_a_draining_server_that_answered_everything_it_did_passes() -> None:
    run = run_of(DRAIN, load(DRAIN, hey("hey_get_keepalive")), unanswered=10)
    figure = unanswered_of(run)
    # ab stopped by SIGINT may have had its 10 (-c) requests in flight: 0..10 holds 0.
    assert figure is not None and (figure.low, figure.high, figure.exact) == (0, 10, False)
    v = verdict_of(run)
    assert v.kind == PASS, v.explain()
    assert "done but unanswered: 0..10 (bounded;" in v.observed


def test_a_draining_server_that_did_more_than_it_answered_fails() -> None:
    run = run_of(DRAIN, load(DRAIN, hey("hey_get_keepalive")), unanswered=13)
    v = verdict_of(run)
    assert v.kind == FAIL
    (line,) = [p for p in v.problems if p.startswith("the server did at least 3 requests")]
    assert "expected 0 with a host socket and a draining server" in line
    assert "done but unanswered: 3..13" in line


def test_the_naive_and_haproxy_runs_show_the_figure_without_judging_it() -> None:
    # hey_naive_post's own recording: the server counted one request more than hey got
    # answered (1449 against 1448).
    naive = run_of(NAIVE_POST, load(NAIVE_POST, hey("hey_naive_post"), method="POST"),
                   unanswered=25)
    v = verdict_of(naive)
    assert v.kind == EXPECTED_LOSS and "done but unanswered: 15..25 (bounded;" in v.observed
    proxied = run_of(HAPROXY, load(HAPROXY, hey("hey_naive_get")), unanswered=25)
    v = verdict_of(proxied)
    assert v.kind == PASS and "done but unanswered: 15..25" in v.observed


def test_more_answers_than_the_server_counted_fail_any_run() -> None:
    for s in (DRAIN, HAPROXY):
        run = run_of(s, load(s, hey("hey_get_keepalive")), unanswered=-4)
        v = verdict_of(run)
        assert v.kind == FAIL and any("4 answers the counter never counted" in p
                                      for p in v.problems), s.id


def test_a_counter_that_went_back_over_the_load_fails() -> None:
    out = load(DRAIN, None)
    run = scenario_run(DRAIN, out, count_before=200_000, final_count=100_000)
    assert unanswered_of(run) is None
    v = verdict_of(run)
    assert v.kind == FAIL and ("the counter went back over the load: 200000 before it, "
                               "100000 after it (the state was not kept)") in v.problems


def test_no_figure_without_the_reading_before() -> None:
    run = scenario_run(DRAIN, load(DRAIN, None))  # count_before None: a subject, no counter
    assert unanswered_of(run) is None and "done but unanswered" not in verdict_of(run).observed


def test_the_probes_abandoned_requests_widen_the_bound() -> None:
    s = DRAIN
    records = greeted([*clean_records(), failure(T0 + 29.9, "abandoned")], old_of(s), new_of(s))
    out = dataclasses.replace(outcome(records, old=old_of(s), new=new_of(s)),
                              hey=hey("hey_get_keepalive"))
    figure = unanswered_of(run_of(s, out, unanswered=11))
    assert figure is not None and (figure.low, figure.high) == (0, 11)
    assert "probe: the probe's requests still unanswered" in figure.reason
