"""A box build's scratch directory: what a killed build left mounted in its chroot is
unmounted before the directory is removed, and nothing is removed while a mount stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_portable_upgrade.boxes import builder
from pytest_portable_upgrade.boxes.builder import mounts_under, remove_work_dir

WORK = "/var/lib/pwt/boxes/work-debian-sid-abc"
MOUNTINFO = f"""\
22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw
97 30 0:52 / {WORK}/rootfs/proc rw,relatime - proc proc rw
98 30 0:53 / {WORK}/rootfs/dev rw - devtmpfs udev rw
99 98 0:54 / {WORK}/rootfs/dev/pts rw - devpts devpts rw
100 30 0:55 / {WORK}-other/rootfs/proc rw - proc proc rw
101 30 0:56 / /srv/with\\040space rw - tmpfs tmpfs rw
"""


def test_mounts_under_the_directory_deepest_first_and_no_neighbour() -> None:
    points = mounts_under(MOUNTINFO, Path(WORK))
    assert points[0] == f"{WORK}/rootfs/dev/pts"
    assert set(points) == {f"{WORK}/rootfs/proc", f"{WORK}/rootfs/dev", f"{WORK}/rootfs/dev/pts"}
    assert mounts_under(MOUNTINFO, Path("/srv/with space")) == ["/srv/with space"]


def test_the_directory_is_removed_after_its_mounts_are_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    (work / "rootfs" / "proc").mkdir(parents=True)
    info = tmp_path / "mountinfo"
    info.write_text(f"97 30 0:52 / {work}/rootfs/proc rw - proc proc rw\n")
    unmounted: list[list[str]] = []

    def umount(argv: list[str], **_: object) -> None:
        unmounted.append(argv)
        info.write_text("")  # the lazy unmount took it

    monkeypatch.setattr(builder.subprocess, "run", umount)
    remove_work_dir(work, info)
    assert unmounted == [["umount", "-l", f"{work}/rootfs/proc"]]
    assert not work.exists()


def test_nothing_is_removed_while_a_mount_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    (work / "rootfs" / "dev").mkdir(parents=True)
    info = tmp_path / "mountinfo"
    info.write_text(f"98 30 0:53 / {work}/rootfs/dev rw - devtmpfs udev rw\n")
    monkeypatch.setattr(builder.subprocess, "run", lambda *a, **k: None)  # umount fails
    remove_work_dir(work, info)
    assert (work / "rootfs" / "dev").is_dir()
