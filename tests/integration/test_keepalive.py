"""Keep-alive clients across the reattach: a draining server, a naive one, HAProxy in front.

A host socket only queues *new* connections. A keep-alive connection belongs to the old
process; whether its next request fails depends on how that process shuts down.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vm.scenario import Scenario, ScenarioRun, get_scenario, loss_summary

pytestmark = pytest.mark.vm


@pytest.mark.parametrize(
    "scenario_id", ["host-socket-keepalive-drain", "host-socket-keepalive-haproxy"]
)
def test_keepalive_loses_no_request(
    scenario_id: str, run_recorded: Callable[[Scenario], ScenarioRun]
) -> None:
    run = run_recorded(get_scenario(scenario_id))
    assert not run.problems, "keep-alive requests were lost:\n- " + "\n- ".join(run.problems)


def test_keepalive_to_naive_server_loses_requests(
    run_recorded: Callable[[Scenario], ScenarioRun],
) -> None:
    """Characterised, not hidden: the loss is counted by kind and reported as an xfail.

    If it stops losing requests (a systemd or server change), the test fails to say so.
    """
    run = run_recorded(get_scenario("host-socket-keepalive-naive"))
    assert run.outcome.timeline.switch_at is not None, "v2 never answered: " + str(run.problems)
    if run.lost_requests:
        pytest.xfail(f"naive server under keep-alive: {loss_summary(run)}")
    pytest.fail(f"the naive server lost nothing under keep-alive: {loss_summary(run)}")
