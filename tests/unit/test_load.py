"""vm/load.py: the commands LoadRun sends to the guest (a recording fake, no VM)."""

from __future__ import annotations

from pathlib import Path

from support import WALKTHROUGH

from vm.config import LoadSettings
from vm.load import PROBE_UNIT, LoadRun


class RecordingMachine:
    """Answers ``date`` with a fixed epoch and records every command."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def succeed(self, command: str, timeout: float = 120.0) -> str:
        self.commands.append(command)
        return "1700000000.5\n" if command.startswith("date") else ""

    def copy_from_host(self, source: Path, target: str, mode: str = "0644") -> None:
        self.commands.append(f"copy {source.name} {target}")


def probe_command(settings: LoadSettings) -> str:
    machine = RecordingMachine()
    run = LoadRun(machine, settings, keepalive=False,  # type: ignore[arg-type]
                  url="http://127.0.0.1:8080/", probe_port=8080,
                  client_args=WALKTHROUGH.client_args())
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
