"""vm/subject/spec.py's keys for the two other layouts: ``[extension]`` (a base with an app
extension per version, built or ready) and ``versioned_dir`` (a ready ``<name>.v/``); an
extension-release that does not match the base, or a versioned directory with no version in
it, ends the run before boot with one line naming the file and the fix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support import ROOT, WALKTHROUGH

from pytest_portable_upgrade.scenarios.catalogue import get_scenario
from pytest_portable_upgrade.subject.spec import (
    SpecError,
    load_subject,
    release_fields,
    release_mismatch,
)

SQUASHFS = pytest.mark.skipif(shutil.which("mksquashfs") is None
                              or shutil.which("unsquashfs") is None,
                              reason="squashfs-tools missing (./setup-host installs them)")


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    """A copy of the walkthrough's spec and files to change."""
    target = tmp_path / "walkthrough"
    target.mkdir()
    for name in ("walkthrough.toml", "server.py", "portable-walkthrough.service.in",
                 "portable-walkthrough.socket"):
        shutil.copy(ROOT / "images" / name, target / name)
    return target


def spec_with(spec_dir: Path, old: str, new: str) -> Path:
    spec = spec_dir / "walkthrough.toml"
    text = spec.read_text()
    assert old in text, old
    spec.write_text(text.replace(old, new, 1))
    return spec


def one_line_error(spec: Path) -> str:
    with pytest.raises(SpecError) as caught:
        load_subject(spec)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(spec.resolve()))
    return message


# --- extension-release against the base, as systemd matches them ------------------------------
BOOKWORM = {"ID": "debian", "VERSION_ID": "12"}


@pytest.mark.parametrize(("extension", "why"), [
    ({"ID": "debian", "VERSION_ID": "12"}, None),
    ({"ID": "_any"}, None),
    ({"ID": "debian", "VERSION_ID": "12", "SYSEXT_SCOPE": "system portable"}, None),
    ({"ID": "fedora", "VERSION_ID": "12"}, "ID=fedora, but the base says ID=debian"),
    ({"ID": "debian", "VERSION_ID": "13"}, "VERSION_ID=13, but the base says VERSION_ID=12"),
    ({"ID": "debian"}, "no VERSION_ID=, but the base says VERSION_ID=12"),
    ({"VERSION_ID": "12"}, "it has no ID="),
    ({"ID": "debian", "VERSION_ID": "12", "SYSEXT_SCOPE": "system"},
     "SYSEXT_SCOPE=system does not name portable"),
])
def test_an_extension_matches_its_base_as_systemd_says(extension: dict[str, str],
                                                      why: str | None) -> None:
    assert release_mismatch(BOOKWORM, extension) == why


def test_a_base_without_a_version_matches_any_extension_of_its_id() -> None:
    sid = {"ID": "debian"}
    assert release_mismatch(sid, {"ID": "debian", "VERSION_ID": "99"}) is None
    assert release_mismatch({"ID": "ubuntu", "ID_LIKE": "debian"}, {"ID": "debian"}) is None
    levels = {"ID": "debian", "VERSION_ID": "12", "SYSEXT_LEVEL": "1.0"}
    assert release_mismatch(levels, {"ID": "debian", "SYSEXT_LEVEL": "1.0"}) is None
    assert release_mismatch(levels, {"ID": "debian", "SYSEXT_LEVEL": "2"}) == (
        "SYSEXT_LEVEL=2, but the base says 1.0")


def test_release_fields_reads_os_release_syntax() -> None:
    text = '# comment\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
    assert release_fields(text) == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
                                    "ID": "debian", "VERSION_ID": "12"}


# --- built extensions ------------------------------------------------------------------------
def test_the_walkthrough_splits_into_a_built_base_and_extensions() -> None:
    assert WALKTHROUGH.extension is not None and not WALKTHROUGH.extension.ready
    assert WALKTHROUGH.extension.release is None  # made from the base's os-release
    assert WALKTHROUGH.base_name == "portable-walkthrough-base.raw"
    for scenario_id in ("host-socket-extension-no-keepalive", "image-socket-extension-no-keepalive",
                        "host-socket-versioned-dir-rollback"):
        assert WALKTHROUGH.cannot_run(get_scenario(scenario_id)) is None


