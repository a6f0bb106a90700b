"""The portable service in the guest: images, attach, host socket, reattach, reset."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vm import sysupdate
from vm.errors import GuestError
from vm.image import VERSIONS, PortableImages
from vm.log import log
from vm.machine import CommandResult, Machine
from vm.quirks import reattach_target

NAME = "portable-walkthrough"
PORTABLES = "/var/lib/portables"
STASH = "/var/lib/pwt-images"  # every uploaded image set, by socket location
SYMLINK = f"{PORTABLES}/{NAME}.raw"
SERVICE = f"{NAME}.service"
SOCKET = f"{NAME}.socket"
HOST_SOCKET_PATH = f"/etc/systemd/system/{SOCKET}"
HOST_SOCKET_SOURCE = Path(__file__).resolve().parent.parent / "images" / SOCKET
# With DynamicUser (the default profile) the state directory is under /var/lib/private.
COUNTER_GLOB = f"/var/lib/private/{NAME}/visitors /var/lib/{NAME}/visitors"
PORT = 8080
# A host drop-in that sets the server's shutdown mode (drop-ins apply to portable units too).
SHUTDOWN_DROPIN = f"/etc/systemd/system/{SERVICE}.d/50-pwt-shutdown.conf"
# Transient units the scenarios start in the guest (load, probe, proxy).
CLIENT_UNITS = ("pwt-ab.service", "pwt-probe.service", "pwt-holders.service",
                "pwt-haproxy.service", sysupdate.HTTP_UNIT)
# What the sysupdate scenarios install on the host; removed by reset.
SYSUPDATE_FILES = (f"{sysupdate.TRANSFER_STEM}.transfer", f"{sysupdate.TRANSFER_STEM}.conf",
                   f"/etc/systemd/system/{sysupdate.ROLLOUT_UNIT}",
                   f"/etc/systemd/system/{sysupdate.PIN_UNIT}")
# The evidence saved for a run that did not simply pass: file -> the guest command that wrote
# it. README's "Reading the report" lists the same commands (a unit test holds them equal).
EVIDENCE_COMMANDS = {
    "service-journal.txt": "journalctl -b --no-pager -o short-monotonic "
                           "-u portable-walkthrough.service -u portable-walkthrough.socket",
    "portabled-journal.txt": "journalctl -b --no-pager -o short-monotonic "
                             "-u systemd-portabled.service",
    "clients-journal.txt": "journalctl -b --no-pager -o short-monotonic -u pwt-ab.service "
                           "-u pwt-probe.service -u pwt-holders.service -u pwt-haproxy.service",
    "rollout-journal.txt": "journalctl -b --no-pager -o short-monotonic "
                           "-u pwt-rollout.service -u 'pwt-pin@*.service' "
                           "-u pwt-source-http.service",
    "portablectl-list.txt": "portablectl list; echo; systemctl status --no-pager "
                            "'portable-walkthrough*'",
    "ab.out": "cat /run/pwt/ab.out",
    "probe.jsonl": "cat /run/pwt/probe.jsonl",
    "holders.jsonl": "cat /run/pwt/holders.jsonl",
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
class ServiceFacts:
    """What a scenario reads of the service before and after its load (one round trip)."""

    main_user: str  # the main process's user, "" when it does not run
    dynamic_user: bool
    socket_since: str  # the socket's ActiveEnterTimestampMonotonic
    socket_state: str
    counter: int | None  # the visitor count, None before the first visitor
    attached_state: str  # portablectl is-attached
    attached_image: str  # the unit's RootImage=

    @classmethod
    def parse(cls, text: str) -> ServiceFacts:
        """From ``key=value`` lines; a missing key is an error (a cut-off answer)."""
        said = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        missing = [k for k in ("user", "dynamic", "since", "socket", "counter", "attached",
                               "image") if k not in said]
        if missing:
            raise GuestError(f"the service's state came back without {missing}: {text!r}")
        counter = said["counter"].strip()
        return cls(said["user"].strip(), said["dynamic"].strip() == "yes", said["since"].strip(),
                   said["socket"].strip(), int(counter) if counter.isdigit() else None,
                   said["attached"].strip(), said["image"].strip())


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
class Reattach:
    """One ``portablectl reattach --now``: what ran and when (guest epoch seconds)."""

    command: str
    started: float
    ended: float
    output: str

    @property
    def duration_s(self) -> float:
        return self.ended - self.started


class PortableService:
    """Drive ``portable-walkthrough`` on ``machine`` (whose systemd is ``systemd_major``)."""

    def __init__(self, machine: Machine, systemd_major: int, reattach_timeout_s: float,
                 build_images: Callable[[str], PortableImages],
                 unit_timeout_s: float = 60.0) -> None:
        self.machine = machine
        self.unit_timeout_s = unit_timeout_s
        self.systemd_major = systemd_major
        self.reattach_timeout_s = reattach_timeout_s
        self.build_images = build_images  # socket location -> images (built/cached on host)
        self.uploaded: set[str] = set()
        # True from a check that found the guest clean until the next attach: the check at a
        # test's start is skipped when the previous test's reset has just made it.
        self.clean_verified = False

    def install_images(self, images: PortableImages) -> None:
        """Upload one set of images (host- or image-socket) to the guest's stash."""
        for v in VERSIONS:
            src = images.path(v)
            self.machine.copy_from_host(src, f"{STASH}/{images.socket_location}/{src.name}")

    def use_images(self, socket_location: str) -> None:
        """Put that set's images in /var/lib/portables (a local copy: under a second).

        A set is built on the host and uploaded the first time a scenario needs it.
        """
        if socket_location not in self.uploaded:
            with log.nested(f"uploading the portable images (socket in {socket_location})"):
                self.install_images(self.build_images(socket_location))
            self.uploaded.add(socket_location)
        self.machine.succeed(
            f"for f in {STASH}/{socket_location}/*.raw; do"
            f" cp --sparse=always \"$f\" {PORTABLES}/$(basename \"$f\").new &&"
            f" mv -f {PORTABLES}/$(basename \"$f\").new {PORTABLES}/$(basename \"$f\"); done"
        )

    def main_process_user(self) -> str:
        """The user the service's main process runs as (a dynamic user under `default`)."""
        pid = self.machine.succeed(f"systemctl show -P MainPID {SERVICE}").strip()
        if pid in ("", "0"):
            return ""
        return self.machine.succeed(f"ps -o user= -p {pid}").strip()

    def dynamic_user(self) -> bool:
        return self.machine.succeed(f"systemctl show -P DynamicUser {SERVICE}").strip() == "yes"

    def point_symlink_at(self, version: int) -> None:
        # ln -sfn then mv -T: the symlink is replaced atomically, never missing.
        self.machine.succeed(
            f"ln -sfn {NAME}_{version}.raw {SYMLINK}.new && mv -T {SYMLINK}.new {SYMLINK}"
        )

    def attach(self, version: int, profile: str = "default", host_socket: bool = True) -> None:
        """Attach ``version`` and start the socket, in one guest round trip.

        The host socket's unit file goes in first, but the socket starts only after the attach:
        it refuses to start without its service. ``portablectl attach`` reloads the manager, so
        that one reload also picks up the socket file and any host drop-in written before it.
        """
        self.clean_verified = False
        socket_file = ""
        if host_socket:
            socket_file = (f"mkdir -p {Path(HOST_SOCKET_PATH).parent} && cat > {HOST_SOCKET_PATH}"
                           f" <<'PWT-EOF'\n{HOST_SOCKET_SOURCE.read_text()}PWT-EOF\n")
        result = self.machine.execute(
            f"{socket_file}"
            f"ln -sfn {NAME}_{version}.raw {SYMLINK}.new && mv -T {SYMLINK}.new {SYMLINK} &&"
            f" portablectl attach --profile {profile} {SYMLINK} || exit 1;"
            f" echo \"PWT-ATTACHED $(portablectl is-attached {SYMLINK})\";"
            # A socket's start job ends when it is listening (or has failed).
            f" systemctl start {SOCKET}; echo \"PWT-SOCKET $(systemctl is-active {SOCKET})\"",
            timeout=max(180.0, self.unit_timeout_s + 60),
        )
        said = dict(line.split(" ", 1) for line in result.stdout.splitlines()
                    if line.startswith(("PWT-ATTACHED ", "PWT-SOCKET ")))
        if not result.succeeded or "PWT-ATTACHED" not in said:
            words = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise GuestError(f"portablectl attach failed (exit {result.rc}): "
                             + (" / ".join(words) or "no output"))
        if said["PWT-ATTACHED"] not in ATTACHED_STATES:
            raise GuestError(f"after attach, portablectl is-attached says "
                             f"{said['PWT-ATTACHED']!r}")
        if said.get("PWT-SOCKET") != "active":
            # wait_for_unit says why (failed, or inactive with nothing queued) with its status.
            self.machine.wait_for_unit(SOCKET, timeout=self.unit_timeout_s)

    def observe(self) -> ServiceFacts:
        """The service's state in one guest round trip (see ``ServiceFacts``)."""
        out = self.machine.execute(
            f"pid=$(systemctl show -P MainPID {SERVICE});"
            f" echo \"user=$( [ \"${{pid:-0}}\" != 0 ] && ps -o user= -p $pid)\";"
            f" echo \"dynamic=$(systemctl show -P DynamicUser {SERVICE})\";"
            f" echo \"since=$(systemctl show -P ActiveEnterTimestampMonotonic {SOCKET})\";"
            f" echo \"socket=$(systemctl is-active {SOCKET})\";"
            f" echo \"counter=$(cat $(ls {COUNTER_GLOB} 2>/dev/null | head -n1) 2>/dev/null)\";"
            f" echo \"attached=$(portablectl is-attached {SYMLINK})\";"
            f" echo \"image=$(systemctl show -P RootImage {SERVICE})\""
        ).stdout
        return ServiceFacts.parse(out)

    def socket_state(self) -> str:
        """``systemctl is-active`` of the socket (the user side asks the user's manager)."""
        return self.machine.unit_state(SOCKET)

    def socket_active_since(self) -> str:
        """The socket's ActiveEnterTimestampMonotonic: unchanged as long as it was not restarted."""
        return self.machine.succeed(
            f"systemctl show -P ActiveEnterTimestampMonotonic {SOCKET}"
        ).strip()

    def greeting(self) -> str:
        """One request from inside the guest; the greeting word of the answer."""
        out = self.machine.succeed(
            "python3 -c 'import socket; s=socket.create_connection((\"127.0.0.1\", 8080), 30);"
            " s.sendall(b\"GET / HTTP/1.0\\r\\n\\r\\n\"); import sys;"
            " sys.stdout.write(s.makefile(\"rb\").read().decode())'"
        )
        body = out.split("\r\n\r\n", 1)[-1]
        return body.split("!", 1)[0]

    def wait_for_greeting(self, greeting: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            try:
                seen = self.greeting()
            except GuestError as e:
                seen = str(e).splitlines()[0]
            if seen == greeting:
                return
            time.sleep(1)
        raise GuestError(f"service never answered {greeting!r} in {timeout:.0f} s; last: {seen!r}")

    def counter(self) -> int:
        out = self.machine.succeed(f"cat $(ls {COUNTER_GLOB} 2>/dev/null | head -n1)")
        return int(out.strip())

    def reattach(self, version: int) -> Reattach:
        """Flip the symlink to ``version`` and ``portablectl reattach --now`` (see quirks)."""
        self.point_symlink_at(version)
        target = reattach_target(self.systemd_major, NAME, SYMLINK)
        command = f"portablectl reattach --now {shlex.quote(target)}"
        out = self.machine.succeed(f"{timed(command + ' 2>&1')}; exit $rc",
                                   timeout=self.reattach_timeout_s)
        start, end, _rc, _ = parse_timed(out)
        return Reattach(command, start, end, out)

    def reset(self) -> None:
        """Back to a clean guest: clients and units stopped, image detached, state wiped.

        One guest script (each SSH round trip costs ~0.3 s under TCG). Units are stopped one by
        one: one `systemctl stop A B` refuses the whole call on newer systemd when one of them
        is not loaded. The image is detached by the path the unit really runs from (RootImage=):
        after a failed run the symlink may point at another version.
        """
        units = " ".join((*CLIENT_UNITS, SOCKET, SERVICE))
        result = self.machine.execute(
            f"for u in {units}; do systemctl stop $u 2>/dev/null; done;"
            f" img=$(systemctl show -P RootImage {SERVICE} 2>/dev/null);"
            f' if [ -n "$img" ]; then portablectl detach "$img" || exit 1; fi;'
            f" rm -rf {HOST_SOCKET_PATH} {SHUTDOWN_DROPIN} {' '.join(SYSUPDATE_FILES)}"
            f" {sysupdate.SOURCE_DIR} && systemctl daemon-reload"
            f" && {{ systemctl reset-failed {SOCKET} {SERVICE} {sysupdate.ROLLOUT_UNIT}"
            f" 'pwt-pin@*' 2>/dev/null; true; }}"
            f" && rm -rf /var/lib/private/{NAME} /var/lib/{NAME} || exit 1;"
            f" {self._clean_check_command()}",
            timeout=180,
        )
        if not result.succeeded:
            raise GuestError(f"the reset failed: {result.describe()}")
        self._judge_clean(result)

    def check_clean(self) -> None:
        """Raise GuestError unless no image is attached and no socket or client is active.

        Every image path and unit must answer with a clean word: a missing or cut-off answer
        (a broken SSH channel, a command that died) is dirty, never taken for clean.
        """
        self._judge_clean(self.machine.execute(self._clean_check_command()))

    def _clean_check_command(self) -> str:
        # No such image file (first test): is-attached prints nothing: that is detached.
        return (f"for p in {' '.join(self.image_paths())}; do"
                f" s=$(portablectl is-attached $p 2>/dev/null); echo \"$p ${{s:-detached}}\";"
                f" done; for u in {' '.join([*CLIENT_UNITS, SOCKET, SERVICE])}; do"
                f" echo \"$u $(systemctl is-active $u)\"; done")

    def _judge_clean(self, result: CommandResult) -> None:
        dirty = unclean(result.stdout, [*self.image_paths(), *CLIENT_UNITS, SOCKET, SERVICE])
        if dirty:
            self.clean_verified = False
            raise GuestError(f"the guest is not clean: {dirty}"
                             + ("" if result.succeeded else f"\n{result.describe()}"))
        self.clean_verified = True

    def attached_image(self) -> str:
        """The image the attached service runs from (its RootImage=), or "" when none is.

        This tells the versions apart; ``portablectl is-attached`` does not: on 252 both
        portable-walkthrough_1.raw and _2.raw say "running" when either is attached.
        """
        result = self.machine.execute(f"systemctl show -P RootImage {SERVICE}")
        return result.stdout.strip() if result.succeeded else ""

    @staticmethod
    def image_path(version: int) -> str:
        return f"{PORTABLES}/{NAME}_{version}.raw"

    @staticmethod
    def image_paths() -> list[str]:
        return [f"{PORTABLES}/{NAME}_{v}.raw" for v in VERSIONS] + [SYMLINK]

    def attachment_state(self, image: str = SYMLINK) -> str:
        """What ``portablectl is-attached IMAGE`` says: attached, running, detached, ….

        Asked by path: systemd 252 records the symlink's target (portable-walkthrough_1.raw),
        so asking by the name "portable-walkthrough" says "detached" for an attached image.
        The exit status is 0 even for "detached": only the word counts.
        """
        return self.machine.execute(f"portablectl is-attached {image}").stdout.strip()

    # --- systemd-sysupdate ------------------------------------------------------------
    def has_sysupdate(self) -> bool:
        return self.machine.execute(f"test -x {sysupdate.SYSUPDATE}").succeeded

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
        for v in VERSIONS:
            if v not in installed:
                m.succeed(f"rm -f {self.image_path(v)}")
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
        name = f"{NAME}_{version}.raw"
        m = self.machine
        m.succeed(f"cp {STASH}/host/{name} {sysupdate.SOURCE_DIR}/{name}.tmp"
                  f" && mv {sysupdate.SOURCE_DIR}/{name}.tmp {sysupdate.SOURCE_DIR}/{name}"
                  f" && {sysupdate.sha256sums_command()}")
        if corrupt:
            m.succeed(f"printf tampered >> {sysupdate.SOURCE_DIR}/{name}")

    def run_rollout(self, unit: str, version: int) -> tuple[Reattach, bool]:
        """Start a rollout unit and wait for it; (timings, whether ``version`` now runs).

        The unit's exit status is not enough: a skipped ExecCondition (nothing new found)
        makes `systemctl start` succeed while nothing happened.
        """
        result = self.machine.execute(
            timed(f"systemctl start {unit}", extra=f"$(readlink {SYMLINK})")
            + f"; journalctl -q --no-pager -n 30 -u {unit}",
            timeout=self.reattach_timeout_s,
        )
        start, end, rc, extra = parse_timed(result.stdout)
        rollout = Reattach(f"systemctl start {unit}", start, end, result.stdout)
        moved = bool(extra) and extra[0].endswith(f"{NAME}_{version}.raw")
        return rollout, rc == 0 and moved
