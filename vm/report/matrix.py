"""The systemd-version matrix: run the scenarios per box, join the summaries into one table.

    python -m pytest_portable_upgrade.report.matrix run [--boxes a,b] [--jobs N] [--timeout S]
        [-- PYTEST ARGS]
    python -m pytest_portable_upgrade.report.matrix join OUT_DIR SUMMARY.json...

``run`` is what ``tox -e matrix`` does, ``join`` what the nightly workflow does.

Rows are scenarios, columns are boxes with their systemd version, cells are the verdict with
failed/complete counts. Rows whose verdicts differ between versions are marked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_portable_upgrade.boxes.recipes import LOCAL_BOXES, get_box


def load_summaries(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """All scenario rows of the given summary.json files, then the scenarios each guest
    skipped (rows with a "skipped" reason; older summaries have none)."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for path in paths:
        summary = json.loads(path.read_text())
        rows.extend(summary["scenarios"])
        skipped.extend(summary.get("skipped", []))
    return rows + skipped


def column_of(row: dict[str, Any]) -> str:
    """A box's column: its name and the systemd it ran, as the exact package version when the
    guest told it (``debian-sid (systemd 262.1-1, moving suite)``), else the major.

    Two builds of a moving suite that carried different packages get two columns, so a verdict
    that changed with a rebuild stands beside the package that brought the change."""
    version = row.get("systemd_package") or row["systemd_version"]
    try:
        moving = get_box(row["box"]).moving
    except ValueError:  # a summary from a box this checkout does not know
        moving = False
    return f"{row['box']} (systemd {version}{', moving suite' if moving else ''})"


def unanswered_text(row: dict[str, Any]) -> str:
    """The done-but-unanswered figure of a row: "0" (exact), "3..13" (a bound), "-" (none).
    Here, not in report.py, so that joining summaries needs the standard library alone."""
    figure = row.get("unanswered")
    if not figure:
        return "-"
    return str(figure["low"]) if figure["exact"] else f"{figure['low']}..{figure['high']}"


