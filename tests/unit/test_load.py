"""vm/load/load.py: the requests LoadRun sends to the load's guest program and how it reads the
answers (a recording fake, no VM). The program itself: test_guest_load.py."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from support import DATA, WALKTHROUGH, sent_steps

from pytest_portable_upgrade.core.config import LoadSettings
from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.load.kernel import NETSTAT
from pytest_portable_upgrade.load.load import (
    AB_OUT,
    AB_UNIT,
    BODY_FILE,
    GUEST_DIR,
    HEY_OUT,
    HEY_UNIT,
    HOLD_CONNECTIONS_SOURCE,
    HOLDERS_UNIT,
    PROBE_LOG,
    PROBE_SOURCE,
    PROBE_UNIT,
    PROGRAM,
    LoadRun,
)
from pytest_portable_upgrade.machine.machine import CommandResult

NETSTAT_HOST = (DATA / "netstat_host.txt").read_text()
NETSTAT_OVERFLOW = (DATA / "netstat_overflow.txt").read_text()
Answer = dict[str, Any]


def sent(command: str) -> list[Answer]:
    """The requests of the load's guest program call that opens ``command``."""
    return sent_steps(command, program="load.py")  # type: ignore[return-value]


class RecordingMachine:
    """Records every command and answers each call of the load's guest program as it would:
    ``start`` with the next epoch for each client and ``netstat``, every other step with the
    next scripted answer; a command run after the call (``&& { then; }``) prints
    ``then_printed``."""

    def __init__(self, answers: list[Answer] | None = None, netstat: str | None = NETSTAT_HOST,
                 then_printed: str = "") -> None:
        self.commands: list[str] = []
        self.answers = answers or []
        self.clock = 1700000000.5
        self.netstat = netstat
        self.then_printed = then_printed

    def execute(self, command: str, timeout: float = 120.0) -> CommandResult:
        self.commands.append(command)
        answers = [self.answer(r) for r in sent(command)]
        out = json.dumps({"ok": True, "answers": answers}) + "\n"
        if " && { " in command:
            out += self.then_printed
        return CommandResult(command, 0, out, "", 0.3)

    def answer(self, request: Answer) -> Answer:
        if request["step"] != "start":
            return self.answers.pop(0)
        started = {}
        for client in request["clients"]:
            started[client["unit"]] = self.clock
            self.clock += 0.25
        return {"netstat": self.netstat, "started": started}

    def copy_from_host(self, source: Path, target: str, mode: str = "0644",
                       once: bool = False) -> None:
        self.commands.append(f"copy {source.name} {target}")


def load_run(machine: RecordingMachine, settings: LoadSettings | None = None,
             keepalive: bool = False) -> LoadRun:
    """A LoadRun against the walkthrough's port, with its client arguments."""
    return LoadRun(machine, settings or LoadSettings(),  # type: ignore[arg-type]
                   keepalive=keepalive, url="http://127.0.0.1:8080/", probe_port=8080,
                   client_args=WALKTHROUGH.client_args())


def clients(command: str) -> dict[str, Answer]:
    """The clients a ``start`` call starts, by unit, in their order."""
    (start,) = sent(command)
    assert start["step"] == "start"
    return {c["unit"]: c for c in start["clients"]}


def probe_client(settings: LoadSettings) -> Answer:
    machine = RecordingMachine()
    run = load_run(machine, settings)
    run.start()
    return clients(machine.commands[-1])[PROBE_UNIT]


def test_probe_runs_at_the_configured_rate_with_its_bound() -> None:
    probe = probe_client(LoadSettings(probe_rate=35.0))
    command = shlex.join(probe["argv"])
    assert command.startswith(f"python3 {GUEST_DIR}/probe.py --port 8080 --path / "
                              "--host-header probe --version-regex ")
    assert " --rate 35 --max-in-flight 350 " in command
    assert command.endswith(f"--out {PROBE_LOG} --max-seconds 240")


def test_probe_default_rate() -> None:
    assert "--rate 20 --max-in-flight 200 " in shlex.join(probe_client(LoadSettings())["argv"])


def test_probe_unit_outlives_the_probes_own_bound() -> None:
    """RuntimeMaxSec (max + 60 s) must leave room for the probe's own end: --max-seconds plus
    its 5 s grace for requests in flight."""
    probe = probe_client(LoadSettings(max_s=100.0))
    assert probe["bound"] == 160 and probe["argv"][-2:] == ["--max-seconds", "100"]


