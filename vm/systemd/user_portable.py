"""The portable service attached for a user's service manager (`portablectl --user`, v260+).

The subject's images built for the user scope (vm/subject/image.py: units in
/usr/lib/systemd/user, PORTABLE_SCOPE=user), and everything belongs to one unprivileged user
with lingering (so its manager runs with nobody logged in): the images sit in IMAGE_DIR, the
subject's sockets are user units (``~/.config/systemd/user/<name>.socket``) and portabled is
the user's own (``systemd-portabled.service`` in the user manager). Commands run as that user
the way systemd's TEST-29-PORTABLE does: ``runuser -u USER -- env XDG_RUNTIME_DIR=… CMD``.

An unprivileged manager cannot mount an image itself: systemd-mountfsd mounts it, and
systemd-nsresourced hands out the user namespace, which needs the bpf LSM, libbpf and a kernel
>= 6.5. ``missing_pieces`` names what a guest lacks (the scenario is then skipped with that
list); the box recipe (vm/boxes/recipes.py, debian-sid) provides them.

mountfsd trusts an image for a user only when its dm-verity root hash is signed by a key it
trusts; the user's portabled then reads its metadata through that mount. So the user's copies
are signed in the guest the way TEST-29 signs its extension images: ``veritysetup format``
makes the ``.verity`` and ``.roothash`` sidecars, ``openssl smime`` signs the root hash into
``.roothash.p7s`` with a key made for the run, whose certificate goes to /run/verity.d (systemd
checks the signature in userspace against the certificates there). The sidecars sit beside the
image and its symlink (flipped together). Signed, they need no polkit rule (run on 262.1-1
without one: 10314 requests, 0 failed), as in TEST-29.
Should the user's portabled refuse them all the same, the scenario is characterised with
portabled's words (quirks.py ``user_attach_refused``), as are the version minimums above.
"""

from __future__ import annotations

import shlex
import time

from pytest_portable_upgrade.core.errors import GuestError
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.machine.machine import Machine
from pytest_portable_upgrade.subject.image import USER_STASH
from pytest_portable_upgrade.subject.spec import DROPIN_PREFIX, Subject
from pytest_portable_upgrade.systemd.portable import (
    ATTACHED_STATES,
    CLEAN_WORDS,
    STASH,
    PortableService,
    ServiceFacts,
    Upgrade,
    dropin_files,
    parse_timed,
    replace_symlink_command,
    timed,
    unclean,
    write_files_script,
)
from pytest_portable_upgrade.systemd.quirks import (
    user_portables_kernel_too_old,
    user_portables_missing,
    user_portables_polkit_too_old,
)

USER = "pwt-user"
HOME = f"/home/{USER}"
# The user's copies of the images, attached by path. Not under HOME (0700 on sid): portabled's
# unprivileged dissect child runs in a user namespace of its own and got "Permission denied"
# there (262.1-1); from a directory anyone may read it mounts and reads the image.
IMAGE_DIR = f"/var/lib/{USER}-portables"
UNIT_DIR = f"{HOME}/.config/systemd/user"
STATE_DIR = f"{HOME}/pwt-state"  # one directory per state directory of the subject
STATE_DROPIN_NAME = f"{DROPIN_PREFIX}state.conf"
# The run's signing key (root only) and the certificate systemd trusts for dm-verity signatures.
SIGNING_DIR = "/run/pwt-verity"
VERITY_CERT = "/run/verity.d/pwt-user-portable.crt"
# What systemd looks for beside an image <base>.raw (TEST-29's app1.verity, .roothash, .p7s).
SIDECARS = (".verity", ".roothash", ".roothash.p7s")
# How long dissect waits for the dm-verity device; TEST-29 raises it "for slower machines, e.g.
# non-KVM vm" (the default is too short under TCG).
VERITY_TIMEOUT_ENV = "SYSTEMD_DISSECT_VERITY_TIMEOUT_SEC=30"


