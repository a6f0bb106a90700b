"""One scenario = one shape of upgrade under load, run the same way for every shape.

A scenario says where the socket lives (host or image), whether clients keep connections
alive, whether HAProxy stands in front, how the server shuts down, which profile attaches the
image and which version replaces which. ``run_scenario`` attaches, loads, reattaches, waits for
the new version under load, stops the load and returns everything it measured.

``verdict_of`` is the one judge of a run: the report (summary row, stability table, matrix)
writes its ``label`` and the integration test hands it to ``conclude``, which turns it into
pytest's outcome. Nothing else decides whether a scenario passed.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from vm.core.config import Settings
from vm.core.errors import GuestError
from vm.core.log import log
from vm.load.haproxy import HaproxyConfig, proxy_port_for
from vm.load.latency import latency_report, stall_problems
from vm.load.load import GUEST_DIR, LoadOutcome, LoadRun
from vm.report.report import scenario_record
from vm.subject.spec import Subject
from vm.systemd import user_portable
from vm.systemd.portable import ATTACHED_STATES, PortableService, Reattach
from vm.systemd.quirks import (
    CHECKSUM_REFUSALS,
    fdstore_preserve_missing,
    reattach_target,
    sysupdate_transfer_suffix,
)
from vm.systemd.stop_start import clear_fd_store, stop_start_upgrade
from vm.systemd.sysupdate import PIN_UNIT, ROLLOUT_UNIT, SysupdateSetup
from vm.verdict import (
    SocketObservation,
    counter_consistent,
    enough_load,
    explain_losses,
    failed_requests,
    load_reached_new,
    load_reached_old,
    socket_dead,
    socket_untouched,
    switched_cleanly,
    zero_failures,
)

HAPROXY_UNIT = "pwt-haproxy.service"
EXPECTATIONS = ("zero-downtime", "downtime", "characterise", "refused")
ROLLOUTS = ("portablectl", "sysupdate-dir", "sysupdate-http")
PROXIES = (None, "haproxy")
SOCKET_LOCATIONS = ("host", "image")
# How the server stops: drain (its default stop), or a mode the subject's spec maps to a host
# drop-in ([shutdown]): immediate (naive: drops open connections), fdstore (hands them over).
SHUTDOWNS = ("drain", "immediate", "fdstore")
# The portablectl profiles a scenario asks for; "default" means the subject's own profile.
PROFILES = ("default", "trusted")
# How the new version replaces the old: `portablectl reattach --now` (a restart), or a
# reattach without --now followed by `systemctl stop` + `systemctl start`
# (vm/systemd/stop_start.py).
UPGRADES = ("reattach", "stop-start")
# Whose service manager runs the service: the system's, or a user's (`portablectl --user`).
SCOPES = ("system", "user")


# How a url-file download whose bytes do not match SHA256SUMS is refused: the exact words of
# systemd-pull, which differ between versions (vm/systemd/quirks.py CHECKSUM_REFUSALS).
# Anything else failing the rollout (an "Invalid argument", a 404) is not the refusal this
# scenario is about.
REFUSAL_REASON = re.compile("|".join(f"(?:{p})" for p in CHECKSUM_REFUSALS.values()))


class ScenarioUnsupported(Exception):
    """The guest cannot run this scenario (e.g. no systemd-sysupdate): a skip, with reason."""


@dataclass(frozen=True)
class Scenario:
    id: str
    # zero-downtime; downtime (negative control); characterise (a loss shown on purpose, an
    # xfail); refused (a tampered update must be refused). See verdict_of.
    expect: str = "zero-downtime"
    keepalive: bool = False
    proxy: str | None = None  # None or "haproxy"
    socket_location: str = "host"  # "host" or "image"
    shutdown: str = "drain"  # the server's SIGTERM behaviour: drain, immediate or fdstore
    profile: str = "default"
    holders: int = 0  # long-lived keep-alive clients (a request every 0.2 s each)
    rollout: str = "portablectl"  # or sysupdate-dir / sysupdate-http: publish, then a unit acts
    corrupt: bool = False  # publish the new version with bytes that fail its SHA256SUMS
    from_version: int = 1
    to_version: int = 2
    upgrade: str = "reattach"  # or stop-start
    # FileDescriptorStorePreserve=yes in the host drop-in (254+): keep the store across a stop.
    fdstore_preserve: bool = False
    scope: str = "system"  # or user: attached with portablectl --user, the socket a user unit
    description: str = ""

    def __post_init__(self) -> None:
        # A typo must not silently run another shape (an unknown shutdown would run the
        # draining server, an unknown proxy no proxy at all).
        choices: dict[str, tuple[str | None, ...]] = {
            "expect": EXPECTATIONS, "rollout": ROLLOUTS, "proxy": PROXIES,
            "socket_location": SOCKET_LOCATIONS, "shutdown": SHUTDOWNS, "profile": PROFILES,
            "upgrade": UPGRADES, "scope": SCOPES,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, "
                                 f"not {value!r}")
        if min(self.from_version, self.to_version) < 1 or (
            self.from_version == self.to_version
        ):
            raise ValueError("from/to versions must be two different versions (1, 2, ...)")
        if self.fdstore_preserve and self.shutdown != "fdstore":
            raise ValueError("fdstore_preserve keeps the fd store: it needs shutdown='fdstore'")
        if (self.upgrade != "reattach" or self.scope != "system") and (
            self.rollout != "portablectl" or self.proxy is not None
        ):
            raise ValueError("a stop-start upgrade or the user scope is a plain portablectl "
                             "rollout without a proxy")
        if self.scope == "user" and self.socket_location != "host":
            raise ValueError("the user scope has its socket as a user unit, outside the image")


@dataclass(frozen=True, kw_only=True)
class ScenarioRun:
    """Everything one run measured, and the bar it is held to: ``verdict_of`` needs nothing else."""

    scenario: Scenario
    subject: Subject  # the service under test (its spec)
    outcome: LoadOutcome
    reattach: Reattach  # the reattach, or the sysupdate rollout unit that ran it
    socket: SocketObservation
    final_count: int | None  # the subject's counter afterwards; None: it has no counter
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
    facts: dict[str, Any] = field(default_factory=dict)  # more for the report (rollout log)


def _start_haproxy(service: PortableService, port: int) -> None:
    m = service.machine
    config = HaproxyConfig(server_port=service.subject.port, listen_port=port).render()
    m.succeed(f"mkdir -p {GUEST_DIR} && cat > {GUEST_DIR}/haproxy.cfg <<'EOF'\n{config}EOF")
    m.succeed(f"haproxy -c -q -f {GUEST_DIR}/haproxy.cfg")
    m.succeed(f"systemctl stop {HAPROXY_UNIT} 2>/dev/null; systemd-run --quiet --collect"
              f" --unit={HAPROXY_UNIT} haproxy -db -f {GUEST_DIR}/haproxy.cfg")
    m.wait_for_open_port(port, timeout=30)


def stop_haproxy(service: PortableService) -> None:
    service.machine.execute(f"systemctl stop {HAPROXY_UNIT}")


def run_scenario(service: PortableService, settings: Settings, scenario: Scenario) -> ScenarioRun:
    """Attach ``from_version``, load, reattach to ``to_version`` under load, collect.

    Raises ScenarioUnsupported (a skip, with the reason) before anything is touched when the
    subject cannot run ``scenario`` (Subject.cannot_run) or the guest lacks what it needs. A
    user-scope scenario runs on ``service``'s user side and always resets it afterwards (the
    system side is reset by the caller)."""
    if (why := service.subject.cannot_run(scenario)) is not None:
        raise ScenarioUnsupported(why)
    needs_preserve = scenario.upgrade == "stop-start" or scenario.fdstore_preserve
    if needs_preserve and (reason := fdstore_preserve_missing(service.systemd_major)):
        raise ScenarioUnsupported(reason)
    if scenario.scope == "system":
        return _run(service, settings, scenario)
    missing = user_portable.preflight(service.machine, service.systemd_major)
    if missing:
        raise ScenarioUnsupported("user portable services need: " + "; ".join(missing))
    user = user_portable.user_scope(service)
    try:
        user.setup()
        run = _run(user, settings, scenario)
        return dataclasses.replace(run, facts={**run.facts, "user_journal": user.journal()[-3000:]})
    except GuestError as e:
        journal = user.journal()
        log.info(f"the user's journal (last lines):\n{journal[-3000:]}")
        if (why := user_portable.attach_refusal(str(e), journal, service.systemd_major)):
            raise ScenarioUnsupported(why) from e
        raise
    except BaseException:
        log.info(f"the user's journal (last lines):\n{user.journal()[-3000:]}")
        raise
    finally:
        user.reset()


def _run(service: PortableService, settings: Settings, scenario: Scenario) -> ScenarioRun:
    subject = service.subject
    old, new = subject.answer(scenario.from_version), subject.answer(scenario.to_version)
    profile = subject.profile_for(scenario)
    load_cfg = settings.load
    m = service.machine
    setup = _sysupdate_setup(service, scenario)
    service.install_dropins(scenario.shutdown, scenario.fdstore_preserve)
    service.use_images(scenario.socket_location)
    if setup is not None:
        low, high = sorted((scenario.from_version, scenario.to_version))
        # Upgrade: the old version installed and published, the new one published later.
        # Rollback: the new (older) one published but not installed: `update VERSION` pins it.
        service.prepare_sysupdate(setup, installed=[scenario.from_version],
                                  published=[low] if scenario.to_version == high else [low, high])
    service.attach(scenario.from_version, profile=profile,
                   host_socket=scenario.socket_location == "host")
    service.wait_for_greeting(old)
    before = service.observe()
    url_port = subject.port
    if scenario.proxy == "haproxy":
        url_port = proxy_port_for(subject.port)
        _start_haproxy(service, url_port)

    # Every client takes the same path: behind a proxy, the probe goes through it too (a
    # probe straight to the naive server would see the resets the proxy exists to absorb).
    load = LoadRun(m, load_cfg, keepalive=scenario.keepalive,
                   url=f"http://127.0.0.1:{url_port}{subject.request_path}", probe_port=url_port,
                   client_args=subject.client_args(), holders=scenario.holders)
    title = f"{scenario.id}: load, reattach v{scenario.from_version} -> v{scenario.to_version}"
    with log.nested(title):
        load.start()
        log.info(f"load: {load.command} (+ probe on :{url_port} at {load_cfg.probe_rate:g}/s)")
        time.sleep(load_cfg.switch_after_s)
        rollout_ok = True
        if setup is None and scenario.upgrade == "stop-start":
            reattach = stop_start_upgrade(service, scenario.to_version)
        elif setup is None:
            reattach = service.reattach(scenario.to_version)
        else:
            if scenario.to_version > scenario.from_version:
                service.publish(scenario.to_version, corrupt=scenario.corrupt)
                unit = ROLLOUT_UNIT
            else:
                unit = PIN_UNIT.replace("@", f"@{scenario.to_version}")
            reattach, rollout_ok = service.run_rollout(unit, scenario.to_version)
        log.info(f"{'reattach' if setup is None else 'rollout'} took "
                 f"{reattach.duration_s:.1f} s: {reattach.command}"
                 f"{'' if rollout_ok else ' (failed)'}")
        if scenario.expect == "refused" or not rollout_ok:
            # The old version must go on serving; a rollout that installed nothing will not
            # bring the new one either: no point waiting for it until the load's bound.
            time.sleep(load_cfg.post_switch_s)
        else:
            load.wait_until_serving(new, load_cfg.post_switch_s, after=reattach.ended)
        outcome = load.stop(old=old, new=new)
    log.info(f"ab: {outcome.ab.describe()}; probe errors: {outcome.timeline.errors or 'none'}")
    if scenario.proxy == "haproxy":
        stop_haproxy(service)

    # The facts afterwards and the count in one round trip; no count from a subject without
    # a counter, or through a socket the reattach left dead (the verdict names that instead).
    after = service.observe(count=True)
    socket = SocketObservation(before.socket_since, after.socket_since, after.socket_state)
    facts: dict[str, Any] = {"rollout_log": reattach.output[-1500:]} if setup is not None else {}
    if scenario.upgrade != "reattach":
        facts["upgrade_log"] = reattach.output[-1500:]
    run = ScenarioRun(
        scenario=scenario, subject=subject, outcome=outcome, reattach=reattach, socket=socket,
        final_count=after.counter, min_complete=load_cfg.min_complete,
        post_switch_s=load_cfg.post_switch_s, attached_state=after.attached_state,
        attached_image=after.attached_image, service_user=before.main_user,
        dynamic_user=before.dynamic_user, profile=profile, rollout_ok=rollout_ok,
        max_stall_s=load_cfg.max_stall_s, facts=facts,
    )
    if scenario.fdstore_preserve:
        clear_fd_store(service)  # after every measurement: the next scenario starts empty
    return run


def _stall(outcome: LoadOutcome, reattach: Reattach, max_stall_s: float | None) -> list[str]:
    """--max-stall, a bound of its own beside the verdict's checks (off when None)."""
    return stall_problems(latency_report(outcome.timeline, reattach.started, outcome.stopped),
                          max_stall_s)


