"""The evidence a run leaves: summary.json, summary.md and one PNG timeline per scenario."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_portable_upgrade.load.kernel import COUNTERS
from pytest_portable_upgrade.load.latency import WINDOWS, LatencyReport, latency_report
from pytest_portable_upgrade.load.load import LoadOutcome
from pytest_portable_upgrade.load.timeline import FAILURE_CLASSES
from pytest_portable_upgrade.report.matrix import unanswered_text
from pytest_portable_upgrade.systemd.portable import Upgrade

SUMMARY_COLUMNS = (
    ("scenario", "scenario"), ("systemd", "systemd_version"),
    ("systemd package", "systemd_package"), ("verdict", "verdict"),
    ("complete", "complete"), ("failed", "failed"), ("non-2xx", "non_2xx"),
    ("req/s", "requests_per_second"), ("reattach s", "reattach_s"),
    ("switch at s", "switch_at_s"), ("longest gap ms", "longest_gap_ms"),
    ("max latency ms", "max_latency_ms"), ("counter ok", "counter_ok"),
    ("load s", "load_s"), ("overhead s", "overhead_s"),
)


def overhead_line(records: Sequence[dict[str, Any]]) -> str:
    """The median of the scenarios' overhead (wall time beyond the load window), or ""."""
    values = sorted(r["overhead_s"] for r in records if isinstance(r.get("overhead_s"),
                                                                   (int, float)))
    if not values:
        return ""
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return (f"Overhead per scenario (wall time beyond the load window): median {median:.1f} s, "
            f"{values[0]:.1f} to {values[-1]:.1f} s over {len(values)} scenarios.\n\n")


def scenario_record(
    scenario: str, box: str, systemd_version: int, keepalive: bool, proxy: str | None,
    socket_location: str, outcome: LoadOutcome, upgrade: Upgrade, counter_ok: bool | None,
    verdict: str, problems: Sequence[str], systemd_package: str = "",
) -> dict[str, Any]:
    """One row of summary.json (the schema is documented in the README).

    ``systemd_package`` is the exact package version read from the guest ("" if unknown):
    a moving suite can change it while ``systemd_version`` (the major) stays."""
    ab, tl = outcome.ab, outcome.timeline
    latency = latency_report(tl, upgrade.started, outcome.stopped)
    return {
        "scenario": scenario, "box": box, "systemd_version": systemd_version,
        "systemd_package": systemd_package,
        "keepalive": keepalive, "proxy": proxy, "socket_location": socket_location,
        "complete": ab.complete, "failed": ab.failed, "failed_connect": ab.failed_connect,
        "failed_receive": ab.failed_receive, "failed_length": ab.failed_length,
        "failed_exceptions": ab.failed_exceptions, "non_2xx": ab.non_2xx,
        "requests_per_second": ab.requests_per_second,
        "probe_requests": len(tl.records), "probe_errors": tl.errors,
        "switched": tl.switch_at is not None,
        "switch_at_s": round(tl.switch_at - outcome.started, 2) if tl.switch_at else None,
        "reattach_started_s": round(upgrade.started - outcome.started, 2),
        "reattach_s": round(upgrade.duration_s, 2),
        "load_s": round(outcome.duration_s, 2),
        "max_latency_ms": tl.max_latency_ms,
        # longest_gap_ms (counted to the load's end), the probe's restart gap, the windows
        **latency.summary_fields(),
        **journal_fields(outcome),
        **{key: outcome.tcp.get(key) for key in COUNTERS},  # the kernel's, over the load
        "counter_ok": counter_ok, "verdict": verdict, "problems": list(problems),
        "ab_command": outcome.ab_command,
        **client_fields(outcome),
    }


def client_fields(outcome: LoadOutcome) -> dict[str, Any]:
    """Each client's answered and failed, by kind (docs/clients.md): the method every client
    sent, ab's 2xx answers (its failures by kind are the row's ``failed_*``), hey's report
    (None: it did not run), the probe's answers."""
    tl = outcome.timeline
    return {
        "method": outcome.method,
        "ab_answered": outcome.ab.successful,
        "hey": outcome.hey.as_dict() if outcome.hey is not None else None,
        "hey_command": outcome.hey_command,
        "probe_answered": sum(1 for r in tl.records if r.ok),
        "probe_failed": len(tl.records) - sum(1 for r in tl.records if r.ok),
    }


def ab_clients_cell(row: dict[str, Any]) -> str:
    """ab's answered / failed, its failures by kind."""
    kinds = ", ".join(f"{name} {row.get(f'failed_{name}', 0)}" for name in
                      ("connect", "receive", "length", "exceptions")
                      if row.get(f"failed_{name}"))
    answered = row.get("ab_answered", "-")
    return f"{answered} / {row.get('failed', '-')}" + (f" ({kinds})" if kinds else "")