def user_symlink(subject: Subject) -> str:
    """The user's symlink to the version that runs (``<name>.raw`` in IMAGE_DIR)."""
    return f"{IMAGE_DIR}/{subject.name}.raw"


def user_dropin_dir(subject: Subject) -> str:
    return f"{UNIT_DIR}/{subject.service}.d"


def state_dropin_text(subject: Subject) -> str:
    """The drop-in that puts the subject's state directories where its image expects them.

    The image has an empty /var/lib/<dir> to mount each one on (it is read-only: a mount
    point that is not there cannot be made). A user manager would put StateDirectory= at the
    same path as on the host (under ~/.local/state), which the image has no directory for;
    so the drop-in binds a directory of the user's onto the image's mount point instead."""
    dirs = subject.state_directories
    lines = ["# pwt tests: the service's state on the image's own mount points", "[Service]",
             "StateDirectory="]
    lines += [f"BindPaths={STATE_DIR}/{d}:/var/lib/{d}" for d in dirs]
    if dirs:
        lines.append("Environment=STATE_DIRECTORY=" + ":".join(f"/var/lib/{d}" for d in dirs))
    return "\n".join(lines) + "\n"

def signing_setup_script() -> str:
    """A key and self-signed certificate for this run; the certificate where systemd's
    userspace dm-verity signature check looks (``/run/verity.d/*.crt``)."""
    return (f"install -d -m 0700 {SIGNING_DIR}"
            f" && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pwt-user-portable"
            f" -keyout {SIGNING_DIR}/key.pem -out {SIGNING_DIR}/cert.pem 2>/dev/null"
            f" && install -D -m 0644 {SIGNING_DIR}/cert.pem {VERITY_CERT}")


def sign_image_script(image: str) -> str:
    """The verity sidecars of ``image`` (``X.raw`` -> ``X.verity``, ``X.roothash``,
    ``X.roothash.p7s``), as TEST-29 makes them for its extension images."""
    base = image.removesuffix(".raw")
    return (f"veritysetup format {image} {base}.verity --root-hash-file {base}.roothash"
            f" >/dev/null && openssl smime -sign -nocerts -noattr -binary"
            f" -in {base}.roothash -inkey {SIGNING_DIR}/key.pem -signer {SIGNING_DIR}/cert.pem"
            f" -outform der -out {base}.roothash.p7s")


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
    " echo userbus=$(t /usr/lib/systemd/user/dbus.socket);"
    " echo signing=$(command -v veritysetup >/dev/null && command -v openssl >/dev/null"
    " && echo yes || echo no)"
)


def parse_facts(output: str) -> dict[str, str]:
    """PREFLIGHT's KEY=VALUE lines as a dict (values may be empty)."""
    facts = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


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
    for too_old in (user_portables_kernel_too_old(facts.get("kernel", "")),
                    user_portables_polkit_too_old(facts.get("polkit", ""))):
        if too_old is not None:
            missing.append(too_old)
    if "-BTF" in facts.get("features", "").split():
        missing.append("a systemd built with BTF (systemctl --version says -BTF)")
    if facts.get("userbus") != "yes":
        missing.append("the user's D-Bus for portablectl --user (Debian: dbus-user-session)")
    if facts.get("signing") != "yes":
        missing.append("veritysetup and openssl to sign the user's images (Debian: "
                       "cryptsetup-bin, openssl)")
    return missing


def image_path(subject: Subject, version: int) -> str:
    """The user's copy of ``version``'s image: what the unit's RootImage= must name."""
    return f"{IMAGE_DIR}/{subject.image_name(version)}"


