"""pytest wiring: options, the fixture ladder (one VM per session), artifacts and the report.

Ladder: settings, subject (the service under test: --service spec) -> box, images -> machine
(the one VM, booted once) -> host (testinfra on the machine's SSH) -> service (the portable
service in the guest: systemd version known, checked clean once; session) -> clean_service (the
same object per test: clean at the start, evidence saved, reset afterwards).
Every option has a PWT_* environment variable (e.g. --box / PWT_BOX) that tox passes through.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_portable_upgrade.core.config import (
    ACCEL_CHOICES,
    KEEP_VM_CHOICES,
    LoadSettings,
    Settings,
)
from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.subject.spec import SpecError, Subject, load_subject

ROOT = Path(__file__).resolve().parent
RESULTS = pytest.StashKey[list[dict[str, Any]]]()
# Scenarios the guest cannot run (ScenarioUnsupported), with the reason: the report and the
# matrix show them as skipped on that box rather than not run.
SKIPPED = pytest.StashKey[list[dict[str, Any]]]()
PHASES = pytest.StashKey[dict[str, float]]()
SETTINGS = pytest.StashKey[Settings]()
SUBJECT = pytest.StashKey[Subject]()
BOOT_STARTED = pytest.StashKey[float]()

# option name -> (env var, type, help)
OPTIONS: dict[str, tuple[str, type, str]] = {
    "service": ("PWT_SERVICE", str, "subject spec (TOML) of the service under test "
                "(default images/walkthrough.toml; README: Test your own service)"),
    "box": ("PWT_BOX", str, "guest box to boot (see vm/boxes/recipes.py)"),
    "accel": ("PWT_ACCEL", str, f"accelerator: {'|'.join(ACCEL_CHOICES)} (auto probes KVM)"),
    "provider": ("PWT_PROVIDER", str, "Vagrant provider: libvirt (default) or virtualbox"),
    "restore": ("PWT_RESTORE", str, "on: restore the box's saved booted guest (made by the "
                "first cold boot), off: boot cold and save nothing"),
    "keep-vm": ("PWT_KEEP_VM", str, f"keep the VM after the run: {'|'.join(KEEP_VM_CHOICES)}"),
    "state-dir": ("PWT_STATE_DIR", str, "cache of boxes, images, keys and per-run VM dirs"),
    "artifacts": ("PWT_ARTIFACTS", str, "where run reports and failure logs go"),
    "artifacts-always": ("PWT_ARTIFACTS_ALWAYS", bool,
                         "save journals, probe log and ab.out for passing runs too"),
    "pool": ("PWT_POOL", str, "libvirt storage pool (setup-host defines it)"),
    "repeat": ("PWT_REPEAT", int, "run every scenario N times on the one VM (verdict stability)"),
    "run-timeout": ("PWT_RUN_TIMEOUT", float,
                        "end the whole run (cleanly, VM destroyed) after this many seconds"),
    "boot-timeout": ("PWT_BOOT_TIMEOUT", float, "seconds for vagrant up to reach SSH (900)"),
    "box-build-timeout": ("PWT_BOX_BUILD_TIMEOUT", float, "seconds for a box build (1800)"),
    "reattach-timeout": ("PWT_REATTACH_TIMEOUT", float,
                         "seconds one portablectl attach/reattach may take (240)"),
    "unit-timeout": ("PWT_UNIT_TIMEOUT", float, "seconds a unit may take to become active (60)"),
    "ssh-port": ("PWT_SSH_PORT", int,
                 "127.0.0.1 port for the VM's SSH (default: a free one; taken: another)"),
    "concurrency": ("PWT_CONCURRENCY", int, "ab concurrency (-c)"),
    "switch-after": ("PWT_SWITCH_AFTER", float, "seconds of load before the reattach"),
    "post-switch": ("PWT_POST_SWITCH", float, "seconds v2 must answer under load before it stops"),
    "load-max": ("PWT_LOAD_MAX", float, "upper bound of one load run in seconds (ab -t)"),
    "min-complete": ("PWT_MIN_COMPLETE", int, "fewest completed ab requests that count as load"),
    "probe-rate": ("PWT_PROBE_RATE", float, "the probe's fixed arrival rate, requests/s (20)"),
    "max-stall": ("PWT_MAX_STALL", float,
                  "fail a run whose longest gap without an answer exceeds this (s; off)"),
}


# How a PWT_* variable spells a yes or a no for a bool option (its flag needs no value).
TRUE_WORDS, FALSE_WORDS = ("1", "yes", "true", "on"), ("0", "no", "false", "off", "")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pwt", "portable-walkthrough VM suite")
    for name, (env, kind, help_text) in OPTIONS.items():
        if kind is bool:
            group.addoption(f"--{name}", action="store_const", const="1", default=None,
                            help=f"{help_text} [env {env}=1]")
        else:
            group.addoption(f"--{name}", default=None, help=f"{help_text} [env {env}]")


def _option(config: pytest.Config, name: str) -> Any:
    env, kind, _ = OPTIONS[name]
    raw = config.getoption(name.replace("-", "_")) or os.environ.get(env)
    if raw is None:
        return None
    if kind is bool:
        if raw.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return raw.strip().lower() in TRUE_WORDS
        words = ", ".join(TRUE_WORDS + FALSE_WORDS[:-1])
        raise pytest.UsageError(f"--{name} ({env}) must be one of {words}, not {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        message = f"--{name} ({env}) must be a {kind.__name__}, not {raw!r}"
        raise pytest.UsageError(message) from None


def settings_from(config: pytest.Config) -> Settings:
    defaults = LoadSettings()

    def pick(name: str, default: Any) -> Any:
        value = _option(config, name)
        return default if value is None else value

    load = LoadSettings(
        concurrency=pick("concurrency", defaults.concurrency),
        switch_after_s=pick("switch-after", defaults.switch_after_s),
        post_switch_s=pick("post-switch", defaults.post_switch_s),
        max_s=pick("load-max", defaults.max_s),
        min_complete=pick("min-complete", defaults.min_complete),
        probe_rate=pick("probe-rate", defaults.probe_rate),
        max_stall_s=pick("max-stall", defaults.max_stall_s),
    )
    kwargs: dict[str, Any] = {"load": load}
    for name, field in (("box", "box"), ("accel", "accel"), ("keep-vm", "keep_vm"),
                        ("restore", "restore"),
                        ("provider", "provider"), ("pool", "pool"),
                        ("boot-timeout", "boot_timeout_s"),
                        ("box-build-timeout", "box_build_timeout_s"),
                        ("reattach-timeout", "reattach_timeout_s"),
                        ("unit-timeout", "unit_timeout_s"), ("ssh-port", "ssh_port"),
                        ("artifacts-always", "artifacts_always")):
        if (value := _option(config, name)) is not None:
            kwargs[field] = value
    if (service := _option(config, "service")) is not None:
        kwargs["service"] = Path(service)
    if (state := _option(config, "state-dir")) is not None:
        kwargs["state_dir"] = Path(state)
    if (artifacts := _option(config, "artifacts")) is not None:
        kwargs["artifacts_root"] = Path(artifacts)
    else:
        kwargs["artifacts_root"] = ROOT / "artifacts"
    settings = Settings(**kwargs)
    try:
        settings.validate()
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    return settings


def only_unit_tests(config: pytest.Config) -> bool:
    """True when every path pytest was given lies under tests/unit (``tox -e unit``).

    This conftest applies to the unit tests too; they boot nothing, so a PWT_BOX that names
    no box (or any other bad setting) must not stop them.
    """
    unit = ROOT / "tests" / "unit"
    base = config.invocation_params.dir
    paths = [(base / arg.split("::", 1)[0]).resolve() for arg in config.args]
    return bool(paths) and all(p.is_relative_to(unit) for p in paths)


def pytest_configure(config: pytest.Config) -> None:
    # Validated here, before collection, so a bad value is one line and nothing boots; the
    # unit tests get the defaults (no fixture of theirs reads the settings).
    config.stash[SETTINGS] = Settings() if only_unit_tests(config) else settings_from(config)
    if not only_unit_tests(config):
        try:  # a bad spec is one line naming the file and the key, before anything boots
            config.stash[SUBJECT] = load_subject(config.stash[SETTINGS].service)
        except SpecError as e:
            raise pytest.UsageError(str(e)) from None
    config.stash[RESULTS] = []
    config.stash[SKIPPED] = []
    config.stash[PHASES] = {}
    capman = config.pluginmanager.getplugin("capturemanager")

    def emit(line: str) -> None:  # step logs reach the terminal past pytest's capture
        if capman is not None:
            with capman.global_and_fixture_disabled():
                print(f"[pwt] {line}", file=sys.stderr, flush=True)
        else:
            print(f"[pwt] {line}", file=sys.stderr, flush=True)

    log.emit = emit

    def on_sigterm(signum: int, _frame: object) -> None:
        # Turn SIGTERM into an interrupt so every finaliser (VM destroy) still runs.
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    bound = _option(config, "run-timeout")
    if bound is not None and not config.option.collectonly:
        _start_watchdog(float(bound))


def _start_watchdog(seconds: float) -> None:
    """The global bound: after ``seconds`` the run SIGTERMs itself, so finalisers still run."""
    if not seconds > 0:
        raise pytest.UsageError(f"--run-timeout must be positive, not {seconds}")

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
    return report


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """--repeat N: every scenario test N times (ids end in -run1 … -runN)."""
    repeat = _option(metafunc.config, "repeat")
    if repeat is None:
        return
    if repeat < 1:
        raise pytest.UsageError(f"--repeat must be at least 1, not {repeat}")
    if "repeat_index" in metafunc.fixturenames:
        metafunc.parametrize("repeat_index", range(1, repeat + 1),
                             ids=[f"run{i}" for i in range(1, repeat + 1)])


@pytest.fixture
def repeat_index() -> int:
    """Which repetition of a scenario this is (1 without --repeat)."""
    return 1


# --- fixture ladder -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig.stash[SETTINGS]


@pytest.fixture(scope="session")
def subject(pytestconfig: pytest.Config) -> Subject:
    """The service under test, from its spec (--service / PWT_SERVICE)."""
    return pytestconfig.stash[SUBJECT]


@pytest.fixture(scope="session")
def artifacts(settings: Settings) -> Path:
    directory = settings.artifacts_dir
    directory.mkdir(parents=True, exist_ok=True)
    last = settings.artifacts_root / "last"
    if last.is_symlink() or last.exists():
        last.unlink()
    last.symlink_to(directory.name)
    log.log_to(directory / "run.log")
    return directory


def _harness_step(phase: str, config: pytest.Config, fn: Any, *args: Any) -> Any:
    """Run a session set-up step; a broken harness ends the session with one line."""
    start = time.monotonic()
    try:
        return fn(*args)
    except HarnessError as e:
        pytest.exit(f"pwt: {phase}: {e}", returncode=3)
    finally:
        # Accumulated: a later cache hit must not hide the build that happened first.
        phases = config.stash[PHASES]
        phases[phase] = round(phases.get(phase, 0.0) + time.monotonic() - start, 1)


@pytest.fixture(scope="session")
def box(settings: Settings, pytestconfig: pytest.Config, artifacts: Path) -> Any:
    from pytest_portable_upgrade.boxes.builder import ensure_box
    from pytest_portable_upgrade.boxes.recipes import get_box

    return _harness_step("box", pytestconfig, ensure_box, get_box(settings.box),
                         settings.state_dir, settings.box_build_timeout_s,
                         settings.libvirt_uri, settings.pool, settings.provider)


@pytest.fixture(scope="session")
def images(settings: Settings, subject: Subject, pytestconfig: pytest.Config,
           artifacts: Path) -> Any:
    """(socket location, scope) -> the subject's images of that shape (its ready files, or
    built on the host when first asked)."""
    from pytest_portable_upgrade.subject.image import ensure_images

    def build(socket_location: str, scope: str = "system") -> Any:
        what = f"{socket_location} socket" if scope == "system" else f"{scope} scope"
        return _harness_step(f"images ({what})", pytestconfig, ensure_images,
                             settings.state_dir, subject, socket_location, scope)

    build("host")  # before the VM boots: a broken image build should not cost a boot
    return build


@pytest.fixture(scope="session")
def machine(settings: Settings, box: Any, images: Any, pytestconfig: pytest.Config,
       request: pytest.FixtureRequest) -> Iterator[Any]:
    """The session's one VM (a ``Machine``): booted once, destroyed at the end (see --keep-vm).

    Asks for ``images`` so a broken image build ends the run before a boot is paid for."""
    from pytest_portable_upgrade.boxes.fedora_box import needs_provisioning
    from pytest_portable_upgrade.machine.accel import choose_accel
    from pytest_portable_upgrade.machine.provision_vm import provision_box
    from pytest_portable_upgrade.machine.runs import RunLock, reap_stale_runs
    from pytest_portable_upgrade.machine.vagrant_backend import VagrantVM

    lock = RunLock(settings.run_dir)
    reap_stale_runs(settings.state_dir, settings.run_id, settings.libvirt_uri, settings.pool)
    # Downloaded boxes have no kernel of ours: choose_accel then trusts the device.
    kernel = box.kernel or settings.state_dir / "no-kernel"
    accel = choose_accel(settings.accel, kernel, settings.state_dir)
    if needs_provisioning(box):  # a downloaded Fedora box: provisioned once, with network
        try:
            box = _harness_step("provision", pytestconfig, provision_box, box, settings, accel)
        except BaseException:
            lock.release()
            raise
    handle = VagrantVM(settings, box, accel, settings.run_dir,
                       failure_dir=settings.artifacts_dir / "boot")
    boot_started = time.monotonic()
    try:
        booted = _harness_step("boot", pytestconfig, handle.up)
        # The report says which way the guest came up: boot_cold (vagrant up) or restore.
        phases = pytestconfig.stash[PHASES]
        phases[handle.boot_path] = phases.pop("boot")
        pytestconfig.stash[BOOT_STARTED] = boot_started
    except BaseException:
        handle.save_boot_logs()  # to artifacts/<run>/boot: the run dir goes
        handle.destroy()
        shutil.rmtree(handle.run_dir, ignore_errors=True)
        lock.release()
        raise
    try:
        yield booted
    finally:
        booted.close()
        failed = request.session.testsfailed > 0
        keep = settings.keep_vm == "always" or (settings.keep_vm == "on-error" and failed)
        if keep:
            lock.keep()
            log.info(f"keeping {handle.domain}: get in with "
                     f"`cd {handle.run_dir} && VAGRANT_HOME={handle.env['VAGRANT_HOME']} "
                     "vagrant ssh`; remove it with the same and `vagrant destroy -f`")
        else:
            handle.destroy()
            shutil.rmtree(handle.run_dir, ignore_errors=True)
        lock.release()


@pytest.fixture(scope="session")
def ssh_config(machine: Any, settings: Settings) -> Path:
    """``vagrant ssh-config`` of the session's VM as a file in its run dir (host alias
    ``pwt-guest``): what testinfra, the users' checks and a person with ``ssh -F`` use."""
    from pytest_portable_upgrade.machine.guest_host import write_ssh_config

    return write_ssh_config(machine.target, settings.run_dir / "ssh_config")


