"""The one protocol of the programs the harness ships to the guest, seen from the host.

A guest program (vm/systemd/guest/portable.py: the portable service's steps;
vm/load/guest/load.py: the load's) goes to GUEST_DIR once per boot (``GuestProgram.ship``)
and is called with its steps in one SSH round trip: ``python3 /run/pwt/<program> --json
'[{"step": …}, …]'``. That line is what run.log shows and what a person pastes into a root
shell in the guest to replay the steps. The program prints one JSON line: ``{"ok": true,
"answers": [one per step], "seconds": [...]}``, or ``{"ok": false, "step": …, "error": "<the
guest's own words>", "answers": [the steps before it]}`` with exit status 1.

A command run after the call in the same round trip (``and_then``) prints below that line
(``printed_after``): the load's start after the attach, the facts afterwards after the stop.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.machine.machine import Machine

GUEST_DIR = "/run/pwt"  # where the guest programs and the clients' files live (a tmpfs)
Request = dict[str, Any]


@dataclass(frozen=True)
class GuestProgram:
    """``source`` shipped to GUEST_DIR under its own name, with ``companions`` beside it (the
    files it loads or starts: probe.py), once per boot."""

    source: Path
    companions: tuple[Path, ...] = ()

    @property
    def path(self) -> str:
        return f"{GUEST_DIR}/{self.source.name}"

    def ship(self, machine: Machine) -> None:
        """Upload the program and its companions unless this boot already has these bytes."""
        for f in (*self.companions, self.source):
            machine.copy_from_host(f, f"{GUEST_DIR}/{f.name}", mode="0755", once=True)

    def line(self, requests: list[Request]) -> str:
        """The guest command line of one call (quoted for the shell)."""
        return shlex.join(["python3", self.path, "--json",
                           json.dumps(requests, separators=(",", ":"))])

    def command(self, machine: Machine, requests: list[Request]) -> str:
        """``line``, the program shipped first."""
        self.ship(machine)
        return self.line(requests)


def answer_line(stdout: str) -> int:
    """The index of the guest program's answer among the lines of ``stdout``: the first JSON
    object with "ok" (the program prints nothing else; a command run after it in the same
    round trip prints below it); -1 when there is none."""
    for i, line in enumerate(stdout.split("\n")):
        if line.startswith("{"):
            try:
                if "ok" in json.loads(line):
                    return i
            except ValueError:
                continue
    return -1


def answers_of(result_stdout: str, result_stderr: str, rc: int) -> dict[str, Any]:
    """The guest program's one JSON line (``answer_line``); GuestError with what it printed
    when there is none (it did not run, or died)."""
    i = answer_line(result_stdout)
    answer: dict[str, Any] = json.loads(result_stdout.split("\n")[i]) if i >= 0 else {}
    if "ok" not in answer:
        raise GuestError(f"the guest program gave no answer (exit {rc}): "
                         f"{(result_stdout + result_stderr).strip()[-600:] or 'no output'}")
    return answer


def and_then(command: str, then: str | None) -> str:
    """``command`` followed by ``then`` in the same round trip, only when ``command``
    succeeded (a failed step starts nothing after it)."""
    return command if then is None else f"{command} && {{ {then}; }}"


def printed_after(stdout: str) -> str:
    """What a command composed with ``and_then`` printed: everything below the answer."""
    return stdout.split("\n", answer_line(stdout) + 1)[-1]
