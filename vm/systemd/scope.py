"""Where a portable service is attached: the system's service manager or a user's.

A ``Scope`` is a value that carries everything that differs between the two: the
``systemctl``/``portablectl`` prefixes, the unit and drop-in directories, the image directory
and symlink, the user and its environment, and the steps that make no sense there. The steps
themselves (vm/systemd/portable.py, and the guest program vm/systemd/guest/portable.py) are
written once for both.

The user scope (``portablectl --user``, 260+): the subject's images built for it
(vm/subject/image.py: units in /usr/lib/systemd/user, PORTABLE_SCOPE=user), and everything
belongs to one unprivileged user with lingering, so its manager runs with nobody logged in:
the images sit in IMAGE_DIR, the subject's sockets are user units
(``~/.config/systemd/user/<name>.socket``) and portabled is the user's own
(``systemd-portabled.service`` in the user manager). Commands run as that user the way
systemd's TEST-29-PORTABLE does: ``runuser -u USER -- env XDG_RUNTIME_DIR=… CMD``.

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
image and its symlink (flipped together). Signed, they need no polkit rule, as in TEST-29.
Should the user's portabled refuse them all the same, the scenario is characterised with
portabled's words (quirks.py ``user_attach_refused``), as are the version minimums above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.subject.image import USER_STASH
from pytest_portable_upgrade.subject.spec import DROPIN_PREFIX, PORTABLES, Subject
from pytest_portable_upgrade.systemd.quirks import (
    user_portables_kernel_too_old,
    user_portables_missing,
    user_portables_polkit_too_old,
)

USER = "pwt-user"
HOME = f"/home/{USER}"
# The user's copies of the images, attached by path. Not under HOME (0700 on sid): portabled's
# unprivileged dissect child runs in a user namespace of its own and cannot read there; from
# a directory anyone may read it mounts and reads the image.
IMAGE_DIR = f"/var/lib/{USER}-portables"
USER_UNIT_DIR = f"{HOME}/.config/systemd/user"
STATE_DIR = f"{HOME}/pwt-state"  # one directory per state directory of the subject
STATE_DROPIN_NAME = f"{DROPIN_PREFIX}state.conf"
# The run's signing key (root only) and the certificate systemd trusts for dm-verity signatures.
SIGNING_DIR = "/run/pwt-verity"
VERITY_CERT = "/run/verity.d/pwt-user-portable.crt"
# What systemd looks for beside an image <base>.raw (TEST-29's app1.verity, .roothash, .p7s).
SIDECARS = (".verity", ".roothash", ".roothash.p7s")
# How long dissect waits for the dm-verity device; TEST-29 raises it "for slower machines, e.g.
# non-KVM vm" (the default is too short under TCG). Set in the system manager before mountfsd
# starts: its workers inherit the manager's environment.
VERITY_TIMEOUT_ENV = "SYSTEMD_DISSECT_VERITY_TIMEOUT_SEC=30"
# Started before the first attach: activated by that call instead, under TCG they take long
# enough together (nsresourced loads its BPF programs) that portablectl's D-Bus call times
# out (quirks.py lists this).
USER_SETUP_UNITS = (("systemd-mountfsd.socket", "systemd-nsresourced.socket"),
                    ("systemd-nsresourced.service", "systemd-mountfsd.service", "polkit.service"))


class StepRefused(HarnessError):
    """A step that makes no sense in a scope (a sysupdate rollout for a user's manager)."""


@dataclass(frozen=True)
class Scope:
    """One service manager the subject can be attached for (see the module's docstring)."""

    name: str
    systemctl: tuple[str, ...]
    portablectl: tuple[str, ...]
    unit_dir: str  # the subject's socket units and <service>.d drop-ins go here
    image_dir: str  # the images, and the symlink <name>.raw to the one that runs
    attach_flags: tuple[str, ...] = ()  # for attach, reattach and detach
    user: str | None = None  # commands run as this user, with its runtime dir and bus
    env: tuple[tuple[str, str], ...] = ()  # the user's commands' environment
    sidecars: tuple[str, ...] = ()  # files beside each image, flipped with its symlink
    # The steps this scope refuses, each with the reason.
    refuses: tuple[tuple[str, str], ...] = ()
    # Whether an image portablectl refuses ends the run (the spec's fault) or is a result to
    # characterise (quirks.py user_attach_refused).
    refusal_ends_run: bool = True
    # Which stash the images come from: the scope's own set, or the socket location's.
    stash_key: str | None = None
    reattach_by_path: bool = False  # the name would be looked up in another search path

    def symlink(self, subject: Subject) -> str:
        return f"{self.image_dir}/{subject.name}.raw"

    def image_path(self, subject: Subject, version: int) -> str:
        """``version``'s image in this scope: what the unit's RootImage= must name."""
        return f"{self.image_dir}/{subject.image_name(version)}"

    def image_paths(self, subject: Subject) -> list[str]:
        return [self.image_path(subject, v) for v in subject.versions] + [self.symlink(subject)]

    def dropin_dir(self, subject: Subject) -> str:
        return f"{self.unit_dir}/{subject.service}.d"

    def stash(self, socket_location: str) -> str:
        return self.stash_key or socket_location

    def require(self, step: str) -> None:
        """StepRefused when ``step`` makes no sense in this scope."""
        why = dict(self.refuses).get(step)
        if why is not None:
            raise StepRefused(f"{step} in the {self.name} scope: {why}")

    def wire(self) -> dict[str, Any]:
        """How the guest program reaches this scope's manager."""
        return {"name": self.name, "systemctl": list(self.systemctl),
                "portablectl": list(self.portablectl), "user": self.user,
                "env": dict(self.env)}


SYSTEM = Scope("system", ("systemctl",), ("portablectl",), unit_dir="/etc/systemd/system",
               image_dir=PORTABLES)
USER_SCOPE = Scope(
    "user", ("systemctl", "--user"), ("portablectl", "--user"), unit_dir=USER_UNIT_DIR,
    image_dir=IMAGE_DIR, attach_flags=("--runtime",), user=USER,
    # sd-bus's method call timeout (25 s by default) is short for a first attach under TCG,
    # which waits for mountfsd, nsresourced and polkit.
    env=(("SYSTEMD_BUS_TIMEOUT", "120"),), sidecars=SIDECARS,
    refuses=(("sysupdate", "systemd-sysupdate installs into /var/lib/portables, the system's"),
             ("publish", "there is no sysupdate source for a user's manager"),
             ("inspect", "the system's portablectl refuses images made for the user scope")),
    refusal_ends_run=False, stash_key=USER_STASH, reattach_by_path=True,
)
SCOPES = {s.name: s for s in (SYSTEM, USER_SCOPE)}


def state_dropin_text(subject: Subject) -> str:
    """The user scope's drop-in that puts the subject's state directories where its image
    expects them.

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


def missing_pieces(systemd_major: int, facts: dict[str, str]) -> list[str]:
    """What this guest lacks for a user portable service, each named with where it comes
    from; empty when nothing is missing. ``facts`` is the guest program's preflight."""
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
