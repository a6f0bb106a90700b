"""Automatic rollout with systemd-sysupdate: the test only publishes a version and starts the
rollout unit; sysupdate installs it and moves the symlink (or writes it into the versioned
directory), the unit reattaches. Skipped (with the reason) where the guest has no
systemd-sysupdate, as on bookworm, or no vpick for the versioned directory (254)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_portable_upgrade.plugin.outcome import conclude
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.verdict import Verdict

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("scenario_id", [
    "host-socket-sysupdate-dir", "host-socket-sysupdate-http",
    "host-socket-sysupdate-http-rollback", "host-socket-sysupdate-versioned-dir",
])
def test_sysupdate_rollout_loses_no_request(
    scenario_id: str, run_recorded: Callable[[Scenario], Verdict]
) -> None:
    conclude(run_recorded(get_scenario(scenario_id)))


def test_tampered_update_is_refused_and_v1_serves_on(
    run_recorded: Callable[[Scenario], Verdict],
) -> None:
    """Refused with systemd-pull's checksum message; v1 serves on with nothing lost."""
    conclude(run_recorded(get_scenario("host-socket-sysupdate-http-corrupt")))


@pytest.mark.parametrize("scenario_id", ["host-socket-sysupdate-notify"])
def test_sysupdates_notify_callout_drives_the_reattach(
    scenario_id: str, run_recorded: Callable[[Scenario], Verdict],
) -> None:
    """systemd's own update unit pulls into <name>.v/, and its OnCompletedUpdate call to the
    suite's listener reattaches: 0 failed. Skipped before 262 with the reason (quirks)."""
    conclude(run_recorded(get_scenario(scenario_id)))
