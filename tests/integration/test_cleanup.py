"""Ctrl-C as a terminal delivers it leaves nothing behind, and a restored guest is a Vagrant
machine like any other.

The first test starts a second ``tox -e integration`` in a process group of its own, waits until
its load runs, sends SIGINT to the whole group (tox, pytest and their children get it at once,
as from a terminal) and then looks for anything of that run: a domain, a volume, a qemu
process, a run directory, a half-saved guest. It runs first in the session and asks for the box
and the images but not for the session's VM, so only one VM runs at a time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.core.host import list_domains, pool_volumes

ROOT = Path(__file__).resolve().parents[2]
LOAD_MARKER = "  load: ab "  # run.log: the scenario's load has started
LOAD_WAIT_S = 900.0  # the nested run may boot cold (and save the guest) first
EXIT_WAIT_S = 360.0  # tox waits up to 240 + 60 + 30 s for pytest's clean-up (tox.ini)


def _qemu_processes_of(run_id: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and f"pwt-{run_id}-" in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_load(run_log: Path, proc: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + LOAD_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the nested run ended (exit {proc.returncode}) before its load; "
                        f"see {output}")
        if run_log.exists() and LOAD_MARKER in run_log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    pytest.fail(f"the nested run's load did not start within {LOAD_WAIT_S:.0f} s; see {output}")


@pytest.mark.vm
def test_ctrl_c_to_the_process_group_of_tox_leaves_nothing(
    settings: Settings, box: Any, images: Any, artifacts: Path,
) -> None:
    nested = artifacts / "ctrl-c"
    nested.mkdir(parents=True, exist_ok=True)
    output = nested / "tox-output.txt"
    env = {**os.environ, "PWT_STATE_DIR": str(settings.state_dir), "PWT_POOL": settings.pool,
           "PWT_BOX": settings.box, "PWT_RUN_TIMEOUT": "1500"}
    with output.open("wb") as out:
        proc = subprocess.Popen(
            ["tox", "-e", "integration", "--", "-k", "host-socket-no-keepalive",
             "-p", "no:cacheprovider", "--artifacts", str(nested),
             f"--junitxml={nested / 'junit.xml'}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            # As from a terminal: a run started in the background (`cmd &` in a script)
            # inherits SIGINT ignored, and so would the nested run (seen under the matrix).
            preexec_fn=_sigint_as_from_a_terminal,
        )
        pgid = os.getpgid(proc.pid)
        try:
            _wait_for_load(nested / "last" / "run.log", proc, output)
            os.killpg(pgid, signal.SIGINT)  # what a terminal's Ctrl-C does
            started = time.monotonic()
            proc.wait(timeout=EXIT_WAIT_S)
            took = time.monotonic() - started
        except BaseException:
            if proc.poll() is None:  # our own child: end it by its PID, then wait
                proc.terminate()
                proc.wait(timeout=EXIT_WAIT_S)
            raise
    text = output.read_text(errors="replace")
    run_id = (nested / "last").resolve().name
    assert run_id.startswith("20"), f"no run directory under {nested}"
    prefix = f"pwt-{run_id}-"

    leftovers = [f"domain {d}" for d in list_domains(settings.libvirt_uri)
                 if d.startswith(prefix)]
    leftovers += [f"volume {v}" for v, _ in pool_volumes(settings.libvirt_uri, settings.pool,
                                                         prefix)]
    leftovers += _qemu_processes_of(run_id)
    if (settings.state_dir / "runs" / run_id).exists():
        leftovers.append(f"run dir {settings.state_dir / 'runs' / run_id}")
    leftovers += [f"half-saved guest {p}" for p in (settings.state_dir / "saved").glob("*.tmp-*")]
    assert not leftovers, f"after Ctrl-C ({took:.0f} s to exit): {leftovers}; see {output}"
    # tox logs "second interrupt … forcing full stop" even for one group SIGINT (it hears the
    # signal and pytest's exit); what matters is that it never had to signal pytest itself
    # ("send signal SIGINT/SIGTERM/SIGKILL to <pid>"): pytest cleaned up on its own.
    assert "send signal" not in text, f"tox had to stop pytest by force; see {output}"
    assert proc.returncode != 0, "an interrupted run must not exit 0"
    assert "destroying" in (nested / "last" / "run.log").read_text(), (
        "the interrupted run never destroyed its VM")


@pytest.mark.vm
def test_vagrant_ssh_and_destroy_know_the_sessions_machine(machine: Any,
                                                           settings: Settings) -> None:
    """Whether the guest was restored or booted cold, Vagrant sees it as its machine."""
    from pytest_portable_upgrade.boxes.vagrant_boxes import vagrant_env

    result = subprocess.run(["vagrant", "ssh", "-c", "cat /etc/hostname"], cwd=settings.run_dir,
                            env=vagrant_env(settings.state_dir), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "pwt-guest", result
    status = subprocess.run(["vagrant", "status", "--machine-readable"], cwd=settings.run_dir,
                            env=vagrant_env(settings.state_dir), capture_output=True, text=True,
                            timeout=120, check=False)
    assert ",state,running" in status.stdout, status.stdout
