"""vm/machine/vagrantfile.py: the rendered Vagrantfile obeys the networking rule and is valid
Ruby."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_portable_upgrade.machine.vagrantfile import VagrantfileSpec, render

KEY = Path("/var/lib/portable-walkthrough-tests/keys/id_ed25519")


def spec(**changes: object) -> VagrantfileSpec:
    base = VagrantfileSpec(
        box="pwt/debian-bookworm-0123456789ab", domain_prefix="pwt-20240101-000000-abcdef-",
        private_key=KEY, ssh_port=40123, udp_port=41001, udp_local_port=41002,
        mac="52:54:00:12:ab:ef", accel="tcg", memory_mb=2048, cpus=2,
        libvirt_uri="qemu:///system", pool="pwt",
        console_log=Path("/var/lib/portable-walkthrough-tests/runs/x/console.log"),
        boot_timeout_s=900,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def setting(text: str, name: str) -> str:
    """The value of ``name = value`` (the one line assigning it)."""
    values = re.findall(rf"^\s*{re.escape(name)} = (.+)$", text, re.MULTILINE)
    assert len(values) == 1, f"{name} assigned {len(values)} times"
    return values[0]


def test_tcg_uses_the_qemu_driver_and_qemu64() -> None:
    text = render(spec(accel="tcg"))
    assert setting(text, "lv.driver") == '"qemu"'
    assert setting(text, "lv.cpu_mode") == '"custom"'
    assert setting(text, "lv.cpu_model") == '"qemu64"'
    assert "host-passthrough" not in text


def test_kvm_uses_the_kvm_driver_and_host_passthrough() -> None:
    text = render(spec(accel="kvm"))
    assert setting(text, "lv.driver") == '"kvm"'
    assert setting(text, "lv.cpu_mode") == '"host-passthrough"'
    assert "qemu64" not in text and "lv.cpu_model" not in text


def qemuargs(text: str) -> list[str]:
    return re.findall(r'lv\.qemuargs :value => "([^"]*)"', text)


def test_user_networking_is_restricted_and_forwards_ssh_on_loopback_only() -> None:
    args = qemuargs(render(spec()))
    assert args == [
        "-netdev", "user,id=pwtnet,restrict=on,hostfwd=tcp:127.0.0.1:40123-:22",
        "-device", "virtio-net-pci,netdev=pwtnet,mac=52:54:00:12:ab:ef,bus=pci.0,addr=0x1f",
    ]
    netdev = args[1].split(",")
    assert "restrict=on" in netdev
    forwards = [opt for opt in netdev if opt.startswith("hostfwd=")]
    assert forwards == ["hostfwd=tcp:127.0.0.1:40123-:22"]


def test_ssh_goes_to_the_forwarded_loopback_port() -> None:
    text = render(spec(ssh_port=40999))
    assert setting(text, "config.ssh.host") == '"127.0.0.1"'
    assert setting(text, "config.ssh.port") == "40999"
    assert "hostfwd=tcp:127.0.0.1:40999-:22" in text


def test_no_management_network() -> None:
    assert setting(render(spec()), "lv.mgmt_attach") == "false"


def test_private_key_is_used_and_not_replaced() -> None:
    text = render(spec())
    assert setting(text, "config.ssh.insert_key") == "false"
    assert setting(text, "config.ssh.private_key_path") == f'["{KEY}"]'


def test_without_a_private_key_vagrant_handles_keys() -> None:
    text = render(spec(private_key=None))
    assert "insert_key" not in text
    assert "private_key_path" not in text
    assert str(KEY) not in text


def test_udp_tunnel_stays_on_loopback() -> None:
    text = render(spec())
    assert 'libvirt__tunnel_type: "udp"' in text
    assert re.findall(r"libvirt__tunnel_(?:local_)?ip: \"([^\"]+)\"", text) == [
        "127.0.0.1", "127.0.0.1"]
    assert "libvirt__tunnel_port: 41001" in text
    assert "libvirt__tunnel_local_port: 41002" in text
    assert 'libvirt__mac: "52:54:00:12:ab:ef"' in text
    assert "auto_config: false" in text


@pytest.mark.parametrize("accel", ["kvm", "tcg"])
def test_no_address_but_loopback_anywhere(accel: str) -> None:
    for key in (KEY, None):
        text = render(spec(accel=accel, private_key=key))
        assert "192.168." not in text
        addresses = set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text))
        assert addresses == {"127.0.0.1"}
        assert "0.0.0.0" not in text


def test_values_of_the_spec_appear() -> None:
    text = render(spec(memory_mb=3072, cpus=3, boot_timeout_s=1200, pool="mypool",
                       libvirt_uri="qemu:///session"))
    assert setting(text, "config.vm.box") == '"pwt/debian-bookworm-0123456789ab"'
    assert setting(text, "lv.memory") == "3072"
    assert setting(text, "lv.cpus") == "3"
    assert setting(text, "config.vm.boot_timeout") == "1200"
    assert setting(text, "lv.storage_pool_name") == '"mypool"'
    assert setting(text, "lv.uri") == '"qemu:///session"'
    assert setting(text, "lv.default_prefix") == '"pwt-20240101-000000-abcdef-"'
    assert '"/var/lib/portable-walkthrough-tests/runs/x/console.log"' in text
    assert 'config.vm.synced_folder ".", "/vagrant", disabled: true' in text


def test_strings_are_escaped() -> None:
    text = render(spec(box='evil"box'))
    assert setting(text, "config.vm.box") == r'"evil\"box"'


@pytest.mark.parametrize("provider", ["hyperv", "docker", ""])
def test_other_providers_are_refused(provider: str) -> None:
    with pytest.raises(ValueError, match="not supported"):
        render(spec(provider=provider))


@pytest.mark.parametrize("accel", ["kvm", "tcg"])
@pytest.mark.parametrize("key", [KEY, None])
def test_output_is_balanced_ruby(accel: str, key: Path | None) -> None:
    text = render(spec(accel=accel, private_key=key))
    code = "\n".join(ln.split("#", 1)[0] for ln in text.splitlines())
    opens = len(re.findall(r"\bdo\b", code))
    ends = len(re.findall(r"^\s*end\s*$", code, re.MULTILINE))
    assert opens == ends == 2
    for a, b in ("()", "[]", "{}"):
        assert code.count(a) == code.count(b), f"unbalanced {a}{b}"
    assert text.count('"') % 2 == 0
    assert text.endswith("end\n")


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
@pytest.mark.parametrize("accel", ["kvm", "tcg"])
def test_ruby_accepts_the_syntax(tmp_path: Path, accel: str) -> None:
    path = tmp_path / "Vagrantfile"
    path.write_text(render(spec(accel=accel)))
    result = subprocess.run(["ruby", "-c", str(path)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "Syntax OK" in result.stdout


def test_a_box_built_here_boots_its_own_kernel_directly() -> None:
    from pytest_portable_upgrade.boxes.vagrant_boxes import KERNEL_CMD_LINE

    text = render(spec(kernel=Path("/s/boxes/b.box.vmlinuz"), initrd=Path("/s/boxes/b.box.initrd"),
                       cmd_line=KERNEL_CMD_LINE))
    assert setting(text, "lv.kernel") == '"/s/boxes/b.box.vmlinuz"'
    assert setting(text, "lv.initrd") == '"/s/boxes/b.box.initrd"'
    # Root is the whole virtio disk: the box has no partition table and no boot loader.
    assert setting(text, "lv.cmd_line").startswith('"root=/dev/vda ro console=ttyS0')


def test_a_downloaded_box_boots_its_own_way() -> None:
    text = render(spec())
    assert "lv.kernel" not in text and "lv.initrd" not in text and "lv.cmd_line" not in text


def test_a_direct_boot_without_initrd_is_refused() -> None:
    with pytest.raises(ValueError, match="needs an initrd"):
        render(spec(kernel=Path("/k"), cmd_line="root=/dev/vda"))
