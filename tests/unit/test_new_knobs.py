"""The scenarios of the newer systemd versions without a VM: the stop + start upgrade and
FileDescriptorStorePreserve= (254+), and user portable services (260+): what they run in the
guest, when they are skipped (and why), and how verdict_of judges them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from support import WALKTHROUGH, fake_host, program_answer, run_program, scenario_run, sent_steps

from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.load.long_lived import HolderSummary
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.run import ScenarioUnsupported, run_scenario
from pytest_portable_upgrade.scenarios.verdict import EXPECTED_LOSS, FAIL, PASS, verdict_of
from pytest_portable_upgrade.systemd.portable import PortableService, dropin_files
from pytest_portable_upgrade.systemd.scope import (
    USER,
    USER_SCOPE,
    missing_pieces,
    state_dropin_text,
)
from pytest_portable_upgrade.systemd.stop_start import PRESERVE_LINE

STOPSTART = get_scenario("host-socket-keepalive-longlived-fdstore-stopstart")
PRESERVE = get_scenario("host-socket-keepalive-longlived-fdstore-stopstart-preserve")
USER_SCENARIO = get_scenario("host-socket-user-portable")


def service(major: int, answers: dict[str, object] | None = None,
            ) -> tuple[PortableService, list[str]]:
    """A PortableService on a fake guest (answers as in support.FakeGuest), and the commands
    it was sent."""
    m, host, fake = fake_host(answers or {})  # type: ignore[arg-type]
    no_images = lambda _loc: None  # noqa: E731 - never called: nothing is uploaded here
    return (PortableService(m, major, 240, no_images, WALKTHROUGH, host),  # type: ignore[arg-type]
            fake.commands)


# --- the catalogue ---------------------------------------------------------------------------
def test_the_stop_start_pair_differs_only_in_the_knob_and_what_is_expected() -> None:
    assert (STOPSTART.upgrade, PRESERVE.upgrade) == ("stop-start", "stop-start")
    assert (STOPSTART.fdstore_preserve, PRESERVE.fdstore_preserve) == (False, True)
    assert (STOPSTART.expect, PRESERVE.expect) == ("characterise", "zero-downtime")
    same = dataclasses.replace(STOPSTART, id=PRESERVE.id, fdstore_preserve=True,
                               expect="zero-downtime", description=PRESERVE.description)
    assert same == PRESERVE
    # The reattach (restart) baseline they are compared with is the same shape otherwise.
    baseline = get_scenario("host-socket-keepalive-longlived-fdstore")
    assert dataclasses.replace(STOPSTART, id=baseline.id, upgrade="reattach",
                               expect=baseline.expect,
                               description=baseline.description) == baseline


@pytest.mark.parametrize(("changes", "message"), [
    ({"fdstore_preserve": True}, "needs shutdown='fdstore'"),
    ({"upgrade": "stop-start", "proxy": "haproxy"}, "plain portablectl rollout"),
    ({"scope": "user", "rollout": "sysupdate-dir"}, "plain portablectl rollout"),
    ({"scope": "user", "socket_location": "image"}, "user unit"),
    ({"upgrade": "detach-attach"}, "upgrade must be one of"),
    ({"scope": "session"}, "scope must be one of"),
])
def test_shapes_that_would_run_something_else_are_refused(changes: dict[str, object],
                                                          message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scenario("host-socket-x", **changes)  # type: ignore[arg-type]


# --- skipped with the reason, before anything is touched -------------------------------------
@pytest.mark.parametrize("scenario", [STOPSTART, PRESERVE], ids=lambda s: s.id)
def test_stop_start_scenarios_are_skipped_before_254(scenario: Scenario) -> None:
    svc, commands = service(252)
    with pytest.raises(ScenarioUnsupported,
                       match="systemd 252 has no FileDescriptorStorePreserve="):
        run_scenario(svc, Settings(), scenario)
    assert commands == []


def preflight(**facts: str) -> tuple[int, str]:
    return program_answer({"facts": facts})


def test_user_scenario_is_skipped_before_260_naming_the_version() -> None:
    svc, commands = service(257, {'"step":"preflight"': preflight(mountfsd="no")})
    with pytest.raises(ScenarioUnsupported,
                       match=r"systemd 257 has no user portable services \(portablectl --user"):
        run_scenario(svc, Settings(), USER_SCENARIO)
    assert [s["step"] for c in commands for s in sent_steps(c)] == ["preflight"]


GOOD = {"mountfsd": "yes", "nsresourced": "yes",
        "lsm": "landlock,lockdown,yama,integrity,apparmor,bpf",
        "libbpf": "/usr/lib/x86_64-linux-gnu/libbpf.so.1", "kernel": "7.2.13+deb14-amd64",
        "polkit": "128", "features": "+PAM +AUDIT +BPF_FRAMEWORK +BTF -XKBCOMMON",
        "userbus": "yes", "signing": "yes"}


def test_a_guest_with_every_piece_misses_nothing() -> None:
    assert missing_pieces(262, GOOD) == []


@pytest.mark.parametrize(("fact", "value", "named"), [
    ("mountfsd", "no", "systemd-mountfsd"),
    ("nsresourced", "no", "systemd-nsresourced"),
    ("lsm", "landlock,lockdown,yama,integrity,apparmor", "the bpf LSM"),
    ("lsm", "", "the bpf LSM (active: unknown"),
    ("libbpf", "", "libbpf1"),
    ("kernel", "6.1.0-28-amd64", "a kernel >= 6.5 (this one is 6.1.0-28-amd64)"),
    ("kernel", "", "a kernel >= 6.5"),
    ("polkit", "122", "polkit >= 124 (pkcheck says 122"),
    ("polkit", "", "polkit >= 124 (pkcheck says nothing"),
    ("features", "+PAM -BTF", "a systemd built with BTF"),
    ("userbus", "no", "dbus-user-session"),
    ("signing", "no", "cryptsetup-bin, openssl"),
])
def test_each_missing_piece_is_named(fact: str, value: str, named: str) -> None:
    (reason,) = missing_pieces(262, {**GOOD, fact: value})
    assert named in reason


def test_a_kernel_of_6_5_or_newer_is_enough() -> None:
    assert missing_pieces(262, {**GOOD, "kernel": "6.5.0-1-amd64"}) == []
    assert missing_pieces(262, {**GOOD, "kernel": "6.12.48+deb13-amd64"}) == []


def test_a_user_scenario_with_a_piece_missing_is_skipped_with_that_piece() -> None:
    svc, commands = service(262, {'"step":"preflight"': preflight(
        **{**GOOD, "lsm": "landlock,apparmor"})})
    with pytest.raises(ScenarioUnsupported,
                       match=r"user portable services need: the bpf LSM \(active: landlock"):
        run_scenario(svc, Settings(), USER_SCENARIO)
    assert len(commands) == 1


def test_the_preflight_is_asked_once_per_session() -> None:
    svc, commands = service(262, {'"step":"preflight"': preflight(**GOOD)})
    assert svc.preflight() == GOOD and svc.in_scope(USER_SCOPE).preflight() == GOOD
    assert len(commands) == 1


# --- what runs in the guest ------------------------------------------------------------------
UPGRADED = program_answer({"started": 1.0, "ended": 2.0, "rc": 0, "output": ""})


@pytest.mark.parametrize(("major", "target"), [(254, WALKTHROUGH.symlink),
                                                (262, "portable-walkthrough")])
def test_stop_start_reattaches_without_restart_then_stops_and_starts(major: int,
                                                                     target: str) -> None:
    svc, commands = service(major, {"portable.py": UPGRADED})
    upgrade = svc.stop_start(2)
    service_unit = WALKTHROUGH.service
    assert upgrade.command == (f"portablectl reattach {target} && systemctl stop {service_unit}"
                               f" && systemctl start {service_unit}")
    (step,) = sent_steps(commands[0])
    assert step["commands"] == [["portablectl", "reattach", target],
                                ["systemctl", "stop", service_unit],
                                ["systemctl", "start", service_unit]]
    assert "--now" not in upgrade.command and "restart" not in upgrade.command


@pytest.mark.parametrize(("scenario", "preserve"), [
    (get_scenario("host-socket-keepalive-longlived-fdstore"), False), (STOPSTART, False),
    (PRESERVE, True)])
def test_the_host_drop_in_sets_preserve_only_where_asked(scenario: Scenario, preserve: bool,
                                                         tmp_path: Path) -> None:
    """The drop-in step as the guest program runs it (into a temporary path): the subject's
    [shutdown] text for the mode in a valid [Service] section, and
    FileDescriptorStorePreserve=yes only when asked; the old ones removed first, no reload
    of its own (the attach that follows reloads: portablectl attach does)."""
    svc, _ = service(262)
    (step,) = svc.dropin_steps(scenario.shutdown, scenario.fdstore_preserve)
    target = tmp_path / "portable-walkthrough.service.d"
    target.mkdir()
    (target / "50-pwt-old.conf").write_text("[Service]\n")
    moved = json.loads(json.dumps(step).replace(WALKTHROUGH.dropin_dir, str(target)))
    assert run_program([moved])["ok"]
    assert [p.name for p in target.iterdir()] == ["50-pwt-shutdown.conf"]
    lines = (target / "50-pwt-shutdown.conf").read_text().splitlines()
    assert lines[:2] == ["[Service]", "Environment=PW_SHUTDOWN=fdstore"]
    assert (PRESERVE_LINE in lines) == preserve
    assert lines.count("[Service]") == 1  # the knob joins the mode's own section
    assert step["step"] == "write-files"


def test_preserve_gets_a_service_section_after_a_spec_text_ending_in_another() -> None:
    subject = dataclasses.replace(WALKTHROUGH, shutdown={
        "fdstore": "[Service]\nEnvironment=PW_SHUTDOWN=fdstore\n[Unit]\nX-Note=yes\n"})
    text = dropin_files(subject, "fdstore", fdstore_preserve=True)["50-pwt-shutdown.conf"]
    assert text.endswith(f"[Unit]\nX-Note=yes\n[Service]\n{PRESERVE_LINE}\n")


def test_preserve_without_a_shutdown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a shutdown mode"):
        dropin_files(WALKTHROUGH, "drain", fdstore_preserve=True)


def test_the_user_scope_reaches_the_users_manager_and_bus() -> None:
    """How the guest program runs the user's commands (tested there): as the user, with its
    runtime directory, bus and a D-Bus timeout long enough for a first attach under TCG."""
    wire = USER_SCOPE.wire()
    assert wire["user"] == USER
    assert (wire["systemctl"], wire["portablectl"]) == (["systemctl", "--user"],
                                                        ["portablectl", "--user"])
    assert wire["env"] == {"SYSTEMD_BUS_TIMEOUT": "120"}


def test_the_user_units_state_lands_on_the_images_mount_point() -> None:
    lines = state_dropin_text(WALKTHROUGH).splitlines()
    assert "StateDirectory=" in lines  # the image's StateDirectory= reset: no path in ~
    assert ("BindPaths=/home/pwt-user/pwt-state/portable-walkthrough"
            ":/var/lib/portable-walkthrough") in lines
    assert "Environment=STATE_DIRECTORY=/var/lib/portable-walkthrough" in lines


def test_a_subject_that_does_not_list_the_user_scope_is_skipped_before_the_preflight(
) -> None:
    from support import ROOT

    from pytest_portable_upgrade.subject.spec import load_subject

    svc, commands = service(262)
    svc.subject = load_subject(ROOT / "examples" / "gunicorn" / "spec.toml")
    with pytest.raises(ScenarioUnsupported, match=r"does not list host-socket-user-portable"):
        run_scenario(svc, Settings(), USER_SCENARIO)
    assert commands == []


ATTACHED = program_answer({"written": []}, {"attached": "running-runtime", "sockets": {}},
                          {"user": USER, "dynamic": False, "since": "1", "socket": "active",
                           "attached": "running-runtime", "image": ""})


def test_the_user_attach_installs_the_subjects_socket_and_state_for_the_user() -> None:
    """The subject's values, in the user's unit directory and image directory."""
    svc, commands = service(262, {"portable.py": ATTACHED})
    svc.in_scope(USER_SCOPE).attach(2)
    files, attach, _observe = sent_steps(commands[0])
    units = "/home/pwt-user/.config/systemd/user"
    assert files["files"] == {
        f"{units}/portable-walkthrough.socket": WALKTHROUGH.sockets[0].read_text(),
        f"{units}/portable-walkthrough.service.d/50-pwt-state.conf":
            state_dropin_text(WALKTHROUGH)}
    assert files["owner"] == USER
    assert "/home/pwt-user/pwt-state/portable-walkthrough" in files["dirs"]  # for the user
    # The sidecars' symlinks follow the image's: systemd looks beside the path it is given.
    assert attach["symlink"] == {"target": "portable-walkthrough_2",
                                 "link": "/var/lib/pwt-user-portables/portable-walkthrough",
                                 "suffixes": [".raw", ".verity", ".roothash", ".roothash.p7s"]}
    assert attach["image"] == "/var/lib/pwt-user-portables/portable-walkthrough.raw"
    assert (attach["flags"], attach["reload"]) == (["--runtime"], True)
    assert attach["sockets"] == ["portable-walkthrough.socket"]
    assert not any(p.startswith("/etc/systemd/system") for p in files["files"])


def test_the_user_reattach_goes_by_path_with_runtime() -> None:
    """By its path: the name would be looked up in the user's image search path."""
    svc, _ = service(262, {"portable.py": program_answer(
        {"started": 1.0, "ended": 2.0, "rc": 0, "output": ""})})
    upgrade = svc.in_scope(USER_SCOPE).reattach(2)
    assert upgrade.command == ("portablectl --user reattach --now --runtime "
                               "/var/lib/pwt-user-portables/portable-walkthrough.raw")


