"""testinfra on the guest: the ``host`` the tests and the users' own checks inspect it with.

One SSH stack. ``Machine`` owns the paramiko connection (connect with retries, keep-alive,
every command bounded twice and logged to run.log as a replayable line). testinfra's
``host`` is a real ``paramiko`` backend (``paramiko://user@host:port`` with the
``ssh_config`` file written from ``vagrant ssh-config``), except that each command it runs goes
through ``Machine.execute``: testinfra's verbs (``host.service``, ``host.socket``,
``host.file``, ``host.user``, ``host.run``) and the harness's own waits then share one
connection, one bound per command and one log. testinfra's own client would be a second
connection with no command timeout, whose commands run.log would not show.

The users' own checks run in a pytest process of their own (vm/subject/user_checks.py) with
testinfra's stock backend on the same ``ssh_config`` file, exactly as a user runs them by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testinfra.backend.paramiko import ParamikoBackend
from testinfra.host import Host

from pytest_portable_upgrade.machine.machine import Machine, SshTarget

SSH_CONFIG_HOST = "pwt-guest"


def ssh_config_text(target: SshTarget, alias: str = SSH_CONFIG_HOST) -> str:
    """What ``vagrant ssh-config`` says about the guest, under ``alias``: enough for
    ``ssh -F FILE alias`` and for ``pytest --hosts=paramiko://alias --ssh-config=FILE``."""
    return (f"Host {alias}\n  HostName {target.host}\n  Port {target.port}\n"
            f"  User {target.user}\n  IdentityFile {target.identity_file}\n"
            "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")


def write_ssh_config(target: SshTarget, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ssh_config_text(target))
    return path


class MachineBackend(ParamikoBackend):  # type: ignore[misc]  # testinfra has no type marker
    """testinfra's paramiko backend whose commands run through ``Machine.execute`` (as root:
    Machine adds ``sudo -n`` and the guest-side ``timeout``)."""

    def __init__(self, machine: Machine, ssh_config: Path) -> None:
        t = machine.target
        super().__init__(f"{t.user}@{t.host}:{t.port}", ssh_config=str(ssh_config))
        self.machine = machine

    def _exec_command(self, command: bytes) -> tuple[int, bytes, bytes]:
        result = self.machine.execute(command.decode(errors="replace"))
        return result.rc, result.stdout.encode(), result.stderr.encode()

    def get_encoding(self) -> str:
        # Machine decodes the guest's bytes as UTF-8 already; asking the guest's python for
        # its locale would cost a round trip for nothing.
        return "utf-8"


def guest_host(machine: Machine, ssh_config: Path) -> Any:
    """A ``testinfra.host.Host`` on ``machine``, sharing its SSH connection."""
    backend = MachineBackend(machine, ssh_config)
    host = Host(backend)
    backend.set_host(host)
    return host
