"""report.html: one self-contained page per run, beside summary.md/json, made by pytest-html
with the plugin's hooks. Rendered here from recorded data in a small pytest session of its own
(the plugins loaded by their entry points, as in a user's environment): rows made from the
recorded probe series (tests/unit/data), their timeline PNGs, a skipped scenario, phases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import T0, clean_records, failure, outcome, probe_series, reattach

from pytest_portable_upgrade.report.html import summary_html, table_html
from pytest_portable_upgrade.report.report import (
    markdown_table,
    plot_timeline,
    scenario_record,
    skipped_row,
)

USER_CHECK = "test_after_upgrade::test_the_new_release_runs[paramiko://pwt-guest]: AssertionError"


def recorded_runs(where: Path) -> dict[str, object]:
    """Two judged runs (a pass, and a FAIL by a user check) with their timelines, one skip."""
    lossy = probe_series(T0 + 0.2, T0 + 10.0, "Hello", 3)
    lossy += [failure(T0 + 10.2 + i / 5, "connect-refused") for i in range(5)]
    runs = []
    for scenario, out, verdict, problems in [
        ("host-socket-no-keepalive", outcome(clean_records()), "pass", []),
        ("host-socket-rollback", outcome(lossy, stopped=T0 + 12.0), "FAIL",
         [f"user check failed: {USER_CHECK}"]),
    ]:
        row = scenario_record(scenario, "debian-bookworm", 252, keepalive=False, proxy=None,
                              socket_location="host", outcome=out, upgrade=reattach(),
                              counter_ok=True, verdict=verdict, problems=problems)
        png = where / f"{scenario}.png"
        plot_timeline(png, f"{scenario} (systemd 252)", out, reattach())
        runs.append({"row": row, "png": str(png)})
    skip = skipped_row("host-socket-user", "debian-bookworm", 252, "252.39-1~deb12u1",
                       "systemd 252 has no user portable services (portablectl --user, added "
                       "in 260)")
    return {"runs": runs, "skipped": skip}


SESSION = '''
import json, pathlib, pytest

DATA = json.loads(pathlib.Path({data!r}).read_text())


@pytest.mark.parametrize("index", range(len(DATA["runs"])))
def test_scenario(index, settings, record_scenario, record_phase):
    run = DATA["runs"][index]
    record_scenario(run["row"], timeline=pathlib.Path(run["png"]))
    record_phase("scenario " + run["row"]["scenario"], 31.4)
    if run["row"]["verdict"] == "FAIL":
        pytest.fail("\\n".join(run["row"]["problems"]), pytrace=False)


def test_skipped(settings, record_skip, record_phase):
    record_phase("boot_cold", 35.2)
    record_skip(DATA["skipped"])
    pytest.skip(DATA["skipped"]["skipped"])
'''


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("html")
    data = where / "recorded.json"
    data.write_text(json.dumps(recorded_runs(where)))
    session = where / "session"
    session.mkdir()
    (session / "test_session.py").write_text(SESSION.format(data=str(data)))
    (session / "pytest.ini").write_text("[pytest]\n")
    artifacts = where / "artifacts"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--report-html",
         f"--artifacts={artifacts}", f"--state-dir={where / 'state'}", str(session)],
        cwd=session, capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PWT_")})
    assert result.returncode == 1, result.stdout + result.stderr  # the FAIL
    assert "report.html" in result.stdout  # the terminal names it
    (run,) = [d for d in artifacts.iterdir() if d.name != "last"]
    assert (run / "summary.json").exists() and (run / "summary.md").exists()
    return run / "report.html"


def test_one_self_contained_page_beside_the_summary(report: Path) -> None:
    text = report.read_text()
    assert report.parent.joinpath("summary.md").exists()
    assert not re.search(r'(src|href)="(?!data:|#|https?:)[^"]+"', text), "a file it needs"
    # both timelines, embedded (pytest-html keeps the extras as data in its JSON blob)
    assert len(re.findall(r"data:image/png;base64,iVBORw0KGgo", text)) == 2


def test_the_page_holds_the_verdicts_the_latency_the_skips_and_the_phases(report: Path) -> None:
    text = report.read_text()
    for needed in ("host-socket-no-keepalive", "host-socket-rollback", "pwt-fail", "pwt-pass",
                   USER_CHECK.split(":")[0], "systemd 252 has no user portable services",
                   "What the restart did to latency", "p99 ms", "boot_cold", "35.2 s",
                   "What the host socket held", "listen overflows",
                   "Verdict"):
        assert needed in text, needed


def test_the_verdict_table_is_summary_md_s_own() -> None:
    rows = [{"scenario": "a", "verdict": "FAIL: nothing lost", "complete": 5},
            {"scenario": "b", "verdict": "pass", "failed": 0}]
    html = table_html(markdown_table(rows))
    assert html.count("<tr>") == 3 and '<td class="pwt-fail">FAIL: nothing lost</td>' in html
    assert '<td class="pwt-pass">pass</td>' in html
    assert "<th>longest gap ms</th>" in html
    page = summary_html(rows, [], {"boot": 1.0})
    assert "<h2>Phases</h2>" in page and "Skipped" not in page


def test_the_image_sizes_are_on_the_page_as_in_summary_md() -> None:
    """The point of an extension is a small upgrade: report.html gives the sizes summary.md
    gives, and no table where no row has them."""
    rows = [{"scenario": "host-socket-extension-no-keepalive", "verdict": "pass",
             "image_bytes": {"portable-walkthrough-base.raw": 41_000_000,
                             "portable-walkthrough_2.raw": 12_288}}]
    page = summary_html(rows, [], {})
    assert "<h2>Image sizes</h2>" in page
    assert "<td>portable-walkthrough-base.raw 41.00, portable-walkthrough_2.raw 0.01</td>" in page
    assert "Image sizes" not in summary_html([{"scenario": "a", "verdict": "pass"}], [], {})
