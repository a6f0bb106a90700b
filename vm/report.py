"""The evidence a run leaves: summary.json, summary.md and one PNG timeline per scenario."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vm.load import LoadOutcome
from vm.portable import Reattach

SUMMARY_COLUMNS = (
    ("scenario", "scenario"), ("systemd", "systemd_version"), ("verdict", "verdict"),
    ("complete", "complete"), ("failed", "failed"), ("non-2xx", "non_2xx"),
    ("req/s", "requests_per_second"), ("reattach s", "reattach_s"),
    ("switch at s", "switch_at_s"), ("longest gap ms", "longest_gap_ms"),
    ("max latency ms", "max_latency_ms"), ("counter ok", "counter_ok"),
)


def scenario_record(
    scenario: str, box: str, systemd_version: int, keepalive: bool, proxy: str | None,
    socket_location: str, outcome: LoadOutcome, reattach: Reattach, counter_ok: bool,
    verdict: str, problems: Sequence[str],
) -> dict[str, Any]:
    """One row of summary.json (the schema is documented in the README)."""
    ab, tl = outcome.ab, outcome.timeline
    return {
        "scenario": scenario, "box": box, "systemd_version": systemd_version,
        "keepalive": keepalive, "proxy": proxy, "socket_location": socket_location,
        "complete": ab.complete, "failed": ab.failed, "failed_connect": ab.failed_connect,
        "failed_receive": ab.failed_receive, "failed_length": ab.failed_length,
        "failed_exceptions": ab.failed_exceptions, "non_2xx": ab.non_2xx,
        "requests_per_second": ab.requests_per_second,
        "probe_requests": len(tl.records), "probe_errors": tl.errors,
        "switched": tl.switch_at is not None,
        "switch_at_s": round(tl.switch_at - outcome.started, 2) if tl.switch_at else None,
        "reattach_started_s": round(reattach.started - outcome.started, 2),
        "reattach_s": round(reattach.duration_s, 2),
        "load_s": round(outcome.duration_s, 2),
        "max_latency_ms": tl.max_latency_ms, "longest_gap_ms": tl.longest_gap_ms,
        "counter_ok": counter_ok, "verdict": verdict, "problems": list(problems),
        "ab_command": outcome.ab_command,
    }


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
                  phases: dict[str, float]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.json").write_text(
        json.dumps({"scenarios": list(records), "phases_s": phases}, indent=2) + "\n"
    )
    phase_lines = "\n".join(f"- {name}: {secs:.1f} s" for name, secs in phases.items())
    stability = stability_table(records)
    stability_md = f"## Verdict stability\n\n{stability}\n\n" if stability else ""
    (directory / "summary.md").write_text(
        f"# Zero-downtime reattach: results\n\n{markdown_table(records)}\n\n"
        f"{stability_md}## Phases\n{phase_lines}\n"
    )


def plot_timeline(path: Path, title: str, outcome: LoadOutcome, reattach: Reattach) -> None:
    """Latency of each probe request over time, errors marked, reattach and switch drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl, t0 = outcome.timeline, outcome.started
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    what = "portablectl reattach" if reattach.command.startswith("portablectl") else "rollout"
    ax.axvspan(reattach.started - t0, reattach.ended - t0, color="#f5d76e", alpha=0.35,
               label=f"{what} ({reattach.duration_s:.1f} s)")
    for greeting, color in ((tl.old, "#2e86de"), (tl.new, "#27ae60")):
        pts = [r for r in tl.answered if r.greeting == greeting]
        ax.scatter([r.t - t0 for r in pts], [max(r.latency_ms, 1) for r in pts], s=9, color=color,
                   label=f"{greeting} ({len(pts)})")
    bad = [r for r in tl.records if not r.ok]
    if bad:
        ax.scatter([r.t - t0 for r in bad], [max(r.latency_ms, 1) for r in bad], marker="x", s=30,
                   color="#c0392b", label=f"failed ({len(bad)})")
    if tl.switch_at is not None:
        ax.axvline(tl.switch_at - t0, color="#27ae60", linestyle="--", linewidth=1,
                   label=f"first {tl.new} at {tl.switch_at - t0:.1f} s")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1)
    ax.set_xlabel("seconds since load start")
    ax.set_ylabel("probe latency (ms, at send time)")
    ab = outcome.ab
    held = ""
    if outcome.holders is not None:
        h = outcome.holders
        held = (f"; long-lived: {h.switched_in_place}/{h.connections} switched in place, "
                f"{h.broken + h.server_closed} lost")
    ax.set_title(f"{title}\nab: {ab.complete} complete, {ab.failed} failed, "
                 f"{ab.requests_per_second:.0f} req/s; longest gap {tl.longest_gap_ms:.0f} ms"
                 f"{held}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
