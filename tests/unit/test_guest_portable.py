"""vm/systemd/guest/portable.py, the guest program of the portable service's steps, run on the
host as the harness runs it in the guest: fake systemctl, portablectl, runuser, ... first on
PATH (support.FakeTools), real files in a temporary directory, the real server for the steps
that send a request."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from support import PORTABLE_PY, PROBE_PY, WALKTHROUGH, FakeTools, StartServer, run_program

from pytest_portable_upgrade.systemd.portable import ATTACHED_STATES
from pytest_portable_upgrade.systemd.scope import SYSTEM, USER_SCOPE

SCOPE = SYSTEM.wire()
ME = pwd.getpwuid(os.getuid()).pw_name  # a user that exists, standing in for pwt-user


def user_scope(user: str = ME) -> dict[str, object]:
    return {**USER_SCOPE.wire(), "user": user}


def attach_request(tmp_path: Path, **changes: object) -> dict[str, object]:
    (tmp_path / "p_2.raw").write_text("image")
    return {"step": "attach", "scope": SCOPE,
            "symlink": {"target": "p_2", "link": str(tmp_path / "p"), "suffixes": [".raw"]},
            "image": str(tmp_path / "p.raw"), "profile": "default", "flags": [],
            "attached_states": list(ATTACHED_STATES), "sockets": ["p.socket"],
            "unit_timeout": 2, **changes}


def test_the_answer_is_one_json_line_and_a_step_answers_in_order(tmp_path: Path) -> None:
    files = {str(tmp_path / "a b" / "x.conf"): "[Service]\nX=it's",
             str(tmp_path / "y.conf"): "y\n"}
    (tmp_path / "old-50-pwt-z.conf").write_text("old")
    answer = run_program([
        {"step": "write-files", "remove": [str(tmp_path / "old-50-pwt-*.conf")], "files": files},
        {"step": "remove", "paths": [str(tmp_path / "y.conf")]}])
    seconds = answer.pop("seconds")
    assert answer == {"ok": True, "answers": [{"written": sorted(files)}, {}], "exit": 0}
    # Each step's wall time, in order: run.log says where a round trip's time went.
    assert isinstance(seconds, list) and len(seconds) == 2
    assert all(isinstance(s, float) and 0 <= s < 10 for s in seconds)
    # Paths with spaces, quotes in the text, a final newline added: no shell in between.
    assert (tmp_path / "a b" / "x.conf").read_text() == "[Service]\nX=it's\n"
    assert not (tmp_path / "old-50-pwt-z.conf").exists() and not (tmp_path / "y.conf").exists()


def test_an_unknown_step_and_a_request_that_is_no_json_are_errors_that_say_so() -> None:
    answer = run_program([{"step": "detonate"}])
    assert answer["exit"] == 1 and "no step 'detonate'; steps: preflight" in str(answer["error"])
    result = subprocess.run([sys.executable, str(PORTABLE_PY), "--json", "{"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "no JSON" in json.loads(result.stdout)["error"]


def test_attach_flips_the_symlink_attaches_and_waits_for_the_socket(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"portablectl": [("is-attached", (0, "running\n", ""))],
                                       "systemctl": [("is-active", (0, "active\n", ""))]})
    answer = run_program([attach_request(tmp_path)], tools)
    assert answer["answers"] == [{"attached": "running", "sockets": {"p.socket": "active"}}]
    assert os.readlink(tmp_path / "p.raw") == "p_2.raw"
    calls = tools.calls
    attach = ["portablectl", "attach", "--profile", "default", str(tmp_path / "p.raw")]
    # The socket starts after the attach: it refuses to start before its service exists.
    assert calls.index(attach) < calls.index(["systemctl", "start", "p.socket"])
    assert ["systemctl", "daemon-reload"] not in calls  # portablectl attach reloads


def test_a_refused_attach_answers_with_portablectls_own_words(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"portablectl": [
        ("attach", (1, "", "Failed to attach: image is not a portable service\n"))]})
    answer = run_program([attach_request(tmp_path), {"step": "observe"}], tools)
    assert answer["exit"] == 1 and answer["refused"] is True and answer["step"] == "attach"
    assert answer["error"] == "Failed to attach: image is not a portable service"
    assert answer["answers"] == []  # the steps after a failure do not run


def test_detached_after_the_attach_is_an_error_not_a_refusal(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"portablectl": [("is-attached", (0, "detached\n", ""))]})
    answer = run_program([attach_request(tmp_path)], tools)
    assert answer["refused"] is False and "is-attached" in str(answer["error"])
    assert "says 'detached'" in str(answer["error"])


def test_a_socket_that_never_comes_up_is_named_with_its_status(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {
        "portablectl": [("is-attached", (0, "running\n", ""))],
        "systemctl": [("is-active", (3, "failed\n", "")),
                      ("status", (3, "x p.socket - failed (Result: resources)\n", ""))]})
    answer = run_program([attach_request(tmp_path, unit_timeout=30)], tools)
    # At once: a failed socket is not waited for until the bound.
    assert str(answer["error"]).startswith("p.socket is 'failed'")
    assert "Result: resources" in str(answer["error"])
    stuck = FakeTools(tmp_path / "stuck", {
        "portablectl": [("is-attached", (0, "running\n", ""))],
        "systemctl": [("is-active", (3, "activating\n", ""))]})
    answer = run_program([attach_request(tmp_path, unit_timeout=1)], stuck)
    assert "p.socket active not reached in 1 s; last seen: 'activating'" in str(answer["error"])


def test_the_user_scope_runs_its_commands_as_the_user_with_its_bus(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"runuser": [("is-attached", (0, "running-runtime\n", "")),
                                                   ("is-active", (0, "active\n", ""))]})
    request = attach_request(tmp_path, scope=user_scope(), flags=["--runtime"], reload=True)
    assert run_program([request], tools)["ok"]
    uid = os.getuid()
    prefix = ["runuser", "-u", ME, "--", "env", f"XDG_RUNTIME_DIR=/run/user/{uid}",
              f"DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus",
              "SYSTEMD_BUS_TIMEOUT=120"]
    calls = [c for c in tools.calls if c[0] == "runuser"]
    assert calls[0] == [*prefix, "systemctl", "--user", "daemon-reload"]
    assert [*prefix, "portablectl", "--user", "attach", "--runtime", "--profile", "default",
            str(tmp_path / "p.raw")] in calls
    assert not [c for c in tools.calls if c[0] in ("systemctl", "portablectl")]


def test_the_symlink_and_its_sidecars_flip_together(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"portablectl": [("is-attached", (0, "running\n", ""))]})
    suffixes = [".raw", ".verity", ".roothash", ".roothash.p7s"]
    request = attach_request(tmp_path, sockets=[])
    request["symlink"] = {"target": "p_2", "link": str(tmp_path / "p"), "suffixes": suffixes}
    assert run_program([request], tools)["ok"]
    assert [os.readlink(tmp_path / f"p{s}") for s in suffixes] == [f"p_2{s}" for s in suffixes]


def test_observe_reads_the_facts_and_counts_only_through_an_active_socket(
        tmp_path: Path, start_server: StartServer) -> None:
    server = start_server(greeting="Hola")
    # One `systemctl show` of the service and the socket, as systemd prints it: a block per
    # unit in the order asked, the socket's without MainPID (a socket has none).
    shown = ("MainPID=4242\nDynamicUser=yes\nRootImage=/var/lib/portables/p_2.raw\n"
             "ActiveState=active\nActiveEnterTimestampMonotonic=99\n\n"
             "DynamicUser=no\nRootImage=\nActiveState=active\n"
             "ActiveEnterTimestampMonotonic=123456789\n")
    shows = [("show", (0, shown, ""))]
    tools = FakeTools(tmp_path / "t", {"systemctl": shows, "ps": [("", (0, "_du1234\n", ""))],
                                       "portablectl": [("is-attached", (0, "running\n", ""))]})
    count = {"probe": str(PROBE_PY), "port": server.port, "args": WALKTHROUGH.client_args()}
    observe = {"step": "observe", "scope": SCOPE, "service": "p.service", "socket": "p.socket",
               "image": "/var/lib/portables/p.raw", "count": count}
    (facts,) = run_program([observe], tools)["answers"]  # type: ignore[misc]
    assert {k: v for k, v in facts.items() if k != "record"} == {
        "user": "_du1234", "dynamic": True, "since": "123456789", "socket": "active",
        "attached": "running", "image": "/var/lib/portables/p_2.raw", "extensions": []}
    assert facts["record"]["greeting"] == "Hola" and facts["record"]["visitor"] == 1
    show = [c for c in tools.calls if c[0] == "systemctl"]
    assert len(show) == 1 and show[0][-2:] == ["p.service", "p.socket"] and "--all" in show[0]
    dead = FakeTools(tmp_path / "dead", {"systemctl": [("is-active", (3, "failed\n", ""))]})
    (facts,) = run_program([observe], dead)["answers"]  # type: ignore[misc]
    assert facts["record"] is None and facts["user"] == ""  # no MainPID: no process


def test_serve_checks_first_and_names_a_refused_config_in_its_own_words(tmp_path: Path) -> None:
    refusing = FakeTools(tmp_path / "no", {"haproxy": [("-c", (1, "", "[ALERT] bad line 3\n"))]})
    serve = {"step": "serve", "unit": "pwt-haproxy.service", "port": 1, "timeout": 1,
             "check": ["haproxy", "-c", "-q", "-f", "/run/pwt/haproxy.cfg"],
             "argv": ["haproxy", "-db", "-f", "/run/pwt/haproxy.cfg"]}
    answer = run_program([serve], refusing)
    assert answer["ok"] is False and "refused: [ALERT] bad line 3" in str(answer["error"])
    assert not [c for c in refusing.calls if c[0] == "systemd-run"]  # nothing started
    listening = FakeTools(tmp_path / "ok", {"ss": [("", (0, "LISTEN 0 4096 127.0.0.1:1\n", ""))]})
    assert run_program([serve], listening)["ok"]
    started = [c for c in listening.calls if c[0] == "systemd-run"]
    assert started == [["systemd-run", "--quiet", "--collect", "--unit=pwt-haproxy.service",
                        "haproxy", "-db", "-f", "/run/pwt/haproxy.cfg"]]


def test_greet_waits_for_the_expected_answer(tmp_path: Path, start_server: StartServer) -> None:
    server = start_server(greeting="Hello")
    greet = {"step": "greet", "probe": str(PROBE_PY), "port": server.port,
             "args": WALKTHROUGH.client_args()}
    answer = run_program([{**greet, "expect": "Hello"}])
    assert answer["answers"][0]["record"]["greeting"] == "Hello"  # type: ignore[index]
    wrong = run_program([{**greet, "expect": "Hola", "timeout": 1.5}])
    assert "the answer 'Hola' not reached in 2 s; last seen: Hello" in str(wrong["error"])


def test_an_upgrade_is_timed_and_stops_at_the_first_failing_command(tmp_path: Path) -> None:
    (tmp_path / "p_2.raw").write_text("image")
    tools = FakeTools(tmp_path / "t", {"portablectl": [("reattach", (0, "Queued\n", "warn\n"))],
                                       "systemctl": [("stop", (1, "", "Failed to stop\n"))]})
    upgrade = {"step": "upgrade", "scope": SCOPE,
               "symlink": {"target": "p_2", "link": str(tmp_path / "p"), "suffixes": [".raw"]},
               "commands": [["portablectl", "reattach", "p"], ["systemctl", "stop", "p.service"],
                            ["systemctl", "start", "p.service"]],
               "read_link": str(tmp_path / "p.raw")}
    (answer,) = run_program([upgrade], tools)["answers"]  # type: ignore[misc]
    assert answer["rc"] == 1 and answer["started"] <= answer["ended"]
    assert answer["output"] == "Queued\nwarn\nFailed to stop\n"  # stdout and stderr together
    assert answer["link"] == "p_2.raw"
    assert ["systemctl", "start", "p.service"] not in tools.calls


def test_reset_stops_one_by_one_detaches_by_rootimage_and_answers_the_clean_words(
        tmp_path: Path) -> None:
    (tmp_path / "50-pwt-x.conf").write_text("x")
    tools = FakeTools(tmp_path / "t", {"systemctl": [
        ("RootImage", (0, "/var/lib/portables/p_1.raw\n", "")),
        ("is-active", (3, "inactive\n", ""))]})
    part = {"scope": SCOPE, "service": "p.service", "units": ["a.service", "p.socket"],
            "images": ["/var/lib/portables/p_1.raw"], "remove": [str(tmp_path / "50-pwt-*.conf")],
            "reset_failed": ["p.socket"]}
    answer = run_program([{"step": "reset", "parts": [part]}], tools)
    assert answer["answers"] == [{"words": [{"/var/lib/portables/p_1.raw": "detached",
                                             "a.service": "inactive", "p.socket": "inactive"}]}]
    calls = tools.calls
    assert calls[:2] == [["systemctl", "stop", "a.service"], ["systemctl", "stop", "p.socket"]]
    assert ["portablectl", "detach", "/var/lib/portables/p_1.raw"] in calls
    assert calls.index(["systemctl", "daemon-reload"]) < calls.index(
        ["systemctl", "reset-failed", "p.socket"])
    assert not (tmp_path / "50-pwt-x.conf").exists()


def test_a_failed_detach_fails_the_system_reset(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {
        "systemctl": [("RootImage", (0, "/x_1.raw\n", ""))],
        "portablectl": [("detach", (1, "", "DetachImage failed: Device or resource busy\n"))]})
    part = {"scope": SCOPE, "service": "p.service", "units": [], "images": []}
    answer = run_program([{"step": "reset", "parts": [part]}], tools)
    assert "DetachImage failed: Device or resource busy" in str(answer["error"])


def test_the_reset_of_a_user_that_does_not_exist_touches_no_manager(tmp_path: Path) -> None:
    """setup-user broke before the user existed: only its files go; no runuser is run and
    no user@UID.service is stopped (an unknown uid is not root's)."""
    (tmp_path / "state").mkdir()
    tools = FakeTools(tmp_path / "t")
    part = {"scope": user_scope("pwt-no-such-user"), "service": "p.service",
            "units": ["p.socket"], "images": [], "remove": [str(tmp_path / "state")],
            "unset_environment": ["SYSTEMD_DISSECT_VERITY_TIMEOUT_SEC"]}
    answer = run_program([{"step": "reset", "parts": [part]}], tools)
    assert answer["answers"] == [{"words": [{}]}]  # no manager: nothing of the user's runs
    assert not (tmp_path / "state").exists()
    assert tools.calls == [["systemctl", "unset-environment",
                            "SYSTEMD_DISSECT_VERITY_TIMEOUT_SEC"]]


def test_the_user_setup_certifies_the_key_before_mountfsd_starts(tmp_path: Path) -> None:
    """mountfsd checks the signature against /run/verity.d when it mounts: the certificate
    and the verity timeout are in place before it (and its workers) start."""
    signing = tmp_path / "signing"
    signing.mkdir()
    (signing / "cert.pem").write_text("CERT")  # what the (fake) openssl would write
    cert = tmp_path / "verity.d" / "pwt.crt"
    tools = FakeTools(tmp_path / "t")
    setup = {"step": "setup-user", "scope": user_scope(),
             "signing": {"dir": str(signing), "cert": str(cert)},
             "environment": ["SYSTEMD_DISSECT_VERITY_TIMEOUT_SEC=30"],
             "start": [["systemd-mountfsd.socket"], ["systemd-mountfsd.service"]],
             "user_start": ["systemd-portabled.service"], "timeout": 1}
    answer = run_program([setup], tools)
    assert cert.read_text() == "CERT" and oct(cert.stat().st_mode)[-3:] == "644"
    calls = tools.calls
    openssl = next(i for i, c in enumerate(calls) if c[0] == "openssl")
    env = calls.index(["systemctl", "set-environment", "SYSTEMD_DISSECT_VERITY_TIMEOUT_SEC=30"])
    assert openssl < env < calls.index(["systemctl", "start", "systemd-mountfsd.service"])
    assert ["loginctl", "enable-linger", ME] in calls and ["useradd"] not in [c[:1] for c in calls]
    if not os.path.exists(f"/run/user/{os.getuid()}/bus"):  # no manager of ours here
        assert "the user's bus" in str(answer["error"]) and "not reached in 1 s" in str(
            answer["error"])
    else:
        assert answer["answers"] == [{"uid": os.getuid()}]


def test_use_images_copies_signs_and_gives_them_to_the_user(tmp_path: Path) -> None:
    stash, target = tmp_path / "stash", tmp_path / "target"
    stash.mkdir()
    for v in (1, 2):
        (stash / f"p_{v}.raw").write_text(f"image {v}")
    tools = FakeTools(tmp_path / "t")
    request = {"step": "use-images", "source": str(stash), "target": str(target), "owner": ME,
               "sign": {"dir": "/run/pwt-verity"}}
    (answer,) = run_program([request], tools)["answers"]  # type: ignore[misc]
    assert answer == {"images": [str(target / "p_1.raw"), str(target / "p_2.raw")]}
    assert (target / "p_2.raw").read_text() == "image 2"
    verity = [c for c in tools.calls if c[0] == "veritysetup"]
    assert verity[0] == ["veritysetup", "format", str(target / "p_1.raw"),
                         str(target / "p_1.verity"), "--root-hash-file",
                         str(target / "p_1.roothash")]
    smime = [c for c in tools.calls if c[0] == "openssl"][1]
    assert smime[:6] == ["openssl", "smime", "-sign", "-nocerts", "-noattr", "-binary"]
    assert smime[-1] == str(target / "p_2.roothash.p7s")
    assert "-inkey" in smime and "/run/pwt-verity/key.pem" in smime


def test_use_images_copies_again_only_an_image_that_changed(tmp_path: Path) -> None:
    stash, target = tmp_path / "stash", tmp_path / "target"
    stash.mkdir()
    for v in (1, 2):
        (stash / f"p_{v}.raw").write_text(f"image {v}")
    request = {"step": "use-images", "source": str(stash), "target": str(target)}
    assert run_program([request])["ok"]
    kept = (target / "p_1.raw").stat().st_ino
    (stash / "p_2.raw").write_text("image 2, rebuilt")
    os.utime(stash / "p_2.raw", ns=(1, 1))
    (target / "p_3.raw").symlink_to(stash / "p_1.raw")  # a link is never taken for a copy
    (stash / "p_3.raw").write_text("image 3")
    assert run_program([request])["ok"]
    assert (target / "p_1.raw").stat().st_ino == kept  # unchanged: not copied again
    assert (target / "p_2.raw").read_text() == "image 2, rebuilt"
    assert not (target / "p_3.raw").is_symlink() and (target / "p_3.raw").read_text() == "image 3"


def test_a_failing_step_still_reports_the_time_it_took() -> None:
    answer = run_program([{"step": "remove", "paths": []},
                          {"step": "use-images", "source": "/nonexistent", "target": "/tmp/x"}])
    assert answer["ok"] is False and len(answer["seconds"]) == 2  # type: ignore[arg-type]


def test_an_empty_stash_is_an_error_not_an_attach_of_nothing(tmp_path: Path) -> None:
    (tmp_path / "stash").mkdir()
    answer = run_program([{"step": "use-images", "source": str(tmp_path / "stash"),
                           "target": str(tmp_path / "t")}])
    assert "no images in" in str(answer["error"])


def test_the_clean_check_of_a_user_without_a_manager_is_empty(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t")
    part = {"scope": user_scope("pwt-no-such-user"), "images": ["/x.raw"], "units": ["a"]}
    answer = run_program([{"step": "clean", "parts": [part]}], tools)
    assert answer["answers"] == [{"words": [{}]}] and tools.calls == []


def test_is_attached_that_says_nothing_means_detached(tmp_path: Path) -> None:
    """No such image file yet (the first test): is-attached prints nothing."""
    tools = FakeTools(tmp_path / "t", {"systemctl": [("is-active", (3, "inactive\n", ""))]})
    part = {"scope": SCOPE, "images": ["/var/lib/portables/p_1.raw"], "units": ["a"]}
    answer = run_program([{"step": "clean", "parts": [part]}], tools)
    assert answer["answers"] == [{"words": [{"/var/lib/portables/p_1.raw": "detached",
                                             "a": "inactive"}]}]


def test_the_preflight_answers_every_fact_the_harness_decides_on(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"pkcheck": [("", (0, "pkcheck version 126\n", ""))],
                                       "systemctl": [("--version", (0, "systemd 262\n+PAM +BTF\n",
                                                                    ""))]})
    (answer,) = run_program([{"step": "preflight", "sysupdate": str(tmp_path / "none")}],
                            tools)["answers"]  # type: ignore[misc]
    facts = answer["facts"]
    assert set(facts) == {"sysupdate", "mountfsd", "nsresourced", "lsm", "libbpf", "kernel",
                          "polkit", "features", "userbus", "signing"}
    assert facts["sysupdate"] == "no" and facts["polkit"] == "126"
    assert facts["features"] == "+PAM +BTF" and facts["kernel"] == os.uname().release


@pytest.mark.parametrize("corrupt", [False, True])
def test_publish_then_clear_fdstore_steps_chain_in_one_call(tmp_path: Path,
                                                            corrupt: bool) -> None:
    (tmp_path / "p_2.raw").write_text("two")
    tools = FakeTools(tmp_path / "t")
    answer = run_program([
        {"step": "publish", "image": str(tmp_path / "p_2.raw"), "source": str(tmp_path / "src"),
         "pattern": "p_*.raw", "corrupt": corrupt},
        {"step": "clear-fdstore", "scope": SCOPE, "unit": "p.service"}], tools)
    assert answer["ok"]
    assert (tmp_path / "src" / "p_2.raw").read_bytes().endswith(b"tampered") == corrupt
    assert tools.calls == [["systemctl", "stop", "p.service"],
                           ["systemctl", "clean", "--what=fdstore", "p.service"]]


# --- the extension and versioned-dir layouts -------------------------------------------------
def test_an_extension_attach_names_each_extension_the_base_and_the_unit_prefix(
        tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"portablectl": [("is-attached", (0, "running\n", ""))],
                                       "systemctl": [("is-active", (0, "active\n", ""))]})
    request = attach_request(tmp_path, symlink=None, image="/x/p-base.raw",
                             extensions=["/x/p_1.raw"], matches=["p"])
    answer = run_program([request], tools)
    assert answer["ok"], answer
    assert ["portablectl", "attach", "--profile", "default", "--extension", "/x/p_1.raw",
            "/x/p-base.raw", "p"] in tools.calls
    # is-attached is asked of the same base and extension, not of the base alone.
    assert ["portablectl", "is-attached", "--extension", "/x/p_1.raw",
            "/x/p-base.raw"] in tools.calls
    assert not (tmp_path / "p.raw").exists()  # no symlink in this layout


