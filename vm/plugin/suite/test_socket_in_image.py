"""Negative control: ship the .socket inside the image and the reattach must cause downtime.

`reattach --now` restarts every unit it copies from the image, the socket included: while it
is down, connections are refused (systemd 252) or the port stays dead (257). If a systemd
version stops losing requests here, this test fails and says so: the suite's premise changed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_portable_upgrade.plugin.outcome import conclude
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.verdict import Verdict

pytestmark = pytest.mark.vm


def test_socket_in_image_causes_downtime(run_recorded: Callable[[Scenario], Verdict]) -> None:
    """Passes only on "downtime seen" in a valid run (the load reached v1 first, ...)."""
    conclude(run_recorded(get_scenario("image-socket-no-keepalive")))
