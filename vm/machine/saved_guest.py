"""A booted guest saved once per box and host, restored by each run in about a second.

The first run of a box boots it cold with Vagrant, waits until systemd has settled, and saves
it (``virsh save``: memory and device state) together with a frozen copy of its disk overlay.
Later runs restore that state into a domain of their own:

- their own copy-on-write overlay on the frozen disk (``pwt-<run>-default.img`` in the pool,
  so ``vagrant destroy`` and the reaper of dead runs find it like a cold-booted run's disk);
- their own domain name and UUID, console log, SSH forward port and UDP tunnel ports;
- a ``.vagrant`` machine id, so ``vagrant ssh`` and ``vagrant destroy`` work as after ``up``.

libvirt refuses a changed name or UUID in ``virsh restore --xml`` ("rename by the backdoor");
the run therefore restores from a copy of the saved image whose embedded XML carries its own
name and UUID, patched in place with strings of the same length (see ``retarget_image``).

The saved state is keyed by everything the memory image depends on: the box build, the qemu
and libvirt versions, the accelerator, memory, CPUs and this module's recipe. A change of any
of them makes a new key: the run boots cold, says so in one line, and saves anew.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from pytest_portable_upgrade.core.errors import HarnessError

# libvirt's qemu save image: "LibvirtQemudSave", then version, data_len, was_running,
# compressed, cookieOffset and 14 unused uint32 (src/qemu/qemu_saveimage.h), then data_len
# bytes holding the domain XML (NUL-padded) and the cookie, then qemu's migration stream.
SAVE_MAGIC = b"LibvirtQemudSave"
HEADER = struct.Struct("=16s19I")
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)
# Bump when what is saved changes meaning (e.g. the guest is prepared differently before save).
RECIPE = "1"


@dataclass(frozen=True)
class SavedGuest:
    """One saved guest: ``memory.sav``, ``disk.qcow2`` (frozen overlay), ``saved.json``."""

    directory: Path

    @property
    def memory(self) -> Path:
        return self.directory / "memory.sav"

    @property
    def disk(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def meta_file(self) -> Path:
        return self.directory / "saved.json"

    def meta(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.meta_file.read_text())
        return data

    def complete(self) -> bool:
        return self.memory.exists() and self.disk.exists() and self.meta_file.exists()


def saved_key(box: str, accel: str, memory_mb: int, cpus: int, qemu: str, libvirt: str) -> str:
    """The key of a saved guest: any input changing gives another key (a cold boot)."""
    data = json.dumps({"box": box, "accel": accel, "memory_mb": memory_mb, "cpus": cpus,
                       "qemu": qemu, "libvirt": libvirt, "recipe": RECIPE}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:12]


def saved_guest_for(state_dir: Path, box: str, key: str) -> SavedGuest:
    slug = box.replace("/", "-")
    return SavedGuest(state_dir / "saved" / f"{slug}-{key}")


def stale_saved_guests(state_dir: Path, recipe: str, keep: SavedGuest) -> list[Path]:
    """Saved guests of the same box recipe under another key: an earlier build of the box
    (``pwt/<recipe>-<digest>``), or older qemu, libvirt or saving recipe. Not those of a recipe
    whose name extends this one (debian-bookworm keeps debian-bookworm-backports')."""
    ours = re.compile(rf"pwt-{re.escape(recipe)}-[0-9a-f]{{12}}-[0-9a-f]{{12}}")
    root = state_dir / "saved"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if ours.fullmatch(p.name) and p != keep.directory)


def parse_virsh_version(text: str) -> tuple[str, str]:
    """(qemu version, libvirt daemon version) from ``virsh version``."""
    qemu = re.search(r"Running hypervisor:\s*QEMU\s+(\S+)", text)
    # virsh names the daemon's version only when it differs from the library's.
    daemon = (re.search(r"Running against daemon:\s*(\S+)", text)
              or re.search(r"Using library:\s*libvirt\s+(\S+)", text))
    if qemu is None or daemon is None:
        raise HarnessError(f"cannot read qemu/libvirt versions from virsh version: {text!r}")
    return qemu.group(1), daemon.group(1)


def virsh(uri: str, *args: str, timeout: float = 120) -> str:
    """Run virsh (in its own session: a terminal's Ctrl-C must not cut it); its stdout."""
    result = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                            timeout=timeout, check=False, start_new_session=True)
    if result.returncode != 0:
        words = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise HarnessError(f"virsh {args[0]} failed: {words[-1] if words else 'no output'}")
    return result.stdout


def host_versions(uri: str) -> tuple[str, str]:
    return parse_virsh_version(virsh(uri, "version"))


def header_xml_span(image: bytes) -> tuple[int, int]:
    """(start, end) of the domain XML inside a save image's header bytes."""
    if len(image) < HEADER.size:
        raise HarnessError("not a libvirt save image: too short")
    fields = HEADER.unpack_from(image)
    magic, data_len = fields[0], fields[2]
    if magic != SAVE_MAGIC:
        raise HarnessError(f"not a complete libvirt save image (magic {magic!r})")
    start = HEADER.size
    xml_end = image.find(b"\0", start, start + data_len)
    return start, (xml_end if xml_end != -1 else start + data_len)