def test_start_is_one_round_trip_after_the_upload_and_reads_both_clocks() -> None:
    machine = RecordingMachine()
    run = load_run(machine, keepalive=True)
    run.start()
    uploads = [c for c in machine.commands if c.startswith("copy ")]
    assert len(machine.commands) == len(uploads) + 1
    (start,) = sent(machine.commands[-1])
    # The probe first, ab last; every client unit stopped and its file removed before.
    assert list(clients(machine.commands[-1])) == [PROBE_UNIT, AB_UNIT]
    assert start["stop"] == [AB_UNIT, PROBE_UNIT, HOLDERS_UNIT, HEY_UNIT]
    assert {AB_OUT, PROBE_LOG, HEY_OUT, BODY_FILE} <= set(start["remove"])
    assert (run.started, run.ab_started) == (1700000000.5, 1700000000.75)


def test_the_guest_programs_are_uploaded_from_beside_load_py_and_run_by_that_name() -> None:
    """Each guest file goes to GUEST_DIR under its own name, and the units run that file."""
    machine = RecordingMachine()
    run = LoadRun(machine, LoadSettings(), keepalive=True,  # type: ignore[arg-type]
                  url="http://127.0.0.1:8080/", probe_port=8080,
                  client_args=WALKTHROUGH.client_args(), holders=2)
    run.start()
    assert PROBE_SOURCE.is_file() and HOLD_CONNECTIONS_SOURCE.is_file()
    assert PROGRAM.source.is_file()
    assert machine.commands[:3] == [
        f"copy hold_connections.py {GUEST_DIR}/hold_connections.py",
        f"copy probe.py {GUEST_DIR}/probe.py", f"copy load.py {GUEST_DIR}/load.py"]
    started = clients(machine.commands[-1])
    assert started[PROBE_UNIT]["argv"][:4] == ["python3", f"{GUEST_DIR}/probe.py", "--port",
                                               "8080"]
    assert started[HOLDERS_UNIT]["argv"][:4] == [
        "python3", f"{GUEST_DIR}/hold_connections.py", "--port", "8080"]
    assert "--connections" in started[HOLDERS_UNIT]["argv"]


def test_the_start_rides_after_another_round_trip_and_reads_its_answer_there() -> None:
    machine = RecordingMachine()
    run = load_run(machine)
    command = run.start_command()
    assert command.startswith(f"python3 {GUEST_DIR}/load.py --json ")
    assert machine.commands == [f"copy probe.py {GUEST_DIR}/probe.py",
                                f"copy load.py {GUEST_DIR}/load.py"]  # no round trip of its own
    start = {"netstat": NETSTAT_HOST, "started": {PROBE_UNIT: 1700000001.0,
                                                  AB_UNIT: 1700000001.5}}
    run.started_from(json.dumps({"ok": True, "answers": [start]}) + "\n")
    assert (run.started, run.ab_started) == (1700000001.0, 1700000001.5)
    failed = json.dumps({"ok": False, "step": "start", "error": "`systemd-run …` exited 1: "
                         "Unit pwt-ab.service already exists", "answers": []})
    with pytest.raises(GuestError, match=r"the load's step start: .*already exists"):
        run.started_from(f"{failed}\n")


PROBE_LINE = ('{"t": 1700000001.0, "latency_ms": 4.0, "status": 200, "greeting": "Hello",'
              ' "visitor": 7}')


def poll_answer(now: float, lines: list[str], ab: str = "active", offset: int = 0) -> Answer:
    text = "".join(f"{x}\n" for x in lines)
    return {"now": now, "states": {AB_UNIT: ab, PROBE_UNIT: "active"}, "log": text,
            "offset": offset + len(text.encode())}


def test_poll_asks_only_for_what_is_new() -> None:
    first = poll_answer(1700000003.0, [PROBE_LINE])
    machine = RecordingMachine([first, poll_answer(1700000004.0, [PROBE_LINE], ab="inactive",
                                                   offset=first["offset"])])
    run = load_run(machine)
    now, running, text = run.poll()
    assert (now, running, text) == (1700000003.0, True, PROBE_LINE + "\n")
    (poll,) = sent(machine.commands[-1])
    assert poll == {"step": "poll", "units": [AB_UNIT, PROBE_UNIT], "log": PROBE_LOG,
                    "offset": 0}
    now, running, text = run.poll()
    # The second read starts where the first one's whole lines ended.
    assert sent(machine.commands[-1])[0]["offset"] == len(PROBE_LINE) + 1
    assert running is False and text == f"{PROBE_LINE}\n{PROBE_LINE}\n"


