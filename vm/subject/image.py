"""A subject's portable images <name>_<V>.raw: ready files from its spec, or built once (cached)
on the host from its ``[build]`` recipe by vm/subject/build-image.sh.

In the extension layout a set is one base image <name>-base.raw (minbase + packages) and one
extension <name>_<V>.raw per version (the recipe's files and extension-release.<name>)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pytest_portable_upgrade.boxes.recipes import DEBIAN_MIRROR
from pytest_portable_upgrade.core.cache import checksum_ok, locked, recipe_hash, write_checksum
from pytest_portable_upgrade.core.errors import PrerequisiteMissing
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.core.proc import run_logged
from pytest_portable_upgrade.core.resources import resource
from pytest_portable_upgrade.subject.spec import Subject

# Its name and bytes are in every image set's cache key.
BUILD_SCRIPT = resource("pytest_portable_upgrade.subject", "build-image.sh")
SOCKET_LOCATIONS = ("host", "image")
SCOPES = ("system", "user")
# Whole images (also what a versioned directory holds), or a base with extensions.
LAYOUTS = ("image", "extension")
# A user's portabled (260+) looks for the image's units in the user lookup paths and attaches
# only an image whose os-release says it is for the user scope (PORTABLE_SCOPE=user or any;
# without it: "portable scope 'system' incompatible with portabled runtime scope 'user'").
SYSTEM_UNIT_DIRS = ("/usr/lib/systemd/system/", "/lib/systemd/system/", "/etc/systemd/system/")
USER_UNIT_DIR = "/usr/lib/systemd/user/"
USER_SCOPE_OS_RELEASE = "PORTABLE_SCOPE=user"
# The guest's stash directory of the user-scope set (the system sets: their socket location).
USER_STASH = "user"
# Where a unit shipped in a portable image lives; the image-socket control puts the subject's
# host socket there too.
IMAGE_UNIT_DIR = "/usr/lib/systemd/system"


@dataclass(frozen=True)
class PortableImages:
    """One set of images: ``path(v)`` is version v's image on the host (``<name>_<v>.raw``
    when built here; a ready image keeps its own file name and is renamed in the guest)."""

    directory: Path
    socket_location: str
    name: str = ""
    ready: dict[int, Path] = field(default_factory=dict)
    scope: str = "system"
    layout: str = "image"
    ready_base: Path | None = None  # the extension layout's ready base image

    @property
    def stash_key(self) -> str:
        """The set's directory in the guest's stash: its socket location, ``user``, or
        ``extension-<location>``."""
        if self.layout == "extension":
            return f"extension-{self.socket_location}"
        return USER_STASH if self.scope == "user" else self.socket_location

    def path(self, version: int) -> Path:
        """Version ``version``'s image (its extension, in the extension layout)."""
        if version in self.ready:
            return self.ready[version]
        return self.directory / f"{self.name}_{version}.raw"

    @property
    def base(self) -> Path | None:
        """The base image of the extension layout (None in the image layout)."""
        if self.layout != "extension":
            return None
        return self.ready_base or self.directory / f"{self.name}-base.raw"

    def sizes(self, versions: list[int]) -> dict[str, int]:
        """Each file of the set (the base first) -> its size in bytes, as it goes to the guest."""
        paths = [*([self.base] if self.base is not None else []),
                 *(self.path(v) for v in versions)]
        return {p.name: p.stat().st_size for p in paths if p.exists()}


def render_file(source: Path, version: int, answer: str) -> bytes:
    """A recipe file as it goes into version ``version``'s image: ``*.in`` files get
    ``@VERSION@`` and ``@ANSWER@`` replaced (the unit template says which version it is)."""
    data = source.read_bytes()
    if source.suffix == ".in":
        data = data.replace(b"@VERSION@", str(version).encode())
        data = data.replace(b"@ANSWER@", answer.encode())
    return data


def scoped_image_path(image_path: str, scope: str) -> str:
    """Where a recipe file goes in an image for ``scope``: a unit of the system's unit
    directories goes to /usr/lib/systemd/user in a user-scope image."""
    if scope == "user":
        for prefix in SYSTEM_UNIT_DIRS:
            if image_path.startswith(prefix):
                return USER_UNIT_DIR + image_path[len(prefix):]
    return image_path