def _sysupdate_setup(service: PortableService, scenario: Scenario) -> SysupdateSetup | None:
    if scenario.rollout == "portablectl":
        return None
    if not service.has_sysupdate():
        raise ScenarioUnsupported(
            f"systemd {service.systemd_major} in this guest has no systemd-sysupdate"
        )
    return SysupdateSetup(
        source=scenario.rollout.removeprefix("sysupdate-"),
        reattach_arg=reattach_target(service.systemd_major, service.subject.name,
                                     service.symlink),
        transfer_suffix=sysupdate_transfer_suffix(service.systemd_major),
        name=service.subject.name,
    )


def refused_problems(outcome: LoadOutcome, rollout: Reattach, socket: SocketObservation,
                     rollout_ok: bool, min_complete: int) -> list[str]:
    """A tampered update must be refused while the running version serves on, losing nothing."""
    tl = outcome.timeline
    problems = [*zero_failures(outcome, min_complete), *socket_untouched(socket)]
    if rollout_ok:
        problems.append("the rollout of a tampered image succeeded")
    if tl.first(tl.new) is not None:
        problems.append(f"{tl.new!r} answered: the tampered version went live")
    last_old = tl.last(tl.old)
    if last_old is None or last_old.t < rollout.ended:
        problems.append(f"{tl.old!r} did not go on answering after the refused update")
    return problems