def test_the_user_side_is_dirty_while_its_socket_listens() -> None:
    """A user socket left on port 8080 would break every later system scenario."""
    from pytest_portable_upgrade.core.errors import GuestError

    user_words = {p: "detached" for p in USER_SCOPE.image_paths(WALKTHROUGH)}
    user_words.update({"portable-walkthrough.socket": "active",
                       "portable-walkthrough.service": "inactive"})
    system_words = {p: "detached" for p in WALKTHROUGH.image_paths()}
    system_words.update({u: "inactive" for u in svc_units()})
    svc, _ = service(262, {'"step":"attach"': ATTACHED, '"step":"clean"': program_answer(
        {"words": [user_words, system_words]})})
    svc.in_scope(USER_SCOPE).attach(1)
    with pytest.raises(GuestError, match=r"user: portable-walkthrough\.socket active"):
        svc.check_clean()


def svc_units() -> list[str]:
    svc, _ = service(262)
    return svc.units()


# --- the verdict -----------------------------------------------------------------------------
def holders(lost: int = 0) -> HolderSummary:
    return HolderSummary(connections=20, requests=1500, answered=1500 - lost, broken=lost,
                         server_closed=0, connect_errors=0, switched_in_place=20 - lost)


def with_holders(scenario: Scenario, lost: int) -> object:
    run = scenario_run(scenario)
    return dataclasses.replace(run, outcome=dataclasses.replace(run.outcome,
                                                                holders=holders(lost)))