def test_observe_reads_the_units_extension_images_as_paths(tmp_path: Path) -> None:
    # systemctl show prints ExtensionImages= as [-]SOURCE[:PARTITION:OPTIONS], space-separated.
    shown = ("MainPID=0\nDynamicUser=yes\nRootImage=/x/p-base.raw\n"
             "ExtensionImages=/x/p_2.raw -/x/q_1.raw:root:ro\nActiveState=active\n"
             "ActiveEnterTimestampMonotonic=9\n\n"
             "DynamicUser=no\nRootImage=\nExtensionImages=\nActiveState=active\n"
             "ActiveEnterTimestampMonotonic=7\n")
    tools = FakeTools(tmp_path / "t", {"systemctl": [("show", (0, shown, ""))],
                                       "portablectl": [("is-attached", (0, "running\n", ""))]})
    observe = {"step": "observe", "scope": SCOPE, "service": "p.service", "socket": "p.socket",
               "image": "/x/p-base.raw", "extensions": ["/x/p_2.raw"]}
    (facts,) = run_program([observe], tools)["answers"]  # type: ignore[misc]
    assert facts["extensions"] == ["/x/p_2.raw", "/x/q_1.raw"]
    assert facts["image"] == "/x/p-base.raw" and facts["attached"] == "running"
    assert ["portablectl", "is-attached", "--extension", "/x/p_2.raw", "/x/p-base.raw"] in \
        tools.calls