def hey_clients_cell(row: dict[str, Any]) -> str:
    """hey's answered / failed by kind, or why it did not run ("-": not a keep-alive row)."""
    hey = row.get("hey")
    if hey is None:
        why = row.get("hey_not_run")
        return f"not run: {why}" if why and row.get("keepalive") else "-"
    kinds = ", ".join(f"{k} {n}" for k, n in hey["failed_by_kind"].items() if n)
    non_2xx = f", non-2xx {hey['non_2xx']}" if hey["non_2xx"] else ""
    return f"{hey['answered']} / {hey['failed']}" + (f" ({kinds}{non_2xx})" if kinds or non_2xx
                                                      else "")


def clients_table(records: Sequence[dict[str, Any]]) -> str:
    """Per scenario: each client's answered / failed (by kind), the method, and what the
    server did that no client got answered (docs/clients.md; "-": not measured)."""
    lines = ["| scenario | method | ab answered / failed | hey answered / failed | "
             "probe answered / failed | done but unanswered |", "|---|---|---|---|---|---|"]
    for rec in records:
        probe = (f"{rec['probe_answered']} / {rec['probe_failed']}"
                 if "probe_answered" in rec else "-")
        figure = unanswered_text(rec)
        if figure != "-" and rec.get("unanswered_expected_zero"):
            figure += " (expected 0)"
        lines.append(f"| {rec.get('scenario')} | {rec.get('method', '-')} | "
                     f"{ab_clients_cell(rec)} | {hey_clients_cell(rec)} | {probe} | {figure} |")
    return "\n".join(lines)


