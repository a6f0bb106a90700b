"""Two kinds of failure, kept apart as in the NixOS test driver.

* ``HarnessError``: the harness or the host is broken (no vagrant, box build failed, VM did not
  boot). The run cannot say anything about systemd; the message says what to do.
* ``GuestError`` / plain ``AssertionError``: the system under test misbehaved.
"""


class HarnessError(Exception):
    """The test harness or host cannot do its job; the message names the fix."""


class PrerequisiteMissing(HarnessError):
    """A host prerequisite is missing; one line says what to run."""


class GuestError(Exception):
    """A command in the guest did not do what it had to (the system under test is wrong)."""


class WaitTimeout(GuestError):
    """A wait ran out of time; the message tells what was last seen."""
