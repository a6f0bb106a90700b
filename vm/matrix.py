"""The systemd-version matrix: run the scenarios per box, join the summaries into one table.

    python -m vm.matrix run [--boxes a,b] [-- PYTEST ARGS]   # what `tox -e matrix` does
    python -m vm.matrix join OUT_DIR SUMMARY.json...          # what the nightly workflow does

Rows are scenarios, columns are boxes with their systemd version, cells are the verdict with
failed/complete counts. Rows whose verdicts differ between versions are marked.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vm.boxes import LOCAL_BOXES, get_box


def load_summaries(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """All scenario rows of the given summary.json files."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows.extend(json.loads(path.read_text())["scenarios"])
    return rows


def _cell(row: dict[str, Any]) -> str:
    dead = "" if row.get("socket_state_after", "active") == "active" else ", port dead"
    conns = ""
    if row.get("holders"):
        lost = row.get("holders_broken", 0) + row.get("holders_server_closed", 0)
        conns = f", {lost} losses on {row['holders']} long-lived connections"
    return f"{row['verdict']} ({row['failed']} failed / {row['complete']}{dead}{conns})"


def _verdict_class(verdict: str) -> str:
    """Verdicts differ in wording by expectation; compare what happened, not the words."""
    return "fail" if verdict.startswith("FAIL") else "ok"


def build_matrix(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"columns": [box (systemd N)…], "rows": [{"scenario", "cells": {col: cell}, "differs"}]}."""
    columns: list[str] = []
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        column = f"{row['box']} (systemd {row['systemd_version']})"
        if column not in columns:
            columns.append(column)
        cells.setdefault(row["scenario"], {})[column] = row
    table = []
    for scenario, by_column in cells.items():
        outcomes = {
            (_verdict_class(r["verdict"]), bool(r["failed"]),
             r.get("socket_state_after", "active") == "active")
            for r in by_column.values()
        }
        table.append({
            "scenario": scenario,
            "cells": {col: _cell(r) for col, r in by_column.items()},
            "raw": by_column,
            "differs": len(outcomes) > 1,
        })
    return {"columns": columns, "rows": table}


def render_markdown(matrix: dict[str, Any]) -> str:
    columns = matrix["columns"]
    lines = [
        "# Zero-downtime reattach across systemd versions",
        "",
        "Cells: verdict (failed / complete ab requests). **Bold** rows differ between versions.",
        "",
        "| scenario | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in matrix["rows"]:
        name = f"**{row['scenario']}**" if row["differs"] else row["scenario"]
        cells = [row["cells"].get(col, "not run") for col in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_matrix(out_dir: Path, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    matrix = build_matrix(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "matrix.json").write_text(json.dumps(matrix, indent=2) + "\n")
    (out_dir / "matrix.md").write_text(render_markdown(matrix))
    return matrix


def run_boxes(boxes: Sequence[str], artifacts: Path, pytest_args: Sequence[str]) -> int:
    """Run the integration suite once per box (one after another on a small host)."""
    for box in boxes:
        get_box(box)  # unknown names fail before anything boots
    run_dir = artifacts / f"matrix-{time.strftime('%Y%m%d-%H%M%S')}"
    worst = 0
    summaries = []
    for box in boxes:
        box_dir = run_dir / box
        print(f"[pwt-matrix] {box}: tox -e integration --box {box} (artifacts {box_dir})",
              flush=True)
        rc = subprocess.call([
            sys.executable, "-m", "pytest", "tests/integration", f"--box={box}",
            f"--artifacts={box_dir}", f"--junitxml={box_dir}/junit.xml", *pytest_args,
        ])
        worst = max(worst, rc)
        summaries += sorted(box_dir.glob("*/summary.json"))
    matrix = write_matrix(run_dir, load_summaries(summaries))
    print(render_markdown(matrix))
    print(f"[pwt-matrix] report: {run_dir}/matrix.md")
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vm.matrix")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the integration suite per box, then join")
    run.add_argument("--boxes", default=",".join(LOCAL_BOXES))
    run.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    run.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k rollback)")
    join = sub.add_parser("join", help="join summary.json files into matrix.md/json")
    join.add_argument("out_dir", type=Path)
    join.add_argument("summaries", type=Path, nargs="+")
    args, passthrough = parser.parse_known_args(argv)
    if args.command == "join":
        print(render_markdown(write_matrix(args.out_dir, load_summaries(args.summaries))))
        return 0
    boxes = [b for b in args.boxes.split(",") if b]
    return run_boxes(boxes, args.artifacts, [*args.pytest_args, *passthrough])


if __name__ == "__main__":
    sys.exit(main())