def test_the_versioned_dir_is_made_anew_with_exactly_the_versions_asked(tmp_path: Path) -> None:
    stash = tmp_path / "stash"
    stash.mkdir()
    for v in (1, 2):
        (stash / f"p_{v}.raw").write_text(f"v{v}")
    directory = tmp_path / "pwt-versioned" / "p.v"
    directory.mkdir(parents=True)
    (directory / "p_9.raw").write_text("left over")
    answer = run_program([{"step": "versioned-dir", "dir": str(directory),
                           "images": [str(stash / "p_1.raw")]}])
    assert answer["ok"], answer
    assert sorted(p.name for p in directory.iterdir()) == ["p_1.raw"]
    assert (directory / "p_1.raw").read_text() == "v1"
    empty = run_program([{"step": "versioned-dir", "dir": str(directory), "images": []}])
    assert empty["exit"] == 1 and "no version to put in it" in str(empty["error"])


def test_an_upgrade_places_or_removes_the_versioned_file_before_the_clock_starts(
        tmp_path: Path) -> None:
    stash, directory = tmp_path / "stash", tmp_path / "v" / "p.v"
    stash.mkdir()
    directory.mkdir(parents=True)
    (stash / "p_2.raw").write_text("v2")
    (directory / "p_1.raw").write_text("v1")
    tools = FakeTools(tmp_path / "t")
    reattach = ["portablectl", "reattach", "--now", f"{directory}/", "p"]
    placed = run_program([{"step": "upgrade", "scope": SCOPE, "commands": [reattach],
                           "place": {"source": str(stash / "p_2.raw"),
                                     "dir": str(directory)}}], tools)
    assert placed["ok"], placed
    # The new file is whole in the directory (written beside it, renamed in), no temporary.
    assert sorted(p.name for p in directory.iterdir()) == ["p_1.raw", "p_2.raw"]
    assert sorted(p.name for p in directory.parent.iterdir()) == ["p.v"]
    assert tools.calls == [reattach]
    removed = run_program([{"step": "upgrade", "scope": SCOPE, "commands": [reattach],
                            "remove": [str(directory / "p_2.raw")]}], tools)
    assert removed["ok"] and sorted(p.name for p in directory.iterdir()) == ["p_1.raw"]


