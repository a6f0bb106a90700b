"""The extension layout's images: one base (minbase + packages, no recipe files) and one small
extension per version (the recipe's files and extension-release.<name>), built lazily and
cached like the other sets; ready ones taken as they are."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_portable_upgrade.subject import image
from pytest_portable_upgrade.subject.image import (
    BUILD_SCRIPT,
    PortableImages,
    ensure_images,
    extension_env,
)
from pytest_portable_upgrade.subject.spec import Extension
from tests.unit.support import WALKTHROUGH

SQUASHFS = pytest.mark.skipif(shutil.which("mksquashfs") is None
                              or shutil.which("unsquashfs") is None,
                              reason="squashfs-tools missing (./setup-host installs them)")


def fake_builder(seen: list[dict[str, str]]) -> Any:
    def build(cmd: list[str], log_path: Path, **kwargs: Any) -> None:
        env = kwargs["env"]
        seen.append(env)
        out = Path(env["OUT_DIR"])
        if env.get("LAYOUT") == "extension":
            (out / f"{env['NAME']}-base.raw").write_bytes(b"base" * 1000)
        for v in env["VERSIONS"].split():
            (out / f"{env['NAME']}_{v}.raw").write_bytes(b"img" + v.encode())
    return build


def test_the_extension_set_is_built_only_when_asked_and_then_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, str]] = []
    monkeypatch.setattr(image, "run_logged", fake_builder(seen))
    monkeypatch.setattr(image.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    whole = ensure_images(tmp_path, WALKTHROUGH, "host")
    assert [env.get("LAYOUT", "image") for env in seen] == ["image"]  # nothing more
    ext = ensure_images(tmp_path, WALKTHROUGH, "host", layout="extension")
    assert seen[-1]["LAYOUT"] == "extension" and seen[-1]["EXTENSION_RELEASE"] == ""
    assert ext.directory != whole.directory and "extension-host-socket" in ext.directory.name
    assert ext.stash_key == "extension-host" and ext.base is not None
    assert ext.base.name == "portable-walkthrough-base.raw" and whole.base is None
    assert ext.sizes([1, 2]) == {"portable-walkthrough-base.raw": 4000,
                                 "portable-walkthrough_1.raw": 4, "portable-walkthrough_2.raw": 4}
    ensure_images(tmp_path, WALKTHROUGH, "host", layout="extension")  # cached
    assert len(seen) == 2
    control = ensure_images(tmp_path, WALKTHROUGH, "image", layout="extension")
    assert control.directory != ext.directory and control.stash_key == "extension-image"
    # The control's extensions carry the socket: its overlay has the unit.
    assert (control.directory / "overlay-1/usr/lib/systemd/system"
            / WALKTHROUGH.socket).exists()
    assert not (ext.directory / "overlay-1/usr/lib/systemd/system" / WALKTHROUGH.socket).exists()


def test_a_spec_without_extension_has_no_extension_set(tmp_path: Path) -> None:
    subject = dataclasses.replace(WALKTHROUGH, extension=None)
    with pytest.raises(ValueError, match="has no \\[extension\\]"):
        ensure_images(tmp_path, subject, "host", layout="extension")
    with pytest.raises(ValueError, match="layout must be one of"):
        ensure_images(tmp_path, WALKTHROUGH, "host", layout="overlay")


def test_ready_extensions_are_taken_as_they_are(tmp_path: Path) -> None:
    base, one, two = (tmp_path / n for n in ("b.raw", "e1.raw", "e2.raw"))
    for p in (base, one, two):
        p.write_bytes(b"x")
    subject = dataclasses.replace(WALKTHROUGH, extension=Extension(base=base,
                                                                    images={1: one, 2: two}))
    images = ensure_images(tmp_path, subject, "host", layout="extension")
    assert (images.base, images.path(1), images.path(2)) == (base, one, two)
    with pytest.raises(ValueError, match="cannot carry the socket"):
        ensure_images(tmp_path, subject, "image", layout="extension")


def test_the_builders_environment_names_the_layout_and_the_release(tmp_path: Path) -> None:
    release = tmp_path / "extension-release"
    release.write_text("ID=debian\nVERSION_ID=12\n")
    subject = dataclasses.replace(WALKTHROUGH, extension=Extension(release=release))
    env = extension_env(subject, tmp_path / "out", tmp_path / "rootfs")
    assert (env["LAYOUT"], env["EXTENSION_RELEASE"], env["VERSIONS"]) == (
        "extension", str(release), "1 2")
    assert env["PACKAGES"] == "python3-minimal" and env["NAME"] == "portable-walkthrough"


def run_script(tmp_path: Path, **extra: str) -> Path:
    """The real script on a ready base tree (no debootstrap: the tree is marked complete)."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/lib").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "usr/bin").mkdir()
    (rootfs / "usr/bin/python3").write_text("runtime")
    (rootfs / "usr/lib/os-release").write_text('PRETTY_NAME="Debian 12"\nID=debian\n'
                                               'VERSION_ID="12"\n')
    (rootfs / ".complete").touch()
    out = tmp_path / "out"
    for v in (1, 2):
        (out / f"overlay-{v}/usr/lib/systemd/system").mkdir(parents=True)
        (out / f"overlay-{v}/usr/lib/systemd/system/a.service").write_text(f"# v{v}\n")
    env = {**os.environ, "SUITE": "bookworm", "MIRROR": "http://127.0.0.1/none",
           "ROOTFS": str(rootfs), "OUT_DIR": str(out), "NAME": "a", "VERSIONS": "1 2",
           "PACKAGES": "", "STATE_DIRS": "a", "LAYOUT": "extension", **extra}
    subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, check=True, capture_output=True)
    return out


