"""Each client's view in the report: the summary row's new keys, summary.md's and report.html's
table of clients, and the matrix cell of the naive and HAProxy rows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from support import DATA, clean_records, greeted, new_of, old_of, outcome, scenario_run

from pytest_portable_upgrade.load.hey import parse_hey_output
from pytest_portable_upgrade.report.html import summary_html
from pytest_portable_upgrade.report.matrix import build_matrix, unanswered_text
from pytest_portable_upgrade.report.report import (
    clients_table,
    hey_clients_cell,
    write_summary,
)
from pytest_portable_upgrade.scenarios.catalogue import Scenario, get_scenario
from pytest_portable_upgrade.scenarios.record import summary_row
from pytest_portable_upgrade.scenarios.run import ScenarioRun
from pytest_portable_upgrade.scenarios.verdict import verdict_of

NAIVE_POST = get_scenario("host-socket-keepalive-naive-post")
DRAIN = get_scenario("host-socket-keepalive-drain")
# The keys issue 21 adds to a row; every older key keeps its meaning (test_scenario.SCHEMA).
NEW_KEYS = ("method", "ab_answered", "hey", "hey_command", "hey_not_run", "probe_answered",
            "probe_failed", "count_before", "count_after", "unanswered",
            "unanswered_expected_zero")


def run_of(s: Scenario, hey: str | None, unanswered: int, **changes: Any) -> ScenarioRun:
    records = greeted(clean_records(), old_of(s), new_of(s))
    out = outcome(records, old=old_of(s), new=new_of(s))
    result = parse_hey_output((DATA / f"{hey}.txt").read_text()) if hey else None
    out = dataclasses.replace(out, hey=result, method=s.method or "GET",
                              hey_command="hey -c 10 ..." if hey else None)
    answered = (out.ab.successful + (result.successful if result else 0)
                + sum(1 for r in records if r.ok))
    return scenario_run(s, out, count_before=5000,
                        final_count=5000 + 1 + answered + unanswered, **changes)


def row_of(run: ScenarioRun, box: str = "debian-bookworm", systemd: int = 252) -> dict[str, Any]:
    return summary_row(run, box, systemd, verdict_of(run))


def test_a_row_gives_each_clients_answers_and_failures_by_kind() -> None:
    row = row_of(run_of(NAIVE_POST, "hey_naive_post", unanswered=25))
    assert [k for k in NEW_KEYS if k not in row] == []
    assert row["method"] == "POST" and row["ab_answered"] == 7000
    hey = row["hey"]
    assert (hey["answered"], hey["failed"]) == (1448, 11)
    assert hey["failed_by_kind"] == {"reset": 10, "eof": 1, "refused": 0, "timeout": 0,
                                     "other": 0}
    assert row["hey_not_run"] is None and row["hey_command"] == "hey -c 10 ..."
    assert row["probe_answered"] > 0 and row["probe_failed"] == 0
    figure = row["unanswered"]
    assert (figure["low"], figure["high"], figure["exact"]) == (15, 25, False)
    assert "ab records no bodies" in figure["reason"]
    assert row["unanswered_expected_zero"] is False
    assert row["count_before"] == 5000 and row["count_after"] > 5000
    json.dumps(row)


def test_a_row_without_hey_or_a_counter_says_so() -> None:
    why = "Fedora 43 packages no hey"
    run = dataclasses.replace(run_of(DRAIN, None, 0), count_before=None, hey_not_run=why)
    row = row_of(run)
    assert row["hey"] is None and row["hey_not_run"] == why
    assert row["unanswered"] is None and row["unanswered_expected_zero"] is True
    assert unanswered_text(row) == "-"
    assert hey_clients_cell(row) == f"not run: {why}"


def test_the_clients_table_has_one_row_per_run_with_the_figure() -> None:
    rows = [row_of(run_of(NAIVE_POST, "hey_naive_post", unanswered=25)),
            row_of(run_of(DRAIN, "hey_get_keepalive", unanswered=0))]
    table = clients_table(rows).splitlines()
    assert table[0].startswith("| scenario | method | ab answered / failed | hey answered")
    naive, drain = table[2], table[3]
    assert "| POST | 7000 / 0 | 1448 / 11 (reset 10, eof 1) |" in naive
    assert naive.endswith("| 15..25 |")
    assert "| GET | 7000 / 0 | 1001 / 0 |" in drain and drain.endswith("| -10..0 (expected 0) |")


def test_summary_md_and_report_html_show_the_clients_and_the_reasons(tmp_path: Path) -> None:
    rows = [row_of(run_of(NAIVE_POST, "hey_naive_post", unanswered=25))]
    write_summary(tmp_path, rows, {"boot": 1.0})
    md = (tmp_path / "summary.md").read_text()
    assert "## Each client's view" in md and "1448 / 11 (reset 10, eof 1)" in md
    assert f"- {NAIVE_POST.id}: server_done - answered" in md
    page = summary_html(rows, [], {"boot": 1.0})
    assert "<h2>Each client's view</h2>" in page and "<td>15..25</td>" in page
    assert "server_done - answered" in page


def test_the_matrix_shows_the_figure_in_the_naive_and_haproxy_rows_per_version() -> None:
    haproxy = get_scenario("host-socket-keepalive-haproxy")
    rows = [row_of(run_of(NAIVE_POST, "hey_naive_post", unanswered=25)),
            row_of(run_of(NAIVE_POST, "hey_naive_post", unanswered=40), "debian-trixie", 257),
            row_of(run_of(haproxy, "hey_naive_get", unanswered=3)),
            row_of(run_of(DRAIN, "hey_get_keepalive", unanswered=0))]
    cells = {r["scenario"]: r["cells"] for r in build_matrix(rows)["rows"]}
    naive = cells[NAIVE_POST.id]
    assert naive["debian-bookworm (systemd 252)"].endswith(
        "hey 11 failed / 1459, done but unanswered 15..25)")
    assert naive["debian-trixie (systemd 257)"].endswith("done but unanswered 30..40)")
    assert cells[haproxy.id]["debian-bookworm (systemd 252)"].endswith(
        "done but unanswered -7..3)")
    # Where 0 is expected the figure is the verdict's business, not the cell's.
    assert "unanswered" not in cells[DRAIN.id]["debian-bookworm (systemd 252)"]
