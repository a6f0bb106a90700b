"""Zero failed requests while `portablectl reattach --now` swaps versions behind a host socket.

The socket unit lives on the host, so systemd keeps it listening and queues connections while
the service is replaced; ab and a per-request probe load it from before the reattach until the
new version has answered for a while. Upgrade, rollback, and both portable profiles.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vm.scenario import Scenario, ScenarioRun, get_scenario

pytestmark = pytest.mark.vm


@pytest.mark.parametrize(
    "scenario_id",
    ["host-socket-no-keepalive", "host-socket-rollback", "host-socket-trusted-profile"],
)
def test_reattach_loses_no_request(
    scenario_id: str, run_recorded: Callable[[Scenario], ScenarioRun]
) -> None:
    run = run_recorded(get_scenario(scenario_id))
    assert not run.problems, "no zero-downtime upgrade:\n- " + "\n- ".join(run.problems)
    if run.scenario.profile == "default":
        # The default profile sandboxes the service: a dynamic user, not root.
        assert run.facts["dynamic_user"], "default profile: DynamicUser is not set"
        assert run.facts["service_user"] not in ("", "root"), run.facts
    else:
        assert run.facts["service_user"] == "root", run.facts
