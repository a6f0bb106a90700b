"""vm/systemd/portable.py, the harness's side of the steps: what each sends to the guest program
(one round trip), and how it reads the typed answer. The program itself: test_guest_portable.py."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
from support import DATA, WALKTHROUGH, fake_machine, program_answer, sent_steps

from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.machine.guest_program import answers_of
from pytest_portable_upgrade.systemd.portable import (
    CLIENT_UNITS,
    PROGRAM,
    ImageRefused,
    PortableService,
    ServiceFacts,
    step_command,
)
from pytest_portable_upgrade.systemd.scope import SYSTEM, USER_SCOPE, StepRefused

SOCKET = WALKTHROUGH.socket
FACTS = {"user": "_du1234", "dynamic": True, "since": "123456789", "socket": "active",
         "attached": "running", "image": "/var/lib/portables/portable-walkthrough_2.raw"}
RECORD = {"t": 1700000040.0, "latency_ms": 3.0, "status": 200, "greeting": "Hola",
          "visitor": 43}


def test_service_facts_from_one_answer() -> None:
    facts = ServiceFacts.from_answer(FACTS)
    assert facts == ServiceFacts("_du1234", True, "123456789", "active", "running",
                                 "/var/lib/portables/portable-walkthrough_2.raw")
    assert facts.counter is None  # not asked for


def test_the_count_is_the_probe_requests_visitor_less_its_own() -> None:
    assert ServiceFacts.from_answer({**FACTS, "record": RECORD}).counter == 42


def test_no_probe_answer_through_a_dead_socket_is_none_not_zero() -> None:
    dead = {**FACTS, "socket": "failed", "record": None}
    assert ServiceFacts.from_answer(dead).counter is None


def test_an_answer_without_the_promised_counter_is_an_error() -> None:
    no_count = {k: v for k, v in RECORD.items() if k != "visitor"}
    with pytest.raises(GuestError, match="no counter in the answer"):
        ServiceFacts.from_answer({**FACTS, "record": no_count})


def test_a_cut_off_answer_is_an_error_not_empty_facts() -> None:
    cut = {k: v for k, v in FACTS.items() if k not in ("attached", "image")}
    with pytest.raises(GuestError, match=r"without \['attached', 'image'\]"):
        ServiceFacts.from_answer(cut)


@dataclasses.dataclass(frozen=True)
class FakeImages:
    """A built image set (only its guest-side names matter here)."""

    stash_key: str
    base: Path | None = None

    def path(self, version: int) -> Path:
        return Path(f"/nonexistent/{version}.raw")


def service(answers: dict[str, object], subject: object = WALKTHROUGH,
            major: int = 252) -> tuple[PortableService, object]:
    m, fake = fake_machine(answers)  # type: ignore[arg-type]

    def build(socket_location: str, scope: str = "system") -> FakeImages:
        return FakeImages("user" if scope == "user" else socket_location)

    return (PortableService(m, major, 240.0, build, subject, None),  # type: ignore[arg-type]
            fake)


ATTACHED = program_answer({"written": []}, {"attached": "running", "sockets": {SOCKET: "active"}},
                          FACTS)


def one_call(fake: object) -> list[dict[str, object]]:
    (command,) = fake.commands  # type: ignore[attr-defined]
    return sent_steps(command)


def test_the_logged_command_replays_the_same_steps_by_hand() -> None:
    steps = [{"step": "write-files", "files": {"/etc/x y.conf": "it's\n[Service]\n"}}]
    command = step_command(steps)
    assert "\n" not in command  # one line in run.log
    words = shlex.split(command)
    assert words[:3] == ["python3", PROGRAM, "--json"] and json.loads(words[3]) == steps


def test_attach_is_one_round_trip_with_the_files_before_the_attach() -> None:
    svc, fake = service({"portable.py": ATTACHED})
    facts = svc.attach(1, prepare=svc.dropin_steps("drain"), greeting="Hello")
    steps = one_call(fake)
    assert [s["step"] for s in steps] == ["write-files", "write-files", "attach", "greet",
                                          "observe"]
    # The socket file is the subject's own, whole, written by the program before the attach.
    assert steps[1]["files"] == {
        f"/etc/systemd/system/{SOCKET}": WALKTHROUGH.sockets[0].read_text()}
    attach = steps[2]
    assert attach["symlink"] == {"target": "portable-walkthrough_1",
                                 "link": "/var/lib/portables/portable-walkthrough",
                                 "suffixes": [".raw"]}
    assert attach["image"] == WALKTHROUGH.symlink and attach["profile"] == "default"
    assert attach["reload"] is False  # portablectl attach reloads the manager
    assert attach["sockets"] == [SOCKET]
    assert steps[3]["expect"] == "Hello" and steps[4]["count"] is None
    assert all(s["scope"] == SYSTEM.wire() for s in steps)
    assert facts.attached_state == "running"
    assert fake.copies == ["/run/pwt/probe.py", PROGRAM]  # type: ignore[attr-defined]


def test_every_socket_of_a_subject_is_written_and_started_in_the_same_round_trip(
        tmp_path: Path) -> None:
    second = tmp_path / "portable-walkthrough-admin.socket"
    second.write_text("[Socket]\nListenStream=8081\n")
    subject = dataclasses.replace(WALKTHROUGH, sockets=(*WALKTHROUGH.sockets, second))
    svc, fake = service({"portable.py": ATTACHED}, subject)
    svc.attach(2)
    files, attach = one_call(fake)[:2]
    assert f"/etc/systemd/system/{second.name}" in files["files"]  # type: ignore[operator]
    assert attach["sockets"] == [SOCKET, second.name]


def test_attach_reads_the_count_before_the_load_in_the_same_round_trip() -> None:
    answered = program_answer({"written": []}, {"attached": "running",
                                                "sockets": {SOCKET: "active"}},
                              {"record": RECORD}, {**FACTS, "record": RECORD})
    svc, fake = service({"portable.py": answered})
    facts = svc.attach(1, greeting="Hello", count=True)
    steps = one_call(fake)
    assert [s["step"] for s in steps][-2:] == ["greet", "observe"]  # the count after the greeting
    assert "--counter-regex" in steps[-1]["count"]["args"]  # type: ignore[index]
    assert facts.counter == 42


def test_the_load_starts_in_the_attachs_round_trip_only_after_a_good_attach() -> None:
    rc, printed = ATTACHED
    then = "date +%s.%N; systemd-run --unit=pwt-ab.service ab http://127.0.0.1:8080/"
    svc, fake = service({"portable.py": (rc, printed + "1700000000.5\nstarted\n")})
    facts = svc.attach(1, then=then)
    (command,) = fake.commands  # type: ignore[attr-defined]
    # `&&`: a refused or failed attach starts no load.
    assert command.endswith(f" && {{ {then}; }}") and sent_steps(command)[-1]["step"] == "observe"
    assert svc.then_output == "1700000000.5\nstarted\n" and facts.attached_state == "running"
    failed, _ = service({"portable.py": (1, printed + "Failed to start transient service\n")})
    with pytest.raises(GuestError, match=r"after the attach, `date.*exited 1: Failed to start"):
        failed.attach(1, then=then)


def test_the_program_answer_is_found_above_what_a_later_command_printed() -> None:
    printed = json.dumps({"ok": True, "answers": [{}]})
    assert answers_of(f"{printed}\n1700000000.5\n{{\"t\": 1}}\n", "", 0)["answers"] == [{}]
    with pytest.raises(GuestError, match="gave no answer"):
        answers_of("1700000000.5\n{not json\n", "", 0)


def test_an_image_socket_writes_no_socket_file() -> None:
    svc, fake = service({"portable.py": ATTACHED})
    svc.attach(1, host_socket=False)
    assert [s["step"] for s in one_call(fake)] == ["attach", "observe"]


def test_a_refused_image_ends_the_run_with_portablectls_words() -> None:
    refused = program_answer(ok=False, step="attach", refused=True,
                             error="Failed to attach: image is not a portable service")
    svc, _ = service({"portable.py": refused})
    with pytest.raises(ImageRefused, match=r"portablectl attach /var/lib/portables/"
                                           r"portable-walkthrough\.raw \(v1, .*walkthrough"
                                           r"\.toml\): Failed to attach: image is not a "
                                           r"portable service$"):
        svc.attach(1)


def test_a_refused_inspect_names_the_image_and_the_spec() -> None:
    refused = program_answer(ok=False, step="inspect", refused=True,
                             error="portablectl inspect /var/lib/portables/x_1.raw: no unit")
    svc, _ = service({"portable.py": refused})
    with pytest.raises(ImageRefused, match=r"^portablectl inspect .*x_1\.raw: no unit \(.*toml\)"):
        svc.attach(1, prepare=svc.image_steps("host"))


def test_an_attach_that_broke_before_portablectl_is_a_guest_error() -> None:
    broke = program_answer(ok=False, step="attach", refused=False,
                           error="OSError: [Errno 28] No space left on device")
    svc, _ = service({"portable.py": broke})
    with pytest.raises(GuestError, match=r"step attach: OSError.*No space") as e:
        svc.attach(1)
    assert not isinstance(e.value, ImageRefused)


def test_a_user_scope_refusal_is_a_guest_error_to_characterise() -> None:
    """The user's portabled refusing an image is a result (quirks.user_attach_refused), not
    the end of the run."""
    refused = program_answer(ok=False, step="attach", refused=True,
                             error="AttachImage failed: Access denied")
    svc, _ = service({"portable.py": refused}, major=262)
    with pytest.raises(GuestError, match="AttachImage failed: Access denied") as e:
        svc.in_scope(USER_SCOPE).attach(1)
    assert not isinstance(e.value, ImageRefused)


def test_a_program_that_gives_no_answer_is_a_guest_error_with_what_it_printed() -> None:
    svc, _ = service({"portable.py": (1, "Traceback (most recent call last):\n  boom\n")})
    with pytest.raises(GuestError, match=r"(?s)gave no answer.*boom"):
        svc.observe()


def clean_words(**dirty: str) -> dict[str, str]:
    words = {p: "detached" for p in WALKTHROUGH.image_paths()}
    words.update({u: "inactive" for u in (*CLIENT_UNITS, SOCKET, WALKTHROUGH.service)})
    words.update(dirty)
    return words


def test_reset_checks_clean_in_the_same_round_trip_and_remembers_it() -> None:
    svc, fake = service({'"step":"reset"': program_answer({"words": [clean_words()]}),
                         '"step":"attach"': ATTACHED})
    svc.reset()
    (reset,) = one_call(fake)
    assert svc.clean_verified
    (part,) = reset["parts"]  # type: ignore[misc]
    # Units stopped one by one in the program; the subject's files and state removed.
    assert part["units"] == [*CLIENT_UNITS, SOCKET, WALKTHROUGH.service]
    assert f"{WALKTHROUGH.dropin_dir}/50-pwt-*.conf" in part["remove"]
    # the capacity map's Backlog= drop-in for the host socket (run.Overrides)
    assert f"/etc/systemd/system/{SOCKET}.d/50-pwt-*.conf" in part["remove"]
    svc.attach(1)
    assert not svc.clean_verified  # attached: the next test checks again


def test_a_reset_that_leaves_a_socket_active_is_dirty() -> None:
    dirty = clean_words(**{SOCKET: "active"})
    svc, _ = service({"portable.py": program_answer({"words": [dirty]})})
    with pytest.raises(GuestError, match=f"not clean.*{SOCKET} active"):
        svc.reset()
    assert not svc.clean_verified


def test_a_unit_without_an_answer_is_dirty_not_clean() -> None:
    words = clean_words()
    del words[WALKTHROUGH.service]
    svc, _ = service({"portable.py": program_answer({"words": [words]})})
    with pytest.raises(GuestError, match=f"{WALKTHROUGH.service}: no answer"):
        svc.check_clean()


def test_after_a_user_scenario_the_reset_resets_the_users_side_first() -> None:
    svc, fake = service({'"step":"attach"': ATTACHED,
                         '"step":"reset"': program_answer({"words": [{}, clean_words()]}),
                         '"step":"clean"': program_answer({"words": [clean_words()]})},
                        major=262)
    svc.in_scope(USER_SCOPE).attach(1)
    svc.reset()
    reset = sent_steps(fake.commands[-1])[0]  # type: ignore[attr-defined]
    user, system = reset["parts"]  # type: ignore[misc]
    assert user["scope"] == USER_SCOPE.wire() and system["scope"] == SYSTEM.wire()
    assert user["detach_flags"] == ["--runtime"]
    assert "/run/verity.d/pwt-user-portable.crt" in user["remove"]
    assert user["unset_environment"] == ["SYSTEMD_DISSECT_VERITY_TIMEOUT_SEC"]
    assert svc.clean_verified  # the user's manager is gone ({}): nothing of the user's runs
    svc.check_clean()
    assert len(sent_steps(fake.commands[-1])[0]["parts"]) == 1  # type: ignore[arg-type]


def test_the_facts_before_the_load_come_without_a_request() -> None:
    svc, fake = service({"portable.py": program_answer(FACTS)})
    facts = svc.observe()
    (observe,) = one_call(fake)
    assert observe["count"] is None  # a request before the load would move the counter
    assert (observe["socket"], observe["image"]) == (SOCKET, WALKTHROUGH.symlink)
    assert facts.counter is None


def test_the_facts_after_the_load_carry_the_count_in_the_same_round_trip() -> None:
    svc, fake = service({"portable.py": program_answer({**FACTS, "record": RECORD})})
    facts = svc.observe(count=True)
    (observe,) = one_call(fake)
    count = observe["count"]
    assert count["probe"] == "/run/pwt/probe.py" and count["port"] == 8080  # type: ignore[index]
    assert "--counter-regex" in count["args"]  # type: ignore[index]
    assert facts.counter == 42


def test_the_facts_after_the_load_can_ride_in_another_round_trip() -> None:
    svc, _fake = service({})
    command = svc.observe_command(count=True)
    (observe,) = sent_steps(command)
    assert observe["step"] == "observe" and observe["count"] is not None
    printed = program_answer({**FACTS, "record": RECORD})[1]
    assert svc.observed(f"whatever came first\n{printed}").counter == 42
    with pytest.raises(GuestError, match="the guest program gave no answer"):
        svc.observed("")  # the round trip died before the program ran
    failed = json.dumps({"ok": False, "step": "observe", "error": "bus gone", "answers": []})
    with pytest.raises(GuestError, match="observe: bus gone"):
        svc.observed(failed)


def test_a_subject_without_a_counter_sends_no_request_for_one() -> None:
    subject = dataclasses.replace(WALKTHROUGH, counter_regex=None)
    svc, fake = service({"portable.py": program_answer(FACTS)}, subject)
    assert svc.observe(count=True).counter is None
    assert one_call(fake)[0]["count"] is None


def test_reattach_is_timed_by_the_guests_clock() -> None:
    svc, fake = service({"portable.py": program_answer(
        {"started": 1700.25, "ended": 1702.5, "rc": 0, "output": "Queued …\n"})})
    upgrade = svc.reattach(2)
    (step,) = one_call(fake)
    # 252: by the image path (quirks); the symlink flipped first, in the same step.
    assert step["commands"] == [["portablectl", "reattach", "--now", WALKTHROUGH.symlink]]
    assert step["symlink"]["target"] == "portable-walkthrough_2"  # type: ignore[index]
    assert upgrade.command == f"portablectl reattach --now {WALKTHROUGH.symlink}"
    assert (upgrade.started, upgrade.duration_s) == (1700.25, 2.25)


def test_a_failed_reattach_is_a_guest_error_with_its_words() -> None:
    svc, _ = service({"portable.py": program_answer(
        {"started": 1.0, "ended": 2.0, "rc": 1, "output": "ReattachImage failed: No such file"})})
    with pytest.raises(GuestError, match="exited 1: ReattachImage failed"):
        svc.reattach(2)


def test_a_rollout_that_did_not_move_the_symlink_is_not_ok() -> None:
    answer = {"started": 1.0, "ended": 3.0, "rc": 0, "output": "", "link":
              "portable-walkthrough_1.raw"}
    svc, fake = service({"portable.py": program_answer(answer)}, major=257)
    rollout, ok, _ = svc.run_rollout("pwt-rollout.service", 2)
    assert not ok and rollout.command == "systemctl start pwt-rollout.service"
    assert one_call(fake)[0]["journal"] == {"unit": "pwt-rollout.service", "lines": 60}


@pytest.mark.parametrize("step", ["sysupdate", "publish"])
def test_steps_that_make_no_sense_for_a_user_are_refused_with_the_reason(step: str) -> None:
    svc, fake = service({}, major=262)
    user = svc.in_scope(USER_SCOPE)
    with pytest.raises(StepRefused, match=f"^{step} in the user scope: "):
        if step == "publish":
            user.publish(2)
        else:
            user.run_rollout("pwt-rollout.service", 2)
    assert fake.commands == []  # type: ignore[attr-defined]


def test_the_user_scope_inspects_nothing_and_signs_its_images() -> None:
    svc, _ = service({}, major=262)
    user = svc.in_scope(USER_SCOPE)
    (use,) = user.image_steps("host")
    assert use["source"] == "/var/lib/pwt-images/user"
    assert use["target"] == "/var/lib/pwt-user-portables" and use["owner"] == "pwt-user"
    assert use["sign"] == {"dir": "/run/pwt-verity"}
    # The system scope inspects its set the first time only.
    assert [s["step"] for s in svc.image_steps("host")] == ["use-images", "inspect"]
    assert [s["step"] for s in svc.image_steps("host")] == ["use-images"]


def test_overrides_write_the_socket_and_service_dropins_where_the_reset_removes_them() -> None:
    from fnmatch import fnmatch

    from pytest_portable_upgrade.scenarios.run import Overrides

    svc, _fake = service({})
    request = Overrides(socket_dropins={"50-pwt-backlog.conf": "[Socket]\nBacklog=4\n"},
                        service_dropins={"50-pwt-delay.conf": "x"}).request(svc)
    assert request["step"] == "write-files"
    files = request["files"]
    assert files == {f"/etc/systemd/system/{SOCKET}.d/50-pwt-backlog.conf":
                     "[Socket]\nBacklog=4\n",
                     f"{WALKTHROUGH.dropin_dir}/50-pwt-delay.conf": "x"}
    removed = svc._reset_part(svc.scope)["remove"]
    assert all(any(fnmatch(path, pattern) for pattern in removed) for path in files)


def test_every_client_unit_a_load_starts_is_one_reset_stops() -> None:
    from pytest_portable_upgrade.load.load import AB_UNIT, HEY_UNIT, HOLDERS_UNIT, PROBE_UNIT

    assert {AB_UNIT, PROBE_UNIT, HOLDERS_UNIT, HEY_UNIT} <= set(CLIENT_UNITS)


def test_the_load_starts_and_stops_inside_the_portable_programs_round_trips() -> None:
    """run_scenario's composition: the load's start after the attach, the facts afterwards
    after the load's stop; two round trips in all, each answer read from its own line."""
    from pytest_portable_upgrade.core.config import LoadSettings
    from pytest_portable_upgrade.load.load import AB_UNIT, PROBE_UNIT, LoadRun

    rc, printed = ATTACHED
    clocks = {PROBE_UNIT: 1700000001.0, AB_UNIT: 1700000001.5}
    started = json.dumps({"ok": True, "answers": [{"netstat": None, "started": clocks}]})
    stopped = json.dumps({"ok": True, "answers": [{
        "stopped": 1700000030.0, "still_running": [], "netstat": None,
        "files": {"ab": (DATA / "ab_clean.txt").read_text(), "probe": "", "holders": None}}]})
    observed = program_answer({**FACTS, "image": "/var/lib/portables/v2.raw"})[1]
    svc, fake = service({'"step":"stop"': (0, f"{stopped}\n{observed}"),
                         "portable.py": (rc, f"{printed}{started}\n")})
    load = LoadRun(svc.machine, LoadSettings(), keepalive=False, url="http://127.0.0.1:8080/",
                   probe_port=8080, client_args=WALKTHROUGH.client_args())
    before = svc.attach(1, then=load.start_command())
    load.started_from(svc.then_output)
    assert (load.started, load.ab_started) == (1700000001.0, 1700000001.5)
    outcome = load.stop("Hello", "Hola", then=svc.observe_command())
    after = svc.observed(load.then_output)
    assert len(fake.commands) == 2  # type: ignore[attr-defined]
    assert before.attached_image != after.attached_image == "/var/lib/portables/v2.raw"
    assert outcome.ab.complete > 0 and outcome.stopped == 1700000030.0
