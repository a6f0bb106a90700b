"""vm/load/guest/probe.py: one_request against the real server and broken peers (one test per
failure class), and the open-loop sender against a server that stalls. All on 127.0.0.1."""

from __future__ import annotations

import io
import itertools
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import PROBE_PY, WALKTHROUGH, StartServer

from pytest_portable_upgrade.core.host import free_port
from pytest_portable_upgrade.load.timeline import Timeline, parse_probe_log, parse_probe_skips


def how_to_ask(probe_module: ModuleType) -> tuple[bytes, Any]:
    """The walkthrough's request and answer reader, as the harness passes them."""
    return (probe_module.build_request(WALKTHROUGH.request_path, WALKTHROUGH.request_host),
            probe_module.AnswerReader(WALKTHROUGH.version_regex, WALKTHROUGH.version_header,
                                      WALKTHROUGH.counter_regex))


def ask(probe_module: ModuleType, port: int, timeout: float) -> dict[str, Any]:
    record: dict[str, Any] = probe_module.one_request("127.0.0.1", port, timeout,
                                                      *how_to_ask(probe_module))
    return record


def test_one_request_records_greeting_visitor_and_status(start_server: StartServer,
                                                         probe_module: ModuleType) -> None:
    server = start_server(greeting="Hola")
    before = time.time()
    first = ask(probe_module, server.port, 5.0)
    second = ask(probe_module, server.port, 5.0)
    assert {k: first[k] for k in ("status", "greeting", "visitor")} == {
        "status": 200, "greeting": "Hola", "visitor": 1}
    assert second["visitor"] == 2
    assert "error" not in first
    assert before - 0.01 <= first["t"] <= second["t"] <= time.time()
    assert 0 <= first["latency_ms"] < 5000


def test_records_round_trip_through_the_log(start_server: StartServer,
                                            probe_module: ModuleType) -> None:
    server = start_server(greeting="Hello")
    lines = [json.dumps(ask(probe_module, server.port, 5.0))
             for _ in range(3)]
    records = parse_probe_log("\n".join(lines) + "\n")
    assert [r.visitor for r in records] == [1, 2, 3]
    assert all(r.ok and r.greeting == "Hello" for r in records)
    tl = Timeline.build(records, records[0].t, "Hello", "Hola")
    assert tl.errors == {} and tl.counter_regressions() == []


def test_closed_port_is_refused(probe_module: ModuleType) -> None:
    port = free_port()  # nothing listens there
    record = ask(probe_module, port, 2.0)
    assert record["error"] == "refused"
    assert parse_probe_log(json.dumps(record))[0].failure_class == "refused"
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


def test_close_before_any_answer_is_eof(probe_module: ModuleType,
                                        fake_peer: Callable[..., int]) -> None:
    port = fake_peer(lambda conn: None)  # reads the request, closes cleanly (FIN)
    record = ask(probe_module, port, 5.0)
    assert record["error"] == "eof"
    assert parse_probe_log(json.dumps(record))[0].failure_class == "eof"