def summary_row(run: ScenarioRun, box: str, systemd_major: int,
                verdict: Verdict, systemd_package: str = "") -> dict[str, Any]:
    """The run's row in summary.json: the measurements and ``verdict`` (from ``verdict_of``);
    ``systemd_package`` is the guest's exact systemd package version."""
    s = run.scenario
    row = scenario_record(
        s.id, box, systemd_major, keepalive=s.keepalive, proxy=s.proxy,
        socket_location=s.socket_location, outcome=run.outcome, reattach=run.reattach,
        counter_ok=(None if run.final_count is None
                    else not counter_consistent(run.outcome, run.final_count)),
        verdict=verdict.label, problems=verdict.problems, systemd_package=systemd_package,
    )
    if run.outcome.holders is not None:
        h = run.outcome.holders
        row.update(holders=h.connections, holder_requests=h.requests, holders_broken=h.broken,
                   holders_server_closed=h.server_closed,
                   holders_switched_in_place=h.switched_in_place, holders_intact=h.intact)
    row.update(verdict_kind=verdict.kind, observed=verdict.observed, expect=s.expect,
               subject=run.subject.name, spec=str(run.subject.spec),
               user_checks_run=run.user_checks_run,
               user_check_failures=list(run.user_check_failures),
               shutdown=s.shutdown, profile=run.profile, from_version=s.from_version,
               to_version=s.to_version, socket_state_after=run.socket.state_after,
               attached_state=run.attached_state, attached_image=run.attached_image,
               service_user=run.service_user, dynamic_user=run.dynamic_user,
               rollout_ok=run.rollout_ok, **run.facts)
    return row


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("host-socket-no-keepalive",
             description="host socket, ab without keep-alive: the seed post's 0 failed"),
    Scenario("host-socket-keepalive-drain", keepalive=True,
             description="ab -k; the server drains on SIGTERM (Connection: close, then exits)"),
    Scenario("host-socket-keepalive-naive", expect="characterise", keepalive=True,
             shutdown="immediate",
             description="ab -k; the server exits at once on SIGTERM: open connections break"),
    Scenario("host-socket-keepalive-haproxy", keepalive=True, proxy="haproxy",
             shutdown="immediate",
             description="ab -k through HAProxy (retry-on, http-reuse safe) to the naive server"),
    Scenario("image-socket-no-keepalive", expect="downtime", socket_location="image",
             description="negative control: the .socket inside the image is restarted too"),
    Scenario("host-socket-rollback", from_version=2, to_version=1,
             description="rollback v2 -> v1 under load"),
    Scenario("host-socket-trusted-profile", profile="trusted",
             description="attached with --profile trusted (runs as root, no sandbox)"),
    Scenario("host-socket-keepalive-longlived-drain", expect="characterise", keepalive=True,
             holders=20,
             description="20 long-lived keep-alive connections; the draining server closes "
                         "them, so every client has to reconnect"),
    Scenario("host-socket-sysupdate-dir", rollout="sysupdate-dir",
             description="v2 published to a local directory; pwt-rollout.service runs "
                         "systemd-sysupdate update, then portablectl reattach --now"),
    Scenario("host-socket-sysupdate-http", rollout="sysupdate-http",
             description="the same from an HTTP source (url-file + SHA256SUMS) on loopback"),
    Scenario("host-socket-sysupdate-http-rollback", rollout="sysupdate-http", from_version=2,
             to_version=1,
             description="rollback by pinning: pwt-pin@1.service runs `update 1`, reattach"),
    Scenario("host-socket-sysupdate-http-corrupt", rollout="sysupdate-http", corrupt=True,
             expect="refused",
             description="v2 published with bytes that fail SHA256SUMS: refused, v1 serves on"),
    Scenario("host-socket-keepalive-longlived-fdstore", keepalive=True, holders=20,
             shutdown="fdstore",
             description="the server hands idle connections to the fd store, v2 adopts them: "
                         "no connection breaks, each switches v1 -> v2 in place"),
    Scenario("host-socket-keepalive-longlived-fdstore-stopstart", expect="characterise",
             keepalive=True, holders=20, shutdown="fdstore", upgrade="stop-start",
             description="the same, upgraded by stop + start instead of reattach's restart: "
                         "the stop drops the fd store, the stored connections are lost (254+)"),
    Scenario("host-socket-keepalive-longlived-fdstore-stopstart-preserve", keepalive=True,
             holders=20, shutdown="fdstore", upgrade="stop-start", fdstore_preserve=True,
             description="stop + start with FileDescriptorStorePreserve=yes (host drop-in): "
                         "the store outlives the stop, v2 adopts every connection (254+)"),
    Scenario("host-socket-user-portable", scope="user",
             description="attached for a user's service manager (portablectl --user, 260+), "
                         "the socket a user unit; reattach under load, 0 failed"),
)


