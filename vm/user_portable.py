"""The portable service attached for a user's service manager (`portablectl --user`, v260+).

The same images as the system scenarios, but everything belongs to one unprivileged user with
lingering (so its manager runs with nobody logged in): the images sit in the user's home, the
socket is a user unit (``~/.config/systemd/user/portable-walkthrough.socket``) and portabled is
the user's own (``systemd-portabled.service`` in the user manager). Commands run as that user
the way systemd's TEST-29-PORTABLE does: ``runuser -u USER -- env XDG_RUNTIME_DIR=… CMD``.

An unprivileged manager cannot mount an image itself: systemd-mountfsd mounts it, and
systemd-nsresourced hands out the user namespace, which needs the bpf LSM, libbpf and a kernel
>= 6.5. ``missing_pieces`` names what a guest lacks (the scenario is then skipped with that
list); the box recipe (vm/boxes.py, debian-sid) provides them.

Our images carry no verity signature, so mountfsd asks polkit before mounting one for a user
(``io.systemd.mount-file-system.mount-untrusted-image``, auth_admin by default): a polkit rule
lets the test user do it, where TEST-29 signs its images instead.
"""

from __future__ import annotations

import shlex
import time

from vm.errors import GuestError
from vm.machine import Machine
from vm.portable import (
    ATTACHED_STATES,
    CLEAN_WORDS,
    HOST_SOCKET_SOURCE,
    NAME,
    SERVICE,
    SOCKET,
    STASH,
    PortableService,
    Reattach,
    ServiceFacts,
    parse_timed,
    timed,
    unclean,
)
from vm.quirks import (
    USER_PORTABLE_MIN_KERNEL,
    USER_PORTABLE_MIN_POLKIT,
    user_portables_missing,
)

USER = "pwt-user"
HOME = f"/home/{USER}"
IMAGE_DIR = f"{HOME}/portables"  # the user's copies of the images; attached by path
USER_SYMLINK = f"{IMAGE_DIR}/{NAME}.raw"
UNIT_DIR = f"{HOME}/.config/systemd/user"
USER_SOCKET_PATH = f"{UNIT_DIR}/{SOCKET}"
STATE_DIR = f"{HOME}/pwt-state"
STATE_DROPIN = f"{UNIT_DIR}/{SERVICE}.d/50-pwt-state.conf"
POLKIT_RULE = "/etc/polkit-1/rules.d/50-pwt-user-portable.rules"

# The image has an empty /var/lib/portable-walkthrough to mount the state on (it is read-only:
# a mount point that is not there cannot be made). A user manager would put StateDirectory= at
# the same path as on the host (under ~/.local/state), which the image has no directory for;
# so the drop-in binds a directory of the user's onto the image's mount point instead.
STATE_DROPIN_TEXT = (
    "# portable-walkthrough tests: the visitor count on the image's own mount point\n"
    "[Service]\n"
    "StateDirectory=\n"
    f"BindPaths={STATE_DIR}:/var/lib/{NAME}\n"
    f"Environment=STATE_DIRECTORY=/var/lib/{NAME}\n"
)

POLKIT_RULE_TEXT = (
    "// portable-walkthrough tests: the test user may have systemd-mountfsd mount the\n"
    "// (unsigned) portable images without an interactive authentication.\n"
    "polkit.addRule(function(action, subject) {\n"
    f'    if (action.id.indexOf("io.systemd.mount-file-system.") == 0 && subject.user == "{USER}")'
    " {\n"
    "        return polkit.Result.YES;\n"
    "    }\n"
    "});\n"
)

# One round trip: every fact missing_pieces needs, one KEY=VALUE line each (TEST-29's checks).
PREFLIGHT = (
    "t() { test -e \"$1\" && echo yes || echo no; };"
    " echo mountfsd=$(t /usr/lib/systemd/system/systemd-mountfsd.socket);"
    " echo nsresourced=$(t /usr/lib/systemd/system/systemd-nsresourced.socket);"
    " echo lsm=$(cat /sys/kernel/security/lsm 2>/dev/null);"
    " echo libbpf=$(ls /usr/lib/*/libbpf.so.1 /usr/lib64/libbpf.so.1 2>/dev/null | head -n1);"
    " echo kernel=$(uname -r);"
    " echo polkit=$(pkcheck --version 2>/dev/null | awk '{print $3}');"
    " echo features=$(systemctl --version | sed -n 2p);"
    " echo userbus=$(t /usr/lib/systemd/user/dbus.socket)"
)


