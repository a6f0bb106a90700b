"""Run long host commands with their output in a log file and a heartbeat on the terminal."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.core.log import log


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:110] if lines else ""


@contextmanager
def heartbeat(log_path: Path, every: float = 15.0) -> Iterator[None]:
    """While the body runs, print elapsed time and the newest line of ``log_path``."""
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            log.info(f"… {time.monotonic() - start:4.0f} s: {_last_line(log_path)}")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_logged(
    cmd: Sequence[str],
    log_path: Path,
    timeout: float,
    what: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run ``cmd``, appending its output to ``log_path``; raise HarnessError on failure.

    A child still running at ``timeout`` is killed (by its PID, via the Popen handle).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out, heartbeat(log_path):
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise HarnessError(
                f"{what}: no result after {timeout:.0f} s (killed); see {log_path}"
            ) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise HarnessError(
            f"{what} failed (exit {rc}): {_last_line(log_path)!r}; full log: {log_path}"
        )


@contextmanager
def signals_deferred(what: str) -> Iterator[None]:
    """While the body runs, SIGINT and SIGTERM only say that ``what`` finishes first.

    Clean-up (destroying the VM) must not be cut short by the second signal a terminal's Ctrl-C
    brings (tox passes it on) or by an impatient second Ctrl-C. Commands the body starts run in
    their own session (``start_new_session``), so the terminal's signals do not reach them
    either. Only the main thread can set handlers; elsewhere the body simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, _frame: object) -> None:
        log.info(f"{signal.Signals(signum).name} received: finishing {what} first")

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