class UserPortableService(PortableService):
    """The subject attached for USER's service manager; the verbs of PortableService with
    the user's units, images and portabled. ``setup`` makes the user and its manager first."""

    def __init__(self, system: PortableService) -> None:
        super().__init__(system.machine, system.systemd_major, system.reattach_timeout_s,
                         system.build_images, system.subject, system.host,
                         unit_timeout_s=system.unit_timeout_s)
        self.uploaded = system.uploaded  # one upload per session, shared with the system side
        self.uid = 0

    @property
    def symlink(self) -> str:
        return user_symlink(self.subject)

    # --- the user and its manager -------------------------------------------------------
    def setup(self) -> None:
        """USER with lingering and a running manager whose bus answers; the run's signing key
        and its certificate in /run/verity.d; mountfsd and nsresourced listening (Debian
        installs their sockets without enabling them). Idempotent."""
        out = self.machine.succeed(
            f"id -u {USER} >/dev/null 2>&1 || useradd --create-home --shell /usr/sbin/nologin"
            f" {USER}; uid=$(id -u {USER}); loginctl enable-linger {USER}"
            f" && {signing_setup_script()}"
            # Before mountfsd starts: its workers inherit the manager's environment.
            f" && systemctl set-environment {VERITY_TIMEOUT_ENV}"
            " && systemctl start systemd-mountfsd.socket systemd-nsresourced.socket"
            # The services themselves, and polkit, before the first attach: activated by
            # that call instead, under TCG they took 28 s together (nsresourced loads its BPF
            # programs for 10 s) and portablectl's D-Bus call timed out (seen on 262).
            " && systemctl start systemd-nsresourced.service systemd-mountfsd.service"
            " polkit.service"
            " && systemctl start user@$uid.service"
            " && for i in $(seq 1 60); do test -S /run/user/$uid/bus && break; sleep 1; done;"
            " test -S /run/user/$uid/bus && echo \"PWT-UID $uid\"",
            timeout=120,
        )
        self.uid = int(out.strip().splitlines()[-1].split()[1])
        # D-Bus would activate it at the first call; started here, a failure to start is
        # reported as itself, not as a portablectl time-out.
        self.as_user("systemctl --user start systemd-portabled.service")

    def user_command(self, command: str) -> str:
        """``command`` as a root shell runs it as USER, talking to USER's manager and bus."""
        runtime = f"/run/user/{self.uid}"
        # SYSTEMD_BUS_TIMEOUT: sd-bus's method call timeout (25 s by default) is short for a
        # first attach under TCG, which waits for mountfsd, nsresourced and polkit.
        return (f"runuser -u {USER} -- env XDG_RUNTIME_DIR={runtime}"
                f" DBUS_SESSION_BUS_ADDRESS=unix:path={runtime}/bus SYSTEMD_BUS_TIMEOUT=120"
                f" bash -c"
                f" {shlex.quote(command)}")

    def as_user(self, command: str, timeout: float = 120.0) -> str:
        """Run ``command`` as USER; its stdout; GuestError if it fails."""
        return self.machine.succeed(self.user_command(command), timeout=timeout)

    # --- the verbs of PortableService, for the user ---------------------------------------
    def use_images(self, socket_location: str) -> None:
        """The subject's images built for the user scope (units in /usr/lib/systemd/user,
        PORTABLE_SCOPE=user) in IMAGE_DIR, each signed (verity sidecars), all owned by USER
        (mountfsd opens them with the user's rights). The system's portablectl would refuse to
        inspect them: they are uploaded to their own stash directory and not inspected."""
        key = USER_STASH
        if key not in self.uploaded:
            with log.nested("uploading the portable images (user scope)"):
                self.install_images(self.build_images(socket_location, "user"))
            self.uploaded.add(key)
        sign = " && ".join(sign_image_script(image_path(self.subject, v))
                           for v in sorted(self.subject.versions))
        self.machine.succeed(
            f"install -d -o {USER} -g {USER} -m 0755 {IMAGE_DIR}"
            f" && for f in {STASH}/{key}/*.raw; do"
            f" cp --sparse=always \"$f\" {IMAGE_DIR}/ || exit 1; done"
            f" && {sign}"
            f" && chown {USER}:{USER} {IMAGE_DIR}/* && chmod 0644 {IMAGE_DIR}/*",
            timeout=300,
        )

    def _symlink_command(self, version: int) -> str:
        """The image symlink and its sidecars' symlinks, each replaced atomically: systemd
        looks for ``<name>.roothash`` etc. beside the path it is given."""
        name = self.subject.image_name(version).removesuffix(".raw")
        link = self.symlink.removesuffix(".raw")
        return " && ".join(replace_symlink_command(f"{name}{suffix}", f"{link}{suffix}")
                           for suffix in (".raw", *SIDECARS))

    def install_dropins(self, shutdown: str, fdstore_preserve: bool = False) -> None:
        """The subject's drop-ins for the user's manager (in USER's unit directory: the
        system's /etc/systemd/system does not apply to it); ``attach`` reloads it."""
        d = user_dropin_dir(self.subject)
        files = {f"{d}/{name}": text
                 for name, text in dropin_files(self.subject, shutdown, fdstore_preserve).items()}
        self.machine.succeed(f"rm -f {d}/{DROPIN_PREFIX}*.conf\n{write_files_script(files)}")

    def attach(self, version: int, profile: str = "default", host_socket: bool = True) -> None:
        """Attach ``version`` for USER (--runtime, like TEST-29), then the user socket(s)."""
        self.clean_verified = False
        self.point_symlink_at(version)
        s = self.subject
        m = self.machine
        files = {f"{user_dropin_dir(s)}/{STATE_DROPIN_NAME}": state_dropin_text(s)}
        if host_socket:
            files.update({f"{UNIT_DIR}/{p.name}": p.read_text() for p in s.sockets})
        state_dirs = " ".join(f"{STATE_DIR}/{d}" for d in s.state_directories)
        m.succeed(f"install -d -o {USER} -g {USER} {STATE_DIR} {state_dirs} {UNIT_DIR}"
                  f" {user_dropin_dir(s)}\n{write_files_script(files)}"
                  f"chown -R {USER}:{USER} {HOME}/.config")
        self.as_user("systemctl --user daemon-reload")
        self.as_user(f"portablectl --user attach --runtime --profile {profile} {self.symlink}",
                     timeout=180)
        state = self.attachment_state()
        if state not in ATTACHED_STATES:
            raise GuestError(f"after portablectl --user attach, is-attached says {state!r}")
        for unit in s.socket_units:
            self.as_user(f"systemctl --user start {unit}")
            deadline = time.monotonic() + self.unit_timeout_s
            while (word := self._is_active(unit)) != "active":
                if time.monotonic() > deadline:
                    raise GuestError(f"the user's {unit} is {word!r}, not active")
                time.sleep(1)

    def _user_show(self, prop: str, unit: str) -> str:
        result = self.machine.execute(self.user_command(f"systemctl --user show -P {prop} {unit}"))
        return result.stdout.strip() if result.succeeded else ""

    def _is_active(self, unit: str) -> str:
        return self.machine.execute(
            self.user_command(f"systemctl --user is-active {unit}"), 30).stdout.strip()

    def main_process_user(self) -> str:
        pid = self._user_show("MainPID", self.subject.service)
        if pid in ("", "0"):
            return ""
        return self.machine.succeed(f"ps -o user= -p {pid}").strip()

    def dynamic_user(self) -> bool:
        return self._user_show("DynamicUser", self.subject.service) == "yes"

    def socket_state(self) -> tuple[str, str]:
        """(ActiveEnterTimestampMonotonic, is-active) of the subject's socket, as the user's
        manager knows it."""
        socket = self.subject.socket
        return self._user_show("ActiveEnterTimestampMonotonic", socket), self._is_active(socket)

    def attached_image(self) -> str:
        return self._user_show("RootImage", self.subject.service)

    def attachment_state(self, image: str | None = None) -> str:
        return self.machine.execute(self.user_command(
            f"portablectl --user is-attached {image or self.symlink}")).stdout.strip()

    def observe(self, count: bool = False) -> ServiceFacts:
        """The user side's state, asked of the user's manager (one question at a time); the
        count (``count``) by a probe request as on the system side: the user's socket listens
        on the subject's port too."""
        since, socket = self.socket_state()
        counter = self.counter() if count and socket == "active" else None
        return ServiceFacts(self.main_process_user(), self.dynamic_user(), since, socket,
                            self.attachment_state(), self.attached_image(), counter)

    def reattach(self, version: int) -> Upgrade:
        """Flip the user's symlink, ``portablectl --user reattach --now --runtime`` by its path
        (the name would be looked up in the user's image search path, not IMAGE_DIR)."""
        self.point_symlink_at(version)
        command = f"portablectl --user reattach --now --runtime {self.symlink}"
        out = self.machine.succeed(f"{timed(self.user_command(command + ' 2>&1'))}; exit $rc",
                                   timeout=self.reattach_timeout_s)
        start, end, _rc, _ = parse_timed(out)
        return Upgrade(command, start, end, out)

    def journal(self) -> str:
        """USER's manager and units this boot: the evidence the system journals lack."""
        return self.machine.execute(
            f"journalctl -b --no-pager -o short-monotonic -n 200 _UID={self.uid}"
            f" + _SYSTEMD_UNIT=user@{self.uid}.service", 60).stdout

    def reset(self) -> None:
        """Detach, stop and remove everything USER had, then stop its manager (lingering off):
        no user socket may stay on the port the next system scenario listens on."""
        m = self.machine
        forget = (f"rm -rf {SIGNING_DIR} {VERITY_CERT};"
                  f" systemctl unset-environment {VERITY_TIMEOUT_ENV.split('=')[0]};")
        if not self.uid:  # setup broke before the user existed: only files to remove
            m.succeed(f"{forget} loginctl disable-linger {USER} 2>/dev/null; true")
            return
        s = self.subject
        stop = "; ".join(f"systemctl --user stop {u} 2>/dev/null" for u in self._user_units())
        detach = (f"img=$(systemctl --user show -P RootImage {s.service} 2>/dev/null);"
                  ' if [ -n "$img" ]; then portablectl --user detach --runtime "$img"; fi')
        m.execute(self.user_command(f"{stop}; {detach}; true"), timeout=180)
        sockets = " ".join(f"{UNIT_DIR}/{u}" for u in s.socket_units)
        m.succeed(f"rm -rf {sockets} {user_dropin_dir(s)} {STATE_DIR} {IMAGE_DIR};"
                  f" {forget} loginctl disable-linger {USER};"
                  f" systemctl stop user@{self.uid}.service; true", timeout=120)
        self.check_clean()

    def _user_units(self) -> list[str]:
        return [*self.subject.socket_units, self.subject.service]

    def check_clean(self) -> None:
        """GuestError unless USER's manager is gone or has nothing attached or listening."""
        if not self.machine.execute(f"test -S /run/user/{self.uid}/bus").succeeded:
            return  # the manager is stopped: nothing of the user's can be running
        paths = [*(image_path(self.subject, v) for v in self.subject.versions), self.symlink]
        units = self._user_units()
        answers = self.machine.execute(self.user_command(
            f"for p in {' '.join(paths)}; do s=$(portablectl --user is-attached $p 2>/dev/null);"
            f" echo \"$p ${{s:-detached}}\"; done;"
            f" for u in {' '.join(units)}; do echo \"$u $(systemctl --user is-active $u)\";"
            " done"))
        dirty = unclean(answers.stdout, [*paths, *units])
        if dirty:
            raise GuestError(f"the user's side is not clean ({' '.join(CLEAN_WORDS)} expected):"
                             f" {dirty}")


def user_scope(system: PortableService) -> UserPortableService:
    """The user side of ``system``'s guest (not yet set up: call ``setup``)."""
    return UserPortableService(system)


def preflight(machine: Machine, systemd_major: int) -> list[str]:
    """``missing_pieces`` of the guest behind ``machine``."""
    return missing_pieces(systemd_major, parse_facts(machine.execute(PREFLIGHT, 60).stdout))