@pytest.fixture(scope="session")
def host(machine: Any, ssh_config: Path) -> Any:
    """testinfra's ``Host`` on the session's VM (paramiko backend, commands as root through
    the machine's own SSH connection: see vm/machine/guest_host.py)."""
    from pytest_portable_upgrade.machine.guest_host import guest_host

    return guest_host(machine, ssh_config)


@pytest.fixture(scope="session")
def service(machine: Any, host: Any, images: Any, subject: Subject, settings: Settings,
          pytestconfig: pytest.Config) -> Any:
    """The subject's portable service in the booted guest (a ``PortableService``), its systemd
    version known, checked clean once; image sets are uploaded on first use. Tests that run a
    scenario take ``clean_service`` instead: the same object, made clean around each test."""
    from pytest_portable_upgrade.systemd.portable import PortableService
    from pytest_portable_upgrade.systemd.quirks import unsupported_reason

    # Every box arrives ready: built with everything (Debian) or provisioned once into a
    # derived box (Fedora, see the machine fixture); the guest's network is restricted here.
    if not host.exists("portablectl"):
        pytest.exit("pwt: the guest has no portablectl (systemd-container missing from the box)",
                    returncode=3)
    major = machine.systemd_version()
    if (reason := unsupported_reason(major)) is not None:
        pytest.exit(f"pwt: {reason}", returncode=3)
    package = machine.systemd_package_version() or "unknown"
    log.info(f"guest runs systemd {major} (package {package})")
    portable = PortableService(machine, major, settings.reattach_timeout_s, images, subject,
                               host, unit_timeout_s=settings.unit_timeout_s)
    portable.check_clean()
    # From the start of the boot (or restore) to a guest that passes the clean-state check.
    ready = time.monotonic() - pytestconfig.stash[BOOT_STARTED]
    pytestconfig.stash[PHASES]["ready"] = round(ready, 1)
    log.info(f"guest ready (clean) {ready:.1f} s after the boot step began")
    return portable


