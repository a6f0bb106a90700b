"""The one-time provisioning of a downloaded Fedora box (vm/boxes/fedora_box.py fetches it):
boot it in a VM whose network is open, run vm/boxes/provision.py's commands, install the
per-host SSH key, and package the disk as the derived box every run then boots restricted."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
from pathlib import Path

from pytest_portable_upgrade.boxes.fedora_box import derived_box_name, key_commands
from pytest_portable_upgrade.boxes.provision import provision_commands
from pytest_portable_upgrade.boxes.vagrant_boxes import (
    BuiltBox,
    ensure_ssh_key,
    pool_base_prefix,
    vagrant_env,
)
from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.core.host import pool_volumes, remove_libvirt_leftovers
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.core.proc import run_logged
from pytest_portable_upgrade.machine.vagrant_backend import VagrantVM
from pytest_portable_upgrade.machine.vagrantfile import VagrantfileSpec, render

PROVISION_TIMEOUT_S = 1800.0


class ProvisioningVM(VagrantVM):
    """The one-time VM of a base box: the run's VM, but with its network open."""

    def write_vagrantfile(self, attempt: int = 1, mac: str | None = None) -> VagrantfileSpec:
        spec = dataclasses.replace(super().write_vagrantfile(attempt, mac), network="provision")
        (self.run_dir / "Vagrantfile").write_text(render(spec))
        return spec


def libvirt_box_metadata(virtual_size_bytes: int) -> dict[str, object]:
    """metadata.json of a libvirt box (virtual_size in GiB, rounded up)."""
    return {"provider": "libvirt", "format": "qcow2",
            "virtual_size": max(1, math.ceil(virtual_size_bytes / 2**30))}


def _package_libvirt(vm: ProvisioningVM, out: Path, log_path: Path) -> None:
    """Flatten the halted domain's disk (an overlay on the base volume) into a box file."""
    s = vm.settings
    volumes = pool_volumes(s.libvirt_uri, s.pool, vm.domain_prefix)
    if len(volumes) != 1:
        raise HarnessError(f"expected one disk volume of {vm.domain} in pool {s.pool}, found "
                           f"{len(volumes)}: is the pool {s.pool!r} the one setup-host made?")
    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        run_logged(["qemu-img", "convert", "-O", "qcow2", str(volumes[0][1]),
                    str(work / "box.img")], log_path, timeout=1800, what="qemu-img convert")
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", str(work / "box.img")],
            capture_output=True, text=True, check=True).stdout)
        (work / "metadata.json").write_text(
            json.dumps(libvirt_box_metadata(int(info["virtual-size"]))) + "\n")
        run_logged(["tar", "-cf", str(out), "-C", str(work), "metadata.json", "box.img"],
                   log_path, timeout=1800, what="packing the derived box")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def provision_box(box: BuiltBox, settings: Settings, accel: str) -> BuiltBox:
    """Provision the base ``box`` once in a VM with network, package it, add the result."""
    recipe, provider = box.recipe, settings.provider
    key = ensure_ssh_key(settings.state_dir)
    derived = derived_box_name(recipe, provider, key.with_suffix(".pub"))
    boxes = settings.state_dir / "boxes"
    out = boxes / f"{derived.split('/')[1]}.box"
    log_path = boxes / f"{derived.split('/')[1]}.log"
    env = vagrant_env(settings.state_dir)
    vm = ProvisioningVM(settings, box, accel, settings.run_dir / "provision",
                        failure_dir=settings.artifacts_dir / "provision")
    commands = [*provision_commands(recipe, provider),
                *key_commands(key.with_suffix(".pub").read_text())]
    with log.nested(f"provisioning {box.vagrant_name} once with network, into {derived}"):
        try:
            machine = vm.up()
            for command in commands:
                machine.succeed(command, timeout=PROVISION_TIMEOUT_S)
            machine.close()
            if provider == "libvirt":
                vm._vagrant().halt()
                _package_libvirt(vm, out, log_path)
            else:
                out.unlink(missing_ok=True)
                run_logged(["vagrant", "package", "--output", str(out)], log_path,
                           timeout=1800, what="vagrant package", env=env, cwd=vm.run_dir)
        finally:
            vm.destroy()
            shutil.rmtree(vm.run_dir, ignore_errors=True)
        run_logged(["vagrant", "box", "add", "--force", "--name", derived, str(out)], log_path,
                   timeout=600, what="vagrant box add", env=env)
        out.unlink()  # Vagrant keeps its own copy; the downloaded .box stays for a rebuild
        # The base box is only a step: free its copies in Vagrant and the pool.
        subprocess.run(["vagrant", "box", "remove", "--force", "--all", box.vagrant_name],
                       env=env, capture_output=True, check=False)
        if provider == "libvirt":
            remove_libvirt_leftovers(settings.libvirt_uri, settings.pool,
                                     pool_base_prefix(box.vagrant_name))
    return BuiltBox(recipe, derived, key)