def test_reset_detaches_the_base_with_the_extensions_the_unit_runs(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"systemctl": [
        ("RootImage", (0, "/x/p-base.raw\n", "")),
        ("ExtensionImages", (0, "/x/p_2.raw\n", ""))]})
    part = {"scope": SCOPE, "service": "p.service", "units": [], "images": []}
    assert run_program([{"step": "reset", "parts": [part]}], tools)["ok"]
    assert ["portablectl", "detach", "--extension", "/x/p_2.raw", "/x/p-base.raw"] in tools.calls


def test_reset_detaches_a_picked_image_by_its_versioned_dir_when_its_path_is_refused(
        tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {
        "systemctl": [("RootImage", (0, "/x/p.v/p_2.raw\n", ""))],
        "portablectl": [("p_2.raw", (1, "", "DetachImage failed: No such image\n"))]})
    part = {"scope": SCOPE, "service": "p.service", "units": [], "images": []}
    assert run_program([{"step": "reset", "parts": [part]}], tools)["ok"]
    detaches = [c for c in tools.calls if c[:2] == ["portablectl", "detach"]]
    assert detaches == [["portablectl", "detach", "/x/p.v/p_2.raw"],
                        ["portablectl", "detach", "/x/p.v"]]
    refused = FakeTools(tmp_path / "r", {
        "systemctl": [("RootImage", (0, "/x/p_2.raw\n", ""))],
        "portablectl": [("detach", (1, "", "DetachImage failed: No such image\n"))]})
    answer = run_program([{"step": "reset", "parts": [part]}], refused)
    assert "DetachImage failed: No such image" in str(answer["error"])
