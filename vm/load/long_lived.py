"""Host side of the long-lived keep-alive clients: what the guest script
(vm/load/guest/hold_connections.py) logged, read and summed up across a reattach."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class HolderRecord:
    conn: int
    gen: int
    t: float
    latency_ms: float = 0.0
    status: int | None = None
    greeting: str | None = None
    visitor: int | None = None
    event: str | None = None
    error: str | None = None
    detail: str | None = None


def parse_holder_log(text: str) -> list[HolderRecord]:
    records = []
    for line in text.splitlines():
        if line.strip():
            try:
                records.append(HolderRecord(**json.loads(line)))
            except json.JSONDecodeError:
                continue  # a torn last line
    return sorted(records, key=lambda r: r.t)


@dataclass(frozen=True)
class HolderSummary:
    connections: int
    requests: int
    answered: int
    broken: int  # connections that died without an answer (reset, EOF, timeout)
    server_closed: int  # answers with Connection: close: the client had to reconnect
    connect_errors: int
    switched_in_place: int  # connections that saw old then new greeting without reconnecting

    @property
    def intact(self) -> bool:
        """Every connection survived and switched versions on the same connection."""
        return (self.broken == 0 and self.server_closed == 0 and self.connect_errors == 0
                and self.switched_in_place == self.connections and self.connections > 0)

    def describe(self) -> str:
        return (f"{self.connections} connections, {self.requests} requests: {self.broken} broken,"
                f" {self.server_closed} closed by the server, {self.connect_errors} connect"
                f" errors, {self.switched_in_place} switched versions on the same connection")


def summarise(records: list[HolderRecord], connections: int, old: str, new: str) -> HolderSummary:
    switched = 0
    for conn in range(connections):
        first_gen = [r for r in records if r.conn == conn and r.gen == 0]
        greetings = [r.greeting for r in first_gen if r.greeting]
        if old in greetings and new in greetings and greetings.index(new) > greetings.index(old):
            switched += 1
    return HolderSummary(
        connections=connections,
        requests=len(records),
        answered=sum(1 for r in records if r.status == 200),
        broken=sum(1 for r in records if r.error == "broken"),
        server_closed=sum(1 for r in records if r.event == "server-closed"),
        connect_errors=sum(1 for r in records if (r.error or "").startswith("connect-")),
        switched_in_place=switched,
    )
