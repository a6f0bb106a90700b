"""One scenario = one shape of upgrade under load, run the same way for every shape.

A scenario says where the socket lives (host or image), whether clients keep connections
alive, whether HAProxy stands in front, how the server shuts down, which profile attaches the
image and which version replaces which. ``run_scenario`` attaches, loads, reattaches, waits for
the new version under load, stops the load and returns everything measured plus the problems
that stand between the run and a zero-downtime verdict.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from vm.config import Settings
from vm.haproxy import PROXY_PORT, HaproxyConfig
from vm.image import VERSIONS
from vm.latency import latency_report, stall_problems
from vm.load import GUEST_DIR, LoadOutcome, LoadRun
from vm.log import log
from vm.portable import (
    ATTACHED_STATES,
    NAME,
    PORT,
    SHUTDOWN_DROPIN,
    SOCKET,
    SYMLINK,
    PortableService,
    Reattach,
)
from vm.quirks import reattach_target, sysupdate_transfer_suffix
from vm.report import scenario_record
from vm.sysupdate import PIN_UNIT, ROLLOUT_UNIT, SysupdateSetup
from vm.verdict import (
    SocketObservation,
    counter_consistent,
    socket_untouched,
    zero_downtime_problems,
    zero_failures,
)

HAPROXY_UNIT = "pwt-haproxy.service"
EXPECTATIONS = ("zero-downtime", "downtime", "characterise", "refused")
ROLLOUTS = ("portablectl", "sysupdate-dir", "sysupdate-http")


# How sysupdate says a download does not match SHA256SUMS ("DOWNLOAD INVALID … tampered with"
# on 257); anything else failing the rollout is not the refusal this scenario is about.
REFUSAL_REASON = re.compile(r"(?i)invalid|tamper|checksum|hash")


class ScenarioUnsupported(Exception):
    """The guest cannot run this scenario (e.g. no systemd-sysupdate): a skip, with reason."""


@dataclass(frozen=True)
class Scenario:
    id: str
    expect: str = "zero-downtime"  # or "downtime" (negative control), "characterise"
    keepalive: bool = False
    proxy: str | None = None  # None or "haproxy"
    socket_location: str = "host"  # "host" or "image"
    shutdown: str = "drain"  # the server's SIGTERM behaviour: "drain" or "immediate"
    profile: str = "default"
    holders: int = 0  # long-lived keep-alive clients (a request every 0.2 s each)
    rollout: str = "portablectl"  # or sysupdate-dir / sysupdate-http: publish, then a unit acts
    corrupt: bool = False  # publish the new version with bytes that fail its SHA256SUMS
    from_version: int = 1
    to_version: int = 2
    description: str = ""

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"expect must be one of {EXPECTATIONS}")
        if self.rollout not in ROLLOUTS:
            raise ValueError(f"rollout must be one of {ROLLOUTS}")
        if {self.from_version, self.to_version} - set(VERSIONS) or (
            self.from_version == self.to_version
        ):
            raise ValueError("from/to versions must be two different known versions")

    @property
    def old(self) -> str:
        return VERSIONS[self.from_version]

    @property
    def new(self) -> str:
        return VERSIONS[self.to_version]


@dataclass
class ScenarioRun:
    scenario: Scenario
    outcome: LoadOutcome
    reattach: Reattach
    socket: SocketObservation
    final_count: int
    problems: list[str]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def lost_requests(self) -> bool:
        """Requests failed (ab or probe) or the port was dead after the upgrade."""
        ab, holders = self.outcome.ab, self.outcome.holders
        broken = bool(holders and (holders.broken or holders.server_closed
                                   or holders.connect_errors))
        return bool(ab.failed or ab.non_2xx or self.outcome.timeline.errors
                    or self.socket.state_after != "active" or broken)




def _prepare_server(service: PortableService, scenario: Scenario) -> None:
    """A host drop-in selects the server's shutdown mode (drop-ins apply to portable units)."""
    m = service.machine
    if scenario.shutdown == "drain":
        m.succeed(f"rm -f {SHUTDOWN_DROPIN}")
    else:
        m.succeed(
            f"mkdir -p $(dirname {SHUTDOWN_DROPIN}) && printf '[Service]\\n"
            f"Environment=PW_SHUTDOWN={scenario.shutdown}\\n' > {SHUTDOWN_DROPIN}"
        )
    m.succeed("systemctl daemon-reload")