def probe_line(t: float, greeting: str | None) -> str:
    if greeting is None:
        return json.dumps({"t": t, "latency_ms": 1.0, "error": "ConnectionRefusedError"})
    return json.dumps({"t": t, "latency_ms": 4.0, "status": 200, "greeting": greeting,
                       "visitor": int(t)})


def polls(*batches: list[str], running: str = "active") -> list[Answer]:
    clock = 1700000001.0
    out = []
    for lines in batches:
        out.append(poll_answer(clock, lines, ab=running))
        clock += 1
    return out


def test_the_wait_ends_when_the_new_version_has_answered_long_enough(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_portable_upgrade.core.retry.time.sleep", lambda s: None)
    t0 = 1700000000.5  # the load's start, as RecordingMachine's first clock answers it
    hello = [probe_line(t0 + i * 0.5, "Hello") for i in range(4)]
    hola = [probe_line(t0 + 2 + i * 0.5, "Hola") for i in range(8)]  # 3.5 s of v2
    machine = RecordingMachine(polls(hello, hola[:3], hola[3:]))
    run = load_run(machine)
    run.start()
    timeline = run.wait_until_serving("Hola", 3.0)
    assert timeline.answered_seconds_of("Hola") >= 3.0
    assert not machine.answers  # three polls: not done after the first two


def test_the_wait_gives_up_on_a_port_that_only_fails_and_on_a_client_that_ended(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_portable_upgrade.core.retry.time.sleep", lambda s: None)
    t0 = 1700000000.5
    dead = [probe_line(t0 + 1 + i * 0.5, None) for i in range(8)]  # 3.5 s of refusals
    machine = RecordingMachine(polls([probe_line(t0, "Hello")], dead, ["never read"]))
    run = load_run(machine)
    run.start()
    assert run.wait_until_serving("Hola", 3.0, after=t0 + 0.5).answered_seconds_of("Hola") == 0
    assert [a["log"] for a in machine.answers] == ["never read\n"]
    ended = RecordingMachine(polls([probe_line(t0, "Hello")], running="inactive"))
    run = load_run(ended)
    run.start()
    run.wait_until_serving("Hola", 3.0)  # ab is gone: no point waiting out the bound
    assert not ended.answers


AB_REPORT = (DATA / "ab_clean.txt").read_text()
JOURNAL = (DATA / "journal_reattach.jsonl").read_text()
UNIT = "portable-walkthrough.service"


def stop_answer(netstat: str | None = NETSTAT_OVERFLOW, journal: str | None = None,
                hey: str | None = None, still_running: tuple[str, ...] = ()) -> Answer:
    """What the guest program answers for LoadRun.stop."""
    answer: Answer = {"stopped": 1795770313.0, "still_running": list(still_running),
                      "netstat": netstat, "files": {"ab": AB_REPORT, "probe": PROBE_LINE + "\n",
                                                    "holders": None}}
    if journal is not None:
        answer["journal"] = journal
    if hey is not None:
        answer["files"]["hey"] = hey
    return answer


def stop_request(machine: RecordingMachine) -> Answer:
    (stop,) = sent(machine.commands[-1])
    assert stop["step"] == "stop"
    return stop


def test_stop_is_one_request_that_reads_every_clients_file() -> None:
    machine = RecordingMachine([stop_answer()])
    run = load_run(machine)
    run.start()
    outcome = run.stop("Hello", "Hola")
    stop = stop_request(machine)
    assert stop["interrupt"] == [AB_UNIT] and stop["stop"] == [PROBE_UNIT]
    assert stop["read"] == {"ab": AB_OUT, "probe": PROBE_LOG,
                            "holders": f"{GUEST_DIR}/holders.jsonl"}
    assert stop["wait"] == 60  # ab's report after SIGINT: the bound the error names
    assert outcome.stopped == 1795770313.0 and outcome.ab.complete > 0
    assert len(outcome.timeline.records) == 1 and outcome.holders is None


def test_ab_that_ignores_sigint_is_an_error_naming_it() -> None:
    machine = RecordingMachine([stop_answer(still_running=(AB_UNIT,))])
    run = load_run(machine)
    with pytest.raises(GuestError, match="ab did not exit within 60 s of SIGINT"):
        run.stop("Hello", "Hola")


def test_a_failed_step_is_an_error_with_the_guests_words() -> None:
    machine = RecordingMachine()
    machine.execute = lambda command, timeout=120.0: CommandResult(  # type: ignore[method-assign]
        command, 1, json.dumps({"ok": False, "step": "stop", "error": "PermissionError: x",
                                "answers": []}) + "\n", "", 0.1)
    with pytest.raises(GuestError, match="the load's step stop: PermissionError: x"):
        load_run(machine).stop("Hello", "Hola")


def test_a_command_run_after_the_stop_rides_in_its_round_trip() -> None:
    then = 'python3 /run/pwt/portable.py --json \'[{"step":"observe"}]\''
    machine = RecordingMachine([stop_answer()], then_printed='{"ok": true}\n')
    run = load_run(machine)
    outcome = run.stop("Hello", "Hola", then=then)
    command = machine.commands[-1]
    # Last, after every client is stopped and read: the facts afterwards see no load.
    assert command.endswith(f" && {{ {then}; }}")
    assert run.then_output == '{"ok": true}\n' and outcome.ab.complete > 0
    plain = RecordingMachine([stop_answer()], then_printed="never printed")
    run = load_run(plain)
    run.stop("Hello", "Hola")
    assert "&&" not in plain.commands[-1] and run.then_output == ""


def test_start_and_stop_read_the_kernel_counters() -> None:
    machine = RecordingMachine()
    run = load_run(machine)
    run.start()
    assert sent(machine.commands[-1])[0]["netstat"] == NETSTAT


def test_stop_gives_the_counters_change_over_the_load() -> None:
    machine = RecordingMachine([stop_answer()])
    run = load_run(machine)
    run.start()
    out = run.stop("Hello", "Hola")
    assert stop_request(machine)["netstat"] == NETSTAT
    assert out.tcp == {"listen_overflows": 37, "listen_drops": 37, "tcp_syn_retrans": 52}


def test_counters_not_read_on_one_side_are_none() -> None:
    machine = RecordingMachine([stop_answer(netstat=None)], netstat=NETSTAT_HOST)
    run = load_run(machine)
    run.start()
    assert run.stop("Hello", "Hola").tcp == dict.fromkeys(out_keys())
    machine = RecordingMachine([stop_answer()], netstat=None)
    run = load_run(machine)
    run.start()
    assert run.stop("Hello", "Hola").tcp == dict.fromkeys(out_keys())


def out_keys() -> list[str]:
    return ["listen_overflows", "listen_drops", "tcp_syn_retrans"]


def test_the_journal_is_read_only_when_the_service_unit_is_named() -> None:
    machine = RecordingMachine([stop_answer()])
    run = load_run(machine)
    run.start()
    out = run.stop("Hello", "Hola")
    assert stop_request(machine)["journal"] is None
    assert (out.journal_read, out.journal_gap) == (False, None)


def test_stop_reads_the_service_journal_since_the_load_start() -> None:
    # --since takes whole seconds: a restart just before the load start (the previous
    # scenario's) can come back too, and is not this load's.
    before_load = ((1795770304_050000, f"{UNIT}: Deactivated successfully."),
                   (1795770304_100000, f"Started {UNIT}."))
    earlier = "".join(json.dumps({"__REALTIME_TIMESTAMP": str(us), "MESSAGE": m, "UNIT": UNIT})
                      + "\n" for us, m in before_load)
    machine = RecordingMachine([stop_answer(journal=earlier + JOURNAL)])
    machine.clock = 1795770304.1376  # probe_restart's load start, as journal_reattach's
    run = LoadRun(machine, LoadSettings(), keepalive=False,  # type: ignore[arg-type]
                  url="http://127.0.0.1:8080/", probe_port=8080,
                  client_args=WALKTHROUGH.client_args(), service_unit=UNIT)
    run.start()
    out = run.stop("Hello", "Hola")
    journal = shlex.join(stop_request(machine)["journal"])
    assert f"--since @1795770304 -n 500 UNIT={UNIT} + USER_UNIT={UNIT}" in journal
    assert out.journal_read and out.journal_gap is not None
    assert out.journal_gap.seconds == pytest.approx(1.4738, abs=1e-4)
    # The attach's "Started" before the load start is not the restart's.
    assert out.journal_gap.gone.at > run.started


# --- hey beside ab, and POST -------------------------------------------------------------------

HEY_REPORT = (DATA / "hey_naive_post.txt").read_text()


def hey_run(machine: RecordingMachine, method: str = "GET") -> LoadRun:
    return LoadRun(machine, LoadSettings(), keepalive=True,  # type: ignore[arg-type]
                   url="http://127.0.0.1:8080/", probe_port=8080,
                   client_args=WALKTHROUGH.client_args(method), hey=True, method=method,
                   body=WALKTHROUGH.request_body if method == "POST" else None,
                   content_type=WALKTHROUGH.request_content_type)


def test_hey_runs_as_its_own_bounded_unit_beside_ab() -> None:
    machine = RecordingMachine()
    run = hey_run(machine)
    run.start()
    started = clients(machine.commands[-1])
    hey = started[HEY_UNIT]
    assert (hey["bound"], hey["stdout"]) == (300, HEY_OUT)
    assert shlex.join(hey["argv"]).startswith(
        "hey -c 10 -z 240s -t 30 -disable-compression http://127.0.0.1:8080/")
    # Started before ab: ab_started stays ab's own clock.
    assert list(started) == [PROBE_UNIT, HEY_UNIT, AB_UNIT]
    assert run.ab_started == 1700000001.0
    (start,) = sent(machine.commands[-1])
    assert HEY_UNIT in start["stop"] and start["files"] == {}  # a GET: no body
    assert "-p" not in started[AB_UNIT]["argv"]


def test_a_post_load_writes_the_body_and_every_client_sends_it() -> None:
    machine = RecordingMachine()
    run = hey_run(machine, "POST")
    run.start()
    (start,) = sent(machine.commands[-1])
    assert start["files"] == {BODY_FILE: "name=visitor"} and BODY_FILE in start["remove"]
    started = {unit: shlex.join(c["argv"]) for unit, c in clients(machine.commands[-1]).items()}
    assert (f"-p {BODY_FILE} -T application/x-www-form-urlencoded http://127.0.0.1:8080/"
            in started[AB_UNIT])
    assert f"-m POST -D {BODY_FILE} -T application/x-www-form-urlencoded" in started[HEY_UNIT]
    assert "probe.py --port 8080 --path / --host-header probe --method POST --body" \
        in started[PROBE_UNIT]


def test_stop_interrupts_hey_and_reads_its_report() -> None:
    machine = RecordingMachine([stop_answer(hey=HEY_REPORT)])
    run = hey_run(machine, "POST")
    run.start()
    out = run.stop("Hello", "Hola")
    stop = stop_request(machine)
    assert stop["interrupt"] == [AB_UNIT, HEY_UNIT] and stop["read"]["hey"] == HEY_OUT
    assert out.hey is not None and out.hey.answered == 1448
    assert out.hey.failed_by_kind["reset"] == 10
    assert out.method == "POST" and out.hey_command == run.hey_command
    assert out.ab.complete > 0


def test_hey_without_a_report_is_an_error_naming_it() -> None:
    machine = RecordingMachine([stop_answer(hey=None)])
    machine.answers[0]["files"]["hey"] = None  # no file at all
    run = hey_run(machine)
    run.start()
    with pytest.raises(GuestError, match=r"hey printed no report \(hey output has no 'Summary:'"):
        run.stop("Hello", "Hola")


def test_hey_that_ignores_sigint_is_an_error_naming_it() -> None:
    machine = RecordingMachine([stop_answer(hey=HEY_REPORT, still_running=(HEY_UNIT,))])
    run = hey_run(machine)
    run.start()
    with pytest.raises(GuestError, match="hey did not exit within 60 s of SIGINT"):
        run.stop("Hello", "Hola")


def test_without_hey_nothing_of_it_is_sent() -> None:
    machine = RecordingMachine([stop_answer()])
    run = load_run(machine)
    run.start()
    out = run.stop("Hello", "Hola")
    calls = [c for c in machine.commands if not c.startswith("copy ")]
    assert len(calls) == 2
    (start,) = sent(calls[0])
    assert HEY_UNIT not in [c["unit"] for c in start["clients"]]
    assert HEY_UNIT not in stop_request(machine)["interrupt"]
    assert "hey" not in stop_request(machine)["read"]
    assert (out.hey, out.hey_command, out.method) == (None, None, "GET")
