"""The harness's side of the extension and versioned-dir layouts (vm/systemd/layout.py,
vm/systemd/portable.py): what each step sends to the guest program, and the verdict's check of
what runs afterwards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support import WALKTHROUGH, fake_machine, program_answer, scenario_run, sent_steps

from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.verdict import PASS, attachment_problems, verdict_of
from pytest_portable_upgrade.systemd.layout import EXTENSION_DIR, VERSIONED_ROOT, Layout
from pytest_portable_upgrade.systemd.portable import STASH, ImageRefused, PortableService

BASE = f"{EXTENSION_DIR}/portable-walkthrough-base.raw"
EXT = f"{EXTENSION_DIR}/portable-walkthrough_%d.raw"
VDIR = f"{VERSIONED_ROOT}/portable-walkthrough.v"
UPGRADED = {"started": 10.0, "ended": 12.5, "rc": 0, "output": ""}


@dataclasses.dataclass(frozen=True)
class FakeSet:
    """A built set: only its names and sizes matter here."""

    stash_key: str
    root: Path
    base: Path | None = None

    def path(self, version: int) -> Path:
        return self.root / f"portable-walkthrough_{version}.raw"


def service(tmp_path: Path, answers: dict[str, object], layout: str,
            major: int = 257) -> tuple[PortableService, object, list[tuple[str, ...]]]:
    m, fake = fake_machine(answers)  # type: ignore[arg-type]
    asked: list[tuple[str, ...]] = []
    for v in (1, 2):
        (tmp_path / f"portable-walkthrough_{v}.raw").write_bytes(b"e" * (10 * v))
    (tmp_path / "base.raw").write_bytes(b"b" * 1000)

    def build(socket_location: str, scope: str = "system", kind: str = "image") -> FakeSet:
        asked.append((socket_location, scope, kind))
        if kind == "extension":
            return FakeSet(f"extension-{socket_location}", tmp_path, tmp_path / "base.raw")
        return FakeSet(socket_location, tmp_path)

    svc = PortableService(m, major, 240.0, build, WALKTHROUGH, None)  # type: ignore[arg-type]
    return svc.in_layout(layout), fake, asked


def test_a_layout_names_its_images_and_what_runs() -> None:
    ext, vdir = Layout("extension", WALKTHROUGH), Layout("versioned-dir", WALKTHROUGH)
    assert (ext.target, ext.extensions(2), ext.expected_image(2)) == (BASE, [EXT % 2], BASE)
    assert (vdir.target, vdir.extensions(2)) == (f"{VDIR}/", [])
    assert vdir.expected_image(2) == f"{VDIR}/portable-walkthrough_2.raw"
    assert vdir.versions_at_attach(1) == [1] and vdir.versions_at_attach(2) == [1, 2]
    assert ext.reattach_argv(("portablectl",), (), 2) == [
        "portablectl", "reattach", "--now", "--extension", EXT % 2, BASE, "portable-walkthrough"]
    with pytest.raises(ValueError, match="layout must be one of"):
        Layout("overlay", WALKTHROUGH)
    with pytest.raises(ValueError, match="attaches the symlink"):
        _ = Layout("image", WALKTHROUGH).target


def test_the_extension_set_is_built_and_uploaded_only_when_an_extension_scenario_asks(
        tmp_path: Path) -> None:
    svc, fake, asked = service(tmp_path, {}, "extension")
    steps = svc.image_steps("host", 1)
    assert asked == [("host", "system", "extension")]
    assert fake.copies == [  # type: ignore[attr-defined]
        f"{STASH}/extension-host/portable-walkthrough-base.raw",
        f"{STASH}/extension-host/portable-walkthrough_1.raw",
        f"{STASH}/extension-host/portable-walkthrough_2.raw"]
    assert steps == [{"step": "use-images", "source": f"{STASH}/extension-host",
                      "target": EXTENSION_DIR}]
    assert svc.image_sizes("host") == {"portable-walkthrough-base.raw": 1000,
                                       "portable-walkthrough_1.raw": 10,
                                       "portable-walkthrough_2.raw": 20}
    svc.image_steps("host", 1)
    assert len(asked) == 1  # once per boot
    assert svc.in_layout("image").image_sizes("host") == {}  # another set, not uploaded


def test_the_extension_attach_names_the_base_the_extension_and_the_prefix(
        tmp_path: Path) -> None:
    facts = {"user": "_du1", "dynamic": True, "since": "1", "socket": "active",
             "attached": "running", "image": BASE, "extensions": [EXT % 1]}
    svc, fake, _ = service(tmp_path, {"portable.py": program_answer(
        {"written": []}, {"attached": "running", "sockets": {}}, facts)}, "extension")
    after = svc.attach(1, greeting=None)
    steps = sent_steps(fake.commands[0])  # type: ignore[attr-defined]
    attach = steps[1]
    assert (attach["symlink"], attach["image"]) == (None, BASE)
    assert attach["extensions"] == [EXT % 1] and attach["matches"] == ["portable-walkthrough"]
    assert steps[-1]["image"] == BASE and steps[-1]["extensions"] == [EXT % 1]
    assert after.extensions == (EXT % 1,) and after.attached_image == BASE


def test_a_refused_extension_attach_ends_the_run_naming_both_images(tmp_path: Path) -> None:
    svc, _, _ = service(tmp_path, {"portable.py": program_answer(
        ok=False, step="attach", refused=True,
        error="Image portable-walkthrough_1.raw extension-release metadata does not match")},
        "extension")
    with pytest.raises(ImageRefused) as caught:
        svc.attach(1)
    words = str(caught.value)
    assert words.startswith(f"portablectl attach --extension {EXT % 1} {BASE} (v1, ")
    assert words.endswith("extension-release metadata does not match")


def test_the_extension_reattach_swaps_only_the_extension(tmp_path: Path) -> None:
    svc, fake, _ = service(tmp_path, {"portable.py": program_answer(UPGRADED)}, "extension",
                           major=252)
    upgrade = svc.reattach(2, 1)
    (step,) = sent_steps(fake.commands[0])  # type: ignore[attr-defined]
    # By path on every version (no symlink, not the name); the base stays.
    assert step["commands"] == [["portablectl", "reattach", "--now", "--extension", EXT % 2,
                                 BASE, "portable-walkthrough"]]
    assert "symlink" not in step and "place" not in step
    assert upgrade.duration_s == 2.5


def test_the_versioned_dir_holds_every_version_up_to_the_one_that_runs(tmp_path: Path) -> None:
    svc, _, asked = service(tmp_path, {}, "versioned-dir")
    upgrade = svc.image_steps("host", 1)
    assert asked == [("host", "system", "image")]  # the whole images: no set of its own
    assert upgrade[-1] == {"step": "versioned-dir", "dir": VDIR,
                           "images": [f"{STASH}/host/portable-walkthrough_1.raw"]}
    rollback = svc.image_steps("host", 2)
    assert rollback[-1]["images"] == [f"{STASH}/host/portable-walkthrough_1.raw",
                                      f"{STASH}/host/portable-walkthrough_2.raw"]


def test_the_versioned_upgrade_drops_the_new_file_in_and_the_rollback_removes_the_newest(
        tmp_path: Path) -> None:
    svc, fake, _ = service(tmp_path, {"portable.py": program_answer(UPGRADED)}, "versioned-dir")
    svc.reattach(2, 1)
    svc.reattach(1, 2)
    up, down = (sent_steps(c)[0] for c in fake.commands)  # type: ignore[attr-defined]
    reattach = ["portablectl", "reattach", "--now", f"{VDIR}/", "portable-walkthrough"]
    assert up["commands"] == down["commands"] == [reattach]
    assert up["place"] == {"source": f"{STASH}/host/portable-walkthrough_2.raw", "dir": VDIR}
    assert down["remove"] == [f"{VDIR}/portable-walkthrough_2.raw"] and "place" not in down
    with pytest.raises(ValueError, match="needs the version it leaves"):
        svc.reattach(2)


def test_the_reset_removes_the_versioned_dir(tmp_path: Path) -> None:
    clean = {**{p: "detached" for p in WALKTHROUGH.image_paths()},
             **{u: "inactive" for u in PortableService.units(
                 PortableService(*fake_machine({})[:1], 257, 1.0, None, WALKTHROUGH, None))}}
    svc, fake, _ = service(tmp_path, {"portable.py": program_answer({"words": [clean]})},
                           "versioned-dir")
    svc.reset()
    (reset,) = sent_steps(fake.commands[0])  # type: ignore[attr-defined]
    assert VERSIONED_ROOT in reset["parts"][0]["remove"]  # type: ignore[index]


# --- the verdict: what runs afterwards ---------------------------------------------------------
def layout_run(scenario: Scenario, **changes: object) -> object:
    layout = Layout(scenario.layout, WALKTHROUGH)
    fields: dict[str, object] = dict(
        expected_image=layout.expected_image(scenario.to_version),
        attached_image=layout.expected_image(scenario.to_version),
        expected_extensions=tuple(layout.extensions(scenario.to_version)),
        attached_extensions=tuple(layout.extensions(scenario.to_version)))
    fields.update(changes)
    return scenario_run(scenario, **fields)


@pytest.mark.parametrize("scenario_id", ["host-socket-extension-no-keepalive",
                                         "host-socket-extension-rollback",
                                         "host-socket-versioned-dir-no-keepalive",
                                         "host-socket-versioned-dir-rollback"])
def test_a_clean_layout_run_passes(scenario_id: str) -> None:
    verdict = verdict_of(layout_run(get_scenario(scenario_id)))  # type: ignore[arg-type]
    assert verdict.kind == PASS, verdict.problems


def test_the_old_extension_still_attached_fails_the_run() -> None:
    run = layout_run(get_scenario("host-socket-extension-no-keepalive"),
                     attached_extensions=(EXT % 1,))
    problems = attachment_problems(run, 2)  # type: ignore[arg-type]
    assert problems == [f"afterwards the unit runs the extensions ['{EXT % 1}'], "
                        f"not ['{EXT % 2}']"]
    assert verdict_of(run).kind != PASS  # type: ignore[arg-type]


def test_the_old_file_picked_from_the_versioned_dir_fails_the_run() -> None:
    old = f"{VDIR}/portable-walkthrough_1.raw"
    run = layout_run(get_scenario("host-socket-versioned-dir-no-keepalive"), attached_image=old)
    (problem,) = attachment_problems(run, 2)  # type: ignore[arg-type]
    assert f"the unit runs '{old}', not '{VDIR}/portable-walkthrough_2.raw'" in problem


# --- the catalogue ---------------------------------------------------------------------------
def test_the_layout_scenarios_are_selectable_by_their_words() -> None:
    from pytest_portable_upgrade.scenarios.catalogue import SCENARIOS

    extension = [s.id for s in SCENARIOS if "extension" in s.id]
    versioned = [s.id for s in SCENARIOS if "versioned" in s.id]
    assert extension == ["host-socket-extension-no-keepalive", "host-socket-extension-rollback",
                         "image-socket-extension-no-keepalive"]
    assert versioned == ["host-socket-versioned-dir-no-keepalive",
                         "host-socket-versioned-dir-rollback",
                         "host-socket-sysupdate-versioned-dir"]
    assert all(get_scenario(i).layout == "extension" for i in extension)
    assert get_scenario("image-socket-extension-no-keepalive").expect == "downtime"


@pytest.mark.parametrize(("changes", "message"), [
    ({"layout": "overlay"}, "layout must be one of image, extension, versioned-dir"),
    ({"layout": "extension", "rollout": "sysupdate-dir"},
     "a sysupdate rollout outside the image layout is sysupdate-dir into the versioned-dir"),
    ({"layout": "versioned-dir", "scope": "user"},
     "the versioned-dir layout is a `portablectl reattach --now` of the system's manager"),
    ({"layout": "extension", "proxy": "haproxy"}, "without a proxy"),
    ({"layout": "versioned-dir", "socket_location": "image"}, "holds whole images"),
])
def test_a_layout_that_cannot_run_is_refused_when_the_catalogue_is_built(
        changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scenario("host-socket-x", **changes)  # type: ignore[arg-type]