def get_scenario(scenario_id: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.id == scenario_id:
            return scenario
    raise KeyError(f"no scenario {scenario_id!r}")


# --- the verdict -------------------------------------------------------------------------
PASS = "pass"
FAIL = "fail"
EXPECTED_LOSS = "expected-loss"  # a characterisation lost what it shows, in a valid run
DOWNTIME_SEEN = "downtime-seen"  # the negative control showed its downtime, in a valid run
REFUSED = "refused-as-expected"  # a tampered update was refused and the old version served on
VERDICT_KINDS = (PASS, FAIL, EXPECTED_LOSS, DOWNTIME_SEEN, REFUSED)
# What each kind of a valid run is called in the report.
LABELS = {PASS: "pass", EXPECTED_LOSS: "xfail: loss seen (expected)",
          DOWNTIME_SEEN: "downtime seen (expected)", REFUSED: "refused, old version served on"}


@dataclass(frozen=True)
class Verdict:
    """What a run showed, in its scenario's terms; the report and pytest both read only this.

    ``problems`` is every reason a FAIL failed (empty for every other kind); ``observed`` says
    in numbers what was lost (or refused) whatever the kind; ``short`` names a FAIL whose one
    reason is that the expected loss did not happen ("nothing lost", "no downtime").
    """

    kind: str
    problems: tuple[str, ...] = ()
    observed: str = ""
    short: str = ""

    def __post_init__(self) -> None:
        if self.kind not in VERDICT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(VERDICT_KINDS)}, not {self.kind!r}")
        if (self.kind == FAIL) != bool(self.problems):
            raise ValueError("a FAIL lists its problems, and only a FAIL has problems")

    @property
    def label(self) -> str:
        """The words of the report's verdict column; every FAIL starts with "FAIL"."""
        if self.kind == FAIL:
            return f"FAIL: {self.short}" if self.short else "FAIL"
        return LABELS[self.kind]

    def explain(self) -> str:
        lines = [self.label, *(f"- {p}" for p in self.problems)]
        if self.observed:
            lines.append(f"seen: {self.observed}")
        return "\n".join(lines)


