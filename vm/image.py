"""Build (once, cached) the portable images portable-walkthrough_<V>.raw on the host."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vm.boxes import DEBIAN_MIRROR
from vm.cache import checksum_ok, locked, recipe_hash, write_checksum
from vm.errors import PrerequisiteMissing
from vm.log import log
from vm.proc import run_logged

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
IMAGE_SUITE = "bookworm"
# version -> greeting: v1 says Hello, v2 says Hola.
VERSIONS: dict[int, str] = {1: "Hello", 2: "Hola"}
SOCKET_LOCATIONS = ("host", "image")


@dataclass(frozen=True)
class PortableImages:
    """One set of images: ``path(v)`` is ``portable-walkthrough_<v>.raw``."""

    directory: Path
    socket_location: str

    def path(self, version: int) -> Path:
        return self.directory / f"portable-walkthrough_{version}.raw"


def image_recipe_files() -> list[Path]:
    return sorted(p for p in IMAGES_DIR.iterdir() if p.is_file() and p.suffix != ".pyc")


def ensure_images(state_dir: Path, socket_location: str = "host") -> PortableImages:
    """Build the v1/v2 images unless a build of the same recipe exists with good checksums.

    ``socket_location="image"`` also ships the .socket inside the image (negative control).
    """
    if socket_location not in SOCKET_LOCATIONS:
        raise ValueError(f"socket_location must be one of {SOCKET_LOCATIONS}")
    for tool in ("debootstrap", "mksquashfs"):
        if shutil.which(tool) is None:
            raise PrerequisiteMissing(f"{tool} is missing: run ./setup-host")
    data = {"suite": IMAGE_SUITE, "mirror": DEBIAN_MIRROR, "versions": VERSIONS}
    digest = recipe_hash(image_recipe_files(), {**data, "socket": socket_location})
    root = state_dir / "images"
    images = PortableImages(root / f"{socket_location}-socket-{digest}", socket_location)
    with locked(root / "build.lock"):
        if all(checksum_ok(images.path(v)) for v in VERSIONS):
            log.info(f"portable images ({socket_location} socket): cached in {images.directory}")
            return images
        with log.nested(f"building portable images v{'/v'.join(map(str, VERSIONS))} "
                        f"(socket in {socket_location})"):
            rootfs_key = recipe_hash([IMAGES_DIR / "build-image.sh"], data)
            env = {
                **os.environ, "SUITE": IMAGE_SUITE, "MIRROR": DEBIAN_MIRROR,
                "ROOTFS": str(root / f"rootfs-{rootfs_key}"), "OUT_DIR": str(images.directory),
                "VERSIONS": " ".join(f"{v}:{g}" for v, g in VERSIONS.items()),
                "SOCKET_IN_IMAGE": "1" if socket_location == "image" else "0",
            }
            run_logged(
                ["bash", str(IMAGES_DIR / "build-image.sh")], images.directory / "build.log",
                timeout=1200, what="building the portable images", env=env,
            )
            for v in VERSIONS:
                write_checksum(images.path(v))
    return images
