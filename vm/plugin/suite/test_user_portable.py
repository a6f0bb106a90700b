"""A portable service attached for a user's service manager (`portablectl --user`, systemd
260+), its socket a user unit, upgraded with `portablectl --user reattach --now` under load.

Skipped, naming what is missing, on a guest that cannot run it: systemd older than 260, or no
systemd-mountfsd / systemd-nsresourced, bpf LSM, libbpf, kernel >= 6.5, polkit >= 124, user
bus (vm/systemd/scope.py); debian-sid's recipe brings them all.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_portable_upgrade.plugin.outcome import conclude
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.verdict import Verdict

pytestmark = pytest.mark.vm


def test_user_portable_reattach_loses_no_request(
    run_recorded: Callable[[Scenario], Verdict],
) -> None:
    """0 failed, v2 answers, runs as the user from the user's copy of the image."""
    conclude(run_recorded(get_scenario("host-socket-user-portable")))
