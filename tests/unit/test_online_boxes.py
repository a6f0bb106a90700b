"""Code paths for users with internet (Fedora boxes, VirtualBox) that cannot boot here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vm.box import ensure_box
from vm.boxes import BOXES, LOCAL_BOXES, get_box
from vm.config import Settings
from vm.errors import HarnessError
from vm.provision import DNF_PACKAGES, provision_commands
from vm.vagrantfile import VagrantfileSpec, render

FEDORA = [name for name in BOXES if name.startswith("fedora-")]


def vb_spec(**changes: object) -> VagrantfileSpec:
    base = VagrantfileSpec(
        box="fedora/42-cloud-base", domain_prefix="pwt-run1-", private_key=None, ssh_port=40222,
        udp_port=1, udp_local_port=2, mac="52:54:00:aa:bb:cc", accel="kvm", memory_mb=2048,
        cpus=2, libvirt_uri="qemu:///system", pool="pwt", console_log=Path("/tmp/c.log"),
        boot_timeout_s=600, provider="virtualbox",
    )
    return VagrantfileSpec(**{**base.__dict__, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", FEDORA)
def test_fedora_boxes_map_to_official_cloud_boxes(name: str) -> None:
    recipe = get_box(name)
    release = name.split("-")[1]
    assert recipe.vagrant_box == f"fedora/{release}-cloud-base"
    assert recipe.package_manager == "dnf"
    assert not recipe.buildable_offline
    assert set(recipe.providers) == {"libvirt", "virtualbox"}
    assert name not in LOCAL_BOXES


def test_fedora_provisioning_installs_what_the_scenarios_use() -> None:
    commands = provision_commands(get_box("fedora-42"))
    assert commands[0].startswith("dnf install -y")
    # ab, the proxy, the probe's python, and systemd-portabled (in systemd-udev on Fedora).
    for package in ("httpd-tools", "haproxy", "python3", "systemd-udev"):
        assert package in commands[0].split()
    assert set(DNF_PACKAGES) <= set(commands[0].split())


@pytest.mark.parametrize("name", LOCAL_BOXES)
def test_local_boxes_need_no_provisioning(name: str) -> None:
    assert provision_commands(get_box(name)) == []


def test_virtualbox_vagrantfile_forwards_ssh_to_loopback_only() -> None:
    text = render(vb_spec())
    assert 'config.vm.provider :virtualbox do |vb|' in text
    assert 'host_ip: "127.0.0.1"' in text and "host: 40222" in text
    assert "libvirt" not in text
    assert "insert_key" not in text  # downloaded box: Vagrant replaces its insecure key


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_virtualbox_vagrantfile_is_valid_ruby(tmp_path: Path) -> None:
    path = tmp_path / "Vagrantfile"
    path.write_text(render(vb_spec()))
    result = subprocess.run(["ruby", "-c", str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_provider_must_exist_for_the_box() -> None:
    with pytest.raises(ValueError, match="has no virtualbox version"):
        Settings(box="debian-bookworm", provider="virtualbox").validate()
    Settings(box="fedora-42", provider="virtualbox").validate()


def test_offline_fetch_says_so_in_one_clear_error(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A real subprocess: a `vagrant` that fails the way an offline `box add` does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vagrant"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "box list" ]; then exit 0; fi\n'
        'echo "An error occurred while downloading the remote file. Could not resolve host:'
        ' vagrantcloud.com" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(HarnessError) as err:
        ensure_box(get_box("fedora-42"), tmp_path / "state", 60)
    message = str(err.value)
    assert "cannot be fetched from Vagrant Cloud (fedora/42-cloud-base)" in message
    assert "offline" in message and "debian-bookworm" in message
    assert "\n" not in message.strip()