def parse_facts(output: str) -> dict[str, str]:
    """PREFLIGHT's KEY=VALUE lines as a dict (values may be empty)."""
    facts = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def _leading_numbers(version: str) -> tuple[int, ...]:
    """(7, 2, 13) of "7.2.13+deb14-amd64"; () when it does not start with a number."""
    numbers = []
    for part in version.split("."):
        digits = ""
        for c in part:
            if not c.isdigit():
                break
            digits += c
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) < len(part):
            break
    return tuple(numbers)


def missing_pieces(systemd_major: int, facts: dict[str, str]) -> list[str]:
    """What this guest lacks for a user portable service, each named with where it comes
    from; empty when nothing is missing. ``facts`` is PREFLIGHT's answer."""
    too_old = user_portables_missing(systemd_major)
    if too_old is not None:
        return [too_old]
    missing = []
    for daemon in ("mountfsd", "nsresourced"):
        if facts.get(daemon) != "yes":
            missing.append(f"systemd-{daemon} (systemd-{daemon}.socket; Debian ships it in "
                           "systemd-container)")
    lsm = facts.get("lsm", "")
    if "bpf" not in lsm.split(","):
        missing.append(f"the bpf LSM (active: {lsm or 'unknown'}; boot with lsm=…,bpf: the box "
                       "recipe's kernel_cmd_line)")
    if not facts.get("libbpf"):
        missing.append("libbpf.so.1 (Debian: libbpf1; systemd-nsresourced loads it)")
    kernel = facts.get("kernel", "")
    if _leading_numbers(kernel)[:2] < USER_PORTABLE_MIN_KERNEL:
        want = ".".join(map(str, USER_PORTABLE_MIN_KERNEL))
        missing.append(f"a kernel >= {want} (this one is {kernel or 'unknown'})")
    polkit = _leading_numbers(facts.get("polkit", ""))
    if not polkit or polkit[0] < USER_PORTABLE_MIN_POLKIT:
        missing.append(f"polkit >= {USER_PORTABLE_MIN_POLKIT} (pkcheck says "
                       f"{facts.get('polkit') or 'nothing'}; Debian: polkitd)")
    if "-BTF" in facts.get("features", "").split():
        missing.append("a systemd built with BTF (systemctl --version says -BTF)")
    if facts.get("userbus") != "yes":
        missing.append("the user's D-Bus for portablectl --user (Debian: dbus-user-session)")
    return missing


def image_path(version: int) -> str:
    """The user's copy of ``version``'s image: what the unit's RootImage= must name."""
    return f"{IMAGE_DIR}/{NAME}_{version}.raw"


