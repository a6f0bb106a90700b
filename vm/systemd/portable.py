"""The portable service in the guest: images, attach, host socket, reattach, reset."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_portable_upgrade.core.errors import GuestError, HarnessError
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.load.load import GUEST_DIR, PROBE_SOURCE
from pytest_portable_upgrade.machine.machine import Machine
from pytest_portable_upgrade.subject.image import PortableImages
from pytest_portable_upgrade.subject.spec import DROPIN_PREFIX, PORTABLES, Subject
from pytest_portable_upgrade.systemd import sysupdate
from pytest_portable_upgrade.systemd.quirks import reattach_target

STASH = "/var/lib/pwt-images"  # every uploaded image set, by socket location
# A host drop-in that selects a scenario's shutdown mode (drop-ins apply to portable units).
SHUTDOWN_DROPIN = f"{DROPIN_PREFIX}shutdown.conf"
# The line the shutdown drop-in gains to keep the fd store across a stop (254+; quirks.py,
# stop_start.py).
PRESERVE_LINE = "FileDescriptorStorePreserve=yes"
# Transient units the scenarios start in the guest (load, probe, proxy).
CLIENT_UNITS = ("pwt-ab.service", "pwt-probe.service", "pwt-holders.service",
                "pwt-haproxy.service", sysupdate.HTTP_UNIT)
# The end of a here-document the harness writes unit files with (never a line of one).
HEREDOC_END = "PWT-EOF"


def sysupdate_files(subject: Subject) -> tuple[str, ...]:
    """What the sysupdate scenarios install on the host; removed by reset."""
    stem = sysupdate.transfer_stem(subject.name)
    return (f"{stem}.transfer", f"{stem}.conf", f"/etc/systemd/system/{sysupdate.ROLLOUT_UNIT}",
            f"/etc/systemd/system/{sysupdate.PIN_UNIT}")


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
                               "-u pwt-haproxy.service",
        "rollout-journal.txt": "journalctl -b --no-pager -o short-monotonic "
                               "-u pwt-rollout.service -u 'pwt-pin@*.service' "
                               "-u pwt-source-http.service",
        "portablectl-list.txt": "portablectl list; echo; systemctl status --no-pager "
                                f"'{subject.name}*'",
        "ab.out": f"cat {GUEST_DIR}/ab.out",
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


def write_files_script(files: dict[str, str]) -> str:
    """Shell that writes each file (path -> text) with a quoted here-document, its directory
    made first; one line per step."""
    return "".join(f"mkdir -p $(dirname {path}) && cat > {path} <<'{HEREDOC_END}'\n"
                   f"{text if text.endswith(chr(10)) else text + chr(10)}{HEREDOC_END}\n"
                   for path, text in files.items())


ATTACHED_STATES = ("attached", "attached-runtime", "running", "running-runtime", "enabled",
                   "enabled-runtime", "linked", "linked-runtime")


CLEAN_WORDS = ("detached", "inactive", "failed", "unknown")


def unclean(answers: str, names: list[str]) -> list[str]:
    """The lines of ``answers`` ("NAME WORD" each) that are not clean, and a line for every
    name in ``names`` that has no answer at all."""
    said: dict[str, str] = {}
    for line in answers.splitlines():
        name, _, word = line.strip().partition(" ")
        if name:
            said[name] = word.strip()
    dirty = [f"{name} {said[name]}" for name in names
             if name in said and said[name] not in CLEAN_WORDS]
    dirty += [f"{name}: no answer" for name in names if name not in said]
    return dirty


def count_of(record: dict[str, Any]) -> int:
    """The subject's count before a probe request, from that request's record: the request
    itself added one. GuestError when the answer carries no count."""
    if record.get("visitor") is None:
        raise GuestError(f"no counter in the answer after the load: {record}")
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

    KEYS = ("user", "dynamic", "since", "socket", "attached", "image")

    @classmethod
    def parse(cls, text: str, count: bool = False) -> ServiceFacts:
        """From ``key=value`` lines; a missing key is an error (a cut-off answer). With
        ``count``, ``answer=`` is the probe's record of one request ("" when the socket was
        not active: no count)."""
        said = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        missing = [k for k in (*cls.KEYS, *(("answer",) if count else ())) if k not in said]
        if missing:
            raise GuestError(f"the service's state came back without {missing}: {text!r}")
        counter = None
        if count and said["answer"].strip():
            try:
                record = json.loads(said["answer"])
            except ValueError:
                raise GuestError(f"the probe's answer is no record: {said['answer']!r}") from None
            counter = count_of(record)
        return cls(said["user"].strip(), said["dynamic"].strip() == "yes", said["since"].strip(),
                   said["socket"].strip(), said["attached"].strip(), said["image"].strip(),
                   counter)


TIMES_MARK = "PWT-TIMES"


def timed(command: str, extra: str = "") -> str:
    """Shell that runs ``command`` between two guest clock readings and ends with one line
    ``PWT-TIMES start end rc [extra…]`` (read back by ``parse_timed``)."""
    return (f"s=$(date +%s.%N); {command}; rc=$?; e=$(date +%s.%N);"
            f" echo; echo \"{TIMES_MARK} $s $e $rc{' ' + extra if extra else ''}\"")


def parse_timed(output: str) -> tuple[float, float, int, list[str]]:
    """(start, end, exit status, the extra fields) from the last ``PWT-TIMES`` line."""
    marks = [line.split() for line in output.splitlines() if line.startswith(TIMES_MARK + " ")]
    fields = marks[-1] if marks else []
    if len(fields) < 4:
        raise GuestError(f"no {TIMES_MARK} line at the end of: {output[-600:]!r}")
    return float(fields[1]), float(fields[2]), int(fields[3]), fields[4:]


@dataclass(frozen=True)
class Upgrade:
    """One switch of versions under load, however it was made: ``portablectl reattach --now``
    (``PortableService.reattach``), a stop + start (stop_start.py) or a sysupdate rollout unit
    (``run_rollout``). What ran, its output, and when (guest epoch seconds). The report's
    ``reattach_started_s``/``reattach_s`` are read from it, whichever way it went."""

    command: str
    started: float
    ended: float
    output: str

    @property
    def duration_s(self) -> float:
        return self.ended - self.started


class ImageRefused(HarnessError):
    """portablectl would not attach (or inspect) an image: its own words end the run."""


REFUSED_MARK = "PWT-REFUSED"


def replace_symlink_command(target: str, link: str) -> str:
    """Point ``link`` at ``target``: ln -sfn then mv -T, so the symlink is replaced
    atomically and never missing."""
    return f"ln -sfn {target} {link}.new && mv -T {link}.new {link}"


class PortableService:
    """Drive the subject's portable service on ``machine`` (whose systemd is
    ``systemd_major``). Guest state is read through testinfra's ``host`` (same SSH
    connection, see vm/machine/guest_host.py); commands and waits go through ``machine``. The
    scenario path asks each question once: attach, the facts before and after the load and
    the reset are one guest round trip each."""

    def __init__(self, machine: Machine, systemd_major: int, reattach_timeout_s: float,
                 build_images: Callable[..., PortableImages], subject: Subject, host: Any,
                 unit_timeout_s: float = 60.0) -> None:
        self.machine = machine
        self.host = host  # testinfra.host.Host
        self.subject = subject
        self.unit_timeout_s = unit_timeout_s
        self.systemd_major = systemd_major
        self.reattach_timeout_s = reattach_timeout_s
        # (socket location, scope="system") -> images (built/cached on the host)
        self.build_images = build_images
        self.uploaded: set[str] = set()
        # True from a check that found the guest clean until the next attach: the check at a
        # test's start is skipped when the previous test's reset has just made it.
        self.clean_verified = False

    @property
    def symlink(self) -> str:
        return self.subject.symlink

    def install_images(self, images: PortableImages) -> None:
        """Upload one set of images (host- or image-socket) to the guest's stash, each named
        ``<name>_<v>.raw`` there (portablectl matches units by that prefix)."""
        for v in self.subject.versions:
            self.machine.copy_from_host(
                images.path(v),
                f"{STASH}/{images.stash_key}/{self.subject.image_name(v)}")

    def use_images(self, socket_location: str) -> None:
        """Put that set's images in /var/lib/portables (a local copy: under a second).

        A set is built on the host and uploaded the first time a scenario needs it, and each
        image is inspected then: one portablectl refuses ends the run with its own words.
        """
        first = socket_location not in self.uploaded
        if first:
            with log.nested(f"uploading the portable images (socket in {socket_location})"):
                self.install_images(self.build_images(socket_location))
            self.uploaded.add(socket_location)
        self.machine.succeed(
            f"for f in {STASH}/{socket_location}/*.raw; do"
            f" cp --sparse=always \"$f\" {PORTABLES}/$(basename \"$f\").new &&"
            f" mv -f {PORTABLES}/$(basename \"$f\").new {PORTABLES}/$(basename \"$f\"); done"
        )
        if first:
            self.inspect_images()

    def inspect_images(self) -> None:
        """``portablectl inspect`` each version's image: a broken image (no os-release, no
        unit of the subject's prefix) is the spec's fault, not systemd's: end the run."""
        for v in self.subject.versions:
            image = self.subject.image_path(v)
            result = self.machine.execute(f"portablectl inspect {image}")
            if not result.succeeded:
                words = (result.stderr.strip() or result.stdout.strip()).splitlines()
                raise ImageRefused(f"portablectl inspect {image} ({self.subject.spec}): "
                                   f"{' / '.join(words[-3:]) or f'exit {result.rc}'}")

    def properties(self, unit: str) -> dict[str, str]:
        """The unit's ``systemctl show`` properties (testinfra: host.service(...))."""
        props: dict[str, str] = self.host.service(unit).systemd_properties
        return props

    def main_process_user(self) -> str:
        """The user the service's main process runs as (a dynamic user under `default`)."""
        pid = self.properties(self.subject.service).get("MainPID", "0")
        if pid in ("", "0"):
            return ""
        user: str = self.host.file(f"/proc/{pid}").user
        return user.strip()

    def dynamic_user(self) -> bool:
        return self.properties(self.subject.service).get("DynamicUser") == "yes"

    def point_symlink_at(self, version: int) -> None:
        self.machine.succeed(self._symlink_command(version))

    def _symlink_command(self, version: int) -> str:
        return replace_symlink_command(self.subject.image_name(version), self.symlink)

    def install_dropins(self, shutdown: str, fdstore_preserve: bool = False) -> None:
        """The subject's own host drop-ins and the one of the scenario's shutdown mode
        (``dropin_files``), in one round trip. No reload here: the attach that follows
        reloads the manager (portablectl does), which picks them up."""
        d = self.subject.dropin_dir
        files = {f"{d}/{name}": text
                 for name, text in dropin_files(self.subject, shutdown, fdstore_preserve).items()}
        self.machine.succeed(f"rm -f {d}/{DROPIN_PREFIX}*.conf\n{write_files_script(files)}")

    def attach(self, version: int, profile: str = "default", host_socket: bool = True) -> None:
        """Attach ``version`` and start the socket(s), in one guest round trip.

        The host sockets' unit files go in first, but the sockets start only after the
        attach: a socket refuses to start without its service. ``portablectl attach`` reloads
        the manager, so that one reload also picks up the socket files and any host drop-in
        written before it. An image portablectl refuses raises ImageRefused with its words.
        """
        self.clean_verified = False
        s = self.subject
        socket_files = (write_files_script({f"/etc/systemd/system/{p.name}": p.read_text()
                                            for p in s.sockets}) if host_socket else "")
        result = self.machine.execute(
            f"{socket_files}{self._symlink_command(version)} || exit 1;"
            f" portablectl attach --profile {profile} {self.symlink}"
            f" || {{ echo \"{REFUSED_MARK} $?\"; exit 1; }};"
            f" echo \"PWT-ATTACHED $(portablectl is-attached {self.symlink})\";"
            # A socket's start job ends when it is listening (or has failed).
            f" for u in {' '.join(s.socket_units)}; do systemctl start $u;"
            f" echo \"PWT-SOCKET $u $(systemctl is-active $u)\"; done",
            timeout=max(180.0, self.unit_timeout_s + 60),
        )
        said = dict(line.split(" ", 1) for line in result.stdout.splitlines()
                    if line.startswith(("PWT-ATTACHED ", f"{REFUSED_MARK} ")))
        if not result.succeeded or "PWT-ATTACHED" not in said:
            words = [line for line in (result.stdout + result.stderr).strip().splitlines()
                     if not line.startswith(REFUSED_MARK)][-3:]
            if REFUSED_MARK in said:
                raise ImageRefused(f"portablectl attach {self.symlink} (v{version}, {s.spec}): "
                                   + (" / ".join(words) or f"exit {said[REFUSED_MARK]}"))
            raise GuestError(f"the attach of v{version} failed (exit {result.rc}): "
                             + (" / ".join(words) or "no output"))
        if said["PWT-ATTACHED"] not in ATTACHED_STATES:
            raise GuestError(f"after attach, portablectl is-attached says "
                             f"{said['PWT-ATTACHED']!r}")
        sockets = dict(line.split(" ", 2)[1:] for line in result.stdout.splitlines()
                       if line.startswith("PWT-SOCKET ") and len(line.split(" ", 2)) == 3)
        for unit in s.socket_units:
            if sockets.get(unit, "").strip() != "active":
                # wait_for_unit says why (failed, or inactive with nothing queued), with status.
                self.machine.wait_for_unit(unit, timeout=self.unit_timeout_s)

    def observe(self, count: bool = False) -> ServiceFacts:
        """The service's state in one guest round trip (see ``ServiceFacts``).

        ``count``: also the subject's counter, read with one probe request in the same round
        trip, when the subject has a counter and its socket is active (None otherwise)."""
        s = self.subject
        probe = ""
        if count and s.counter_regex is not None:
            self.machine.copy_from_host(PROBE_SOURCE, f"{GUEST_DIR}/probe.py", mode="0755",
                                        once=True)
            probe = (f" answer=; [ \"$socket\" = active ] && answer=$(python3"
                     f" {GUEST_DIR}/probe.py --once --port {s.port}"
                     f" {shlex.join(s.client_args())} | tail -n1); echo \"answer=$answer\";")
        out = self.machine.execute(
            f"pid=$(systemctl show -P MainPID {s.service});"
            f" echo \"user=$( [ \"${{pid:-0}}\" != 0 ] && ps -o user= -p $pid)\";"
            f" echo \"dynamic=$(systemctl show -P DynamicUser {s.service})\";"
            f" echo \"since=$(systemctl show -P ActiveEnterTimestampMonotonic {s.socket})\";"
            f" socket=$(systemctl is-active {s.socket}); echo \"socket=$socket\";"
            f" echo \"attached=$(portablectl is-attached {self.symlink})\";"
            f" echo \"image=$(systemctl show -P RootImage {s.service})\";{probe}"
        ).stdout
        return ServiceFacts.parse(out, count=bool(probe))

    def socket_state(self) -> tuple[str, str]:
        """(ActiveEnterTimestampMonotonic, ActiveState) of the subject's socket: the first is
        unchanged as long as the socket was not restarted."""
        props = self.properties(self.subject.socket)
        return props.get("ActiveEnterTimestampMonotonic", ""), props.get("ActiveState", "")

    def socket_active_since(self) -> str:
        return self.socket_state()[0]

    def answer_once(self) -> dict[str, Any]:
        """One request from inside the guest, read as the probe reads it: its record
        (``greeting`` = the version's answer, ``visitor`` = the counter, or ``error``)."""
        self.machine.copy_from_host(PROBE_SOURCE, f"{GUEST_DIR}/probe.py", mode="0755",
                                    once=True)
        args = shlex.join(self.subject.client_args())
        out = self.machine.succeed(
            f"python3 {GUEST_DIR}/probe.py --once --port {self.subject.port} {args}")
        record: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return record

    def greeting(self) -> str:
        """The version's answer of one request ("" when the answer names none)."""
        return str(self.answer_once().get("greeting", ""))

    def wait_for_greeting(self, greeting: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            try:
                record = self.answer_once()
                seen = str(record.get("greeting") or record.get("error")
                           or f"status {record.get('status')}, no version in the answer")
            except GuestError as e:
                seen = str(e).splitlines()[0]
            if seen == greeting:
                return
            time.sleep(1)
        raise GuestError(f"service never answered {greeting!r} in {timeout:.0f} s; last: {seen!r}")

    def counter(self) -> int | None:
        """The subject's counter (None: it has none): the next answer's count, less the one
        that request added."""
        if self.subject.counter_regex is None:
            return None
        return count_of(self.answer_once())

    def reattach(self, version: int) -> Upgrade:
        """Flip the symlink to ``version`` and ``portablectl reattach --now`` (see quirks)."""
        self.point_symlink_at(version)
        target = reattach_target(self.systemd_major, self.subject.name, self.symlink)
        command = f"portablectl reattach --now {shlex.quote(target)}"
        out = self.machine.succeed(f"{timed(command + ' 2>&1')}; exit $rc",
                                   timeout=self.reattach_timeout_s)
        start, end, _rc, _ = parse_timed(out)
        return Upgrade(command, start, end, out)

    def units(self) -> list[str]:
        """Every unit a scenario may leave running: clients, the subject's sockets, service."""
        return [*CLIENT_UNITS, *self.subject.socket_units, self.subject.service]

    def reset(self) -> None:
        """Back to a clean guest: clients and units stopped, image detached, state wiped, and
        the clean check (``check_clean``'s) in the same round trip.

        One guest script (each SSH round trip costs ~0.3 s under TCG). Units are stopped one by
        one: one `systemctl stop A B` refuses the whole call on newer systemd when one of them
        is not loaded. The image is detached by the path the unit really runs from (RootImage=):
        after a failed run the symlink may point at another version. The script runs through
        ``machine`` rather than testinfra's ``host.run``: a detach can outlast a plain
        command's bound, and only ``machine`` takes a longer one.
        """
        s = self.subject
        sockets = " ".join(f"/etc/systemd/system/{u}" for u in s.socket_units)
        state = " ".join(f"/var/lib/private/{d} /var/lib/{d}" for d in s.state_directories)
        result = self.machine.execute(
            f"for u in {' '.join(self.units())}; do systemctl stop $u 2>/dev/null; done;"
            f" img=$(systemctl show -P RootImage {s.service} 2>/dev/null);"
            f' if [ -n "$img" ]; then portablectl detach "$img" || exit 1; fi;'
            f" rm -rf {sockets} {s.dropin_dir}/{DROPIN_PREFIX}*.conf"
            f" {' '.join(sysupdate_files(s))} {sysupdate.SOURCE_DIR} && systemctl daemon-reload"
            f" && {{ systemctl reset-failed {' '.join(s.socket_units)} {s.service}"
            f" {sysupdate.ROLLOUT_UNIT} 'pwt-pin@*' 2>/dev/null; true; }}"
            + (f" && rm -rf {state}" if state else "")
            + f" || exit 1; {self._clean_check_command()}",
            timeout=180,
        )
        if not result.succeeded:
            raise GuestError(f"the reset failed: {result.describe()}")
        self._judge_clean(result.stdout, "")

    def check_clean(self) -> None:
        """Raise GuestError unless no image is attached and no socket or client is active.

        Every image path and unit must answer with a clean word: a missing or cut-off answer
        (a broken SSH channel, a command that died) is dirty, never taken for clean. One
        round trip through testinfra (``host.run``): portablectl has no testinfra verb, and
        one ``host.service(u)`` per unit would cost a round trip each; ``systemctl
        is-active`` gives the state word (testinfra's ``is_running`` takes "activating" for
        not running, which is not clean either).
        """
        result = self.host.run(self._clean_check_command())
        self._judge_clean(result.stdout, "" if result.rc == 0
                          else f"\n`{self._clean_check_command()}` exited {result.rc}")

    def _clean_check_command(self) -> str:
        # No such image file (first test): is-attached prints nothing: that is detached.
        return (f"for p in {' '.join(self.subject.image_paths())}; do"
                f" s=$(portablectl is-attached $p 2>/dev/null); echo \"$p ${{s:-detached}}\";"
                f" done; for u in {' '.join(self.units())}; do"
                f" echo \"$u $(systemctl is-active $u)\"; done")

    def _judge_clean(self, answers: str, failed: str) -> None:
        dirty = unclean(answers, [*self.subject.image_paths(), *self.units()])
        if dirty:
            self.clean_verified = False
            raise GuestError(f"the guest is not clean: {dirty}{failed}")
        self.clean_verified = True

    def attached_image(self) -> str:
        """The image the attached service runs from (its RootImage=), or "" when none is.

        This tells the versions apart; ``portablectl is-attached`` does not: on 252 both
        <name>_1.raw and _2.raw say "running" when either is attached.
        """
        try:
            return self.properties(self.subject.service).get("RootImage", "")
        except AssertionError:  # testinfra: systemctl show exited non-zero
            return ""

    def attachment_state(self, image: str | None = None) -> str:
        """What ``portablectl is-attached IMAGE`` says: attached, running, detached, ….

        Asked by path: systemd 252 records the symlink's target (<name>_1.raw), so asking by
        the name says "detached" for an attached image. The exit status is 0 even for
        "detached": only the word counts.
        """
        out: str = self.host.run(f"portablectl is-attached {image or self.symlink}").stdout
        return out.strip()

    # --- systemd-sysupdate ------------------------------------------------------------
    def has_sysupdate(self) -> bool:
        exists: bool = self.host.file(sysupdate.SYSUPDATE).exists
        return exists

    def prepare_sysupdate(self, setup: sysupdate.SysupdateSetup, installed: list[int],
                          published: list[int]) -> None:
        """Transfer and rollout units in place; ``installed`` versions in /var/lib/portables
        (the others removed), ``published`` ones in the source (served over HTTP if asked)."""
        m = self.machine
        for path, text in ((setup.transfer_path, setup.transfer()),
                           (f"/etc/systemd/system/{sysupdate.ROLLOUT_UNIT}", setup.rollout_unit()),
                           (f"/etc/systemd/system/{sysupdate.PIN_UNIT}", setup.pin_unit())):
            m.succeed(f"mkdir -p $(dirname {path}) && cat > {path} <<'EOF'\n{text}EOF")
        m.succeed(f"mkdir -p {sysupdate.SOURCE_DIR} && systemctl daemon-reload")
        for v in self.subject.versions:
            if v not in installed:
                m.succeed(f"rm -f {self.subject.image_path(v)}")
        for v in published:
            self.publish(v)
        if setup.source == "http":
            m.succeed(
                f"systemd-run --quiet --collect --unit={sysupdate.HTTP_UNIT}"
                f" python3 -m http.server {sysupdate.HTTP_PORT} --bind 127.0.0.1"
                f" --directory {sysupdate.SOURCE_DIR}"
            )
            m.wait_for_open_port(sysupdate.HTTP_PORT, timeout=30)

    def publish(self, version: int, corrupt: bool = False) -> None:
        """Put ``version`` in the source with a fresh SHA256SUMS; ``corrupt`` changes the
        image's bytes after its checksum was written (a tampered download)."""
        name = self.subject.image_name(version)
        m = self.machine
        m.succeed(f"cp {STASH}/host/{name} {sysupdate.SOURCE_DIR}/{name}.tmp"
                  f" && mv {sysupdate.SOURCE_DIR}/{name}.tmp {sysupdate.SOURCE_DIR}/{name}"
                  f" && {sysupdate.sha256sums_command(self.subject.name)}")
        if corrupt:
            m.succeed(f"printf tampered >> {sysupdate.SOURCE_DIR}/{name}")

    def run_rollout(self, unit: str, version: int) -> tuple[Upgrade, bool]:
        """Start a rollout unit and wait for it; (timings, whether ``version`` now runs).

        The unit's exit status is not enough: a skipped ExecCondition (nothing new found)
        makes `systemctl start` succeed while nothing happened.
        """
        result = self.machine.execute(
            timed(f"systemctl start {unit}", extra=f"$(readlink {self.symlink})")
            # Enough lines that systemd-pull's refusal is among them (262 logs more after it).
            + f"; journalctl -q --no-pager -n 60 -u {unit}",
            timeout=self.reattach_timeout_s,
        )
        start, end, rc, extra = parse_timed(result.stdout)
        rollout = Upgrade(f"systemctl start {unit}", start, end, result.stdout)
        moved = bool(extra) and extra[0].endswith(self.subject.image_name(version))
        return rollout, rc == 0 and moved
