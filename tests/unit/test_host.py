"""vm/core/host.py: loopback ports, MAC addresses, prerequisite checks (vagrant is never run)."""

from __future__ import annotations

import random
import re
import socket
import subprocess
from typing import Any

import pytest

from pytest_portable_upgrade.core import host as host
from pytest_portable_upgrade.core.errors import HarnessError, PrerequisiteMissing
from pytest_portable_upgrade.core.host import check_vagrant_prerequisites, free_port, random_mac


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_free_port_is_bindable(kind: int) -> None:
    port = free_port(kind)
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", port))


def test_random_mac_format() -> None:
    for _ in range(50):
        mac = random_mac()
        assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac), mac


def test_random_mac_is_reproducible_with_a_seed() -> None:
    assert random_mac(random.Random(7)) == random_mac(random.Random(7))
    assert len({random_mac(random.Random(seed)) for seed in range(20)}) > 15


def which(available: set[str]) -> Any:
    return lambda name: f"/usr/bin/{name}" if name in available else None


def fake_run(plugins: str, virsh_rc: int = 0, virsh_err: str = "") -> Any:
    calls: list[list[str]] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if cmd[:2] == ["vagrant", "plugin"]:
            return subprocess.CompletedProcess(cmd, 0, plugins, "")
        if cmd[0] == "virsh":
            return subprocess.CompletedProcess(cmd, virsh_rc, "", virsh_err)
        raise AssertionError(f"unexpected command {cmd}")

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_missing_vagrant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.shutil, "which", which(set()))
    monkeypatch.setattr(host.subprocess, "run", fake_run(""))
    with pytest.raises(PrerequisiteMissing, match=r"vagrant is not installed: run \./setup-host"):
        check_vagrant_prerequisites("qemu:///system", {})
    assert issubclass(PrerequisiteMissing, HarnessError)


def test_missing_virsh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.shutil, "which", which({"vagrant"}))
    monkeypatch.setattr(host.subprocess, "run", fake_run(""))
    with pytest.raises(PrerequisiteMissing, match="virsh"):
        check_vagrant_prerequisites("qemu:///system", {})


def test_missing_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.shutil, "which", which({"vagrant", "virsh"}))
    monkeypatch.setattr(host.subprocess, "run", fake_run("vagrant-share (2.0.0, global)\n"))
    with pytest.raises(PrerequisiteMissing, match="vagrant-libvirt plugin is missing"):
        check_vagrant_prerequisites("qemu:///system", {})


def test_libvirtd_not_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    run = fake_run("vagrant-libvirt (0.12.2, global)\n", virsh_rc=1,
                   virsh_err="error: failed to connect to the hypervisor\n"
                             "error: Failed to connect socket: No such file or directory\n")
    monkeypatch.setattr(host.shutil, "which", which({"vagrant", "virsh"}))
    monkeypatch.setattr(host.subprocess, "run", run)
    with pytest.raises(PrerequisiteMissing) as info:
        check_vagrant_prerequisites("qemu:///system", {"VAGRANT_HOME": "/x"})
    assert str(info.value) == ("libvirtd does not answer at qemu:///system (error: Failed to "
                               "connect socket: No such file or directory): run ./setup-host")
    assert run.calls[1] == ["virsh", "-c", "qemu:///system", "version"]


def test_all_prerequisites_present(monkeypatch: pytest.MonkeyPatch) -> None:
    run = fake_run("vagrant-libvirt (0.12.2, global)\n")
    monkeypatch.setattr(host.shutil, "which", which({"vagrant", "virsh"}))
    monkeypatch.setattr(host.subprocess, "run", run)
    check_vagrant_prerequisites("qemu:///system", {})
    assert [c[0] for c in run.calls] == ["vagrant", "virsh"]


VOL_LIST = """ Name                                                                   Path
-------------------------------------------------------------------------------------------------
 pwt-20261126-153700-b4dc26-default.img      /p/pool/pwt-20261126-153700-b4dc26-default.img
 pwt-VAGRANTSLASH-debian-trixie-a45bfd2d04f3_vagrant_box_image_0_1795700088_box.img \
  /p/pool/with space/t.img

"""


def test_pool_volumes_parses_virsh_vol_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "_virsh", lambda *a: subprocess.CompletedProcess(a, 0, VOL_LIST))
    assert host.pool_volumes("qemu:///system", "pwt", "pwt-VAGRANTSLASH-debian-trixie-") == [
        ("pwt-VAGRANTSLASH-debian-trixie-a45bfd2d04f3_vagrant_box_image_0_1795700088_box.img",
         host.Path("/p/pool/with space/t.img"))]
    assert [n for n, _ in host.pool_volumes("u", "pwt", "pwt-2026")] == [
        "pwt-20261126-153700-b4dc26-default.img"]


def test_pool_volumes_is_empty_when_libvirt_does_not_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a: Any) -> Any:
        raise subprocess.TimeoutExpired("virsh", 30)
    monkeypatch.setattr(host, "_virsh", fail)
    assert host.pool_volumes("u", "pwt", "") == []


@pytest.mark.parametrize("stderr", [
    "error: failed to connect to the hypervisor\nerror: Failed to connect socket to "
    "'/var/run/libvirt/libvirt-sock': Permission denied\n",
    "error: failed to connect to the hypervisor\nerror: authentication unavailable: no polkit "
    "agent available to authenticate action 'org.libvirt.unix.manage'\n",
])
def test_no_permission_for_libvirt_says_so(monkeypatch: pytest.MonkeyPatch, stderr: str) -> None:
    run = fake_run("vagrant-libvirt (0.12.2, global)\n", virsh_rc=1, virsh_err=stderr)
    monkeypatch.setattr(host.shutil, "which", which({"vagrant", "virsh"}))
    monkeypatch.setattr(host.subprocess, "run", run)
    with pytest.raises(PrerequisiteMissing) as info:
        check_vagrant_prerequisites("qemu:///system", {})
    message = str(info.value)
    assert message.startswith("no permission to manage libvirt at qemu:///system (error: ")
    assert message.endswith("): run as root, or add the user to the libvirt group")


def test_a_user_without_polkit_gets_the_permission_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # What `runuser -u nobody -- virsh -c qemu:///system version` printed here.
    run = fake_run("vagrant-libvirt (0.12.2, global)\n", virsh_rc=1,
                   virsh_err="error: failed to connect to the hypervisor\nerror: internal error: "
                             "Unable to get system bus connection: Could not connect: No such "
                             "file or directory\n")
    monkeypatch.setattr(host.shutil, "which", which({"vagrant", "virsh"}))
    monkeypatch.setattr(host.subprocess, "run", run)
    monkeypatch.setattr(host.os, "geteuid", lambda: 1000)
    with pytest.raises(PrerequisiteMissing, match=r"^no permission to manage libvirt"):
        check_vagrant_prerequisites("qemu:///system", {})
    monkeypatch.setattr(host.os, "geteuid", lambda: 0)  # root: libvirtd itself is missing
    with pytest.raises(PrerequisiteMissing, match=r"^libvirtd does not answer"):
        check_vagrant_prerequisites("qemu:///system", {})