def test_preserve_keeps_every_connection_or_fails() -> None:
    assert verdict_of(with_holders(PRESERVE, 0)).kind == PASS  # type: ignore[arg-type]
    lost = verdict_of(with_holders(PRESERVE, 20))  # type: ignore[arg-type]
    assert lost.kind == FAIL
    assert any("long-lived connections were lost" in p for p in lost.problems)


def test_stop_start_without_preserve_is_the_characterised_loss() -> None:
    lost = verdict_of(with_holders(STOPSTART, 20))  # type: ignore[arg-type]
    assert lost.kind == EXPECTED_LOSS and "20 broken" in lost.observed
    kept = verdict_of(with_holders(STOPSTART, 0))  # type: ignore[arg-type]
    assert kept.kind == FAIL and kept.short == "nothing lost"


def test_user_scope_runs_as_the_user_from_the_users_image() -> None:
    assert verdict_of(scenario_run(USER_SCENARIO)).kind == PASS
    as_root = verdict_of(scenario_run(USER_SCENARIO, service_user="root"))
    assert as_root.problems == ("user scope: the service runs as 'root', not 'pwt-user'",)
    system_image = verdict_of(scenario_run(USER_SCENARIO,
                                           attached_image=WALKTHROUGH.image_path(2)))
    assert system_image.kind == FAIL
    assert USER_SCOPE.image_path(WALKTHROUGH, 2) in system_image.problems[0]


def test_the_user_setup_asks_for_the_certificate_before_mountfsd() -> None:
    """mountfsd checks the signature against /run/verity.d when it mounts: the certificate
    and the verity timeout must be in place before it (and its workers) start; the program
    does them in the request's order (test_guest_portable.py)."""
    svc, commands = service(262, {"portable.py": program_answer({"uid": 1001})})
    assert svc.in_scope(USER_SCOPE).setup_user() == 1001
    (setup,) = sent_steps(commands[0])
    assert setup["signing"]["cert"] == "/run/verity.d/pwt-user-portable.crt"  # type: ignore[index]
    assert setup["environment"] == ["SYSTEMD_DISSECT_VERITY_TIMEOUT_SEC=30"]
    assert setup["start"] == [["systemd-mountfsd.socket", "systemd-nsresourced.socket"],
                              ["systemd-nsresourced.service", "systemd-mountfsd.service",
                               "polkit.service"]]
    assert setup["user_start"] == ["systemd-portabled.service"]