def retarget_image(source: Path, target: Path, replacements: dict[str, str]) -> None:
    """Copy save image ``source`` to ``target`` with strings replaced in its embedded XML.

    Each replacement must have the same length as what it replaces and occur in the XML, so
    every offset in the header (XML length, cookie offset) stays valid.
    """
    for old, new in replacements.items():
        if len(old.encode()) != len(new.encode()):
            raise ValueError(f"replacement {new!r} must be as long as {old!r}")
    shutil.copyfile(source, target)
    with target.open("r+b") as f:
        head = f.read(HEADER.size)
        data_len = HEADER.unpack_from(head)[2] if len(head) == HEADER.size else 0
        f.seek(0)
        region = bytearray(f.read(HEADER.size + data_len))
        start, end = header_xml_span(bytes(region))
        xml = bytes(region[start:end])
        for old, new in replacements.items():
            if old.encode() not in xml:
                raise HarnessError(f"{old!r} is not in the saved image's XML")
            xml = xml.replace(old.encode(), new.encode())
        region[start:end] = xml
        f.seek(0)
        f.write(region)


@dataclass(frozen=True)
class RunDomain:
    """What a restored run changes in the saved domain XML."""

    name: str
    uuid: str
    disk: Path
    console_log: Path
    ssh_port: int
    udp_port: int
    udp_local_port: int


def retarget_domain_xml(xml: str, old_disk: str, run: RunDomain) -> str:
    """The saved domain's XML for one run: its name, UUID, disk, console and ports."""
    root = ET.fromstring(xml)

    def one(path: str) -> ET.Element:
        found = root.find(path)
        if found is None:
            raise HarnessError(f"the saved domain XML has no {path}")
        return found

    one("name").text = run.name
    one("uuid").text = run.uuid
    disks = [s for s in root.iterfind("devices/disk/source") if s.get("file") == old_disk]
    if len(disks) != 1:
        raise HarnessError(f"the saved domain XML has {len(disks)} disks on {old_disk}")
    disks[0].set("file", str(run.disk))
    disks[0].attrib.pop("index", None)
    # The run's overlay sits on the frozen disk, not on the box volume: let libvirt read the
    # backing chain from the image instead of trusting the saved description of it.
    for disk in root.iterfind("devices/disk"):
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
    # The guest agent's socket path carries the old domain's name: libvirt makes a new one.
    for source in root.iterfind("devices/channel[@type='unix']/source"):
        source.attrib.pop("path", None)
    root.attrib.pop("id", None)
    for source in root.iterfind("devices/serial/source"):
        source.set("path", str(run.console_log))
    for source in root.iterfind("devices/console/source"):
        source.set("path", str(run.console_log))
    for iface in root.iterfind("devices/interface[@type='udp']"):
        one_source = iface.find("source")
        local = iface.find("source/local")
        if one_source is None or local is None:
            raise HarnessError("the saved UDP tunnel NIC has no source/local address")
        one_source.set("port", str(run.udp_port))
        local.set("port", str(run.udp_local_port))
    forwards = 0
    for arg in root.iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg"):
        value = arg.get("value", "")
        if "hostfwd=tcp:127.0.0.1:" in value:
            arg.set("value", re.sub(r"hostfwd=tcp:127\.0\.0\.1:\d+-:22",
                                    f"hostfwd=tcp:127.0.0.1:{run.ssh_port}-:22", value))
            forwards += 1
    if forwards != 1:
        raise HarnessError(f"the saved domain XML has {forwards} SSH forwards, not 1")
    return ET.tostring(root, encoding="unicode")


def main_disk(xml: str) -> str:
    """The file of the domain's one disk (the run's overlay)."""
    files = [s.get("file", "") for s in ET.fromstring(xml).iterfind(
        "devices/disk[@device='disk']/source")]
    if len(files) != 1 or not files[0]:
        raise HarnessError(f"expected one file-backed disk in the domain XML, found {files}")
    return files[0]


def domain_uuid(xml: str) -> str:
    found = ET.fromstring(xml).findtext("uuid")
    if not found:
        raise HarnessError("the domain XML has no uuid")
    return found.strip()


def user_nic_mac(xml: str) -> str:
    """The MAC of the qemu user-mode NIC (the same as the UDP tunnel NIC's: see vagrantfile)."""
    for arg in ET.fromstring(xml).iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg"):
        match = re.search(r"virtio-net-pci,netdev=pwtnet,mac=([0-9a-f:]{17})", arg.get("value", ""))
        if match:
            return match.group(1)
    raise HarnessError("the domain XML has no qemu user-mode NIC")


def pool_path(uri: str, pool: str) -> Path:
    """The directory of a libvirt dir pool."""
    found = ET.fromstring(virsh(uri, "pool-dumpxml", pool)).findtext("target/path")
    if not found:
        raise HarnessError(f"storage pool {pool} has no target path")
    return Path(found.strip())


def new_uuid() -> str:
    return str(uuid.uuid4())


def write_vagrant_machine_id(run_dir: Path, domain_uuid: str) -> None:
    """Tell Vagrant which libvirt domain is this run's machine (as ``vagrant up`` would)."""
    machine = run_dir / ".vagrant" / "machines" / "default" / "libvirt"
    machine.mkdir(parents=True, exist_ok=True)
    (machine / "id").write_text(domain_uuid)
    (machine / "creator_uid").write_text(str(_uid()))


def _uid() -> int:
    import os

    return os.getuid()


def elapsed_since(start: float) -> float:
    return round(time.monotonic() - start, 1)
