"""Broken environments around a box build give one actionable line."""

from __future__ import annotations

import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest

import pytest_portable_upgrade.boxes.builder as box
from pytest_portable_upgrade.boxes.builder import explain_build_failure, require_free_space
from pytest_portable_upgrade.core.cache import write_checksum
from pytest_portable_upgrade.core.errors import PrerequisiteMissing

Usage = namedtuple("Usage", "total used free")


def test_too_little_disk_is_refused_before_building(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(box.shutil, "disk_usage", lambda _: Usage(100, 99, 2 * 2**30))
    with pytest.raises(PrerequisiteMissing, match=r"needs 6 GiB free .* only 2.0 GiB"):
        require_free_space(tmp_path, 6.0, "building box x")


def test_enough_disk_passes(tmp_path: Path) -> None:
    require_free_space(tmp_path, 0.001, "building box x")
    assert shutil.disk_usage(tmp_path).free > 0


def test_unreachable_mirror_is_named(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("==> debootstrap bookworm\nE: Failed getting release file "
                   "http://deb.debian.org/debian/dists/bookworm/Release\n")
    message = explain_build_failure(log, "building box x failed (exit 1)")
    assert message.startswith("the Debian mirror is unreachable (http://deb.debian.org/debian)")
    assert "building box x failed (exit 1)" in message


def test_other_failures_keep_their_message(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("mkfs.ext4: No space left on device\n")
    assert explain_build_failure(log, "failed (exit 1)") == "failed (exit 1)"
    assert explain_build_failure(tmp_path / "missing.log", "m") == "m"


def added_box(tmp_path: Path) -> tuple[dict[str, str], str, Path]:
    env = {"VAGRANT_HOME": str(tmp_path / "vagrant-home")}
    name = "pwt/debian-bookworm-0123456789ab"
    image = box.vagrant_box_image(env, name)
    image.parent.mkdir(parents=True)
    image.write_bytes(b"QFI\xfb" + bytes(4096))
    return env, name, image


def test_vagrants_copy_of_the_box_lives_where_vagrant_puts_it(tmp_path: Path) -> None:
    env = {"VAGRANT_HOME": "/v"}
    assert box.vagrant_box_image(env, "pwt/debian-trixie-a45bfd2d04f3") == Path(
        "/v/boxes/pwt-VAGRANTSLASH-debian-trixie-a45bfd2d04f3/0/libvirt/box.img")
    # The prefix matches what vagrant-libvirt named the base volume here.
    assert ("pwt-VAGRANTSLASH-debian-trixie-a45bfd2d04f3_vagrant_box_image_0_1795700088_box.img"
            .startswith(box.pool_base_prefix("pwt/debian-trixie-a45bfd2d04f3")))


def test_an_added_box_matching_its_checksum_is_trusted(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env, name, image = added_box(tmp_path)
    write_checksum(image)
    volume = tmp_path / "pool" / "base.img"
    volume.parent.mkdir()
    volume.write_bytes(image.read_bytes())
    monkeypatch.setattr(box, "pool_volumes", lambda *a: [("base.img", volume)])
    assert box.added_box_problem(env, name, "qemu:///system", "pwt") is None


def test_a_corrupt_added_box_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, name, image = added_box(tmp_path)
    write_checksum(image)
    monkeypatch.setattr(box, "pool_volumes", lambda *a: [])
    with image.open("r+b") as f:
        f.seek(100)
        f.write(b"\x01")
    problem = box.added_box_problem(env, name, "qemu:///system", "pwt")
    assert problem is not None and "does not match the checksum recorded" in problem


def test_a_corrupt_pool_base_volume_is_found(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    env, name, image = added_box(tmp_path)
    write_checksum(image)
    volume = tmp_path / "base.img"
    volume.write_bytes(image.read_bytes()[:-1])  # truncated upload
    monkeypatch.setattr(box, "pool_volumes", lambda *a: [("x_vagrant_box_image_0_1_box.img",
                                                          volume)])
    problem = box.added_box_problem(env, name, "qemu:///system", "pwt")
    assert problem == ("the pool's base volume x_vagrant_box_image_0_1_box.img differs from "
                       "the box image")


def test_a_box_added_without_a_recorded_checksum_is_not_trusted(tmp_path: Path) -> None:
    env, name, _image = added_box(tmp_path)
    problem = box.added_box_problem(env, name, "qemu:///system", "pwt")
    assert problem is not None and "no checksum was recorded" in problem


def test_old_box_files_spare_a_recipe_whose_name_extends_this_one(tmp_path: Path) -> None:
    # Seen here: re-adding debian-bookworm deleted debian-bookworm-backports' box file.
    names = ["debian-bookworm-9c1aa783d84e.box", "debian-bookworm-9c1aa783d84e.box.sha256",
             "debian-bookworm-6384f66abede.box", "debian-bookworm-6384f66abede.box.vmlinuz",
             "debian-bookworm-backports-aafc380528e9.box",
             "debian-bookworm-backports-aafc380528e9.box.sha256", "debian-bookworm.lock"]
    for name in names:
        (tmp_path / name).write_text("x")
    old = box.old_box_files(tmp_path, "debian-bookworm",
                            keep=tmp_path / "debian-bookworm-9c1aa783d84e.box")
    assert [p.name for p in old] == ["debian-bookworm-6384f66abede.box",
                                     "debian-bookworm-6384f66abede.box.vmlinuz"]


def test_prune_removes_only_earlier_builds_of_the_same_recipe(
        monkeypatch: pytest.MonkeyPatch) -> None:
    listing = "\n".join(
        f"1764160000,,box-name,{n}" for n in [
            "pwt/debian-bookworm-9c1aa783d84e", "pwt/debian-bookworm-6384f66abede",
            "pwt/debian-bookworm-backports-aafc380528e9", "pwt/debian-trixie-a45bfd2d04f3",
            "fedora/42-cloud-base"])
    removed: list[list[str]] = []

    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if cmd[:3] == ["vagrant", "box", "remove"]:
            removed.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, listing, "")

    monkeypatch.setattr(box.subprocess, "run", run)
    old = box.prune_old_boxes("debian-bookworm", keep="pwt/debian-bookworm-9c1aa783d84e", env={})
    assert old == ["pwt/debian-bookworm-6384f66abede"]
    assert [c[-1] for c in removed] == ["pwt/debian-bookworm-6384f66abede"]