def test_a_spec_without_extension_skips_the_extension_scenarios(spec_dir: Path) -> None:
    spec = spec_with(spec_dir, "[extension]\n", "")
    subject = load_subject(spec)
    why = subject.cannot_run(get_scenario("host-socket-extension-rollback"))
    assert why is not None and "has no [extension]" in why
    assert subject.cannot_run(get_scenario("host-socket-versioned-dir-no-keepalive")) is None


def test_a_built_extension_carries_usr_and_opt_only(spec_dir: Path) -> None:
    spec = spec_with(spec_dir, '"/usr/lib/portable-walkthrough/server.py" = "server.py"',
                     '"/srv/server.py" = "server.py"')
    message = one_line_error(spec)
    assert "build.files./srv/server.py: an extension carries /usr and /opt only" in message
    assert "move it under /usr" in message


def test_a_built_extensions_own_release_must_match_the_suites_base(spec_dir: Path) -> None:
    (spec_dir / "extension-release").write_text("ID=debian\nVERSION_ID=13\n")
    spec = spec_with(spec_dir, "[extension]\n", '[extension]\nrelease = "extension-release"\n')
    message = one_line_error(spec)
    assert "extension.release:" in message and str(spec_dir / "extension-release") in message
    assert "VERSION_ID=13, but the base says VERSION_ID=12 (a base of bookworm)" in message
    assert "write ID=debian VERSION_ID=12 in it" in message
    (spec_dir / "extension-release").write_text("ID=debian\nVERSION_ID=12\n")
    subject = load_subject(spec)
    assert subject.extension is not None
    assert subject.extension.release == spec_dir / "extension-release"


def test_a_ready_extension_needs_a_ready_base(spec_dir: Path) -> None:
    (spec_dir / "e1.raw").write_bytes(b"x")
    spec = spec_with(spec_dir, 'answer = "Hello"', 'answer = "Hello"\nextension = "e1.raw"')
    assert "versions.1.extension: a ready extension needs a ready base" in one_line_error(spec)


def test_an_extension_key_without_a_file_is_named(spec_dir: Path) -> None:
    spec = spec_with(spec_dir, 'answer = "Hello"', 'answer = "Hello"\nextension = "gone.raw"')
    assert "versions.1.extension: no such file" in one_line_error(spec)


def test_an_unknown_extension_key_is_named(spec_dir: Path) -> None:
    spec = spec_with(spec_dir, "[extension]\n", '[extension]\nbases = "b.raw"\n')
    assert "extension.bases: unknown key (known: base, release)" in one_line_error(spec)