def write_overlay(subject: Subject, version: int, socket_location: str, target: Path,
                  scope: str = "system") -> None:
    """The files the recipe adds to the base tree for one version, under ``target``."""
    assert subject.build is not None
    if target.exists():
        shutil.rmtree(target)
    files = list(subject.build.files)
    if socket_location == "image":
        files += [(f"{IMAGE_UNIT_DIR}/{s.name}", s) for s in subject.sockets]
    for image_path, source in files:
        dest = target / scoped_image_path(image_path, scope).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(render_file(source, version, subject.answer(version)))
        # Executable sources stay executable (a server started by path needs it).
        dest.chmod(0o755 if os.access(source, os.X_OK) else 0o644)


def ensure_images(state_dir: Path, subject: Subject, socket_location: str = "host",
                  scope: str = "system", layout: str = "image") -> PortableImages:
    """The subject's images of that shape: its ready files, or a build of its recipe (reused
    while a build of the same recipe exists with good checksums).

    ``socket_location="image"`` also ships the host socket inside the image (negative control).
    ``scope="user"`` builds them for a user's portabled: units in /usr/lib/systemd/user and
    PORTABLE_SCOPE=user (ready images are taken as they are: they must say so themselves).
    """
    if socket_location not in SOCKET_LOCATIONS:
        raise ValueError(f"socket_location must be one of {SOCKET_LOCATIONS}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    if scope == "user" and socket_location != "host":
        raise ValueError("the user scope runs with the socket on the host only")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    if layout == "extension":
        return ensure_extensions(state_dir, subject, socket_location)
    build = subject.build
    if build is None:
        if socket_location == "image":
            raise ValueError("ready images cannot carry the socket: the spec needs [build]")
        ready = {v.number: v.image for v in subject.versions.values() if v.image is not None}
        return PortableImages(subject.spec.parent, socket_location, subject.name, ready, scope)
    for tool in ("debootstrap", "mksquashfs"):
        if shutil.which(tool) is None:
            raise PrerequisiteMissing(f"{tool} is missing: run ./setup-host")
    base = {"suite": build.suite, "mirror": DEBIAN_MIRROR, "packages": list(build.packages)}
    data = {**base, "name": subject.name, "socket": socket_location,
            "files": [t for t, _ in build.files],
            "versions": {str(v.number): v.answer for v in subject.versions.values()},
            "state": list(subject.state_directories)}
    if scope == "user":
        data["scope"] = scope
    sources = [BUILD_SCRIPT, *(s for _, s in build.files), *subject.sockets]
    digest = recipe_hash(sources, data)
    root = state_dir / "images"
    shape = f"{socket_location}-socket" if scope == "system" else "user-scope"
    images = PortableImages(root / f"{subject.name}-{shape}-{digest}", socket_location,
                            subject.name, scope=scope)
    with locked(root / "build.lock"):
        if all(checksum_ok(images.path(v)) for v in subject.versions):
            log.info(f"portable images ({shape.replace('-', ' ')}): cached in "
                     f"{images.directory}")
            return images
        numbers = " ".join(str(v) for v in sorted(subject.versions))
        what = f"socket in {socket_location}" if scope == "system" else "for the user scope"
        with log.nested(f"building portable images of {subject.name} v{numbers.replace(' ', '/v')}"
                        f" ({what})"):
            for v in subject.versions:
                write_overlay(subject, v, socket_location, images.directory / f"overlay-{v}",
                              scope)
            rootfs_key = recipe_hash([BUILD_SCRIPT], base)  # shared by recipes of one base
            env = {
                **os.environ, "SUITE": build.suite, "MIRROR": DEBIAN_MIRROR,
                "ROOTFS": str(root / f"rootfs-{rootfs_key}"), "OUT_DIR": str(images.directory),
                "NAME": subject.name, "VERSIONS": numbers,
                "PACKAGES": ",".join(build.packages),
                "STATE_DIRS": " ".join(subject.state_directories),
                "OS_RELEASE_EXTRA": USER_SCOPE_OS_RELEASE if scope == "user" else "",
            }
            run_logged(
                ["bash", str(BUILD_SCRIPT)], images.directory / "build.log",
                timeout=1200, what="building the portable images", env=env,
            )
            for v in subject.versions:
                write_checksum(images.path(v))
    return images


def extension_data(subject: Subject, socket_location: str) -> dict[str, object]:
    """What a base + extensions set is made of (its cache key)."""
    assert subject.build is not None and subject.extension is not None
    build = subject.build
    return {"suite": build.suite, "mirror": DEBIAN_MIRROR, "packages": list(build.packages),
            "layout": "extension", "name": subject.name, "socket": socket_location,
            "files": [t for t, _ in build.files],
            "versions": {str(v.number): v.answer for v in subject.versions.values()},
            "state": list(subject.state_directories),
            "release": str(subject.extension.release) if subject.extension.release else None}


def ensure_extensions(state_dir: Path, subject: Subject, socket_location: str,
                      ) -> PortableImages:
    """The subject's base image and one extension per version: its ready files, or built
    from its recipe (the base: minbase + packages, shared by both socket locations' sets in
    content; each extension: the recipe's files, the socket too for the control)."""
    extension = subject.extension
    if extension is None:
        raise ValueError(f"{subject.spec} has no [extension]")
    if extension.ready:
        if socket_location == "image":
            raise ValueError("ready extensions cannot carry the socket: the spec needs [build]")
        return PortableImages(subject.spec.parent, socket_location, subject.name,
                              dict(extension.images), layout="extension",
                              ready_base=extension.base)
    build = subject.build
    assert build is not None  # load_subject: a built extension needs [build]
    for tool in ("debootstrap", "mksquashfs"):
        if shutil.which(tool) is None:
            raise PrerequisiteMissing(f"{tool} is missing: run ./setup-host")
    sources = [BUILD_SCRIPT, *(s for _, s in build.files), *subject.sockets,
               *([extension.release] if extension.release else [])]
    digest = recipe_hash(sources, extension_data(subject, socket_location))
    root = state_dir / "images"
    shape = f"extension-{socket_location}-socket"
    images = PortableImages(root / f"{subject.name}-{shape}-{digest}", socket_location,
                            subject.name, layout="extension")
    files = [images.base, *(images.path(v) for v in subject.versions)]
    with locked(root / "build.lock"):
        if all(checksum_ok(f) for f in files if f is not None):
            log.info(f"portable images (base + extensions, socket in {socket_location}): "
                     f"cached in {images.directory}")
            return images
        numbers = " ".join(str(v) for v in sorted(subject.versions))
        with log.nested(f"building the base and extensions of {subject.name} "
                        f"v{numbers.replace(' ', '/v')} (socket in {socket_location})"):
            for v in subject.versions:
                write_overlay(subject, v, socket_location, images.directory / f"overlay-{v}")
            base = {"suite": build.suite, "mirror": DEBIAN_MIRROR,
                    "packages": list(build.packages)}
            rootfs_key = recipe_hash([BUILD_SCRIPT], base)  # the whole images' tree too
            run_logged(["bash", str(BUILD_SCRIPT)], images.directory / "build.log",
                       timeout=1200, what="building the base and extension images",
                       env=extension_env(subject, images.directory,
                                         root / f"rootfs-{rootfs_key}"))
            for f in files:
                if f is not None:
                    write_checksum(f)
    return images


def extension_env(subject: Subject, out_dir: Path, rootfs: Path) -> dict[str, str]:
    """build-image.sh's environment for a base + extensions set."""
    assert subject.build is not None and subject.extension is not None
    release = subject.extension.release
    return {
        **os.environ, "SUITE": subject.build.suite, "MIRROR": DEBIAN_MIRROR,
        "ROOTFS": str(rootfs), "OUT_DIR": str(out_dir), "NAME": subject.name,
        "VERSIONS": " ".join(str(v) for v in sorted(subject.versions)),
        "PACKAGES": ",".join(subject.build.packages),
        "STATE_DIRS": " ".join(subject.state_directories), "OS_RELEASE_EXTRA": "",
        "LAYOUT": "extension", "EXTENSION_RELEASE": str(release) if release else "",
    }
