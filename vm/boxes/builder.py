"""Build (once, cached) and register the Vagrant box a run boots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from pytest_portable_upgrade.boxes.fedora_box import fetch
from pytest_portable_upgrade.boxes.recipes import DEBIAN_MIRROR, BoxRecipe
from pytest_portable_upgrade.boxes.vagrant_boxes import (
    BuiltBox,
    _vagrant_has_box,
    ensure_ssh_key,
    pool_base_prefix,
    vagrant_boxes,
    vagrant_env,
)
from pytest_portable_upgrade.core.cache import (
    checksum_ok,
    file_sha256,
    locked,
    recipe_hash,
    write_checksum,
)
from pytest_portable_upgrade.core.errors import HarnessError, PrerequisiteMissing
from pytest_portable_upgrade.core.host import pool_volumes, remove_libvirt_leftovers
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.core.proc import run_logged
from pytest_portable_upgrade.core.resources import resource

# The two scripts' names and bytes are the box's cache key (box_key): an edit rebuilds every
# cached box and drops the guests saved from it. So their comments still name the paths from
# before vm/ had layers (vm/box.py is this file, vm/pack-box.sh is vm/boxes/pack-box.sh, ...).
BUILD_SCRIPT = resource("pytest_portable_upgrade.boxes", "build-box.sh")
# The disk step, apart so a test can run it where /dev has no loop device.
PACK_SCRIPT = resource("pytest_portable_upgrade.boxes", "pack-box.sh")
# rootfs (~1 GB) + raw disk (sparse, ~1.5 GB used) + qcow2 + .box + the pool's copy.
BOX_BUILD_FREE_GIB = 6.0
MIRROR_FAILURES = ("Failed getting release file", "Could not resolve", "Temporary failure",
                   "Connection refused", "Failed to fetch", "Couldn't download")


def require_free_space(directory: Path, gib: float, what: str) -> None:
    """PrerequisiteMissing unless ``directory``'s file system has ``gib`` GiB free."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free / 2**30
    if free < gib:
        raise PrerequisiteMissing(
            f"{what} needs {gib:.0f} GiB free in {directory}, only {free:.1f} GiB are: "
            "free some space or point PWT_STATE_DIR elsewhere"
        )


def explain_build_failure(build_log: Path, message: str) -> str:
    """Name the likely cause of a failed box build when the log shows it."""
    try:
        text = build_log.read_text(errors="replace")
    except OSError:
        return message
    if any(marker in text for marker in MIRROR_FAILURES):
        return (f"the Debian mirror is unreachable ({DEBIAN_MIRROR}): the box cannot be built "
                f"without it; {message}")
    return message


