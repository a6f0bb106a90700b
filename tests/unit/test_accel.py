"""Choosing the accelerator: an explicit --accel kvm on a host where KVM cannot be opened is
one line, not a VM that hangs; tcg and cached verdicts need no device."""

from __future__ import annotations

from pathlib import Path

import pytest

import pytest_portable_upgrade.machine.accel
from pytest_portable_upgrade.core.errors import PrerequisiteMissing
from pytest_portable_upgrade.machine.accel import choose_accel, kvm_device_problem


def test_a_missing_device_is_named(tmp_path: Path) -> None:
    problem = kvm_device_problem(str(tmp_path / "kvm"))
    assert problem is not None and "does not exist" in problem


def test_a_device_this_user_cannot_open_is_named(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    # As here: /dev/kvm exists, but its group is not one of the user's (root passes any check).
    accel_os = pytest_portable_upgrade.machine.accel.os
    monkeypatch.setattr(accel_os, "access", lambda _path, _mode: False)
    problem = kvm_device_problem(str(device))
    assert problem is not None and "not readable and writable for this user" in problem


def test_accel_kvm_without_a_usable_device_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteMissing) as info:
        choose_accel("kvm", tmp_path / "vmlinuz", tmp_path, device=str(tmp_path / "kvm"))
    assert str(info.value).startswith("--accel kvm: ")
    assert str(info.value).endswith("; or use --accel auto (TCG)")
    assert "\n" not in str(info.value)


def test_accel_kvm_with_an_openable_device_is_taken_as_asked(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    assert choose_accel("kvm", tmp_path / "vmlinuz", tmp_path, device=str(device)) == "kvm"


def test_accel_tcg_needs_no_device(tmp_path: Path) -> None:
    assert choose_accel("tcg", tmp_path / "vmlinuz", tmp_path,
                        device=str(tmp_path / "kvm")) == "tcg"


def test_the_probe_verdict_is_cached_per_host_boot(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_text("not a kernel")
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (tmp_path / f"accel-{boot_id}").write_text("tcg\n")
    assert choose_accel("auto", kernel, tmp_path) == "tcg"
