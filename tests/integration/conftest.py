"""Shared by the scenario tests: run one scenario, run the user's own checks on it, judge it
once, record its row and timeline."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.machine.guest_host import SSH_CONFIG_HOST
from pytest_portable_upgrade.plugin.outcome import VERDICT_KEY
from pytest_portable_upgrade.report.report import plot_timeline, skipped_row
from pytest_portable_upgrade.scenarios.catalogue import Scenario
from pytest_portable_upgrade.scenarios.record import summary_row
from pytest_portable_upgrade.scenarios.run import ScenarioUnsupported, run_scenario
from pytest_portable_upgrade.scenarios.verdict import Verdict, verdict_of
from pytest_portable_upgrade.systemd.portable import ImageRefused, PortableService


@pytest.fixture
def run_recorded(
    clean_service: PortableService, settings: Settings, artifacts: Path, record_scenario: Any,
    record_skip: Any, record_phase: Any, repeat_index: int, systemd_package: str,
    request: pytest.FixtureRequest, ssh_config: Path,
) -> Callable[[Scenario], Verdict]:
    """Run a scenario and return its verdict (hand it to ``conclude``); the summary row and
    the PNG timeline are written from that same verdict, whatever it is. A scenario the guest
    or the subject cannot run is skipped with the reason, which the report and the matrix
    show too; an image portablectl refuses ends the run with portablectl's words. The spec's
    own checks run after the upgrade and their failures become problems of the run
    (verdict_of)."""

    def run(scenario: Scenario) -> Verdict:
        start = time.monotonic()
        try:
            result = run_scenario(clean_service, settings, scenario)
        except ScenarioUnsupported as e:
            record_skip(skipped_row(scenario.id, settings.box, clean_service.systemd_major,
                                    systemd_package, str(e)))
            pytest.skip(str(e))
        except ImageRefused as e:
            pytest.exit(f"pwt: {e}", returncode=3)
        checks = clean_service.subject.checks
        if checks is not None:
            from pytest_portable_upgrade.subject.user_checks import run_user_checks

            # Their run record is the row as the harness judged it before their checks.
            before = summary_row(result, settings.box, clean_service.systemd_major,
                                 verdict_of(result), systemd_package=systemd_package)
            outcome = run_user_checks(checks, f"paramiko://{SSH_CONFIG_HOST}", ssh_config,
                                      before, artifacts / request.node.name / "user-checks")
            result = dataclasses.replace(result, user_checks_run=outcome.run,
                                         user_check_failures=outcome.failures)
        verdict = verdict_of(result)
        request.node.stash[VERDICT_KEY] = verdict
        suffix = f" run{repeat_index}" if repeat_index > 1 else ""
        record_phase(f"scenario {scenario.id}{suffix}", time.monotonic() - start)
        row = summary_row(result, settings.box, clean_service.systemd_major, verdict,
                          systemd_package=systemd_package)
        row["scenario_s"] = round(time.monotonic() - start, 1)
        row["overhead_s"] = round(row["scenario_s"] - row["load_s"], 1)
        row["repeat"] = repeat_index
        record_scenario(row)
        name = scenario.id if repeat_index == 1 else f"{scenario.id}-run{repeat_index}"
        plot_timeline(artifacts / f"{name}.png",
                      f"{scenario.id} (systemd {clean_service.systemd_major})",
                      result.outcome, result.upgrade)
        return verdict

    return run