@pytest.fixture(scope="session")
def systemd_package(service: Any) -> str:
    """The guest's exact systemd package version (e.g. 262.1-1), "" if unknown: every summary
    row carries it, so a rebuilt box of a moving suite is told apart in the matrix."""
    return str(service.machine.systemd_package_version())


def _collect_evidence(machine: Any, subject: Subject, directory: Path) -> None:
    from pytest_portable_upgrade.systemd.portable import evidence_commands

    directory.mkdir(parents=True, exist_ok=True)
    for name, command in evidence_commands(subject).items():
        try:
            result = machine.execute(command, timeout=60)
            (directory / name).write_text(result.stdout + result.stderr)
        except HarnessError as e:
            (directory / name).write_text(f"could not collect: {e}\n")
    if machine.console_log is not None and machine.console_log.exists():
        (directory / "console.log").write_bytes(machine.console_log.read_bytes())


@pytest.fixture
def clean_service(service: Any, artifacts: Path, settings: Settings,
                  request: pytest.FixtureRequest) -> Iterator[Any]:
    """``service`` for one test: checked clean at start; reset (and checked) afterwards. Before
    the reset, the evidence (journals, probe log, ab.out) of every run that did not simply pass
    is saved: an error, a FAIL, an expected loss or downtime, a refusal; --artifacts-always:
    all."""
    from pytest_portable_upgrade.plugin.outcome import VERDICT_KEY, evidence_reason

    if not service.clean_verified:  # the previous test's reset has checked it otherwise
        service.check_clean()
    yield service
    report = getattr(request.node, "rep_call", None)
    why = evidence_reason(
        test_failed=report is None or report.failed,
        verdict=request.node.stash.get(VERDICT_KEY, None),
        always=settings.artifacts_always,
    )
    if why is not None:
        target = artifacts / request.node.name
        _collect_evidence(service.machine, service.subject, target)
        log.info(f"evidence ({why}): {target}")
    service.reset()


