"""Clean-up is not cut short by the signals a terminal's Ctrl-C brings."""

from __future__ import annotations

import os
import signal

import pytest

from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.core.proc import signals_deferred


def test_sigint_and_sigterm_during_clean_up_are_noted_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines: list[str] = []
    monkeypatch.setattr(log, "emit", lines.append)
    finished = False
    with signals_deferred("destroying the VM"):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        finished = True
    assert finished
    assert any("SIGINT received: finishing destroying the VM first" in line for line in lines)
    assert any("SIGTERM received" in line for line in lines)


def test_the_previous_handlers_come_back_afterwards() -> None:
    # Python's own handler, as in a run started from a terminal: one started in the background
    # by a script (`cmd &`) inherits SIGINT ignored, and this test must not depend on that.
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT)
        with signals_deferred("x"):
            assert signal.getsignal(signal.SIGINT) is not before
        assert signal.getsignal(signal.SIGINT) is before
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, outer)
