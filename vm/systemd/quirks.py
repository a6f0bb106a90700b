"""systemd version differences the suite works around, each named after what it works around.

Everything version-specific lives here, so a new systemd version means reading one file.
"""

from __future__ import annotations

# portablectl reattach --now NAME fails with "ReattachImage failed: No such file or directory"
# after the unit files are removed, leaving v1 running as not-found (seen on 252 and 254).
# Reattaching by the image path (the flipped symlink) works there; 257 handles the name.
REATTACH_BY_NAME_FIXED_IN = 257

# Oldest systemd the suite is known to work with (portablectl reattach exists since 246).
OLDEST_SUPPORTED = 246


# systemd-sysupdate reads /etc/sysupdate.d/*.transfer from 257 on; 254 (bookworm-backports)
# reads *.conf and says "No transfer definitions found." for a .transfer file. 262 (sid's
# 262.1-1) still reads .transfer, and falls back to .conf with "As of v257, transfer definitions
# should have the '.transfer' extension." (read from its binary).
SYSUPDATE_TRANSFER_SUFFIX_FROM = 257


def sysupdate_transfer_suffix(systemd_major: int) -> str:
    return ".transfer" if systemd_major >= SYSUPDATE_TRANSFER_SUFFIX_FROM else ".conf"


def reattach_by_name_broken(systemd_major: int) -> bool:
    return systemd_major < REATTACH_BY_NAME_FIXED_IN


def reattach_target(systemd_major: int, name: str, image_path: str) -> str:
    """What to hand ``portablectl reattach``: the image name, or its path where the name
    form is broken."""
    return image_path if reattach_by_name_broken(systemd_major) else name


# FileDescriptorStorePreserve= (254): keep a service's fd store across a stop and a start, not
# only across a restart. 252 logs "Unknown key name" and ignores it, so a stop + start there
# cannot show the difference the knob makes: the scenarios that compare it are skipped.
FDSTORE_PRESERVE_FROM = 254


def fdstore_preserve_missing(systemd_major: int) -> str | None:
    """Why the FileDescriptorStorePreserve= scenarios cannot run here, or None."""
    if systemd_major < FDSTORE_PRESERVE_FROM:
        return (f"systemd {systemd_major} has no FileDescriptorStorePreserve= "
                f"(added in {FDSTORE_PRESERVE_FROM})")
    return None


# systemd-portabled also runs in a user's service manager from 260 on: `portablectl --user`
# attaches an image for that user (NEWS of 260, "Changes in systemd-portabled").
USER_PORTABLES_FROM = 260
# An unprivileged service manager mounts the image through systemd-mountfsd and gets its user
# namespace from systemd-nsresourced (both since 256); TEST-29-PORTABLE's user variant also
# wants kernel >= 6.5, the bpf LSM, libbpf, polkit >= 124 and a systemd built with +BTF.
USER_PORTABLE_MIN_KERNEL = (6, 5)
USER_PORTABLE_MIN_POLKIT = 124


def user_portables_missing(systemd_major: int) -> str | None:
    """Why this systemd cannot attach an image for a user's service manager, or None."""
    if systemd_major < USER_PORTABLES_FROM:
        return (f"systemd {systemd_major} has no user portable services "
                f"(portablectl --user, added in {USER_PORTABLES_FROM})")
    return None


def unsupported_reason(systemd_major: int) -> str | None:
    if systemd_major < OLDEST_SUPPORTED:
        return (
            f"systemd {systemd_major} is older than {OLDEST_SUPPORTED}: "
            "it has no `portablectl reattach`"
        )
    return None


# How systemd-pull refuses a download whose bytes do not match the digest sysupdate gave it
# (`--verify=<sha256>`), by the first systemd version that says it that way:
# - 254 and 257: pull_verify() in src/import/pull-common.c, the same format string in Debian's
#   254.26-1~bpo12+1 and 257.13-1~deb13u1 (read from the binaries), %s being the URL;
# - 262 (Debian 262.1-1, seen in the guest's journal on 2026-11-27): the raw puller checks the
#   digest itself and says so in other words, then sysupdate reports "Bad message".
CHECKSUM_REFUSALS = {
    254: r"DOWNLOAD INVALID: Checksum of \S+ file did not check out, file has been tampered "
         r"with\.",
    262: r"Checksum of downloaded resource does not match expected checksum, yikes\.",
}
