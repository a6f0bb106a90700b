"""What a stop + start does to the connections in the fd store, with and without
FileDescriptorStorePreserve=yes (systemd 254+; skipped with the reason before).

The upgrade is a reattach without --now, then `systemctl stop` and `systemctl start`
(vm/systemd/stop_start.py), not the restart `reattach --now` queues: a restart keeps the store
whatever the knob says (test_fdstore.py), a stop drops it unless the knob says yes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_portable_upgrade.plugin.outcome import conclude
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.verdict import Verdict

pytestmark = pytest.mark.vm


def test_stop_start_drops_the_stored_connections_without_preserve(
    run_recorded: Callable[[Scenario], Verdict],
) -> None:
    """Characterised (an xfail with the count of connections lost); nothing lost is a FAIL."""
    conclude(run_recorded(get_scenario("host-socket-keepalive-longlived-fdstore-stopstart")))


def test_stop_start_keeps_every_connection_with_preserve(
    run_recorded: Callable[[Scenario], Verdict],
) -> None:
    """0 failed, no connection broken or closed, each switched from v1 to v2 in place."""
    conclude(run_recorded(
        get_scenario("host-socket-keepalive-longlived-fdstore-stopstart-preserve")))
