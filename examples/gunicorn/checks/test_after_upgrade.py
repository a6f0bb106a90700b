"""Our own checks of the gunicorn example, run by the suite after each upgrade scenario with
testinfra's ``host`` and the scenario's ``run_record`` (its row of summary.json)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

RELEASES = {1: "alpha", 2: "beta"}


def test_the_new_release_runs(host: Any, run_record: dict[str, Any]) -> None:
    service = host.service("gunicorn-demo.service")
    assert service.is_running
    want = RELEASES[run_record["to_version"]]
    assert f"APP_RELEASE={want}" in service.systemd_properties["Environment"]


def test_the_host_socket_still_listens(host: Any, run_record: dict[str, Any]) -> None:
    port = tomllib.loads(Path(run_record["spec"]).read_text())["port"]  # the spec says it once
    assert host.service("gunicorn-demo.socket").is_running
    assert host.socket(f"tcp://{port}").is_listening


def test_workers_do_not_run_as_root(host: Any) -> None:
    workers = host.process.filter(comm="python3")
    gunicorn = [p for p in workers if "gunicorn" in p.args]
    assert len(gunicorn) >= 3, [p.args for p in workers]  # the arbiter and two workers
    assert all(p.user != "root" for p in gunicorn), [(p.pid, p.user) for p in gunicorn]
