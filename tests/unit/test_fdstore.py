"""The fd-store handover, for real on the host: two server processes, one kept connection.

A fake service manager: a unix datagram socket as $NOTIFY_SOCKET that receives FDSTORE=1 with
the connection's fd (SCM_RIGHTS), then starts the next server with the listening socket and
that fd in LISTEN_FDS / LISTEN_FDNAMES, as systemd does on a restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "images" / "server.py"
LAUNCH = (
    "import os, sys\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.executable, [sys.executable, sys.argv[1]])\n"
)


def start(fds: list[int], names: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start the server with ``fds`` as fd 3, 4, … (a child-side dup2 puts them in place)."""
    def place() -> None:
        tmp = [os.dup(fd) for fd in fds]  # out of the way of the targets first
        for i, fd in enumerate(tmp):
            os.dup2(fd, 3 + i, inheritable=True)

    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(SERVER)],
        env={**os.environ, **env, "LISTEN_FDS": str(len(fds)),
             "LISTEN_FDNAMES": ":".join(names)},
        # close_fds runs after preexec_fn: keep the fds it placed.
        preexec_fn=place, pass_fds=tuple(range(3, 3 + len(fds))),
        stderr=subprocess.PIPE, text=True,
    )


def ask(conn: socket.socket) -> str:
    conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while b"!\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data.decode()


def test_a_keepalive_connection_survives_the_handover(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    env = {"STATE_DIRECTORY": str(tmp_path), "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "PW_SHUTDOWN": "fdstore", "PYTHONUNBUFFERED": "1"}
    v1 = start([listener.fileno()], ["pw.socket"], {**env, "GREETING": "Hello"})
    v2 = None
    client = socket.create_connection(listener.getsockname(), timeout=10)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert "Hello! You are visitor #1!" in ask(client)
                break
            except (ConnectionError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        v1.send_signal(signal.SIGTERM)
        message, fds, _flags, _addr = socket.recv_fds(notify, 1024, 4)
        assert message.startswith(b"FDSTORE=1\nFDNAME=conn-"), message
        assert len(fds) == 1
        assert v1.wait(timeout=10) == 0
        # While the fd sits in the "store", the client already sends its next request.
        client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        name = message.decode().split("FDNAME=")[1].strip()
        v2 = start([listener.fileno(), fds[0]], ["pw.socket", name], {**env, "GREETING": "Hola"})
        os.close(fds[0])
        data = b""
        while b"!\n" not in data:
            chunk = client.recv(4096)
            assert chunk, "the kept connection was closed"
            data += chunk
        assert "Hola! You are visitor #2!" in data.decode()  # same connection, new version
        removal, _, _, _ = socket.recv_fds(notify, 1024, 0)
        assert removal == f"FDSTOREREMOVE=1\nFDNAME={name}".encode()
        assert "Hola! You are visitor #3!" in ask(client)
    finally:
        client.close()
        for proc in (v1, v2):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        notify.close()
        listener.close()


def test_without_notify_socket_fdstore_mode_falls_back_to_closing(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    v1 = start([listener.fileno()], ["pw.socket"],
               {"STATE_DIRECTORY": str(tmp_path), "PW_SHUTDOWN": "fdstore", "GREETING": "Hi",
                "NOTIFY_SOCKET": ""})
    client = socket.create_connection(listener.getsockname(), timeout=10)
    try:
        time.sleep(0.5)
        assert "Hi! You are visitor #1!" in ask(client)
        v1.send_signal(signal.SIGTERM)
        assert v1.wait(timeout=10) == 0
        assert client.recv(100) == b""  # closed cleanly, not stored anywhere
    finally:
        client.close()
        if v1.poll() is None:
            v1.kill()
        listener.close()
