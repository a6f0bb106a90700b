"""The restart gap as the service manager logged it: old main process gone -> new one started.

LoadRun reads the service's journal in the round trip that stops the load (``journal_argv``:
the manager's own lines about the unit, ``journalctl -o json``). This module is the pure part:
the JSON lines in, the gap out.

- *gone*: the first line, at or after the load start, that says the old main process ended:
  "Main process exited, code=…" (logged when it did not exit 0), "Deactivated successfully.",
  "Failed with result '…'." or "Stopped …", whichever comes first;
- *started*: the first "Started …" line after it (for ``Type=simple`` the manager logs it as it
  forks the new process, for ``Type=notify`` when the process says it is ready).

Lines are recognised by their MESSAGE_ID (the same in every systemd version, whatever the
locale or ``StatusUnitFormat=``), else by the message's words. No gone line, or none
started after it: no gap (None), never 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# systemd's sd-messages.h
GONE_IDS = frozenset({
    "98e322203f7a4ed290d09fe03c09fe15",  # SD_MESSAGE_UNIT_PROCESS_EXIT
    "7ad2d189f7e94e70a38c781354912448",  # SD_MESSAGE_UNIT_SUCCESS
    "d9b373ed55a64feb8242e02dbe79a49c",  # SD_MESSAGE_UNIT_FAILURE_RESULT
    "9d1aaa27d60140bd96365438aad20286",  # SD_MESSAGE_UNIT_STOPPED
})
STARTED_ID = "39f53479d3a045ac8e11786248231fbf"  # SD_MESSAGE_UNIT_STARTED
GONE_WORDS = ("Main process exited", "Deactivated successfully", "Failed with result")
FIELDS = ("MESSAGE", "MESSAGE_ID", "UNIT", "USER_UNIT", "_PID")


def journal_argv(unit: str, since: float) -> list[str]:
    """The guest command: the service manager's lines about ``unit`` (``UNIT=`` from PID 1,
    ``USER_UNIT=`` from a user's manager) since ``since`` (epoch s), one JSON object a line;
    bounded to the last 500."""
    return ["journalctl", "--no-pager", "-o", "json", f"--output-fields={','.join(FIELDS)}",
            "--since", f"@{int(since)}", "-n", "500", f"UNIT={unit}", "+", f"USER_UNIT={unit}"]


@dataclass(frozen=True)
class JournalEntry:
    at: float  # epoch seconds (__REALTIME_TIMESTAMP)
    message: str
    message_id: str | None = None
    unit: str | None = None  # UNIT or USER_UNIT
    pid: int | None = None


def _text(value: Any) -> str | None:
    """journalctl -o json gives a field as a string, or as a list of bytes when it is not
    valid UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode(errors="replace")
    return None


def parse_journal_json(text: str) -> list[JournalEntry]:
    """The entries of ``journalctl -o json`` output, by time. A line that is not a JSON object
    with a timestamp and a message is left out (the journal is evidence, not a source of
    errors)."""
    entries = []
    for line in text.splitlines():
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(raw, dict):
            continue
        stamp, message = raw.get("__REALTIME_TIMESTAMP"), _text(raw.get("MESSAGE"))
        if not (isinstance(stamp, str) and stamp.isdigit()) or message is None:
            continue
        pid = raw.get("_PID")
        entries.append(JournalEntry(
            at=int(stamp) / 1_000_000, message=message, message_id=_text(raw.get("MESSAGE_ID")),
            unit=_text(raw.get("UNIT")) or _text(raw.get("USER_UNIT")),
            pid=int(pid) if isinstance(pid, str) and pid.isdigit() else None,
        ))
    return sorted(entries, key=lambda e: e.at)


def _is_gone(e: JournalEntry) -> bool:
    if e.message_id is not None:
        return e.message_id in GONE_IDS
    return any(w in e.message for w in GONE_WORDS) or e.message.startswith("Stopped ")


def _is_started(e: JournalEntry) -> bool:
    if e.message_id is not None:
        return e.message_id == STARTED_ID
    return e.message.startswith("Started ")


@dataclass(frozen=True)
class RestartGap:
    gone: JournalEntry
    started: JournalEntry

    @property
    def seconds(self) -> float:
        return self.started.at - self.gone.at


def journal_restart_gap(entries: list[JournalEntry], unit: str | None = None,
                        after: float | None = None) -> RestartGap | None:
    """Gone -> started (see the module's docstring) among ``entries`` at or after ``after``;
    only ``unit``'s when given (an entry that names no unit is kept)."""
    mine = [e for e in entries if (after is None or e.at >= after)
            and (unit is None or e.unit in (None, unit))]
    gone = next((e for e in mine if _is_gone(e)), None)
    if gone is None:
        return None
    later = mine[mine.index(gone) + 1:]
    started = next((e for e in later if _is_started(e)), None)
    return None if started is None else RestartGap(gone, started)
