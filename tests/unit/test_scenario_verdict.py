"""verdict_of: the one judgement of a scenario run, and the proof that the report and pytest
read it the same way.

Every run here is built by ``support.scenario_run`` (a valid run that lost nothing) and then
spoilt on purpose: a loss, a harness fault, or both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from support import (
    T0,
    WALKTHROUGH,
    ab_result,
    answer,
    clean_records,
    failure,
    greeted,
    new_of,
    old_of,
    outcome,
    probe_series,
    reattach,
    scenario_run,
)

from pytest_portable_upgrade.load.load import LoadOutcome
from pytest_portable_upgrade.load.long_lived import HolderSummary
from pytest_portable_upgrade.plugin.outcome import conclude, evidence_reason
from pytest_portable_upgrade.report.matrix import build_matrix
from pytest_portable_upgrade.report.report import stability_table
from pytest_portable_upgrade.scenarios.catalogue import SCENARIOS, Scenario, get_scenario
from pytest_portable_upgrade.scenarios.checks import SocketObservation
from pytest_portable_upgrade.scenarios.record import summary_row
from pytest_portable_upgrade.scenarios.run import ScenarioRun
from pytest_portable_upgrade.scenarios.verdict import (
    DOWNTIME_SEEN,
    EXPECTED_LOSS,
    FAIL,
    PASS,
    REFUSED,
    VERDICT_KINDS,
    Verdict,
    losses_of,
    verdict_of,
)

NAIVE = get_scenario("host-socket-keepalive-naive")
LONGLIVED_DRAIN = get_scenario("host-socket-keepalive-longlived-drain")
FDSTORE = get_scenario("host-socket-keepalive-longlived-fdstore")
IMAGE_SOCKET = get_scenario("image-socket-no-keepalive")
CORRUPT = get_scenario("host-socket-sysupdate-http-corrupt")
EXPECTED_LOSSES = [NAIVE, LONGLIVED_DRAIN, IMAGE_SOCKET]


def holders(connections: int = 20, broken: int = 0, closed: int = 0,
            switched: int | None = None) -> HolderSummary:
    lost = broken + closed
    return HolderSummary(connections=connections, requests=1500, answered=1500 - lost,
                         broken=broken, server_closed=closed, connect_errors=0,
                         switched_in_place=connections - lost if switched is None else switched)


def records_of(s: Scenario, extra: tuple[Any, ...] = ()) -> list[Any]:
    return greeted([*clean_records(), *extra], old_of(s), new_of(s))


def lossy(s: Scenario, ab: Any = None) -> LoadOutcome:
    """The loss the scenario is about: 7 ab failures, a refused probe request."""
    records = records_of(s, (failure(T0 + 6.1, "connect-refused"),))
    ab = ab or ab_result(complete=6990, failed=7, connect=2, receive=5)
    return outcome(records, ab=ab, old=old_of(s), new=new_of(s))


def clean(s: Scenario) -> LoadOutcome:
    return outcome(records_of(s), old=old_of(s), new=new_of(s))


def with_holders(s: Scenario, out: LoadOutcome, lost: bool) -> LoadOutcome:
    if not s.holders:
        return out
    return dataclasses.replace(out, holders=holders(closed=20) if lost else holders())


def lossy_run(s: Scenario, **changes: Any) -> ScenarioRun:
    """The run in which the scenario's expected loss happened (for the image socket: the
    reattach restarted it, requests failed meanwhile)."""
    if s.expect == "refused":
        return scenario_run(s, outcome(probe_series(T0 + 0.2, T0 + 30.0, old_of(s), 3),
                                       ab=ab_result(complete=6990, failed=3, receive=3)),
                            **changes)
    changes.setdefault("socket", SocketObservation("1", "2", "active")
                       if s.socket_location == "image" else SocketObservation("1", "1", "active"))
    return scenario_run(s, with_holders(s, lossy(s), lost=True), **changes)


def clean_run(s: Scenario, **changes: Any) -> ScenarioRun:
    out = None if s.expect == "refused" else with_holders(s, clean(s), lost=False)
    return scenario_run(s, out, **changes)


# --- harness faults: each turns any run, expected loss or not, into a FAIL -------------------
def load_started_late(run: ScenarioRun) -> ScenarioRun:
    """The load began after the reattach: nothing was under load when it happened."""
    late = dataclasses.replace(run.upgrade, started=T0 - 2.0, ended=T0 - 0.5)
    return dataclasses.replace(run, upgrade=late)


def new_version_never_answered(run: ScenarioRun) -> ScenarioRun:
    s = run.scenario
    old_only = [r for r in run.outcome.timeline.records if r.greeting != new_of(s)]
    out = dataclasses.replace(run.outcome, timeline=dataclasses.replace(
        run.outcome.timeline, records=old_only))
    return dataclasses.replace(run, outcome=out)


def counter_went_backwards(run: ScenarioRun) -> ScenarioRun:
    s, tl = run.scenario, run.outcome.timeline
    back = answer(T0 + 29.95, new_of(s) if s.expect != "refused" else old_of(s), visitor=2)
    records = sorted([*tl.records, back], key=lambda r: r.t)
    out = dataclasses.replace(run.outcome, timeline=dataclasses.replace(tl, records=records))
    return dataclasses.replace(run, outcome=out)


def too_few_requests(run: ScenarioRun) -> ScenarioRun:
    ab = dataclasses.replace(run.outcome.ab, complete=150)
    return dataclasses.replace(run, outcome=dataclasses.replace(run.outcome, ab=ab))


def wrong_image_attached(run: ScenarioRun) -> ScenarioRun:
    s = run.scenario
    other = s.to_version if s.expect == "refused" else s.from_version
    return dataclasses.replace(run, attached_image=WALKTHROUGH.image_path(other))


def profile_ignored(run: ScenarioRun) -> ScenarioRun:
    user = "portable-walkthrough" if run.scenario.profile == "trusted" else "root"
    return dataclasses.replace(run, service_user=user, dynamic_user=False)


FAULTS: dict[str, tuple[Callable[[ScenarioRun], ScenarioRun], str]] = {
    "load-started-late": (load_started_late, "the load started only after the reattach began"),
    "v2-never-answered": (new_version_never_answered, "the run tested nothing"),
    "counter-went-backwards": (counter_went_backwards, "the counter went back"),
    "too-few-requests": (too_few_requests, "ab completed only 150 requests (< 200)"),
    "wrong-image": (wrong_image_attached, "afterwards portablectl says 'running' and the unit "
                                          "runs '/var/lib/portables/portable-walkthrough_"),
    "profile-ignored": (profile_ignored, "profile "),
}


def faults_for(s: Scenario) -> list[str]:
    # A refused update never brings v2: its "v2 never answered" is the expected result.
    return [f for f in FAULTS if not (s.expect == "refused" and f == "v2-never-answered")]


# --- the agreement of report and pytest ------------------------------------------------------
def pytest_outcome(verdict: Verdict) -> tuple[str, str]:
    """What pytest makes of ``conclude(verdict)``: (outcome, message)."""
    try:
        conclude(verdict)
    except pytest.xfail.Exception as e:  # first: pytest's XFailed is a kind of Failed
        return "xfailed", str(e)
    except pytest.fail.Exception as e:
        return "failed", str(e)
    return "passed", ""


# Runs of every scenario: clean, with its loss, with the loss and each harness fault.
CASES: list[tuple[str, ScenarioRun, str]] = []
for _s in SCENARIOS:
    expected_loss = {"characterise": EXPECTED_LOSS, "downtime": DOWNTIME_SEEN}.get(_s.expect)
    CASES.append((f"{_s.id}-clean", clean_run(_s),
                  {"zero-downtime": PASS, "refused": REFUSED}.get(_s.expect, FAIL)))
    CASES.append((f"{_s.id}-loss", lossy_run(_s), expected_loss or FAIL))
    for _name in faults_for(_s):
        CASES.append((f"{_s.id}-loss-{_name}", FAULTS[_name][0](lossy_run(_s)), FAIL))
        CASES.append((f"{_s.id}-clean-{_name}", FAULTS[_name][0](clean_run(_s)), FAIL))


@pytest.mark.parametrize(("run", "kind"), [(r, k) for _, r, k in CASES],
                         ids=[name for name, _, _ in CASES])
def test_report_and_pytest_agree(run: ScenarioRun, kind: str) -> None:
    """The summary row, the stability table, the matrix and pytest all read one verdict.

    A FAIL in the report is a failed test, an "xfail" an xfailed one, and everything else
    (pass, downtime seen, refused) a passed one; and the verdict is the one each kind of run
    must get.
    """
    verdict = verdict_of(run)
    assert verdict.kind == kind, verdict.explain()
    row = summary_row(run, "debian-bookworm", 252, verdict)
    result, message = pytest_outcome(verdict)

    assert row["verdict"] == verdict.label and row["verdict_kind"] == verdict.kind
    assert row["problems"] == list(verdict.problems)
    assert (result == "failed") == row["verdict"].startswith("FAIL") == bool(row["problems"])
    assert (result == "xfailed") == row["verdict"].startswith("xfail")
    # The stability table counts a run "as expected" exactly when its test did not fail.
    table = stability_table([row, row])
    assert f"| {run.scenario.id} | {0 if result == 'failed' else 2}/2 |" in table
    # The matrix marks a FAIL cell, and only a FAIL cell, as failed.
    cell = build_matrix([row])["rows"][0]["cells"]["debian-bookworm (systemd 252)"]
    assert cell.startswith("FAIL") == (result == "failed")
    # pytest's message carries every problem (or the numbers of the expected loss).
    for problem in verdict.problems:
        assert problem in message
    if result == "xfailed":
        assert message == verdict.observed and "ab 7 failed of 6990" in message


def test_every_verdict_kind_is_covered() -> None:
    assert {kind for _, _, kind in CASES} == set(VERDICT_KINDS)
    assert {run.scenario.expect for _, run, _ in CASES} >= {"zero-downtime", "characterise",
                                                              "downtime", "refused"}


# --- expected losses need valid runs ---------------------------------------------------------
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("scenario", EXPECTED_LOSSES, ids=lambda s: s.id)
def test_invalid_run_with_the_expected_loss_is_a_fail(scenario: Scenario, fault: str) -> None:
    """A harness fault must not read as "loss seen (expected)": FAIL, the fault named."""
    spoil, words = FAULTS[fault]
    valid = verdict_of(lossy_run(scenario))
    assert valid.kind in (EXPECTED_LOSS, DOWNTIME_SEEN), valid.explain()
    verdict = verdict_of(spoil(lossy_run(scenario)))
    assert verdict.kind == FAIL
    assert any(words in p for p in verdict.problems), verdict.problems
    # The loss is not one of the problems: it was expected; the numbers are still there.
    assert not any(p.startswith("ab saw failures") for p in verdict.problems)
    assert "ab 7 failed of " in verdict.observed
    result, message = pytest_outcome(verdict)
    assert result == "failed" and words in message


@pytest.mark.parametrize("scenario", [NAIVE, LONGLIVED_DRAIN], ids=lambda s: s.id)
def test_characterisation_that_lost_nothing_fails(scenario: Scenario) -> None:
    verdict = verdict_of(clean_run(scenario))
    assert (verdict.kind, verdict.label) == (FAIL, "FAIL: nothing lost")
    assert verdict.problems == ("nothing was lost: the characterised loss is gone",)


def test_negative_control_without_downtime_fails() -> None:
    verdict = verdict_of(clean_run(IMAGE_SOCKET, socket=SocketObservation("1", "2", "active")))
    assert (verdict.kind, verdict.label) == (FAIL, "FAIL: no downtime")


def test_negative_control_with_a_dead_port_is_downtime_without_v2() -> None:
    """systemd 257 leaves an image's socket inactive: v2 never answers, and that is the
    downtime itself; the checks of v2's answers under load do not apply."""
    s = IMAGE_SOCKET
    records = [r for r in records_of(s) if r.greeting == old_of(s)]
    records += [failure(T0 + 7.0 + i, "connect-refused") for i in range(20)]
    out = outcome(records, old=old_of(s), new=new_of(s),
                  ab=ab_result(complete=30000, failed=40000, connect=40000))
    dead = SocketObservation("1", "2", "inactive")
    verdict = verdict_of(scenario_run(s, out, socket=dead))
    assert verdict.kind == DOWNTIME_SEEN, verdict.explain()
    # The same dead port before the load ever reached v1 proves nothing.
    late = verdict_of(load_started_late(scenario_run(s, out, socket=dead)))
    assert late.kind == FAIL


