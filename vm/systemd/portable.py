"""The portable service in the guest, seen from the harness: each step is a request to the
guest program (vm/systemd/guest/portable.py, shipped once per boot), sent in one SSH round trip,
and its answer read as a typed value. The scope (system or a user's manager) is a value
(vm/systemd/scope.py) that every step takes from the service."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_portable_upgrade.core.errors import GuestError, HarnessError
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.load.load import PROBE_SOURCE
from pytest_portable_upgrade.machine.guest_program import (
    GUEST_DIR,
    GuestProgram,
    Request,
    and_then,
    answers_of,
    printed_after,
)
from pytest_portable_upgrade.machine.machine import Machine
from pytest_portable_upgrade.subject.image import PortableImages
from pytest_portable_upgrade.subject.spec import DROPIN_PREFIX, Subject
from pytest_portable_upgrade.systemd import sysupdate
from pytest_portable_upgrade.systemd.layout import EXTENSION_DIR, VERSIONED_ROOT, Layout
from pytest_portable_upgrade.systemd.quirks import SYSUPDATE_UPDATE_UNIT, reattach_target
from pytest_portable_upgrade.systemd.scope import (
    SIGNING_DIR,
    STATE_DIR,
    STATE_DROPIN_NAME,
    SYSTEM,
    USER_SETUP_UNITS,
    VERITY_CERT,
    VERITY_TIMEOUT_ENV,
    Scope,
    state_dropin_text,
)
from pytest_portable_upgrade.systemd.stop_start import (
    PRESERVE_LINE,
    command_line,
    stop_start_commands,
)

STASH = "/var/lib/pwt-images"  # every uploaded image set, by socket location
# A host drop-in that selects a scenario's shutdown mode (drop-ins apply to portable units).
SHUTDOWN_DROPIN = f"{DROPIN_PREFIX}shutdown.conf"
# Transient units the scenarios start in the guest (load, probe, proxy).
CLIENT_UNITS = ("pwt-ab.service", "pwt-probe.service", "pwt-holders.service",
                "pwt-hey.service", "pwt-haproxy.service", sysupdate.HTTP_UNIT,
                sysupdate.NOTIFY_SOCKET_UNIT)
# The guest program of the steps, and where it and the probe (whose one request it sends
# to read a greeting or the counter) go in the guest: once per boot.
PROGRAM_SOURCE = Path(__file__).with_name("guest") / "portable.py"
PORTABLE = GuestProgram(PROGRAM_SOURCE, companions=(PROBE_SOURCE,))
PROGRAM = PORTABLE.path
PROBE = f"{GUEST_DIR}/{PROBE_SOURCE.name}"
# The notify listener's program (vm/systemd/sysupdate.py), uploaded when a scenario needs it.
NOTIFY_SOURCE = PROGRAM_SOURCE.with_name("notify_reattach.py")
NOTIFY_PROGRAM = f"{GUEST_DIR}/notify_reattach.py"


def sysupdate_files(subject: Subject) -> tuple[str, ...]:
    """What the sysupdate scenarios install on the host; removed by reset."""
    stem = sysupdate.transfer_stem(subject.name)
    units = "/etc/systemd/system"
    return (f"{stem}.transfer", f"{stem}.conf", sysupdate.transfer_dir(subject.name),
            sysupdate.component_path(subject.name),
            f"{units}/{sysupdate.ROLLOUT_UNIT}", f"{units}/{sysupdate.PIN_UNIT}",
            f"{units}/{sysupdate.NOTIFY_SOCKET_UNIT}", f"{units}/{sysupdate.NOTIFY_SERVICE_UNIT}",
            sysupdate.NOTIFY_LOG)


def evidence_commands(subject: Subject) -> dict[str, str]:
    """The evidence saved for a run that did not simply pass: file -> the guest command that
    wrote it. README's "Reading the report" lists the same commands for the default subject
    (a unit test holds them equal)."""
    units = " ".join(f"-u {u}" for u in (subject.service, *subject.socket_units))
    return {
        "service-journal.txt": f"journalctl -b --no-pager -o short-monotonic {units}",
        "portabled-journal.txt": "journalctl -b --no-pager -o short-monotonic "
                                 "-u systemd-portabled.service",
        "clients-journal.txt": "journalctl -b --no-pager -o short-monotonic -u pwt-ab.service "
                               "-u pwt-probe.service -u pwt-holders.service "
                               "-u pwt-hey.service -u pwt-haproxy.service",
        "rollout-journal.txt": "journalctl -b --no-pager -o short-monotonic "
                               "-u pwt-rollout.service -u 'pwt-pin@*.service' "
                               "-u pwt-source-http.service -u 'pwt-notify-reattach@*.service' "
                               f"-u {SYSUPDATE_UPDATE_UNIT}",
        "portablectl-list.txt": "portablectl list; echo; systemctl status --no-pager "
                                f"'{subject.name}*'",
        "ab.out": f"cat {GUEST_DIR}/ab.out",
        "hey.out": f"cat {GUEST_DIR}/hey.out",
        "probe.jsonl": f"cat {GUEST_DIR}/probe.jsonl",
        "holders.jsonl": f"cat {GUEST_DIR}/holders.jsonl",
        "journal-tail.txt": "journalctl -b --no-pager -n 300",
    }


def dropin_files(subject: Subject, shutdown: str, fdstore_preserve: bool = False,
                 ) -> dict[str, str]:
    """The host drop-ins a scenario runs with: file name -> text.

    The subject's own (``dropins``, always), and the one of the scenario's shutdown mode (its
    ``[shutdown]`` text; none for "drain", the service's default stop). ``fdstore_preserve``
    adds FileDescriptorStorePreserve=yes to the shutdown drop-in (the mode that hands
    connections to the fd store has one). All are named 50-pwt-*: reset removes them."""
    files = {f"{DROPIN_PREFIX}{name}": text for name, text in subject.dropins.items()}
    if shutdown != "drain":
        files[SHUTDOWN_DROPIN] = subject.shutdown[shutdown]
    if fdstore_preserve:
        if SHUTDOWN_DROPIN not in files:
            raise ValueError("FileDescriptorStorePreserve= goes in the shutdown mode's drop-in:"
                             " a scenario that keeps the fd store needs a shutdown mode")
        text = files[SHUTDOWN_DROPIN]
        if re.findall(r"(?m)^\[(\w+)\]", text)[-1] != "Service":  # the spec's may end in another
            text += "[Service]\n"
        files[SHUTDOWN_DROPIN] = text + f"{PRESERVE_LINE}\n"
    return files


ATTACHED_STATES = ("attached", "attached-runtime", "running", "running-runtime", "enabled",
                   "enabled-runtime", "linked", "linked-runtime")


CLEAN_WORDS = ("detached", "inactive", "failed", "unknown")


def unclean(words: dict[str, str], names: list[str]) -> list[str]:
    """``name word`` for each of ``names`` whose word (``words``) is not clean, and a line
    for every name that has no word at all: a missing answer is dirty, never clean."""
    dirty = [f"{name} {words[name]}" for name in names
             if name in words and words[name] not in CLEAN_WORDS]
    dirty += [f"{name}: no answer" for name in names if name not in words]
    return dirty


def count_of(record: dict[str, Any]) -> int:
    """The subject's count before a probe request, from that request's record: the request
    itself added one. GuestError when the answer carries no count."""
    if record.get("visitor") is None:
        raise GuestError(f"no counter in the answer read for the count: {record}; make the "
                         "spec's [answer] counter_regex match the service's answer")
    return int(record["visitor"]) - 1


@dataclass(frozen=True)
class ServiceFacts:
    """What a scenario reads of the service before and after its load (one round trip)."""

    main_user: str  # the main process's user, "" when it does not run
    dynamic_user: bool
    socket_since: str  # the socket's ActiveEnterTimestampMonotonic
    socket_state: str
    attached_state: str  # portablectl is-attached
    attached_image: str  # the unit's RootImage=
    # The subject's counter, read with one probe request (observe(count=True)); None when it
    # was not asked for, the subject has no counter, or the socket is not active.
    counter: int | None = None
    journal: str = ""  # the scope user's journal, when asked for
    extensions: tuple[str, ...] = ()  # the unit's ExtensionImages= (paths)

    KEYS = ("user", "dynamic", "since", "socket", "attached", "image")

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> ServiceFacts:
        """From the guest program's ``observe`` answer; a missing key is an error. A
        ``record`` (the probe's record of one request; None: the socket was not active, no
        count) gives the counter."""
        missing = [k for k in cls.KEYS if k not in answer]
        if missing:
            raise GuestError(f"the service's state came back without {missing}: {answer!r}")
        record = answer.get("record")
        return cls(str(answer["user"]), bool(answer["dynamic"]), str(answer["since"]),
                   str(answer["socket"]), str(answer["attached"]), str(answer["image"]),
                   count_of(record) if record is not None else None,
                   str(answer.get("journal", "")),
                   tuple(str(e) for e in answer.get("extensions", [])))


@dataclass(frozen=True)
class Upgrade:
    """One switch of versions under load, however it was made: ``portablectl reattach --now``
    (``PortableService.reattach``), a stop + start (``stop_start``) or a sysupdate rollout
    unit (``run_rollout``). What ran, its output, and when (guest epoch seconds). The report's
    ``reattach_started_s``/``reattach_s`` are read from it, whichever way it went."""

    command: str
    started: float
    ended: float
    output: str

    @property
    def duration_s(self) -> float:
        return self.ended - self.started

    @classmethod
    def from_answer(cls, command: str, answer: dict[str, Any]) -> Upgrade:
        return cls(command, float(answer["started"]), float(answer["ended"]),
                   str(answer["output"]))


class ImageRefused(HarnessError):
    """portablectl would not attach (or inspect) an image: its own words end the run."""


def step_command(requests: list[Request]) -> str:
    """The guest command line of one call of the guest program: what run.log shows, and what
    a person pastes into a root shell in the guest to replay the steps."""
    return PORTABLE.line(requests)


@dataclass
class Session:
    """What the services of one guest share, whatever their scope: the image sets uploaded,
    the scopes used since the last reset, the guest's preflight facts, and whether the guest
    was found clean since the last attach."""

    uploaded: set[str] = field(default_factory=set)
    used: dict[str, Scope] = field(default_factory=dict)
    facts: dict[str, str] | None = None
    clean_verified: bool = False
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)  # stash key -> file -> bytes


class PortableService:
    """Drive the subject's portable service on ``machine`` (whose systemd is
    ``systemd_major``), attached in ``scope``: every step is a request to the guest program,
    one round trip each, answered in JSON.

    Channels: the service's state is read by the guest program (typed answers, one round
    trip for many facts); testinfra's ``host`` serves what the session checks once and has a
    testinfra verb for (conftest: portablectl on PATH) and the spec's own checks.
    """

    def __init__(self, machine: Machine, systemd_major: int, reattach_timeout_s: float,
                 build_images: Callable[..., PortableImages], subject: Subject, host: Any,
                 unit_timeout_s: float = 60.0, scope: Scope = SYSTEM,
                 session: Session | None = None, layout: str = "image") -> None:
        self.machine = machine
        self.host = host  # testinfra.host.Host
        self.subject = subject
        self.unit_timeout_s = unit_timeout_s
        self.systemd_major = systemd_major
        self.reattach_timeout_s = reattach_timeout_s
        # (socket location, scope="system") -> images (built/cached on the host)
        self.build_images = build_images
        self.scope = scope
        self.session = session or Session()
        self.then_output = ""  # what attach's ``then`` printed
        self.layout = Layout(layout, subject)

    def in_scope(self, scope: Scope) -> PortableService:
        """The same guest's service attached in ``scope`` (uploads and resets shared)."""
        return PortableService(self.machine, self.systemd_major, self.reattach_timeout_s,
                               self.build_images, self.subject, self.host,
                               self.unit_timeout_s, scope, self.session, self.layout.kind)

    def in_layout(self, layout: str) -> PortableService:
        """The same guest's service with its versions laid out as ``layout``
        (vm/systemd/layout.py: whole images, a base with extensions, a versioned dir)."""
        return PortableService(self.machine, self.systemd_major, self.reattach_timeout_s,
                               self.build_images, self.subject, self.host,
                               self.unit_timeout_s, self.scope, self.session, layout)

    @property
    def clean_verified(self) -> bool:
        """True from a check that found the guest clean until the next attach: the check at
        a test's start is skipped when the previous test's reset has just made it."""
        return self.session.clean_verified

    @property
    def symlink(self) -> str:
        return self.scope.symlink(self.subject)

    # --- the one channel -------------------------------------------------------------------
    def steps(self, *requests: Request, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Send ``requests`` (each ``{"step": …}``) to the guest program in one round trip;
        their answers. An image portablectl refused raises ImageRefused (the system scope) or
        GuestError (a scope whose refusals are characterised), any other failure GuestError,
        each with the guest's own words."""
        result = self.machine.execute(self.command(*requests), timeout=timeout)
        return self.answers(requests, result.stdout, result.stderr, result.rc)

    def command(self, *requests: Request) -> str:
        """The guest command line of ``requests`` (uploading the program first, once per
        boot): for ``steps``, or to run at the end of another round trip (``answers`` then
        reads what it printed)."""
        return PORTABLE.command(self.machine,
                                [{"scope": self.scope.wire(), **r} for r in requests])

    def answers(self, requests: tuple[Request, ...], stdout: str, stderr: str = "",
                rc: int = 0) -> list[dict[str, Any]]:
        """The answers to ``requests`` in what the guest program printed (see ``steps``)."""
        answer = answers_of(stdout, stderr, rc)
        if seconds := answer.get("seconds"):
            log.info("  guest steps: " + ", ".join(
                f"{r['step']} {s:.2f} s" for r, s in zip(requests, seconds, strict=False)))
        if answer["ok"]:
            answers: list[dict[str, Any]] = answer["answers"]
            return answers
        words = f"{answer.get('step')}: {answer.get('error')}"
        if answer.get("refused") and self.scope.refusal_ends_run:
            raise ImageRefused(str(answer.get("error")))
        raise GuestError(f"the guest program's step {words}")

    def step(self, request: Request, timeout: float = 120.0) -> dict[str, Any]:
        return self.steps(request, timeout=timeout)[0]

    # --- facts of the guest ------------------------------------------------------------------
    def preflight(self) -> dict[str, str]:
        """The guest's facts (systemd-sysupdate, the user scope's pieces): asked once."""
        if self.session.facts is None:
            answer = self.step({"step": "preflight", "sysupdate": sysupdate.SYSUPDATE}, 60)
            self.session.facts = {k: str(v) for k, v in answer["facts"].items()}
        return self.session.facts

    def has_sysupdate(self) -> bool:
        return self.preflight().get("sysupdate") == "yes"

    # --- the scope's user --------------------------------------------------------------------
    def setup_user(self) -> int:
        """The scope's user with lingering and a running manager whose bus answers; the run's
        signing key and its certificate in /run/verity.d and the verity timeout set before
        mountfsd and nsresourced start (Debian installs their sockets without enabling them);
        the user's portabled started (D-Bus would activate it at the first call; started
        here, a failure to start is reported as itself, not as a portablectl time-out).
        Idempotent; the user's uid."""
        if self.scope.user is None:
            raise GuestError(f"the {self.scope.name} scope has no user to set up")
        self.session.used[self.scope.name] = self.scope
        answer = self.step({
            "step": "setup-user", "signing": {"dir": SIGNING_DIR, "cert": VERITY_CERT,
                                              "cn": "pwt-user-portable"},
            "environment": [VERITY_TIMEOUT_ENV], "start": [list(u) for u in USER_SETUP_UNITS],
            "user_start": ["systemd-portabled.service"], "timeout": 120}, timeout=300)
        return int(answer["uid"])

    # --- requests a scenario's attach is prepared with -------------------------------------
    def dropin_steps(self, shutdown: str, fdstore_preserve: bool = False) -> list[Request]:
        """The subject's own drop-ins and the one of the scenario's shutdown mode
        (``dropin_files``), the old ones removed. No reload: the attach reloads."""
        d = self.scope.dropin_dir(self.subject)
        files = {f"{d}/{name}": text
                 for name, text in dropin_files(self.subject, shutdown, fdstore_preserve).items()}
        return [{"step": "write-files", "remove": [f"{d}/{DROPIN_PREFIX}*.conf"],
                 "files": files, "owner": self.scope.user}]

    def image_steps(self, socket_location: str, from_version: int | None = None,
                    ) -> list[Request]:
        """That set's images into the scope's image directory (a local copy from the stash;
        signed for the user scope), and ``portablectl inspect`` of each the first time. The
        extension layout's base and extensions go to their own directory; the versioned-dir
        layout's directory is made anew with every version up to ``from_version``.

        A set is built on the host and uploaded the first time a scenario needs it; one image
        portablectl refuses then ends the run with its own words."""
        extension = self.layout.kind == "extension"
        key = f"extension-{socket_location}" if extension else self.scope.stash(socket_location)
        first = key not in self.session.uploaded
        if first:
            with log.nested(f"uploading the portable images ({key})"):
                if extension:
                    images = self.build_images(socket_location, "system", "extension")
                elif self.scope is not SYSTEM:
                    images = self.build_images(socket_location, self.scope.name)
                else:
                    images = self.build_images(socket_location)
                self.install_images(images)
            self.session.uploaded.add(key)
        if extension:
            return [{"step": "use-images", "source": f"{STASH}/{key}", "target": EXTENSION_DIR}]
        steps: list[Request] = [{
            "step": "use-images", "source": f"{STASH}/{key}", "target": self.scope.image_dir,
            "owner": self.scope.user,
            "sign": {"dir": SIGNING_DIR} if self.scope.sidecars else None}]
        if first and dict(self.scope.refuses).get("inspect") is None:
            steps.append({"step": "inspect", "images": [self.scope.image_path(self.subject, v)
                                                        for v in self.subject.versions]})
        if self.layout.kind == "versioned-dir":
            assert from_version is not None, "the versioned directory holds up to from_version"
            steps.append({"step": "versioned-dir", "dir": self.layout.versioned_dir, "images": [
                f"{STASH}/{key}/{self.subject.image_name(v)}"
                for v in self.layout.versions_at_attach(from_version)]})
        return steps

    def install_images(self, images: PortableImages) -> None:
        """Upload one set of images to the guest's stash, each named ``<name>_<v>.raw`` there
        (portablectl matches units by that prefix), the extension layout's base as
        ``<name>-base.raw``; their sizes are kept for the report (``image_sizes``)."""
        base = images.base
        if base is not None:
            self.machine.copy_from_host(base, f"{STASH}/{images.stash_key}/"
                                              f"{self.subject.base_name}")
        for v in self.subject.versions:
            self.machine.copy_from_host(
                images.path(v), f"{STASH}/{images.stash_key}/{self.subject.image_name(v)}")
        named = {self.subject.image_name(v): images.path(v) for v in self.subject.versions}
        if base is not None:
            named = {self.subject.base_name: base, **named}
        self.session.sizes[images.stash_key] = {
            name: path.stat().st_size for name, path in named.items() if path.exists()}

    def image_sizes(self, socket_location: str) -> dict[str, int]:
        """The uploaded files of this layout's set (file name -> bytes; {} before the
        upload): the report shows what an upgrade moves."""
        key = (f"extension-{socket_location}" if self.layout.kind == "extension"
               else self.scope.stash(socket_location))
        return dict(self.session.sizes.get(key, {}))

    def sysupdate_steps(self, setup: sysupdate.SysupdateSetup, installed: list[int],
                        published: list[int], notify: bool = False) -> list[Request]:
        """Transfer and rollout units in place; ``installed`` versions in /var/lib/portables
        (the others removed; a versioned directory's are placed by ``image_steps``),
        ``published`` ones in the source (served over HTTP if asked). ``notify``: the notify
        listener too, its socket started (vm/systemd/sysupdate.py)."""
        self.scope.require("sysupdate")
        units = "/etc/systemd/system"
        files = {setup.transfer_path: setup.transfer(),
                 f"{units}/{sysupdate.ROLLOUT_UNIT}": setup.rollout_unit(),
                 f"{units}/{sysupdate.PIN_UNIT}": setup.pin_unit()}
        start: list[str] = []
        if notify:
            self.machine.copy_from_host(NOTIFY_SOURCE, NOTIFY_PROGRAM, mode="0755", once=True)
            files.update({f"{units}/{sysupdate.NOTIFY_SOCKET_UNIT}": setup.notify_socket_unit(),
                          f"{units}/{sysupdate.NOTIFY_SERVICE_UNIT}":
                              setup.notify_service_unit(NOTIFY_PROGRAM)})
            start.append(sysupdate.NOTIFY_SOCKET_UNIT)
        if setup.component_path is not None:
            files[setup.component_path] = setup.component_file()
        steps: list[Request] = [
            {"step": "write-files", "dirs": [sysupdate.SOURCE_DIR, setup.transfer_dir],
             "files": files},
            {"step": "reload", "start": start}]
        if setup.current_symlink:
            steps.append({"step": "remove", "paths": [
                self.subject.image_path(v) for v in self.subject.versions if v not in installed]})
        steps += [self.publish_step(v) for v in published]
        if setup.source == "http":
            steps.append({"step": "serve", "unit": sysupdate.HTTP_UNIT, "port": sysupdate.HTTP_PORT,
                          "argv": ["python3", "-m", "http.server", str(sysupdate.HTTP_PORT),
                                   "--bind", "127.0.0.1", "--directory", sysupdate.SOURCE_DIR],
                          "timeout": 30})
        return steps

    def publish_step(self, version: int, corrupt: bool = False) -> Request:
        """``version`` into the source with a fresh SHA256SUMS; ``corrupt`` changes the
        image's bytes after its checksum was written (a tampered download)."""
        self.scope.require("publish")
        return {"step": "publish", "image": f"{STASH}/host/{self.subject.image_name(version)}",
                "source": sysupdate.SOURCE_DIR, "pattern": f"{self.subject.name}_*.raw",
                "corrupt": corrupt}

    def publish(self, version: int, corrupt: bool = False) -> None:
        self.step(self.publish_step(version, corrupt))

    # --- attach, observe, upgrade --------------------------------------------------------------
    def _symlink(self, version: int) -> Request:
        return {"target": self.subject.image_name(version).removesuffix(".raw"),
                "link": self.symlink.removesuffix(".raw"),
                "suffixes": [".raw", *self.scope.sidecars]}

    def _probe(self) -> Request:
        return {"probe": PROBE, "port": self.subject.port, "args": self.subject.client_args()}

    def _observe(self, count: bool = False, journal: bool = False,
                 version: int | None = None) -> Request:
        """``version``: the one that should run (the extension is-attached is asked with)."""
        s, layout = self.subject, self.layout
        image, extensions = self.symlink, []
        if layout.kind != "image":
            image = layout.target
            extensions = layout.extensions(version) if version is not None else []
        return {"step": "observe", "service": s.service, "socket": s.socket,
                "image": image, "extensions": extensions,
                "count": self._probe() if count and s.counter_regex is not None else None,
                "journal": 200 if journal else None}

    def attach(self, version: int, profile: str = "default", host_socket: bool = True,
               prepare: tuple[Request, ...] | list[Request] = (),
               greeting: str | None = None, count: bool = False,
               then: str | None = None) -> ServiceFacts:
        """``prepare`` (drop-ins, images, sysupdate), the socket unit files, then attach
        ``version``, start the socket(s), wait for ``greeting`` (when given) and read the
        facts before the load: one guest round trip. ``count``: the facts carry the
        subject's counter too (as ``observe(count=True)`` reads it, after the greeting), the
        reading the done-but-unanswered figure starts from.

        The sockets start only after the attach: a socket refuses to start without its
        service. ``portablectl attach`` reloads the manager (the user scope reloads first),
        so the socket files and drop-ins written before it are picked up. An image
        portablectl refuses raises ImageRefused with its words (the user scope: GuestError).
        """
        self.session.clean_verified = False
        self.session.used[self.scope.name] = self.scope
        s, scope = self.subject, self.scope
        files: dict[str, str] = {}
        dirs: list[str] = []
        if host_socket:
            files.update({f"{scope.unit_dir}/{p.name}": p.read_text() for p in s.sockets})
        if scope.user is not None:
            files[f"{scope.dropin_dir(s)}/{STATE_DROPIN_NAME}"] = state_dropin_text(s)
            dirs = [STATE_DIR, *(f"{STATE_DIR}/{d}" for d in s.state_directories),
                    scope.unit_dir, scope.dropin_dir(s)]
        requests: list[Request] = [*prepare]
        if files or dirs:
            requests.append({"step": "write-files", "files": files, "dirs": dirs,
                             "owner": scope.user})
        layout = self.layout
        target: Request = {"symlink": self._symlink(version), "image": self.symlink}
        if layout.kind != "image":
            target = {"symlink": None, "image": layout.target,
                      "extensions": layout.extensions(version), "matches": layout.matches}
        requests.append({
            "step": "attach", **target,
            "profile": profile, "flags": list(scope.attach_flags),
            "reload": scope.user is not None, "attached_states": list(ATTACHED_STATES),
            "sockets": list(s.socket_units), "unit_timeout": self.unit_timeout_s,
            "timeout": max(180.0, self.unit_timeout_s + 60)})
        if greeting is not None:
            requests.append({"step": "greet", **self._probe(), "expect": greeting,
                             "timeout": 120})
        requests.append(self._observe(count=count, version=version))
        bound = 300 + max(180.0, self.unit_timeout_s + 60) + self.unit_timeout_s + 120
        command = and_then(self.command(*requests), then)
        try:
            result = self.machine.execute(command, timeout=bound)
            answers = self.answers(tuple(requests), result.stdout, result.stderr, result.rc)
        except ImageRefused as e:
            if str(e).startswith("portablectl inspect"):
                raise ImageRefused(f"{e} ({s.spec})") from None
            what = self.symlink if layout.kind == "image" else shlex.join(
                [*layout.extension_args(version), layout.target])
            raise ImageRefused(f"portablectl attach {what} (v{version}, {s.spec}): "
                               f"{e}") from None
        if then is not None:
            self.then_output = printed_after(result.stdout)
            if result.rc != 0:
                raise GuestError(f"after the attach, `{then[:120]}…` exited {result.rc}: "
                                 f"{(self.then_output + result.stderr).strip()[-600:]}")
        return ServiceFacts.from_answer(answers[-1])

    def observe(self, count: bool = False, journal: bool = False,
                version: int | None = None) -> ServiceFacts:
        """The service's state in one guest round trip (see ``ServiceFacts``).

        ``count``: also the subject's counter, read with one probe request in the same round
        trip, when the subject has a counter and its socket is active (None otherwise);
        ``journal``: the scope user's journal too."""
        return ServiceFacts.from_answer(self.step(self._observe(count, journal, version)))

    def observe_command(self, count: bool = False, journal: bool = False,
                        version: int | None = None) -> str:
        """``observe`` as a command to run at the end of another round trip (the load's
        stop); ``observed`` reads its answer from what it printed."""
        return self.command(self._observe(count, journal, version))

    def observed(self, output: str) -> ServiceFacts:
        return ServiceFacts.from_answer(self.answers(({"step": "observe"},), output)[0])

    def reattach_target(self) -> str:
        """What to hand ``portablectl reattach``: the name, or the path where the name form
        is broken (quirks) or would be looked up elsewhere (the user scope)."""
        if self.scope.reattach_by_path:
            return self.symlink
        return reattach_target(self.systemd_major, self.subject.name, self.symlink)

    def _upgrade(self, version: int, commands: list[list[str]],
                 change: Request | None = None) -> Upgrade:
        """``change``: what the upgrade step does before the commands, instead of flipping
        the symlink (the versioned directory's file placed or removed; nothing)."""
        change = {"symlink": self._symlink(version)} if change is None else change
        answer = self.step({"step": "upgrade", **change,
                            "commands": commands, "timeout": self.reattach_timeout_s},
                           timeout=self.reattach_timeout_s + 30)
        if answer["rc"] != 0:
            raise GuestError(f"`{command_line(commands)}` exited {answer['rc']}: "
                             f"{answer['output'].strip()[-1500:]}")
        return Upgrade.from_answer(command_line(commands), answer)

    def reattach(self, version: int, from_version: int | None = None) -> Upgrade:
        """Flip the symlink to ``version`` and ``portablectl reattach --now``, timed by the
        guest's clock. The extension layout reattaches the base with ``version``'s
        extension; the versioned-dir layout first drops ``version``'s file into the
        directory (an upgrade) or removes ``from_version``'s (the newest: a rollback)."""
        layout = self.layout
        if layout.kind == "image":
            return self._upgrade(version, [[*self.scope.portablectl, "reattach", "--now",
                                            *self.scope.attach_flags, self.reattach_target()]])
        change: Request = {}
        if layout.kind == "versioned-dir":
            if from_version is None:
                raise ValueError("a versioned-dir upgrade needs the version it leaves")
            if version > from_version:
                change = {"place": {"source": f"{STASH}/{self.scope.stash('host')}/"
                                              f"{self.subject.image_name(version)}",
                                    "dir": layout.versioned_dir}}
            else:
                change = {"remove": [layout.versioned_file(v) for v in self.subject.versions
                                     if v > version]}
        argv = layout.reattach_argv(self.scope.portablectl, self.scope.attach_flags, version)
        return self._upgrade(version, [argv], change)

    def stop_start(self, version: int) -> Upgrade:
        """Flip the symlink to ``version``, reattach without restarting, stop, start (see
        stop_start.py); timed like ``reattach``."""
        return self._upgrade(version, stop_start_commands(
            self.scope.portablectl, self.scope.systemctl, self.reattach_target(),
            self.subject.service))

    def run_rollout(self, unit: str, version: int,
                    notify: bool = False) -> tuple[Upgrade, bool, list[dict[str, Any]]]:
        """Start a rollout unit and wait for it; (timings, whether ``version`` was put in
        place, the notify listener's record of each call it took: ``notify``, else []).

        The unit's exit status is not enough: a skipped ExecCondition (nothing new found)
        makes `systemctl start` succeed while nothing happened. So the symlink must point at
        ``version``, or, in a versioned directory, ``version``'s file must be there. The
        journal is read enough lines deep that systemd-pull's refusal is among them
        (quirks)."""
        self.scope.require("sysupdate")
        # systemd's update unit is Type=simple (its start returns at once): --wait until it
        # exits, the notify callout's reattach included.
        command = [*self.scope.systemctl, "start", *(["--wait"] if notify else []), unit]
        request: Request = {"step": "upgrade", "commands": [command],
                            "journal": {"unit": unit, "lines": 60},
                            "timeout": self.reattach_timeout_s}
        versioned = self.layout.kind == "versioned-dir"
        installed = self.layout.versioned_file(version) if versioned else ""
        request.update({"exists": [installed]} if versioned else {"read_link": self.symlink})
        if notify:
            request["read"] = [sysupdate.NOTIFY_LOG]
        answer = self.step(request, timeout=self.reattach_timeout_s + 30)
        rollout = Upgrade.from_answer(shlex.join(command), answer)
        if versioned:
            in_place = bool(answer.get("exists", {}).get(installed))
        else:
            in_place = str(answer.get("link", "")).endswith(self.subject.image_name(version))
        calls = [json.loads(line) for line in
                 str(answer.get("files", {}).get(sysupdate.NOTIFY_LOG, "")).splitlines()
                 if line.strip()]
        return rollout, answer["rc"] == 0 and in_place, calls

    def clear_fd_store(self) -> None:
        """Stop the service and drop what its store still holds: with Preserve=yes a stopped
        unit keeps the store, and the next scenario's server would be handed dead
        connections."""
        self.step({"step": "clear-fdstore", "unit": self.subject.service})

    def journal(self) -> str:
        """The scope user's manager and units this boot: the evidence the system journals
        lack ("" for the system scope, or when the step itself fails)."""
        try:
            return str(self.step({"step": "journal", "lines": 200}, 60)["journal"])
        except HarnessError as e:
            return f"(no journal: {e})"

    # --- reset and the clean check -----------------------------------------------------------
    def units(self, scope: Scope | None = None) -> list[str]:
        """Every unit a scenario may leave running in ``scope``: clients (the system's), the
        subject's sockets, its service."""
        s = self.subject
        clients = list(CLIENT_UNITS) if (scope or self.scope) is SYSTEM else []
        return [*clients, *s.socket_units, s.service]

    def _clean_part(self, scope: Scope) -> Request:
        return {"scope": scope.wire(), "images": scope.image_paths(self.subject),
                "units": self.units(scope)}

    def _reset_part(self, scope: Scope) -> Request:
        s = self.subject
        part = {**self._clean_part(scope), "service": s.service,
                "detach_flags": list(scope.attach_flags)}
        sockets = [f"{scope.unit_dir}/{u}" for u in s.socket_units]
        if scope is SYSTEM:
            state = [p for d in s.state_directories for p in (f"/var/lib/private/{d}",
                                                              f"/var/lib/{d}")]
            socket_dropins = [f"{scope.unit_dir}/{u}.d/{DROPIN_PREFIX}*.conf"
                              for u in s.socket_units]
            part.update(remove=[*sockets, *socket_dropins,
                                f"{s.dropin_dir}/{DROPIN_PREFIX}*.conf", *sysupdate_files(s),
                                sysupdate.SOURCE_DIR, VERSIONED_ROOT, *state],
                        reset_failed=[*s.socket_units, s.service, sysupdate.ROLLOUT_UNIT,
                                      "pwt-pin@*", "pwt-notify-reattach@*",
                                      SYSUPDATE_UPDATE_UNIT])
        else:
            # Everything the user had, and the run's key, certificate and timeout: no user
            # socket may stay on the port the next system scenario listens on.
            part.update(remove=[*sockets, scope.dropin_dir(s), STATE_DIR, scope.image_dir,
                                SIGNING_DIR, VERITY_CERT],
                        unset_environment=[VERITY_TIMEOUT_ENV.split("=")[0]])
        return part

    def _scopes(self) -> list[Scope]:
        """The scopes to reset or check: every one used since the last reset (a user's
        first), and the system's always."""
        return [*(s for s in self.session.used.values() if s is not SYSTEM), SYSTEM]

    def reset(self) -> None:
        """Back to a clean guest in every scope used since the last reset: clients and units
        stopped, image detached, files and state removed (the user scope: its user's manager
        stopped), and the clean check, in one round trip."""
        scopes = self._scopes()
        answer = self.in_scope(SYSTEM).step(
            {"step": "reset", "parts": [self._reset_part(s) for s in scopes]}, timeout=300)
        self.session.used.clear()
        self._judge_clean(scopes, answer["words"])

    def check_clean(self) -> None:
        """Raise GuestError unless no image is attached and no socket or client is active,
        in every scope used since the last reset. Every image path and unit must answer
        with a clean word: a missing answer is dirty, never taken for clean. A user scope
        whose manager is not running has nothing attached or listening."""
        scopes = self._scopes()
        answer = self.in_scope(SYSTEM).step(
            {"step": "clean", "parts": [self._clean_part(s) for s in scopes]})
        self._judge_clean(scopes, answer["words"])

    def _judge_clean(self, scopes: list[Scope], words: list[dict[str, str]]) -> None:
        dirty = []
        for scope, said in zip(scopes, words, strict=True):
            if scope is not SYSTEM and not said:
                continue  # the user's manager is gone: nothing of the user's can run
            part = self._clean_part(scope)
            dirty += [f"{scope.name}: {d}" if scope is not SYSTEM else d
                      for d in unclean(said, [*part["images"], *part["units"]])]
        self.session.clean_verified = not dirty
        if dirty:
            raise GuestError(f"the guest is not clean ({', '.join(CLEAN_WORDS)} expected): "
                             f"{dirty}")
