"""The users' own checks: ordinary pytest files in the directory a subject spec names
(``checks = "checks"``), run after each upgrade scenario, before the guest is reset.

They run in a pytest process of their own, the way a testinfra user runs them by hand::

    pytest --hosts=paramiko://pwt-guest --ssh-config=RUN_DIR/ssh_config --sudo CHECKS_DIR

so a check sees the stock ``host`` fixture of pytest-testinfra, plus ``run_record``: the
scenario's row of summary.json (its id, the numbers, the harness's own verdict) from this
plugin. A separate process keeps a user's conftest, plugins or a crash out of the suite's own
session. Each failure becomes one line in the run record, and ``verdict_of`` lists it as a
problem: a failing user check fails its scenario.

This module is also that pytest plugin (``-p pytest_portable_upgrade.subject.user_checks``);
the suite's own plugin is kept out of that process (``-p no:portable_upgrade``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RECORD_ENV = "PWT_RUN_RECORD"
TIMEOUT_S = 300.0


@dataclass(frozen=True)
class UserChecks:
    run: int  # checks that ran (passed or failed)
    failures: tuple[str, ...]  # "file::test: first line of the failure"


def failures_of(junit: Path) -> UserChecks:
    """Read pytest's JUnit XML: how many checks ran, and one line per failure or error."""
    root = ET.parse(junit).getroot()
    run, failures = 0, []
    for case in root.iter("testcase"):
        if case.find("skipped") is not None:
            continue
        run += 1
        for bad in (*case.findall("failure"), *case.findall("error")):
            message = (bad.get("message") or "").strip().splitlines()
            text = [line for line in (bad.text or "").strip().splitlines() if line.strip()]
            words = message[0] if message else bad.tag
            if bad.tag == "error" and text:  # "collection failure": the error is at the end
                words = f"{words}: {text[-1].strip()}"
            where = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
            failures.append(f"{where}: {words}")
    return UserChecks(run, tuple(failures))


def run_user_checks(directory: Path, hostspec: str, ssh_config: Path | None,
                    record: dict[str, Any], out_dir: Path, timeout: float = TIMEOUT_S,
                    ) -> UserChecks:
    """Run the pytest files in ``directory`` against ``hostspec`` (testinfra's --hosts) with
    ``record`` as the ``run_record`` fixture; their output goes to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run_record.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    # An empty ini of its own: the suite's pyproject.toml (addopts, markers, timeouts) is
    # not the users' configuration, wherever their directory lies.
    (out_dir / "pytest.ini").write_text("[pytest]\n")
    junit = out_dir / "junit.xml"
    junit.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", str(directory), "-c", str(out_dir / "pytest.ini"),
               "--rootdir", str(directory), "--confcutdir", str(directory),
               # the suite's own plugin stays out: its `host` is not testinfra's --hosts one
               "-p", "no:cacheprovider", "-p", "no:portable_upgrade", "-p", "no:html",
               "-p", "pytest_portable_upgrade.subject.user_checks",
               f"--hosts={hostspec}",
               f"--junitxml={junit}", "-q", "-rfE"]
    if ssh_config is not None:
        command += [f"--ssh-config={ssh_config}", "--sudo"]
    # The package is installed where this Python finds it: nothing to add to PYTHONPATH.
    env = {**os.environ, RECORD_ENV: str(out_dir / "run_record.json")}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env=env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return UserChecks(0, (f"{directory}: the user checks did not end within "
                              f"{timeout:.0f} s",))
    (out_dir / "output.txt").write_text(result.stdout + result.stderr)
    if result.returncode == 5:  # pytest: no tests collected
        return UserChecks(0, (f"{directory}: no user checks found (test_*.py files)",))
    if not junit.exists():
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        return UserChecks(0, (f"{directory}: pytest exited {result.returncode}: "
                              f"{' / '.join(tail)}",))
    checks = failures_of(junit)
    if result.returncode != 0 and not checks.failures:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:]
        return UserChecks(checks.run, (f"{directory}: pytest exited {result.returncode}: "
                                       f"{' / '.join(tail)}",))
    return checks


# --- the plugin in the users' pytest process ---------------------------------------------------
@pytest.fixture(scope="session")
def run_record() -> dict[str, Any]:
    """The scenario's row of summary.json: what the harness measured and judged."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        pytest.skip(f"no run record: {RECORD_ENV} is not set (run by the suite only)")
    record: dict[str, Any] = json.loads(Path(path).read_text())
    return record
