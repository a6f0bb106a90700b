"""vm/core/cache.py: recipe hashes, checksums and the builder lock."""

from __future__ import annotations

import fcntl
import re
from pathlib import Path

import pytest

from pytest_portable_upgrade.core.cache import (
    checksum_ok,
    file_sha256,
    locked,
    recipe_hash,
    write_checksum,
)


def recipe(directory: Path, script: str = "#!/bin/sh\ndebootstrap \"$SUITE\"\n",
           helper: str = "echo helper\n") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "build-box.sh").write_text(script)
    (directory / "helper.sh").write_text(helper)
    return [directory / "build-box.sh", directory / "helper.sh"]


DATA = {"SUITE": "bookworm", "PACKAGES": "systemd,ab"}


def test_recipe_hash_is_12_hex_digits_and_stable(tmp_path: Path) -> None:
    files = recipe(tmp_path)
    h = recipe_hash(files, DATA)
    assert re.fullmatch(r"[0-9a-f]{12}", h)
    assert recipe_hash(files, DATA) == h


def test_recipe_hash_ignores_order_location_and_mtime(tmp_path: Path) -> None:
    files = recipe(tmp_path / "a")
    h = recipe_hash(files, DATA)
    assert recipe_hash(list(reversed(files)), DATA) == h
    assert recipe_hash(files, dict(reversed(list(DATA.items())))) == h
    assert recipe_hash(recipe(tmp_path / "elsewhere"), DATA) == h
    files[0].touch()
    assert recipe_hash(files, DATA) == h


def test_recipe_hash_changes_with_file_content(tmp_path: Path) -> None:
    files = recipe(tmp_path)
    h = recipe_hash(files, DATA)
    files[1].write_text("echo helper \n")
    assert recipe_hash(files, DATA) != h


def test_recipe_hash_changes_with_a_data_value(tmp_path: Path) -> None:
    files = recipe(tmp_path)
    h = recipe_hash(files, DATA)
    assert recipe_hash(files, {**DATA, "SUITE": "trixie"}) != h
    assert recipe_hash(files, {**DATA, "EXTRA": ""}) != h


def test_recipe_hash_does_not_mix_content_between_files(tmp_path: Path) -> None:
    # Moving text from one file into the next is a different recipe.
    a = recipe_hash(recipe(tmp_path / "a", script="x", helper="yz"), DATA)
    b = recipe_hash(recipe(tmp_path / "b", script="xy", helper="z"), DATA)
    assert a != b


def test_checksum_detects_a_flipped_byte(tmp_path: Path) -> None:
    box = tmp_path / "x.box"
    box.write_bytes(bytes(range(256)) * 64)
    assert not checksum_ok(box)  # no checksum recorded yet
    write_checksum(box)
    assert Path(f"{box}.sha256").read_text() == file_sha256(box) + "\n"
    assert checksum_ok(box)
    data = bytearray(box.read_bytes())
    data[1000] ^= 0x01
    box.write_bytes(bytes(data))
    assert not checksum_ok(box)


def test_checksum_of_a_missing_file(tmp_path: Path) -> None:
    box = tmp_path / "gone.box"
    box.write_bytes(b"x")
    write_checksum(box)
    box.unlink()
    assert not checksum_ok(box)


def test_file_sha256_known_value(tmp_path: Path) -> None:
    f = tmp_path / "abc"
    f.write_bytes(b"abc")
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_locked_excludes_other_holders(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "box.lock"
    with locked(lock):
        assert lock.exists()
        with lock.open("w") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with lock.open("w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the block
        fcntl.flock(other, fcntl.LOCK_UN)
