"""What every Vagrant box of the suite is, however it was made (built here by builder.py or
downloaded by fedora_box.py): ``BuiltBox``, the environment vagrant runs in, the per-host SSH
key, and what Vagrant and the pool already hold."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pytest_portable_upgrade.boxes.recipes import BoxRecipe

# How a locally built box boots: qemu starts the box's own kernel (no boot loader, no partition
# table). The disk is the only virtio disk; its ext4 file system is labelled pwt-root.
KERNEL_CMD_LINE = "root=/dev/vda ro console=ttyS0,115200 net.ifnames=0 systemd.show_status=1"


@dataclass(frozen=True)
class BuiltBox:
    """A box available to Vagrant under ``vagrant_name``, logging in with ``private_key``
    (None: a downloaded box, whose key Vagrant replaces at first boot).

    ``kernel`` and ``initrd`` are set for boxes built here: libvirt boots them directly.
    Downloaded boxes (Fedora) leave them None and boot their own way."""

    recipe: BoxRecipe
    vagrant_name: str
    private_key: Path | None
    kernel: Path | None = None
    initrd: Path | None = None

    @property
    def cmd_line(self) -> str | None:
        return kernel_cmd_line(self.recipe) if self.kernel is not None else None


def kernel_cmd_line(recipe: BoxRecipe) -> str:
    """The command line a box built here boots with: the common one, then the recipe's own."""
    return f"{KERNEL_CMD_LINE} {recipe.kernel_cmd_line}".strip()


def vagrant_env(state_dir: Path) -> dict[str, str]:
    """The environment every vagrant call of the suite runs in (its own VAGRANT_HOME)."""
    env = dict(os.environ)
    env["VAGRANT_HOME"] = str(state_dir / "vagrant-home")
    env["VAGRANT_CHECKPOINT_DISABLE"] = "1"
    env["VAGRANT_DEFAULT_PROVIDER"] = "libvirt"
    env.pop("VAGRANT_CWD", None)
    return env


def ensure_ssh_key(state_dir: Path) -> Path:
    """The per-host key baked into locally built boxes (never Vagrant's public insecure key)."""
    key = state_dir / "keys" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.parent.chmod(0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pwt-box", "-f", str(key)],
            check=True,
        )
    return key


def vagrant_boxes(env: dict[str, str]) -> set[str]:
    """The names of the boxes Vagrant has (``vagrant box list --machine-readable``)."""
    out = subprocess.run(
        ["vagrant", "box", "list", "--machine-readable"],
        env=env, capture_output=True, text=True, check=False,
    ).stdout
    return {line.split(",")[3] for line in out.splitlines()
            if ",box-name," in line and len(line.split(",")) > 3}


def _vagrant_has_box(name: str, env: dict[str, str]) -> bool:
    return name in vagrant_boxes(env)


def pool_base_prefix(name: str) -> str:
    """vagrant-libvirt uploads a box's image into the pool under this name prefix."""
    return name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