def test_dead_host_socket_is_a_fault_not_the_characterised_loss() -> None:
    """Keep-alive losses are about open connections; a host socket left dead is not that."""
    run = lossy_run(NAIVE, socket=SocketObservation("1", "1", "failed"))
    verdict = verdict_of(run)
    assert verdict.kind == FAIL
    assert "the host socket is 'failed' after the reattach" in verdict.problems


# --- what the tests used to check on their own, now in the one verdict -----------------------
@pytest.mark.parametrize(("user", "dynamic", "problem"), [
    ("root", True, "profile default: the service runs as 'root', not a dynamic user"),
    ("", True, "profile default: the service runs as '', not a dynamic user"),
    ("portable-walkthrough", False, "profile default: DynamicUser is not set"),
])
def test_default_profile_must_run_a_dynamic_user(user: str, dynamic: bool, problem: str) -> None:
    verdict = verdict_of(clean_run(get_scenario("host-socket-no-keepalive"), service_user=user,
                                   dynamic_user=dynamic))
    assert verdict.kind == FAIL and problem in verdict.problems


def test_trusted_profile_must_run_as_root() -> None:
    s = get_scenario("host-socket-trusted-profile")
    assert verdict_of(clean_run(s)).kind == PASS
    verdict = verdict_of(clean_run(s, service_user="portable-walkthrough"))
    assert verdict.problems == ("profile trusted: the service runs as 'portable-walkthrough', "
                                "not root",)


