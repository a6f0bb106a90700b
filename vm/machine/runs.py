"""Per-run bookkeeping on the host: a lock while a run lives, and reaping crashed runs.

Everything a run creates in libvirt is named ``pwt-<run-id>-…`` (domain, disk volume) and its
scratch lives in ``<state>/runs/<run-id>/``. A live run holds an exclusive lock on
``<run dir>/.lock``; a run whose lock can be taken is dead (crashed, killed), and what it
left is removed at the start of the next run. Runs kept on purpose (--keep-vm) are marked KEPT.
"""

from __future__ import annotations

import fcntl
import re
import shutil
from pathlib import Path
from typing import IO

from pytest_portable_upgrade.core.host import list_domains, remove_libvirt_leftovers
from pytest_portable_upgrade.core.log import log

RUN_DOMAIN = re.compile(r"^pwt-(\d{8}-\d{6}-[0-9a-f]{6})-")
KEPT_MARKER = "KEPT"


class RunLock:
    """Held for the whole session: tells other runs this one is alive."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self._file: IO[str] | None = (run_dir / ".lock").open("w")
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def keep(self) -> None:
        (self.run_dir / KEPT_MARKER).touch()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _is_dead(run_dir: Path) -> bool:
    if (run_dir / KEPT_MARKER).exists():
        return False
    lock = run_dir / ".lock"
    if not lock.exists():
        return True
    with lock.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def reap_stale_runs(state_dir: Path, current_run: str, libvirt_uri: str, pool: str) -> list[str]:
    """Remove domains, volumes and scratch dirs of dead runs; return what was removed."""
    runs_root = state_dir / "runs"
    removed: list[str] = []
    candidates = {p.name for p in runs_root.glob("*") if p.is_dir()}
    # Domains whose run directory is gone are orphans too.
    for domain in list_domains(libvirt_uri):
        match = RUN_DOMAIN.match(domain)
        if match:
            candidates.add(match.group(1))
    for run_id in sorted(candidates - {current_run}):
        run_dir = runs_root / run_id
        if run_dir.exists() and not _is_dead(run_dir):
            continue
        gone = remove_libvirt_leftovers(libvirt_uri, pool, f"pwt-{run_id}-")
        if run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            gone.append(f"run dir {run_dir}")
        if gone:
            log.info(f"removed leftovers of dead run {run_id}: {', '.join(gone)}")
            removed += gone
    return removed
