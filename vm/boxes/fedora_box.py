"""Fedora boxes: download and verify once, provision once with network (machine/provision_vm.py),
then run restricted.

The design (issue 13): every run boots a box that needs no network, as the Debian boxes do.
A downloaded Fedora box lacks ab, haproxy and portabled, and installing them needs dnf's
mirrors. So, once per (release, provider, provisioning recipe, host key):

1. ``fetch``: download the ``.box``, check it against the release's signed CHECKSUM
   (vm/boxes/fedora.py), ``vagrant box add`` it as ``pwt/fedora-N-<compose>-base``;
2. ``provision_box`` (machine/provision_vm.py): boot it in a provisioning VM whose user-mode
   network is *open* (``network="provision"`` in vm/machine/vagrantfile.py), run
   vm/boxes/provision.py's commands, install the per-host SSH key, and package the disk as the
   derived box ``pwt/fedora-N-<digest>``;
3. every run, this one included, boots the derived box with ``restrict=on`` and our own key.

The provisioning VM lives inside the run's own run dir and domain prefix, so the run's lock
covers it and the stale-run reaper of a concurrent run leaves it alone.
"""

from __future__ import annotations

from pathlib import Path

from pytest_portable_upgrade.boxes.fedora import (
    FEDORA_RELEASES,
    Downloader,
    fetch_verified_box,
    urllib_download,
)
from pytest_portable_upgrade.boxes.provision import provision_commands
from pytest_portable_upgrade.boxes.recipes import BoxRecipe
from pytest_portable_upgrade.boxes.vagrant_boxes import (
    BuiltBox,
    _vagrant_has_box,
    ensure_ssh_key,
    vagrant_env,
)
from pytest_portable_upgrade.core.cache import recipe_hash
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.core.proc import run_logged


def derived_box_name(recipe: BoxRecipe, provider: str, public_key: Path) -> str:
    """The Vagrant name of the provisioned box: changes when anything that went into it does."""
    assert recipe.fedora_release is not None
    compose = FEDORA_RELEASES[recipe.fedora_release].compose or "unpinned"
    data = {"commands": provision_commands(recipe, provider), "provider": provider,
            "compose": compose, "pubkey": public_key.read_text()}
    return f"pwt/{recipe.name}-{recipe_hash([Path(__file__)], data)}"


def key_commands(public_key: str) -> list[str]:
    """Replace the key Vagrant inserted at first boot with the per-host key (as for Debian
    boxes), so runs of the derived box log in with ``insert_key = false``."""
    return [
        "install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh",
        f"printf '%s\\n' '{public_key.strip()}' > /home/vagrant/.ssh/authorized_keys",
        "chown vagrant:vagrant /home/vagrant/.ssh/authorized_keys",
        "chmod 0600 /home/vagrant/.ssh/authorized_keys",
    ]


def needs_provisioning(box: BuiltBox) -> bool:
    """True for a downloaded Fedora base box (its derived box is not made yet)."""
    return box.recipe.fedora_release is not None and box.private_key is None


def fetch(recipe: BoxRecipe, state_dir: Path, provider: str,
          download: Downloader | None = None, gpgv: str = "gpgv") -> BuiltBox:
    """The derived box if it exists (no network needed); else the verified base box, added.

    ``download`` defaults to urllib (looked up at call time, so tests can replace it)."""
    assert recipe.fedora_release is not None
    key = ensure_ssh_key(state_dir)
    env = vagrant_env(state_dir)
    derived = derived_box_name(recipe, provider, key.with_suffix(".pub"))
    if _vagrant_has_box(derived, env):
        log.info(f"box {derived}: cached (provisioned {recipe.name})")
        return BuiltBox(recipe, derived, key)
    boxes = state_dir / "boxes"
    fetched = fetch_verified_box(recipe.fedora_release, provider, boxes / "fedora",
                                 download or urllib_download, gpgv)
    base = f"pwt/{recipe.name}-{fetched.compose}-base"
    if not _vagrant_has_box(base, env):
        with log.nested(f"adding box {base} to Vagrant"):
            run_logged(["vagrant", "box", "add", "--force", "--name", base, str(fetched.path)],
                       boxes / f"{recipe.name}-fetch.log", timeout=600,
                       what="vagrant box add", env=env)
    return BuiltBox(recipe, base, None)