def test_fd_store_needs_every_connection_switched_in_place() -> None:
    out = dataclasses.replace(clean(FDSTORE), holders=holders(switched=17))
    verdict = verdict_of(scenario_run(FDSTORE, out))
    assert verdict.kind == FAIL
    assert verdict.problems[0].startswith("only 17 of 20 long-lived connections switched")


@pytest.mark.parametrize("scenario", [LONGLIVED_DRAIN, FDSTORE], ids=lambda s: s.id)
def test_long_lived_clients_that_never_ran_fail_the_run(scenario: Scenario) -> None:
    for summary in (None, dataclasses.replace(holders(), requests=0)):
        run = lossy_run(scenario)
        run = dataclasses.replace(run, outcome=dataclasses.replace(run.outcome, holders=summary))
        verdict = verdict_of(run)
        assert verdict.kind == FAIL
        assert "the 20 long-lived clients never sent a request" in verdict.problems


def test_holder_losses_alone_are_the_drain_characterisation() -> None:
    out = dataclasses.replace(clean(LONGLIVED_DRAIN), holders=holders(closed=20))
    run = scenario_run(LONGLIVED_DRAIN, out)
    assert losses_of(run) == [f"long-lived connections were lost: {holders(closed=20).describe()}"]
    assert verdict_of(run).kind == EXPECTED_LOSS


