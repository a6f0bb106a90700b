"""An upgrade by stop + start instead of the restart ``portablectl reattach --now`` queues.

``reattach`` (without ``--now``) replaces the unit files and leaves the old process running;
``systemctl stop`` then ends it (in the fdstore shutdown mode it hands its idle connections to the
fd store first) and ``systemctl start`` runs the new image. Whether the stored connections
reach the new process is what FileDescriptorStorePreserve= decides: a stop drops the store
unless it is ``yes``; a restart keeps it either way.

Not ``portablectl detach --now`` + ``attach``: between the two the unit file is gone, so the
host socket, triggered by the clients that keep connecting, refuses to start a unit that does
not exist and fails; that would measure the socket, not the knob.
"""

from __future__ import annotations

import shlex

# The line the shutdown drop-in gains to keep the fd store across a stop (254+; quirks.py);
# portable.py's dropin_files writes it into the shutdown mode's drop-in.
PRESERVE_LINE = "FileDescriptorStorePreserve=yes"


def stop_start_commands(portablectl: tuple[str, ...], systemctl: tuple[str, ...],
                        target: str, service: str) -> list[list[str]]:
    """The upgrade's commands, run in order while each succeeds (after the symlink points at
    the new version): reattach without restarting, stop, start."""
    return [[*portablectl, "reattach", target], [*systemctl, "stop", service],
            [*systemctl, "start", service]]


def command_line(commands: list[list[str]]) -> str:
    """The commands as one shell line (``&&``): what run.log and the report show."""
    return " && ".join(shlex.join(c) for c in commands)
