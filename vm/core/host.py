"""Facts about the host: free loopback ports, MAC addresses, prerequisites."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from pathlib import Path

from pytest_portable_upgrade.core.errors import PrerequisiteMissing


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that is free now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def random_mac(rng: random.Random | None = None) -> str:
    """A locally administered MAC in QEMU's 52:54:00 range."""
    r = rng or random.Random()
    return "52:54:00:" + ":".join(f"{r.randrange(256):02x}" for _ in range(3))


PERMISSION_WORDS = ("Permission denied", "authentication", "polkit")


def check_vagrant_prerequisites(
    libvirt_uri: str, env: dict[str, str], provider: str = "libvirt"
) -> None:
    """Raise PrerequisiteMissing with one line naming the fix, if the host cannot boot VMs."""
    if shutil.which("vagrant") is None:
        raise PrerequisiteMissing("vagrant is not installed: run ./setup-host")
    if provider == "virtualbox":
        if shutil.which("VBoxManage") is None:
            raise PrerequisiteMissing("VirtualBox (VBoxManage) is not installed")
        return
    if shutil.which("virsh") is None:
        raise PrerequisiteMissing("virsh (libvirt-clients) is not installed: run ./setup-host")
    plugins = subprocess.run(
        ["vagrant", "plugin", "list"], env=env, capture_output=True, text=True, check=False
    ).stdout
    if "vagrant-libvirt" not in plugins:
        raise PrerequisiteMissing("the vagrant-libvirt plugin is missing: run ./setup-host")
    probe = subprocess.run(
        ["virsh", "-c", libvirt_uri, "version"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
        if any(word in reason for word in PERMISSION_WORDS) or (
            os.geteuid() != 0 and "system bus" in reason  # polkit unreachable for a user
        ):
            raise PrerequisiteMissing(
                f"no permission to manage libvirt at {libvirt_uri} ({reason}): run as root, "
                "or add the user to the libvirt group"
            )
        raise PrerequisiteMissing(
            f"libvirtd does not answer at {libvirt_uri} ({reason}): run ./setup-host"
        )


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    # Its own session: a terminal's Ctrl-C must not kill a clean-up step halfway.
    return subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, check=False, timeout=60,
        start_new_session=True,
    )


def list_domains(uri: str) -> list[str]:
    """Names of all libvirt domains (running or not); empty when libvirt does not answer."""
    try:
        return _virsh(uri, "list", "--all", "--name").stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return []


def pool_volumes(uri: str, pool: str, prefix: str) -> list[tuple[str, Path]]:
    """(name, path) of the volumes of ``pool`` whose name starts with ``prefix``."""
    try:
        lines = _virsh(uri, "vol-list", pool).stdout.splitlines()[2:]
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in lines:
        fields = line.split(maxsplit=1)
        if len(fields) == 2 and fields[0].startswith(prefix):
            found.append((fields[0], Path(fields[1].strip())))
    return found


def remove_libvirt_leftovers(uri: str, pool: str, prefix: str) -> list[str]:
    """Destroy/undefine domains and delete pool volumes whose name starts with ``prefix``."""
    removed: list[str] = []
    for name in list_domains(uri):
        if name.startswith(prefix):
            _virsh(uri, "destroy", name)
            _virsh(uri, "undefine", name, "--nvram")
            removed.append(f"domain {name}")
    for volume, _path in pool_volumes(uri, pool, prefix):
        _virsh(uri, "vol-delete", volume, "--pool", pool)
        removed.append(f"volume {volume}")
    return removed
