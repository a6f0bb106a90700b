"""Fixtures of the unit tests: the real ``images/server.py`` under fake socket activation.

No VM and no network: every socket is on 127.0.0.1, and every process started here is killed
by its Popen handle in the fixture's teardown.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from support import (
    LAUNCHER,
    PROBE_PY,
    SERVER_PY,
    RunningServer,
    StartServer,
    clean_env,
    load_module,
)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """The 'socket unit': a listening socket on 127.0.0.1 that outlives the servers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir()
    return directory


@pytest.fixture
def start_server(listener: socket.socket, state_dir: Path) -> Iterator[StartServer]:
    """``start_server(greeting="Hola", shutdown=None, wait_ready=True, **env)``: one
    ``images/server.py`` process handed ``listener`` as fd 3, as systemd would."""
    started: list[RunningServer] = []

    def start(greeting: str = "Hola", shutdown: str | None = None, wait_ready: bool = True,
              **extra_env: str) -> RunningServer:
        env = clean_env(**{"LISTEN_FDS": "1", "STATE_DIRECTORY": str(state_dir),
                           "GREETING": greeting, **extra_env})
        if shutdown is not None:
            env["PW_SHUTDOWN"] = shutdown
        fd = listener.fileno()
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(fd), str(SERVER_PY)],
            pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server = RunningServer(proc, listener.getsockname()[1], state_dir)
        started.append(server)
        if wait_ready:
            # Printed after the SIGTERM handler is installed: signals sent later are handled.
            server.wait_for_log("server ready")
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server_module() -> ModuleType:
    return load_module("pwt_image_server", SERVER_PY)


@pytest.fixture(scope="session")
def probe_module() -> ModuleType:
    return load_module("pwt_guest_probe", PROBE_PY)
