"""sysupdate into a versioned directory, and the reattach driven by sysupdate's notify callout:
the rendered transfer and units, the gating by version, the catalogue's rules, the harness's
requests, the listener program (vm/systemd/guest/notify_reattach.py) and the report's key."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pytest
from support import PORTABLE_PY, WALKTHROUGH, fake_machine, program_answer, sent_steps

from pytest_portable_upgrade.scenarios.catalogue import SCENARIOS, Scenario, get_scenario
from pytest_portable_upgrade.scenarios.run import _sysupdate_setup, rollout_missing
from pytest_portable_upgrade.systemd import quirks
from pytest_portable_upgrade.systemd.layout import VERSIONED_ROOT
from pytest_portable_upgrade.systemd.portable import NOTIFY_PROGRAM, PortableService
from pytest_portable_upgrade.systemd.sysupdate import (
    NOTIFY_LOG,
    NOTIFY_SOCKET,
    NOTIFY_SOCKET_UNIT,
    SysupdateSetup,
)

NAME = "portable-walkthrough"
VDIR = f"{VERSIONED_ROOT}/{NAME}.v"
LISTENER = PORTABLE_PY.with_name("notify_reattach.py")
# The call systemd-sysupdate makes (its shape as systemd's TEST-72-SYSUPDATE records it).
CALL = {"method": quirks.SYSUPDATE_NOTIFY_METHOD,
        "parameters": {"version": "2", "resources": [{"transfer": "50-portable-walkthrough"}]}}


def service(major: int = 262, sysupdate: str = "yes",
            upgraded: dict[str, object] | None = None) -> tuple[PortableService, object]:
    answer = upgraded if upgraded is not None else {"facts": {"sysupdate": sysupdate}}
    m, fake = fake_machine({"portable.py": program_answer(answer)})
    svc = PortableService(m, major, 240.0, lambda *a: None, WALKTHROUGH, None)  # type: ignore[arg-type]
    return svc.in_layout("versioned-dir"), fake


# --- the transfer and the units ------------------------------------------------------------
def versioned_setup(component: str | None = None) -> SysupdateSetup:
    return SysupdateSetup("dir", f"{VDIR}/ {NAME}", name=NAME, target_dir=VDIR,
                          current_symlink=False, component=component)


def test_the_versioned_transfer_targets_the_directory_with_no_symlink() -> None:
    text = versioned_setup().transfer()
    assert f"[Target]\nType=regular-file\nPath={VDIR}\nMatchPattern={NAME}_@v.raw\n" in text
    assert "CurrentSymlink" not in text
    assert text.count(f"MatchPattern={NAME}_@v.raw") == 2
    # The whole-image transfer keeps its symlink.
    assert f"CurrentSymlink=/var/lib/portables/{NAME}.raw" in SysupdateSetup(
        "dir", NAME, name=NAME).transfer()


def test_the_rollout_unit_reattaches_the_directory_after_the_update() -> None:
    unit = versioned_setup().rollout_unit()
    assert unit.index("sysupdate update") < unit.index("reattach --now")
    assert unit.rstrip().endswith(f"portablectl reattach --now {VDIR}/ {NAME}")


def test_a_component_transfer_goes_into_the_components_directory() -> None:
    assert versioned_setup().transfer_path == f"/etc/sysupdate.d/50-{NAME}.transfer"
    setup = versioned_setup(component=NAME)
    assert setup.transfer_path == f"/etc/sysupdate.{NAME}.d/50-{NAME}.transfer"
    assert setup.transfer_dir == f"/etc/sysupdate.{NAME}.d"
    assert setup.component_path == f"/etc/sysupdate.{NAME}.component"
    assert "[Component]\nDescription=" in setup.component_file()
    assert versioned_setup().component_path is None


def test_the_notify_listener_is_a_socket_in_sysupdates_notify_directory() -> None:
    setup = versioned_setup(component=NAME)
    socket_unit = setup.notify_socket_unit()
    assert f"ListenStream={quirks.SYSUPDATE_NOTIFY_DIR}/" in socket_unit
    assert f"ListenStream={NOTIFY_SOCKET}\n" in socket_unit and "Accept=yes" in socket_unit
    assert "RemoveOnStop=yes" in socket_unit
    unit = setup.notify_service_unit(NOTIFY_PROGRAM)
    assert "StandardInput=socket\nStandardOutput=socket\n" in unit
    assert (f"ExecStart=/usr/bin/python3 {NOTIFY_PROGRAM} --log {NOTIFY_LOG} -- "
            f"/usr/bin/portablectl reattach --now {VDIR}/ {NAME}\n") in unit


# --- gating ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("major", "installed", "words"), [
    (252, False, "systemd 252 in this guest has no systemd-sysupdate"),
    (254, True, "systemd 254 has no versioned directories (<name>.v/, vpick: added in 256)"),
    (257, True, None),
    (262, True, None),
])
def test_sysupdate_into_a_versioned_dir_needs_sysupdate_then_vpick(
        major: int, installed: bool, words: str | None) -> None:
    assert quirks.sysupdate_versioned_dir_missing(major, installed) == words


@pytest.mark.parametrize(("major", "installed", "words"), [
    (252, False, "has no systemd-sysupdate"),
    (254, True, "no versioned directories"),
    (257, True, "systemd 257 has no sysupdate notify callout"),
    (262, False, "systemd 262 in this guest has no systemd-sysupdate"),
    (262, True, None),
])
def test_the_notify_scenario_needs_262(major: int, installed: bool, words: str | None) -> None:
    why = quirks.sysupdate_notify_missing(major, installed)
    assert why is None if words is None else words in str(why)


@pytest.mark.parametrize(("scenario_id", "major", "installed", "words"), [
    ("host-socket-sysupdate-versioned-dir", 252, "no", "has no systemd-sysupdate"),
    ("host-socket-sysupdate-versioned-dir", 254, "yes", "vpick: added in 256"),
    ("host-socket-sysupdate-versioned-dir", 257, "yes", None),
    ("host-socket-sysupdate-notify", 257, "yes", "no sysupdate notify callout"),
    ("host-socket-sysupdate-notify", 262, "yes", None),
    ("host-socket-sysupdate-dir", 254, "yes", None),
])
def test_the_run_asks_the_guest_and_names_what_is_missing(
        scenario_id: str, major: int, installed: str, words: str | None) -> None:
    svc, _ = service(major, installed)
    why = rollout_missing(svc, get_scenario(scenario_id))
    assert why is None if words is None else words in str(why)


def test_the_run_sets_the_transfer_up_as_the_scenario_needs() -> None:
    svc, _ = service(262)
    oneshot = _sysupdate_setup(svc, get_scenario("host-socket-sysupdate-versioned-dir"))
    notify = _sysupdate_setup(svc, get_scenario("host-socket-sysupdate-notify"))
    assert oneshot is not None and notify is not None
    assert (oneshot.target_dir, oneshot.current_symlink, oneshot.component) == (VDIR, False, None)
    assert oneshot.reattach_arg == f"{VDIR}/ {NAME}"
    assert notify.component == NAME and notify.transfer_suffix == ".transfer"
    assert _sysupdate_setup(svc, get_scenario("host-socket-versioned-dir-no-keepalive")) is None


# --- the catalogue ---------------------------------------------------------------------------
def test_the_two_rows_are_in_the_catalogue_with_their_drivers() -> None:
    versioned = get_scenario("host-socket-sysupdate-versioned-dir")
    notify = get_scenario("host-socket-sysupdate-notify")
    assert (versioned.layout, versioned.rollout, versioned.after_pull) == (
        "versioned-dir", "sysupdate-dir", "oneshot")
    assert (notify.layout, notify.rollout, notify.after_pull) == (
        "versioned-dir", "sysupdate-dir", "notify")
    assert (versioned.driver, notify.driver) == ("suite-oneshot", "sysupdate-notify")
    assert get_scenario("host-socket-no-keepalive").driver == "test"
    assert get_scenario("host-socket-sysupdate-http").driver == "suite-oneshot"
    assert {s.driver for s in SCENARIOS} == {"test", "suite-oneshot", "sysupdate-notify"}


@pytest.mark.parametrize("changes", [
    {"layout": "versioned-dir", "rollout": "sysupdate-http"},
    {"layout": "versioned-dir", "rollout": "sysupdate-dir", "from_version": 2, "to_version": 1},
    {"layout": "versioned-dir", "rollout": "sysupdate-dir", "corrupt": True, "expect": "refused"},
    {"layout": "extension", "rollout": "sysupdate-dir"},
])
def test_sysupdate_outside_the_image_layout_is_an_upgrade_into_the_versioned_dir(
        changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="sysupdate-dir into the versioned-dir layout"):
        Scenario("host-socket-x", **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("changes", [
    {"after_pull": "notify"},
    {"after_pull": "notify", "rollout": "sysupdate-dir"},
    {"after_pull": "notify", "layout": "versioned-dir"},
])
def test_the_notify_driver_needs_sysupdate_into_the_versioned_dir(
        changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="after_pull='notify'"):
        Scenario("host-socket-x", **changes)  # type: ignore[arg-type]


def test_an_unknown_after_pull_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="after_pull must be one of oneshot, notify, not 'hook'"):
        Scenario("host-socket-x", after_pull="hook")


# --- the harness's requests ------------------------------------------------------------------
def test_the_notify_setup_writes_the_component_and_the_listener_and_starts_its_socket() -> None:
    svc, fake = service(262)
    setup = versioned_setup(component=NAME)
    steps = svc.sysupdate_steps(setup, installed=[1], published=[1], notify=True)
    write, reload = steps[0], steps[1]
    assert setup.transfer_dir in write["dirs"]  # type: ignore[operator]
    files = write["files"]
    assert setup.transfer_path in files  # type: ignore[operator]
    assert f"/etc/sysupdate.{NAME}.component" in files  # type: ignore[operator]
    assert f"/etc/systemd/system/{NOTIFY_SOCKET_UNIT}" in files  # type: ignore[operator]
    assert "/etc/systemd/system/pwt-notify-reattach@.service" in files  # type: ignore[operator]
    assert reload == {"step": "reload", "start": [NOTIFY_SOCKET_UNIT]}
    assert fake.copies == [NOTIFY_PROGRAM]  # type: ignore[attr-defined]
    # Nothing is removed from /var/lib/portables: the versions live in the directory.
    assert [s["step"] for s in steps] == ["write-files", "reload", "publish"]
    oneshot = svc.sysupdate_steps(versioned_setup(), installed=[1], published=[1])
    assert oneshot[1] == {"step": "reload", "start": []}


def test_a_rollout_into_the_directory_counts_when_the_new_file_is_there() -> None:
    call = {"call": CALL, "received": 11.0, "ended": 12.0, "rc": 0, "output": "", "replied": True}
    there = {"started": 10.0, "ended": 12.5, "rc": 0, "output": "",
             "exists": {f"{VDIR}/{NAME}_2.raw": True},
             "files": {NOTIFY_LOG: json.dumps(call) + "\n"}}
    svc, fake = service(262, upgraded=there)
    upgrade, ok, calls = svc.run_rollout(quirks.SYSUPDATE_UPDATE_UNIT, 2, notify=True)
    (step,) = sent_steps(fake.commands[0])  # type: ignore[attr-defined]
    assert step["commands"] == [["systemctl", "start", "--wait", quirks.SYSUPDATE_UPDATE_UNIT]]
    assert step["exists"] == [f"{VDIR}/{NAME}_2.raw"] and "read_link" not in step
    assert step["read"] == [NOTIFY_LOG]
    assert ok and calls == [call] and upgrade.duration_s == 2.5
    missing = {**there, "exists": {f"{VDIR}/{NAME}_2.raw": False}, "files": {NOTIFY_LOG: ""}}
    svc, _ = service(262, upgraded=missing)
    assert svc.run_rollout(quirks.SYSUPDATE_UPDATE_UNIT, 2, notify=True)[1:] == (False, [])


# --- the guest program's upgrade step reads what the rollout left --------------------------
def test_the_upgrade_step_answers_which_files_exist_and_reads_the_log(tmp_path: Path) -> None:
    from support import FakeTools, run_program

    (tmp_path / "p_2.raw").write_text("v2")
    (tmp_path / "log").write_text('{"rc": 0}\n')
    answer = run_program([{"step": "upgrade", "scope": {"systemctl": ["systemctl"]},
                           "commands": [["systemctl", "start", "x.service"]],
                           "exists": [str(tmp_path / "p_2.raw"), str(tmp_path / "p_3.raw")],
                           "read": [str(tmp_path / "log"), str(tmp_path / "none")]}],
                         FakeTools(tmp_path / "t"))
    assert answer["ok"], answer
    (up,) = answer["answers"]  # type: ignore[misc]
    assert up["exists"] == {str(tmp_path / "p_2.raw"): True, str(tmp_path / "p_3.raw"): False}
    assert up["files"] == {str(tmp_path / "log"): '{"rc": 0}\n', str(tmp_path / "none"): ""}


def test_reload_starts_the_units_it_is_given_after_the_reload(tmp_path: Path) -> None:
    from support import FakeTools, run_program

    tools = FakeTools(tmp_path / "t")
    answer = run_program([{"step": "reload", "scope": {"systemctl": ["systemctl"]},
                           "start": [NOTIFY_SOCKET_UNIT]}], tools)
    assert answer["ok"], answer
    assert tools.calls == [["systemctl", "daemon-reload"],
                           ["systemctl", "start", NOTIFY_SOCKET_UNIT]]


# --- the listener ----------------------------------------------------------------------------
def load_listener():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("notify_reattach", LISTENER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_listener_replies_only_after_the_command_and_records_the_call(
        tmp_path: Path) -> None:
    listener = load_listener()
    log, out = tmp_path / "log", BytesIO()
    marker = tmp_path / "ran"
    rc = listener.serve(BytesIO(json.dumps(CALL).encode() + b"\0"), out, str(log),
                        ["sh", "-c", f"echo reattached; touch {marker}"])
    assert rc == 0 and marker.exists()
    assert out.getvalue() == b'{"parameters": {}}\0'
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["call"] == CALL and record["rc"] == 0 and record["replied"]
    assert record["output"] == "reattached\n" and record["received"] <= record["ended"]


def test_a_failed_reattach_is_a_varlink_error_with_its_exit_status(tmp_path: Path) -> None:
    listener = load_listener()
    out = BytesIO()
    rc = listener.serve(BytesIO(json.dumps(CALL).encode() + b"\0"), out, str(tmp_path / "log"),
                        ["sh", "-c", "exit 3"])
    assert rc == 3
    assert json.loads(out.getvalue().rstrip(b"\0")) == {
        "error": "io.pwt.PortableReattach.Failed", "parameters": {"exit": 3}}


def test_another_method_runs_nothing_and_a_oneway_call_gets_no_reply(tmp_path: Path) -> None:
    listener = load_listener()
    marker, out = tmp_path / "ran", BytesIO()
    other = {"method": "org.varlink.service.GetInfo", "parameters": {}}
    listener.serve(BytesIO(json.dumps(other).encode() + b"\0"), out, str(tmp_path / "log"),
                   ["touch", str(marker)])
    assert not marker.exists()
    assert json.loads(out.getvalue().rstrip(b"\0"))["error"] == (
        "org.varlink.service.MethodNotFound")
    out = BytesIO()
    listener.serve(BytesIO(json.dumps({**CALL, "oneway": True}).encode() + b"\0"), out,
                   str(tmp_path / "log"), ["touch", str(marker)])
    assert marker.exists() and out.getvalue() == b""


def test_a_peer_that_closes_before_its_nul_is_no_call(tmp_path: Path) -> None:
    listener = load_listener()
    out = BytesIO()
    assert listener.serve(BytesIO(b'{"method": "x"'), out, str(tmp_path / "log"),
                          ["false"]) == 0
    assert out.getvalue() == b"" and not (tmp_path / "log").exists()


def test_the_listener_on_a_socket_as_accept_yes_runs_it(tmp_path: Path) -> None:
    """The program with the connection as stdin and stdout, as systemd starts it: the caller
    sees no reply before the command has finished."""
    ours, theirs = socket.socketpair()
    marker = tmp_path / "ran"
    proc = subprocess.Popen(
        [sys.executable, str(LISTENER), "--log", str(tmp_path / "log"), "--",
         "sh", "-c", f"sleep 0.3; touch {marker}"], stdin=theirs, stdout=theirs)
    theirs.close()
    ours.sendall(json.dumps(CALL).encode() + b"\0")
    reply = b""
    while not reply.endswith(b"\0"):
        chunk = ours.recv(4096)
        assert chunk, "closed without a reply"
        reply += chunk
    assert marker.exists()  # the reply came after the command
    assert json.loads(reply.rstrip(b"\0")) == {"parameters": {}}
    assert proc.wait(timeout=30) == 0
    ours.close()


# --- the report -------------------------------------------------------------------------------
@pytest.mark.parametrize(("scenario_id", "driver"), [
    ("host-socket-no-keepalive", "test"),
    ("host-socket-sysupdate-versioned-dir", "suite-oneshot"),
    ("host-socket-sysupdate-notify", "sysupdate-notify"),
])
def test_the_summary_row_says_what_drove_the_reattach(scenario_id: str, driver: str) -> None:
    from support import scenario_run

    from pytest_portable_upgrade.report.matrix import build_matrix
    from pytest_portable_upgrade.scenarios.record import summary_row
    from pytest_portable_upgrade.scenarios.verdict import verdict_of

    run = scenario_run(get_scenario(scenario_id))
    row = summary_row(run, "debian-sid", 262, verdict_of(run))
    assert row["reattach_driven_by"] == driver
    # The matrix still renders such a row: one cell, under its box.
    (matrix_row,) = build_matrix([row])["rows"]
    assert matrix_row["scenario"] == scenario_id and len(matrix_row["cells"]) == 1
