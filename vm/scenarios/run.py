"""Run one scenario: attach, load, switch versions under load, measure.

``run_scenario`` attaches the old version, starts the load, reattaches (or rolls out, or stops
and starts) to the new version, waits until the new version has answered under load, stops
the load and returns everything it measured as a ``ScenarioRun``: the input of
``verdict.verdict_of``, which alone decides whether the scenario passed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_portable_upgrade.boxes.recipes import get_box
from pytest_portable_upgrade.core.config import LoadSettings, Settings
from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.load.haproxy import HaproxyConfig, proxy_port_for
from pytest_portable_upgrade.load.hey import hey_plan
from pytest_portable_upgrade.load.load import LoadOutcome, LoadRun
from pytest_portable_upgrade.machine.guest_program import GUEST_DIR, Request
from pytest_portable_upgrade.machine.machine import Machine
from pytest_portable_upgrade.scenarios.catalogue import Scenario
from pytest_portable_upgrade.scenarios.checks import SocketObservation
from pytest_portable_upgrade.subject.spec import Subject
from pytest_portable_upgrade.systemd.portable import PortableService, Upgrade
from pytest_portable_upgrade.systemd.quirks import (
    SYSUPDATE_UPDATE_UNIT,
    after_sysupdate_pull,
    extensions_missing,
    fdstore_preserve_missing,
    sysupdate_missing,
    sysupdate_notify_missing,
    sysupdate_transfer_suffix,
    sysupdate_versioned_dir_missing,
    user_attach_refused,
    versioned_dir_missing,
)
from pytest_portable_upgrade.systemd.scope import SCOPES, Scope, missing_pieces
from pytest_portable_upgrade.systemd.sysupdate import (
    PIN_UNIT,
    ROLLOUT_UNIT,
    SysupdateSetup,
    reattach_arg,
)

HAPROXY_UNIT = "pwt-haproxy.service"


class ScenarioUnsupported(Exception):
    """The guest cannot run this scenario (e.g. no systemd-sysupdate): a skip, with reason."""


@dataclass(frozen=True, kw_only=True)
class ScenarioRun:
    """Everything one run measured, and the bar it is held to: ``verdict_of`` needs nothing else."""

    scenario: Scenario
    subject: Subject  # the service under test (its spec)
    scope: Scope  # where it was attached (the system's manager or a user's)
    outcome: LoadOutcome
    upgrade: Upgrade  # the reattach, the stop + start, or the sysupdate rollout unit that ran it
    socket: SocketObservation
    final_count: int | None  # the subject's counter afterwards; None: it has no counter
    # The counter before the load (read after the old version's greeting, in the attach's
    # round trip): with final_count, what the server did during the load. None: no counter.
    count_before: int | None = None
    min_complete: int
    post_switch_s: float
    attached_state: str  # portablectl is-attached afterwards
    attached_image: str  # the unit's RootImage= afterwards
    service_user: str  # the main process's user under the scenario's profile, before the load
    dynamic_user: bool
    profile: str = "default"  # the profile it was attached with (Subject.profile_for)
    rollout_ok: bool = True  # sysupdate: the unit succeeded and the symlink moved
    max_stall_s: float | None = None  # --max-stall: a bound of its own on the longest gap
    # The user's own checks (the spec's `checks` directory), run after the upgrade: how many
    # ran, and one line per failure. A failure fails the run (validity_problems).
    user_checks_run: int = 0
    user_check_failures: tuple[str, ...] = ()
    # ab's and hey's -c: how many of ab's requests may have been in flight at its stop.
    concurrency: int = LoadSettings.concurrency
    hey_not_run: str = ""  # why hey did not run beside ab ("" when it ran)
    facts: dict[str, Any] = field(default_factory=dict)  # more for the report (rollout log)
    # The layouts other than whole images (vm/systemd/layout.py): the RootImage= the new
    # version runs from ("": the scope's image of it), and the unit's ExtensionImages=
    # afterwards beside the ones it should name.
    expected_image: str = ""
    attached_extensions: tuple[str, ...] = ()
    expected_extensions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Overrides:
    """What a run changes beyond its scenario (the capacity map's knobs): host drop-ins for
    the subject's sockets and for its service, file name -> text. They are written before the
    attach (which reloads the manager; the socket is created anew when it starts) and removed
    by the reset with the scenario's own (the names begin with DROPIN_PREFIX)."""

    socket_dropins: dict[str, str] = field(default_factory=dict)
    service_dropins: dict[str, str] = field(default_factory=dict)

    def request(self, service: PortableService) -> Request:
        """The guest program's step that writes them."""
        scope, subject = service.scope, service.subject
        files = {f"{scope.unit_dir}/{unit}.d/{name}": text
                 for unit in subject.socket_units for name, text in self.socket_dropins.items()}
        files.update({f"{scope.dropin_dir(subject)}/{name}": text
                      for name, text in self.service_dropins.items()})
        return {"step": "write-files", "files": files, "owner": scope.user}


def haproxy_steps(server_port: int, port: int) -> list[Request]:
    """HAProxy in front of ``server_port``, listening on ``port``: its config written and
    checked, and it started as a transient unit, in the attach's round trip (it needs no
    backend to start: no health checks)."""
    path = f"{GUEST_DIR}/haproxy.cfg"
    config = HaproxyConfig(server_port=server_port, listen_port=port).render()
    return [{"step": "write-files", "files": {path: config}},
            {"step": "serve", "unit": HAPROXY_UNIT, "check": ["haproxy", "-c", "-q", "-f", path],
             "argv": ["haproxy", "-db", "-f", path], "port": port, "timeout": 30}]


STOP_HAPROXY = f"systemctl stop {HAPROXY_UNIT}"


def scenario_load(load: LoadSettings, scenario: Scenario) -> LoadSettings:
    """The load ``scenario`` runs under: ``load``, with at least its ``min_concurrency``."""
    if scenario.min_concurrency <= load.concurrency:
        return load
    return replace(load, concurrency=scenario.min_concurrency)


def run_scenario(service: PortableService, settings: Settings, scenario: Scenario,
                 overrides: Overrides | None = None) -> ScenarioRun:
    """Attach ``from_version``, load, reattach to ``to_version`` under load, collect;
    ``overrides``: drop-ins beyond the scenario's own.

    Raises ScenarioUnsupported (a skip, with the reason) before anything is touched when the
    subject cannot run ``scenario`` (Subject.cannot_run) or the guest lacks what it needs. A
    user-scope scenario runs on ``service``'s user side and always resets it afterwards (the
    system side is reset by the caller)."""
    if (why := service.subject.cannot_run(scenario)) is not None:
        raise ScenarioUnsupported(why)
    if scenario.rollout != "portablectl" and (reason := rollout_missing(service, scenario)):
        raise ScenarioUnsupported(reason)
    needs_preserve = scenario.upgrade == "stop-start" or scenario.fdstore_preserve
    if needs_preserve and (reason := fdstore_preserve_missing(service.systemd_major)):
        raise ScenarioUnsupported(reason)
    layout_missing = {"extension": extensions_missing, "versioned-dir": versioned_dir_missing}
    if scenario.layout in layout_missing and (
            reason := layout_missing[scenario.layout](service.systemd_major)):
        raise ScenarioUnsupported(reason)
    if scenario.scope == "system":
        return _run(service, settings, scenario, overrides)
    missing = missing_pieces(service.systemd_major, service.preflight())
    if missing:
        raise ScenarioUnsupported("user portable services need: " + "; ".join(missing))
    user = service.in_scope(SCOPES[scenario.scope])
    try:
        user.setup_user()
        return _run(user, settings, scenario, overrides)
    except GuestError as e:
        journal = user.journal()
        log.info(f"the user's journal (last lines):\n{journal[-3000:]}")
        if why := user_attach_refused(str(e), journal, service.systemd_major):
            raise ScenarioUnsupported(why) from e
        raise
    except BaseException:
        log.info(f"the user's journal (last lines):\n{user.journal()[-3000:]}")
        raise


def _run(service: PortableService, settings: Settings, scenario: Scenario,
         overrides: Overrides | None = None) -> ScenarioRun:
    service = service.in_layout(scenario.layout)
    subject = service.subject
    old, new = subject.answer(scenario.from_version), subject.answer(scenario.to_version)
    profile = subject.profile_for(scenario)
    load_cfg = scenario_load(settings.load, scenario)
    m = service.machine
    setup = _sysupdate_setup(service, scenario)
    prepare: list[Request] = [*service.dropin_steps(scenario.shutdown, scenario.fdstore_preserve),
                              *service.image_steps(scenario.socket_location,
                                                   scenario.from_version)]
    if overrides is not None:
        prepare.append(overrides.request(service))
    url_port = subject.port
    if scenario.proxy == "haproxy":
        url_port = proxy_port_for(subject.port)
        prepare += haproxy_steps(subject.port, url_port)
    if setup is not None:
        low, high = sorted((scenario.from_version, scenario.to_version))
        # Upgrade: the old version installed and published, the new one published later.
        # Rollback: the new (older) one published but not installed: `update VERSION` pins it.
        prepare += service.sysupdate_steps(
            setup, installed=[scenario.from_version],
            published=[low] if scenario.to_version == high else [low, high],
            notify=scenario.after_pull == "notify")
    load, hey_not_run = load_for(m, settings, scenario, subject, url_port)
    if hey_not_run is not None:
        log.info(f"hey does not run: {hey_not_run}")
    title = (f"{scenario.id}: attach v{scenario.from_version}, load, reattach"
             f" v{scenario.from_version} -> v{scenario.to_version}")
    with log.nested(title):
        # The files, the images, HAProxy, the attach, the first answer of the old version,
        # the facts before the load and the load's start: one round trip.
        before = service.attach(scenario.from_version, profile=profile,
                                host_socket=scenario.socket_location == "host",
                                prepare=prepare, greeting=old, count=True,
                                then=load.start_command())
        load.started_from(service.then_output)
        log.info(f"load: {load.command} (+ probe on :{url_port} at {load_cfg.probe_rate:g}/s)"
                 + (f", {load.hey_command}" if load.hey_command is not None else ""))
        time.sleep(load_cfg.switch_after_s)
        rollout_ok = True
        notify_calls: list[dict[str, Any]] = []
        if setup is None and scenario.upgrade == "stop-start":
            upgrade = service.stop_start(scenario.to_version)
        elif setup is None:
            upgrade = service.reattach(scenario.to_version, scenario.from_version)
        else:
            notify = scenario.after_pull == "notify"
            if scenario.to_version > scenario.from_version:
                service.publish(scenario.to_version, corrupt=scenario.corrupt)
                # systemd's own update unit: its notify callout runs the suite's listener.
                unit = SYSUPDATE_UPDATE_UNIT if notify else ROLLOUT_UNIT
            else:
                unit = PIN_UNIT.replace("@", f"@{scenario.to_version}")
            upgrade, rollout_ok, notify_calls = service.run_rollout(unit, scenario.to_version,
                                                                    notify=notify)
        log.info(f"{'reattach' if setup is None else 'rollout'} took "
                 f"{upgrade.duration_s:.1f} s: {upgrade.command}"
                 f"{'' if rollout_ok else ' (failed)'}")
        if scenario.expect == "refused" or not rollout_ok:
            # The old version must go on serving; a rollout that installed nothing will not
            # bring the new one either: no point waiting for it until the load's bound.
            time.sleep(load_cfg.post_switch_s)
        else:
            load.wait_until_serving(new, load_cfg.post_switch_s, after=upgrade.ended)
        # The facts afterwards and the count in the stop's round trip, HAProxy stopped
        # first; no count from a subject without a counter, or through a socket the
        # reattach left dead (the verdict names that instead). A user's journal comes with
        # them (the report keeps its end).
        user_scope = service.scope.user is not None
        then = service.observe_command(count=True, journal=user_scope,
                                       version=scenario.to_version)
        if scenario.proxy == "haproxy":
            then = f"{STOP_HAPROXY}; {then}"
        outcome = load.stop(old=old, new=new, then=then)
    log.info(f"ab: {outcome.ab.describe()}; probe errors: {outcome.timeline.errors or 'none'}"
             + (f"; hey: {outcome.hey.describe()}" if outcome.hey is not None else ""))
    after = service.observed(load.then_output)
    socket = SocketObservation(before.socket_since, after.socket_since, after.socket_state)
    facts: dict[str, Any] = {} if setup is None else {
        "rollout_log": upgrade.output[-1500:],
        # What systemd would run after the pull itself (quirks): the report shows it.
        "after_pull": after_sysupdate_pull(service.systemd_major)}
    if scenario.after_pull == "notify":
        # What sysupdate's callout sent the listener, and how long its reattach took.
        facts["notify_calls"] = notify_calls
    if scenario.upgrade != "reattach":
        facts["upgrade_log"] = upgrade.output[-1500:]
    if user_scope:
        facts["user_journal"] = after.journal[-3000:]
    facts["image_bytes"] = service.image_sizes(scenario.socket_location)
    layout = service.layout
    run = ScenarioRun(
        scenario=scenario, subject=subject, scope=service.scope, outcome=outcome,
        upgrade=upgrade, socket=socket,
        final_count=after.counter, count_before=before.counter, min_complete=load_cfg.min_complete,
        post_switch_s=load_cfg.post_switch_s, attached_state=after.attached_state,
        attached_image=after.attached_image, service_user=before.main_user,
        dynamic_user=before.dynamic_user, profile=profile, rollout_ok=rollout_ok,
        max_stall_s=load_cfg.max_stall_s, concurrency=load_cfg.concurrency,
        hey_not_run=hey_not_run or "", facts=facts,
        expected_image=(layout.expected_image(scenario.to_version)
                        if layout.kind != "image" else ""),
        attached_extensions=after.extensions,
        expected_extensions=tuple(layout.extensions(scenario.to_version)),
    )
    if scenario.fdstore_preserve:
        service.clear_fd_store()  # after every measurement: the next scenario starts empty
    return run


def load_for(machine: Machine, settings: Settings, scenario: Scenario, subject: Subject,
             url_port: int) -> tuple[LoadRun, str | None]:
    """The load of one run, and why hey is not part of it (None: it is).

    Every client takes the same path: behind a proxy, the probe goes through it too (a probe
    straight to the naive server would see the resets the proxy exists to absorb). Every
    client sends the scenario's method (Subject.cannot_run has checked the subject takes it),
    at the scenario's load (``scenario_load``). hey runs beside ab in the keep-alive scenarios
    of a box that has it (``hey_plan``)."""
    method = subject.method_for(scenario.method)
    box = get_box(settings.box)
    hey_not_run = hey_plan(settings.load.second_client, scenario.keepalive, box.package_manager,
                           box.fedora_release)
    load = LoadRun(machine, scenario_load(settings.load, scenario), keepalive=scenario.keepalive,
                   url=f"http://127.0.0.1:{url_port}{subject.request_path}", probe_port=url_port,
                   client_args=subject.client_args(method), holders=scenario.holders,
                   service_unit=subject.service, hey=hey_not_run is None, method=method,
                   body=subject.request_body, content_type=subject.request_content_type)
    return load, hey_not_run


def rollout_missing(service: PortableService, scenario: Scenario) -> str | None:
    """Why the guest cannot run ``scenario``'s sysupdate rollout, or None: sysupdate first
    (252 has none), then vpick for a versioned directory (254 has sysupdate, not vpick), then
    the notify callout."""
    check = sysupdate_missing
    if scenario.after_pull == "notify":
        check = sysupdate_notify_missing
    elif scenario.layout == "versioned-dir":
        check = sysupdate_versioned_dir_missing
    return check(service.systemd_major, service.has_sysupdate())


def _sysupdate_setup(service: PortableService, scenario: Scenario) -> SysupdateSetup | None:
    """The transfer and units of ``scenario``'s rollout (run_scenario has checked the guest
    has what it needs): into /var/lib/portables behind the symlink, or into the versioned
    directory, as a component of its own when systemd's update unit pulls it (quirks)."""
    if scenario.rollout == "portablectl":
        return None
    source = scenario.rollout.removeprefix("sysupdate-")
    suffix = sysupdate_transfer_suffix(service.systemd_major)
    name, layout = service.subject.name, service.layout
    if layout.kind == "image":
        return SysupdateSetup(source, service.reattach_target(), suffix, name=name)
    return SysupdateSetup(
        source, reattach_arg(layout.target, layout.matches), suffix, name=name,
        target_dir=layout.versioned_dir, current_symlink=False,
        component=name if scenario.after_pull == "notify" else None)
