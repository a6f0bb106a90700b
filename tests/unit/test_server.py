"""images/server.py: run for real on 127.0.0.1 with fake socket activation (see conftest),
plus its request parsing and response rendering as functions."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from support import (
    LAUNCHER,
    SERVER_PY,
    StartServer,
    at_eof,
    clean_env,
    connect,
    get,
    read_response,
    read_to_eof,
    request,
    send_request,
)

# --- functions -------------------------------------------------------------------------------


def test_parse_request_head(server_module: ModuleType) -> None:
    head = b"GET /x HTTP/1.0\r\nHost: a\r\nConnection:  Keep-Alive \r\nUser-Agent: ApacheBench/2.3"
    method, version, headers = server_module.parse_request_head(head)
    assert (method, version) == ("GET", "HTTP/1.0")
    assert headers == {"host": "a", "connection": "Keep-Alive", "user-agent": "ApacheBench/2.3"}


def test_parse_request_head_keeps_colons_in_values_and_skips_junk(
        server_module: ModuleType) -> None:
    _m, _v, headers = server_module.parse_request_head(
        b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nno colon here")
    assert headers == {"host": "127.0.0.1:8080"}


@pytest.mark.parametrize("head", [b"GET /", b"GET / FTP/1.0", b"", b"GET / HTTP/1.0 extra",
                                  b"\r\nHost: x"])
def test_parse_request_head_rejects_bad_request_lines(server_module: ModuleType,
                                                      head: bytes) -> None:
    with pytest.raises(ValueError, match="bad request line"):
        server_module.parse_request_head(head)


@pytest.mark.parametrize(("version", "connection", "expected"), [
    ("HTTP/1.0", None, False),
    ("HTTP/1.0", "keep-alive", True),
    ("HTTP/1.0", "Keep-Alive", True),
    ("HTTP/1.0", "close", False),
    ("HTTP/1.1", None, True),
    ("HTTP/1.1", "keep-alive", True),
    ("HTTP/1.1", "close", False),
    ("HTTP/1.1", "Close", False),
])
def test_wants_keepalive(server_module: ModuleType, version: str, connection: str | None,
                         expected: bool) -> None:
    headers = {} if connection is None else {"connection": connection}
    assert server_module.wants_keepalive(version, headers) is expected


def test_render_response(server_module: ModuleType) -> None:
    raw = server_module.render_response("Hola", 42, True)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert "Content-Type: text/plain; charset=utf-8" in lines
    assert "Connection: keep-alive" in lines
    assert body == b"Hola! You are visitor #42!\n"
    assert f"Content-Length: {len(body)}" in lines


def test_render_response_close_and_content_length_in_bytes(server_module: ModuleType) -> None:
    raw = server_module.render_response("¡Olá", 7, False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == "¡Olá! You are visitor #7!\n".encode()
    assert f"Content-Length: {len(body)}".encode() in head  # bytes, not characters
    assert b"Connection: close" in head


def test_render_bad_request(server_module: ModuleType) -> None:
    raw = server_module.render_response("Hola", 0, False, "400 Bad Request")
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert raw.endswith(b"\r\n\r\nbad request\n")
    assert b"Content-Length: 12\r\n" in raw


def test_counter_class_persists(server_module: ModuleType, tmp_path: Path) -> None:
    counter = server_module.Counter(str(tmp_path))
    assert counter.value == 0
    assert [counter.increment() for _ in range(3)] == [1, 2, 3]
    assert (tmp_path / "visitors").read_text() == "3\n"
    assert server_module.Counter(str(tmp_path)).value == 3
    assert not (tmp_path / "visitors.tmp").exists()


# --- the real server ---------------------------------------------------------------------------


def test_counts_visitors(start_server: StartServer) -> None:
    server = start_server(greeting="Hola")
    first = get(server.port)
    second = get(server.port)
    assert first.status_line == "HTTP/1.1 200 OK"
    assert first.text == "Hola! You are visitor #1!\n"
    assert second.text == "Hola! You are visitor #2!\n"
    assert first.headers["connection"] == "close"
    assert first.headers["content-length"] == str(len(first.body))
    assert first.headers["content-type"] == "text/plain; charset=utf-8"


def test_ready_line_names_greeting_mode_and_count(start_server: StartServer) -> None:
    server = start_server(greeting="Hello")
    assert any("Hello server ready (shutdown=drain, counter=0," in ln for ln in server.lines)


def test_content_length_of_a_non_ascii_greeting(start_server: StartServer) -> None:
    server = start_server(greeting="¡Olá")
    with connect(server.port) as s:
        send_request(s)
        raw = read_to_eof(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == "¡Olá! You are visitor #1!\n".encode()
    assert f"Content-Length: {len(body)}\r\n".encode() in head + b"\r\n"


def test_http10_keepalive_serves_two_requests_on_one_connection(
        start_server: StartServer) -> None:
    server = start_server()
    with connect(server.port) as s:
        one = request(s, headers="Connection: keep-alive\r\n")
        two = request(s, headers="Connection: keep-alive\r\n")
        assert one.headers["connection"] == "keep-alive"
        assert (one.text, two.text) == ("Hola! You are visitor #1!\n",
                                       "Hola! You are visitor #2!\n")
        three = request(s)  # HTTP/1.0 without keep-alive: the last one
        assert three.headers["connection"] == "close"
        assert three.text == "Hola! You are visitor #3!\n"
        assert at_eof(s)


def test_http11_is_keepalive_unless_close(start_server: StartServer) -> None:
    server = start_server()
    with connect(server.port) as s:
        assert request(s, "HTTP/1.1").headers["connection"] == "keep-alive"
        last = request(s, "HTTP/1.1", "Connection: close\r\n")
        assert last.headers["connection"] == "close"
        assert last.text.endswith("#2!\n")
        assert at_eof(s)


def test_pipelined_requests_are_all_answered(start_server: StartServer) -> None:
    server = start_server()
    with connect(server.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        raw = read_to_eof(s)
    answers = raw.split(b"HTTP/1.1 200 OK\r\n")
    assert answers[0] == b""
    bodies = [a.partition(b"\r\n\r\n")[2] for a in answers[1:]]
    assert bodies == [f"Hola! You are visitor #{n}!\n".encode() for n in (1, 2, 3)]
    assert [b"Connection: close" in a for a in answers[1:]] == [False, False, True]


def test_request_split_across_packets(start_server: StartServer) -> None:
    server = start_server()
    with connect(server.port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in (b"GET / HT", b"TP/1.0\r\nHost: a\r", b"\n", b"\r\n"):
            s.sendall(part)
            time.sleep(0.02)
        assert read_response(s).text == "Hola! You are visitor #1!\n"


def test_bad_request_gets_400_and_is_not_counted(start_server: StartServer) -> None:
    server = start_server()
    with connect(server.port) as s:
        s.sendall(b"HELLO\r\n\r\n")
        response = read_response(s)
        assert response.status == 400
        assert response.headers["connection"] == "close"
        assert at_eof(s)
    assert get(server.port).text == "Hola! You are visitor #1!\n"


def test_oversized_head_gets_400(start_server: StartServer, server_module: ModuleType) -> None:
    server = start_server()
    with connect(server.port) as s:
        s.sendall(b"GET / HTTP/1.0\r\nX-Junk: " + b"a" * (server_module.MAX_HEADER_BYTES + 10))
        assert read_response(s).status == 400


def test_counter_file_holds_the_count_and_survives_a_restart(start_server: StartServer,
                                                             state_dir: Path) -> None:
    first = start_server(greeting="Hello")
    for n in (1, 2, 3):
        assert get(first.port).text == f"Hello! You are visitor #{n}!\n"
    assert (state_dir / "visitors").read_text() == "3\n"
    assert not (state_dir / "visitors.tmp").exists()
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0

    second = start_server(greeting="Hola")
    assert any("counter=3" in ln for ln in second.lines)
    assert get(second.port).text == "Hola! You are visitor #4!\n"
    assert (state_dir / "visitors").read_text() == "4\n"
    assert sorted(p.name for p in state_dir.iterdir()) == ["visitors"]


def test_counter_continues_from_an_existing_file(start_server: StartServer,
                                                 state_dir: Path) -> None:
    (state_dir / "visitors").write_text("41\n")
    server = start_server()
    assert get(server.port).text == "Hola! You are visitor #42!\n"


def test_state_directory_may_list_several(start_server: StartServer, state_dir: Path,
                                          tmp_path: Path) -> None:
    # systemd joins several StateDirectory= paths with ':'; the counter uses the first.
    server = start_server(STATE_DIRECTORY=f"{state_dir}:{tmp_path / 'other'}")
    get(server.port)
    assert (state_dir / "visitors").read_text() == "1\n"


def test_sigterm_drains_an_idle_keepalive_connection_and_exits_0(
        start_server: StartServer) -> None:
    server = start_server()
    with connect(server.port) as s:
        assert request(s, headers="Connection: keep-alive\r\n").headers["connection"] == \
            "keep-alive"
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(timeout=8) == 0
        took = time.monotonic() - sent
        assert took < 5, f"drain took {took:.1f} s"
        assert at_eof(s), "the idle keep-alive connection was not closed cleanly"
    assert any("draining: 1 open connection(s)" in ln for ln in server.lines)
    assert any("drained: all connections closed" in ln for ln in server.lines)


def test_drain_answers_a_request_in_the_grace_with_connection_close(
        start_server: StartServer) -> None:
    server = start_server()
    with connect(server.port) as s:
        request(s, headers="Connection: keep-alive\r\n")
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("draining:")
        # ab -k sends its next request within milliseconds: it is answered, then closed.
        last = request(s, headers="Connection: keep-alive\r\n")
        assert last.text == "Hola! You are visitor #2!\n"
        assert last.headers["connection"] == "close"
        assert at_eof(s)
    assert server.wait(timeout=8) == 0


def test_drain_leaves_queued_connections_to_the_next_version(start_server: StartServer,
                                                             state_dir: Path) -> None:
    """The zero-downtime property: a client arriving while v1 drains is queued in the
    socket (which outlives v1) and answered by v2."""
    v1 = start_server(greeting="Hello")
    assert get(v1.port).text == "Hello! You are visitor #1!\n"
    with connect(v1.port) as held:
        request(held, headers="Connection: keep-alive\r\n")  # keeps v1 draining for a while
        v1.proc.send_signal(signal.SIGTERM)
        v1.wait_for_log("draining:")
        with connect(v1.port) as queued:
            send_request(queued)
            assert v1.wait(timeout=8) == 0
            assert (state_dir / "visitors").read_text() == "2\n"  # v1 did not take it
            start_server(greeting="Hola")
            queued.settimeout(10)
            assert read_response(queued).text == "Hola! You are visitor #3!\n"


def test_immediate_shutdown_dies_at_once(start_server: StartServer) -> None:
    server = start_server(shutdown="immediate")
    assert any("shutdown=immediate" in ln for ln in server.lines)
    with connect(server.port) as s:
        request(s, headers="Connection: keep-alive\r\n")
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(timeout=5) == -signal.SIGTERM
        assert time.monotonic() - sent < 1.0
        s.settimeout(5)
        assert s.recv(4096) == b""  # dropped by the kernel when the process died
    assert not any("draining" in ln for ln in server.lines)


def test_bogus_shutdown_mode_exits_non_zero(start_server: StartServer) -> None:
    server = start_server(shutdown="bogus", wait_ready=False)
    assert server.wait(timeout=10) != 0
    assert any("PW_SHUTDOWN must be drain, immediate or fdstore, not 'bogus'" in ln
               for ln in server.lines)


def test_start_delay_holds_a_queued_request_until_it_has_passed(
        start_server: StartServer) -> None:
    started = time.monotonic()
    server = start_server(greeting="Hola", wait_ready=False, PW_START_DELAY="1.5")
    answer = get(server.port)  # queued in the listener while the server waits
    assert time.monotonic() - started >= 1.5
    assert answer.text == "Hola! You are visitor #1!\n"
    assert any("waits 1.5 s before accepting (PW_START_DELAY)" in ln for ln in server.lines)


@pytest.mark.parametrize("raw", ["-1", "soon", "inf", "nan"])
def test_bad_start_delay_exits_non_zero(start_server: StartServer, raw: str) -> None:
    server = start_server(wait_ready=False, PW_START_DELAY=raw)
    assert server.wait(timeout=10) != 0
    assert any(f"PW_START_DELAY must be a number of seconds >= 0, not {raw!r}" in ln
               for ln in server.lines)


def run_server(env: dict[str, str], listener: socket.socket | None = None
               ) -> subprocess.CompletedProcess[str]:
    if listener is None:
        argv, fds = [sys.executable, str(SERVER_PY)], ()
    else:
        fd = listener.fileno()
        argv, fds = [sys.executable, "-c", LAUNCHER, str(fd), str(SERVER_PY)], (fd,)
    return subprocess.run(argv, pass_fds=fds, env=env, capture_output=True, text=True,
                          timeout=20, check=False)


def test_without_socket_activation_exits_with_a_message(tmp_path: Path) -> None:
    result = run_server(clean_env(STATE_DIRECTORY=str(tmp_path)))
    assert result.returncode != 0
    assert "no socket from systemd: LISTEN_PID does not name this process" in result.stderr


def test_listen_pid_of_another_process_is_refused(tmp_path: Path) -> None:
    result = run_server(clean_env(STATE_DIRECTORY=str(tmp_path), LISTEN_PID="1",
                                  LISTEN_FDS="1"))
    assert result.returncode != 0
    assert "LISTEN_PID does not name this process" in result.stderr


def test_without_listen_fds_exits_with_a_message(tmp_path: Path,
                                                 listener: socket.socket) -> None:
    result = run_server(clean_env(STATE_DIRECTORY=str(tmp_path)), listener)
    assert result.returncode != 0
    assert "no socket from systemd: LISTEN_FDS is 0" in result.stderr
    assert not (tmp_path / "visitors").exists()


# --- POST: a visitor too ---------------------------------------------------------------------


def post(sock: socket.socket, body: bytes, version: str = "HTTP/1.1", headers: str = "",
         parts: int = 1) -> None:
    """Send a POST with ``body`` (Content-Length), in ``parts`` pieces (the body split)."""
    head = (f"POST / {version}\r\nHost: test\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n").encode()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(head)
    step = max(1, len(body) // parts)
    for i in range(0, len(body), step):
        time.sleep(0.02)
        sock.sendall(body[i:i + step])


def test_body_length(server_module: ModuleType) -> None:
    assert server_module.body_length({}) == 0
    assert server_module.body_length({"content-length": "12"}) == 12
    for bad in ({"content-length": "-1"}, {"content-length": "x"},
                {"content-length": str(server_module.MAX_BODY_BYTES + 1)},
                {"transfer-encoding": "chunked"}):
        with pytest.raises(ValueError):
            server_module.body_length(bad)


def test_post_is_answered_and_counted_like_get(start_server: StartServer) -> None:
    server = start_server()
    with connect(server.port) as s:
        post(s, b"name=visitor")
        first = read_response(s)
        assert first.status == 200
        assert first.text == "Hola! You are visitor #1!\n"
        assert first.headers["connection"] == "keep-alive"
    assert get(server.port).text == "Hola! You are visitor #2!\n"


def test_post_body_is_read_whole_before_the_next_request_on_the_connection(
        start_server: StartServer) -> None:
    """The body must not be taken for the next request's head (a 400 and a closed
    connection), even when it arrives in pieces after the head."""
    server = start_server()
    body = b"GET /not-a-request HTTP/1.1\r\n\r\n" * 3
    with connect(server.port) as s:
        post(s, body, parts=3)
        assert read_response(s).text == "Hola! You are visitor #1!\n"
        post(s, b"second")
        assert read_response(s).text == "Hola! You are visitor #2!\n"
        last = request(s, "HTTP/1.1", "Connection: close\r\n")
        assert last.text == "Hola! You are visitor #3!\n"
        assert at_eof(s)


def test_chunked_post_gets_400_and_is_not_counted(start_server: StartServer) -> None:
    server = start_server()
    with connect(server.port) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n")
        response = read_response(s)
        assert response.status == 400
        assert at_eof(s)
    assert get(server.port).text == "Hola! You are visitor #1!\n"
