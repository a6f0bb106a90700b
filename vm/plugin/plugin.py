"""The pytest plugin, registered by the ``pytest11`` entry point ``portable_upgrade``.

It loads in every pytest session of an environment that has the suite installed, and so costs
nothing to a session that boots no VM: the options are declared (core/config.py's SETTINGS),
and they are read and checked only when a collected test asks for the fixture ladder
(``settings`` and everything on it). Then a bad value, or a bad spec, ends the run with one
line before anything is built or booted.

- ``fixtures.py`` (the ladder) is registered at configure time, after every entry-point
  plugin: its ``host`` (testinfra's Host on the session's VM) must win over pytest-testinfra's
  own ``host`` (a local one without ``--hosts``), whatever order the plugins loaded in.
- Tests on the VM (those whose fixtures reach ``machine``) get the ``vm`` mark and
  pytest-timeout's bound by signal (their fixtures' finalisers still run and destroy the VM;
  the thread method would end the process without them); box build and boot have their own
  bounds, so the bound is on the test's body only.
- ``--report-html`` points pytest-html at ``report.html`` in the run's artifacts directory
  (self-contained); the hooks below add the verdict columns, each scenario's timeline, the
  latency table, the skipped scenarios and the phases.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_portable_upgrade.core.config import (
    SETTINGS,
    SettingError,
    Settings,
    default_text,
    get_setting,
    new_run_id,
    settings_from,
    value_of,
)
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.subject.spec import SpecError, Subject, load_subject

RUN_ID = pytest.StashKey[str]()
SETTINGS_KEY = pytest.StashKey[Settings]()
SUBJECT_KEY = pytest.StashKey[Subject]()
RESULTS = pytest.StashKey[list[dict[str, Any]]]()
# Scenarios the guest cannot run (ScenarioUnsupported), with the reason: the report and the
# matrix show them as skipped on that box rather than not run.
SKIPPED = pytest.StashKey[list[dict[str, Any]]]()
PHASES = pytest.StashKey[dict[str, float]]()
BOOT_STARTED = pytest.StashKey[float]()
# Per test: its summary row and its timeline PNG (record_scenario), for the HTML report.
ROW_KEY = pytest.StashKey[dict[str, Any]]()
TIMELINE_KEY = pytest.StashKey[Path]()

# Fixtures that mean "this test uses the suite": its settings are read and checked.
LADDER_ROOT = "settings"
VM_FIXTURE = "machine"
# pytest-timeout's bound on the body of a test on the VM (a scenario is 30-60 s under TCG).
TEST_TIMEOUT_S = 1200.0
HTML_NAME = "report.html"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("portable-upgrade", "portable-upgrade VM suite (docs/options.md)")
    for s in SETTINGS:
        default = f"default {default_text(s)}; "
        if s.flag:
            group.addoption(f"--{s.name}", action="store_const", const="1", default=None,
                            help=f"{s.help} [{default}env {s.env}=1]")
        else:
            group.addoption(f"--{s.name}", default=None, metavar=s.metavar,
                            help=f"{s.help} [{default}env {s.env}]")


def given_options(config: pytest.Config) -> Mapping[str, str | None]:
    """The option texts given on the command line, by setting name (None: not given)."""
    return {s.name: config.getoption(s.name.replace("-", "_")) for s in SETTINGS}


def _one_value(config: pytest.Config, name: str) -> Any:
    try:
        return value_of(get_setting(name), given_options(config))
    except SettingError as e:
        raise pytest.UsageError(str(e)) from None


@pytest.hookimpl(tryfirst=True)  # before pytest-html's, which reads the report's path
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: needs a booted VM (the suite adds it)")
    config.stash[RUN_ID] = new_run_id()
    config.stash[RESULTS] = []
    config.stash[SKIPPED] = []
    config.stash[PHASES] = {}
    if (_one_value(config, "report-html") and not config.getoption("htmlpath", None)
            and not config.option.collectonly):  # --co runs nothing: no report
        root = Path(_one_value(config, "artifacts"))
        root = root if root.is_absolute() else config.invocation_params.dir / root
        config.option.htmlpath = str(root / config.stash[RUN_ID] / HTML_NAME)
        config.option.self_contained_html = True
    # Registered now, after every entry-point plugin: see the module's docstring.
    config.pluginmanager.import_plugin("pytest_portable_upgrade.plugin.fixtures")
    capman = config.pluginmanager.getplugin("capturemanager")

    def emit(line: str) -> None:  # step logs reach the terminal past pytest's capture
        if capman is not None:
            with capman.global_and_fixture_disabled():
                print(f"[pwt] {line}", file=sys.stderr, flush=True)
        else:
            print(f"[pwt] {line}", file=sys.stderr, flush=True)

    log.emit = emit


def settings_of(config: pytest.Config) -> Settings:
    """The run's settings, read and checked once (command line over PWT_* over defaults)."""
    if SETTINGS_KEY not in config.stash:
        try:
            config.stash[SETTINGS_KEY] = settings_from(
                given_options(config), base=config.invocation_params.dir,
                run_id=config.stash[RUN_ID])
        except SettingError as e:
            raise pytest.UsageError(str(e)) from None
    return config.stash[SETTINGS_KEY]


