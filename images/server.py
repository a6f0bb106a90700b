#!/usr/bin/python3
"""Socket-activated HTTP visitor counter: the service under test.

Runs inside the portable image, which only has ``python3-minimal`` (no ``http.server``), so
it is written on ``socket``/``selectors``. systemd hands over the listening socket
(``LISTEN_FDS``, fd 3); the socket unit lives on the host, so the socket keeps listening and
queues connections while the service is swapped.

Each request increments a counter kept in ``$STATE_DIRECTORY/visitors`` and is answered with
``<GREETING>! You are visitor #N!``. The counter file is replaced atomically (temp file +
rename): a SIGTERM in the middle of a write must never reset the count.

Shutdown modes (``PW_SHUTDOWN``):
  drain      (default) on SIGTERM stop accepting, finish in-flight requests, answer the next
             request on each keep-alive connection with ``Connection: close``, then exit.
  immediate  exit at once on SIGTERM, dropping open connections (the naive server).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import time

SD_LISTEN_FDS_START = 3
MAX_HEADER_BYTES = 16 * 1024
# How long an idle keep-alive connection gets, after SIGTERM, to send its next request before
# it is closed. ab -k sends the next request within milliseconds of an answer.
DRAIN_IDLE_GRACE_S = 1.0
# Upper bound of the drain: systemd's TimeoutStopSec (90 s default) is far above it.
DRAIN_DEADLINE_S = 10.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Counter:
    """A visitor count persisted in one file, replaced atomically on every increment."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "visitors")
        self.value = self._load()

    def _load(self) -> int:
        try:
            with open(self.path, encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0

    def increment(self) -> int:
        self.value += 1
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{self.value}\n")
        os.replace(tmp, self.path)
        return self.value


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.close_after_write = False
        self.last_activity = time.monotonic()

    @property
    def idle(self) -> bool:
        return not self.inbuf and not self.outbuf


def parse_request_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Return (method, version, headers) of an HTTP request head (without the blank line).

    >>> parse_request_head(b"GET / HTTP/1.0\\r\\nConnection: Keep-Alive")
    ('GET', 'HTTP/1.0', {'connection': 'Keep-Alive'})
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(f"bad request line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[2], headers


def wants_keepalive(version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.1":
        return connection != "close"
    return connection == "keep-alive"


def render_response(greeting: str, visitor: int, keepalive: bool, status: str = "200 OK") -> bytes:
    body = f"{greeting}! You are visitor #{visitor}!\n".encode() if visitor else b"bad request\n"
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keepalive else 'close'}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


class Server:
    def __init__(self, listener: socket.socket, counter: Counter, greeting: str) -> None:
        self.listener = listener
        self.counter = counter
        self.greeting = greeting
        self.selector = selectors.DefaultSelector()
        self.connections: dict[int, Connection] = {}
        self.draining_since: float | None = None
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)

    def request_drain(self, *_: object) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()

    def serve(self) -> None:
        drain_logged = False
        while True:
            if self.draining_since is not None:
                if not drain_logged:
                    drain_logged = True
                    self.selector.unregister(self.listener)
                    log(f"draining: {len(self.connections)} open connection(s)")
                if self._drain_step():
                    return
            for key, events in self.selector.select(timeout=0.2):
                if key.data is None:
                    self._accept()
                else:
                    conn: Connection = key.data
                    if events & selectors.EVENT_READ:
                        self._read(conn)
                    if events & selectors.EVENT_WRITE and conn.sock.fileno() in self.connections:
                        self._write(conn)

    def _drain_step(self) -> bool:
        """Close idle connections whose grace ran out; True when the drain is complete."""
        assert self.draining_since is not None
        now = time.monotonic()
        for conn in list(self.connections.values()):
            idle_for = now - max(conn.last_activity, self.draining_since)
            if conn.idle and idle_for > DRAIN_IDLE_GRACE_S:
                self._close(conn)
        if not self.connections:
            log("drained: all connections closed")
            return True
        if now - self.draining_since > DRAIN_DEADLINE_S:
            log(f"drain deadline reached with {len(self.connections)} connection(s) open")
            return True
        return False

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            conn = Connection(sock)
            self.connections[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.last_activity = time.monotonic()
        conn.inbuf += data
        self._handle_requests(conn)

    def _handle_requests(self, conn: Connection) -> None:
        while not conn.close_after_write:
            end = conn.inbuf.find(b"\r\n\r\n")
            if end < 0:
                if len(conn.inbuf) > MAX_HEADER_BYTES:
                    conn.outbuf += render_response(self.greeting, 0, False, "400 Bad Request")
                    conn.close_after_write = True
                break
            head = bytes(conn.inbuf[:end])
            del conn.inbuf[: end + 4]
            try:
                _method, version, headers = parse_request_head(head)
            except ValueError:
                conn.outbuf += render_response(self.greeting, 0, False, "400 Bad Request")
                conn.close_after_write = True
                break
            keepalive = wants_keepalive(version, headers) and self.draining_since is None
            conn.outbuf += render_response(self.greeting, self.counter.increment(), keepalive)
            if not keepalive:
                conn.close_after_write = True
        if conn.outbuf:
            self._write(conn)

    def _write(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        del conn.outbuf[:sent]
        conn.last_activity = time.monotonic()
        if conn.outbuf:
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            return
        if conn.close_after_write:
            self._close(conn, graceful=True)
            return
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _close(self, conn: Connection, graceful: bool = False) -> None:
        fd = conn.sock.fileno()
        self.connections.pop(fd, None)
        self.selector.unregister(conn.sock)
        if graceful:
            # Send FIN first so the client reads the whole answer even if it already sent more.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
        conn.sock.close()


def listening_socket() -> socket.socket:
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        raise SystemExit("no socket from systemd: LISTEN_PID does not name this process")
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        raise SystemExit("no socket from systemd: LISTEN_FDS is 0")
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def main() -> None:
    greeting = os.environ.get("GREETING", "Hello")
    shutdown = os.environ.get("PW_SHUTDOWN", "drain")
    state_dir = os.environ.get("STATE_DIRECTORY", "/var/lib/portable-walkthrough").split(":")[0]
    server = Server(listening_socket(), Counter(state_dir), greeting)
    if shutdown == "drain":
        signal.signal(signal.SIGTERM, server.request_drain)
    elif shutdown != "immediate":
        raise SystemExit(f"PW_SHUTDOWN must be drain or immediate, not {shutdown!r}")
    log(f"{greeting} server ready (shutdown={shutdown}, counter={server.counter.value})")
    server.serve()


if __name__ == "__main__":
    main()
