"""pytest-timeout as this project configures it: an expired test fails by a signal, and the
finalisers of its fixtures (in the suite: reset the service, destroy the VM) still run."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_the_plugin_bounds_each_vm_test_by_signal_not_by_thread(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A test whose fixtures reach ``machine`` gets the vm mark and the bound by signal on its
    body (the thread method ends the process with os._exit: no finaliser, a leaked VM); a
    test that boots nothing gets neither."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_marks="""
        import pytest

        @pytest.fixture
        def machine(settings):  # stands in for the plugin's VM, boots nothing
            return "vm"

        def test_on_the_vm(machine, request):
            mark = request.node.get_closest_marker("timeout")
            assert request.node.get_closest_marker("vm") is not None
            assert mark.kwargs == {"method": "signal", "func_only": True}, mark
            assert mark.args[0] >= 600

        def test_without_a_vm(request):
            assert request.node.get_closest_marker("timeout") is None
            assert request.node.get_closest_marker("vm") is None
    """)
    result = pytester.runpytest_subprocess(
        "-p", "pytest_timeout", "-p", "pytest_portable_upgrade.plugin.plugin",
        "-p", "no:cacheprovider", f"--rootdir={pytester.path}", "--strict-markers",
        f"--state-dir={pytester.path / 'state'}", timeout=50)
    result.assert_outcomes(passed=2)