def _start_haproxy(service: PortableService) -> None:
    m = service.machine
    config = HaproxyConfig().render()
    m.succeed(f"mkdir -p {GUEST_DIR} && cat > {GUEST_DIR}/haproxy.cfg <<'EOF'\n{config}EOF")
    m.succeed(f"haproxy -c -q -f {GUEST_DIR}/haproxy.cfg")
    m.succeed(f"systemctl stop {HAPROXY_UNIT} 2>/dev/null; systemd-run --quiet --collect"
              f" --unit={HAPROXY_UNIT} haproxy -db -f {GUEST_DIR}/haproxy.cfg")
    m.wait_for_open_port(PROXY_PORT, timeout=30)


def stop_haproxy(service: PortableService) -> None:
    service.machine.execute(f"systemctl stop {HAPROXY_UNIT}")


def run_scenario(service: PortableService, settings: Settings, scenario: Scenario) -> ScenarioRun:
    """Attach ``from_version``, load, reattach to ``to_version`` under load, collect."""
    load_cfg = settings.load
    m = service.machine
    setup = _sysupdate_setup(service, scenario)
    _prepare_server(service, scenario)
    service.use_images(scenario.socket_location)
    if setup is not None:
        low, high = sorted((scenario.from_version, scenario.to_version))
        # Upgrade: the old version installed and published, the new one published later.
        # Rollback: the new (older) one published but not installed: `update VERSION` pins it.
        service.prepare_sysupdate(setup, installed=[scenario.from_version],
                                  published=[low] if scenario.to_version == high else [low, high])
    service.attach(scenario.from_version, profile=scenario.profile,
                   host_socket=scenario.socket_location == "host")
    service.wait_for_greeting(scenario.old)
    facts = {"service_user": service.main_process_user(),
             "dynamic_user": service.dynamic_user()}
    if scenario.proxy == "haproxy":
        _start_haproxy(service)
    url_port = PROXY_PORT if scenario.proxy == "haproxy" else PORT
    socket_before = service.socket_active_since()

    # Every client takes the same path: behind a proxy, the probe goes through it too (a
    # probe straight to the naive server would see the resets the proxy exists to absorb).
    load = LoadRun(m, load_cfg, keepalive=scenario.keepalive,
                   url=f"http://127.0.0.1:{url_port}/", probe_port=url_port,
                   holders=scenario.holders)
    title = f"{scenario.id}: load, reattach v{scenario.from_version} -> v{scenario.to_version}"
    with log.nested(title):
        load.start()
        log.info(f"load: {load.command} (+ probe on :{url_port} at {load_cfg.probe_rate:g}/s)")
        time.sleep(load_cfg.switch_after_s)
        rollout_ok = True
        if setup is None:
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
            load.wait_until_serving(scenario.new, load_cfg.post_switch_s, after=reattach.ended)
        outcome = load.stop(old=scenario.old, new=scenario.new)
    log.info(f"ab: {outcome.ab.describe()}; probe errors: {outcome.timeline.errors or 'none'}")
    if scenario.proxy == "haproxy":
        stop_haproxy(service)

    socket = SocketObservation(socket_before, service.socket_active_since(),
                               m.unit_state(SOCKET))
    final_count = service.counter()
    facts["rollout_ok"] = rollout_ok
    if setup is not None:
        facts["rollout_log"] = reattach.output[-1500:]
        if not rollout_ok and scenario.expect != "refused":
            problems_extra = [f"the rollout did not put v{scenario.to_version} in place: "
                              f"{reattach.output[-600:]!r}"]
        else:
            problems_extra = []
    else:
        problems_extra = []
    if scenario.expect == "refused":
        problems = refused_problems(outcome, reattach, socket, rollout_ok, load_cfg.min_complete)
        if not REFUSAL_REASON.search(reattach.output):
            problems.append("the rollout failed, but not with a checksum refusal: "
                            f"{reattach.output[-600:]!r}")
        problems += counter_consistent(outcome, final_count)
        root_image = service.attached_image()
        if root_image != service.image_path(scenario.from_version):
            problems.append(f"the unit runs {root_image!r} after a refused update")
        problems += _stall(outcome, reattach, load_cfg.max_stall_s)
        return ScenarioRun(scenario, outcome, reattach, socket, final_count, problems, facts)
    problems = problems_extra + zero_downtime_problems(
        outcome, reattach, socket, final_count, load_cfg.min_complete, load_cfg.post_switch_s
    )
    if outcome.holders is not None and not outcome.holders.intact:
        problems.append(f"long-lived connections did not survive: {outcome.holders.describe()}")
    if scenario.socket_location == "image":
        # A socket shipped in the image is restarted by the reattach by design: that is the
        # downtime this scenario shows, not a harness problem.
        problems = [p for p in problems if "host socket was restarted" not in p]
    # Like systemd's TEST-29: afterwards the image is attached and the unit runs the new one.
    state, root_image = service.attachment_state(), service.attached_image()
    if state not in ATTACHED_STATES or root_image != service.image_path(scenario.to_version):
        problems.append(f"after the reattach portablectl says {state!r} and the unit runs "
                        f"{root_image!r}, not {service.image_path(scenario.to_version)!r}")
    problems += _stall(outcome, reattach, load_cfg.max_stall_s)
    return ScenarioRun(scenario, outcome, reattach, socket, final_count, problems, facts)


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
        reattach_arg=reattach_target(service.systemd_major, NAME, SYMLINK),
        transfer_suffix=sysupdate_transfer_suffix(service.systemd_major),
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


