"""vm/load/load.py: the commands LoadRun sends to the guest (a recording fake, no VM)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support import DATA, WALKTHROUGH

from pytest_portable_upgrade.core.config import LoadSettings
from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.load.kernel import NETSTAT
from pytest_portable_upgrade.load.load import (
    AB_UNIT,
    BODY_FILE,
    GUEST_DIR,
    HEY_UNIT,
    HOLD_CONNECTIONS_SOURCE,
    HOLDERS_UNIT,
    POLL_MARK,
    PROBE_SOURCE,
    PROBE_UNIT,
    SECTION,
    LoadRun,
    split_sections,
)
from pytest_portable_upgrade.machine.machine import CommandResult

NETSTAT_HOST = (DATA / "netstat_host.txt").read_text()
NETSTAT_OVERFLOW = (DATA / "netstat_overflow.txt").read_text()


class RecordingMachine:
    """Answers each ``date +%s.%N`` in a command with the next epoch, each ``echo
    PWT-SECTION:name`` with its line and ``cat /proc/net/netstat`` with ``netstat`` (in the
    command's order), records every command, and plays back scripted ``execute`` answers."""

    def __init__(self, answers: list[str] | None = None, netstat: str = NETSTAT_HOST) -> None:
        self.commands: list[str] = []
        self.answers = answers or []
        self.clock = 1700000000.5
        self.netstat = netstat

    def succeed(self, command: str, timeout: float = 120.0) -> str:
        self.commands.append(command)
        out = []
        pattern = rf"date \+%s\.%N|echo ({re.escape(SECTION)}[\w-]+)|cat {re.escape(NETSTAT)}"
        for match in re.finditer(pattern, command):
            if match.group(0).startswith("date"):
                out.append(f"{self.clock}\n")
                self.clock += 0.25
            elif match.group(1):
                out.append(f"{match.group(1)}\n")
            else:
                out.append(self.netstat)
        return "".join(out)

    def execute(self, command: str, timeout: float = 120.0) -> CommandResult:
        self.commands.append(command)
        return CommandResult(command, 0, self.answers.pop(0), "", 0.3)

    def copy_from_host(self, source: Path, target: str, mode: str = "0644",
                       once: bool = False) -> None:
        self.commands.append(f"copy {source.name} {target}")


def load_run(machine: RecordingMachine, settings: LoadSettings | None = None,
             keepalive: bool = False) -> LoadRun:
    """A LoadRun against the walkthrough's port, with its client arguments."""
    return LoadRun(machine, settings or LoadSettings(),  # type: ignore[arg-type]
                   keepalive=keepalive, url="http://127.0.0.1:8080/", probe_port=8080,
                   client_args=WALKTHROUGH.client_args())


def probe_command(settings: LoadSettings) -> str:
    machine = RecordingMachine()
    run = load_run(machine, settings)
    run.start()
    return next(c for c in machine.commands if f"--unit={PROBE_UNIT}" in c)


def test_probe_runs_at_the_configured_rate_with_its_bound() -> None:
    command = probe_command(LoadSettings(probe_rate=35.0))
    assert "probe.py --port 8080 --path / --host-header probe --version-regex " in command
    assert " --rate 35 --max-in-flight 350 " in command
    assert "--max-seconds 240" in command


def test_probe_default_rate() -> None:
    command = probe_command(LoadSettings())
    assert "--rate 20 --max-in-flight 200 " in command


def test_probe_unit_outlives_the_probes_own_bound() -> None:
    """RuntimeMaxSec (max + 60 s) must leave room for the probe's own end: --max-seconds plus
    its 5 s grace for requests in flight."""
    command = probe_command(LoadSettings(max_s=100.0))
    assert "-p RuntimeMaxSec=160 " in command and "--max-seconds 100" in command


def test_start_is_one_round_trip_after_the_upload_and_reads_both_clocks() -> None:
    machine = RecordingMachine()
    run = load_run(machine, keepalive=True)
    run.start()
    uploads = [c for c in machine.commands if c.startswith("copy ")]
    assert len(machine.commands) == len(uploads) + 1
    command = machine.commands[-1]
    # The probe before ab, each unit stopped on its own before (newer systemd refuses a
    # whole `stop A B` when one is not loaded).
    assert command.index(f"--unit={PROBE_UNIT}") < command.index(f"--unit={AB_UNIT}")
    assert "do systemctl stop $u" in command
    assert (run.started, run.ab_started) == (1700000000.5, 1700000000.75)


def test_the_guest_scripts_are_uploaded_from_beside_load_py_and_run_by_that_name() -> None:
    """Each guest script goes to GUEST_DIR under its own name, and the unit runs that file."""
    machine = RecordingMachine()
    run = LoadRun(machine, LoadSettings(), keepalive=True,  # type: ignore[arg-type]
                  url="http://127.0.0.1:8080/", probe_port=8080,
                  client_args=WALKTHROUGH.client_args(), holders=2)
    run.start()
    assert PROBE_SOURCE.is_file() and HOLD_CONNECTIONS_SOURCE.is_file()
    assert machine.commands[:2] == [f"copy probe.py {GUEST_DIR}/probe.py",
                                    f"copy hold_connections.py {GUEST_DIR}/hold_connections.py"]
    command = machine.commands[-1]
    assert f"python3 {GUEST_DIR}/probe.py --port 8080" in command
    assert f"--unit={HOLDERS_UNIT}" in command
    assert f"python3 {GUEST_DIR}/hold_connections.py --port 8080" in command


PROBE_LINE = ('{"t": 1700000001.0, "latency_ms": 4.0, "status": 200, "greeting": "Hello",'
              ' "visitor": 7}')


def test_poll_keeps_only_whole_lines_and_asks_only_for_what_is_new() -> None:
    half = PROBE_LINE[:20]
    machine = RecordingMachine([
        f"1700000003.0\nactive\nactive\n{POLL_MARK}\n{PROBE_LINE}\n{half}",
        f"1700000004.0\nactive\ninactive\n{POLL_MARK}\n{PROBE_LINE}\n",
    ])
    run = load_run(machine)
    now, running, text = run.poll()
    assert (now, running, text) == (1700000003.0, True, PROBE_LINE + "\n")
    assert "tail -c +1 " in machine.commands[-1]
    now, running, text = run.poll()
    # The second read starts after the first whole line: the half line is read again whole.
    assert f"tail -c +{len(PROBE_LINE) + 2} " in machine.commands[-1]
    assert running is False and text == f"{PROBE_LINE}\n{PROBE_LINE}\n"


def probe_line(t: float, greeting: str | None) -> str:
    if greeting is None:
        return json.dumps({"t": t, "latency_ms": 1.0, "error": "ConnectionRefusedError"})
    return json.dumps({"t": t, "latency_ms": 4.0, "status": 200, "greeting": greeting,
                       "visitor": int(t)})


def polls(*batches: list[str], running: str = "active") -> list[str]:
    clock = 1700000001.0
    out = []
    for lines in batches:
        out.append(f"{clock}\nactive\n{running}\n{POLL_MARK}\n" + "".join(f"{x}\n"
                                                                      for x in lines))
        clock += 1
    return out


def test_the_wait_ends_when_the_new_version_has_answered_long_enough(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_portable_upgrade.core.retry.time.sleep", lambda s: None)
    t0 = 1700000000.5  # the load's start, as RecordingMachine's first `date` answers it
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
    assert machine.answers == [polls(["never read"])[0].replace("1700000001.0",
                                                               "1700000003.0")]
    ended = RecordingMachine(polls([probe_line(t0, "Hello")], running="inactive"))
    run = load_run(ended)
    run.start()
    run.wait_until_serving("Hola", 3.0)  # ab is gone: no point waiting out the bound
    assert not ended.answers


def test_split_sections() -> None:
    out = f"1700000009.0\n{SECTION}ab\nreport\n{SECTION}probe\n{PROBE_LINE}\n{SECTION}holders\n"
    assert split_sections(out) == {"head": "1700000009.0\n", "ab": "report\n",
                                   "probe": PROBE_LINE + "\n", "holders": ""}


def test_ab_that_ignores_sigint_is_an_error_naming_it() -> None:
    machine = RecordingMachine([f"1700000009.0\nAB-STILL-RUNNING\n{SECTION}ab\n"])
    run = load_run(machine)
    with pytest.raises(GuestError, match="ab did not exit within 60 s of SIGINT"):
        run.stop("Hello", "Hola")


AB_REPORT = (DATA / "ab_clean.txt").read_text()
JOURNAL = (DATA / "journal_reattach.jsonl").read_text()
UNIT = "portable-walkthrough.service"


def stop_answer(netstat: str = NETSTAT_OVERFLOW, journal: str | None = None) -> str:
    """What the guest prints for LoadRun.stop: the clock, then each section."""
    read = "" if journal is None else f"{SECTION}journal\n{journal}"
    return (f"1795770313.0\n{SECTION}netstat\n{netstat}{read}{SECTION}ab\n{AB_REPORT}\n"
            f"{SECTION}probe\n{PROBE_LINE}\n{SECTION}holders\n")


def test_a_command_run_after_the_stop_rides_in_its_round_trip() -> None:
    then = 'python3 /run/pwt/portable.py --json \'[{"step":"observe"}]\''
    machine = RecordingMachine([stop_answer() + f"\n{SECTION}then\n{{\"ok\": true}}\n"])
    run = load_run(machine)
    outcome = run.stop("Hello", "Hola", then=then)
    command = machine.commands[-1]
    # Last, after every client is stopped and read: the facts afterwards see no load.
    assert command.index(then) > command.index(f"{SECTION}holders")
    assert run.then_output == '{"ok": true}\n' and outcome.ab.complete > 0
    plain = RecordingMachine([stop_answer()])
    run = load_run(plain)
    run.stop("Hello", "Hola")
    assert f"{SECTION}then" not in plain.commands[-1] and run.then_output == ""


def test_start_reads_the_kernel_counters_before_the_clients_start() -> None:
    machine = RecordingMachine()
    run = load_run(machine)
    run.start()
    command = machine.commands[-1]
    assert command.index(f"cat {NETSTAT}") < command.index("date +%s.%N") \
        < command.index(f"--unit={PROBE_UNIT}")
    # In a section of their own, not mixed with the clocks.
    assert f"echo {SECTION}netstat; cat {NETSTAT} 2>/dev/null; echo {SECTION}clocks;" in command


def test_stop_gives_the_counters_change_over_the_load() -> None:
    machine = RecordingMachine([stop_answer()])
    run = load_run(machine)
    run.start()
    out = run.stop("Hello", "Hola")
    command = machine.commands[-1]
    # After the clients are stopped, in the same round trip as ab's report.
    assert command.index("systemctl stop $u") < command.index(f"cat {NETSTAT}") \
        < command.index(f"cat {GUEST_DIR}/ab.out")
    assert out.tcp == {"listen_overflows": 37, "listen_drops": 37, "tcp_syn_retrans": 52}
    assert out.ab.complete > 0 and len(out.timeline.records) == 1


def test_counters_not_read_on_one_side_are_none() -> None:
    machine = RecordingMachine([stop_answer(netstat="")], netstat=NETSTAT_HOST)
    run = load_run(machine)
    run.start()
    assert run.stop("Hello", "Hola").tcp == dict.fromkeys(out_keys())
    machine = RecordingMachine([stop_answer()], netstat="")
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
    assert "journalctl" not in machine.commands[-1]
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
    command = machine.commands[-1]
    assert f"--since @1795770304 -n 500 UNIT={UNIT} + USER_UNIT={UNIT}" in command
    assert command.index("journalctl") < command.index(f"cat {GUEST_DIR}/ab.out")
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
    command = machine.commands[-1]
    assert f"--unit={HEY_UNIT} -p RuntimeMaxSec=300 -p StandardOutput=file:{GUEST_DIR}/hey.out" \
        in command
    assert "hey -c 10 -z 240s -t 30 -disable-compression http://127.0.0.1:8080/" in command
    # Before ab's clock: ab_started stays ab's own.
    assert command.index(f"--unit={HEY_UNIT}") < command.rindex("date +%s.%N") \
        < command.index(f"--unit={AB_UNIT}")
    assert "systemctl stop $u 2>/dev/null" in command and HEY_UNIT in command.split(";")[0]
    assert f"> {BODY_FILE}" not in command and f"-p {BODY_FILE}" not in command  # a GET


def test_a_post_load_writes_the_body_and_every_client_sends_it() -> None:
    machine = RecordingMachine()
    run = hey_run(machine, "POST")
    run.start()
    command = machine.commands[-1]
    assert f"rm -f {GUEST_DIR}/ab.out" in command
    assert f"&& printf '%s' name=visitor > {BODY_FILE}" in command
    assert command.index(f"> {BODY_FILE}") < command.index("date +%s.%N")
    assert (f"-p {BODY_FILE} -T application/x-www-form-urlencoded http://127.0.0.1:8080/"
            in command)  # ab
    assert f"-m POST -D {BODY_FILE} -T application/x-www-form-urlencoded" in command  # hey
    assert "probe.py --port 8080 --path / --host-header probe --method POST --body" in command


def test_stop_interrupts_hey_and_reads_its_report() -> None:
    answer = stop_answer().replace(f"{SECTION}netstat",
                                   f"{SECTION}hey\n{HEY_REPORT}\n{SECTION}netstat", 1)
    machine = RecordingMachine([answer])
    run = hey_run(machine, "POST")
    run.start()
    out = run.stop("Hello", "Hola")
    command = machine.commands[-1]
    assert f"for u in {AB_UNIT} {HEY_UNIT}; do systemctl kill --signal=SIGINT $u; done" \
        in command
    assert command.index(f"is-active --quiet {HEY_UNIT}") \
        < command.index(f"cat {GUEST_DIR}/hey.out")
    assert out.hey is not None and out.hey.answered == 1448
    assert out.hey.failed_by_kind["reset"] == 10
    assert out.method == "POST" and out.hey_command == run.hey_command
    assert out.ab.complete > 0


def test_hey_without_a_report_is_an_error_naming_it() -> None:
    answer = stop_answer().replace(f"{SECTION}netstat", f"{SECTION}hey\n{SECTION}netstat", 1)
    machine = RecordingMachine([answer])
    run = hey_run(machine)
    run.start()
    with pytest.raises(GuestError, match=r"hey printed no report \(hey output has no 'Summary:'"):
        run.stop("Hello", "Hola")


def test_hey_that_ignores_sigint_is_an_error_naming_it() -> None:
    machine = RecordingMachine([f"1700000009.0\nHEY-STILL-RUNNING\n{SECTION}ab\n{AB_REPORT}"])
    run = hey_run(machine)
    run.start()
    with pytest.raises(GuestError, match="hey did not exit within 60 s of SIGINT"):
        run.stop("Hello", "Hola")


def test_without_hey_nothing_of_it_is_sent() -> None:
    machine = RecordingMachine([stop_answer()])
    run = load_run(machine)
    run.start()
    out = run.stop("Hello", "Hola")
    assert all(HEY_UNIT not in c.split(";", 1)[1] and "hey.out;" not in c
               for c in machine.commands[-2:])
    assert (out.hey, out.hey_command, out.method) == (None, None, "GET")