def _cell(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"skipped: {row['skipped']}"
    dead = "" if row.get("socket_state_after", "active") == "active" else ", port dead"
    conns = ""
    if row.get("holders"):
        lost = row.get("holders_broken", 0) + row.get("holders_server_closed", 0)
        conns = f", {lost} losses on {row['holders']} long-lived connections"
    # The kernel's count, when it was read and is not 0 (rows of older runs have no such key).
    kernel = "".join(f", {row[key]} {what}" for key, what in (
        ("listen_overflows", "listen overflows"), ("listen_drops", "listen drops"))
        if isinstance(row.get(key), int) and row[key])
    hey = row.get("hey")
    second = f", hey {hey['failed']} failed / {hey['requests']}" if hey else ""
    # What the server did beyond the answers, where it is a figure rather than a verdict (the
    # naive and HAProxy rows); where 0 is expected, a nonzero one is already the FAIL's reason.
    unanswered = (f", done but unanswered {unanswered_text(row)}"
                  if row.get("unanswered") and not row.get("unanswered_expected_zero") else "")
    return (f"{row['verdict']} ({row['failed']} failed / {row['complete']}{dead}{conns}"
            f"{kernel}{second}{unanswered})")


def _verdict_class(verdict: str) -> str:
    """Verdicts differ in wording by expectation; compare what happened, not the words."""
    return "fail" if verdict.startswith("FAIL") else "ok"


# The seed's open question, "sysupdate pulled the image, but then what?", answered per column
# from the sysupdate rows: what drove their reattach, and what that systemd itself offers.
AFTER_PULL_TITLE = "after a sysupdate pull: what runs the reattach"
DRIVERS = {"suite-oneshot": "the suite's oneshot (update, then portablectl reattach --now)",
           "sysupdate-notify": "sysupdate's own notify callout, to the suite's listener"}


def after_pull_cell(rows: Sequence[dict[str, Any]]) -> str:
    """One column's answer: which drivers reattached in its sysupdate rows (passed or not),
    then what its systemd offers after a pull; a guest without sysupdate gives the skip's
    reason; "not run" when no sysupdate row is there."""
    ran = [r for r in rows if "skipped" not in r and r.get("after_pull")]
    if not ran:
        skips = [r["skipped"] for r in rows if "skipped" in r
                 and "sysupdate" in str(r.get("scenario"))]
        return f"skipped: {skips[0]}" if skips else "not run"
    drivers = []
    for driver, words in DRIVERS.items():
        verdicts = sorted({r["verdict"] for r in ran if r.get("reattach_driven_by") == driver})
        if verdicts:
            drivers.append(f"{words} ({', '.join(verdicts)})")
    return "; ".join(drivers) + f". What systemd offers: {ran[0]['after_pull']}"


def build_matrix(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"columns": [box (systemd N)…], "rows": [{"scenario", "cells": {col: cell}, "differs"}],
    "after_pull": {col: the answer in words}}."""
    columns: list[str] = []
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        column = column_of(row)
        if column not in columns:
            columns.append(column)
        by_column = cells.setdefault(row["scenario"], {})
        if "skipped" in row and column in by_column:
            continue  # the scenario ran there (another repetition): the run is the cell
        by_column[column] = row
    table = []
    for scenario, by_column in cells.items():
        # A box that cannot run a scenario (too old) does not make the versions differ.
        outcomes = {
            (_verdict_class(r["verdict"]), bool(r["failed"]),
             r.get("socket_state_after", "active") == "active")
            for r in by_column.values() if "skipped" not in r
        }
        table.append({
            "scenario": scenario,
            "cells": {col: _cell(r) for col, r in by_column.items()},
            "raw": by_column,
            "differs": len(outcomes) > 1,
        })
    after_pull = {col: after_pull_cell([r for by_column in cells.values()
                                        for c, r in by_column.items() if c == col])
                  for col in columns}
    return {"columns": columns, "rows": table, "after_pull": after_pull}


def render_markdown(matrix: dict[str, Any]) -> str:
    columns = matrix["columns"]
    lines = [
        "# Zero-downtime reattach across systemd versions",
        "",
        "Cells: verdict (failed / complete ab requests; hey's failed / requests where it ran; "
        "the done-but-unanswered figure of the naive and HAProxy rows, exact or lo..hi). "
        "**Bold** rows differ between versions.",
        "Columns name the systemd package read from each guest; a moving suite's column names "
        "its build's package, so a rebuild that changed a verdict shows as a new column.",
        "",
        "| scenario | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in matrix["rows"]:
        name = f"**{row['scenario']}**" if row["differs"] else row["scenario"]
        cells = [row["cells"].get(col, "not run") for col in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    after_pull = matrix.get("after_pull", {})
    if any(text != "not run" for text in after_pull.values()):
        lines.append(f"| *{AFTER_PULL_TITLE}* | "
                     + " | ".join(after_pull.get(col, "not run") for col in columns) + " |")
    return "\n".join(lines) + "\n"


def write_matrix(out_dir: Path, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    matrix = build_matrix(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "matrix.json").write_text(json.dumps(matrix, indent=2) + "\n")
    (out_dir / "matrix.md").write_text(render_markdown(matrix))
    return matrix


# What a matrix run does with one box: (box, its artifacts dir, seconds it may take) -> exit
# code. The real one runs pytest in a subprocess; unit tests hand in fakes (no VM).
BoxRunner = Callable[[str, Path, float], int]
# A child still running at the matrix bound gets SIGTERM (pytest turns it into an interrupt:
# the VM is destroyed), then this long before SIGKILL.
TERM_GRACE_S = 120.0
TIMED_OUT = 124  # the exit code timeout(1) uses


@dataclass
class BoxOutcome:
    """How one box's run ended: exit code, seconds, or that the matrix bound stopped it."""

    box: str
    rc: int
    seconds: float
    timed_out: bool = False
    started: bool = True


# The scenario suite as the package ships it (vm/plugin/suite), with its HTML report, which
# opens with every scenario's row (and its timeline) shown (pytest-html folds passes).
SUITE = "pytest_portable_upgrade.plugin.suite"
SUITE_ARGS = ("--pyargs", SUITE, "--report-html", "-o", "render_collapsed=skipped")


def pytest_runner(pytest_args: Sequence[str], quiet: bool) -> BoxRunner:
    """A BoxRunner that runs the scenario suite for a box in its own pytest process.

    Each run gets its own run id, VM, ports and artifacts (nothing is shared but the caches).
    ``--run-timeout`` makes the child end itself cleanly within its share of the bound;
    ``quiet`` (parallel runs) sends its output to <box dir>/pytest.log instead of the terminal.
    """
    def run(box: str, box_dir: Path, seconds: float) -> int:
        box_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pytest", *SUITE_ARGS, f"--box={box}",
               f"--artifacts={box_dir}", f"--junitxml={box_dir}/junit.xml"]
        if math.isfinite(seconds):
            cmd.append(f"--run-timeout={max(1, int(seconds))}")
        with contextlib.ExitStack() as stack:
            out = stack.enter_context((box_dir / "pytest.log").open("ab")) if quiet else None
            proc = subprocess.Popen([*cmd, *pytest_args], stdout=out, stderr=out)
            try:
                # The child's own bound fires first; this is the backstop if it hangs.
                return proc.wait(timeout=seconds + TERM_GRACE_S if math.isfinite(seconds)
                                 else None)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=TERM_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return TIMED_OUT
            except BaseException:
                proc.terminate()  # Ctrl-C of the matrix: the child destroys its VM too
                proc.wait()
                raise
    return run


