"""vm/report/report.py: summary.json, summary.md and the timeline PNG."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from support import (
    T0,
    ab_result,
    answer,
    clean_records,
    failure,
    outcome,
    probe_series,
    reattach,
)

from pytest_portable_upgrade.load.journal import JournalEntry, RestartGap
from pytest_portable_upgrade.report.report import (
    HOST_SOCKET_COLUMNS,
    SUMMARY_COLUMNS,
    host_socket_table,
    latency_table,
    markdown_table,
    plot_timeline,
    scenario_record,
    skipped_row,
    timeline_figure,
    write_summary,
)


def record(scenario: str = "host-socket-no-keepalive", **kwargs: Any) -> dict[str, Any]:
    out = kwargs.pop("outcome", None) or outcome(clean_records())
    return scenario_record(
        scenario, "debian-bookworm", 252, keepalive=False, proxy=None, socket_location="host",
        outcome=out, upgrade=reattach(), counter_ok=True,
        verdict=kwargs.pop("verdict", "pass"), problems=kwargs.pop("problems", []),
    )


def test_scenario_record_values() -> None:
    rec = record()
    assert rec["scenario"] == "host-socket-no-keepalive"
    assert rec["systemd_version"] == 252
    assert rec["complete"] == 7000 and rec["failed"] == 0
    assert rec["switched"] is True
    assert rec["switch_at_s"] == 6.2  # first Hola sent at +6.2 s, done 4 ms later
    assert rec["reattach_started_s"] == 5.0
    assert rec["reattach_s"] == 1.5
    assert rec["load_s"] == 30.0
    assert rec["probe_requests"] == len(clean_records())
    assert rec["probe_errors"] == {}
    assert rec["longest_gap_ms"] == 200.0
    assert rec["max_latency_ms"] == 4.0
    assert rec["ab_command"].startswith("ab -l -r")
    # Not read (a fake outcome), and no probe request waited: None, never 0.
    assert [rec[k] for k in ("listen_overflows", "listen_drops", "tcp_syn_retrans",
                             "restart_gap_journal_s", "restart_gap_journal_at_s",
                             "restart_gap_probe_s", "restart_gap_probe_at_s")] == [None] * 7
    assert not [k for k in rec if "syn_retransmit" in k]
    assert rec["probe_not_sent"] == 0 and rec["probe_sent_per_s"] == 5.0
    windows = rec["latency"]
    assert list(windows) == ["before", "switch", "after"]
    # Reattach at +5.0 s, first Hola done at +6.204 s: the switch window ends 2 s later.
    assert (windows["switch"]["from_s"], windows["switch"]["to_s"]) == (5.0, 8.2)
    # Sent every 0.2 s: +0.2..+4.8 before, +5.0..+8.2 (< 8.204) in the switch window.
    assert [windows[w]["requests"] for w in windows] == [24, 17, 108]
    assert windows["before"]["p99_ms"] == 4.0
    json.dumps(rec)  # summary.json must be able to hold it


def measured_outcome() -> Any:
    """The clean run, but the host socket held the probe's requests from +5.4 s until v2
    answered at +6.9 s, the journal saw v1 gone at +5.38 s and v2 started at +6.5 s, and the
    kernel counted 3 overflows."""
    records = [r for r in clean_records() if not 5.4 <= r.t - T0 < 7.0]
    records += [answer(T0 + 5.4, "Hola", 990, latency_ms=1500.0),
                answer(T0 + 5.6, "Hola", 991, latency_ms=1302.0)]
    gap = RestartGap(JournalEntry(T0 + 5.38, "x.service: Deactivated successfully."),
                     JournalEntry(T0 + 6.5, "Started x.service."))
    return dataclasses.replace(
        outcome(sorted(records, key=lambda r: r.t)), journal_gap=gap, journal_read=True,
        tcp={"listen_overflows": 3, "listen_drops": 3, "tcp_syn_retrans": 0})


def test_scenario_record_has_the_kernel_counts_and_both_restart_gaps() -> None:
    rec = record(outcome=measured_outcome())
    assert (rec["listen_overflows"], rec["listen_drops"], rec["tcp_syn_retrans"]) == (3, 3, 0)
    assert (rec["restart_gap_probe_s"], rec["restart_gap_probe_at_s"]) == (1.5, 5.4)
    assert (rec["restart_gap_journal_s"], rec["restart_gap_journal_at_s"]) == (1.12, 5.38)
    json.dumps(rec)


def test_the_host_socket_table_gives_both_gaps_and_the_counts() -> None:
    table = host_socket_table([record("a"), record("b", outcome=measured_outcome()),
                               {"scenario": "old-row"}])
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["scenario", *(title for title, _ in HOST_SOCKET_COLUMNS)]
    rows = {r[0]: dict(zip(head, r, strict=True))
            for r in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}
    assert rows["b"] == {"scenario": "b", "restart gap (journal) s": "1.12",
                         "restart gap (probe) s": "1.50", "listen overflows": "3",
                         "listen drops": "3", "SYN/SYN-ACK retransmits": "0"}
    # Not measured is "-", never 0; a row of an older run has none of the keys.
    assert set(rows["a"].values()) - {"a"} == {"-"} and set(rows["old-row"].values()) == {
        "old-row", "-"}


def test_no_latency_column_claims_a_retransmit() -> None:
    head = latency_table([record("a")]).splitlines()[0]
    assert "SYN" not in head and "retrans" not in head.lower()
    # An old summary.json row whose windows still have syn_1s / syn_3s renders as well.
    old = record("old")
    for w in old["latency"].values():
        w.update(syn_1s=4, syn_3s=0)
    assert latency_table([old]).splitlines()[2].count("|") == head.count("|")


def test_scenario_record_without_switch() -> None:
    out = outcome(probe_series(T0 + 0.2, T0 + 30.0, "Hello", 3))
    rec = record(outcome=out, verdict="FAIL", problems=["never saw 'Hola'"])
    assert rec["switched"] is False
    assert rec["switch_at_s"] is None
    assert rec["problems"] == ["never saw 'Hola'"]


def test_latency_table_has_a_row_per_scenario_and_window() -> None:
    lossy = clean_records()
    lossy[26] = failure(lossy[26].t, "refused")  # +5.4 s: in the switch window
    lossy[27] = failure(lossy[27].t, "connect-refused")
    lossy[100] = failure(lossy[100].t, "reset")  # after
    table = latency_table([record("a"), record("b", outcome=outcome(lossy)),
                           {"scenario": "old-row-without-latency"}])
    lines = table.splitlines()
    assert len(lines) == 2 + 6
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:8] == ["scenario", "window", "from s", "to s", "requests", "p50 ms", "p99 ms",
                        "max ms"]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert all(len(row) == len(head) for row in rows)
    by = {(row[0], row[1]): dict(zip(head, row, strict=True)) for row in rows}
    assert by[("a", "before reattach")]["to s"] == "5.0"
    assert by[("a", "after")]["to s"] == "-"
    assert by[("b", "reattach to v2 + 2 s")]["refused"] == "2"
    assert by[("b", "after")]["reset"] == "1" and by[("b", "after")]["refused"] == "0"
    assert by[("a", "reattach to v2 + 2 s")]["p99 ms"] == "4.0"


def test_markdown_table_has_one_row_per_record_and_dashes_for_none() -> None:
    no_switch = record("b", outcome=outcome(probe_series(T0 + 0.2, T0 + 30.0, "Hello", 3)),
                       verdict="FAIL")
    table = markdown_table([record("a"), no_switch])
    lines = table.splitlines()
    assert len(lines) == 2 + 2
    assert lines[0] == "| " + " | ".join(title for title, _ in SUMMARY_COLUMNS) + " |"
    assert lines[1].count("---") == len(SUMMARY_COLUMNS)
    cells = [ln.strip("|").split(" | ") for ln in lines[2:]]
    assert all(len(row) == len(SUMMARY_COLUMNS) for row in cells)
    switch_col = [key for _, key in SUMMARY_COLUMNS].index("switch_at_s")
    assert cells[0][switch_col].strip() == "6.2"
    assert cells[1][switch_col].strip() == "-"
    assert cells[1][0].strip() == "b" and "FAIL" in lines[3]
    assert "None" not in table


def test_markdown_table_missing_keys_and_floats() -> None:
    table = markdown_table([{"scenario": "x", "requests_per_second": 1234.5678}])
    row = table.splitlines()[2]
    assert "1234.6" in row
    assert row.count(" - ") == len(SUMMARY_COLUMNS) - 2


def test_markdown_table_without_records() -> None:
    assert len(markdown_table([]).splitlines()) == 2


def test_write_summary(tmp_path: Path) -> None:
    directory = tmp_path / "artifacts" / "run-1"
    records = [record("a"), record("b", verdict="FAIL", problems=["p1"])]
    write_summary(directory, records, {"box": 12.04, "boot": 92.31})
    data = json.loads((directory / "summary.json").read_text())
    assert set(data) == {"scenarios", "skipped", "phases_s"}
    assert data["skipped"] == []
    assert [s["scenario"] for s in data["scenarios"]] == ["a", "b"]
    assert data["scenarios"][1]["problems"] == ["p1"]
    assert data["phases_s"] == {"box": 12.04, "boot": 92.31}
    md = (directory / "summary.md").read_text()
    assert md.startswith("# Zero-downtime reattach: results\n")
    assert markdown_table(records) in md
    assert "- box: 12.0 s" in md and "- boot: 92.3 s" in md
    assert "## What the restart did to latency" in md and latency_table(records) in md
    assert "## What the host socket held" in md and host_socket_table(records) in md
    assert data["scenarios"][0]["latency"]["switch"]["from_s"] == 5.0


def test_write_summary_lists_the_skipped_scenarios_with_their_reason(tmp_path: Path) -> None:
    skipped = [skipped_row("host-socket-user-portable", "debian-trixie", 257, "257.9-1~deb13u1",
                           "systemd 257 has no user portable services")]
    write_summary(tmp_path, [record("a")], {}, skipped=skipped)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["skipped"] == [{"scenario": "host-socket-user-portable", "box": "debian-trixie",
                                "systemd_version": 257, "systemd_package": "257.9-1~deb13u1",
                                "skipped": "systemd 257 has no user portable services"}]
    md = (tmp_path / "summary.md").read_text()
    assert ("## Skipped on this guest\n\n- host-socket-user-portable: systemd 257 has no user "
            "portable services\n") in md


def test_the_summary_row_carries_the_systemd_package() -> None:
    assert record("a")["systemd_package"] == ""
    column = [key for _, key in SUMMARY_COLUMNS].index("systemd_package")
    row = markdown_table([{"scenario": "a", "systemd_package": "262.1-1"}]).splitlines()[2]
    assert row.strip("|").split(" | ")[column].strip() == "262.1-1"


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_timeline_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "host-socket.png"
    plot_timeline(path, "host socket, no keep-alive", outcome(clean_records()), reattach())
    assert is_png(path)
    assert path.stat().st_size > 5000


def test_plot_timeline_with_failures_and_no_switch(tmp_path: Path) -> None:
    records = probe_series(T0 + 0.2, T0 + 10.0, "Hello", 3)
    records += [failure(T0 + 10.2 + i / 5, "connect-refused") for i in range(5)]
    out = outcome(records, stopped=T0 + 12.0, ab=ab_result(failed=3, connect=3))
    path = tmp_path / "fail.png"
    plot_timeline(path, "broken", out, reattach())
    assert is_png(path) and path.stat().st_size > 5000


@pytest.mark.parametrize("latency_ms", [0.0, 1e-9, 0.001, 0.5])
def test_plot_timeline_with_zero_or_tiny_latencies(tmp_path: Path, latency_ms: float) -> None:
    """The latency axis is log scale: 0 ms and sub-ms answers must not break the plot."""
    records = [answer(T0 + 0.2 + i / 5, "Hello" if i < 30 else "Hola", 3 + 25 * i,
                      latency_ms=latency_ms) for i in range(100)]
    records.append(failure(T0 + 6.0, "connect-refused", latency_ms=latency_ms))
    path = tmp_path / "fast.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "non-positive ylim on a log axis"
        plot_timeline(path, "sub-millisecond answers", outcome(records), reattach())
    assert is_png(path) and path.stat().st_size > 5000


def test_plot_timeline_with_a_single_zero_latency_answer(tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_timeline(path, "one answer", outcome([answer(T0 + 1.0, "Hello", 3, 0.0)]),
                      reattach())
    assert is_png(path)


def test_stability_table_counts_expected_verdicts_per_scenario() -> None:
    from pytest_portable_upgrade.report.report import stability_table

    rows = [{"scenario": "a", "verdict": "pass"}, {"scenario": "a", "verdict": "FAIL"},
            {"scenario": "a", "verdict": "pass"},
            {"scenario": "b", "verdict": "xfail: loss seen (expected)"},
            {"scenario": "b", "verdict": "xfail: loss seen (expected)"}]
    table = stability_table(rows)
    assert "| a | 2/3 | 3 | pass x2, FAIL x1 |" in table
    assert "| b | 2/2 | 2 | xfail: loss seen (expected) x2 |" in table
    assert stability_table(rows[:1] + rows[3:4]) == ""  # one run each: no table


def test_readme_names_the_command_behind_every_evidence_file() -> None:
    """docs/report.md gives the exact guest command of each saved file (for
    the default subject, the walkthrough)."""
    from support import WALKTHROUGH

    from pytest_portable_upgrade.systemd.portable import evidence_commands

    readme = (Path(__file__).resolve().parents[2] / "docs" / "report.md").read_text()
    for name, command in evidence_commands(WALKTHROUGH).items():
        assert f"| `{name}` | `{command}`" in readme, name
def window_labels(out: Any) -> list[str]:
    import matplotlib.pyplot as plt

    fig = timeline_figure("t", out, reattach())
    try:
        return [t.get_text() for t in fig.axes[0].texts]
    finally:
        plt.close(fig)


def test_timeline_shows_the_three_windows_with_their_numbers() -> None:
    records = clean_records()
    records[26] = failure(records[26].t, "refused")
    labels = window_labels(outcome(records))
    assert [label.split("\n")[0] for label in labels] == [
        "before reattach", "reattach to v2 + 2 s", "after"]
    assert labels[0] == "before reattach\np99 4 ms, 0 failed"
    assert labels[1] == "reattach to v2 + 2 s\np99 4 ms, 1 failed"


def test_timeline_labels_claim_no_retransmit_from_latencies() -> None:
    """A request answered in 1.04 s is in the band the old labels called a SYN step."""
    records = clean_records()
    records[27] = answer(records[27].t, "Hello", 700, latency_ms=1040.0)
    labels = window_labels(outcome(records))
    assert not [label for label in labels if "SYN" in label]


def test_timeline_title_gives_both_gaps_and_the_kernels_counts() -> None:
    import matplotlib.pyplot as plt

    fig = timeline_figure("t", measured_outcome(), reattach())
    try:
        title = fig.axes[0].get_title()
    finally:
        plt.close(fig)
    assert title.splitlines()[-1] == (
        "restart gap: journal 1.12 s, probe 1.50 s; kernel: 3 listen overflows, 3 drops, "
        "0 SYN/SYN-ACK retransmits")
    fig = timeline_figure("t", outcome(clean_records()), reattach())
    try:
        assert fig.axes[0].get_title().splitlines()[-1] == (
            "restart gap: journal -, probe -; kernel: - listen overflows, - drops, "
            "- SYN/SYN-ACK retransmits")
    finally:
        plt.close(fig)


def test_timeline_without_a_switch_has_no_after_window() -> None:
    labels = window_labels(outcome(probe_series(T0 + 0.2, T0 + 30.0, "Hello", 3)))
    assert [label.split("\n")[0] for label in labels] == ["before reattach",
                                                          "reattach to v2 + 2 s"]


def test_summary_gives_the_median_overhead() -> None:
    from pytest_portable_upgrade.report.report import overhead_line

    rows = [{"overhead_s": v} for v in (8.0, 21.7, 8.5, 8.4)]
    assert overhead_line(rows).startswith(
        "Overhead per scenario (wall time beyond the load window): median 8.4 s, 8.0 to 21.7 s "
        "over 4 scenarios.")
    assert overhead_line([{"scenario": "x"}]) == ""


def test_the_summary_shows_each_sets_image_sizes() -> None:
    from pytest_portable_upgrade.report.report import image_sizes_table

    rows = [{"scenario": "host-socket-extension-no-keepalive",
             "image_bytes": {"p-base.raw": 31_500_000, "p_2.raw": 8192}},
            {"scenario": "host-socket-no-keepalive"}]
    assert image_sizes_table(rows).splitlines() == [
        "| scenario | files (MB) |", "|---|---|",
        "| host-socket-extension-no-keepalive | p-base.raw 31.50, p_2.raw 0.01 |"]
    assert image_sizes_table(rows[1:]) == ""
