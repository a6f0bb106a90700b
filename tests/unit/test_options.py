"""The suite's options (the plugin): a bad value ends the run at start-up with one line.

Each case runs ``pytest --co`` (collect only) on the scenario suite the package ships, in a
subprocess. Settings are read and checked once collection has found a test that uses them
(``pytest_collection_finish``); under ``--co`` no test runs, so no fixture runs either: the
session fixtures that build the box and images and boot the VM (``box``, ``images``,
``machine``, ``service``) and the one that creates the artifacts directory are never set up.
``test_valid_options_collect_the_scenarios`` checks the last by pointing ``--artifacts`` and
``--state-dir`` at directories that must still not exist afterwards.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_portable_upgrade.boxes.recipes import BOXES
from pytest_portable_upgrade.scenarios.catalogue import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
SUITE = ("--pyargs", "pytest_portable_upgrade.plugin.suite")
# Plugin autoloading is off in these sessions (host plugins cost time and could change the
# output): the suite's plugin is named, as its pytest11 entry point would load it.
PLUGIN = ("-p", "pytest_portable_upgrade.plugin.plugin")
Collect = Callable[..., pytest.RunResult]


@pytest.fixture
def collect(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[Collect]:
    """collect(*options, **env) -> RunResult of ``pytest --co`` on the scenario suite."""
    for name in list(os.environ):
        if name.startswith("PWT_"):
            monkeypatch.delenv(name)
    # Only pytest and the project's conftests: host plugins (hypothesis, ...) cost time and
    # could change the output.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")

    def run(*options: str, **env: str) -> pytest.RunResult:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return pytester.runpytest_subprocess(
            "--co", "-q", "-p", "no:cacheprovider", *PLUGIN, f"--rootdir={ROOT}",
            "-c", str(ROOT / "pyproject.toml"), *SUITE, *options, timeout=60,
        )

    yield run


def output_of(result: pytest.RunResult) -> str:
    return "\n".join([*result.outlines, *result.errlines])


def assert_usage_error(result: pytest.RunResult, *reason: str) -> None:
    text = output_of(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "Traceback" not in text, text
    # Besides pytest's own count line ("16 tests collected in 0.4s"): the checks run once
    # collection is done, before anything is listed, built or booted.
    shown = [ln for ln in text.splitlines()
             if ln.strip() and not re.match(r"(\d+ tests? collected|no tests ran) in ", ln)]
    assert len(shown) == 1, f"wanted one line, got:\n{text}"
    assert shown[0].startswith("ERROR: "), text
    for part in reason:
        assert part in shown[0], (part, shown[0])


@pytest.mark.parametrize(
    ("options", "env", "reason"),
    [
        (["--concurrency", "0"], {}, ["concurrency must be at least 1, not 0"]),
        (["--concurrency", "abc"], {}, ["--concurrency (PWT_CONCURRENCY)", "'abc'"]),
        (["--load-max", "5", "--switch-after", "5", "--post-switch", "10"], {},
         ["load bound 5 s", "switch-after + post-switch = 15 s"]),
        (["--box", "nosuchbox"], {}, ["unknown box 'nosuchbox'", "; known boxes: ",
                                      *sorted(BOXES)]),
        (["--keep-vm", "sometimes"], {}, ["keep-vm must be one of never, on-error, always",
                                          "'sometimes'"]),
        (["--accel", "warp"], {}, ["accel must be one of auto, kvm, tcg", "'warp'"]),
        ([], {"PWT_CONCURRENCY": "-1"}, ["concurrency must be at least 1, not -1"]),
        ([], {"PWT_SWITCH_AFTER": "soon"}, ["--switch-after (PWT_SWITCH_AFTER)", "'soon'"]),
        (["--switch-after", "-3"], {}, ["switch-after must be a positive number of seconds"]),
        (["--min-complete", "0"], {}, ["min-complete must be at least 1"]),
        (["--boot-timeout", "0"], {}, ["boot-timeout must be a positive number of seconds"]),
        ([], {"PWT_REATTACH_TIMEOUT": "-1"}, ["reattach-timeout must be a positive number"]),
        (["--unit-timeout", "forever"], {}, ["--unit-timeout (PWT_UNIT_TIMEOUT)", "'forever'"]),
        (["--ssh-port", "22"], {}, ["ssh-port must be 0 (pick one) or 1024..65535, not 22"]),
        ([], {"PWT_ARTIFACTS_ALWAYS": "maybe"},
         ["--artifacts-always (PWT_ARTIFACTS_ALWAYS) must be one of 1, yes, true, on, 0, no,",
          "'maybe'"]),
        (["--probe-rate", "0"], {}, ["probe-rate must be a number of requests per second"]),
        ([], {"PWT_PROBE_RATE": "fast"}, ["--probe-rate (PWT_PROBE_RATE)", "'fast'"]),
        (["--max-stall", "-2"], {}, ["max-stall must be a positive number of seconds, not -2"]),
        ([], {"PWT_MAX_STALL": "nan"}, ["max-stall must be a positive number of seconds"]),
    ],
    ids=["concurrency-0", "concurrency-abc", "load-max-too-small", "unknown-box",
         "keep-vm-sometimes", "accel-warp", "env-concurrency-negative", "env-not-a-float",
         "switch-after-negative", "min-complete-0", "boot-timeout-0",
         "env-reattach-timeout-negative", "unit-timeout-word", "ssh-port-22",
         "env-artifacts-always-maybe", "probe-rate-0",
         "env-probe-rate-word", "max-stall-negative", "env-max-stall-nan"],
)
def test_bad_option_is_one_line(collect: Collect, options: list[str], env: dict[str, str],
                                reason: list[str]) -> None:
    assert_usage_error(collect(*options, **env), *reason)


@pytest.mark.parametrize("options", [["--switch-after", "nan"], ["--post-switch", "nan"],
                                     ["--load-max", "nan"], ["--load-max", "inf"]],
                         ids=["switch-after-nan", "post-switch-nan", "load-max-nan",
                              "load-max-inf"])
def test_non_finite_duration_is_rejected(collect: Collect, options: list[str]) -> None:
    assert_usage_error(collect(*options))


@pytest.mark.parametrize(("options", "env"), [
    (["--artifacts-always"], {}), ([], {"PWT_ARTIFACTS_ALWAYS": "1"}),
    ([], {"PWT_ARTIFACTS_ALWAYS": "off"}),
], ids=["flag", "env-1", "env-off"])
def test_artifacts_always_is_a_flag(collect: Collect, options: list[str],
                                    env: dict[str, str]) -> None:
    result = collect(*options, **env)
    assert result.ret == pytest.ExitCode.OK, output_of(result)


def test_command_line_wins_over_the_environment(collect: Collect) -> None:
    result = collect("--concurrency", "4", PWT_CONCURRENCY="-1")
    assert result.ret == pytest.ExitCode.OK, output_of(result)


EXPECTED_IDS = [
    "vm/plugin/suite/test_keepalive.py::test_keepalive_loses_no_request"
    "[host-socket-keepalive-drain]",
    "vm/plugin/suite/test_keepalive.py::test_keepalive_loses_no_request"
    "[host-socket-keepalive-haproxy]",
    "vm/plugin/suite/test_keepalive.py::test_keepalive_loses_no_request"
    "[host-socket-keepalive-drain-post]",
    "vm/plugin/suite/test_keepalive.py::test_keepalive_loses_no_request"
    "[host-socket-keepalive-haproxy-post]",
    "vm/plugin/suite/test_keepalive.py::test_keepalive_to_naive_server_loses_requests"
    "[host-socket-keepalive-naive]",
    "vm/plugin/suite/test_keepalive.py::test_keepalive_to_naive_server_loses_requests"
    "[host-socket-keepalive-naive-post]",
    "vm/plugin/suite/test_reattach.py::test_reattach_loses_no_request"
    "[host-socket-no-keepalive]",
    "vm/plugin/suite/test_reattach.py::test_reattach_loses_no_request[host-socket-rollback]",
    "vm/plugin/suite/test_reattach.py::test_reattach_loses_no_request"
    "[host-socket-trusted-profile]",
    "vm/plugin/suite/test_socket_in_image.py::test_socket_in_image_causes_downtime",
    "vm/plugin/suite/test_fdstore_preserve.py::"
    "test_stop_start_drops_the_stored_connections_without_preserve",
    "vm/plugin/suite/test_fdstore_preserve.py::"
    "test_stop_start_keeps_every_connection_with_preserve",
    "vm/plugin/suite/test_user_portable.py::test_user_portable_reattach_loses_no_request",
    "vm/plugin/suite/test_layouts.py::test_extension_upgrade[host-socket-extension-no-keepalive]",
    "vm/plugin/suite/test_layouts.py::test_extension_upgrade[host-socket-extension-rollback]",
    "vm/plugin/suite/test_layouts.py::test_extension_upgrade[image-socket-extension-no-keepalive]",
    "vm/plugin/suite/test_layouts.py::test_versioned_dir_upgrade"
    "[host-socket-versioned-dir-no-keepalive]",
    "vm/plugin/suite/test_layouts.py::test_versioned_dir_upgrade"
    "[host-socket-versioned-dir-rollback]",
]


def test_valid_options_collect_the_scenarios(collect: Collect, tmp_path: Path) -> None:
    artifacts, state = tmp_path / "artifacts", tmp_path / "state"
    result = collect("--box", "debian-bookworm", "--accel", "tcg", "--keep-vm", "on-error",
                     "--concurrency", "3", "--switch-after", "2.5", "--post-switch", "4",
                     "--load-max", "60", "--min-complete", "50", "--probe-rate", "35",
                     "--max-stall", "4.5",
                     f"--artifacts={artifacts}", f"--state-dir={state}")
    text = output_of(result)
    assert result.ret == pytest.ExitCode.OK, text
    assert "Traceback" not in text
    collected = sorted(ln for ln in result.outlines if "::" in ln)
    missing = [node_id for node_id in EXPECTED_IDS if node_id not in collected]
    assert not missing, text
    # Parametrized ids are scenario ids, and each scenario has exactly one test.
    params = [ln.split("[", 1)[1].rstrip("]") for ln in collected if "[" in ln]
    known = {s.id for s in SCENARIOS}
    assert set(params) <= known and len(params) == len(set(params))
    # Nothing was booted or built: the fixtures that create these never ran.
    assert not artifacts.exists() and not state.exists()


def test_unit_tests_ignore_the_integration_settings(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`PWT_BOX=nonsense tox -e unit` runs: the plugin reads the settings only for a session
    that collects a test using them (no guard on paths)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PWT_BOX", "nonsense")
    monkeypatch.setenv("PWT_CONCURRENCY", "0")
    unit_file = ROOT / "tests" / "unit" / "test_quirks.py"
    args = ("--co", "-q", "-p", "no:cacheprovider", *PLUGIN, f"--rootdir={ROOT}",
            "-c", str(ROOT / "pyproject.toml"))
    result = pytester.runpytest_subprocess(*args, str(unit_file), timeout=60)
    assert result.ret == pytest.ExitCode.OK, output_of(result)
    # The same environment still stops a run that includes the VM tests, with one line.
    mixed = pytester.runpytest_subprocess(*args, "--pyargs", str(unit_file),
                                          "pytest_portable_upgrade.plugin.suite", timeout=60)
    assert_usage_error(mixed, "unknown box 'nonsense'")