class UserPortableService(PortableService):
    """The walkthrough attached for USER's service manager; the verbs of PortableService with
    the user's units, images and portabled. ``setup`` makes the user and its manager first."""

    def __init__(self, system: PortableService) -> None:
        super().__init__(system.machine, system.systemd_major, system.reattach_timeout_s,
                         system.build_images, unit_timeout_s=system.unit_timeout_s)
        self.uploaded = system.uploaded  # one upload per session, shared with the system side
        self.uid = 0

    # --- the user and its manager -------------------------------------------------------
    def setup(self) -> None:
        """USER with lingering and a running manager whose bus answers; mountfsd and
        nsresourced listening (Debian installs their sockets without enabling them); the
        polkit rule for the unsigned images. Idempotent."""
        out = self.machine.succeed(
            f"id -u {USER} >/dev/null 2>&1 || useradd --create-home --shell /usr/sbin/nologin"
            f" {USER}; uid=$(id -u {USER}); loginctl enable-linger {USER}"
            " && systemctl start systemd-mountfsd.socket systemd-nsresourced.socket"
            " && systemctl start user@$uid.service"
            " && for i in $(seq 1 60); do test -S /run/user/$uid/bus && break; sleep 1; done;"
            f" test -S /run/user/$uid/bus && mkdir -p $(dirname {POLKIT_RULE})"
            f" && cat > {POLKIT_RULE} <<'EOF'\n{POLKIT_RULE_TEXT}EOF\necho \"PWT-UID $uid\"",
            timeout=120,
        )
        self.uid = int(out.strip().splitlines()[-1].split()[1])
        # D-Bus would activate it at the first call; started here, a failure to start is
        # reported as itself, not as a portablectl time-out.
        self.as_user("systemctl --user start systemd-portabled.service")

    def user_command(self, command: str) -> str:
        """``command`` as a root shell runs it as USER, talking to USER's manager and bus."""
        runtime = f"/run/user/{self.uid}"
        return (f"runuser -u {USER} -- env XDG_RUNTIME_DIR={runtime}"
                f" DBUS_SESSION_BUS_ADDRESS=unix:path={runtime}/bus bash -c"
                f" {shlex.quote(command)}")

    def as_user(self, command: str, timeout: float = 120.0) -> str:
        """Run ``command`` as USER; its stdout; GuestError if it fails."""
        return self.machine.succeed(self.user_command(command), timeout=timeout)

    # --- the verbs of PortableService, for the user ---------------------------------------
    def use_images(self, socket_location: str) -> None:
        """The images of that set in USER's IMAGE_DIR, owned by USER (mountfsd opens them
        with the user's rights)."""
        super().use_images(socket_location)
        self.machine.succeed(
            f"install -d -o {USER} -g {USER} -m 0755 {IMAGE_DIR}"
            f" && for f in {STASH}/{socket_location}/*.raw; do"
            f" cp --sparse=always \"$f\" {IMAGE_DIR}/ || exit 1; done"
            f" && chown {USER}:{USER} {IMAGE_DIR}/*.raw"
        )

    def point_symlink_at(self, version: int) -> None:
        self.machine.succeed(
            f"ln -sfn {NAME}_{version}.raw {USER_SYMLINK}.new && mv -T {USER_SYMLINK}.new"
            f" {USER_SYMLINK}"
        )

    def attach(self, version: int, profile: str = "default", host_socket: bool = True) -> None:
        """Attach ``version`` for USER (--runtime, like TEST-29), then the user socket."""
        self.point_symlink_at(version)
        m = self.machine
        m.succeed(f"install -d -o {USER} -g {USER} {STATE_DIR} {UNIT_DIR}"
                  f" {UNIT_DIR}/{SERVICE}.d"
                  f" && cat > {STATE_DROPIN} <<'EOF'\n{STATE_DROPIN_TEXT}EOF")
        if host_socket:
            m.copy_from_host(HOST_SOCKET_SOURCE, USER_SOCKET_PATH)
        m.succeed(f"chown -R {USER}:{USER} {HOME}/.config")
        self.as_user("systemctl --user daemon-reload")
        self.as_user(f"portablectl --user attach --runtime --profile {profile} {USER_SYMLINK}",
                     timeout=180)
        state = self.attachment_state()
        if state not in ATTACHED_STATES:
            raise GuestError(f"after portablectl --user attach, is-attached says {state!r}")
        self.as_user(f"systemctl --user start {SOCKET}")
        deadline = time.monotonic() + self.unit_timeout_s
        while self.socket_state() != "active":
            if time.monotonic() > deadline:
                raise GuestError(f"the user's {SOCKET} is {self.socket_state()!r}, not active")
            time.sleep(1)

    def _user_show(self, prop: str, unit: str) -> str:
        result = self.machine.execute(self.user_command(f"systemctl --user show -P {prop} {unit}"))
        return result.stdout.strip() if result.succeeded else ""

    def main_process_user(self) -> str:
        pid = self._user_show("MainPID", SERVICE)
        if pid in ("", "0"):
            return ""
        return self.machine.succeed(f"ps -o user= -p {pid}").strip()

    def dynamic_user(self) -> bool:
        return self._user_show("DynamicUser", SERVICE) == "yes"

    def socket_active_since(self) -> str:
        return self._user_show("ActiveEnterTimestampMonotonic", SOCKET)

    def socket_state(self) -> str:
        return self.machine.execute(
            self.user_command(f"systemctl --user is-active {SOCKET}"), 30).stdout.strip()

    def counter(self) -> int:
        return int(self.machine.succeed(f"cat {STATE_DIR}/visitors").strip())

    def attached_image(self) -> str:
        return self._user_show("RootImage", SERVICE)

    def attachment_state(self, image: str = USER_SYMLINK) -> str:
        return self.machine.execute(
            self.user_command(f"portablectl --user is-attached {image}")).stdout.strip()

    def observe(self) -> ServiceFacts:
        """The user side's state, asked of the user's manager (one question at a time)."""
        counter = self.machine.execute(f"cat {STATE_DIR}/visitors").stdout.strip()
        return ServiceFacts(self.main_process_user(), self.dynamic_user(),
                            self.socket_active_since(), self.socket_state(),
                            int(counter) if counter.isdigit() else None,
                            self.attachment_state(), self.attached_image())

    def reattach(self, version: int) -> Reattach:
        """Flip the user's symlink, ``portablectl --user reattach --now --runtime`` by its path
        (the name would be looked up in the user's image search path, not IMAGE_DIR)."""
        self.point_symlink_at(version)
        command = f"portablectl --user reattach --now --runtime {USER_SYMLINK}"
        out = self.machine.succeed(f"{timed(self.user_command(command + ' 2>&1'))}; exit $rc",
                                   timeout=self.reattach_timeout_s)
        start, end, _rc, _ = parse_timed(out)
        return Reattach(command, start, end, out)

    def journal(self) -> str:
        """USER's manager and units this boot: the evidence the system journals lack."""
        return self.machine.execute(
            f"journalctl -b --no-pager -o short-monotonic -n 200 _UID={self.uid}"
            f" + _SYSTEMD_UNIT=user@{self.uid}.service", 60).stdout

    def reset(self) -> None:
        """Detach, stop and remove everything USER had, then stop its manager (lingering off):
        no user socket may stay on the port the next system scenario listens on."""
        m = self.machine
        if not self.uid:  # setup broke before the user existed: only files to remove
            m.succeed(f"rm -rf {POLKIT_RULE}; loginctl disable-linger {USER} 2>/dev/null; true")
            return
        stop = "; ".join(f"systemctl --user stop {u} 2>/dev/null" for u in (SOCKET, SERVICE))
        detach = (f"img=$(systemctl --user show -P RootImage {SERVICE} 2>/dev/null);"
                  ' if [ -n "$img" ]; then portablectl --user detach --runtime "$img"; fi')
        m.execute(self.user_command(f"{stop}; {detach}; true"), timeout=180)
        m.succeed(f"rm -rf {USER_SOCKET_PATH} {UNIT_DIR}/{SERVICE}.d {STATE_DIR} {IMAGE_DIR}"
                  f" {POLKIT_RULE}; loginctl disable-linger {USER};"
                  f" systemctl stop user@{self.uid}.service; true", timeout=120)
        self.check_clean()

    def check_clean(self) -> None:
        """GuestError unless USER's manager is gone or has nothing attached or listening."""
        if not self.machine.execute(f"test -S /run/user/{self.uid}/bus").succeeded:
            return  # the manager is stopped: nothing of the user's can be running
        paths = [image_path(1), image_path(2), USER_SYMLINK]
        answers = self.machine.execute(self.user_command(
            f"for p in {' '.join(paths)}; do s=$(portablectl --user is-attached $p 2>/dev/null);"
            f" echo \"$p ${{s:-detached}}\"; done;"
            f" for u in {SOCKET} {SERVICE}; do echo \"$u $(systemctl --user is-active $u)\";"
            " done"))
        dirty = unclean(answers.stdout, [*paths, SOCKET, SERVICE])
        if dirty:
            raise GuestError(f"the user's side is not clean ({' '.join(CLEAN_WORDS)} expected):"
                             f" {dirty}")


def user_scope(system: PortableService) -> UserPortableService:
    """The user side of ``system``'s guest (not yet set up: call ``setup``)."""
    return UserPortableService(system)


def preflight(machine: Machine, systemd_major: int) -> list[str]:
    """``missing_pieces`` of the guest behind ``machine``."""
    return missing_pieces(systemd_major, parse_facts(machine.execute(PREFLIGHT, 60).stdout))
