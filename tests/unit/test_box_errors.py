"""Broken environments around a box build give one actionable line."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

import vm.box as box
from vm.box import explain_build_failure, require_free_space
from vm.errors import PrerequisiteMissing

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
