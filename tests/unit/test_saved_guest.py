"""vm/machine/saved_guest.py: the saved guest's key, its image header patch and its domain XML."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.machine.saved_guest import (
    HEADER,
    SAVE_MAGIC,
    RunDomain,
    domain_uuid,
    main_disk,
    parse_virsh_version,
    retarget_domain_xml,
    retarget_image,
    saved_guest_for,
    saved_key,
    stale_saved_guests,
    user_nic_mac,
)

DATA = Path(__file__).parent / "data"
OLD_NAME = "pwt-20261127-093000-abc123-default"
OLD_UUID = "0b5e2c0e-6a55-4f0e-9a7e-7d4f0c3f9e11"
NEW_NAME = "pwt-20261127-101500-def456-default"
NEW_UUID = "6f1d0c61-2b8e-4d6e-b0a2-5c7e3d9f0a42"

VIRSH_VERSION = """Compiled against library: libvirt 9.0.0
Using library: libvirt 9.0.0
Using API: QEMU 9.0.0
Running hypervisor: QEMU 7.2.22
Running against daemon: 9.0.0
"""


def test_versions_come_from_virsh_version() -> None:
    assert parse_virsh_version(VIRSH_VERSION) == ("7.2.22", "9.0.0")
    # As seen here: no daemon line when the daemon is the library's version.
    local = VIRSH_VERSION.replace("Running against daemon: 9.0.0\n", "")
    assert parse_virsh_version(local) == ("7.2.22", "9.0.0")
    newer = VIRSH_VERSION.replace("daemon: 9.0.0", "daemon: 10.1.0")
    assert parse_virsh_version(newer) == ("7.2.22", "10.1.0")
    with pytest.raises(HarnessError, match="cannot read qemu/libvirt versions"):
        parse_virsh_version("error: failed to connect to the hypervisor")


def test_any_input_of_the_memory_image_changes_the_key() -> None:
    base = dict(box="pwt/debian-bookworm-0123456789ab", accel="tcg", memory_mb=2048, cpus=2,
                qemu="7.2.22", libvirt="9.0.0")
    key = saved_key(**base)  # type: ignore[arg-type]
    assert key == saved_key(**base)  # type: ignore[arg-type]
    for field, other in (("box", "pwt/debian-bookworm-ba9876543210"), ("accel", "kvm"),
                         ("memory_mb", 4096), ("cpus", 1), ("qemu", "8.2.0"),
                         ("libvirt", "10.0.0")):
        assert saved_key(**{**base, field: other}) != key, field  # type: ignore[arg-type]


def test_stale_saved_guests_are_the_same_box_under_other_keys(tmp_path: Path) -> None:
    box = "pwt/debian-bookworm-0123456789ab"
    keep = saved_guest_for(tmp_path, box, "aaaaaaaaaaaa")
    for name in ("pwt-debian-bookworm-0123456789ab-aaaaaaaaaaaa",
                 "pwt-debian-bookworm-0123456789ab-bbbbbbbbbbbb",
                 "pwt-debian-bookworm-ffffffffffff-aaaaaaaaaaaa",  # an earlier box build
                 "pwt-debian-bookworm-backports-0123456789ab-cccccccccccc"):
        (tmp_path / "saved" / name).mkdir(parents=True)
    assert [p.name for p in stale_saved_guests(tmp_path, "debian-bookworm", keep)] == [
        "pwt-debian-bookworm-0123456789ab-bbbbbbbbbbbb",
        "pwt-debian-bookworm-ffffffffffff-aaaaaaaaaaaa"]


def _save_image(path: Path, xml: str, stream: bytes = b"QEVM\x00migration-stream") -> None:
    data = xml.encode() + b"\0" * 64 + b"<cookie/>\0"
    cookie_offset = len(xml.encode()) + 64
    header = HEADER.pack(SAVE_MAGIC, 2, len(data), 1, 0, cookie_offset, *([0] * 14))
    path.write_bytes(header + data + stream)


def test_the_run_image_carries_its_own_name_and_uuid_and_nothing_else_moves(
    tmp_path: Path,
) -> None:
    xml = (DATA / "saved-domain.xml").read_text()
    source, target = tmp_path / "memory.sav", tmp_path / "run.sav"
    _save_image(source, xml)
    retarget_image(source, target, {OLD_NAME: NEW_NAME, OLD_UUID: NEW_UUID})
    before, after = source.read_bytes(), target.read_bytes()
    assert len(before) == len(after)
    assert HEADER.unpack_from(after) == HEADER.unpack_from(before)
    assert after.endswith(b"QEVM\x00migration-stream")
    text = after[HEADER.size:].split(b"\0", 1)[0].decode()
    assert f"<name>{NEW_NAME}</name>" in text and NEW_UUID in text
    assert OLD_NAME not in text and OLD_UUID not in text
    assert source.read_bytes() == before  # the saved guest itself is untouched


def test_a_replacement_of_another_length_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "memory.sav"
    _save_image(source, (DATA / "saved-domain.xml").read_text())
    with pytest.raises(ValueError, match="must be as long as"):
        retarget_image(source, tmp_path / "run.sav", {OLD_NAME: "pwt-short"})


def test_a_name_not_in_the_image_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "memory.sav"
    _save_image(source, (DATA / "saved-domain.xml").read_text())
    with pytest.raises(HarnessError, match="is not in the saved image's XML"):
        retarget_image(source, tmp_path / "run.sav", {NEW_NAME: OLD_NAME})


def test_a_partial_image_is_not_a_save_image(tmp_path: Path) -> None:
    source = tmp_path / "memory.sav"
    source.write_bytes(struct.pack("=16s", b"LibvirtQemudPart") + b"\0" * 200)
    with pytest.raises(HarnessError, match="not a complete libvirt save image"):
        retarget_image(source, tmp_path / "run.sav", {})


def test_the_domain_xml_gets_the_runs_disk_console_and_ports() -> None:
    xml = (DATA / "saved-domain.xml").read_text()
    old_disk = main_disk(xml)
    run = RunDomain(NEW_NAME, NEW_UUID, Path(f"/pool/{NEW_NAME}.img"), Path("/runs/r/console.log"),
                    ssh_port=41022, udp_port=42001, udp_local_port=42002)
    new = retarget_domain_xml(xml, old_disk, run)
    assert main_disk(new) == f"/pool/{NEW_NAME}.img"
    assert domain_uuid(new) == NEW_UUID and f"<name>{NEW_NAME}</name>" in new
    assert "hostfwd=tcp:127.0.0.1:41022-:22" in new and ":22-:22" not in new
    assert 'port="42001"' in new and 'port="42002"' in new
    assert "/runs/r/console.log" in new and "/runs/old/console.log" not in new
    # What the guest sees stays: its MAC, its kernel, its memory.
    assert user_nic_mac(new) == user_nic_mac(xml)
    for kept in ("<kernel>", "<memory unit=", "<initrd>"):
        assert kept in new
    # libvirt reads the new backing chain (overlay -> frozen disk -> box) from the images, and
    # names the agent socket after the new domain.
    assert "<backingStore" not in new and "_vagrant_box_image_" not in new
    assert "org.qemu.guest_agent.0" in new and "domain-2-pwt-" not in new


def test_a_domain_xml_without_the_ssh_forward_is_an_error() -> None:
    xml = (DATA / "saved-domain.xml").read_text().replace("hostfwd=tcp", "guestfwd=tcp")
    run = RunDomain(NEW_NAME, NEW_UUID, Path("/d"), Path("/c"), 1, 2, 3)
    with pytest.raises(HarnessError, match="0 SSH forwards"):
        retarget_domain_xml(xml, main_disk(xml), run)