@pytest.fixture
def record_scenario(pytestconfig: pytest.Config) -> Any:
    """Tests hand their summary row here; the session writes summary.json/md from them."""
    return pytestconfig.stash[RESULTS].append


@pytest.fixture
def record_skip(pytestconfig: pytest.Config) -> Any:
    """record_skip(row): a scenario this guest cannot run, with the reason (summary.json's
    "skipped"; the matrix shows it in the box's column)."""
    return pytestconfig.stash[SKIPPED].append


@pytest.fixture
def record_phase(pytestconfig: pytest.Config) -> Any:
    """record_phase(name, seconds): a duration shown in the report's phase list."""

    def record(name: str, seconds: float) -> None:
        pytestconfig.stash[PHASES][name] = round(seconds, 1)

    return record


# --- report -------------------------------------------------------------------------------
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    records, skipped = config.stash[RESULTS], config.stash[SKIPPED]
    if not records and not skipped:
        return
    from pytest_portable_upgrade.report.report import write_summary

    write_summary(config.stash[SETTINGS].artifacts_dir, records, config.stash[PHASES],
                  skipped=skipped)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    records = config.stash[RESULTS]
    if not records:
        return
    from pytest_portable_upgrade.report.report import markdown_table

    directory = config.stash[SETTINGS].artifacts_dir
    terminalreporter.section("zero-downtime verdicts")
    terminalreporter.write_line(markdown_table(records))
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in config.stash[PHASES].items())
    terminalreporter.write_line(f"phases: {phases}")
    terminalreporter.write_line(f"report: {directory}/summary.md (timelines: {directory}/*.png)")
