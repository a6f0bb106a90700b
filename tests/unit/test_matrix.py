"""The matrix report: one row per scenario, one column per box, differences marked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pytest_portable_upgrade.report.matrix import (
    build_matrix,
    load_summaries,
    main,
    render_markdown,
)


def row(scenario: str, box: str, systemd: int, verdict: str, failed: int = 0,
        state: str = "active", **extra: object) -> dict[str, object]:
    return {"scenario": scenario, "box": box, "systemd_version": systemd, "verdict": verdict,
            "failed": failed, "complete": 1000, "socket_state_after": state, **extra}


ROWS = [
    row("host-socket-no-keepalive", "debian-bookworm", 252, "pass"),
    row("host-socket-no-keepalive", "debian-trixie", 257, "pass"),
    row("image-socket-no-keepalive", "debian-bookworm", 252, "downtime seen (expected)", 211),
    row("image-socket-no-keepalive", "debian-trixie", 257, "downtime seen (expected)", 4000,
        state="inactive"),
    row("host-socket-keepalive-longlived-drain", "debian-trixie", 257,
        "xfail: loss seen (expected)", holders=20, holders_broken=0, holders_server_closed=20),
]


def test_columns_are_boxes_with_their_systemd_version() -> None:
    assert build_matrix(ROWS)["columns"] == ["debian-bookworm (systemd 252)",
                                             "debian-trixie (systemd 257)"]


def test_a_dead_port_on_one_version_marks_the_row_as_differing() -> None:
    rows = {r["scenario"]: r for r in build_matrix(ROWS)["rows"]}
    assert not rows["host-socket-no-keepalive"]["differs"]
    assert rows["image-socket-no-keepalive"]["differs"]
    assert "port dead" in rows["image-socket-no-keepalive"]["cells"]["debian-trixie (systemd 257)"]


def test_markdown_bolds_differences_and_says_not_run() -> None:
    text = render_markdown(build_matrix(ROWS))
    assert "| **image-socket-no-keepalive** |" in text
    assert "| host-socket-no-keepalive | pass (0 failed / 1000) | pass (0 failed / 1000) |" in text
    assert "not run" in text  # the long-lived scenario ran on trixie only
    assert "20 losses on 20 long-lived connections" in text


def test_join_cli_writes_both_files(tmp_path: Path) -> None:
    for box in ("a", "b"):
        (tmp_path / box).mkdir()
        (tmp_path / box / "summary.json").write_text(json.dumps(
            {"scenarios": [r for r in ROWS if r["box"] == {"a": "debian-bookworm",
                                                           "b": "debian-trixie"}[box]]}))
    out = tmp_path / "out"
    assert main(["join", str(out), str(tmp_path / "a" / "summary.json"),
                 str(tmp_path / "b" / "summary.json")]) == 0
    assert json.loads((out / "matrix.json").read_text())["columns"]
    assert (out / "matrix.md").read_text().startswith("# Zero-downtime reattach")


def package_alone(tmp_path: Path) -> Path:
    """A directory where the package's source is importable by its name and nothing else is:
    what `pip install --no-deps .` gives the workflow's bare Python."""
    where = tmp_path / "path"
    where.mkdir()
    (where / "pytest_portable_upgrade").symlink_to(Path(__file__).resolve().parents[2] / "vm")
    return where


def test_the_workflows_join_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    """The nightly report job has a bare Python:
    `python -m pytest_portable_upgrade.report.matrix join`
    must not pull in anything beyond the standard library (no site-packages here: -S)."""
    (tmp_path / "summary.json").write_text(json.dumps({"scenarios": ROWS}))
    result = subprocess.run(
        [sys.executable, "-S", "-m", "pytest_portable_upgrade.report.matrix", "join",
         str(tmp_path / "out"),
         str(tmp_path / "summary.json")],
        cwd=package_alone(tmp_path), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "matrix.md").exists()


