"""vm/subject/user_checks.py: a spec's own pytest files run in their own pytest process with
testinfra's ``host`` and the scenario's ``run_record``; each failure becomes one line.

Here the host is testinfra's ``local://`` backend (no VM): the same plugin, fixtures and
JUnit reading as against the guest's ``paramiko://`` one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_portable_upgrade.subject.user_checks import run_user_checks

CHECKS = '''
def test_passes(host, run_record):
    assert host.file("/").is_directory
    assert run_record["scenario"] == "host-socket-no-keepalive"


def test_state_kept(host):
    assert host.file("/nonexistent/db").exists, "the database is gone"


def test_skipped_does_not_count(host):
    import pytest
    pytest.skip("not here")
'''


def checks_dir(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / "checks"
    directory.mkdir()
    (directory / "test_mine.py").write_text(text)
    return directory


def test_failures_become_one_line_each(tmp_path: Path) -> None:
    result = run_user_checks(checks_dir(tmp_path, CHECKS), "local://", None,
                             {"scenario": "host-socket-no-keepalive"}, tmp_path / "out")
    assert result.run == 2
    assert len(result.failures) == 1, result.failures
    # testinfra parametrizes each check by host: [local] here, [paramiko://pwt-guest] there
    assert result.failures[0].startswith("test_mine::test_state_kept[local]: AssertionError: "
                                         "the database is gone")
    assert (tmp_path / "out" / "output.txt").exists()


def test_all_passing(tmp_path: Path) -> None:
    text = CHECKS.split("def test_state_kept")[0]
    result = run_user_checks(checks_dir(tmp_path, text), "local://", None,
                             {"scenario": "host-socket-no-keepalive"}, tmp_path / "out")
    assert (result.run, result.failures) == (1, ())


def test_an_empty_directory_is_a_failure_not_a_pass(tmp_path: Path) -> None:
    directory = tmp_path / "checks"
    directory.mkdir()
    result = run_user_checks(directory, "local://", None, {}, tmp_path / "out")
    assert result.run == 0 and "no user checks found" in result.failures[0]


def test_a_check_that_does_not_import_fails(tmp_path: Path) -> None:
    result = run_user_checks(checks_dir(tmp_path, "import no_such_module\n"), "local://", None,
                             {}, tmp_path / "out")
    assert result.failures and "no_such_module" in " ".join(result.failures)


def test_their_process_needs_no_path_of_this_repository_and_not_the_suites_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The users' pytest process finds ``run_record``'s plugin where the package is installed
    (no PYTHONPATH), from a directory of theirs; the suite's own plugin (whose ``host`` is the
    session's VM, not testinfra's --hosts one) stays out of it."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    text = (
        "def test_not_the_suite(host, run_record, pytestconfig):\n"
        "    assert not pytestconfig.pluginmanager.hasplugin('portable_upgrade')\n"
        "    assert type(host).__module__.startswith('testinfra')\n"
        "    assert run_record == {'scenario': 's'}\n"
    )
    result = run_user_checks(checks_dir(tmp_path, text), "local://", None, {"scenario": "s"},
                             tmp_path / "out")
    assert (result.run, result.failures) == (1, ()), (tmp_path / "out" / "output.txt").read_text()
