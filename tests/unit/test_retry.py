"""vm/core/retry.py: the one wait helper."""

from __future__ import annotations

import time

import pytest

from pytest_portable_upgrade.core.errors import GuestError, WaitTimeout
from pytest_portable_upgrade.core.retry import retry


def test_returns_once_the_predicate_holds() -> None:
    calls: list[bool] = []

    def predicate(last: bool) -> bool:
        calls.append(last)
        return len(calls) == 3

    start = time.monotonic()
    retry(predicate, timeout=5, interval=0.01)
    assert calls == [False, False, False]
    assert time.monotonic() - start < 1


def test_times_out_and_tells_the_last_try() -> None:
    calls: list[tuple[float, bool]] = []
    start = time.monotonic()

    def predicate(last: bool) -> bool:
        calls.append((time.monotonic() - start, last))
        return False

    with pytest.raises(WaitTimeout, match="timed out after 0 s waiting for the unit"):
        retry(predicate, timeout=0.3, interval=0.05, what="the unit")
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.5
    assert [last for _, last in calls] == [False] * (len(calls) - 1) + [True]
    assert len(calls) >= 3
    assert calls[-1][0] >= 0.3 - 0.05 - 0.01  # the last try is near the deadline


def test_wait_timeout_is_a_guest_error() -> None:
    assert issubclass(WaitTimeout, GuestError)


def test_a_single_try_when_the_interval_exceeds_the_timeout() -> None:
    calls: list[bool] = []

    def predicate(last: bool) -> bool:
        calls.append(last)
        return False

    with pytest.raises(WaitTimeout):
        retry(predicate, timeout=0.05, interval=1.0)
    assert calls == [True]


def test_success_on_the_last_try_returns() -> None:
    retry(lambda last: last, timeout=0.2, interval=0.05)


def test_predicate_errors_stop_the_wait() -> None:
    calls = 0

    def predicate(last: bool) -> bool:
        nonlocal calls
        calls += 1
        raise GuestError("unit is failed")

    with pytest.raises(GuestError, match="unit is failed"):
        retry(predicate, timeout=5, interval=0.01)
    assert calls == 1