# --- ready extensions: read on the host before boot ---------------------------------------------
def squashfs(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    tree = tmp_path / f"tree-{name}"
    for path, text in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
    out = tmp_path / name
    subprocess.run(["mksquashfs", str(tree), str(out), "-noappend", "-quiet"], check=True,
                   capture_output=True)
    return out


def ready_spec(spec_dir: Path, release: str) -> Path:
    squashfs(spec_dir, "base.raw", {"etc/os-release": "ID=debian\nVERSION_ID=12\n"})
    for v in (1, 2):
        squashfs(spec_dir, f"ext{v}.raw", {
            "usr/lib/extension-release.d/extension-release.portable-walkthrough": release})
    spec_with(spec_dir, "[extension]\n", '[extension]\nbase = "base.raw"\n')
    spec_with(spec_dir, 'answer = "Hello"', 'answer = "Hello"\nextension = "ext1.raw"')
    return spec_with(spec_dir, 'answer = "Hola"', 'answer = "Hola"\nextension = "ext2.raw"')


@SQUASHFS
def test_a_ready_extension_whose_release_does_not_match_the_base_ends_the_run(
        spec_dir: Path) -> None:
    spec = ready_spec(spec_dir, "ID=debian\nVERSION_ID=13\n")
    message = one_line_error(spec)
    assert "versions.1.extension: ext1.raw's extension-release does not match the base " \
           "base.raw: VERSION_ID=13, but the base says VERSION_ID=12" in message
    assert "make its ID= and VERSION_ID= the base's os-release values (or ID=_any)" in message


@SQUASHFS
def test_ready_extensions_that_match_are_the_subjects(spec_dir: Path) -> None:
    spec = ready_spec(spec_dir, "ID=debian\nVERSION_ID=12\n")
    subject = load_subject(spec)
    assert subject.extension is not None and subject.extension.ready
    assert subject.extension.base == spec_dir / "base.raw"
    assert subject.extension.images == {1: spec_dir / "ext1.raw", 2: spec_dir / "ext2.raw"}
    why = subject.cannot_run(get_scenario("image-socket-extension-no-keepalive"))
    assert why is not None and "ready ones cannot be changed" in why


def test_a_ready_extension_that_is_no_squashfs_is_left_to_portabled(spec_dir: Path) -> None:
    for name in ("base.raw", "ext1.raw", "ext2.raw"):
        (spec_dir / name).write_bytes(b"\0" * 4096)  # e.g. a GPT image: portabled reads it
    spec_with(spec_dir, "[extension]\n", '[extension]\nbase = "base.raw"\n')
    spec_with(spec_dir, 'answer = "Hello"', 'answer = "Hello"\nextension = "ext1.raw"')
    spec = spec_with(spec_dir, 'answer = "Hola"', 'answer = "Hola"\nextension = "ext2.raw"')
    assert load_subject(spec).extension is not None


def test_a_ready_base_needs_every_versions_extension(spec_dir: Path) -> None:
    (spec_dir / "base.raw").write_bytes(b"x")
    spec = spec_with(spec_dir, "[extension]\n", '[extension]\nbase = "base.raw"\n')
    assert "versions.1.extension: missing: a ready base needs a ready extension" in \
        one_line_error(spec)


def test_only_extensions_and_no_whole_images_skips_the_other_scenarios(spec_dir: Path) -> None:
    for name in ("base.raw", "ext1.raw", "ext2.raw"):
        (spec_dir / name).write_bytes(b"\0" * 4096)
    spec = spec_with(spec_dir, "[build]", "[unused]")
    text = spec.read_text()
    spec.write_text(text[:text.index("[unused]")] + text[text.index("[extension]"):]
                    .replace("[extension]\n", '[extension]\nbase = "base.raw"\n')
                    .replace('answer = "Hello"', 'answer = "Hello"\nextension = "ext1.raw"')
                    .replace('answer = "Hola"', 'answer = "Hola"\nextension = "ext2.raw"'))
    subject = load_subject(spec)
    assert subject.build is None
    assert subject.cannot_run(get_scenario("host-socket-extension-no-keepalive")) is None
    why = subject.cannot_run(get_scenario("host-socket-no-keepalive"))
    assert why is not None and "has only extensions" in why


# --- a ready versioned directory ---------------------------------------------------------------
def test_a_versioned_dir_gives_each_version_its_image(spec_dir: Path) -> None:
    directory = spec_dir / "portable-walkthrough.v"
    directory.mkdir()
    for v in (1, 2):
        (directory / f"portable-walkthrough_{v}.raw").write_bytes(b"x")
    spec = spec_with(spec_dir, "state_directories", 'versioned_dir = "portable-walkthrough.v"\n'
                                                    "state_directories")
    subject = load_subject(spec)
    assert subject.versioned_dir == directory
    assert subject.versions[2].image == directory / "portable-walkthrough_2.raw"


def test_a_versioned_dir_with_no_version_in_it_ends_the_run(spec_dir: Path) -> None:
    directory = spec_dir / "portable-walkthrough.v"
    directory.mkdir()
    (directory / "notes.txt").write_text("nothing here")
    spec = spec_with(spec_dir, "state_directories", 'versioned_dir = "portable-walkthrough.v"\n'
                                                    "state_directories")
    message = one_line_error(spec)
    assert f"versioned_dir: {directory} holds no version" in message
    assert "portable-walkthrough_1.raw, portable-walkthrough_2.raw" in message
    (directory / "portable-walkthrough_1.raw").write_bytes(b"x")
    assert f"{directory} has no portable-walkthrough_2.raw for versions.2" in \
        one_line_error(spec)


def test_a_versioned_dir_is_named_dot_v(spec_dir: Path) -> None:
    (spec_dir / "images").mkdir()
    spec = spec_with(spec_dir, "state_directories", 'versioned_dir = "images"\n'
                                                    "state_directories")
    assert "is no versioned directory: name it portable-walkthrough.v" in one_line_error(spec)