def mounts_under(mountinfo: str, directory: Path) -> list[str]:
    """The mount points at or below ``directory`` in ``/proc/self/mountinfo`` text, deepest
    first (the order to unmount them in). Octal escapes (``\\040`` for a space) decoded."""
    top = str(directory).rstrip("/")
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == top or point.startswith(top + "/"):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def remove_work_dir(work: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> None:
    """Remove a build's scratch directory, unmounting first what a build killed outright left
    mounted in its chroot (debootstrap's /proc, the script's binds of /sys and /dev): rmtree
    must never walk into a mounted /proc or /dev, so with a mount left it removes nothing."""
    for point in mounts_under(mountinfo.read_text(), work):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if left := mounts_under(mountinfo.read_text(), work):
        log.info(f"not removing {work}: still mounted: {', '.join(left)}")
        return
    shutil.rmtree(work, ignore_errors=True)


def boot_files(box_file: Path) -> tuple[Path, Path]:
    """The kernel and initramfs that pack-box.sh writes beside ``box_file``."""
    return Path(f"{box_file}.vmlinuz"), Path(f"{box_file}.initrd")


def box_key(recipe: BoxRecipe, public_key: Path) -> str:
    data = {**recipe.build_env(), "pubkey": public_key.read_text()}
    return recipe_hash([BUILD_SCRIPT, PACK_SCRIPT], data)


def vagrant_box_image(env: dict[str, str], name: str) -> Path:
    """Where ``vagrant box add`` put the disk image of box ``name`` (libvirt provider)."""
    return (Path(env["VAGRANT_HOME"]) / "boxes" / name.replace("/", "-VAGRANTSLASH-") / "0"
            / "libvirt" / "box.img")


def added_box_problem(env: dict[str, str], name: str, libvirt_uri: str, pool: str) -> str | None:
    """Why the copies of box ``name`` that Vagrant and the pool hold cannot be trusted, or None.

    The checksum of Vagrant's copy was recorded when the suite added the box; the pool's base
    volume (uploaded by vagrant-libvirt at the first boot) is a byte copy of it."""
    image = vagrant_box_image(env, name)
    if not Path(f"{image}.sha256").exists():
        return f"no checksum was recorded for {image} when it was added"
    if not checksum_ok(image):
        return f"{image} does not match the checksum recorded when it was added"
    want = Path(f"{image}.sha256").read_text().strip()
    for volume, path in pool_volumes(libvirt_uri, pool, pool_base_prefix(name)):
        if path.exists() and file_sha256(path) != want:
            return f"the pool's base volume {volume} differs from the box image"
    return None


def ensure_box(
    recipe: BoxRecipe, state_dir: Path, timeout_s: float,
    libvirt_uri: str = "qemu:///system", pool: str = "pwt", provider: str = "libvirt",
) -> BuiltBox:
    """Build the box if its recipe changed or its file is corrupt, and add it to Vagrant."""
    if not recipe.buildable_offline:
        return fetch_box(recipe, state_dir, provider)
    if shutil.which("debootstrap") is None:
        raise PrerequisiteMissing("debootstrap is missing: run ./setup-host")
    key = ensure_ssh_key(state_dir)
    digest = box_key(recipe, key.with_suffix(".pub"))
    require_free_space(state_dir, BOX_BUILD_FREE_GIB, f"building box {recipe.name}")
    name = f"pwt/{recipe.name}-{digest}"
    boxes = state_dir / "boxes"
    box_file = boxes / f"{recipe.name}-{digest}.box"
    env = vagrant_env(state_dir)
    kernel, initrd = boot_files(box_file)
    built = BuiltBox(recipe, name, key, kernel, initrd)
    with locked(boxes / f"{recipe.name}.lock"):
        boot_ok = checksum_ok(kernel) and checksum_ok(initrd)
        if _vagrant_has_box(name, env):
            problem = added_box_problem(env, name, libvirt_uri, pool)
            if problem is None and not boot_ok:
                problem = f"its kernel or initramfs ({kernel}) is missing or corrupt"
                box_file.unlink(missing_ok=True)
            if problem is None:
                log.info(f"box {name}: cached (checksums verified)")
                return built
            log.info(f"box {name}: {problem}; removing it from Vagrant and the pool, re-adding")
            subprocess.run(["vagrant", "box", "remove", "--force", "--all", name],
                           env=env, capture_output=True, check=False)
            remove_libvirt_leftovers(libvirt_uri, pool, pool_base_prefix(name))
        if box_file.exists() and not (checksum_ok(box_file) and boot_ok):
            log.info(f"box file {box_file} or its kernel does not match its checksum: rebuilding")
            box_file.unlink()
        if not box_file.exists():
            with log.nested(f"building box {recipe.name} ({recipe.description}) with debootstrap"):
                work = boxes / f"work-{recipe.name}-{digest}"
                build_env = {
                    **os.environ, **recipe.build_env(),
                    "PUBKEY": str(key.with_suffix(".pub")),
                    "WORK": str(work), "OUT": str(box_file),
                }
                log.info(f"log: {boxes / f'{recipe.name}-{digest}.log'}")
                build_log = boxes / f"{recipe.name}-{digest}.log"
                remove_work_dir(work)  # an earlier build's, stopped before its own clean-up
                try:
                    run_logged(
                        ["bash", str(BUILD_SCRIPT)], build_log,
                        timeout=timeout_s, what=f"building box {recipe.name}", env=build_env,
                    )
                except HarnessError as e:
                    raise HarnessError(explain_build_failure(build_log, str(e))) from None
                finally:
                    remove_work_dir(work)
                for built_file in (box_file, kernel, initrd):
                    write_checksum(built_file)
        with log.nested(f"adding box {name} to Vagrant"):
            run_logged(
                ["vagrant", "box", "add", "--force", "--name", name, str(box_file)],
                boxes / f"{recipe.name}-{digest}.log", timeout=600, what="vagrant box add",
                env=env,
            )
            write_checksum(vagrant_box_image(env, name))
        for old in prune_old_boxes(recipe.name, keep=name, env=env):
            # vagrant-libvirt uploaded the old box into the pool as a base volume.
            remove_libvirt_leftovers(libvirt_uri, pool, pool_base_prefix(old))
        for old_file in old_box_files(boxes, recipe.name, keep=box_file):
            old_file.unlink()
    return built


def old_box_files(boxes: Path, recipe_name: str, keep: Path) -> list[Path]:
    """Files of earlier builds of ``recipe_name`` (not of a recipe whose name extends it)."""
    ours = re.compile(rf"{re.escape(recipe_name)}-[0-9a-f]{{12}}\.box(\..+)?")
    return sorted(p for p in boxes.glob(f"{recipe_name}-*.box*")
                  if ours.fullmatch(p.name) and not p.name.startswith(keep.name))


def prune_old_boxes(recipe_name: str, keep: str, env: dict[str, str]) -> list[str]:
    """Remove boxes of earlier recipes of ``recipe_name`` from Vagrant (disk is finite)."""
    names = vagrant_boxes(env)
    # Exactly this recipe's name and a digest: debian-bookworm must not take
    # debian-bookworm-backports with it.
    ours = re.compile(rf"pwt/{re.escape(recipe_name)}-[0-9a-f]{{12}}")
    old_boxes = sorted(n for n in names if ours.fullmatch(n) and n != keep)
    for old in old_boxes:
        log.info(f"removing superseded box {old}")
        subprocess.run(["vagrant", "box", "remove", "--force", "--all", old],
                       env=env, capture_output=True, check=False)
    return old_boxes



def fetch_box(recipe: BoxRecipe, state_dir: Path, provider: str) -> BuiltBox:
    """A downloaded box (Fedora, from its own servers, verified): vm/boxes/fedora_box.py."""
    if provider not in recipe.providers:
        raise HarnessError(
            f"box {recipe.name} has no {provider} version; providers: {', '.join(recipe.providers)}"
        )
    return fetch(recipe, state_dir, provider)
