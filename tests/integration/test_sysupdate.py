"""Automatic rollout with systemd-sysupdate: the test only publishes a version and starts the
rollout unit; sysupdate installs it and moves the symlink, the unit reattaches. Skipped (with
the reason) where the guest has no systemd-sysupdate, as on bookworm."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vm.scenario import Scenario, ScenarioRun, get_scenario, loss_summary

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("scenario_id", [
    "host-socket-sysupdate-dir", "host-socket-sysupdate-http",
    "host-socket-sysupdate-http-rollback",
])
def test_sysupdate_rollout_loses_no_request(
    scenario_id: str, run_recorded: Callable[[Scenario], ScenarioRun]
) -> None:
    run = run_recorded(get_scenario(scenario_id))
    assert run.facts["rollout_ok"], run.reattach.output[-2000:]
    assert not run.problems, "no zero-downtime rollout:\n- " + "\n- ".join(run.problems)


def test_tampered_update_is_refused_and_v1_serves_on(
    run_recorded: Callable[[Scenario], ScenarioRun],
) -> None:
    run = run_recorded(get_scenario("host-socket-sysupdate-http-corrupt"))
    assert not run.problems, (
        "a tampered update was not refused cleanly:\n- " + "\n- ".join(run.problems)
        + f"\n{loss_summary(run)}\n{run.reattach.output[-1500:]}"
    )
