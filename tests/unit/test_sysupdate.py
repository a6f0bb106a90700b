"""sysupdate rollout: rendered transfer and units, the manifest, the 'refused' verdict."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support import T0, healthy_socket, outcome, probe_series, reattach

from vm.quirks import reattach_target
from vm.scenario import refused_problems
from vm.sysupdate import SysupdateSetup, sha256sums_command


def test_directory_transfer() -> None:
    text = SysupdateSetup("dir", "portable-walkthrough").transfer()
    assert "Type=regular-file\nPath=/var/lib/pwt-source" in text
    assert text.count("MatchPattern=portable-walkthrough_@v.raw") == 2
    assert "CurrentSymlink=/var/lib/portables/portable-walkthrough.raw" in text
    assert "InstancesMax=2" in text


def test_http_transfer_stays_on_loopback() -> None:
    text = SysupdateSetup("http", "portable-walkthrough").transfer()
    assert "Type=url-file\nPath=http://127.0.0.1:8090/" in text
    assert "Verify=no" in text
    assert not re.search(r"https?://(?!127\.0\.0\.1)", text)


def test_units_reattach_as_the_systemd_version_needs() -> None:
    for major, arg in ((252, "/var/lib/portables/portable-walkthrough.raw"),
                       (257, "portable-walkthrough")):
        setup = SysupdateSetup("dir", reattach_target(major, "portable-walkthrough",
                                                      "/var/lib/portables/portable-walkthrough.raw"))
        rollout = setup.rollout_unit()
        assert "ExecCondition=/usr/lib/systemd/systemd-sysupdate check-new" in rollout
        assert rollout.index("sysupdate update") < rollout.index("reattach --now")
        assert rollout.rstrip().endswith(f"portablectl reattach --now {arg}")
        assert "systemd-sysupdate update %i" in setup.pin_unit()


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="source must be one of"):
        SysupdateSetup("ftp", "x")


def test_manifest_is_sha256sums_format(tmp_path: Path) -> None:
    (tmp_path / "portable-walkthrough_2.raw").write_bytes(b"image two")
    (tmp_path / "other.txt").write_text("not an image")
    subprocess.run(["bash", "-c", sha256sums_command(str(tmp_path))], check=True)
    lines = (tmp_path / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"[0-9a-f]{64}  portable-walkthrough_2\.raw", lines[0])


def hello_throughout() -> list:  # type: ignore[type-arg]
    return probe_series(T0 + 0.2, T0 + 30.0, "Hello", first_visitor=3)


def test_refused_update_with_old_version_serving_is_clean() -> None:
    out = outcome(hello_throughout())
    assert refused_problems(out, reattach(), healthy_socket(), rollout_ok=False,
                            min_complete=200) == []


def test_refused_verdict_catches_a_tampered_version_going_live() -> None:
    records = hello_throughout()[:30] + probe_series(T0 + 6.2, T0 + 30.0, "Hola", 1000)
    problems = refused_problems(outcome(records), reattach(), healthy_socket(),
                                rollout_ok=True, min_complete=200)
    assert "the rollout of a tampered image succeeded" in problems
    assert "'Hola' answered: the tampered version went live" in problems
    assert "'Hello' did not go on answering after the refused update" in problems


@pytest.mark.parametrize(("major", "suffix"), [(254, ".conf"), (256, ".conf"), (257, ".transfer")])
def test_transfer_file_suffix_follows_the_systemd_version(major: int, suffix: str) -> None:
    from vm.quirks import sysupdate_transfer_suffix

    setup = SysupdateSetup("dir", "x", transfer_suffix=sysupdate_transfer_suffix(major))
    assert setup.transfer_path == f"/etc/sysupdate.d/50-portable-walkthrough{suffix}"