def listing(path: Path) -> list[str]:
    text = subprocess.run(["unsquashfs", "-lc", str(path)], check=True, capture_output=True,
                          text=True).stdout
    return sorted(line.removeprefix("squashfs-root") for line in text.splitlines())


def cat(path: Path, member: str) -> str:
    return subprocess.run(["unsquashfs", "-cat", str(path), member], check=True,
                          capture_output=True, text=True).stdout


@SQUASHFS
def test_build_image_sh_splits_the_recipe_into_a_base_and_small_extensions(
        tmp_path: Path) -> None:
    out = run_script(tmp_path)
    base = out / "a-base.raw"
    # The base: the runtime, made a portable image; none of the recipe's files.
    assert "/usr/bin/python3" in listing(base) and "/var/lib/a" in listing(base)
    assert "/usr/lib/systemd/system/a.service" not in listing(base)
    assert "IMAGE_ID=a-base" in cat(base, "etc/os-release").splitlines()
    for v in (1, 2):
        ext = out / f"a_{v}.raw"
        # An extension: the recipe's files and its extension-release under both names,
        # nothing of the runtime and no os-release of its own (systemd refuses one in /usr).
        assert listing(ext) == ["/usr/lib/extension-release.d/extension-release.a",
                                f"/usr/lib/extension-release.d/extension-release.a_{v}",
                                "/usr/lib/systemd/system/a.service"]
        assert cat(ext, "usr/lib/systemd/system/a.service") == f"# v{v}\n"
        for name in ("a", f"a_{v}"):
            assert cat(ext, f"usr/lib/extension-release.d/extension-release.{name}") == (
                'ID=debian\nVERSION_ID="12"\n')


@SQUASHFS
def test_build_image_sh_ships_the_specs_own_extension_release(tmp_path: Path) -> None:
    release = tmp_path / "mine"
    release.write_text("ID=_any\n")
    out = run_script(tmp_path, EXTENSION_RELEASE=str(release))
    assert cat(out / "a_1.raw", "usr/lib/extension-release.d/extension-release.a") == "ID=_any\n"


def test_the_image_layout_set_has_no_base(tmp_path: Path) -> None:
    images = PortableImages(tmp_path, "host", "a")
    assert images.base is None and images.stash_key == "host"