def summary_row(run: ScenarioRun, box: str, systemd_major: int, verdict: str) -> dict[str, Any]:
    s = run.scenario
    row = scenario_record(
        s.id, box, systemd_major, keepalive=s.keepalive, proxy=s.proxy,
        socket_location=s.socket_location, outcome=run.outcome, reattach=run.reattach,
        counter_ok=not counter_consistent(run.outcome, run.final_count),
        verdict=verdict, problems=run.problems,
    )
    if run.outcome.holders is not None:
        h = run.outcome.holders
        row.update(holders=h.connections, holder_requests=h.requests, holders_broken=h.broken,
                   holders_server_closed=h.server_closed,
                   holders_switched_in_place=h.switched_in_place, holders_intact=h.intact)
    row.update(expect=s.expect, shutdown=s.shutdown, profile=s.profile,
               from_version=s.from_version, to_version=s.to_version,
               socket_state_after=run.socket.state_after, **run.facts)
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
                         "no connection breaks, each switches Hello -> Hola in place"),
)


def get_scenario(scenario_id: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.id == scenario_id:
            return scenario
    raise KeyError(f"no scenario {scenario_id!r}")


def verdict_of(run: ScenarioRun) -> str:
    """The row's verdict, in the scenario's own terms."""
    expect = run.scenario.expect
    if expect == "zero-downtime":
        return "pass" if not run.problems else "FAIL"
    lost = run.lost_requests
    if expect == "downtime":
        return "downtime seen (expected)" if lost else "FAIL: no downtime"
    if expect == "refused":
        return "refused, old version served on" if not run.problems else "FAIL"
    return "xfail: loss seen (expected)" if lost else "FAIL: nothing lost"


def loss_summary(run: ScenarioRun) -> str:
    ab, tl = run.outcome.ab, run.outcome.timeline
    holders = f"; holders: {run.outcome.holders.describe()}" if run.outcome.holders else ""
    return (f"ab {ab.failed} failed of {ab.complete} (connect {ab.failed_connect}, receive "
            f"{ab.failed_receive}, length {ab.failed_length}, exceptions "
            f"{ab.failed_exceptions}), non-2xx {ab.non_2xx}; probe errors {tl.errors or 'none'};"
            f" socket after: {run.socket.state_after}{holders}")