def unanswered_reasons(records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(scenario, how its figure was found or why it is only a bound), for every row with
    a figure: the words beside clients_table."""
    return [(str(rec.get("scenario")), str(rec["unanswered"]["reason"])) for rec in records
            if rec.get("unanswered")]


def journal_fields(outcome: LoadOutcome) -> dict[str, Any]:
    """The restart gap from the service's journal: seconds, and when the old main process was
    gone (s after the load start); None when the journal was not read or showed no restart."""
    gap = outcome.journal_gap
    return {
        "restart_gap_journal_s": None if gap is None else round(gap.seconds, 2),
        "restart_gap_journal_at_s": None if gap is None
        else round(gap.gone.at - outcome.started, 2),
    }


def skipped_row(scenario: str, box: str, systemd_version: int, systemd_package: str,
                reason: str) -> dict[str, Any]:
    """A scenario the guest could not run (summary.json's "skipped"), with the reason, e.g.
    "systemd 257 has no user portable services (portablectl --user, added in 260)"."""
    return {"scenario": scenario, "box": box, "systemd_version": systemd_version,
            "systemd_package": systemd_package, "skipped": reason}


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for title, _ in SUMMARY_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"
    rows = []
    for rec in records:
        cells = []
        for _, key in SUMMARY_COLUMNS:
            value = rec.get(key)
            cells.append("-" if value is None else (f"{value:.1f}" if isinstance(value, float)
                                                     else str(value)))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


WINDOW_TITLES = {"before": "before reattach", "switch": "reattach to v2 + 2 s",
                 "after": "after"}


def latency_table(records: Sequence[dict[str, Any]]) -> str:
    """Per scenario and window: the probe's latency and its failures by class."""
    head = ("| scenario | window | from s | to s | requests | p50 ms | p99 ms | max ms | "
            + " | ".join(FAILURE_CLASSES) + " | not sent |")
    columns = head.count("|") - 1
    lines = [head, "|" + "|".join("---" for _ in range(columns)) + "|"]

    def cell(value: Any) -> str:
        return "-" if value is None else (f"{value:.1f}" if isinstance(value, float)
                                          else str(value))

    for rec in records:
        windows = rec.get("latency") or {}
        for name in WINDOWS:
            w = windows.get(name)
            if w is None:
                continue
            failures = w.get("failures", {})
            cells = [rec.get("scenario"), WINDOW_TITLES[name], w.get("from_s"), w.get("to_s"),
                     w.get("requests"), w.get("p50_ms"), w.get("p99_ms"), w.get("max_ms"),
                     *(failures.get(kind, 0) for kind in FAILURE_CLASSES), w.get("not_sent")]
            lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines)


HOST_SOCKET_COLUMNS = (
    ("restart gap (journal) s", "restart_gap_journal_s"),
    ("restart gap (probe) s", "restart_gap_probe_s"),
    ("listen overflows", "listen_overflows"), ("listen drops", "listen_drops"),
    ("SYN/SYN-ACK retransmits", "tcp_syn_retrans"),
)


def host_socket_table(records: Sequence[dict[str, Any]]) -> str:
    """Per scenario: the restart gap both ways and the kernel's counters over the load
    ("-": not measured; a row from an older run has none of these keys)."""
    head = "| scenario | " + " | ".join(title for title, _ in HOST_SOCKET_COLUMNS) + " |"
    lines = [head, "|---|" + "---|" * len(HOST_SOCKET_COLUMNS)]
    for rec in records:
        cells = ["-" if (v := rec.get(key)) is None else (f"{v:.2f}" if isinstance(v, float)
                                                           else str(v))
                 for _, key in HOST_SOCKET_COLUMNS]
        lines.append(f"| {rec.get('scenario')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def image_sizes_table(records: Sequence[dict[str, Any]]) -> str:
    """Per scenario: the files of its image set as uploaded (``image_bytes``), in MB: what an
    upgrade moves (a whole image, or an extension beside a base that stays); "" when no row
    has them."""
    rows = [rec for rec in records if rec.get("image_bytes")]
    if not rows:
        return ""
    lines = ["| scenario | files (MB) |", "|---|---|"]
    for rec in rows:
        files = ", ".join(f"{name} {size / 1e6:.2f}" for name, size in rec["image_bytes"].items())
        lines.append(f"| {rec.get('scenario')} | {files} |")
    return "\n".join(lines)


def stability_table(records: Sequence[dict[str, Any]]) -> str:
    """Per scenario: how many runs gave the expected verdict (only when run more than once)."""
    by_scenario: dict[str, list[str]] = {}
    for rec in records:
        by_scenario.setdefault(rec["scenario"], []).append(rec["verdict"])
    if all(len(v) < 2 for v in by_scenario.values()):
        return ""
    lines = ["| scenario | as expected | runs | verdicts seen |", "|---|---|---|---|"]
    for scenario, verdicts in by_scenario.items():
        good = sum(not v.startswith("FAIL") for v in verdicts)
        seen = ", ".join(f"{v} x{verdicts.count(v)}" for v in dict.fromkeys(verdicts))
        lines.append(f"| {scenario} | {good}/{len(verdicts)} | {len(verdicts)} | {seen} |")
    return "\n".join(lines)


def write_summary(directory: Path, records: Sequence[dict[str, Any]],
                  phases: dict[str, float],
                  skipped: Sequence[dict[str, Any]] = ()) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.json").write_text(
        json.dumps({"scenarios": list(records), "skipped": list(skipped), "phases_s": phases},
                   indent=2) + "\n"
    )
    skipped_md = "".join(f"- {r['scenario']}: {r['skipped']}\n" for r in skipped)
    skipped_md = f"## Skipped on this guest\n\n{skipped_md}\n" if skipped else ""
    phase_lines = "\n".join(f"- {name}: {secs:.1f} s" for name, secs in phases.items())
    stability = stability_table(records)
    stability_md = f"## Verdict stability\n\n{stability}\n\n" if stability else ""
    latency_md = (
        "## What the restart did to latency\n\n"
        "The probe's requests by send time (open loop, fixed rate); latencies of answered "
        "requests, failures by class. See README, \"Reading the report\".\n\n"
        f"{latency_table(records)}\n\n"
        "## Each client's view\n\n"
        "What each client got: answered (2xx) / failed, with the kinds of failure; the done-"
        "but-unanswered figure is what the server counted beyond every client's answers "
        "(exact, or a bound lo..hi; docs/clients.md).\n\n"
        f"{clients_table(records)}\n\n"
        + "".join(f"- {name}: {why}\n" for name, why in unanswered_reasons(records))
        + ("\n" if unanswered_reasons(records) else "") +
        "## What the host socket held\n\n"
        "The restart gap from the service's journal (old main process gone -> new one "
        "started) and from the probe (first request that waited -> v2's first answer); the "
        "guest kernel's TCP counters (/proc/net/netstat: TcpExtListenOverflows, "
        "TcpExtListenDrops, TcpExtTCPSynRetrans), after the load minus before, for the whole "
        "guest. \"-\": not measured.\n\n"
        f"{host_socket_table(records)}\n\n"
    )
    sizes = image_sizes_table(records)
    if sizes:
        latency_md += f"## Image sizes\n\nThe files each scenario's set uploads.\n\n{sizes}\n\n"
    (directory / "summary.md").write_text(
        f"# Zero-downtime reattach: results\n\n{markdown_table(records)}\n\n"
        f"{overhead_line(records)}{skipped_md}{latency_md}{stability_md}## Phases\n{phase_lines}\n"
    )


WINDOW_COLORS = {"before": "#d6e4f0", "switch": "#f8c9a0", "after": "#d5efdc"}


def window_bands(latency: LatencyReport, x_end: float) -> list[tuple[str, float, float, str]]:
    """(name, from, to, label) of each window that began, in seconds after the load start; an
    open end is drawn to ``x_end``. The label gives the window's p99 and failures."""
    bands = []
    for w in latency.windows:
        if w.start is None:
            continue
        start = w.start - latency.t0
        end = x_end if w.end is None else w.end - latency.t0
        p99 = "-" if w.p99_ms is None else f"{w.p99_ms:.0f} ms"
        label = f"{WINDOW_TITLES[w.name]}\np99 {p99}, {w.failed} failed"
        bands.append((w.name, start, max(start, end), label))
    return bands


def evidence_line(outcome: LoadOutcome, latency: LatencyReport) -> str:
    """The restart gap both ways and the kernel's counters, for the timeline's title."""
    def value(v: float | int | None, unit: str = "") -> str:
        return "-" if v is None else (f"{v:.2f}{unit}" if isinstance(v, float) else str(v))

    probe = latency.summary_fields()["restart_gap_probe_s"]
    journal = journal_fields(outcome)["restart_gap_journal_s"]
    t = outcome.tcp
    return (f"restart gap: journal {value(journal, ' s')}, probe {value(probe, ' s')}; kernel: "
            f"{value(t.get('listen_overflows'))} listen overflows, "
            f"{value(t.get('listen_drops'))} drops, {value(t.get('tcp_syn_retrans'))} "
            "SYN/SYN-ACK retransmits")


def timeline_figure(title: str, outcome: LoadOutcome, upgrade: Upgrade) -> Any:
    """The timeline as a matplotlib Figure: latency of each probe request over time, errors
    marked, the three latency windows shaded and labelled, reattach and switch drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl, t0 = outcome.timeline, outcome.started
    latency = latency_report(tl, upgrade.started, outcome.stopped)
    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=110)
    x_end = max([outcome.stopped - t0, *(r.t - t0 for r in tl.records)])
    for i, (name, start, end, label) in enumerate(window_bands(latency, x_end)):
        ax.axvspan(start, end, color=WINDOW_COLORS[name], alpha=0.45, zorder=0, linewidth=0)
        # Labels sit at the top of their band (x in data, y in axes coordinates), one step
        # lower each, so a narrow switch window does not print over its neighbours.
        ax.text(start + 0.1, 0.98 - 0.12 * i, label, transform=ax.get_xaxis_transform(),
                va="top", ha="left", fontsize=7, color="#333333")
    what = "portablectl reattach" if upgrade.command.startswith("portablectl") else "rollout"
    ax.axvspan(upgrade.started - t0, upgrade.ended - t0, ymax=0.04, color="#e1b12c",
               label=f"{what} ({upgrade.duration_s:.1f} s)")
    for greeting, color in ((tl.old, "#2e86de"), (tl.new, "#27ae60")):
        pts = [r for r in tl.answered if r.greeting == greeting]
        ax.scatter([r.t - t0 for r in pts], [max(r.latency_ms, 1) for r in pts], s=9, color=color,
                   label=f"{greeting} ({len(pts)})")
    bad = [r for r in tl.records if not r.ok]
    if bad:
        ax.scatter([r.t - t0 for r in bad], [max(r.latency_ms, 1) for r in bad], marker="x", s=30,
                   color="#c0392b", label=f"failed ({len(bad)})")
    if tl.skipped:
        ax.scatter([t - t0 for t in tl.skipped], [1.0] * len(tl.skipped), marker="|", s=30,
                   color="#8e44ad", label=f"not sent: in-flight bound ({len(tl.skipped)})")
    if tl.switch_at is not None:
        ax.axvline(tl.switch_at - t0, color="#27ae60", linestyle="--", linewidth=1,
                   label=f"first {tl.new} at {tl.switch_at - t0:.1f} s")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1, top=max(10_000.0, tl.max_latency_ms * 3))  # room for the labels
    ax.set_xlabel("seconds since load start (probe requests by send time)")
    ax.set_ylabel("probe latency (ms)")
    ab = outcome.ab
    held = ""
    if outcome.holders is not None:
        h = outcome.holders
        held = (f"; long-lived: {h.switched_in_place}/{h.connections} switched in place, "
                f"{h.broken + h.server_closed} lost")
    ax.set_title(f"{title}\nab: {ab.complete} complete, {ab.failed} failed, "
                 f"{ab.requests_per_second:.0f} req/s; longest gap "
                 f"{latency.longest_gap_ms:.0f} ms{held}\n{evidence_line(outcome, latency)}",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_timeline(path: Path, title: str, outcome: LoadOutcome, upgrade: Upgrade) -> None:
    """Write ``timeline_figure`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = timeline_figure(title, outcome, upgrade)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
