"""VagrantVM.up when a port is taken: the clash is recognised in qemu's words and retried."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_portable_upgrade.boxes.recipes import get_box
from pytest_portable_upgrade.boxes.vagrant_boxes import BuiltBox
from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.machine import vagrant_backend
from pytest_portable_upgrade.machine.vagrant_backend import PORT_ATTEMPTS, VagrantVM, port_clash

QEMU = shutil.which("qemu-system-x86_64")


def qemu_stderr(netdev: str) -> str:
    """What this host's qemu prints when it cannot start with ``netdev`` (no guest runs)."""
    assert QEMU is not None
    run = subprocess.run(
        [QEMU, "-nodefaults", "-display", "none", "-S", "-machine", "none", "-netdev", netdev],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode != 0, run.stderr
    return run.stderr


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed (./setup-host)")
def test_real_qemu_refusing_a_taken_ssh_forward_is_a_port_clash() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = qemu_stderr(f"user,id=n,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22")
    assert port_clash(err) == f"Could not set up host forwarding rule 'tcp:127.0.0.1:{port}-:22'"


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed (./setup-host)")
def test_real_qemu_refusing_a_taken_udp_tunnel_port_is_a_port_clash() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        err = qemu_stderr(f"socket,id=n,udp=127.0.0.1:{port + 1},localaddr=127.0.0.1:{port}")
    clash = port_clash(err)
    assert clash is not None and "Address already in use" in clash


def test_other_boot_failures_are_not_port_clashes() -> None:
    assert port_clash("Call to virDomainCreateWithFlags failed: Cannot access storage file") is None
    assert port_clash("") is None


class FakeVagrant:
    """Stands in for python-vagrant: each ``up`` writes the next scripted output to the log
    and fails if it is a failure. Records what each attempt's Vagrantfile forwarded."""

    def __init__(self, vm: VagrantVM, outputs: list[str | None]) -> None:
        self.vm, self.outputs = vm, outputs
        self.ports: list[int] = []
        self.destroyed = 0

    def up(self, provider: str) -> None:
        text = (self.vm.run_dir / "Vagrantfile").read_text()
        self.ports.append(int(text.split("hostfwd=tcp:127.0.0.1:")[1].split("-")[0]))
        failure = self.outputs.pop(0)
        with self.vm.vagrant_log.open("a") as log:
            log.write(f"==> default: Starting domain.\n{failure or 'booted'}\n")
        if failure is not None:
            raise subprocess.CalledProcessError(1, ["vagrant", "up"])

    def destroy(self) -> None:
        self.destroyed += 1


@pytest.fixture
def vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VagrantVM:
    settings = Settings(state_dir=tmp_path, run_id="20261126-120000-abcdef")
    box = BuiltBox(get_box(settings.box), "pwt/debian-bookworm-test", tmp_path / "key")
    monkeypatch.setattr(vagrant_backend, "remove_libvirt_leftovers", lambda *a: [])
    return VagrantVM(settings, box, "tcg", tmp_path / "run")


def install(monkeypatch: pytest.MonkeyPatch, vm: VagrantVM, outputs: list[str | None]) -> Any:
    fake = FakeVagrant(vm, outputs)
    monkeypatch.setattr(VagrantVM, "_vagrant", lambda self: fake)
    monkeypatch.setattr(VagrantVM, "_vagrant_destroy", lambda self: fake.destroy())
    return fake


# What vagrant-libvirt logged here when steal-port.py (docs/demos) held the forwarded port.
CLASH = ("/usr/lib/ruby/vendor_ruby/fog/libvirt/requests/compute/vm_action.rb:7:in `create': "
         "Call to virDomainCreateWithFlags failed: internal error: qemu unexpectedly closed the "
         "monitor: 2026-11-26T15:47:14.129230Z qemu-system-x86_64: -netdev user,id=pwtnet,"
         "restrict=on,hostfwd=tcp:127.0.0.1:60635-:22: Could not set up host forwarding rule "
         "'tcp:127.0.0.1:60635-:22' (Libvirt::Error)")


def test_the_clash_vagrant_libvirt_reported_is_named_without_the_ruby_noise() -> None:
    assert port_clash(CLASH) == "Could not set up host forwarding rule 'tcp:127.0.0.1:60635-:22'"


def test_a_port_taken_before_qemu_binds_it_is_retried_with_another_port(
    vm: VagrantVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = install(monkeypatch, vm, [CLASH, None])
    vm._up_with_free_ports()
    assert len(fake.ports) == 2 and fake.destroyed == 1
    assert fake.ports[0] != fake.ports[1]


def test_a_port_clash_every_time_gives_up_after_the_last_attempt_naming_it(
    vm: VagrantVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = install(monkeypatch, vm, [CLASH] * PORT_ATTEMPTS)
    with pytest.raises(HarnessError, match="qemu said: Could not set up host forwarding rule"):
        vm._up_with_free_ports()
    assert len(fake.ports) == PORT_ATTEMPTS


def test_another_failure_is_not_retried(vm: VagrantVM, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch, vm, ["Volume for domain is already created", None])
    with pytest.raises(HarnessError, match=r"vagrant up failed \(exit 1\); see "):
        vm._up_with_free_ports()
    assert len(fake.ports) == 1 and fake.destroyed == 0


def test_an_earlier_clash_in_the_log_does_not_make_a_later_failure_a_clash(
    vm: VagrantVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only what this attempt wrote counts: the first attempt's clash is history.
    fake = install(monkeypatch, vm, [CLASH, "Cannot access storage file"])
    with pytest.raises(HarnessError) as err:
        vm._up_with_free_ports()
    assert "qemu said" not in str(err.value)
    assert len(fake.ports) == 2


def test_a_taken_ssh_port_option_is_replaced_by_a_free_one(
    vm: VagrantVM, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        wanted = VagrantVM(Settings(state_dir=tmp_path, ssh_port=port), vm.box, "tcg",
                           tmp_path / "run2")
        assert wanted.pick_ssh_port(1) != port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    wanted = VagrantVM(Settings(state_dir=tmp_path, ssh_port=free), vm.box, "tcg", tmp_path / "r3")
    assert wanted.pick_ssh_port(1) == free


def test_a_failed_boot_names_log_copies_that_outlive_the_run_dir(
    vm: VagrantVM, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    vm.failure_dir = tmp_path / "artifacts" / "boot"
    install(monkeypatch, vm, ["Call to virDomainCreateWithFlags failed: Unable to move mount"])
    vm.run_dir.mkdir()
    vm.console_log.write_text("SeaBIOS (version 1.16.2)\n")  # the Vagrantfile writer keeps it
    with pytest.raises(HarnessError) as err:
        vm._up_with_free_ports()
    saved_log, saved_console = vm.failure_dir / "vagrant.log", vm.failure_dir / "console.log"
    assert f"see {saved_log} and the console {saved_console}" in str(err.value)
    assert "Unable to move mount" in saved_log.read_text()
    assert saved_console.read_text() == "SeaBIOS (version 1.16.2)\n"
