"""Record the hey fixtures of tests/unit/data on the host (127.0.0.1 only; see README.md).

    PYTHONPATH=. python3 tests/unit/data/record_hey.py SHAPE tests/unit/data/hey_SHAPE

Runs Debian's hey (``apt-get install hey``) for a few seconds against a server on 127.0.0.1
and writes PREFIX.txt (hey's stdout) and PREFIX.meta.json (the command, the date and what the
server counted). Shapes:

* ``get-keepalive``, ``post-no-keepalive``: the real ``images/server.py`` under fake socket
  activation; hey -z bounds the run.
* ``naive-get``, ``naive-post``: the real server with ``PW_SHUTDOWN=immediate`` (v1 "Hello")
  behind one listening socket that outlives it; at +1.0 s v1 gets SIGTERM and dies at once,
  nothing serves for 0.5 s, then v2 ("Hola") starts on the same socket; hey is stopped with
  SIGINT at +3.0 s, as the suite stops its clients. The server's count is read from its
  counter file.
* ``rude-get``, ``rude-post``: a throw-away server (below) that answers most requests on a
  keep-alive connection but resets every 7th connection's 3rd request after reading it,
  answers every 11th request 503, holds every 97th request for 2 s (hey -t 1), answers every
  53rd with garbage, and closes each connection after its 5th answer without saying so.
* ``refused``: nothing listens on the port.
"""

from __future__ import annotations

import datetime
import json
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from support import LAUNCHER, SERVER_PY, clean_env  # noqa: E402

BODY = "name=visitor"
CONTENT_TYPE = "application/x-www-form-urlencoded"


def start_server(listener: socket.socket, greeting: str, state: Path,
                 shutdown: str = "drain") -> subprocess.Popen[bytes]:
    fd = listener.fileno()
    env = clean_env(LISTEN_FDS="1", STATE_DIRECTORY=str(state), GREETING=greeting,
                    PW_SHUTDOWN=shutdown)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(fd), str(SERVER_PY)],
                            pass_fds=(fd,), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for raw in proc.stderr:  # wait until it serves
        if b"server ready" in raw:
            return proc
    raise RuntimeError(f"server {greeting} exited before it was ready")


def hey_argv(port: int, post: bool, keepalive: bool, seconds: int, concurrency: int,
             timeout: int = 5) -> list[str]:
    argv = ["hey", "-c", str(concurrency), "-z", f"{seconds}s", "-t", str(timeout)]
    if post:
        argv += ["-m", "POST", "-d", BODY, "-T", CONTENT_TYPE]
    if not keepalive:
        argv.append("-disable-keepalive")
    return [*argv, f"http://127.0.0.1:{port}/"]


class RudeServer:
    """Threads, one per connection; counts what it did (``counts``)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.counts = {"connections": 0, "requests_read": 0, "answered_200": 0,
                       "answered_503": 0, "reset": 0, "held": 0, "garbage": 0,
                       "closed_unannounced": 0}
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _count(self, key: str) -> int:
        with self.lock:
            self.counts[key] += 1
            return self.counts[key]

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            number = self._count("connections")
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    @staticmethod
    def _read_request(conn: socket.socket, buf: bytes) -> tuple[bool, bytes]:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return False, buf
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False, rest
            rest += chunk
        return True, rest[length:]

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        with conn:
            for on_conn in range(1, 6):
                try:
                    ok, buf = self._read_request(conn, buf)
                except OSError:
                    return
                if not ok:
                    return
                n = self._count("requests_read")
                if number % 7 == 0 and on_conn == 3:
                    self._count("reset")
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if n % 97 == 0:
                    self._count("held")
                    time.sleep(2.0)
                if n % 53 == 0:
                    self._count("garbage")
                    conn.sendall(b"SPAM\r\n\r\n")
                    return
                status = "503 Service Unavailable" if n % 11 == 0 else "200 OK"
                self._count("answered_503" if n % 11 == 0 else "answered_200")
                body = f"Hola! You are visitor #{n}!\n".encode()
                try:
                    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
                                 f"Content-Type: text/plain\r\n\r\n".encode() + body)
                except OSError:
                    return
            self._count("closed_unannounced")

    def close(self) -> None:
        self.stopping = True
        self.sock.close()


def run_hey(argv: list[str], stop_after: float | None = None) -> str:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if stop_after is not None:
        time.sleep(stop_after)
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"hey exited {proc.returncode}: {err}")
    return out


def record(shape: str, prefix: Path) -> None:
    post = shape.startswith("post") or shape.endswith("-post")
    meta: dict[str, object] = {"shape": shape,
                               "date": datetime.datetime.now(datetime.UTC).isoformat(
                                   timespec="seconds")}
    if shape in ("get-keepalive", "post-no-keepalive"):
        with tempfile.TemporaryDirectory() as tmp, socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            port = listener.getsockname()[1]
            server = start_server(listener, "Hola", Path(tmp))
            argv = hey_argv(port, post=post, keepalive=shape == "get-keepalive", seconds=2,
                            concurrency=4)
            try:
                out = run_hey(argv)
            finally:
                server.kill()
                server.wait(timeout=10)
            meta["server_count"] = int((Path(tmp) / "visitors").read_text())
    elif shape in ("naive-get", "naive-post"):
        with tempfile.TemporaryDirectory() as tmp, socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            port = listener.getsockname()[1]
            v1 = start_server(listener, "Hello", Path(tmp), shutdown="immediate")
            argv = hey_argv(port, post=post, keepalive=True, seconds=20, concurrency=10)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            v2 = None
            try:
                time.sleep(1.0)
                v1.send_signal(signal.SIGTERM)
                v1.wait(timeout=10)
                time.sleep(0.5)
                v2 = start_server(listener, "Hola", Path(tmp), shutdown="immediate")
                time.sleep(1.5)
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
                if proc.returncode != 0:
                    raise RuntimeError(f"hey exited {proc.returncode}: {err}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
                if v2 is not None:
                    v2.kill()
                    v2.wait(timeout=10)
            meta["server_count"] = int((Path(tmp) / "visitors").read_text())
            meta["stopped_by"] = "SIGINT at +3.0 s (v1 SIGTERM at +1.0 s, v2 at +1.5 s)"
    elif shape in ("rude-get", "rude-post"):
        rude = RudeServer()
        argv = hey_argv(rude.port, post=post, keepalive=True, seconds=3, concurrency=4,
                        timeout=1)
        try:
            out = run_hey(argv)
            time.sleep(2.5)  # the held requests end
        finally:
            rude.close()
        meta["server"] = dict(rude.counts)
    elif shape == "refused":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = hey_argv(port, post=False, keepalive=True, seconds=1, concurrency=2)
        out = run_hey(argv)
    else:
        raise SystemExit(f"unknown shape {shape!r}")
    meta["command"] = " ".join(argv)
    prefix.with_suffix(".txt").write_text(out)
    prefix.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    record(sys.argv[1], Path(sys.argv[2]))
