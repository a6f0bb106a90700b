"""The scenario catalogue: one ``Scenario`` per shape of upgrade under load.

A scenario says where the socket lives (host or image), whether clients keep connections
alive, whether HAProxy stands in front, how the server shuts down, which profile attaches the
image, which version replaces which, how (reattach or stop + start, by portablectl or a
sysupdate rollout) and what the run must show (``expect``). ``SCENARIOS`` is the catalogue;
README "Add a scenario" says what each field means. ``run.run_scenario`` runs one the same way
for every shape, ``verdict.verdict_of`` judges it.

The keep-alive scenarios also run hey (``--second-client``, vm/load/hey.py) beside ab: a client
that resends matters only where a connection is reused, so that is where hey runs. Their
``-post`` variants send POST (``method``), which no client resends, so a loss a GET's resend
hides shows there.
"""

from __future__ import annotations

from dataclasses import dataclass

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
# What the clients send: None (the subject's own [request] method), or GET or POST.
METHODS = (None, "GET", "POST")
# How the versions are laid out for portabled: a whole image per version behind the symlink
# <name>.raw; a base image (the runtime) that stays, with one small app extension per version
# (`portablectl attach --extension`, 249+); or a versioned directory <name>.v/ whose newest
# <name>_<V>.raw portabled picks itself (vpick, 256+).
LAYOUTS = ("image", "extension", "versioned-dir")
# What runs the reattach after a sysupdate pull: the suite's oneshot (pwt-rollout.service:
# update, then portablectl), or sysupdate's own notify callout (262: systemd's
# systemd-sysupdate-update.service pulls, and a listener the suite puts in
# /run/systemd/sysupdate/notify/ reattaches; vm/systemd/sysupdate.py).
AFTER_PULLS = ("oneshot", "notify")
# What drove the reattach, as summary.json's `reattach_driven_by` says it (Scenario.driver).
DRIVERS = ("test", "suite-oneshot", "sysupdate-notify")


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
    method: str | None = None  # None: the subject's [request] method; or "GET" / "POST"
    # The fewest ab clients (-c) that test this scenario's promise: --concurrency applies
    # when it is higher. The proxy's retries are tested only by requests in flight on the
    # server connections the naive server drops (docs/capacity.md says why 50).
    min_concurrency: int = 1
    layout: str = "image"  # or extension / versioned-dir (LAYOUTS)
    after_pull: str = "oneshot"  # or notify (AFTER_PULLS): only with a sysupdate rollout
    description: str = ""

    def __post_init__(self) -> None:
        # A typo must not silently run another shape (an unknown shutdown would run the
        # draining server, an unknown proxy no proxy at all).
        choices: dict[str, tuple[str | None, ...]] = {
            "expect": EXPECTATIONS, "rollout": ROLLOUTS, "proxy": PROXIES,
            "socket_location": SOCKET_LOCATIONS, "shutdown": SHUTDOWNS, "profile": PROFILES,
            "upgrade": UPGRADES, "scope": SCOPES, "method": METHODS, "layout": LAYOUTS,
            "after_pull": AFTER_PULLS,
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
        if self.layout != "image" and (
            self.upgrade != "reattach" or self.scope != "system" or self.proxy is not None
        ):
            raise ValueError(f"the {self.layout} layout is a `portablectl reattach --now` "
                             "of the system's manager, without a proxy")
        # sysupdate writes into a versioned directory (no symlink); its rollback by pinning and
        # the tampered download are the whole-image rows'.
        if self.layout != "image" and self.rollout != "portablectl" and (
            self.layout != "versioned-dir" or self.rollout != "sysupdate-dir"
            or self.to_version < self.from_version or self.corrupt
        ):
            raise ValueError("a sysupdate rollout outside the image layout is sysupdate-dir "
                             "into the versioned-dir layout, an upgrade, not corrupt")
        if self.after_pull != "oneshot" and (
            self.rollout == "portablectl" or self.layout != "versioned-dir"
        ):
            raise ValueError("after_pull='notify' reattaches after a sysupdate pull into the "
                             "versioned-dir layout: it needs rollout='sysupdate-dir' and "
                             "layout='versioned-dir'")
        if self.layout == "versioned-dir" and self.socket_location != "host":
            raise ValueError("the versioned-dir layout holds whole images: its socket is the "
                             "host's (image-socket-no-keepalive is the control)")

    @property
    def driver(self) -> str:
        """What runs the switch (DRIVERS): the test itself (portablectl), the suite's rollout
        unit after sysupdate's pull, or sysupdate's notify callout."""
        if self.rollout == "portablectl":
            return "test"
        return "sysupdate-notify" if self.after_pull == "notify" else "suite-oneshot"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("host-socket-no-keepalive",
             description="host socket, ab without keep-alive: the seed post's 0 failed"),
    Scenario("host-socket-keepalive-drain", keepalive=True,
             description="ab -k; the server drains on SIGTERM (Connection: close, then exits)"),
    Scenario("host-socket-keepalive-naive", expect="characterise", keepalive=True,
             shutdown="immediate",
             description="ab -k; the server exits at once on SIGTERM: open connections break"),
    Scenario("host-socket-keepalive-haproxy", keepalive=True, proxy="haproxy",
             shutdown="immediate", min_concurrency=50,
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
    # POST beside GET in the keep-alive scenarios: hey resends a GET on a reused connection
    # that died, never a POST, so the POST runs show what the GET runs may hide.
    Scenario("host-socket-keepalive-drain-post", keepalive=True, method="POST",
             description="ab -k and hey POST; the server drains on SIGTERM: no client loses "
                         "a request and the server did none it did not answer"),
    Scenario("host-socket-keepalive-naive-post", expect="characterise", keepalive=True,
             shutdown="immediate", method="POST",
             description="ab -k and hey POST to the server that exits at once: the requests "
                         "on open connections break, and no client resends a POST"),
    # HAProxy documents retry-on as a list of failure events, not of methods: it replays any
    # request whose server connection failed (a POST too, when its body fits a buffer), and
    # leaves excluding one to `http-request disable-l7-retry`, which the config does not set.
    Scenario("host-socket-keepalive-haproxy-post", keepalive=True, proxy="haproxy",
             shutdown="immediate", method="POST", min_concurrency=50,
             description="ab -k and hey POST through HAProxy to the naive server: HAProxy "
                         "documents its retry-on as replaying a POST like a GET, so no client "
                         "should lose one (the run decides; the server may do one twice)"),
    # The other two layouts of an upgrade (systemd's TEST-29-PORTABLE checks them with
    # is-active only): under load here, with the same checks as the whole-image reattach.
    Scenario("host-socket-extension-no-keepalive", layout="extension",
             description="a base image (the runtime) stays attached; only the app extension "
                         "changes: reattach --now --extension app_2.raw base.raw, 0 failed"),
    Scenario("host-socket-extension-rollback", layout="extension", from_version=2,
             to_version=1,
             description="the extension rolled back v2 -> v1 on the same base, under load"),
    Scenario("image-socket-extension-no-keepalive", expect="downtime", socket_location="image",
             layout="extension",
             description="negative control: the extension ships the .socket, so the reattach "
                         "restarts it too"),
    Scenario("host-socket-versioned-dir-no-keepalive", layout="versioned-dir",
             description="<name>.v/ attached; the new version's file dropped into it and "
                         "reattach --now picks the newest (256+), 0 failed"),
    Scenario("host-socket-versioned-dir-rollback", layout="versioned-dir", from_version=2,
             to_version=1,
             description="the newest file removed from <name>.v/ and reattach --now picks the "
                         "one before it (256+), 0 failed"),
    # sysupdate with no symlink: the transfer's target is <name>.v/ itself, and portabled picks
    # the newest file sysupdate put there.
    Scenario("host-socket-sysupdate-versioned-dir", rollout="sysupdate-dir",
             layout="versioned-dir",
             description="v2 published; pwt-rollout.service runs sysupdate update into <name>.v/ "
                         "(no CurrentSymlink=), then reattach --now <name>.v/ (256+), 0 failed"),
    Scenario("host-socket-sysupdate-notify", rollout="sysupdate-dir", layout="versioned-dir",
             after_pull="notify",
             description="systemd's own systemd-sysupdate-update.service pulls v2 into "
                         "<name>.v/; its OnCompletedUpdate call to the suite's listener in "
                         "/run/systemd/sysupdate/notify/ runs the reattach (262+), 0 failed"),
)


def get_scenario(scenario_id: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.id == scenario_id:
            return scenario
    raise KeyError(f"no scenario {scenario_id!r}")
