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
# reads *.conf and says "No transfer definitions found." for a .transfer file.
SYSUPDATE_TRANSFER_SUFFIX_FROM = 257


def sysupdate_transfer_suffix(systemd_major: int) -> str:
    return ".transfer" if systemd_major >= SYSUPDATE_TRANSFER_SUFFIX_FROM else ".conf"


def reattach_by_name_broken(systemd_major: int) -> bool:
    return systemd_major < REATTACH_BY_NAME_FIXED_IN


def reattach_target(systemd_major: int, name: str, image_path: str) -> str:
    """What to hand ``portablectl reattach``: the image name, or its path where the name
    form is broken."""
    return image_path if reattach_by_name_broken(systemd_major) else name


def unsupported_reason(systemd_major: int) -> str | None:
    if systemd_major < OLDEST_SUPPORTED:
        return (
            f"systemd {systemd_major} is older than {OLDEST_SUPPORTED}: "
            "it has no `portablectl reattach`"
        )
    return None