def subject_of(config: pytest.Config) -> Subject:
    if SUBJECT_KEY not in config.stash:
        try:  # a bad spec is one line naming the file and the key, before anything boots
            config.stash[SUBJECT_KEY] = load_subject(settings_of(config).service)
        except SpecError as e:
            raise pytest.UsageError(str(e)) from None
    return config.stash[SUBJECT_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """--repeat N: every scenario test N times (ids end in -run1 … -runN)."""
    if "repeat_index" not in metafunc.fixturenames:
        return
    repeat = _one_value(metafunc.config, "repeat")
    if repeat < 1:
        raise pytest.UsageError(f"--repeat must be at least 1, not {repeat}")
    if repeat > 1:
        metafunc.parametrize("repeat_index", range(1, repeat + 1),
                             ids=[f"run{i}" for i in range(1, repeat + 1)])


@pytest.hookimpl(tryfirst=True)  # before the terminal lists what was collected (--co)
def pytest_collection_finish(session: pytest.Session) -> None:
    config, items = session.config, session.items
    uses = [item for item in items if LADDER_ROOT in getattr(item, "fixturenames", ())]
    if not uses:
        return  # nothing here boots a VM: the settings are none of this session's business
    settings_of(config)
    subject_of(config)
    # pytest-timeout is a dependency; only a session with plugin autoloading off lacks it
    bound = any(line.startswith("timeout") for line in config.getini("markers"))
    for item in uses:
        if VM_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vm)
            if bound and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, method="signal",
                                                    func_only=True))
    if not config.option.collectonly:
        _install_run_bounds(settings_of(config))


def _install_run_bounds(settings: Settings) -> None:
    """SIGTERM becomes an interrupt (every finaliser, the VM's destroy, still runs), and
    --run-timeout ends the run that way after its seconds."""

    def on_sigterm(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    if settings.run_timeout_s is None:
        return
    seconds = settings.run_timeout_s

    def expire() -> None:
        log.info(f"run timeout: {seconds:.0f} s reached, ending the run")
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)  # fixtures read item.rep_call.failed
    if report.when == "call" or (report.when == "setup" and report.skipped):
        row = item.stash.get(ROW_KEY, None)
        if row is not None:
            report.pwt_row = row
        timeline = item.stash.get(TIMELINE_KEY, None)
        if timeline is not None and timeline.exists():
            import pytest_html.extras

            png = base64.b64encode(timeline.read_bytes()).decode()
            report.extras = [*getattr(report, "extras", []),
                             pytest_html.extras.png(png, name=timeline.name)]
    return report


# --- report -------------------------------------------------------------------------------
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    records, skipped = config.stash[RESULTS], config.stash[SKIPPED]
    if not records and not skipped:
        return
    from pytest_portable_upgrade.report.report import write_summary

    write_summary(settings_of(config).artifacts_dir, records, config.stash[PHASES],
                  skipped=skipped)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    records = config.stash[RESULTS]
    if not records:
        return
    from pytest_portable_upgrade.report.report import markdown_table

    directory = settings_of(config).artifacts_dir
    terminalreporter.section("zero-downtime verdicts")
    terminalreporter.write_line(markdown_table(records))
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in config.stash[PHASES].items())
    terminalreporter.write_line(f"phases: {phases}")
    html = f", {directory / HTML_NAME}" if (directory / HTML_NAME).exists() else ""
    terminalreporter.write_line(f"report: {directory}/summary.md{html} "
                                f"(timelines: {directory}/*.png)")


# pytest-html's hooks (optional: a session without pytest-html never calls them)
@pytest.hookimpl(optionalhook=True)
def pytest_html_report_title(report: Any) -> None:
    report.title = "portable-upgrade: zero-downtime verdicts"


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix: list[str], summary: list[str], postfix: list[str],
                                session: pytest.Session) -> None:
    config = session.config
    if not config.stash[RESULTS] and not config.stash[SKIPPED]:
        return
    from pytest_portable_upgrade.report.html import summary_html

    settings = config.stash.get(SETTINGS_KEY, None)
    records, skipped = config.stash[RESULTS], config.stash[SKIPPED]
    prefix.append(summary_html(records, skipped, config.stash[PHASES],
                               spec=str(settings.service) if settings else ""))


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_header(cells: list[str]) -> None:
    from pytest_portable_upgrade.report.html import ROW_COLUMNS

    cells[2:2] = [f"<th>{title}</th>" for title, _ in ROW_COLUMNS]


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_row(report: Any, cells: list[str]) -> None:
    from pytest_portable_upgrade.report.html import row_cells

    cells[2:2] = row_cells(getattr(report, "pwt_row", None))
