"""examples/gunicorn: Debian's gunicorn serving the example app on the host under fake socket
activation (the listening socket handed over as fd 3, as systemd does), read the way the
suite's probe reads it with the example's own spec. No VM: the VM run is
``tox -e integration -- --service examples/gunicorn/spec.toml``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import LAUNCHER, ROOT, clean_env, connect, read_response, send_request

from pytest_portable_upgrade.subject.image import render_file
from pytest_portable_upgrade.subject.spec import load_subject

pytest.importorskip("gunicorn", reason="gunicorn is in tox -e unit's deps")

EXAMPLE = ROOT / "examples" / "gunicorn"
SPEC = load_subject(EXAMPLE / "spec.toml")


def unit_environment(version: int) -> dict[str, str]:
    """The Environment= of the example's unit as the image builder renders it for ``version``."""
    unit = render_file(EXAMPLE / "gunicorn-demo.service.in", version, SPEC.answer(version))
    line = next(x for x in unit.decode().splitlines() if x.startswith("Environment="))
    return dict(pair.split("=", 1) for pair in line.removeprefix("Environment=").split())


def exec_start() -> list[str]:
    """ExecStart= of the example's unit, run with this interpreter (it is /usr/bin/python3 in
    the image) and the app from the repository (/usr/lib/gunicorn-demo in the image)."""
    unit = (EXAMPLE / "gunicorn-demo.service.in").read_text()
    argv = next(x for x in unit.splitlines() if x.startswith("ExecStart=")).split("=", 1)[1]
    args = argv.split()[1:]  # without /usr/bin/python3
    return [str(EXAMPLE) if a == "/usr/lib/gunicorn-demo" else a for a in args]


# `listener` (the socket unit's stand-in) comes from tests/unit/conftest.py.


@pytest.fixture
def gunicorn(listener: socket.socket, tmp_path: Path) -> Iterator[Any]:
    """``gunicorn(version)``: the example's ExecStart= handed ``listener`` as fd 3; its log
    goes to tmp_path/gunicorn-<n>.log (shown by a failing assertion via ``logs``)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(version: int) -> subprocess.Popen[bytes]:
        fd = listener.fileno()
        env = clean_env(LISTEN_FDS="1", **unit_environment(version))
        with (tmp_path / f"gunicorn-{len(started)}.log").open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(fd), *exec_start()],
                                    pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("gunicorn-*")))


def probe_record(probe_module: ModuleType, port: int) -> dict[str, Any]:
    """One request, as vm/load/guest/probe.py sends and reads it with the example's spec."""
    reader = probe_module.AnswerReader(SPEC.version_regex, SPEC.version_header,
                                       SPEC.counter_regex)
    request = probe_module.build_request(SPEC.request_path, SPEC.request_host)
    record: dict[str, Any] = probe_module.one_request("127.0.0.1", port, 30.0, request, reader)
    return record


def test_the_spec_reads_each_release_from_the_real_server(
        gunicorn: Any, listener: socket.socket, probe_module: ModuleType, tmp_path: Path) -> None:
    port = listener.getsockname()[1]
    for version in (1, 2):
        proc = gunicorn(version)
        record = probe_record(probe_module, port)
        assert record.get("status") == 200, (record, proc.poll(), logs(tmp_path))
        assert record.get("greeting") == SPEC.answer(version), record
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, logs(tmp_path)


def test_gunicorn_serves_from_the_socket_it_was_handed(gunicorn: Any,
                                                        listener: socket.socket) -> None:
    """It never binds a port of its own: the answer comes through the passed socket, and
    it says which release answered in the body and the header."""
    gunicorn(1)
    with connect(listener.getsockname()[1], timeout=30) as s:
        send_request(s)
        response = read_response(s)
    assert response.status == 200
    assert response.headers["x-app-release"] == "alpha"
    assert response.text == "hello from alpha\n"


def test_a_connection_queued_while_no_version_runs_is_answered_by_the_next(
        gunicorn: Any, listener: socket.socket) -> None:
    """The host socket's promise, on the host: v1 stops gracefully on SIGTERM (exit 0), a
    client connects while nothing serves (the kernel queues it on the socket that outlives
    v1) and v2, started on the same socket, answers it."""
    port = listener.getsockname()[1]
    v1 = gunicorn(1)
    with connect(port, timeout=30) as s:
        send_request(s)
        assert read_response(s).headers["x-app-release"] == "alpha"
    v1.send_signal(signal.SIGTERM)
    assert v1.wait(timeout=30) == 0
    queued = connect(port, timeout=60)
    try:
        send_request(queued)
        gunicorn(2)
        response = read_response(queued)
    finally:
        queued.close()
    assert (response.status, response.headers["x-app-release"]) == (200, "beta")


def test_the_example_checks_are_ordinary_pytest_files() -> None:
    """What the spec's `checks` names exists and is collected as pytest tests, by a pytest
    confined to that directory as the suite runs them (vm/subject/user_checks.py): the
    repository's conftest.py, and so a PWT_* setting of this run, is none of its business."""
    assert SPEC.checks == (EXAMPLE / "checks").resolve()
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                             "-p", "no:cacheprovider", "-c", "/dev/null",
                             "--rootdir", str(SPEC.checks), "--confcutdir", str(SPEC.checks),
                             str(SPEC.checks)],
                            capture_output=True, text=True, timeout=120, check=False,
                            cwd=Path(SPEC.checks))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_the_new_release_runs" in result.stdout
