"""vm/load/guest/load.py, the guest program of the load's steps, run on the host as the harness
runs it in the guest: fake systemctl, systemd-run, journalctl and ss first on PATH
(support.FakeTools), real files in a temporary directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import LOAD_PY, FakeTools, run_program

AB, PROBE, HEY = "pwt-ab.service", "pwt-probe.service", "pwt-hey.service"


def load(requests: list[dict[str, object]], tools: FakeTools) -> dict[str, object]:
    return run_program(requests, tools, program=LOAD_PY)


def start_request(tmp_path: Path, **changes: object) -> dict[str, object]:
    return {"step": "start", "stop": [AB, PROBE], "remove": [str(tmp_path / "ab.out")],
            "files": {}, "netstat": str(tmp_path / "netstat"),
            "clients": [{"unit": PROBE, "bound": 300, "argv": ["python3", "probe.py"]},
                        {"unit": AB, "bound": 300, "stdout": str(tmp_path / "ab.out"),
                         "argv": ["ab", "-c", "10", "http://127.0.0.1:8080/"]}],
            **changes}


def test_start_stops_the_units_one_by_one_then_starts_each_client_bounded(
        tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t")
    (tmp_path / "ab.out").write_text("the last run's report")
    answer = load([start_request(tmp_path)], tools)
    assert answer["ok"] and answer["exit"] == 0
    (started,) = answer["answers"]  # type: ignore[misc]
    assert not (tmp_path / "ab.out").exists()
    calls = tools.calls
    # One stop each: newer systemd refuses a whole `stop A B` when one is not loaded.
    assert calls[:2] == [["systemctl", "stop", AB], ["systemctl", "stop", PROBE]]
    assert calls[2:] == [
        ["systemd-run", "--quiet", "--collect", f"--unit={PROBE}", "-p", "RuntimeMaxSec=300",
         "python3", "probe.py"],
        ["systemd-run", "--quiet", "--collect", f"--unit={AB}", "-p", "RuntimeMaxSec=300",
         "-p", f"StandardOutput=file:{tmp_path / 'ab.out'}", "-p", "StandardError=journal",
         "ab", "-c", "10", "http://127.0.0.1:8080/"]]
    # The clock before each client: the probe's is the load's start, ab's just before ab.
    clocks = started["started"]
    assert list(clocks) == [PROBE, AB] and 0 < clocks[AB] - clocks[PROBE] < 10
    assert started["netstat"] is None  # no such file: not read, never ""


def test_start_reads_the_kernel_counters_before_any_client_starts(tmp_path: Path) -> None:
    """The counters' file is the fake tools' own call log here: what the program read shows
    which calls had been made by then."""
    tools = FakeTools(tmp_path / "t")
    (started,) = load([start_request(tmp_path, netstat=str(tools.log))],
                      tools)["answers"]  # type: ignore[misc]
    assert "systemctl" in started["netstat"] and "systemd-run" not in started["netstat"]


@pytest.mark.parametrize("body", ["name=visitor", "", "100% \\n 'quoted' $HOME `x`\n", "é"])
def test_start_writes_a_posts_body_byte_for_byte(tmp_path: Path, body: str) -> None:
    target = tmp_path / "dir with space" / "body"
    assert load([start_request(tmp_path, files={str(target): body})],
                FakeTools(tmp_path / "t"))["ok"]
    assert target.read_bytes() == body.encode()


def test_a_client_that_does_not_start_ends_the_call_with_its_own_words(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"systemd-run": [
        (f"--unit={PROBE}", (1, "", "Failed to start transient service unit: Unit exists\n"))]})
    answer = load([start_request(tmp_path), {"step": "poll", "units": [AB], "log": "x"}], tools)
    assert answer["exit"] == 1 and answer["step"] == "start" and answer["answers"] == []
    assert "exited 1: Failed to start transient service unit: Unit exists" in str(answer["error"])
    assert not any(f"--unit={AB}" in c for c in tools.calls)  # nothing after it starts


def test_poll_answers_the_states_and_only_whole_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "probe.jsonl"
    log.write_bytes(b'{"t": 1}\n{"t": 2}\n{"t": 3, "half')
    tools = FakeTools(tmp_path / "t", {"systemctl": [("is-active", (3, "active\ninactive\n", ""))]})
    request = {"step": "poll", "units": [AB, PROBE], "log": str(log), "offset": 9}
    (poll,) = load([request], tools)["answers"]  # type: ignore[misc]
    assert poll["states"] == {AB: "active", PROBE: "inactive"}
    assert ["systemctl", "is-active", AB, PROBE] in tools.calls  # one call for both
    # From byte 9 on, up to the last newline: the half line waits for the next poll.
    assert (poll["log"], poll["offset"]) == ('{"t": 2}\n', 18)
    assert isinstance(poll["now"], float)
    (nothing,) = load([{**request, "log": str(tmp_path / "none")}], tools)["answers"]  # type: ignore[misc]
    assert (nothing["log"], nothing["offset"]) == ("", 9)


def stop_request(tmp_path: Path, **changes: object) -> dict[str, object]:
    return {"step": "stop", "interrupt": [AB, HEY], "wait": 0.5, "stop": [PROBE],
            "netstat": str(tmp_path / "netstat"), "journal": None,
            "read": {"ab": str(tmp_path / "ab.out"), "hey": str(tmp_path / "hey.out")},
            **changes}


def test_stop_interrupts_waits_stops_and_reads_everything_after(tmp_path: Path) -> None:
    (tmp_path / "ab.out").write_text("Complete requests: 5\n")
    (tmp_path / "netstat").write_text("TcpExt: ListenOverflows\nTcpExt: 3\n")
    tools = FakeTools(tmp_path / "t", {"systemctl": [("is-active", (3, "", ""))],
                                       "journalctl": [("", (0, '{"MESSAGE": "Started"}\n', ""))]})
    journal = ["journalctl", "--no-pager", "-o", "json", "UNIT=x y.service"]
    (stop,) = load([stop_request(tmp_path, journal=journal)], tools)["answers"]  # type: ignore[misc]
    assert stop["still_running"] == [] and isinstance(stop["stopped"], float)
    assert stop["files"] == {"ab": "Complete requests: 5\n", "hey": None}  # None: no file
    assert stop["netstat"] == "TcpExt: ListenOverflows\nTcpExt: 3\n"
    assert stop["journal"] == '{"MESSAGE": "Started"}\n'
    calls = tools.calls
    # SIGINT to both first (they print their reports), then the probe is stopped.
    assert calls[:2] == [["systemctl", "kill", "--signal=SIGINT", AB],
                         ["systemctl", "kill", "--signal=SIGINT", HEY]]
    assert calls.index(["systemctl", "is-active", "--quiet", HEY]) \
        < calls.index(["systemctl", "stop", PROBE]) < calls.index(journal)
    unread = load([stop_request(tmp_path)], FakeTools(tmp_path / "u", {
        "systemctl": [("is-active", (3, "", ""))]}))["answers"][0]  # type: ignore[index]
    assert "journal" not in unread  # not asked: not read


def test_stop_names_a_client_that_ignores_sigint(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "t", {"systemctl": [(f"--quiet {HEY}", (0, "", "")),
                                                     ("is-active", (3, "", ""))]})
    (stop,) = load([stop_request(tmp_path)], tools)["answers"]  # type: ignore[misc]
    assert stop["still_running"] == [HEY]
    # Waited for (several tries within the bound), then given up on.
    assert tools.calls.count(["systemctl", "is-active", "--quiet", HEY]) > 2


def test_listeners_and_netstat_answer_what_ss_and_the_kernel_say(tmp_path: Path) -> None:
    listening = "LISTEN 0 4096 *:8080 *:*\n"
    tools = FakeTools(tmp_path / "t", {"ss": [("sport = :8080", (0, listening, ""))]})
    (tmp_path / "netstat").write_text("TcpExt: A\nTcpExt: 1\n")
    answer = load([{"step": "listeners", "port": 8080},
                   {"step": "netstat", "path": str(tmp_path / "netstat")}], tools)
    assert answer["answers"] == [{"listeners": listening},
                                 {"netstat": "TcpExt: A\nTcpExt: 1\n"}]
    assert ["ss", "-Hltn", "sport = :8080"] in tools.calls  # one argument: no shell quoting


def test_an_unknown_step_and_a_request_that_is_no_json_are_errors_that_say_so(
        tmp_path: Path) -> None:
    answer = load([{"step": "detonate"}], FakeTools(tmp_path / "t"))
    assert answer["exit"] == 1 and "no step 'detonate'; steps: start, poll" in str(answer["error"])
    result = subprocess.run([sys.executable, str(LOAD_PY), "--json", "{"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "no JSON" in json.loads(result.stdout)["error"]


def test_a_units_stop_may_take_systemds_own_stop_timeout(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd kills a unit that has not stopped after DefaultTimeoutStopSec (90 s); the stop
    step waits longer than that, so a slow stop under TCG is not a broken-off run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("guest_load", LOAD_PY)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    calls: list[tuple[list[str], float]] = []
    monkeypatch.setattr(program, "run", lambda argv, timeout=60.0: calls.append((argv, timeout)))
    program.step_stop({"stop": ["pwt-probe.service"], "netstat": str(tmp_path / "none"),
                       "read": {}})
    assert calls == [(["systemctl", "stop", "pwt-probe.service"], program.STOP_TIMEOUT_S)]
    assert program.STOP_TIMEOUT_S > 90
