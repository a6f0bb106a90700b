"""Long-lived keep-alive connections across the reattach: closed by a draining server, or
handed to systemd's file-descriptor store and adopted by the new version.

No socket buffering saves a connection the old process owns. With `PW_SHUTDOWN=fdstore` the
server sends its idle connections to PID 1 (`FDSTORE=1`, `FileDescriptorStoreMax=` in the
image's unit) before it exits; the reattach queues a restart, which keeps the store; v2 gets
them back in `LISTEN_FDS` and answers on the very same connections.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_portable_upgrade.plugin.outcome import conclude
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.verdict import Verdict

pytestmark = pytest.mark.vm


def test_draining_server_makes_long_lived_clients_reconnect(
    run_recorded: Callable[[Scenario], Verdict],
) -> None:
    """Baseline, characterised (an xfail): how many connections had to be re-established."""
    conclude(run_recorded(get_scenario("host-socket-keepalive-longlived-drain")))


def test_fd_store_keeps_every_connection_across_the_reattach(
    run_recorded: Callable[[Scenario], Verdict],
) -> None:
    """0 failed, no connection broken or closed, each switched from v1 to v2 in place."""
    conclude(run_recorded(get_scenario("host-socket-keepalive-longlived-fdstore")))
