"""Code paths for users with internet (Fedora boxes, VirtualBox) that cannot boot here: the
recipes, the provisioning of both phases, the rendered Vagrantfiles, and the fetch path
through ``ensure_box`` with a fake ``vagrant`` and a fake downloader (no network)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import DATA

from pytest_portable_upgrade.boxes import fedora, fedora_box
from pytest_portable_upgrade.boxes.builder import BuiltBox, ensure_box
from pytest_portable_upgrade.boxes.fedora import FEDORA_RELEASES, FedoraRelease
from pytest_portable_upgrade.boxes.provision import (
    DNF_PACKAGES,
    NO_EGRESS_RULES,
    portabled_package,
    provision_commands,
)
from pytest_portable_upgrade.boxes.recipes import BOXES, LOCAL_BOXES, get_box
from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.machine import provision_vm
from pytest_portable_upgrade.machine.vagrantfile import VagrantfileSpec, render

FEDORA = [name for name in BOXES if name.startswith("fedora-")]
SIGNED = DATA / "fedora" / "Fedora-Cloud-43-1.6-x86_64-CHECKSUM"
IMAGES = "https://download.fedoraproject.org/pub/fedora/linux/releases/43/Cloud/x86_64/images/"
LIBVIRT_NAME = "Fedora-Cloud-Base-Vagrant-libvirt-43-1.6.x86_64.vagrant.libvirt.box"


def spec(provider: str, network: str) -> VagrantfileSpec:
    return VagrantfileSpec(
        box="pwt/fedora-43-1.6-base", domain_prefix="pwt-run1-", private_key=None,
        ssh_port=40222, udp_port=41001, udp_local_port=41002, mac="52:54:00:aa:bb:cc",
        accel="kvm", memory_mb=2048, cpus=2, libvirt_uri="qemu:///system", pool="pwt",
        console_log=Path("/tmp/c.log"), boot_timeout_s=600, provider=provider, network=network,
    )


def netdev(text: str) -> str:
    args = re.findall(r'lv\.qemuargs :value => "([^"]*)"', text)
    return args[args.index("-netdev") + 1]


# --- recipes --------------------------------------------------------------------------------

def test_supported_fedora_releases_and_their_systemd() -> None:
    assert {name: get_box(name).systemd_major for name in FEDORA} == {
        "fedora-43": 258, "fedora-44": 259, "fedora-45": 261}


@pytest.mark.parametrize("name", FEDORA)
def test_fedora_boxes_are_downloaded_from_fedora_not_vagrant_cloud(name: str) -> None:
    recipe = get_box(name)
    assert recipe.fedora_release == int(name.split("-")[1])
    assert recipe.fedora_release in FEDORA_RELEASES
    assert FEDORA_RELEASES[recipe.fedora_release].key_file.exists()
    assert recipe.package_manager == "dnf"
    assert not recipe.buildable_offline and name not in LOCAL_BOXES
    assert set(recipe.providers) == {"libvirt", "virtualbox"}
    assert not hasattr(recipe, "vagrant_box")


def test_sid_is_a_moving_suite_and_the_others_are_not() -> None:
    sid = get_box("debian-sid")
    assert sid.moving and sid.suite == "sid" and sid.systemd_major == 262
    assert "debian-sid" in LOCAL_BOXES
    assert [name for name, box in BOXES.items() if box.moving] == ["debian-sid"]


# --- provisioning (the open phase) ----------------------------------------------------------

@pytest.mark.parametrize(("release", "package"), [(43, "systemd-udev"), (44, "systemd-udev"),
                                                   (45, "systemd-container")])
def test_portabled_package_follows_the_fedora_45_split(release: int, package: str) -> None:
    assert portabled_package(release) == package
    install = provision_commands(get_box(f"fedora-{release}"))[0].split()
    assert install[:3] == ["dnf", "install", "-y"]
    assert package in install
    other = {"systemd-udev", "systemd-container"} - {package}
    assert not other & set(install), "only the subpackage that has portabled is installed"
    assert set(DNF_PACKAGES) <= set(install)


def test_provisioning_checks_portabled_is_really_there() -> None:
    commands = provision_commands(get_box("fedora-45"))
    assert "command -v portablectl && test -x /usr/lib/systemd/systemd-portabled" in commands
    assert commands[-1] == "dnf clean all"


def test_virtualbox_provisioning_bakes_in_the_egress_rules(tmp_path: Path) -> None:
    """VirtualBox NAT cannot restrict: the derived box drops what the guest starts."""
    libvirt = provision_commands(get_box("fedora-44"), "libvirt")
    vbox = provision_commands(get_box("fedora-44"), "virtualbox")
    assert "nftables" in vbox[0].split() and "nftables" not in libvirt[0].split()
    assert "systemctl enable pwt-no-egress.service" in vbox
    assert not any("no-egress" in c for c in libvirt)
    # The file-writing command really writes the rules (run it with a temp root).
    write = next(c for c in vbox if "/etc/pwt/no-egress.nft" in c and "printf" in c)
    target = tmp_path / "no-egress.nft"
    subprocess.run(["sh", "-c", write.replace("/etc/pwt/no-egress.nft", str(target))],
                   check=True)
    assert target.read_text() == NO_EGRESS_RULES
    assert "policy drop" in NO_EGRESS_RULES and 'oifname "lo" accept' in NO_EGRESS_RULES


@pytest.mark.parametrize("name", LOCAL_BOXES)
def test_local_boxes_need_no_provisioning(name: str) -> None:
    assert provision_commands(get_box(name)) == []


def test_key_commands_replace_the_inserted_key() -> None:
    commands = fedora_box.key_commands("ssh-ed25519 AAAAC3Nz pwt-box\n")
    assert "printf '%s\\n' 'ssh-ed25519 AAAAC3Nz pwt-box' > /home/vagrant/.ssh/authorized_keys" \
        in commands


# --- the rendered Vagrantfile of both phases ------------------------------------------------

def test_libvirt_provisioning_phase_opens_the_network_and_runs_restrict_it() -> None:
    provision = netdev(render(spec("libvirt", "provision")))
    run = netdev(render(spec("libvirt", "restricted")))
    assert "restrict=off" in provision.split(",") and "restrict=on" not in provision
    assert "restrict=on" in run.split(",")
    # Open or not, SSH is forwarded to loopback only, never to another address.
    for text in (provision, run):
        assert [o for o in text.split(",") if o.startswith("hostfwd=")] == [
            "hostfwd=tcp:127.0.0.1:40222-:22"]


def test_restricted_is_the_default_phase() -> None:
    given = spec("libvirt", "provision")
    unsaid = {f.name: getattr(given, f.name) for f in dataclasses.fields(given)
              if f.name != "network"}
    assert netdev(render(VagrantfileSpec(**unsaid))).split(",")[2] == "restrict=on"


@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_an_unknown_phase_is_refused(provider: str) -> None:
    with pytest.raises(ValueError, match="network must be one of restricted, provision, not"):
        render(spec(provider, "open"))


@pytest.mark.parametrize("network", ["provision", "restricted"])
def test_virtualbox_vagrantfile_forwards_ssh_to_loopback_only(network: str) -> None:
    text = render(spec("virtualbox", network))
    assert "config.vm.provider :virtualbox do |vb|" in text
    assert 'host_ip: "127.0.0.1"' in text and "host: 40222" in text
    assert "libvirt" not in text
    assert "insert_key" not in text  # base box: Vagrant replaces its insecure key
    assert f"# Guest network: {network}" in text


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
@pytest.mark.parametrize("network", ["provision", "restricted"])
def test_both_phases_are_valid_ruby(provider: str, network: str, tmp_path: Path) -> None:
    path = tmp_path / "Vagrantfile"
    path.write_text(render(spec(provider, network)))
    result = subprocess.run(["ruby", "-c", str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_the_provisioning_vm_renders_the_open_phase(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_portable_upgrade.machine.vagrant_backend.free_port",
                        lambda kind=1: 41000 + kind)
    settings = Settings(box="fedora-43", state_dir=tmp_path, run_id="20260101-000000-abcdef")
    box = BuiltBox(get_box("fedora-43"), "pwt/fedora-43-1.6-base", None)
    vm = provision_vm.ProvisioningVM(settings, box, "tcg", tmp_path / "run" / "provision")
    assert vm.write_vagrantfile().network == "provision"
    assert "restrict=off" in netdev((vm.run_dir / "Vagrantfile").read_text())


def test_the_derived_box_name_changes_with_what_went_into_it(tmp_path: Path) -> None:
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAA one\n")
    recipe = get_box("fedora-45")
    libvirt = fedora_box.derived_box_name(recipe, "libvirt", key)
    assert re.fullmatch(r"pwt/fedora-45-[0-9a-f]{12}", libvirt)
    assert fedora_box.derived_box_name(recipe, "virtualbox", key) != libvirt
    key.write_text("ssh-ed25519 AAAA two\n")
    assert fedora_box.derived_box_name(recipe, "libvirt", key) != libvirt


def test_libvirt_box_metadata_rounds_the_disk_up() -> None:
    assert provision_vm.libvirt_box_metadata(5 * 2**30 + 1) == {
        "provider": "libvirt", "format": "qcow2", "virtual_size": 6}


def test_needs_provisioning_only_for_a_fedora_base_box() -> None:
    fedora43 = get_box("fedora-43")
    assert fedora_box.needs_provisioning(BuiltBox(fedora43, "pwt/fedora-43-1.6-base", None))
    assert not fedora_box.needs_provisioning(BuiltBox(fedora43, "pwt/fedora-43-x",
                                                      Path("/k")))
    assert not fedora_box.needs_provisioning(BuiltBox(get_box("debian-sid"), "pwt/d", None))


def test_provider_must_exist_for_the_box() -> None:
    with pytest.raises(ValueError, match="has no virtualbox version"):
        Settings(box="debian-bookworm", provider="virtualbox").validate()
    Settings(box="fedora-45", provider="virtualbox").validate()


# --- the fetch path through ensure_box: fake vagrant, fake mirror ----------------------------

@pytest.fixture
def fake_vagrant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `vagrant` on PATH that lists no boxes and records every other call in a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "vagrant-calls"
    (bin_dir / "vagrant").write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "box list" ]; then exit 0; fi\n'
        f'echo "$*" >> {calls}\n'
    )
    (bin_dir / "vagrant").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.fixture
def sample_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(DATA / "fedora" / "test-signing-key.asc", keys / "RPM-GPG-KEY-fedora-43-primary")
    monkeypatch.setattr(fedora, "KEY_DIR", keys)
    monkeypatch.setitem(FEDORA_RELEASES, 43, FedoraRelease(
        43, "1.6", "205F6825CC706DD573B2A1B448F44A3DC083BD2A"))


def use_mirror(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> list[str]:
    asked: list[str] = []

    def download(url: str, dest: Path) -> None:
        asked.append(url)
        if url not in files:
            raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution: {url}>")
        dest.write_bytes(files[url])

    monkeypatch.setattr(fedora_box, "urllib_download", download)
    return asked


needs_tools = pytest.mark.skipif(
    shutil.which("gpgv") is None or shutil.which("ssh-keygen") is None,
    reason="gpgv or ssh-keygen is not installed")


@needs_tools
def test_ensure_box_downloads_verifies_and_adds_the_base_box(
        tmp_path: Path, fake_vagrant: Path, sample_key: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    use_mirror(monkeypatch, {IMAGES + SIGNED.name: SIGNED.read_bytes(),
                             IMAGES + LIBVIRT_NAME: b"pwt test: fake libvirt box of Fedora 43\n"})
    box = ensure_box(get_box("fedora-43"), tmp_path / "state", 60)
    assert box.vagrant_name == "pwt/fedora-43-1.6-base" and box.private_key is None
    assert fedora_box.needs_provisioning(box)
    added = fake_vagrant.read_text().splitlines()
    box_file = tmp_path / "state" / "boxes" / "fedora" / LIBVIRT_NAME
    assert added == [f"box add --force --name pwt/fedora-43-1.6-base {box_file}"]


@needs_tools
def test_a_mismatching_download_is_never_added(tmp_path: Path, fake_vagrant: Path,
                                               sample_key: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    use_mirror(monkeypatch, {IMAGES + SIGNED.name: SIGNED.read_bytes(),
                             IMAGES + LIBVIRT_NAME: b"something else\n"})
    with pytest.raises(HarnessError) as err:
        ensure_box(get_box("fedora-43"), tmp_path / "state", 60)
    assert "is not bbb905822c61" in str(err.value) and "\n" not in str(err.value)
    assert not fake_vagrant.exists(), "vagrant box add must not run"
    assert not (tmp_path / "state" / "boxes" / "fedora" / LIBVIRT_NAME).exists()


@needs_tools
def test_offline_fetch_says_so_in_one_clear_error(tmp_path: Path, fake_vagrant: Path,
                                                  sample_key: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    use_mirror(monkeypatch, {})
    with pytest.raises(HarnessError) as err:
        ensure_box(get_box("fedora-43"), tmp_path / "state", 60)
    message = str(err.value)
    assert "cannot download Fedora 43" in message and "offline" in message
    assert "\n" not in message.strip()
    assert not fake_vagrant.exists()