def test_unknown_box_fails_before_anything_runs(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown box"):
        main(["run", "--boxes", "debian-nosuch", "--artifacts", str(tmp_path)])
    assert not list(tmp_path.iterdir())


# --- scheduling: --jobs and the overall bound, with fake box runs (no VM) --------------------

import math  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402

from pytest_portable_upgrade.report.matrix import TIMED_OUT, run_boxes, schedule  # noqa: E402


class FakeRuns:
    """A BoxRunner: each run waits until released (or a short while), counting overlaps, and
    writes a summary.json the way a real run does."""

    def __init__(self, hold_s: float = 0.2, rc: dict[str, int] | None = None) -> None:
        self.hold_s = hold_s
        self.rc = rc or {}
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.given: dict[str, float] = {}
        self.order: list[str] = []

    def __call__(self, box: str, box_dir: Path, seconds: float) -> int:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.given[box] = seconds
            self.order.append(box)
        threading.Event().wait(self.hold_s)
        (box_dir / "run1").mkdir(parents=True)
        (box_dir / "run1" / "summary.json").write_text(json.dumps(
            {"scenarios": [row("host-socket-no-keepalive", box, 252, "pass")]}))
        with self.lock:
            self.running -= 1
        return self.rc.get(box, 0)


BOXES4 = ["debian-bookworm", "debian-bookworm-backports", "debian-trixie", "debian-sid"]


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_jobs_bounds_how_many_boxes_run_at_once(jobs: int, tmp_path: Path) -> None:
    runs = FakeRuns()
    outcomes = schedule(BOXES4, tmp_path, runs, jobs=jobs)
    assert runs.most_at_once == jobs
    assert [o.box for o in outcomes] == BOXES4  # report order is box order, not finish order
    assert all(o.rc == 0 and not o.timed_out for o in outcomes)


def test_each_box_has_its_own_artifacts_and_one_report_joins_them(tmp_path: Path) -> None:
    runs = FakeRuns(hold_s=0.05, rc={"debian-trixie": 1})
    rc = run_boxes(BOXES4, tmp_path, [], jobs=2, runner=runs)
    assert rc == 1  # the worst exit code
    (run_dir,) = tmp_path.glob("matrix-*")
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == sorted(BOXES4)
    matrix = json.loads((run_dir / "matrix.json").read_text())
    # The fake rows carry no package version: the major stands in; sid says that it moves.
    assert matrix["columns"] == [f"{b} (systemd 252)" for b in BOXES4[:3]] + [
        "debian-sid (systemd 252, moving suite)"]


def test_boxes_whose_turn_comes_after_the_bound_are_not_started(tmp_path: Path) -> None:
    now = [0.0]

    def runner(box: str, box_dir: Path, seconds: float) -> int:
        now[0] += 60.0  # each box "takes" a minute
        return 0

    outcomes = schedule(BOXES4, tmp_path, runner, jobs=1, timeout_s=100.0,
                        clock=lambda: now[0])
    assert [(o.box, o.started, o.timed_out) for o in outcomes] == [
        ("debian-bookworm", True, False),
        ("debian-bookworm-backports", True, True),  # ended past the bound
        ("debian-trixie", False, True),
        ("debian-sid", False, True),
    ]
    assert outcomes[2].rc == TIMED_OUT


def test_each_run_is_given_what_is_left_of_the_bound(tmp_path: Path) -> None:
    now = [0.0]
    given: list[float] = []

    def runner(box: str, box_dir: Path, seconds: float) -> int:
        given.append(seconds)
        now[0] += 30.0
        return 0

    schedule(BOXES4[:3], tmp_path, runner, jobs=1, timeout_s=100.0, clock=lambda: now[0])
    assert given == [100.0, 70.0, 40.0]
    given.clear()
    schedule(BOXES4[:1], tmp_path, runner, jobs=1)
    assert given == [math.inf]  # no bound: the runner adds no --run-timeout


@pytest.mark.parametrize("jobs", [0, -3])
def test_jobs_below_one_is_one_line_before_anything_runs(jobs: int, tmp_path: Path) -> None:
    runs = FakeRuns()
    with pytest.raises(ValueError, match=f"^--jobs must be at least 1, not {jobs}$"):
        run_boxes(BOXES4, tmp_path, [], jobs=jobs, runner=runs)
    assert runs.order == [] and not list(tmp_path.iterdir())


def test_cli_rejects_bad_jobs_and_timeout_in_one_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in ((["--jobs", "0"], "--jobs must be at least 1, not 0"),
                          (["--timeout", "-5"], "must be a positive number of seconds, not -5"),
                          (["--timeout", "inf"], "must be a positive number of seconds, not inf")):
        with pytest.raises(SystemExit) as exit_:
            main(["run", "--artifacts", str(tmp_path), *args])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_takes_jobs_and_timeout_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_run_boxes(boxes: list[str], artifacts: Path, pytest_args: list[str],
                       jobs: int = 1, timeout_s: float = math.inf) -> int:
        seen.update(boxes=boxes, jobs=jobs, timeout_s=timeout_s, args=pytest_args)
        return 0

    monkeypatch.setattr("pytest_portable_upgrade.report.matrix.run_boxes", fake_run_boxes)
    monkeypatch.setenv("PWT_MATRIX_JOBS", "3")
    monkeypatch.setenv("PWT_MATRIX_TIMEOUT", "5400")
    assert main(["run", "--boxes", "debian-sid,debian-trixie", "-k", "rollback"]) == 0
    assert seen == {"boxes": ["debian-sid", "debian-trixie"], "jobs": 3, "timeout_s": 5400.0,
                    "args": ["-k", "rollback"]}
    monkeypatch.delenv("PWT_MATRIX_TIMEOUT")
    assert main(["run", "--jobs", "2"]) == 0
    assert seen["jobs"] == 2 and seen["timeout_s"] == math.inf


def fake_python(tmp_path: Path, body: str) -> Path:
    """An executable standing in for `python -m pytest ...`: logs its arguments, then ``body``."""
    script = tmp_path / "fake-python"
    script.write_text(f'#!/bin/sh\necho "args: $*"\n{body}\n')
    script.chmod(0o755)
    return script


def test_the_real_runner_bounds_the_child_and_keeps_its_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_portable_upgrade.report import matrix

    monkeypatch.setattr(matrix.sys, "executable", str(fake_python(tmp_path, "exit 3")))
    run = matrix.pytest_runner(["-k", "rollback"], quiet=True)
    assert run("debian-sid", tmp_path / "sid", 125.7) == 3
    out = (tmp_path / "sid" / "pytest.log").read_text()
    assert "--box=debian-sid" in out and f"--artifacts={tmp_path / 'sid'}" in out
    assert "--run-timeout=125 -k rollback" in out  # its share of the bound, then pytest args
    assert run("debian-sid", tmp_path / "sid", math.inf) == 3
    assert "--run-timeout" not in (tmp_path / "sid" / "pytest.log").read_text().splitlines()[-1]


def test_a_child_that_outlives_its_bound_is_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's own --run-timeout should end it; if it hangs, SIGTERM after the grace."""
    import time

    from pytest_portable_upgrade.report import matrix

    monkeypatch.setattr(matrix, "TERM_GRACE_S", 0.5)
    monkeypatch.setattr(matrix.sys, "executable",
                        str(fake_python(tmp_path, "exec sleep 30")))
    start = time.monotonic()
    assert matrix.pytest_runner([], quiet=True)("debian-sid", tmp_path / "sid", 0.5) == TIMED_OUT
    assert time.monotonic() - start < 10


# --- the systemd package in the column, skipped scenarios ------------------------------------
def test_a_column_names_the_package_read_from_the_guest() -> None:
    rows = [dict(row("host-socket-no-keepalive", "debian-trixie", 257, "pass"),
                 systemd_package="257.9-1~deb13u1")]
    assert build_matrix(rows)["columns"] == ["debian-trixie (systemd 257.9-1~deb13u1)"]


def test_a_rebuilt_moving_box_that_changed_a_verdict_gets_its_own_column() -> None:
    """Two sid builds with different packages: two columns, and the row that changed is bold."""
    before = dict(row("host-socket-no-keepalive", "debian-sid", 262, "pass"),
                  systemd_package="262.1-1")
    after = dict(row("host-socket-no-keepalive", "debian-sid", 262, "FAIL", failed=12),
                 systemd_package="262.2-1")
    matrix = build_matrix([before, after])
    assert matrix["columns"] == ["debian-sid (systemd 262.1-1, moving suite)",
                                 "debian-sid (systemd 262.2-1, moving suite)"]
    assert matrix["rows"][0]["differs"]
    assert "| **host-socket-no-keepalive** |" in render_markdown(matrix)


def test_a_skipped_scenario_shows_its_reason_and_does_not_make_a_difference() -> None:
    ran = row("host-socket-user-portable", "debian-sid", 262, "pass")
    skipped = {"scenario": "host-socket-user-portable", "box": "debian-trixie",
               "systemd_version": 257, "systemd_package": "257.9-1~deb13u1",
               "skipped": "systemd 257 has no user portable services"}
    matrix = build_matrix([ran, skipped])
    (only,) = matrix["rows"]
    assert only["cells"]["debian-trixie (systemd 257.9-1~deb13u1)"] == (
        "skipped: systemd 257 has no user portable services")
    assert not only["differs"]


def test_a_skip_row_never_hides_a_run_of_the_same_scenario() -> None:
    ran = row("host-socket-user-portable", "debian-sid", 262, "FAIL", failed=3)
    skipped = dict(ran, skipped="no bpf LSM")
    (only,) = build_matrix([ran, skipped])["rows"]
    assert only["cells"]["debian-sid (systemd 262, moving suite)"].startswith("FAIL")


def test_load_summaries_reads_the_skipped_scenarios_too(tmp_path: Path) -> None:
    skipped = {"scenario": "x", "box": "debian-bookworm", "systemd_version": 252,
               "systemd_package": "252.39-1~deb12u1", "skipped": "too old"}
    (tmp_path / "a.json").write_text(json.dumps(
        {"scenarios": [row("y", "debian-bookworm", 252, "pass")], "skipped": [skipped]}))
    (tmp_path / "old.json").write_text(json.dumps(
        {"scenarios": [row("y", "debian-trixie", 257, "pass")]}))  # before "skipped" existed
    rows = load_summaries([tmp_path / "a.json", tmp_path / "old.json"])
    assert [r["scenario"] for r in rows] == ["y", "y", "x"]


def test_a_cell_names_the_kernels_overflows_and_drops_when_there_were_any() -> None:
    rows = [row("a", "debian-bookworm", 252, "pass", listen_overflows=0, listen_drops=0),
            row("a", "debian-trixie", 257, "FAIL", 3, listen_overflows=12, listen_drops=14),
            row("b", "debian-trixie", 257, "pass", listen_overflows=None, listen_drops=None)]
    cells = {(r["scenario"], col): cell for r in build_matrix(rows)["rows"]
             for col, cell in r["cells"].items()}
    assert cells[("a", "debian-bookworm (systemd 252)")] == "pass (0 failed / 1000)"
    assert cells[("a", "debian-trixie (systemd 257)")] == (
        "FAIL (3 failed / 1000, 12 listen overflows, 14 listen drops)")
    assert cells[("b", "debian-trixie (systemd 257)")] == "pass (0 failed / 1000)"  # not read


def test_an_old_summary_with_the_latency_band_keys_still_joins(tmp_path: Path) -> None:
    """Summaries written before the kernel's counters: syn_retransmit_* and the windows'
    syn_1s / syn_3s are ignored, the new keys are absent."""
    old = row("host-socket-keepalive-naive", "debian-bookworm", 252, "pass",
              syn_retransmit_1s=4, syn_retransmit_3s=0,
              latency={"switch": {"requests": 40, "syn_1s": 4, "syn_3s": 0}})
    (tmp_path / "old.json").write_text(json.dumps({"scenarios": [old]}))
    out = tmp_path / "out"
    assert main(["join", str(out), str(tmp_path / "old.json")]) == 0
    text = (out / "matrix.md").read_text()
    assert "| host-socket-keepalive-naive | pass (0 failed / 1000) |" in text
    assert "SYN" not in text and "retransmit" not in text


def test_the_after_pull_row_answers_per_version_from_the_sysupdate_rows() -> None:
    """The seed's question in words per column: what drove the sysupdate rows' reattach and
    what that systemd offers (the rows' own after_pull); a guest without sysupdate gives the
    skip's reason; a matrix without sysupdate rows has no such row."""
    offers = {257: "as seen on 257: nothing reattaches", 262: "as seen on 262: a callout"}
    rows = [
        {"scenario": "host-socket-sysupdate-dir", "box": "debian-bookworm",
         "systemd_version": 252, "skipped": "systemd 252 in this guest has no systemd-sysupdate"},
        row("host-socket-sysupdate-dir", "debian-trixie", 257, "pass",
            reattach_driven_by="suite-oneshot", after_pull=offers[257]),
        row("host-socket-sysupdate-dir", "debian-sid", 262, "pass",
            reattach_driven_by="suite-oneshot", after_pull=offers[262]),
        row("host-socket-sysupdate-notify", "debian-sid", 262, "FAIL: lost 3",
            reattach_driven_by="sysupdate-notify", after_pull=offers[262]),
        row("host-socket-no-keepalive", "debian-fedora", 258, "pass"),
    ]
    after = build_matrix(rows)["after_pull"]
    assert after["debian-bookworm (systemd 252)"] == (
        "skipped: systemd 252 in this guest has no systemd-sysupdate")
    assert after["debian-trixie (systemd 257)"] == (
        "the suite's oneshot (update, then portablectl reattach --now) (pass). "
        "What systemd offers: as seen on 257: nothing reattaches")
    sid = after["debian-sid (systemd 262, moving suite)"]
    assert "the suite's oneshot" in sid and (
        "sysupdate's own notify callout, to the suite's listener (FAIL: lost 3)") in sid
    assert after["debian-fedora (systemd 258)"] == "not run"
    text = render_markdown(build_matrix(rows))
    assert text.splitlines()[-1].startswith("| *after a sysupdate pull: what runs the reattach* |")
    assert "after a sysupdate pull" not in render_markdown(build_matrix(ROWS))
