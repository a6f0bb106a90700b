"""The fixture ladder, one VM per session (registered by plugin.py at configure time).

settings, subject (the service under test: --service spec) -> box, images -> machine (the one
VM, booted once) -> host (testinfra on the machine's SSH) -> service (the portable service in
the guest: systemd version known, checked clean once; session) -> clean_service (the same
object per test: clean at the start, evidence saved, reset afterwards) -> run_recorded (run a
scenario of the catalogue, run the spec's own checks, judge it once, record its row and
timeline). docs/plugin.md shows them in a test of your own.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.plugin.plugin import (
    BOOT_STARTED,
    PHASES,
    RESULTS,
    ROW_KEY,
    SKIPPED,
    TIMELINE_KEY,
    settings_of,
    subject_of,
)
from pytest_portable_upgrade.subject.spec import Subject

if TYPE_CHECKING:
    from pytest_portable_upgrade.scenarios.catalogue import Scenario
    from pytest_portable_upgrade.scenarios.verdict import Verdict


@pytest.fixture
def repeat_index() -> int:
    """Which repetition of a scenario this is (1 without --repeat)."""
    return 1


# --- fixture ladder -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    return settings_of(pytestconfig)


@pytest.fixture(scope="session")
def subject(pytestconfig: pytest.Config) -> Subject:
    """The service under test, from its spec (--service / PWT_SERVICE)."""
    return subject_of(pytestconfig)


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
    """(socket location, scope, layout) -> the subject's images of that shape (its ready
    files, or built on the host when first asked: the base and extensions only when an
    extension scenario runs)."""
    from pytest_portable_upgrade.subject.image import ensure_images

    def build(socket_location: str, scope: str = "system", layout: str = "image") -> Any:
        what = f"{socket_location} socket" if scope == "system" else f"{scope} scope"
        if layout != "image":
            what = f"{layout}, {what}"
        return _harness_step(f"images ({what})", pytestconfig, ensure_images,
                             settings.state_dir, subject, socket_location, scope, layout)

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
def record_scenario(pytestconfig: pytest.Config,
                    request: pytest.FixtureRequest) -> Callable[..., None]:
    """record_scenario(row, timeline=None): a test's summary row (and its timeline PNG); the
    session writes summary.json/md and report.html from them."""

    def record(row: dict[str, Any], timeline: Path | None = None) -> None:
        pytestconfig.stash[RESULTS].append(row)
        request.node.stash[ROW_KEY] = row
        if timeline is not None:
            request.node.stash[TIMELINE_KEY] = timeline

    return record


@pytest.fixture
def record_skip(pytestconfig: pytest.Config,
                request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], None]:
    """record_skip(row): a scenario this guest cannot run, with the reason (summary.json's
    "skipped"; the matrix shows it in the box's column)."""

    def record(row: dict[str, Any]) -> None:
        pytestconfig.stash[SKIPPED].append(row)
        request.node.stash[ROW_KEY] = row

    return record


@pytest.fixture
def record_phase(pytestconfig: pytest.Config) -> Any:
    """record_phase(name, seconds): a duration shown in the report's phase list."""

    def record(name: str, seconds: float) -> None:
        pytestconfig.stash[PHASES][name] = round(seconds, 1)

    return record


@pytest.fixture
def run_recorded(
    clean_service: Any, settings: Settings, artifacts: Path, record_scenario: Any,
    record_skip: Any, record_phase: Any, repeat_index: int, systemd_package: str,
    request: pytest.FixtureRequest, ssh_config: Path,
) -> Callable[[Scenario], Verdict]:
    """Run a scenario and return its verdict (hand it to ``conclude``); the summary row and
    the PNG timeline are written from that same verdict, whatever it is. A scenario the guest
    or the subject cannot run is skipped with the reason, which the report and the matrix
    show too; an image portablectl refuses ends the run with portablectl's words. The spec's
    own checks run after the upgrade and their failures become problems of the run
    (verdict_of)."""
    from pytest_portable_upgrade.machine.guest_host import SSH_CONFIG_HOST
    from pytest_portable_upgrade.plugin.outcome import VERDICT_KEY
    from pytest_portable_upgrade.report.report import plot_timeline, skipped_row
    from pytest_portable_upgrade.scenarios.record import summary_row
    from pytest_portable_upgrade.scenarios.run import ScenarioUnsupported, run_scenario
    from pytest_portable_upgrade.scenarios.verdict import verdict_of
    from pytest_portable_upgrade.systemd.portable import ImageRefused

    def run(scenario: Scenario) -> Verdict:
        start = time.monotonic()
        try:
            result = run_scenario(clean_service, settings, scenario)
        except ScenarioUnsupported as e:
            record_skip(skipped_row(scenario.id, settings.box, clean_service.systemd_major,
                                    systemd_package, str(e)))
            pytest.skip(str(e))
        except ImageRefused as e:
            pytest.exit(f"pwt: {e}", returncode=3)
        checks = clean_service.subject.checks
        if checks is not None:
            from pytest_portable_upgrade.subject.user_checks import run_user_checks

            # Their run record is the row as the harness judged it before their checks.
            before = summary_row(result, settings.box, clean_service.systemd_major,
                                 verdict_of(result), systemd_package=systemd_package)
            outcome = run_user_checks(checks, f"paramiko://{SSH_CONFIG_HOST}", ssh_config,
                                      before, artifacts / request.node.name / "user-checks")
            result = dataclasses.replace(result, user_checks_run=outcome.run,
                                         user_check_failures=outcome.failures)
        verdict = verdict_of(result)
        request.node.stash[VERDICT_KEY] = verdict
        suffix = f" run{repeat_index}" if repeat_index > 1 else ""
        record_phase(f"scenario {scenario.id}{suffix}", time.monotonic() - start)
        row = summary_row(result, settings.box, clean_service.systemd_major, verdict,
                          systemd_package=systemd_package)
        row["scenario_s"] = round(time.monotonic() - start, 1)
        row["overhead_s"] = round(row["scenario_s"] - row["load_s"], 1)
        row["repeat"] = repeat_index
        name = scenario.id if repeat_index == 1 else f"{scenario.id}-run{repeat_index}"
        plot_timeline(artifacts / f"{name}.png",
                      f"{scenario.id} (systemd {clean_service.systemd_major})",
                      result.outcome, result.upgrade)
        record_scenario(row, timeline=artifacts / f"{name}.png")
        return verdict

    return run
