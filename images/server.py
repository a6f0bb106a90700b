#!/usr/bin/python3
"""Socket-activated HTTP visitor counter: the service under test.

Runs inside the portable image, which only has ``python3-minimal`` (no ``http.server``), so
it is written on ``socket``/``selectors``. systemd hands over the listening socket
(``LISTEN_FDS``, fd 3); the socket unit lives on the host, so the socket keeps listening and
queues connections while the service is swapped.

Each request increments a counter kept in ``$STATE_DIRECTORY/visitors`` and is answered with
``<GREETING>! You are visitor #N!``, whatever its method: a POST is a visitor too. A request
body (``Content-Length``; no chunked encoding) is read whole and ignored before the request is
answered, so the next request on a keep-alive connection starts after it. The counter file is
replaced atomically (temp file + rename): a SIGTERM in the middle of a write must never reset
the count.

Shutdown modes (``PW_SHUTDOWN``):
  drain      (default) on SIGTERM stop accepting, finish in-flight requests, answer the next
             request on each keep-alive connection with ``Connection: close``, then exit.
  immediate  exit at once on SIGTERM, dropping open connections (the naive server).
  fdstore    on SIGTERM stop accepting, finish in-flight requests, then hand every idle
             keep-alive connection to the service manager's file-descriptor store
             (``sd_notify FDSTORE=1``, needs ``FileDescriptorStoreMax=``) and exit. The next
             process gets them back in ``LISTEN_FDS`` (named ``conn-…`` in ``LISTEN_FDNAMES``)
             and keeps serving them: the client never sees its connection close.
Whatever the mode, connections found in the fd store at start are adopted.

``PW_START_DELAY`` (seconds, default 0): at every start, wait that long after taking the
sockets before accepting, as a service with a slow start-up does. The capacity map
(docs/capacity.md) sets it in a host drop-in to lengthen the restart gap; the connections
that arrive meanwhile wait in the host socket's queue.
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
MAX_BODY_BYTES = 1024 * 1024
# How long an idle keep-alive connection gets, after SIGTERM, to send its next request before
# it is closed. ab -k sends the next request within milliseconds of an answer.
DRAIN_IDLE_GRACE_S = 1.0
# Upper bound of the drain: systemd's TimeoutStopSec (90 s default) is far above it.
DRAIN_DEADLINE_S = 10.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sd_notify(state: str, fds: list[int] | None = None) -> bool:
    """Send ``state`` (and ``fds``, SCM_RIGHTS) to $NOTIFY_SOCKET; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        if fds:
            socket.send_fds(s, [state.encode()], fds)
        else:
            s.sendall(state.encode())
    return True


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