def test_garbage_is_garbled(probe_module: ModuleType, fake_peer: Callable[..., int]) -> None:
    port = fake_peer(lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n"))
    assert ask(probe_module, port, 5.0)["error"] == "garbled"


def test_error_status_is_recorded_without_visitor(probe_module: ModuleType,
                                                  fake_peer: Callable[..., int]) -> None:
    port = fake_peer(lambda conn: conn.sendall(
        b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"))
    record = ask(probe_module, port, 5.0)
    assert record["status"] == 503
    assert "visitor" not in record and "error" not in record
    tl = Timeline.build(parse_probe_log(json.dumps(record)), 0.0, "Hello", "Hola")
    assert tl.errors == {"http-503": 1}
    assert tl.records[0].failure_class == "non-2xx"


def test_reset_is_reset(probe_module: ModuleType, fake_peer: Callable[..., int]) -> None:
    def reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    port = fake_peer(reset)
    record = ask(probe_module, port, 5.0)
    assert record["error"] == "reset"
    assert parse_probe_log(json.dumps(record))[0].failure_class == "reset"


def test_silent_peer_is_a_timeout(probe_module: ModuleType, fake_peer: Callable[..., int]
                                  ) -> None:
    release = threading.Event()
    port = fake_peer(lambda conn: release.wait(5))
    try:
        record = ask(probe_module, port, 0.3)
    finally:
        release.set()
    assert record["error"] == "timeout"
    assert 250 <= record["latency_ms"] < 3000
    assert parse_probe_log(json.dumps(record))[0].failure_class == "timeout"


def test_timeout_bounds_the_whole_request_not_each_read(probe_module: ModuleType,
                                                        fake_peer: Callable[..., int]) -> None:
    """A peer that trickles a byte every 0.1 s never lets one recv wait 0.5 s; the request
    must still end at its 0.5 s bound."""
    def trickle(conn: socket.socket) -> None:
        for _ in range(30):
            try:
                conn.sendall(b"H")
            except OSError:  # the probe gave up and closed: that is the point
                return
            time.sleep(0.1)

    port = fake_peer(trickle)
    record = ask(probe_module, port, 0.5)
    assert record["error"] == "timeout"
    assert 450 <= record["latency_ms"] < 1500


# --- the open-loop sender ----------------------------------------------------------------------
class StallingServer:
    """A listening socket on 127.0.0.1 whose accept loop starts only after ``stall_s``: like a
    host socket while no service runs, connections wait in the kernel's queue meanwhile. Each
    answer is ``Hello! You are visitor #N!``."""

    def __init__(self, stall_s: float, serve: bool = True) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = int(self.sock.getsockname()[1])
        self.release = threading.Event()
        self.visitors = 0
        self.thread = threading.Thread(target=self._run, args=(stall_s, serve), daemon=True)
        self.thread.start()

    def _run(self, stall_s: float, serve: bool) -> None:
        if self.release.wait(stall_s) or not serve:
            return
        self.sock.settimeout(0.2)
        while not self.release.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                conn.recv(4096)
                self.visitors += 1
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                             + f"Hello! You are visitor #{self.visitors}!\n".encode())

    def close(self) -> None:
        self.release.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def stalling_server() -> Iterator[Callable[..., StallingServer]]:
    servers: list[StallingServer] = []

    def start(stall_s: float, serve: bool = True) -> StallingServer:
        servers.append(StallingServer(stall_s, serve))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def run_probe(probe_module: ModuleType, port: int, rate: float, seconds: float,
              max_in_flight: int = 200, grace: float = 3.0, timeout: float = 10.0) -> str:
    out = io.StringIO()
    probe = probe_module.OpenLoopProbe("127.0.0.1", port, rate, timeout, max_in_flight, out,
                                       *how_to_ask(probe_module))
    probe.run(threading.Event(), seconds, grace)
    return out.getvalue()


def test_open_loop_keeps_sending_while_the_server_stalls(
        probe_module: ModuleType, stalling_server: Callable[..., StallingServer]) -> None:
    """Nothing is accepted for the first 1.0 s. A closed-loop probe would send one request
    and wait; the open-loop one sends every 50 ms throughout, and what it sent into the
    stall shows up as latency that shrinks the later it was sent."""
    server = stalling_server(stall_s=1.0)
    text = run_probe(probe_module, server.port, rate=20, seconds=2.0)
    records = parse_probe_log(text)
    assert parse_probe_skips(text) == []
    assert 36 <= len(records) <= 41
    assert all(r.ok and r.greeting == "Hello" for r in records), text
    sends = [r.t for r in records]
    spacing = [b - a for a, b in itertools.pairwise(sends)]
    assert max(spacing) < 0.15, spacing  # never a pause in sending
    start = sends[0]
    stalled = [r for r in records if r.t < start + 0.8]
    assert len(stalled) >= 14
    # Sent into the stall: waited until about start + 1.0 s, so latency ~ (1.0 - offset).
    for r in stalled:
        assert r.latency_ms / 1000 == pytest.approx(1.0 - (r.t - start), abs=0.15), r
    assert stalled[0].latency_ms > 800
    late = [r for r in records if r.t > start + 1.2]
    assert late and max(r.latency_ms for r in late) < 100
    # The queue did not reorder the count: visitors go up in send order.
    assert [r.visitor for r in records] == sorted(r.visitor for r in records)


def test_in_flight_bound_skips_sends_and_says_so(
        probe_module: ModuleType, stalling_server: Callable[..., StallingServer]) -> None:
    """Never accepted: 3 requests fill the bound, every later slot is written as skipped, and
    the 3 still in flight when sending stops are written as abandoned after the grace."""
    server = stalling_server(stall_s=60, serve=False)
    began = time.monotonic()
    text = run_probe(probe_module, server.port, rate=20, seconds=0.5, max_in_flight=3,
                     grace=0.3)
    assert time.monotonic() - began < 2.0  # bounded: run time + grace
    records, skips = parse_probe_log(text), parse_probe_skips(text)
    assert [r.error for r in records] == ["abandoned"] * 3
    assert all(r.failure_class == "other" and r.latency_ms >= 300 for r in records)
    assert 6 <= len(skips) <= 8  # the other slots of 0.5 s at 20/s
    lines = [json.loads(ln) for ln in text.splitlines()]
    assert {ln["in_flight"] for ln in lines if "skipped" in ln} == {3}
    tl = Timeline.build(records, records[0].t, "Hello", "Hola", skipped=skips)
    assert tl.skipped == skips and tl.errors == {"abandoned": 3}


def test_probe_script_runs_with_plain_python_and_stops_on_sigterm(
        start_server: StartServer, tmp_path: Path) -> None:
    """As the guest runs it: a separate python3, the real server, SIGTERM from systemctl stop."""
    server = start_server(greeting="Hola")
    out = tmp_path / "probe.jsonl"
    proc = subprocess.Popen([sys.executable, str(PROBE_PY), "--port", str(server.port),
                             *WALKTHROUGH.client_args(),
                             "--rate", "40", "--max-seconds", "60", "--out", str(out)],
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(parse_probe_log(
                out.read_text() if out.exists() else "")) < 20:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    records = parse_probe_log(out.read_text())
    assert len(records) >= 20
    assert all(r.ok and r.greeting == "Hola" for r in records)
    assert [r.visitor for r in records] == list(range(1, len(records) + 1))


def test_probe_script_refuses_a_rate_of_zero(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(PROBE_PY), "--port", "1",
                             *WALKTHROUGH.client_args(), "--rate", "0", "--out",
                             str(tmp_path / "p.jsonl")], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "--rate must be positive" in result.stderr


# --- POST ------------------------------------------------------------------------------------


def test_build_request_get_and_post(probe_module: ModuleType) -> None:
    assert probe_module.build_request("/x", "probe") == b"GET /x HTTP/1.0\r\nHost: probe\r\n\r\n"
    post = probe_module.build_request("/x", "probe", "1.1", "POST", "¡hola=1",
                                      "application/x-www-form-urlencoded")
    head, _, body = post.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /x HTTP/1.1", b"Host: probe",
        b"Content-Type: application/x-www-form-urlencoded", b"Content-Length: 8"]
    assert body == "¡hola=1".encode()  # the length is in bytes
    empty = probe_module.build_request("/", "probe", "1.0", "POST", "")
    assert empty.endswith(b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize(("method", "body"), [("GET", "x"), ("POST", None), ("PUT", "x")])
def test_build_request_refuses_a_body_that_does_not_fit(probe_module: ModuleType, method: str,
                                                        body: str | None) -> None:
    with pytest.raises(ValueError, match="a GET takes no body and a POST one"):
        probe_module.build_request("/", "probe", "1.0", method, body)


def test_one_post_is_answered_and_counted(start_server: StartServer,
                                          probe_module: ModuleType) -> None:
    server = start_server(greeting="Hola")
    request = probe_module.build_request("/", "probe", "1.0", "POST", "name=visitor")
    _, reader = how_to_ask(probe_module)
    first = probe_module.one_request("127.0.0.1", server.port, 5.0, request, reader)
    second = ask(probe_module, server.port, 5.0)  # a GET after it
    assert {k: first[k] for k in ("status", "greeting", "visitor")} == {
        "status": 200, "greeting": "Hola", "visitor": 1}
    assert second["visitor"] == 2


def test_probe_once_posts_what_the_subject_gives(start_server: StartServer) -> None:
    server = start_server(greeting="Hello")
    result = subprocess.run([sys.executable, str(PROBE_PY), "--once", "--port",
                             str(server.port), *WALKTHROUGH.client_args("POST")],
                            capture_output=True, text=True, timeout=30, check=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (record["greeting"], record["visitor"]) == ("Hello", 1)


def test_probe_script_refuses_post_without_body(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(PROBE_PY), "--once", "--port", "1",
                             *WALKTHROUGH.client_args(), "--method", "POST"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "a POST needs one" in result.stderr


def test_holders_post_on_their_keepalive_connections(start_server: StartServer,
                                                     tmp_path: Path) -> None:
    server = start_server(greeting="Hola")
    out = tmp_path / "holders.jsonl"
    holders = PROBE_PY.with_name("hold_connections.py")
    subprocess.run([sys.executable, str(holders), "--port", str(server.port),
                    *WALKTHROUGH.client_args("POST"), "--connections", "2", "--interval",
                    "0.1", "--max-seconds", "1", "--out", str(out)],
                   capture_output=True, text=True, timeout=30, check=True)
    records = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(records) >= 4
    assert all(r["status"] == 200 and r["greeting"] == "Hola" and r["gen"] == 0
               for r in records), records[:3]
    assert sorted(r["visitor"] for r in records) == list(range(1, len(records) + 1))


def first_request_of(argv: list[str]) -> bytes:
    """What a client started with ``argv`` (its --port appended) sends first: a listener on
    127.0.0.1 takes it, answers it with Connection: close, and the client is stopped."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(10)
        proc = subprocess.Popen([*argv, "--port", str(listener.getsockname()[1])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"name=visitor"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                body = b"Hola! You are visitor #1!\n"
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return data


@pytest.mark.parametrize("client", ["probe", "holders"])
def test_clients_send_the_subjects_post(client: str, tmp_path: Path) -> None:
    script = PROBE_PY if client == "probe" else PROBE_PY.with_name("hold_connections.py")
    extra = (["--once"] if client == "probe" else
             ["--connections", "1", "--max-seconds", "5", "--out", str(tmp_path / "h.jsonl")])
    sent = first_request_of([sys.executable, str(script), *WALKTHROUGH.client_args("POST"),
                             *extra])
    head, _, body = sent.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == (b"POST / HTTP/1.0" if client == "probe" else b"POST / HTTP/1.1")
    assert b"Content-Type: application/x-www-form-urlencoded" in lines
    assert b"Content-Length: 12" in lines
    assert body == b"name=visitor"
