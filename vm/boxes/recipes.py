"""The guests the suite can boot: one declarative recipe per box.

Adding a Debian suite is a few lines of data here (see README "Adding a systemd version").
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEBIAN_MIRROR = "http://deb.debian.org/debian"

# What every locally built box needs: boot, SSH, systemd, portablectl (systemd-container),
# ab (apache2-utils) and hey (the second client, Go's HTTP stack: vm/load/hey.py; Debian
# packages it from bookworm on), haproxy, python3 for the in-guest probe (python3-minimal
# lacks json), the qemu guest agent (the only way vagrant-libvirt learns the guest is up when
# no libvirt network is attached). The list is part of each box's cache key (build_env): a
# changed list builds the boxes anew.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "sudo", "linux-image-amd64",
    "kmod", "iproute2", "netbase", "ca-certificates", "procps", "systemd-container",
    "apache2-utils", "hey", "haproxy", "python3", "qemu-guest-agent",
)

# What user portable services (`portablectl --user`, systemd >= 260) need beyond the base, as
# Debian packages them (read from sid's 262.1-1 with dpkg-deb): systemd-mountfsd and
# systemd-nsresourced come with systemd-container, but nsresourced dlopens libbpf (a Recommends,
# which debootstrap does not install); portablectl --user and the user's portabled talk over the
# user's D-Bus (dbus-user-session, which pulls libpam-systemd); mountfsd and nsresourced talk to
# polkit (polkitd; TEST-29-PORTABLE wants >= 124). mountfsd mounts an image for a user when its
# dm-verity root hash is signed by a trusted key: the suite signs the user's copies in the guest
# as TEST-29 does (veritysetup from cryptsetup-bin, which also brings the libcryptsetup systemd
# dlopens; openssl smime).
USER_PORTABLE_PACKAGES = ("libbpf1", "dbus-user-session", "libpam-systemd", "polkitd",
                          "cryptsetup-bin", "openssl")
# systemd 262 (sid) loads libcurl with dlopen: without it systemd-pull, and so sysupdate's HTTP
# source, fails with "Failed to allocate puller: Operation not supported" (seen on 262.1-1;
# 257 links it). Debian's systemd-container only recommends it, which debootstrap skips.
HTTP_PULL_PACKAGES = ("libcurl4t64",)

# systemd-nsresourced needs the bpf LSM active. Debian's kernels list it in CONFIG_LSM (sid's
# 7.2.13: "landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor,selinux,smack,tomoyo,bpf,
# ipe"), so it is on by default; a moving suite's recipe still says so on the command line, so a
# kernel whose default list drops it does not silently take the user scenario's prerequisite.
BPF_LSM_CMD_LINE = "lsm=landlock,lockdown,yama,integrity,apparmor,bpf"


@dataclass(frozen=True)
class BoxRecipe:
    """How to get a guest: built here from Debian, or downloaded (Fedora, online users only)."""

    name: str
    description: str
    systemd_major: int  # what the recipe is expected to give; the real one is read from the guest
    package_manager: str = "apt"  # "apt" or "dnf": how scenarios install extra tools
    suite: str | None = None  # Debian suite for debootstrap; None for downloaded boxes
    packages: tuple[str, ...] = BASE_PACKAGES
    extra_suite: str | None = None  # e.g. bookworm-backports
    extra_packages: tuple[str, ...] = ()
    # Downloaded boxes: the Fedora release whose Cloud Vagrant box is fetched (vm/boxes/fedora.py).
    fedora_release: int | None = None
    providers: tuple[str, ...] = field(default=("libvirt",))
    # A suite that keeps moving (Debian unstable): two builds of the same recipe can carry
    # different systemd packages, so a report must show the package version read from the
    # guest, not systemd_major, before a verdict change is blamed on the suite.
    moving: bool = False
    # Appended to the kernel command line of a box built here (vm/boxes/builder.py
    # KERNEL_CMD_LINE), for this recipe only: e.g. the LSM list a scenario needs.
    kernel_cmd_line: str = ""

    @property
    def buildable_offline(self) -> bool:
        return self.suite is not None

    def build_env(self) -> dict[str, str]:
        """The recipe as the box build script reads it (the cache key is built from this)."""
        if self.suite is None:
            raise ValueError(f"box {self.name} is not built locally")
        return {
            "SUITE": self.suite,
            "MIRROR": DEBIAN_MIRROR,
            "PACKAGES": ",".join(self.packages),
            "EXTRA_SUITE": self.extra_suite or "",
            "EXTRA_PACKAGES": " ".join(self.extra_packages),
            # Only when set: the cache key (and so the box name and its saved guest) of the
            # recipes without one stays what it was; a recipe whose command line changes boots
            # a new box rather than restoring a guest booted with the old one.
            **({"KERNEL_CMD_LINE": self.kernel_cmd_line} if self.kernel_cmd_line else {}),
        }


BOXES: dict[str, BoxRecipe] = {
    box.name: box
    for box in (
        BoxRecipe(
            name="debian-bookworm",
            description="Debian 12, systemd 252",
            systemd_major=252,
            suite="bookworm",
        ),
        BoxRecipe(
            name="debian-bookworm-backports",
            description="Debian 12 with systemd 254 from bookworm-backports",
            systemd_major=254,
            suite="bookworm",
            extra_suite="bookworm-backports",
            extra_packages=("systemd", "systemd-sysv", "systemd-container", "udev"),
        ),
        BoxRecipe(
            name="debian-trixie",
            description="Debian 13, systemd 257",
            systemd_major=257,
            suite="trixie",
        ),
        BoxRecipe(
            name="debian-sid",
            description="Debian unstable, systemd 262 when added (262.1-1; moves)",
            systemd_major=262,
            suite="sid",
            moving=True,
            packages=BASE_PACKAGES + USER_PORTABLE_PACKAGES + HTTP_PULL_PACKAGES,
            kernel_cmd_line=BPF_LSM_CMD_LINE,
        ),
        # Online users only: Fedora's own Cloud Vagrant boxes from its download servers
        # (libvirt or VirtualBox), verified, then provisioned once into a derived box.
        *(
            BoxRecipe(
                name=f"fedora-{release}",
                description=f"Fedora {release} Cloud, systemd {systemd}",
                systemd_major=systemd,
                package_manager="dnf",
                fedora_release=release,
                providers=("libvirt", "virtualbox"),
                packages=(),
            )
            for release, systemd in ((43, 258), (44, 259), (45, 261))
        ),
    )
}

LOCAL_BOXES = tuple(name for name, box in BOXES.items() if box.buildable_offline)

DEFAULT_BOX = "debian-trixie"


def get_box(name: str) -> BoxRecipe:
    """The recipe called ``name``; a ValueError lists the known ones."""
    try:
        return BOXES[name]
    except KeyError:
        known = ", ".join(sorted(BOXES))
        raise ValueError(f"unknown box {name!r}; known boxes: {known}") from None