def body_length(headers: dict[str, str]) -> int:
    """The request body's length in bytes from its headers (0 without ``Content-Length``).

    ValueError (the request is answered 400) for a chunked body, a length that is no
    decimal number, or one over MAX_BODY_BYTES.

    >>> body_length({"content-length": "5"})
    5
    """
    if "transfer-encoding" in headers:
        raise ValueError("chunked request bodies are not read: send Content-Length")
    text = headers.get("content-length", "0")
    if not text.isdigit():
        raise ValueError(f"bad Content-Length: {text!r}")
    length = int(text)
    if length > MAX_BODY_BYTES:
        raise ValueError(f"request body of {length} bytes is over {MAX_BODY_BYTES}")
    return length


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
    def __init__(self, listener: socket.socket, counter: Counter, greeting: str,
                 fdstore: bool = False) -> None:
        self.listener = listener
        self.counter = counter
        self.greeting = greeting
        self.fdstore = fdstore
        self.selector = selectors.DefaultSelector()
        self.connections: dict[int, Connection] = {}
        self.draining_since: float | None = None
        self.stored = 0
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)

    def adopt(self, sock: socket.socket, name: str) -> None:
        """Serve a connection handed over by the previous process through the fd store."""
        sock.setblocking(False)
        conn = Connection(sock)
        self.connections[sock.fileno()] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)
        # PID 1 keeps its copy until told: the peer would never see this connection close.
        sd_notify(f"FDSTOREREMOVE=1\nFDNAME={name}")
        # Requests the client sent while the fd sat in the store are waiting in the buffer.
        self._read(conn)

    def _store(self, conn: Connection) -> None:
        """Hand an idle keep-alive connection to the fd store, then forget it here."""
        name = f"conn-{os.getpid()}-{self.stored}"
        if not sd_notify(f"FDSTORE=1\nFDNAME={name}", [conn.sock.fileno()]):
            self._close(conn)
            return
        self.stored += 1
        self.connections.pop(conn.sock.fileno(), None)
        self.selector.unregister(conn.sock)
        conn.sock.close()  # our copy only: PID 1 holds the connection now

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
        """Close idle connections whose grace ran out (or, in fdstore mode, store every idle
        connection at once); True when the drain is complete."""
        assert self.draining_since is not None
        now = time.monotonic()
        if self.fdstore:
            for conn in list(self.connections.values()):
                if conn.idle and not conn.close_after_write:
                    self._store(conn)
            if not self.connections:
                log(f"handed {self.stored} connection(s) to the fd store")
                return True
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
            try:
                _method, version, headers = parse_request_head(head)
                length = body_length(headers)
            except ValueError:
                del conn.inbuf[: end + 4]
                conn.outbuf += render_response(self.greeting, 0, False, "400 Bad Request")
                conn.close_after_write = True
                break
            if len(conn.inbuf) < end + 4 + length:
                break  # the body is still on its way: answer once it is all here
            del conn.inbuf[: end + 4 + length]
            keepalive = wants_keepalive(version, headers) and (
                self.draining_since is None or self.fdstore
            )
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


def inherited_sockets() -> tuple[socket.socket, list[tuple[socket.socket, str]]]:
    """The listening socket and the stored connections systemd passed (LISTEN_FDS/FDNAMES).

    The listening socket is named after its socket unit; stored connections are "conn-…".
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        raise SystemExit("no socket from systemd: LISTEN_PID does not name this process")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    if count < 1:
        raise SystemExit("no socket from systemd: LISTEN_FDS is 0")
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    listener: socket.socket | None = None
    stored: list[tuple[socket.socket, str]] = []
    for i in range(count):
        sock = socket.socket(fileno=SD_LISTEN_FDS_START + i)
        name = names[i] if i < len(names) else ""
        if name.startswith("conn-"):
            stored.append((sock, name))
        elif listener is None:
            listener = sock
    if listener is None:
        raise SystemExit("no listening socket among the fds systemd passed")
    return listener, stored


def start_delay(raw: str) -> float:
    """PW_START_DELAY's seconds; SystemExit (one line) unless a finite number >= 0.

    >>> start_delay("2.5")
    2.5
    """
    try:
        delay = float(raw)
    except ValueError:
        delay = -1.0
    if not 0 <= delay < float("inf"):
        raise SystemExit(f"PW_START_DELAY must be a number of seconds >= 0, not {raw!r}")
    return delay


def main() -> None:
    greeting = os.environ.get("GREETING", "Hello")
    shutdown = os.environ.get("PW_SHUTDOWN", "drain")
    if shutdown not in ("drain", "immediate", "fdstore"):
        raise SystemExit(f"PW_SHUTDOWN must be drain, immediate or fdstore, not {shutdown!r}")
    delay = start_delay(os.environ.get("PW_START_DELAY", "0"))
    state_dir = os.environ.get("STATE_DIRECTORY", "/var/lib/portable-walkthrough").split(":")[0]
    listener, stored = inherited_sockets()
    if delay > 0:
        # Before the SIGTERM handler: a stop now ends the process at once, and what it has
        # not accepted stays queued in the host socket for the next one.
        log(f"{greeting} server waits {delay:g} s before accepting (PW_START_DELAY)")
        time.sleep(delay)
    server = Server(listener, Counter(state_dir), greeting, fdstore=shutdown == "fdstore")
    for sock, name in stored:
        server.adopt(sock, name)
    if shutdown != "immediate":
        signal.signal(signal.SIGTERM, server.request_drain)
    log(f"{greeting} server ready (shutdown={shutdown}, counter={server.counter.value},"
        f" adopted {len(stored)} stored connection(s))")
    server.serve()


if __name__ == "__main__":
    main()
