"""Choose KVM or TCG by booting a kernel, not by trusting /dev/kvm.

On some hosts (nested, paravirtualised) /dev/kvm exists and libvirt reports KVM, yet a guest
kernel hangs at its first instruction. The probe starts the box's own kernel under
``-accel kvm`` for a few seconds and looks for its first console line.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from pytest_portable_upgrade.core.errors import PrerequisiteMissing, WaitTimeout
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.core.retry import retry

PROBE_SECONDS = 20.0
BANNER = b"Linux version"


class KvmProbeEnded(Exception):
    """The probe's qemu exited before the kernel said anything."""


def kvm_boots(kernel: Path, seconds: float = PROBE_SECONDS) -> bool:
    """True when ``kernel`` prints its banner under KVM within ``seconds``."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="pwt-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        cmd = [
            "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
            "-display", "none", "-serial", f"file:{serial}", "-no-reboot", "-nic", "none",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def banner(_last: bool) -> bool:
            if serial.exists() and BANNER in serial.read_bytes():
                return True
            if proc.poll() is not None and not (serial.exists() and serial.stat().st_size):
                raise KvmProbeEnded  # qemu exited without a word: KVM does not boot here
            return False

        try:
            retry(banner, timeout=seconds, interval=0.25, what="the kernel's banner under KVM")
            return True
        except (WaitTimeout, KvmProbeEnded):
            return False
        finally:
            proc.kill()
            proc.wait()


def kvm_device_problem(device: str = "/dev/kvm") -> str | None:
    """Why this user cannot use ``device`` at all, or None."""
    if not os.path.exists(device):
        return f"{device} does not exist (no KVM module, or a container without the device)"
    if not os.access(device, os.R_OK | os.W_OK):
        return (f"{device} is not readable and writable for this user "
                "(add the user to the kvm group, or run as root)")
    return None


def choose_accel(requested: str, kernel: Path, cache_dir: Path,
                 device: str = "/dev/kvm") -> str:
    """``kvm`` or ``tcg``: the requested one, or for ``auto`` the probe's verdict.

    The verdict is cached per host boot (boot_id) so a session pays for the probe once.
    """
    if requested == "kvm" and (problem := kvm_device_problem(device)) is not None:
        raise PrerequisiteMissing(f"--accel kvm: {problem}; or use --accel auto (TCG)")
    if requested in ("kvm", "tcg"):
        return requested
    if not kernel.exists():
        # A downloaded box (Fedora): no kernel of ours to probe with; trust the device.
        return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cached = cache_dir / f"accel-{boot_id}"
    if cached.exists():
        return cached.read_text().strip()
    with log.nested("probing whether KVM boots a kernel here"):
        accel = "kvm" if kvm_boots(kernel) else "tcg"
        why = " (KVM did not boot the kernel)" if accel == "tcg" else ""
        log.info(f"accelerator: {accel}{why}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached.write_text(accel + "\n")
    return accel