def schedule(boxes: Sequence[str], run_dir: Path, runner: BoxRunner, jobs: int = 1,
             timeout_s: float = math.inf,
             clock: Callable[[], float] = time.monotonic) -> list[BoxOutcome]:
    """Run ``runner`` for every box, at most ``jobs`` at once, within ``timeout_s`` overall.

    A box whose turn comes after the bound is not started; a box still running at the bound
    is told so by its share of time (its runner must end by then). Outcomes in box order."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, not {jobs}")
    if not timeout_s > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, not {timeout_s:g}")
    deadline = clock() + timeout_s

    def one(box: str) -> BoxOutcome:
        left = deadline - clock()
        if left <= 0:
            print(f"[pwt-matrix] {box}: not started, the matrix bound of {timeout_s:g} s is "
                  "spent", flush=True)
            return BoxOutcome(box, TIMED_OUT, 0.0, timed_out=True, started=False)
        print(f"[pwt-matrix] {box}: started (artifacts {run_dir / box})", flush=True)
        start = clock()
        rc = runner(box, run_dir / box, left)
        took = clock() - start
        timed_out = rc == TIMED_OUT or clock() >= deadline
        print(f"[pwt-matrix] {box}: exit {rc} after {took:.0f} s"
              + (" (matrix bound reached)" if timed_out else ""), flush=True)
        return BoxOutcome(box, rc, took, timed_out=timed_out)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, boxes))


def run_boxes(boxes: Sequence[str], artifacts: Path, pytest_args: Sequence[str],
              jobs: int = 1, timeout_s: float = math.inf,
              runner: BoxRunner | None = None) -> int:
    """Run the integration suite per box (``jobs`` at once), then join one report."""
    for box in boxes:
        get_box(box)  # unknown names fail before anything boots
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, not {jobs}")
    run_dir = artifacts / f"matrix-{time.strftime('%Y%m%d-%H%M%S')}"
    runner = runner or pytest_runner(pytest_args, quiet=jobs > 1)
    start = time.monotonic()
    outcomes = schedule(boxes, run_dir, runner, jobs, timeout_s)
    summaries = [path for o in outcomes
                 for path in sorted((run_dir / o.box).glob("*/summary.json"))]
    matrix = write_matrix(run_dir, load_summaries(summaries))
    print(render_markdown(matrix))
    for o in outcomes:
        if o.timed_out:
            state = "not started" if not o.started else "stopped"
            print(f"[pwt-matrix] {o.box}: {state} by the matrix bound ({timeout_s:g} s)")
    print(f"[pwt-matrix] {len(boxes)} boxes, {jobs} at once, {time.monotonic() - start:.0f} s; "
          f"report: {run_dir}/matrix.md")
    return max((o.rc for o in outcomes), default=0)


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_portable_upgrade.report.matrix")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the integration suite per box, then join")
    run.add_argument("--boxes", default=",".join(LOCAL_BOXES))
    run.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    run.add_argument("--jobs", type=int, default=os.environ.get("PWT_MATRIX_JOBS", "1"),
                     help="boxes run at once, each with its own VM (default 1; env "
                          "PWT_MATRIX_JOBS)")
    run.add_argument("--timeout", type=_positive_seconds,
                     default=os.environ.get("PWT_MATRIX_TIMEOUT") or math.inf,
                     help="bound of the whole matrix in seconds; runs still going end "
                          "themselves cleanly (env PWT_MATRIX_TIMEOUT; default none)")
    # Every other argument goes to pytest in its order (e.g. -k rollback). A positional
    # nargs="*" here took "rollback" away from its "-k".
    join = sub.add_parser("join", help="join summary.json files into matrix.md/json")
    join.add_argument("out_dir", type=Path)
    join.add_argument("summaries", type=Path, nargs="+")
    args, passthrough = parser.parse_known_args(argv)
    if args.command == "join":
        print(render_markdown(write_matrix(args.out_dir, load_summaries(args.summaries))))
        return 0
    boxes = [b for b in args.boxes.split(",") if b]
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    return run_boxes(boxes, args.artifacts, passthrough, args.jobs, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
