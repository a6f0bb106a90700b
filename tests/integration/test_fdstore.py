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

from vm.scenario import Scenario, ScenarioRun, get_scenario, loss_summary

pytestmark = pytest.mark.vm


def test_draining_server_makes_long_lived_clients_reconnect(
    run_recorded: Callable[[Scenario], ScenarioRun],
) -> None:
    """Baseline, characterised: how many connections had to be re-established."""
    run = run_recorded(get_scenario("host-socket-keepalive-longlived-drain"))
    holders = run.outcome.holders
    assert holders is not None and holders.requests > 0, "the long-lived clients never ran"
    assert run.outcome.timeline.switch_at is not None, "v2 never answered: " + str(run.problems)
    if run.lost_requests:
        pytest.xfail(f"draining server: {loss_summary(run)}")
    pytest.fail(f"no long-lived connection was closed by a draining server: {loss_summary(run)}")


def test_fd_store_keeps_every_connection_across_the_reattach(
    run_recorded: Callable[[Scenario], ScenarioRun],
) -> None:
    run = run_recorded(get_scenario("host-socket-keepalive-longlived-fdstore"))
    assert run.outcome.holders is not None
    assert not run.problems, "connections were lost:\n- " + "\n- ".join(run.problems)
