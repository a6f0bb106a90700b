"""What report.html adds to pytest-html's own page: the summary on top (the verdict table,
the skipped scenarios with their reasons, the latency, clients', host socket's and image
sizes' tables, the phases) and the verdict
columns of the results table. The tables are summary.md's own (report.py), turned into HTML,
so both reports always show the same columns. The plugin (plugin/plugin.py) hands these to
pytest-html's hooks; each scenario's timeline PNG is an extra of its test, embedded."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from pytest_portable_upgrade.report.report import (
    clients_table,
    host_socket_table,
    image_sizes_table,
    latency_table,
    markdown_table,
    overhead_line,
    unanswered_reasons,
)

# Columns added to pytest-html's results table: (title, key of the summary row).
ROW_COLUMNS = (("Verdict", "verdict"), ("Failed", "failed"), ("Complete", "complete"),
               ("Longest gap ms", "longest_gap_ms"), ("Reattach s", "reattach_s"),
               ("Method", "method"))
VERDICT_CLASSES = {"pass": "pwt-pass", "fail": "pwt-fail"}
STYLE = """<style>
.pwt table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 12px; }
.pwt th, .pwt td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
.pwt th { background: #f0f0f0; }
.pwt-pass { color: #1a7f37; font-weight: bold; }
.pwt-fail { color: #cf222e; font-weight: bold; }
.pwt-other { color: #9a6700; font-weight: bold; }
.pwt h2 { font-size: 16px; margin: 1em 0 0.3em; }
</style>"""


def verdict_class(verdict: str) -> str:
    return VERDICT_CLASSES.get(verdict.split(" ", 1)[0].split(":", 1)[0].lower(), "pwt-other")


def table_html(markdown: str) -> str:
    """A Markdown pipe table (as report.py writes them) as an HTML table."""
    rows = [line.strip().strip("|").split("|") for line in markdown.strip().splitlines()
            if line.strip().startswith("|")]
    if not rows:
        return ""
    head, body = rows[0], [r for r in rows[1:] if set("".join(r)) - set("-: ")]
    titles = [c.strip() for c in head]
    out = ["<table><thead><tr>", *(f"<th>{html.escape(t)}</th>" for t in titles),
           "</tr></thead><tbody>"]
    for row in body:
        out.append("<tr>")
        for title, cell in zip(titles, row, strict=False):
            text = cell.strip()
            cls = f' class="{verdict_class(text)}"' if title == "verdict" else ""
            out.append(f"<td{cls}>{html.escape(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def summary_html(records: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]],
                 phases: dict[str, float], spec: str = "") -> str:
    """The block above pytest-html's results table."""
    parts = [STYLE, '<div class="pwt">']
    if spec:
        parts.append(f"<p>Subject spec: <code>{html.escape(spec)}</code></p>")
    if records:
        parts += ["<h2>Verdicts</h2>", table_html(markdown_table(records))]
        problems = [(r["scenario"], p) for r in records for p in r.get("problems") or []]
        if problems:
            parts.append("<ul>" + "".join(
                f"<li><b>{html.escape(s)}</b>: {html.escape(p)}</li>" for s, p in problems)
                + "</ul>")
        if overhead := overhead_line(records).strip():
            parts.append(f"<p>{html.escape(overhead)}</p>")
    if skipped:
        parts.append("<h2>Skipped on this guest</h2><ul>" + "".join(
            f"<li><b>{html.escape(str(r['scenario']))}</b>: {html.escape(str(r['skipped']))}"
            "</li>" for r in skipped) + "</ul>")
    if records:
        parts += ["<h2>What the restart did to latency</h2>",
                  "<p>The probe's requests by send time (open loop, fixed rate); latencies of "
                  "answered requests, failures by class (docs/report.md).</p>",
                  table_html(latency_table(records)),
                  "<h2>Each client's view</h2>",
                  "<p>What each client got: answered (2xx) / failed, with the kinds of failure;"
                  " done but unanswered: what the server counted beyond every client's answers"
                  " (exact, or a bound lo..hi; docs/clients.md).</p>",
                  table_html(clients_table(records))]
        if reasons := unanswered_reasons(records):
            parts.append("<ul>" + "".join(
                f"<li><b>{html.escape(name)}</b>: {html.escape(why)}</li>"
                for name, why in reasons) + "</ul>")
        parts += ["<h2>What the host socket held</h2>",
                  "<p>The restart gap from the service's journal and from the probe; the guest "
                  "kernel's listen overflows, listen drops and SYN/SYN-ACK retransmits over the "
                  "load (docs/report.md). \"-\": not measured.</p>",
                  table_html(host_socket_table(records))]
        if sizes := image_sizes_table(records):
            parts += ["<h2>Image sizes</h2>",
                      "<p>The files each scenario's set uploads, in MB: what an upgrade moves "
                      "(a whole image, or an extension beside a base that stays).</p>",
                      table_html(sizes)]
    if phases:
        parts += ["<h2>Phases</h2><table><tbody>", *(
            f"<tr><td>{html.escape(name)}</td><td>{secs:.1f} s</td></tr>"
            for name, secs in phases.items()), "</tbody></table>"]
    parts.append("</div>")
    return "".join(parts)


def row_cells(row: dict[str, Any] | None) -> list[str]:
    """The verdict columns of one test's row in the results table (empty for other tests)."""
    if row is None:
        return ["<td></td>" for _ in ROW_COLUMNS]
    if "skipped" in row:  # a scenario the guest cannot run
        return ['<td class="pwt-other">skipped</td>', *("<td></td>" for _ in ROW_COLUMNS[1:])]
    cells = []
    for _, key in ROW_COLUMNS:
        value = row.get(key)
        text = "-" if value is None else str(value)
        cls = f' class="{verdict_class(text)}"' if key == "verdict" else ""
        cells.append(f"<td{cls}>{html.escape(text)}</td>")
    return cells
