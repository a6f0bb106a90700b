"""vm/guest/probe.py: one_request against the real server and against broken peers."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
from support import StartServer

from vm.host import free_port
from vm.timeline import Timeline, parse_probe_log


def test_one_request_records_greeting_visitor_and_status(start_server: StartServer,
                                                         probe_module: ModuleType) -> None:
    server = start_server(greeting="Hola")
    before = time.time()
    first = probe_module.one_request("127.0.0.1", server.port, 5.0)
    second = probe_module.one_request("127.0.0.1", server.port, 5.0)
    assert {k: first[k] for k in ("status", "greeting", "visitor")} == {
        "status": 200, "greeting": "Hola", "visitor": 1}
    assert second["visitor"] == 2
    assert "error" not in first
    assert before - 0.01 <= first["t"] <= second["t"] <= time.time()
    assert 0 <= first["latency_ms"] < 5000


def test_records_round_trip_through_the_log(start_server: StartServer,
                                            probe_module: ModuleType) -> None:
    server = start_server(greeting="Hello")
    lines = [json.dumps(probe_module.one_request("127.0.0.1", server.port, 5.0))
             for _ in range(3)]
    records = parse_probe_log("\n".join(lines) + "\n")
    assert [r.visitor for r in records] == [1, 2, 3]
    assert all(r.ok and r.greeting == "Hello" for r in records)
    tl = Timeline.build(records, records[0].t, "Hello", "Hola")
    assert tl.errors == {} and tl.counter_regressions() == []


def test_closed_port_is_connect_refused(probe_module: ModuleType) -> None:
    port = free_port()  # nothing listens there
    record = probe_module.one_request("127.0.0.1", port, 2.0)
    assert record["error"] == "connect-refused"
    assert "status" not in record and "visitor" not in record
    assert record["latency_ms"] >= 0


@pytest.fixture
def fake_peer() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A one-connection server on 127.0.0.1 that does ``handle(conn)``; returns its port."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(handle: Callable[[socket.socket], None]) -> int:
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        listeners.append(ls)

        def run() -> None:
            conn, _ = ls.accept()
            with conn:
                conn.settimeout(5)
                conn.recv(4096)
                handle(conn)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return int(ls.getsockname()[1])

    yield start
    for ls in listeners:
        ls.close()
    for thread in threads:
        thread.join(timeout=5)


def test_no_answer_at_all_is_empty(probe_module: ModuleType, fake_peer: Callable[..., int]
                                   ) -> None:
    port = fake_peer(lambda conn: None)
    assert probe_module.one_request("127.0.0.1", port, 5.0)["error"] == "empty"


def test_garbage_is_garbled(probe_module: ModuleType, fake_peer: Callable[..., int]) -> None:
    port = fake_peer(lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n"))
    assert probe_module.one_request("127.0.0.1", port, 5.0)["error"] == "garbled"


def test_error_status_is_recorded_without_visitor(probe_module: ModuleType,
                                                  fake_peer: Callable[..., int]) -> None:
    port = fake_peer(lambda conn: conn.sendall(
        b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"))
    record = probe_module.one_request("127.0.0.1", port, 5.0)
    assert record["status"] == 503
    assert "visitor" not in record and "error" not in record
    tl = Timeline.build(parse_probe_log(json.dumps(record)), 0.0, "Hello", "Hola")
    assert tl.errors == {"http-503": 1}


def test_reset_is_reset(probe_module: ModuleType, fake_peer: Callable[..., int]) -> None:
    def reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    port = fake_peer(reset)
    assert probe_module.one_request("127.0.0.1", port, 5.0)["error"] == "reset"


def test_silent_peer_is_a_timeout(probe_module: ModuleType, fake_peer: Callable[..., int]
                                  ) -> None:
    release = threading.Event()
    port = fake_peer(lambda conn: release.wait(5))
    try:
        record = probe_module.one_request("127.0.0.1", port, 0.3)
    finally:
        release.set()
    assert record["error"] == "timeout"
    assert 250 <= record["latency_ms"] < 3000
