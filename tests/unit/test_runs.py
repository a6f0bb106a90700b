"""Dead runs are found by their free lock and reaped; live and kept runs are left alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pytest_portable_upgrade.machine.runs as runs
from pytest_portable_upgrade.machine.runs import RunLock, reap_stale_runs


@pytest.fixture
def libvirt(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    calls: dict[str, list[str]] = {"removed": [], "domains": []}
    monkeypatch.setattr(runs, "list_domains", lambda uri: list(calls["domains"]))

    def remove(uri: str, pool: str, prefix: str) -> list[str]:
        calls["removed"].append(prefix)
        return [f"domain {prefix}default"]

    monkeypatch.setattr(runs, "remove_libvirt_leftovers", remove)
    return calls


def test_a_live_run_is_not_reaped(tmp_path: Path, libvirt: dict[str, list[str]]) -> None:
    live = RunLock(tmp_path / "runs" / "20260101-000000-aaaaaa")
    try:
        assert reap_stale_runs(tmp_path, "20260101-000001-bbbbbb", "qemu:///system", "p") == []
        assert libvirt["removed"] == []
    finally:
        live.release()


def test_a_run_whose_process_died_is_reaped(tmp_path: Path,
                                            libvirt: dict[str, list[str]]) -> None:
    run_dir = tmp_path / "runs" / "20260101-000000-aaaaaa"
    # Another process takes the lock and dies: the kernel frees the lock with it.
    code = (f"import sys, pathlib; sys.path.insert(0, {str(Path.cwd())!r});"
            f" from pytest_portable_upgrade.machine.runs import RunLock;"
            f" RunLock(pathlib.Path({str(run_dir)!r}))")
    subprocess.run([sys.executable, "-c", code], check=True)
    removed = reap_stale_runs(tmp_path, "20260101-000001-bbbbbb", "qemu:///system", "p")
    assert libvirt["removed"] == ["pwt-20260101-000000-aaaaaa-"]
    assert f"run dir {run_dir}" in removed
    assert not run_dir.exists()


def test_a_kept_run_is_not_reaped(tmp_path: Path, libvirt: dict[str, list[str]]) -> None:
    lock = RunLock(tmp_path / "runs" / "20260101-000000-aaaaaa")
    lock.keep()
    lock.release()
    assert reap_stale_runs(tmp_path, "x", "qemu:///system", "p") == []


def test_an_orphan_domain_without_run_dir_is_reaped(tmp_path: Path,
                                                    libvirt: dict[str, list[str]]) -> None:
    libvirt["domains"] = ["pwt-20260101-000000-cccccc-default", "someone-elses-vm"]
    reap_stale_runs(tmp_path, "x", "qemu:///system", "p")
    assert libvirt["removed"] == ["pwt-20260101-000000-cccccc-"]


def test_the_current_run_is_never_reaped(tmp_path: Path, libvirt: dict[str, list[str]]) -> None:
    libvirt["domains"] = ["pwt-20260101-000000-dddddd-default"]
    assert reap_stale_runs(tmp_path, "20260101-000000-dddddd", "qemu:///system", "p") == []


def test_two_locks_on_one_run_collide(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "r")
    try:
        with pytest.raises(BlockingIOError):
            RunLock(tmp_path / "r")
    finally:
        first.release()
