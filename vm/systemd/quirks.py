"""systemd version differences the suite works around, each named after what it works around.

Everything version-specific lives here, so a new systemd version means reading one file: every
decision taken on a version number (or on a minimum of the kernel or polkit a feature needs),
and every message that differs between versions.

Some workarounds need no decision: the suite does the same thing on every version, in the way
that works on all of them. They stay beside the code they shape, and are listed here so this
file stays the one to read:

- units are stopped one by one: newer systemd refuses a whole ``systemctl stop A B`` when one
  of them is not loaded (the guest program's ``reset`` step, the ``start`` step of
  load/guest/load.py);
- the attached version is read from the unit's ``RootImage=``, never from ``portablectl
  is-attached``: on 252 both ``<name>_1.raw`` and ``_2.raw`` say "running" when either is
  attached (the ``observe`` step; the reset detaches by it too);
- ``portablectl is-attached`` is asked by image path: 252 records the symlink's target, so
  asking by name says "detached" for an attached image (the ``observe`` and ``clean`` steps);
- a rollout's journal is read 60 lines deep, so that systemd-pull's refusal is among them: 262
  logs more after it (systemd/portable.py ``run_rollout``);
- the user scope starts systemd-nsresourced, systemd-mountfsd and polkit before its first
  attach: activated by that call under TCG, they take long enough together (nsresourced loads
  its BPF programs) that portablectl's D-Bus call times out on 262 (systemd/scope.py
  ``USER_SETUP_UNITS``, the ``setup-user`` step).
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


# Whether systemd-sysupdate is there depends on how a version is packaged, not on the major
# alone: Debian bookworm's 252 ships none, bookworm-backports' 254 and trixie's 257 do, and
# 262 (sid) has it in systemd-container. So the guest is asked (the binary exists or not) and
# the sysupdate scenarios are skipped, naming the version, where it does not.
def sysupdate_missing(systemd_major: int, installed: bool) -> str | None:
    """Why the sysupdate scenarios cannot run on this guest, or None."""
    if installed:
        return None
    return f"systemd {systemd_major} in this guest has no systemd-sysupdate"


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


def leading_numbers(version: str) -> tuple[int, ...]:
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


def user_portables_kernel_too_old(kernel: str) -> str | None:
    """Why the kernel (``uname -r``) is too old for a user portable service, or None."""
    if leading_numbers(kernel)[:2] < USER_PORTABLE_MIN_KERNEL:
        want = ".".join(map(str, USER_PORTABLE_MIN_KERNEL))
        return f"a kernel >= {want} (this one is {kernel or 'unknown'})"
    return None


def user_portables_polkit_too_old(polkit: str) -> str | None:
    """Why polkit (the version ``pkcheck --version`` names) is too old for a user portable
    service, or None."""
    numbers = leading_numbers(polkit)
    if not numbers or numbers[0] < USER_PORTABLE_MIN_POLKIT:
        return (f"polkit >= {USER_PORTABLE_MIN_POLKIT} (pkcheck says "
                f"{polkit or 'nothing'}; Debian: polkitd)")
    return None


# How a user's portabled (262) refuses an image it cannot use (docs/measurements.md has how it
# was found):
# - unsigned, or signed but in a directory its unprivileged dissect child cannot read (the
#   user's 0700 home): "Failed to extract portable metadata from '…raw': Permission denied"
#   in its journal, "AttachImage failed: Access denied" from portablectl;
# - an image made for the system: "Image … portable scope 'system' incompatible with portabled
#   runtime scope 'user'". A user's portabled wants images made for it (PORTABLE_SCOPE=user or
#   any in os-release, units in /usr/lib/systemd/user): the suite builds such a set
#   (vm/subject/image.py), signed (vm/systemd/scope.py), in a directory anyone may read.
# Should a version (or a subject's ready images) still be refused, the scenario is
# characterised with portabled's words instead of failing the run.
USER_IMAGE_REFUSAL = "Failed to extract portable metadata"
USER_SCOPE_REFUSAL = "incompatible with portabled runtime scope 'user'"


def user_attach_refused(error: str, journal: str, systemd_major: int) -> str | None:
    """The characterisation of a user attach that the user's portabled refused, or None when
    ``error`` is another failure."""
    if USER_SCOPE_REFUSAL in error:
        seen = next(line for line in error.splitlines() if USER_SCOPE_REFUSAL in line)
        return (f"characterised on systemd {systemd_major}: the user's portabled mounted the "
                f"suite's signed image and refused its scope ({seen.strip()}); missing piece: "
                "images built for the user scope (PORTABLE_SCOPE=user, units in "
                "/usr/lib/systemd/user)")
    if "AttachImage failed: Access denied" not in error:
        return None
    seen = next((line.split(": ", 1)[-1] for line in journal.splitlines()
                 if USER_IMAGE_REFUSAL in line), "AttachImage failed: Access denied")
    return (f"characterised on systemd {systemd_major}: `portablectl --user attach` refused the "
            f"suite's image, signed (verity) as in systemd's TEST-29 ({seen.strip()})")


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
# - 262 (Debian 262.1-1, in the guest's journal): the raw puller checks the digest itself and
#   says so in other words, then sysupdate reports "Bad message".
CHECKSUM_REFUSALS = {
    254: r"DOWNLOAD INVALID: Checksum of \S+ file did not check out, file has been tampered "
         r"with\.",
    262: r"Checksum of downloaded resource does not match expected checksum, yikes\.",
}


# Portable extensions: `portablectl attach/reattach --extension EXT BASE` layers app images
# over a base image (the runtime) that stays (249, as issue 19 and TEST-29 date them).
PORTABLE_EXTENSIONS_FROM = 249


def extensions_missing(systemd_major: int) -> str | None:
    """Why the extension scenarios cannot run here, or None."""
    if systemd_major < PORTABLE_EXTENSIONS_FROM:
        return (f"systemd {systemd_major} has no portable extensions "
                f"(portablectl --extension, added in {PORTABLE_EXTENSIONS_FROM})")
    return None


# An extension names its base in /usr/lib/extension-release.d/extension-release.<NAME>. Before
# 256 NAME must be the image file's name exactly, version and all (app_1.raw needs
# extension-release.app_1); from 256 (systemd PR #31435) the version after the first '_' is
# ignored, so extension-release.app serves every app_<V>.raw. The exact name is looked up first
# on every version, so the builder ships both names (vm/subject/build-image.sh) and one image
# set serves every box.
EXTENSION_RELEASE_VERSION_IGNORED_FROM = 256

# Versioned directories (vpick, systemd.v(7)): portablectl attaches <name>.v/ and uses the
# newest <name>_<V>.raw in it, and `reattach` picks again (256).
VERSIONED_DIRS_FROM = 256


def versioned_dir_missing(systemd_major: int) -> str | None:
    """Why the versioned-directory scenarios cannot run here, or None."""
    if systemd_major < VERSIONED_DIRS_FROM:
        return (f"systemd {systemd_major} has no versioned directories (<name>.v/, vpick: "
                f"added in {VERSIONED_DIRS_FROM})")
    return None


def sysupdate_versioned_dir_missing(systemd_major: int, installed: bool) -> str | None:
    """Why a sysupdate rollout into a versioned directory cannot run here, or None: sysupdate
    must be there (bookworm's 252 has none) and portabled must pick from <name>.v/ (254 has
    sysupdate but no vpick)."""
    return sysupdate_missing(systemd_major, installed) or versioned_dir_missing(systemd_major)


# sysupdate's notify callout (262; 257 has neither the directory nor the callout, the versions
# between were not looked at): after an update that installed a version, systemd-sysupdate
# connects to every socket in /run/systemd/sysupdate/notify/, sends one Varlink call (a
# NUL-terminated JSON object) io.systemd.SysUpdate.Notify.OnCompletedUpdate with the
# parameters component, version and resources ([{transfer, path}]), and waits for the reply
# before it exits. For an error reply its binary has "Notification subscriber '%s' returned
# error, ignoring" (read from 262.1's binary, not provoked). systemd's own update unit,
# systemd-sysupdate-update.service, runs `update --component-all --cleanup=yes`, which updates
# the components (/etc/sysupdate.<component>.d/): the suite's transfer for it is a component
# named after the subject (vm/systemd/sysupdate.py), and the call names it. The unit is
# Type=simple: `systemctl start` returns before the update has run, so the rollout starts it
# with --wait.
SYSUPDATE_NOTIFY_FROM = 262
SYSUPDATE_NOTIFY_DIR = "/run/systemd/sysupdate/notify"
SYSUPDATE_NOTIFY_METHOD = "io.systemd.SysUpdate.Notify.OnCompletedUpdate"
SYSUPDATE_UPDATE_UNIT = "systemd-sysupdate-update.service"


def sysupdate_notify_missing(systemd_major: int, installed: bool) -> str | None:
    """Why the scenario whose reattach sysupdate's notify callout drives cannot run here, or
    None."""
    if why := sysupdate_versioned_dir_missing(systemd_major, installed):
        return why
    if systemd_major < SYSUPDATE_NOTIFY_FROM:
        return (f"systemd {systemd_major} has no sysupdate notify callout "
                f"({SYSUPDATE_NOTIFY_DIR}/, {SYSUPDATE_NOTIFY_METHOD}: seen in "
                f"{SYSUPDATE_NOTIFY_FROM}) and no {SYSUPDATE_UPDATE_UNIT}")
    return None


# What systemd itself offers to run the reattach after a sysupdate pull, by version (issue 19
# item 4; what was seen in the guests and where it was read: docs/measurements.md). None of it
# calls portabled: on 257 the suite's rollout unit runs `portablectl reattach --now` after
# `update` (vm/systemd/sysupdate.py); on 262 the notify callout can drive a listener that does.
AFTER_SYSUPDATE_PULL = {
    257: "systemd-sysupdate.service (ExecStart=systemd-sysupdate update) and its .timer, and "
         "systemd-sysupdate-reboot.service/.timer (reboot when a newer version is installed "
         "than booted); no post-update hook (a transfer has no command key, the binary's "
         "callout is its systemd-pull/import download helper); Debian ships no "
         "systemd-sysupdated, no updatectl, no org.freedesktop.sysupdate1; nothing reattaches "
         "a portable service",
    262: "systemd-sysupdate-update.service (Type=simple, update --component-all --cleanup=yes) "
         "and .timer, the old names kept as aliases; a Varlink API io.systemd.SysUpdate "
         "(systemd-sysupdate.socket, Accept=yes, systemd-sysupdate@.service) whose TargetClass "
         "names portable; after an update that installed a version sysupdate calls "
         "io.systemd.SysUpdate.Notify.OnCompletedUpdate(component, version, resources: "
         "[{transfer, path}]) on every socket in /run/systemd/sysupdate/notify/ and waits for "
         "the reply (its binary's words for an error reply: \"returned error, ignoring\"); "
         "systemd ships only io.systemd.sysext "
         "there (systemd-sysupdate-notify-sysext.socket runs systemd-sysext), no portabled "
         "listener, so nothing of systemd's reattaches a portable service: a listener socket "
         "of one's own there can (the suite's pwt-notify-reattach.socket runs portablectl "
         "reattach --now before replying: host-socket-sysupdate-notify); Debian ships no "
         "systemd-sysupdated and no updatectl",
}


def after_sysupdate_pull(systemd_major: int) -> str:
    """What this systemd offers after a sysupdate pull: the statement of the newest version
    at or below ``systemd_major`` that was looked at, or that none was."""
    seen = [v for v in AFTER_SYSUPDATE_PULL if v <= systemd_major]
    if not seen:
        return f"systemd {systemd_major}: not looked at (seen: {sorted(AFTER_SYSUPDATE_PULL)})"
    version = max(seen)
    return f"as seen on {version}: {AFTER_SYSUPDATE_PULL[version]}"