def losses_of(run: ScenarioRun) -> list[str]:
    """What the clients lost: failed requests, broken long-lived connections, and (socket in
    the image) a port the reattach left dead. The loss a characterisation exists to show."""
    out = run.outcome
    losses = failed_requests(out)
    if run.scenario.socket_location == "image":
        losses += socket_dead(run.socket)
    h = out.holders
    if h is not None and (h.broken or h.server_closed or h.connect_errors):
        losses.append(f"long-lived connections were lost: {h.describe()}")
    if losses:
        # Not only how many: why, in words, with what to check (see explain_losses).
        losses += explain_losses(out, run.reattach, keepalive=run.scenario.keepalive,
                                 proxy=run.scenario.proxy is not None,
                                 socket_in_image=run.scenario.socket_location == "image")
    return losses


def validity_problems(run: ScenarioRun) -> list[str]:
    """Every reason the run does not show what its scenario is about, apart from the loss.

    A run with any of these proves nothing either way, an expected loss included: a harness
    fault (the load never spanned the switch, too few requests, the counter went backwards,
    the wrong image attached) must not read as "loss seen (expected)".
    """
    s, out = run.scenario, run.outcome
    port_dead = s.socket_location == "image" and run.socket.state_after != "active"
    problems = [*load_reached_old(out, run.reattach), *enough_load(out, run.min_complete)]
    if not (s.expect == "downtime" and port_dead):
        # A port the reattach left dead is the downtime the control shows: v2 cannot answer.
        problems += load_reached_new(out, run.reattach, run.post_switch_s)
    problems += switched_cleanly(out)
    if s.socket_location == "host":
        # The host socket must outlive the reattach; one in the image is restarted by design.
        problems += socket_untouched(run.socket)
    if run.final_count is not None:  # only a subject with a counter has this check
        problems += counter_consistent(out, run.final_count)
    if s.holders and (out.holders is None or out.holders.requests == 0):
        problems.append(f"the {s.holders} long-lived clients never sent a request")
    if not run.rollout_ok:
        problems.append(f"the rollout did not put v{s.to_version} in place: "
                        f"{run.reattach.output[-600:]!r}")
    problems += attachment_problems(run, s.to_version)
    problems += profile_problems(run)
    problems += user_check_problems(run)
    return problems


