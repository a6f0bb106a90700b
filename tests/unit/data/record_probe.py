"""Record the probe fixtures of tests/unit/data on the host (127.0.0.1 only; see README.md).

    python3 tests/unit/data/record_probe.py restart  tests/unit/data/probe_restart
    python3 tests/unit/data/record_probe.py syn-step tests/unit/data/probe_syn_step

Both run the real ``vm/load/guest/probe.py`` (open loop, 20 requests/s) against the real
``images/server.py`` behind one listening socket that outlives it, like a host socket unit:
v1 ("Hello") serves, gets SIGTERM (the "reattach" starts), nothing serves for a while (the
Python start-up that takes seconds under TCG), then v2 ("Hola") is started on the same socket.
``syn-step`` gives the socket an accept queue of 2 (``listen(1)``), so while nothing accepts,
the kernel drops further SYNs and the probe's connects go through only on the retransmits 1 s
and 3 s later. Writes PREFIX.jsonl (the probe's output) and PREFIX.meta.json (when the load
started and the "reattach" ran, guest-epoch style).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from support import LAUNCHER, PROBE_PY, SERVER_PY, WALKTHROUGH, clean_env  # noqa: E402

SHAPES = {  # name -> (listen backlog, seconds of load before, seconds nothing serves, after)
    "restart": (128, 3.0, 1.5, 4.0),
    "syn-step": (1, 3.0, 2.5, 5.0),
}


def start_server(listener: socket.socket, greeting: str, state: Path) -> subprocess.Popen[bytes]:
    fd = listener.fileno()
    env = clean_env(LISTEN_FDS="1", STATE_DIRECTORY=str(state), GREETING=greeting)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(fd), str(SERVER_PY)],
                            pass_fds=(fd,), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for raw in proc.stderr:  # wait until it serves
        if b"server ready" in raw:
            return proc
    raise RuntimeError(f"server {greeting} exited before it was ready")


def record(shape: str, prefix: Path) -> None:
    backlog, before, down, after = SHAPES[shape]
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        port = listener.getsockname()[1]
        v1 = start_server(listener, "Hello", Path(tmp))
        out = prefix.with_suffix(".jsonl")
        out.unlink(missing_ok=True)
        t0 = time.time()
        probe = subprocess.Popen([sys.executable, str(PROBE_PY), "--port", str(port),
                                  *WALKTHROUGH.client_args(),
                                  "--rate", "20", "--timeout", "10", "--out", str(out),
                                  "--max-seconds", "60"])
        time.sleep(before)
        reattach_started = time.time()
        v1.send_signal(signal.SIGTERM)
        v1.wait(timeout=10)
        time.sleep(down)
        v2 = start_server(listener, "Hola", Path(tmp))
        reattach_ended = time.time()
        time.sleep(after)
        stopped = time.time()
        probe.send_signal(signal.SIGTERM)
        probe.wait(timeout=30)
        v2.kill()
        v2.wait(timeout=10)
    meta = {"t0": round(t0, 4), "reattach_started": round(reattach_started, 4),
            "reattach_ended": round(reattach_ended, 4), "stopped": round(stopped, 4),
            "shape": shape, "listen_backlog": backlog, "nothing_serves_s": down}
    prefix.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    record(sys.argv[1], Path(sys.argv[2]))
