"""The two other layouts of an upgrade, under load: a base image with app extensions
(`portablectl reattach --now --extension`), and a versioned directory `<name>.v/` whose newest
file portabled picks (256+). The same checks as the whole-image reattach, and the control: an
extension that ships the socket, whose reattach restarts it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_portable_upgrade.plugin.outcome import conclude
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.verdict import Verdict

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("scenario_id", [
    "host-socket-extension-no-keepalive", "host-socket-extension-rollback",
    "image-socket-extension-no-keepalive",
])
def test_extension_upgrade(scenario_id: str, run_recorded: Callable[[Scenario], Verdict]) -> None:
    """0 failed with the socket on the host; downtime seen when the extension ships it."""
    conclude(run_recorded(get_scenario(scenario_id)))


@pytest.mark.parametrize("scenario_id", [
    "host-socket-versioned-dir-no-keepalive", "host-socket-versioned-dir-rollback",
])
def test_versioned_dir_upgrade(scenario_id: str,
                               run_recorded: Callable[[Scenario], Verdict]) -> None:
    """Skipped before 256 with the reason (quirks.versioned_dir_missing)."""
    conclude(run_recorded(get_scenario(scenario_id)))