def user_check_problems(run: ScenarioRun) -> list[str]:
    """The user's own checks (the spec's `checks`): each failure is a problem of the run."""
    return [f"user check failed: {line}" for line in run.user_check_failures]


def expected_image(subject: Subject, scenario: Scenario, version: int) -> str:
    """The image ``version``'s unit must run from (RootImage=) in the scenario's scope."""
    if scenario.scope == "user":
        return user_portable.image_path(subject, version)
    return subject.image_path(version)


def attachment_problems(run: ScenarioRun, version: int) -> list[str]:
    """Like systemd's TEST-29: the image is attached and the unit runs ``version``'s image."""
    want = expected_image(run.subject, run.scenario, version)
    if run.attached_state not in ATTACHED_STATES or run.attached_image != want:
        return [f"afterwards portablectl says {run.attached_state!r} and the unit runs "
                f"{run.attached_image!r}, not {want!r}"]
    return []


def profile_problems(run: ScenarioRun) -> list[str]:
    """The profile took effect: `trusted` runs as root, `default` as a dynamic user. A user's
    manager runs the service as that user (its profiles set no DynamicUser=)."""
    profile, user = run.profile, run.service_user
    if run.scenario.scope == "user":
        want = user_portable.USER
        return [] if user == want else [f"user scope: the service runs as {user!r}, not {want!r}"]
    if profile == "trusted":
        return [] if user == "root" else [f"profile trusted: the service runs as {user!r}, "
                                          "not root"]
    problems = []
    if not run.dynamic_user:
        problems.append(f"profile {profile}: DynamicUser is not set")
    if user in ("", "root"):
        problems.append(f"profile {profile}: the service runs as {user!r}, not a dynamic user")
    return problems


