"""pytest-timeout as this project configures it: an expired test fails by a signal, and the
finalisers of its fixtures (in the suite: reset the service, destroy the VM) still run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]


def test_an_expired_test_fails_and_its_finalisers_run(pytester: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    marker = tmp_path / "destroyed"
    pytester.makepyfile(test_slow=f"""
        import time
        import pytest

        @pytest.fixture(scope="session")
        def vm():
            yield "booted"
            open({str(marker)!r}, "w").write("vm destroyed")

        def test_stuck(vm):
            time.sleep(60)
    """)
    result = pytester.runpytest_subprocess(
        "-p", "pytest_timeout", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
        f"--rootdir={pytester.path}", "--timeout", "2", str(pytester.path / "test_slow.py"),
        timeout=50,
    )
    text = "\n".join([*result.outlines, *result.errlines])
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text
    assert "Timeout (>2.0s) from pytest-timeout" in text, text
    assert marker.read_text() == "vm destroyed", text


def test_the_project_bounds_each_test_by_signal_not_by_thread() -> None:
    # The thread method ends the process with os._exit: no finaliser, a leaked VM.
    text = (ROOT / "pyproject.toml").read_text()
    assert 'timeout_method = "signal"' in text
    assert "timeout_func_only = true" in text  # box build and boot have their own bounds
