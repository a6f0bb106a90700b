"""vm/boxes/recipes.py and vm/boxes/builder.py: what a recipe adds to the kernel command line
and the packages, and that a recipe without extras keeps the cache key (box name, saved guest)
it had."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pytest_portable_upgrade.boxes import builder
from pytest_portable_upgrade.boxes.builder import box_key
from pytest_portable_upgrade.boxes.recipes import (
    BASE_PACKAGES,
    BOXES,
    BPF_LSM_CMD_LINE,
    HTTP_PULL_PACKAGES,
    LOCAL_BOXES,
    USER_PORTABLE_PACKAGES,
    BoxRecipe,
    get_box,
)
from pytest_portable_upgrade.boxes.vagrant_boxes import KERNEL_CMD_LINE, BuiltBox, kernel_cmd_line


def test_sid_boots_with_the_bpf_lsm_on_its_own_command_line() -> None:
    sid = get_box("debian-sid")
    line = kernel_cmd_line(sid)
    assert line.startswith(KERNEL_CMD_LINE + " ")
    (lsm,) = [word for word in line.split() if word.startswith("lsm=")]
    assert "bpf" in lsm.removeprefix("lsm=").split(",")
    # The major LSM Debian enables stays in the list: bpf is added, nothing is taken away.
    assert "apparmor" in lsm.split("=", 1)[1].split(",")


@pytest.mark.parametrize("name", [n for n in LOCAL_BOXES if n != "debian-sid"])
def test_other_boxes_boot_with_the_common_command_line_only(name: str) -> None:
    assert kernel_cmd_line(get_box(name)) == KERNEL_CMD_LINE


def test_the_built_box_hands_its_recipes_command_line_to_libvirt() -> None:
    sid = get_box("debian-sid")
    built = BuiltBox(sid, "pwt/debian-sid-x", Path("/k"), Path("/vmlinuz"), Path("/initrd"))
    assert built.cmd_line == f"{KERNEL_CMD_LINE} {BPF_LSM_CMD_LINE}"
    downloaded = BuiltBox(get_box("fedora-43"), "pwt/fedora-43", None)
    assert downloaded.cmd_line is None


def test_a_command_line_enters_the_cache_key_only_where_a_recipe_sets_one() -> None:
    """The boxes without one keep their recipe (nothing is rebuilt for this field); a recipe
    whose command line changes gets a new key, so no guest saved with the old one is restored."""
    plain = BoxRecipe(name="x", description="x", systemd_major=257, suite="trixie")
    assert "KERNEL_CMD_LINE" not in plain.build_env()
    with_line = BoxRecipe(name="x", description="x", systemd_major=257, suite="trixie",
                          kernel_cmd_line="lsm=bpf")
    assert with_line.build_env() == {**plain.build_env(), "KERNEL_CMD_LINE": "lsm=bpf"}


def test_sid_installs_what_user_portable_services_need() -> None:
    sid = get_box("debian-sid")
    assert sid.moving
    assert set(sid.packages) == (set(BASE_PACKAGES) | set(USER_PORTABLE_PACKAGES)
                                 | set(HTTP_PULL_PACKAGES))
    # 262's systemd-pull dlopens libcurl: sysupdate's HTTP source needs it installed.
    assert "libcurl4t64" in sid.packages
    # nsresourced dlopens libbpf; portablectl --user needs the user bus; TEST-29 wants polkit.
    assert {"libbpf1", "dbus-user-session", "polkitd"} <= set(sid.packages)
    # The user's images are signed in the guest (veritysetup, openssl smime).
    assert {"cryptsetup-bin", "openssl"} <= set(sid.packages)
    packages = sid.build_env()["PACKAGES"].split(",")
    assert len(packages) == len(set(packages))


@pytest.mark.parametrize("name", [n for n in LOCAL_BOXES if n != "debian-sid"])
def test_the_stable_boxes_keep_their_package_list(name: str) -> None:
    assert BOXES[name].packages == BASE_PACKAGES


def test_the_box_key_hashes_the_scripts_not_the_directory_they_lie_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Moving the build scripts (vm/ -> vm/boxes/, issue 12) must not rebuild a cached box nor
    drop the guest saved from it (its key contains the box name): only their bytes count."""
    public_key = tmp_path / "id_ed25519.pub"
    public_key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest pwt-box\n")
    recipe = get_box("debian-bookworm")
    here = box_key(recipe, public_key)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("BUILD_SCRIPT", "PACK_SCRIPT"):
        script: Path = getattr(builder, name)
        monkeypatch.setattr(builder, name, Path(shutil.copy(script, elsewhere / script.name)))
    assert box_key(recipe, public_key) == here
    with (elsewhere / "pack-box.sh").open("a") as f:
        f.write("# one more line\n")
    assert box_key(recipe, public_key) != here


def test_the_hashed_scripts_keep_their_names() -> None:
    """A script's file name enters the cache keys of the boxes and images it builds: renaming
    one rebuilds every cached box (or image set) on every host."""
    from pytest_portable_upgrade.subject.image import BUILD_SCRIPT as IMAGE_SCRIPT

    assert [p.name for p in (builder.BUILD_SCRIPT, builder.PACK_SCRIPT, IMAGE_SCRIPT)] == [
        "build-box.sh", "pack-box.sh", "build-image.sh"]
    assert all(p.is_file() for p in (builder.BUILD_SCRIPT, builder.PACK_SCRIPT, IMAGE_SCRIPT))