def refusal_problems(run: ScenarioRun) -> list[str]:
    """A tampered update: refused for its checksum, the old version served on, nothing lost."""
    problems = [*load_reached_old(run.outcome, run.reattach),
                *refused_problems(run.outcome, run.reattach, run.socket, run.rollout_ok,
                                  run.min_complete)]
    if not run.rollout_ok and not REFUSAL_REASON.search(run.reattach.output):
        problems.append("the rollout failed, but not with a checksum refusal: "
                        f"{run.reattach.output[-600:]!r}")
    if run.final_count is not None:
        problems += counter_consistent(run.outcome, run.final_count)
    problems += attachment_problems(run, run.scenario.from_version)
    problems += profile_problems(run)
    problems += user_check_problems(run)
    return problems


def verdict_of(run: ScenarioRun) -> Verdict:
    """The one judgement of a run: PASS, FAIL with every reason, or the expected result of a
    characterisation (loss seen), the negative control (downtime seen) or a tampered update
    (refused). An expected result needs a valid run: any other problem makes it a FAIL."""
    expect = run.scenario.expect
    observed = loss_summary(run)
    # --max-stall (off by default) bounds what a pass or a refusal may cost the clients; the
    # downtime control and the characterisations are about the loss, not the gap.
    stall = _stall(run.outcome, run.reattach, run.max_stall_s)
    if expect == "refused":
        problems = refusal_problems(run) + stall
        if problems:
            return Verdict(FAIL, tuple(problems), observed)
        match = REFUSAL_REASON.search(run.reattach.output)
        return Verdict(REFUSED, observed=f"{match.group(0) if match else ''} {observed}".strip())
    losses, problems = losses_of(run), validity_problems(run)
    if expect == "zero-downtime":
        problems += losses + stall
        h = run.outcome.holders
        if h is not None and h.switched_in_place != h.connections:
            # The fd store's promise: each connection is answered by v2 on the same socket.
            problems.append(f"only {h.switched_in_place} of {h.connections} long-lived "
                            f"connections switched versions in place: {h.describe()}")
        return Verdict(FAIL, tuple(problems), observed) if problems else Verdict(PASS,
                                                                                 observed=observed)
    if problems:
        return Verdict(FAIL, tuple(problems), observed)
    if not losses:
        short = "no downtime" if expect == "downtime" else "nothing lost"
        what = ("the negative control lost nothing: the suite's premise changed"
                if expect == "downtime" else "nothing was lost: the characterised loss is gone")
        return Verdict(FAIL, (what,), observed, short=short)
    return Verdict(DOWNTIME_SEEN if expect == "downtime" else EXPECTED_LOSS, observed=observed)


# Where a scenario test's verdict is kept on its pytest item: the `portable` fixture reads it
# to save the evidence of every run that did not simply pass.
VERDICT_KEY = pytest.StashKey[Verdict]()


def evidence_reason(test_failed: bool, verdict: Verdict | None, always: bool) -> str | None:
    """Why a scenario test's journals, probe log and ab.out are worth keeping; None: they are
    not. Every run that did not simply pass keeps them: an expected loss is evidence too."""
    if verdict is not None and verdict.kind != PASS:
        return verdict.label
    if test_failed:  # a pass whose test broke later, or an error before any verdict
        return "test failed" if verdict is not None else "no verdict: the run broke off"
    if always:
        return "--artifacts-always"
    return None


def conclude(verdict: Verdict) -> None:
    """Turn a run's verdict into its test's outcome, the one way every scenario test does it:
    FAIL -> pytest.fail with every problem, an expected loss -> pytest.xfail with the numbers,
    anything else returns (the test passes)."""
    __tracebackhide__ = True
    if verdict.kind == FAIL:
        pytest.fail(verdict.explain(), pytrace=False)
    if verdict.kind == EXPECTED_LOSS:
        pytest.xfail(verdict.observed)


def loss_summary(run: ScenarioRun) -> str:
    ab, tl = run.outcome.ab, run.outcome.timeline
    holders = f"; holders: {run.outcome.holders.describe()}" if run.outcome.holders else ""
    return (f"ab {ab.failed} failed of {ab.complete} (connect {ab.failed_connect}, receive "
            f"{ab.failed_receive}, length {ab.failed_length}, exceptions "
            f"{ab.failed_exceptions}), non-2xx {ab.non_2xx}; probe errors {tl.errors or 'none'};"
            f" socket after: {run.socket.state_after}{holders}")
