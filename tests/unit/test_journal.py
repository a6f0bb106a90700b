"""vm/load/journal.py: the restart gap from the service manager's journal lines.

The journal_*.jsonl samples are written by hand in the shape of ``journalctl -o json`` with
systemd 252's messages (see tests/unit/data/README.md); journal_reattach.jsonl carries the
times of the probe_restart recording, so both gaps can be compared."""

from __future__ import annotations

import json
import shlex

import pytest
from support import DATA

from pytest_portable_upgrade.load.journal import (
    JournalEntry,
    journal_argv,
    journal_restart_gap,
    parse_journal_json,
)
from pytest_portable_upgrade.load.latency import probe_restart_gap
from pytest_portable_upgrade.load.timeline import Timeline, parse_probe_log

UNIT = "portable-walkthrough.service"


def sample(name: str) -> list[JournalEntry]:
    return parse_journal_json((DATA / f"journal_{name}.jsonl").read_text())


def test_the_command_asks_for_the_managers_lines_about_the_unit_since_the_load() -> None:
    command = shlex.join(journal_argv(UNIT, 1795770304.9))
    assert command.startswith("journalctl --no-pager -o json --output-fields=MESSAGE,")
    assert " --since @1795770304 " in command
    assert command.endswith(f" UNIT={UNIT} + USER_UNIT={UNIT}")
    assert " -n 500 " in command  # bounded
    # One argument each: the guest program runs it without a shell.
    assert journal_argv("x y.service", 0)[-3:] == ["UNIT=x y.service", "+", "USER_UNIT=x y.service"]


def test_a_reattach_gap_is_deactivated_to_started() -> None:
    entries = sample("reattach")
    assert len(entries) == 8 and entries[0].at == 1795770281.402
    gap = journal_restart_gap(entries, UNIT, after=1795770304.1376)
    assert gap is not None
    assert gap.gone.message == f"{UNIT}: Deactivated successfully."
    assert gap.started.message.startswith(f"Started {UNIT} - ") and "v2" in gap.started.message
    assert gap.seconds == pytest.approx(1.4738, abs=1e-4)


def test_without_the_load_start_the_attach_before_it_is_not_taken_for_the_restart() -> None:
    """The first Started (the attach, before the load) precedes any gone line: still the
    reattach's pair. With ``after`` past the gone line, there is no restart left to see."""
    entries = sample("reattach")
    gap = journal_restart_gap(entries, UNIT)
    assert gap is not None and gap.seconds == pytest.approx(1.4738, abs=1e-4)
    assert journal_restart_gap(entries, UNIT, after=1795770307.2) is None


def test_the_journal_gap_agrees_with_the_probes() -> None:
    """The same restart seen two ways (probe_restart's times): v1 gone at SIGTERM + 22 ms,
    v2 started 1.5 s after the SIGTERM; the probe's first waiting request was sent 60 ms after
    the SIGTERM and answered as v2 began serving."""
    meta = json.loads((DATA / "probe_restart.meta.json").read_text())
    tl = Timeline.build(parse_probe_log((DATA / "probe_restart.jsonl").read_text()),
                        meta["t0"], "Hello", "Hola")
    probe = probe_restart_gap(tl, meta["reattach_started"])
    journal = journal_restart_gap(sample("reattach"), UNIT, after=meta["t0"])
    assert probe is not None and journal is not None
    assert probe[1] - probe[0] == pytest.approx(journal.seconds, abs=0.1)
    assert probe[0] == pytest.approx(journal.gone.at, abs=0.1)


def test_by_words_when_the_lines_carry_no_message_id() -> None:
    """A naive server killed by SIGTERM: "Main process exited" is the first gone line."""
    gap = journal_restart_gap(sample("killed"), UNIT)
    assert gap is not None
    assert gap.gone.message.endswith("Main process exited, code=killed, status=15/TERM")
    assert gap.seconds == pytest.approx(2.25)


def test_a_user_managers_lines_name_the_unit_in_user_unit() -> None:
    entries = sample("user")
    assert {(e.unit, e.pid) for e in entries} == {(UNIT, 1187)}
    gap = journal_restart_gap(entries, UNIT)
    assert gap is not None and gap.seconds == pytest.approx(2.22)


def test_the_message_id_decides_over_the_words() -> None:
    """"Stopping" is not gone, "Consumed" is not started, whatever their words."""
    lines = [
        JournalEntry(10.0, "Stopped (well, stopping)", "de5b426a63be47a7b6ac3eaac82e2f6f"),
        JournalEntry(11.0, f"{UNIT}: Deactivated successfully.",
                     "7ad2d189f7e94e70a38c781354912448"),
        JournalEntry(11.5, "Started (not really): Consumed 1s CPU time.",
                     "ae8f7b866b0347b9af31fe1c80b127c0"),
        JournalEntry(12.0, f"Started {UNIT}.", "39f53479d3a045ac8e11786248231fbf"),
    ]
    gap = journal_restart_gap(lines)
    assert gap is not None and (gap.gone.at, gap.started.at) == (11.0, 12.0)


def test_other_units_lines_are_left_out() -> None:
    lines = [JournalEntry(1.0, "Stopped other.service.", unit="other.service"),
             JournalEntry(2.0, "Started other.service.", unit="other.service"),
             JournalEntry(3.0, f"{UNIT}: Deactivated successfully.", unit=UNIT),
             JournalEntry(4.5, f"Started {UNIT}.", unit=UNIT)]
    gap = journal_restart_gap(lines, UNIT)
    assert gap is not None and gap.seconds == 1.5
    assert journal_restart_gap(lines[:2], UNIT) is None


def test_no_gap_without_a_new_start_never_zero() -> None:
    """v2 never started (a refused update, a unit that failed to start): no gap."""
    entries = [e for e in sample("reattach") if e.at < 1795770308.0]
    assert journal_restart_gap(entries, UNIT, after=1795770300.0) is None
    assert journal_restart_gap([], UNIT) is None


def test_malformed_lines_are_left_out() -> None:
    good = (DATA / "journal_killed.jsonl").read_text().splitlines()
    binary = json.dumps({"__REALTIME_TIMESTAMP": "1795771008270000",
                         "MESSAGE": list(b"Started portable-walkthrough.service \xff."),
                         "UNIT": UNIT, "_PID": "1"})
    text = "\n".join([
        "-- No entries --", "[1, 2]", '{"MESSAGE": "Started x."}',  # no timestamp
        '{"__REALTIME_TIMESTAMP": "soon", "MESSAGE": "Started x."}',
        '{"__REALTIME_TIMESTAMP": "1795771000000000", "MESSAGE": null}',  # too large for -o json
        *good[:4], binary, good[4][:40],  # torn
    ])
    entries = parse_journal_json(text)
    assert len(entries) == 5
    assert entries[-1].message == "Started portable-walkthrough.service \ufffd."
    gap = journal_restart_gap(entries, UNIT)
    assert gap is not None and gap.seconds == pytest.approx(2.25)
