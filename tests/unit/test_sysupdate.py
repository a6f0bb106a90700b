"""sysupdate rollout: rendered transfer and units, the manifest, the 'refused' verdict."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
from support import REFUSAL_LINE, T0, healthy_socket, outcome, probe_series, reattach, scenario_run

from pytest_portable_upgrade.scenarios.catalogue import get_scenario
from pytest_portable_upgrade.scenarios.checks import refused_problems
from pytest_portable_upgrade.scenarios.verdict import FAIL, REFUSAL_REASON, REFUSED, verdict_of
from pytest_portable_upgrade.systemd.quirks import reattach_target
from pytest_portable_upgrade.systemd.sysupdate import SysupdateSetup

# What systemd-sysupdate's download helper prints when a url-file download does not match the
# digest in SHA256SUMS. sysupdate runs `systemd-pull raw --direct --verify=<sha256> URL PATH`;
# pull_verify() in src/import/pull-common.c then logs
#   "DOWNLOAD INVALID: Checksum of %s file did not check out, file has been tampered with."
# with the URL for %s. The format string was read (`strings`) from /lib/systemd/systemd-pull of
# Debian's systemd-container 254.26-1~bpo12+1 (bookworm-backports) and
# /usr/lib/systemd/systemd-pull of 257.13-1~deb13u1 (trixie): it is the same in both. The
# journal prefix (time, host, pid) is as `journalctl -q -u pwt-rollout.service` prints it; the
# URL is the one the suite's HTTP transfer uses.
REFUSAL_LINES = {
    254: "Nov 26 11:41:07 pwt systemd-pull[1093]: DOWNLOAD INVALID: Checksum of "
         "http://127.0.0.1:8090/portable-walkthrough_2.raw file did not check out, file has "
         "been tampered with.",
    257: REFUSAL_LINE,
    # 262.1-1 (sid), from the rollout journal of a run on 2026-11-27 (time prefix as printed).
    262: "Nov 27 10:19:53 pwt-guest systemd-pull[12652]: Checksum of downloaded resource does "
         "not match expected checksum, yikes.",
}
# Lines of a rollout that failed for another reason: none of them is a checksum refusal. The
# old pattern (invalid|tamper|checksum|hash anywhere) took the first, third and fourth for one.
NOT_A_REFUSAL = [
    "Nov 26 12:00:09 pwt systemd-sysupdate[801]: Failed to open directory "
    "'/var/lib/portables': Invalid argument",
    "Nov 26 12:00:09 pwt systemd-sysupdate[801]: Failed to parse digest at manifest line 1, "
    "refusing.",
    "Nov 26 12:00:09 pwt systemd-pull[812]: Failed to retrieve SHA256 checksum, cannot verify. "
    "(Try --verify=no?)",
    "Nov 26 12:00:09 pwt systemd-pull[812]: DOWNLOAD INVALID: Signature verification failed.",
    "Nov 26 12:00:09 pwt systemd-pull[812]: HTTP request to "
    "http://127.0.0.1:8090/portable-walkthrough_2.raw failed with code 404.",
]


def test_directory_transfer() -> None:
    text = SysupdateSetup("dir", "portable-walkthrough", name="portable-walkthrough").transfer()
    assert "Type=regular-file\nPath=/var/lib/pwt-source" in text
    assert text.count("MatchPattern=portable-walkthrough_@v.raw") == 2
    assert "CurrentSymlink=/var/lib/portables/portable-walkthrough.raw" in text
    assert "InstancesMax=2" in text


def test_http_transfer_stays_on_loopback() -> None:
    text = SysupdateSetup("http", "portable-walkthrough", name="portable-walkthrough").transfer()
    assert "Type=url-file\nPath=http://127.0.0.1:8090/" in text
    assert "Verify=no" in text
    assert not re.search(r"https?://(?!127\.0\.0\.1)", text)


def test_units_reattach_as_the_systemd_version_needs() -> None:
    for major, arg in ((252, "/var/lib/portables/portable-walkthrough.raw"),
                       (257, "portable-walkthrough")):
        setup = SysupdateSetup("dir", reattach_target(major, "portable-walkthrough",
                                                      "/var/lib/portables/portable-walkthrough.raw"),
                               name="portable-walkthrough")
        rollout = setup.rollout_unit()
        assert "ExecCondition=/usr/lib/systemd/systemd-sysupdate check-new" in rollout
        assert rollout.index("sysupdate update") < rollout.index("reattach --now")
        assert rollout.rstrip().endswith(f"portablectl reattach --now {arg}")
        assert "systemd-sysupdate update %i" in setup.pin_unit()


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="source must be one of"):
        SysupdateSetup("ftp", "x", name="x")


def test_manifest_is_sha256sums_format(tmp_path: Path) -> None:
    """The guest program's publish step writes sha256sum's own format, checked by it."""
    from support import run_program

    stash, source = tmp_path / "stash", tmp_path / "source"
    stash.mkdir()
    (stash / "portable-walkthrough_2.raw").write_bytes(b"image two")
    source.mkdir()
    (source / "other.txt").write_text("not an image")
    answer = run_program([{"step": "publish", "image": str(stash / "portable-walkthrough_2.raw"),
                           "source": str(source), "pattern": "portable-walkthrough_*.raw"}])
    assert answer["ok"], answer
    lines = (source / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"[0-9a-f]{64}  portable-walkthrough_2\.raw", lines[0])
    subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=source, check=True,
                   capture_output=True)


def test_a_corrupt_publish_no_longer_matches_its_checksum(tmp_path: Path) -> None:
    from support import run_program

    (tmp_path / "portable-walkthrough_2.raw").write_bytes(b"image two")
    source = tmp_path / "source"
    run_program([{"step": "publish", "image": str(tmp_path / "portable-walkthrough_2.raw"),
                  "source": str(source), "pattern": "portable-walkthrough_*.raw",
                  "corrupt": True}])
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=source, capture_output=True)
    assert check.returncode != 0


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
    from pytest_portable_upgrade.systemd.quirks import sysupdate_transfer_suffix

    setup = SysupdateSetup("dir", "x", transfer_suffix=sysupdate_transfer_suffix(major),
                           name="portable-walkthrough")
    assert setup.transfer_path == f"/etc/sysupdate.d/50-portable-walkthrough{suffix}"


@pytest.mark.parametrize("major", sorted(REFUSAL_LINES))
def test_refusal_reason_matches_what_systemd_pull_prints(major: int) -> None:
    assert REFUSAL_REASON.search(REFUSAL_LINES[major])


@pytest.mark.parametrize("line", NOT_A_REFUSAL)
def test_other_failures_are_not_a_checksum_refusal(line: str) -> None:
    assert not REFUSAL_REASON.search(line)


CORRUPT = get_scenario("host-socket-sysupdate-http-corrupt")


def rollout_output(*lines: str) -> str:
    """The rollout's output as the guest program's ``upgrade`` step answers it: the
    command's output, then the unit's journal."""
    return "\n".join(["Job for pwt-rollout.service failed.", *lines, ""])


@pytest.mark.parametrize("major", sorted(REFUSAL_LINES))
def test_refused_verdict_with_the_real_refusal(major: int) -> None:
    run = scenario_run(CORRUPT)
    run = dataclasses.replace(run, upgrade=dataclasses.replace(
        run.upgrade, output=rollout_output(REFUSAL_LINES[major])))
    verdict = verdict_of(run)
    assert verdict.kind == REFUSED, verdict.explain()
    # The report quotes systemd-pull's own words, whichever version said them.
    words = REFUSAL_LINES[major].split("]: ", 1)[1]
    assert verdict.observed.startswith(words)


@pytest.mark.parametrize("line", NOT_A_REFUSAL)
def test_rollout_failing_for_another_reason_is_a_fail(line: str) -> None:
    run = scenario_run(CORRUPT)
    run = dataclasses.replace(run, upgrade=dataclasses.replace(
        run.upgrade, output=rollout_output(line)))
    verdict = verdict_of(run)
    assert verdict.kind == FAIL
    assert verdict.problems[-1].startswith("the rollout failed, but not with a checksum refusal")