def test_failed_sysupdate_rollout_fails_a_zero_downtime_scenario() -> None:
    s = get_scenario("host-socket-sysupdate-dir")
    verdict = verdict_of(clean_run(s, rollout_ok=False))
    assert verdict.kind == FAIL
    assert verdict.problems[-1].startswith("the rollout did not put v2 in place")


@pytest.mark.parametrize(("losses", "state"), [
    (False, "active"), (True, "inactive"), (False, "failed"),
])
def test_image_socket_losses(losses: bool, state: str) -> None:
    """For the socket in the image, a dead port is downtime; a restart alone is not."""
    run = clean_run(IMAGE_SOCKET, socket=SocketObservation("1", "2", state))
    assert bool(losses_of(run)) == (state != "active")


# --- the verdict itself ------------------------------------------------------------------------
def test_verdict_kinds_and_problems_go_together() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        Verdict("xfail")
    with pytest.raises(ValueError, match="a FAIL lists its problems"):
        Verdict(FAIL)
    with pytest.raises(ValueError, match="a FAIL lists its problems"):
        Verdict(PASS, problems=("x",))


def test_conclude_passes_xfails_and_fails() -> None:
    assert pytest_outcome(Verdict(PASS)) == ("passed", "")
    assert pytest_outcome(Verdict(REFUSED, observed="x")) == ("passed", "")
    assert pytest_outcome(Verdict(DOWNTIME_SEEN, observed="x")) == ("passed", "")
    assert pytest_outcome(Verdict(EXPECTED_LOSS, observed="ab 3 failed")) == ("xfailed",
                                                                             "ab 3 failed")
    result, message = pytest_outcome(Verdict(FAIL, ("one", "two"), observed="ab 0 failed"))
    assert result == "failed"
    assert message == "FAIL\n- one\n- two\nseen: ab 0 failed"


# --- evidence --------------------------------------------------------------------------------
@pytest.mark.parametrize(("failed", "verdict", "always", "why"), [
    (False, Verdict(PASS), False, None),
    (False, Verdict(PASS), True, "--artifacts-always"),
    (False, Verdict(EXPECTED_LOSS, observed="x"), False, "xfail: loss seen (expected)"),
    (False, Verdict(DOWNTIME_SEEN, observed="x"), False, "downtime seen (expected)"),
    (False, Verdict(REFUSED, observed="x"), False, "refused, old version served on"),
    (True, Verdict(FAIL, ("p",)), False, "FAIL"),
    (True, Verdict(PASS), False, "test failed"),
    (True, None, False, "no verdict: the run broke off"),
    (False, None, False, None),
])
def test_evidence_is_kept_for_every_run_that_did_not_simply_pass(
    failed: bool, verdict: Verdict | None, always: bool, why: str | None,
) -> None:
    assert evidence_reason(test_failed=failed, verdict=verdict, always=always) == why


