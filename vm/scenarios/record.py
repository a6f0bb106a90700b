"""The run's row in summary.json: the measurements of a ``ScenarioRun`` and its verdict."""

from __future__ import annotations

from typing import Any

from pytest_portable_upgrade.report.report import scenario_record
from pytest_portable_upgrade.scenarios.checks import counter_consistent
from pytest_portable_upgrade.scenarios.run import ScenarioRun
from pytest_portable_upgrade.scenarios.verdict import (
    Verdict,
    expects_zero_unanswered,
    unanswered_of,
)


def summary_row(run: ScenarioRun, box: str, systemd_major: int,
                verdict: Verdict, systemd_package: str = "") -> dict[str, Any]:
    """The run's row in summary.json: the measurements and ``verdict`` (from ``verdict_of``);
    ``systemd_package`` is the guest's exact systemd package version."""
    s = run.scenario
    row = scenario_record(
        s.id, box, systemd_major, keepalive=s.keepalive, proxy=s.proxy,
        socket_location=s.socket_location, outcome=run.outcome, upgrade=run.upgrade,
        counter_ok=(None if run.final_count is None
                    else not counter_consistent(run.outcome, run.final_count)),
        verdict=verdict.label, problems=verdict.problems, systemd_package=systemd_package,
    )
    if run.outcome.holders is not None:
        h = run.outcome.holders
        row.update(holders=h.connections, holder_requests=h.requests, holders_broken=h.broken,
                   holders_server_closed=h.server_closed,
                   holders_switched_in_place=h.switched_in_place, holders_intact=h.intact)
    row.update(verdict_kind=verdict.kind, observed=verdict.observed, expect=s.expect,
               subject=run.subject.name, spec=str(run.subject.spec),
               user_checks_run=run.user_checks_run,
               user_check_failures=list(run.user_check_failures),
               shutdown=s.shutdown, profile=run.profile, from_version=s.from_version,
               to_version=s.to_version, socket_state_after=run.socket.state_after,
               attached_state=run.attached_state, attached_image=run.attached_image,
               service_user=run.service_user, dynamic_user=run.dynamic_user,
               rollout_ok=run.rollout_ok, reattach_driven_by=s.driver, **run.facts)
    figure = unanswered_of(run)
    row.update(hey_not_run=run.hey_not_run or None, count_before=run.count_before,
               count_after=run.final_count,
               unanswered=figure.as_dict() if figure is not None else None,
               unanswered_expected_zero=expects_zero_unanswered(run))
    return row
