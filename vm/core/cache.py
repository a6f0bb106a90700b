"""A content-addressed build cache: an artifact is keyed by the hash of its recipe."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def recipe_hash(files: list[Path], data: Mapping[str, object]) -> str:
    """Hash of the recipe files' contents and the recipe data (12 hex digits).

    Changing a build script or a recipe value gives a new key (a rebuild); nothing else does.
    """
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(json.dumps(data, sort_keys=True).encode())
    return h.hexdigest()[:12]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksum(path: Path) -> None:
    Path(f"{path}.sha256").write_text(file_sha256(path) + "\n")


def checksum_ok(path: Path) -> bool:
    """True when ``path`` exists and matches the checksum recorded when it was built."""
    sums = Path(f"{path}.sha256")
    if not path.exists() or not sums.exists():
        return False
    return sums.read_text().strip() == file_sha256(path)


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Serialise builders of the same artifact across concurrent runs."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
