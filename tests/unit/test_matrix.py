"""The matrix report: one row per scenario, one column per box, differences marked."""

from __future__ import annotations

import json
from pathlib import Path

from vm.matrix import build_matrix, main, render_markdown


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


def test_unknown_box_fails_before_anything_runs(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown box"):
        main(["run", "--boxes", "debian-nosuch", "--artifacts", str(tmp_path)])
    assert not list(tmp_path.iterdir())
