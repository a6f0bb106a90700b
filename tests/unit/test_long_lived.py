"""vm/load/long_lived.py: the long-lived clients' summary: what counts as intact, broken or
reconnected."""

from __future__ import annotations

import json

from pytest_portable_upgrade.load.long_lived import HolderRecord, parse_holder_log, summarise


def answered(conn: int, t: float, greeting: str, gen: int = 0, **extra: object) -> HolderRecord:
    return HolderRecord(conn=conn, gen=gen, t=t, latency_ms=3, status=200, greeting=greeting,
                        visitor=int(t * 10), **extra)  # type: ignore[arg-type]


def test_connections_that_switch_in_place_are_intact() -> None:
    records = [answered(c, t, "Hello") for c in range(2) for t in (1.0, 1.2)]
    records += [answered(c, t, "Hola") for c in range(2) for t in (5.0, 5.2)]
    summary = summarise(records, 2, "Hello", "Hola")
    assert summary.intact, summary.describe()
    assert summary.switched_in_place == 2 and summary.requests == 8 and summary.answered == 8


def test_a_reconnect_is_not_a_switch_in_place() -> None:
    records = [answered(0, 1.0, "Hello"), answered(0, 2.0, "Hello", event="server-closed"),
               answered(0, 6.0, "Hola", gen=1)]
    summary = summarise(records, 1, "Hello", "Hola")
    assert summary.server_closed == 1 and summary.switched_in_place == 0
    assert not summary.intact


def test_broken_connections_are_counted() -> None:
    records = [answered(0, 1.0, "Hello"),
               HolderRecord(conn=0, gen=0, t=2.0, error="broken", detail="eof-before-answer"),
               answered(0, 6.0, "Hola", gen=1)]
    summary = summarise(records, 1, "Hello", "Hola")
    assert summary.broken == 1 and not summary.intact
    assert "1 broken" in summary.describe()


def test_a_connection_that_never_saw_the_new_version_is_not_intact() -> None:
    summary = summarise([answered(0, 1.0, "Hello"), answered(0, 1.2, "Hello")], 1,
                        "Hello", "Hola")
    assert summary.switched_in_place == 0 and not summary.intact


def test_no_connections_is_not_intact() -> None:
    assert not summarise([], 0, "Hello", "Hola").intact


def test_parse_skips_a_torn_line() -> None:
    good = json.dumps({"conn": 0, "gen": 0, "t": 1.0, "status": 200, "greeting": "Hello"})
    records = parse_holder_log(good + "\n" + '{"conn": 1, "ge')
    assert len(records) == 1 and records[0].greeting == "Hello"