def test_lossy_helper_is_really_lossy() -> None:
    """The builders above mean what they say (a guard for the tests, not the code)."""
    assert losses_of(lossy_run(NAIVE)) and not losses_of(clean_run(NAIVE))
    assert verdict_of(clean_run(get_scenario("host-socket-rollback"))).kind == PASS
    assert reattach().started > T0 and probe_series(T0, T0 + 1, "Hello", 1)


# --- why requests were lost, in words -------------------------------------------------------
NO_KEEPALIVE = get_scenario("host-socket-no-keepalive")


def cut_off_run() -> ScenarioRun:
    """No keep-alive, yet requests lost: the old process dropped the ones it had accepted
    (a server whose stop signal is not its graceful one)."""
    records = records_of(NO_KEEPALIVE, (failure(T0 + 5.2, "reset"), failure(T0 + 5.3, "eof")))
    out = outcome(records, ab=ab_result(complete=6990, failed=4, receive=4),
                  old=old_of(NO_KEEPALIVE), new=new_of(NO_KEEPALIVE))
    return scenario_run(NO_KEEPALIVE, out)


def test_loss_without_keepalive_says_why_and_what_to_check() -> None:
    verdict = verdict_of(cut_off_run())
    assert verdict.kind == FAIL
    why = [p for p in verdict.problems if p.startswith("why:")]
    assert len(why) == 1, verdict.problems
    assert "2 requests were cut off without an answer (sent +5.2 to +5.3 s; the reattach ran " \
           "+5.0 to +6.5 s)" in why[0]
    assert "lost on the old process's connections at its stop" in why[0]
    assert "graceful-stop signal (KillSignal=" in why[0]


def test_keepalive_loss_points_at_the_proxy_or_a_drain() -> None:
    run = lossy_run(NAIVE)
    verdict = verdict_of(run)
    assert verdict.kind == EXPECTED_LOSS
    why = [p for p in losses_of(run) if p.startswith("why:")]
    assert any("connections were refused" in w for w in why), why
    assert any("kept-alive connections" in w and "HAProxy" in w for w in why), why


def test_a_refused_connection_with_the_socket_in_the_image_names_the_socket() -> None:
    why = [p for p in losses_of(lossy_run(IMAGE_SOCKET)) if p.startswith("why:")]
    assert any("inside the image, so the reattach stops and restarts it" in w for w in why)


def test_nothing_lost_needs_no_explanation() -> None:
    assert not any(p.startswith("why:") for p in losses_of(clean_run(NAIVE)))


# --- the user's own checks go through the one verdict -----------------------------------------
def test_a_failing_user_check_fails_the_run_and_the_report_shows_it() -> None:
    run = dataclasses.replace(scenario_run(NO_KEEPALIVE), user_checks_run=3,
                              user_check_failures=("test_db.py::test_state_kept: assert False",))
    verdict = verdict_of(run)
    assert verdict.kind == FAIL
    assert verdict.problems == ("user check failed: test_db.py::test_state_kept: assert False",)
    row = summary_row(run, "debian-bookworm", 252, verdict)
    assert row["verdict"] == "FAIL" and row["user_checks_run"] == 3
    assert row["problems"] == list(verdict.problems)
    assert row["user_check_failures"] == ["test_db.py::test_state_kept: assert False"]


def test_a_failing_user_check_fails_an_expected_loss_too() -> None:
    run = dataclasses.replace(lossy_run(NAIVE), user_check_failures=("t.py::t: boom",))
    assert verdict_of(run).kind == FAIL


def test_passing_user_checks_leave_a_pass() -> None:
    run = dataclasses.replace(scenario_run(NO_KEEPALIVE), user_checks_run=3)
    assert verdict_of(run).kind == PASS


def test_a_subject_without_a_counter_skips_the_counter_check() -> None:
    """final_count None (no counter_regex): a count that would fail the check is not read."""
    broken = dataclasses.replace(scenario_run(NO_KEEPALIVE), final_count=1)
    assert any("counter" in p for p in verdict_of(broken).problems)
    assert verdict_of(dataclasses.replace(broken, final_count=None)).kind == PASS
    row = summary_row(dataclasses.replace(broken, final_count=None), "b", 252, Verdict(PASS))
    assert row["counter_ok"] is None
