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

from pytest_portable_upgrade.subject.spec import Subject
from pytest_portable_upgrade.systemd.portable import (
    PRESERVE_LINE,
    PortableService,
    Upgrade,
    parse_timed,
    timed,
)
from pytest_portable_upgrade.systemd.quirks import reattach_target

# PRESERVE_LINE, the drop-in line that keeps the fd store across a stop (254+; quirks.py), is
# written by portable.py's dropin_files into the shutdown mode's drop-in; named here too,
# beside the upgrade it is for.
__all__ = ["PRESERVE_LINE", "clear_fd_store", "stop_start_command", "stop_start_upgrade"]


def stop_start_command(systemd_major: int, subject: Subject) -> str:
    """The upgrade as one guest command line (after the symlink points at the new version)."""
    target = shlex.quote(reattach_target(systemd_major, subject.name, subject.symlink))
    return (f"portablectl reattach {target} && systemctl stop {subject.service}"
            f" && systemctl start {subject.service}")


def stop_start_upgrade(service: PortableService, version: int) -> Upgrade:
    """Flip the symlink to ``version``, reattach without restarting, stop, start; timed like
    ``PortableService.reattach`` (guest epoch seconds)."""
    service.point_symlink_at(version)
    command = stop_start_command(service.systemd_major, service.subject)
    out = service.machine.succeed(f"{timed(f'{{ {command}; }} 2>&1')}; exit $rc",
                                  timeout=service.reattach_timeout_s)
    start, end, _rc, _ = parse_timed(out)
    return Upgrade(command, start, end, out)


def clear_fd_store(service: PortableService) -> None:
    """Stop the service and drop what its store still holds: with Preserve=yes a stopped
    unit keeps the store, and the next scenario's server would be handed dead connections."""
    unit = service.subject.service
    service.machine.execute(f"systemctl stop {unit}; systemctl clean --what=fdstore {unit}")
