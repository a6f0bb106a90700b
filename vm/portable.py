"""The portable service in the guest: images, attach, host socket, reattach, reset."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vm import sysupdate
from vm.errors import GuestError, HarnessError
from vm.image import PortableImages
from vm.load import GUEST_DIR, PROBE_SOURCE
from vm.log import log
from vm.machine import Machine
from vm.quirks import reattach_target
from vm.subject import DROPIN_PREFIX, PORTABLES, Subject

STASH = "/var/lib/pwt-images"  # every uploaded image set, by socket location
# A host drop-in that selects a scenario's shutdown mode (drop-ins apply to portable units).
SHUTDOWN_DROPIN = f"{DROPIN_PREFIX}shutdown.conf"
# Transient units the scenarios start in the guest (load, probe, proxy).
CLIENT_UNITS = ("pwt-ab.service", "pwt-probe.service", "pwt-holders.service",
                "pwt-haproxy.service", sysupdate.HTTP_UNIT)


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


@dataclass(frozen=True)
class Reattach:
    """One ``portablectl reattach --now``: what ran and when (guest epoch seconds)."""

    command: str
    started: float
    ended: float
    output: str

    @property
    def duration_s(self) -> float:
        return self.ended - self.started


class ImageRefused(HarnessError):
    """portablectl would not attach (or inspect) an image: its own words end the run."""


class PortableService:
    """Drive the subject's portable service on ``machine`` (whose systemd is
    ``systemd_major``). Guest state is read through testinfra's ``host`` (same SSH
    connection, see vm/guest_host.py); commands and waits go through ``machine``."""

    def __init__(self, machine: Machine, systemd_major: int, reattach_timeout_s: float,
                 build_images: Callable[[str], PortableImages], subject: Subject, host: Any,
                 unit_timeout_s: float = 60.0) -> None:
        self.machine = machine
        self.host = host  # testinfra.host.Host
        self.subject = subject
        self.unit_timeout_s = unit_timeout_s
        self.systemd_major = systemd_major
        self.reattach_timeout_s = reattach_timeout_s
        self.build_images = build_images  # socket location -> images (built/cached on host)
        self.uploaded: set[str] = set()
        self.probe_copied = False

    @property
    def symlink(self) -> str:
        return self.subject.symlink

    def install_images(self, images: PortableImages) -> None:
        """Upload one set of images (host- or image-socket) to the guest's stash, each named
        ``<name>_<v>.raw`` there (portablectl matches units by that prefix)."""
        for v in self.subject.versions:
            self.machine.copy_from_host(
                images.path(v),
                f"{STASH}/{images.socket_location}/{self.subject.image_name(v)}")

    def use_images(self, socket_location: str) -> None:
        """Put that set's images in /var/lib/portables (a local copy: under a second).

        A set is built on the host and uploaded the first time a scenario needs it, and each
        image is inspected then: one portablectl refuses ends the run with its own words.
        """
        if socket_location not in self.uploaded:
            with log.nested(f"uploading the portable images (socket in {socket_location})"):
                self.install_images(self.build_images(socket_location))
            self.uploaded.add(socket_location)
            first = True
        else:
            first = False
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
        # ln -sfn then mv -T: the symlink is replaced atomically, never missing.
        link = self.symlink
        self.machine.succeed(
            f"ln -sfn {self.subject.image_name(version)} {link}.new && mv -T {link}.new {link}"
        )

    def install_dropins(self, shutdown: str) -> None:
        """The subject's own host drop-ins, and the one of the scenario's shutdown mode
        (none for "drain": the service's default stop). Named 50-pwt-*: reset removes them."""
        s = self.subject
        files = {f"{DROPIN_PREFIX}{name}": text for name, text in s.dropins.items()}
        if shutdown != "drain":
            files[SHUTDOWN_DROPIN] = s.shutdown[shutdown]
        script = [f"rm -f {s.dropin_dir}/{DROPIN_PREFIX}*.conf", f"mkdir -p {s.dropin_dir}"]
        script += [f"cat > {s.dropin_dir}/{name} <<'PWT_EOF'\n{text}PWT_EOF"
                   for name, text in files.items()]
        self.machine.succeed("\n".join([*script, "systemctl daemon-reload"]))

    def attach(self, version: int, profile: str = "default", host_socket: bool = True) -> None:
        """Attach ``version`` and start the socket (host socket: installed first)."""
        self.point_symlink_at(version)
        result = self.machine.execute(f"portablectl attach --profile {profile} {self.symlink}",
                                      timeout=180)
        if not result.succeeded:
            words = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise ImageRefused(f"portablectl attach {self.symlink} (v{version}, "
                               f"{self.subject.spec}): {' / '.join(words[-3:])}")
        state = self.attachment_state()
        if state not in ATTACHED_STATES:
            raise GuestError(f"after attach, portablectl is-attached says {state!r}")
        if host_socket:
            for source in self.subject.sockets:
                self.machine.copy_from_host(source, f"/etc/systemd/system/{source.name}")
            self.machine.succeed("systemctl daemon-reload")
        # Attach first, then start the socket: the socket refuses to start without its service.
        for unit in self.subject.socket_units:
            self.machine.succeed(f"systemctl start {unit}")
            self.machine.wait_for_unit(unit, timeout=self.unit_timeout_s)

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
        if not self.probe_copied:
            self.machine.copy_from_host(PROBE_SOURCE, f"{GUEST_DIR}/probe.py", mode="0755")
            self.probe_copied = True
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
        """The subject's counter after the load (None: it has none): the next answer's count,
        less the one that request added."""
        if self.subject.counter_regex is None:
            return None
        record = self.answer_once()
        if record.get("visitor") is None:
            raise GuestError(f"no counter in the answer after the load: {record}")
        return int(record["visitor"]) - 1

    def reattach(self, version: int) -> Reattach:
        """Flip the symlink to ``version`` and ``portablectl reattach --now`` (see quirks)."""
        self.point_symlink_at(version)
        target = reattach_target(self.systemd_major, self.subject.name, self.symlink)
        command = f"portablectl reattach --now {shlex.quote(target)}"
        out = self.machine.succeed(
            f"s=$(date +%s.%N); {command} 2>&1; rc=$?; e=$(date +%s.%N);"
            f" echo; echo \"PWT-TIMES $s $e $rc\"; exit $rc",
            timeout=self.reattach_timeout_s,
        )
        marker = out.strip().splitlines()[-1].split()
        return Reattach(command, float(marker[1]), float(marker[2]), out)

    def units(self) -> list[str]:
        """Every unit a scenario may leave running: clients, the subject's sockets, service."""
        return [*CLIENT_UNITS, *self.subject.socket_units, self.subject.service]

    def reset(self) -> None:
        """Back to a clean guest: clients and units stopped, image detached, state wiped.

        One guest script (each SSH round trip costs ~0.3 s under TCG). Units are stopped one by
        one: one `systemctl stop A B` refuses the whole call on newer systemd when one of them
        is not loaded. The image is detached by the path the unit really runs from (RootImage=):
        after a failed run the symlink may point at another version.
        """
        s = self.subject
        sockets = " ".join(f"/etc/systemd/system/{u}" for u in s.socket_units)
        state = " ".join(f"/var/lib/private/{d} /var/lib/{d}" for d in s.state_directories)
        self.machine.succeed(
            f"for u in {' '.join(self.units())}; do systemctl stop $u 2>/dev/null; done;"
            f" img=$(systemctl show -P RootImage {s.service} 2>/dev/null);"
            f' if [ -n "$img" ]; then portablectl detach "$img" || exit 1; fi;'
            f" rm -rf {sockets} {s.dropin_dir}/{DROPIN_PREFIX}*.conf"
            f" {' '.join(sysupdate_files(s))} {sysupdate.SOURCE_DIR} && systemctl daemon-reload"
            f" && {{ systemctl reset-failed {' '.join(s.socket_units)} {s.service}"
            f" {sysupdate.ROLLOUT_UNIT} 'pwt-pin@*' 2>/dev/null; true; }}"
            + (f" && rm -rf {state}" if state else ""),
            timeout=180,
        )
        self.check_clean()

    def check_clean(self) -> None:
        """Raise GuestError unless no image is attached and no socket or client is active.

        Every image path and unit must answer with a clean word: a missing or cut-off answer
        (a broken SSH channel, a command that died) is dirty, never taken for clean. Units are
        read with testinfra (``host.service(u).systemd_properties``); portablectl has no
        testinfra verb, so the images are asked in one ``host.run``.
        """
        paths = self.subject.image_paths()
        result = self.host.run(
            # No such image file (first test): is-attached prints nothing: that is detached.
            f"for p in {' '.join(paths)}; do s=$(portablectl is-attached $p 2>/dev/null);"
            f" echo \"$p ${{s:-detached}}\"; done"
        )
        answers = [result.stdout]
        for unit in self.units():
            word = self.properties(unit).get("ActiveState")
            if word is not None:
                answers.append(f"{unit} {word}")
        dirty = unclean("\n".join(answers), [*paths, *self.units()])
        if dirty:
            failed = "" if result.rc == 0 else f"\n`{result.command!r}` exited {result.rc}"
            raise GuestError(f"the guest is not clean: {dirty}{failed}")

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

    def run_rollout(self, unit: str, version: int) -> tuple[Reattach, bool]:
        """Start a rollout unit and wait for it; (timings, whether ``version`` now runs).

        The unit's exit status is not enough: a skipped ExecCondition (nothing new found)
        makes `systemctl start` succeed while nothing happened.
        """
        result = self.machine.execute(
            f"s=$(date +%s.%N); systemctl start {unit}; rc=$?; e=$(date +%s.%N);"
            f" journalctl -q --no-pager -n 30 -u {unit}; echo;"
            f" echo \"PWT-TIMES $s $e $rc $(readlink {self.symlink})\"",
            timeout=self.reattach_timeout_s,
        )
        marker = result.stdout.strip().splitlines()[-1].split()
        rollout = Reattach(f"systemctl start {unit}", float(marker[1]), float(marker[2]),
                           result.stdout)
        moved = len(marker) > 4 and marker[4].endswith(self.subject.image_name(version))
        return rollout, marker[3] == "0" and moved
