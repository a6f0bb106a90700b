"""Run settings: pytest options, each overridable by a ``PWT_*`` environment variable."""

from __future__ import annotations

import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pytest_portable_upgrade.boxes.recipes import DEFAULT_BOX, get_box
from pytest_portable_upgrade.subject.spec import DEFAULT_SPEC

KEEP_VM_CHOICES = ("never", "on-error", "always")
PROVIDER_CHOICES = ("libvirt", "virtualbox")
ACCEL_CHOICES = ("auto", "kvm", "tcg")
RESTORE_CHOICES = ("on", "off")
# One thread per request in the guest: beyond this the probe, not ab, would be the load.
MAX_PROBE_RATE = 200.0


def default_state_dir() -> Path:
    # qemu runs as libvirt-qemu and must reach the boxes and console logs: not under /root.
    if os.geteuid() == 0:
        return Path("/var/lib/portable-walkthrough-tests")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pwt"


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class LoadSettings:
    """The load around the reattach: ab runs from ``switch_after_s`` before the reattach until
    v2 has answered for ``post_switch_s``, never longer than ``max_s`` (ab's own -t bound)."""

    concurrency: int = 10
    switch_after_s: float = 5.0
    post_switch_s: float = 10.0
    max_s: float = 240.0
    min_complete: int = 200
    # The probe's fixed arrival rate (requests/s). 20/s resolves the timeline in 50 ms steps and
    # is a small share of what the server does under TCG (134-167 req/s seen without
    # keep-alive): an open-loop probe near the server's capacity would queue behind itself.
    probe_rate: float = 20.0
    max_stall_s: float | None = None  # --max-stall: fail a run whose longest gap exceeds it

    def validate(self) -> None:
        durations = {"switch-after": self.switch_after_s, "post-switch": self.post_switch_s,
                     "load-max": self.max_s}
        for name, value in durations.items():
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number of seconds, not {value}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.switch_after_s <= 0 or self.post_switch_s <= 0:
            raise ValueError("switch-after and post-switch must be positive durations")
        if self.max_s <= self.switch_after_s + self.post_switch_s:
            raise ValueError(
                f"load bound {self.max_s:g} s leaves no time for the reattach: it must exceed "
                f"switch-after + post-switch = {self.switch_after_s + self.post_switch_s:g} s"
            )
        if self.min_complete < 1:
            raise ValueError("min-complete must be at least 1")
        if not (math.isfinite(self.probe_rate) and 0 < self.probe_rate <= MAX_PROBE_RATE):
            raise ValueError(f"probe-rate must be a number of requests per second in "
                             f"(0, {MAX_PROBE_RATE:g}], not {self.probe_rate:g}")
        if self.max_stall_s is not None and not (
            math.isfinite(self.max_stall_s) and self.max_stall_s > 0
        ):
            raise ValueError(f"max-stall must be a positive number of seconds, "
                             f"not {self.max_stall_s:g}")

    @property
    def probe_max_in_flight(self) -> int:
        """The probe's bound on outstanding requests: 200, or 10 s of sending if more."""
        return max(200, math.ceil(self.probe_rate * 10))


@dataclass(frozen=True)
class Settings:
    box: str = DEFAULT_BOX
    state_dir: Path = field(default_factory=default_state_dir)
    artifacts_root: Path = Path("artifacts")
    run_id: str = field(default_factory=new_run_id)
    accel: str = "auto"
    provider: str = "libvirt"
    keep_vm: str = "never"
    memory_mb: int = 2048
    cpus: int = 2
    boot_timeout_s: float = 900.0
    box_build_timeout_s: float = 1800.0
    reattach_timeout_s: float = 240.0
    unit_timeout_s: float = 60.0
    ssh_port: int = 0  # 0: a free loopback port picked at boot
    artifacts_always: bool = False  # save the evidence of passing runs too
    libvirt_uri: str = "qemu:///system"
    pool: str = "pwt"
    # "on": restore the box's saved booted guest (made by the first cold boot); "off": always
    # boot cold and save nothing.
    restore: str = "on"
    load: LoadSettings = field(default_factory=LoadSettings)
    # The subject spec of the service under test (--service; vm/subject/spec.py reads it).
    service: Path = DEFAULT_SPEC

    def validate(self) -> None:
        recipe = get_box(self.box)
        if self.provider not in PROVIDER_CHOICES:
            raise ValueError(
                f"provider must be one of {', '.join(PROVIDER_CHOICES)}, not {self.provider!r}"
            )
        if self.provider not in recipe.providers:
            raise ValueError(f"box {self.box} has no {self.provider} version "
                             f"(it has: {', '.join(recipe.providers)})")
        if self.accel not in ACCEL_CHOICES:
            raise ValueError(f"accel must be one of {', '.join(ACCEL_CHOICES)}, not {self.accel!r}")
        if self.restore not in RESTORE_CHOICES:
            raise ValueError(f"restore must be on or off, not {self.restore!r}")
        if self.keep_vm not in KEEP_VM_CHOICES:
            raise ValueError(
                f"keep-vm must be one of {', '.join(KEEP_VM_CHOICES)}, not {self.keep_vm!r}"
            )
        timeouts = {"boot-timeout": self.boot_timeout_s,
                    "box-build-timeout": self.box_build_timeout_s,
                    "reattach-timeout": self.reattach_timeout_s,
                    "unit-timeout": self.unit_timeout_s}
        for name, value in timeouts.items():
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value:g}")
        if self.ssh_port and not 1024 <= self.ssh_port <= 65535:
            raise ValueError(f"ssh-port must be 0 (pick one) or 1024..65535, not {self.ssh_port}")
        if self.memory_mb < 512 or self.cpus < 1:
            raise ValueError("the VM needs at least 512 MB and 1 CPU")
        self.load.validate()

    @property
    def artifacts_dir(self) -> Path:
        return self.artifacts_root / self.run_id

    @property
    def run_dir(self) -> Path:
        """Per-run scratch on the host: Vagrantfile, .vagrant, console log."""
        return self.state_dir / "runs" / self.run_id
