"""The box's disk step runs where there is no loop device and no losetup (issue: kernel 6.18
answers HDIO_GETGEO with ENOTTY on loop partitions, and containers never see partition nodes).

The real vm/boxes/pack-box.sh runs on a tiny tree inside a private mount namespace whose /dev is a
fresh tmpfs with only null/zero/urandom in it, with a PATH that has no losetup, mount or
grub-install. The result is then read back: a tar with a qcow2 of one ext4 file system
labelled pwt-root that holds the tree's files, and the kernel and initramfs beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pytest_portable_upgrade.boxes.builder import PACK_SCRIPT

# Exactly what pack-box.sh may use; losetup, mount, partx and grub-install are not among them.
TOOLS = ("bash", "ls", "sort", "tail", "cp", "du", "cut", "truncate", "mkfs.ext4", "mke2fs",
         "rm", "mkdir", "qemu-img", "cat", "tar", "mv", "mktemp", "dirname", "env")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("qemu-img") is None
    or shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
    reason="needs root, unshare, qemu-img, mkfs.ext4 and debugfs (./setup-host installs them)",
)


def _tree(root: Path, with_kernel: bool = True) -> Path:
    tree = root / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "boot").mkdir()
    (tree / "etc" / "hostname").write_text("pwt-guest\n")
    if with_kernel:
        (tree / "boot" / "vmlinuz-6.1.0-1-amd64").write_bytes(b"kernel-1")
        (tree / "boot" / "vmlinuz-6.1.0-9-amd64").write_bytes(b"kernel-9")  # the newest wins
        (tree / "boot" / "initrd.img-6.1.0-9-amd64").write_bytes(b"initrd-9")
    return tree


def _run_without_loop_devices(
    tmp_path: Path, tree: Path, out: Path
) -> subprocess.CompletedProcess[str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, f"{tool} missing on this host"
        (bindir / tool).symlink_to(found)
    script = (
        "set -e; mount -t tmpfs pwt-dev /dev; "
        "mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; "
        "mknod -m 666 /dev/urandom c 1 9; "
        f"exec env -i PATH={bindir} bash {PACK_SCRIPT} {tree} {out} 1"
    )
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, check=False)


def test_pack_box_needs_no_loop_device(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    out = tmp_path / "out" / "test.box"
    out.parent.mkdir()
    # The probe inside the same kind of namespace: no loop node, no losetup on that PATH.
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs x /dev; ls /dev; PATH={tmp_path} command -v losetup || echo none"],
        capture_output=True, text=True, check=True)
    assert "loop" not in probe.stdout and probe.stdout.strip().endswith("none")

    result = _run_without_loop_devices(tmp_path, tree, out)
    assert result.returncode == 0, result.stdout + result.stderr

    assert Path(f"{out}.vmlinuz").read_bytes() == b"kernel-9"
    assert Path(f"{out}.initrd").read_bytes() == b"initrd-9"
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["Vagrantfile", "box.img", "metadata.json"]
        metadata = json.load(tar.extractfile("metadata.json"))  # type: ignore[arg-type]
        tar.extract("box.img", tmp_path / "unpacked", filter="data")
    assert metadata == {"provider": "libvirt", "format": "qcow2", "virtual_size": 1}
    image = tmp_path / "unpacked" / "box.img"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 2**30
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    # One ext4 file system on the whole disk (no partition table), labelled for /etc/fstab.
    label = subprocess.run(["e2label", str(raw)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == "pwt-root"
    hostname = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(raw)],
                              capture_output=True, text=True, check=True)
    assert hostname.stdout == "pwt-guest\n"
    assert not list(out.parent.glob("*.pack.*")), "scratch directory left behind"


def test_pack_box_without_kernel_says_so(tmp_path: Path) -> None:
    tree = _tree(tmp_path, with_kernel=False)
    out = tmp_path / "out.box"
    result = _run_without_loop_devices(tmp_path, tree, out)
    assert result.returncode != 0
    assert f"no kernel (boot/vmlinuz-*) in {tree}" in result.stderr
    assert not out.exists() and not Path(f"{out}.vmlinuz").exists()
