"""Images for a user's portabled: units in the user lookup paths, PORTABLE_SCOPE=user in
os-release, a stash directory of their own; the system's sets are unchanged."""

from __future__ import annotations

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
    scoped_image_path,
    write_overlay,
)
from tests.unit.support import WALKTHROUGH


@pytest.mark.parametrize(("path", "scope", "expected"), [
    ("/usr/lib/systemd/system/a.service", "user", "/usr/lib/systemd/user/a.service"),
    ("/etc/systemd/system/a.service", "user", "/usr/lib/systemd/user/a.service"),
    ("/lib/systemd/system/a.socket", "user", "/usr/lib/systemd/user/a.socket"),
    ("/usr/lib/a/server.py", "user", "/usr/lib/a/server.py"),
    ("/usr/lib/systemd/system/a.service", "system", "/usr/lib/systemd/system/a.service"),
])
def test_units_move_to_the_user_lookup_path_in_a_user_scope_image(path: str, scope: str,
                                                                  expected: str) -> None:
    assert scoped_image_path(path, scope) == expected


def test_the_user_scope_overlay_has_the_unit_where_a_users_portabled_looks(tmp_path: Path) -> None:
    write_overlay(WALKTHROUGH, 2, "host", tmp_path / "user", scope="user")
    write_overlay(WALKTHROUGH, 2, "host", tmp_path / "system")
    unit = "portable-walkthrough.service"
    assert (tmp_path / "user/usr/lib/systemd/user" / unit).exists()
    assert not (tmp_path / "user/usr/lib/systemd/system").exists()
    assert (tmp_path / "system/usr/lib/systemd/system" / unit).exists()
    assert (tmp_path / "user/usr/lib/portable-walkthrough/server.py").exists()


@pytest.mark.parametrize(("location", "scope", "message"), [
    ("host", "session", "scope must be one of"),
    ("image", "user", "socket on the host only"),
])
def test_shapes_that_cannot_be_built_are_refused(tmp_path: Path, location: str, scope: str,
                                                 message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ensure_images(tmp_path, WALKTHROUGH, location, scope)


def test_the_user_set_is_its_own_build_with_the_scope_in_os_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No debootstrap here: the builder is replaced by one that records its environment."""
    seen: list[dict[str, str]] = []

    def fake_build(cmd: list[str], log_path: Path, **kwargs: Any) -> None:
        env = kwargs["env"]
        seen.append(env)
        for v in env["VERSIONS"].split():
            (Path(env["OUT_DIR"]) / f"{env['NAME']}_{v}.raw").write_bytes(b"img" + v.encode())

    monkeypatch.setattr(image, "run_logged", fake_build)
    monkeypatch.setattr(image.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    system = ensure_images(tmp_path, WALKTHROUGH, "host")
    user = ensure_images(tmp_path, WALKTHROUGH, "host", "user")
    assert [env["OS_RELEASE_EXTRA"] for env in seen] == ["", "PORTABLE_SCOPE=user"]
    assert system.directory != user.directory and "user-scope" in user.directory.name
    assert (system.stash_key, user.stash_key) == ("host", "user")
    assert user.path(1).read_bytes() == b"img1"
    ensure_images(tmp_path, WALKTHROUGH, "host", "user")  # cached: no third build
    assert len(seen) == 2


@pytest.mark.skipif(shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None,
                    reason="squashfs-tools missing (./setup-host installs them)")
def test_build_image_sh_appends_the_scope_to_each_images_os_release(tmp_path: Path) -> None:
    """The real script on a ready base tree (no debootstrap: the tree is marked complete)."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/lib").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "usr/lib/os-release").write_text("ID=debian\n")
    (rootfs / ".complete").touch()
    out = tmp_path / "out"
    (out / "overlay-1/usr/lib/systemd/user").mkdir(parents=True)
    (out / "overlay-1/usr/lib/systemd/user/a.service").write_text("[Service]\n")
    env = {**os.environ, "SUITE": "bookworm", "MIRROR": "http://127.0.0.1/none",
           "ROOTFS": str(rootfs), "OUT_DIR": str(out), "NAME": "a", "VERSIONS": "1",
           "PACKAGES": "", "STATE_DIRS": "a", "OS_RELEASE_EXTRA": "PORTABLE_SCOPE=user"}
    subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, check=True, capture_output=True)
    listed = subprocess.run(["unsquashfs", "-cat", str(out / "a_1.raw"), "etc/os-release"],
                            check=True, capture_output=True, text=True).stdout
    assert listed.splitlines() == ["ID=debian", "IMAGE_ID=a", "IMAGE_VERSION=1",
                                   'PORTABLE_PRETTY_NAME="a v1"', "PORTABLE_SCOPE=user"]


def test_ready_images_keep_their_files_for_the_user_scope(tmp_path: Path) -> None:
    images = PortableImages(tmp_path, "host", "a", {1: tmp_path / "a_1.raw"}, "user")
    assert images.path(1) == tmp_path / "a_1.raw" and images.stash_key == "user"
