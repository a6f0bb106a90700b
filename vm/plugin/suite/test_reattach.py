"""Zero failed requests while `portablectl reattach --now` swaps versions behind a host socket.

The socket unit lives on the host, so systemd keeps it listening and queues connections while
the service is replaced; ab and a per-request probe load it from before the reattach until the
new version has answered for a while. Upgrade, rollback, and both portable profiles.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_portable_upgrade.plugin.outcome import conclude
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.verdict import Verdict

pytestmark = pytest.mark.vm


@pytest.mark.parametrize(
    "scenario_id",
    ["host-socket-no-keepalive", "host-socket-rollback", "host-socket-trusted-profile"],
)
def test_reattach_loses_no_request(
    scenario_id: str, run_recorded: Callable[[Scenario], Verdict]
) -> None:
    """Also checks the profile took effect: `default` runs a dynamic user, `trusted` root."""
    conclude(run_recorded(get_scenario(scenario_id)))
