"""The one wait helper: every wait of the harness goes through ``retry``."""

from __future__ import annotations

import time
from collections.abc import Callable

from pytest_portable_upgrade.core.errors import WaitTimeout


def retry(
    predicate: Callable[[bool], bool],
    timeout: float,
    interval: float = 1.0,
    what: str = "condition",
) -> None:
    """Call ``predicate(last_try)`` until it returns True, at most ``timeout`` seconds.

    The predicate is told when it is the last try, so it can raise an error that says what it
    saw (the unit state, the last console lines) instead of a bare timeout. It may also raise at
    any time to stop waiting at once (e.g. a unit that is ``failed``).

    >>> retry(lambda last: machine.execute("test -e /run/ready").succeeded, timeout=30)
    """
    deadline = time.monotonic() + timeout
    while True:
        last_try = time.monotonic() + interval >= deadline
        if predicate(last_try):
            return
        if last_try:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
