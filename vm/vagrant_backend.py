"""Boot and destroy one VM with Vagrant (through python-vagrant) and the libvirt provider."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vm.box import BuiltBox, vagrant_env
from vm.config import Settings
from vm.errors import HarnessError
from vm.host import (
    check_vagrant_prerequisites,
    free_port,
    random_mac,
    remove_libvirt_leftovers,
)
from vm.log import log
from vm.machine import Machine, parse_ssh_config
from vm.proc import heartbeat
from vm.vagrantfile import VagrantfileSpec, render

# What qemu says when a port it was given is taken by the time it binds it (seen here with
# qemu 7.2: the SSH forward of user networking, and the UDP tunnel's local address).
PORT_CLASH = re.compile(
    r"Could not set up host forwarding rule '[^'\n]*'|can't bind ip=[^\n]*?Address already in use"
)
PORT_ATTEMPTS = 3


def port_clash(vagrant_output: str) -> str | None:
    """The qemu line saying a forwarded or tunnel port was taken, if vagrant's output has one."""
    match = PORT_CLASH.search(vagrant_output)
    return match.group(0).strip() if match else None


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class VagrantVM:
    """One VM of one run, in its own directory ``run_dir`` (Vagrantfile, .vagrant, logs)."""

    settings: Settings
    box: BuiltBox
    accel: str
    run_dir: Path
    # Where the vagrant log and the console go when the boot fails (the run dir is removed).
    failure_dir: Path | None = None

    @property
    def domain_prefix(self) -> str:
        return f"pwt-{self.settings.run_id}-"

    @property
    def domain(self) -> str:
        return f"{self.domain_prefix}default"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def vagrant_log(self) -> Path:
        return self.run_dir / "vagrant.log"

    @property
    def env(self) -> dict[str, str]:
        return vagrant_env(self.settings.state_dir)

    def _vagrant(self) -> Any:
        """A python-vagrant handle on this run's directory, its output in vagrant.log."""
        import vagrant

        return vagrant.Vagrant(  # type: ignore[no-untyped-call]
            root=str(self.run_dir), env=self.env,
            out_cm=vagrant.make_file_cm(str(self.vagrant_log)),  # type: ignore[no-untyped-call]
            err_cm=vagrant.make_file_cm(str(self.vagrant_log)),  # type: ignore[no-untyped-call]
        )

    def pick_ssh_port(self, attempt: int) -> int:
        """--ssh-port if it is free on the first attempt; otherwise a free one, saying so."""
        wanted = self.settings.ssh_port
        if wanted and attempt == 1:
            if port_is_free(wanted):
                return wanted
            port = free_port()
            log.info(f"127.0.0.1:{wanted} (--ssh-port) is taken: using {port} instead")
            return port
        return free_port()

    def write_vagrantfile(self, attempt: int = 1) -> VagrantfileSpec:
        s = self.settings
        spec = VagrantfileSpec(
            box=self.box.vagrant_name, domain_prefix=self.domain_prefix,
            private_key=self.box.private_key, ssh_port=self.pick_ssh_port(attempt),
            udp_port=free_port(kind=2), udp_local_port=free_port(kind=2), mac=random_mac(),
            accel=self.accel, memory_mb=s.memory_mb, cpus=s.cpus, libvirt_uri=s.libvirt_uri,
            pool=s.pool, console_log=self.console_log, boot_timeout_s=int(s.boot_timeout_s),
            provider=s.provider,
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        (self.run_dir / "Vagrantfile").write_text(render(spec))
        # qemu (as libvirt-qemu) writes the console; libvirt hands it an existing file.
        self.console_log.touch()
        return spec

    def up(self) -> Machine:
        """``vagrant up``, then a Machine connected over SSH."""
        check_vagrant_prerequisites(self.settings.libvirt_uri, self.env, self.settings.provider)
        accel = "KVM" if self.accel == "kvm" else "TCG (no usable KVM)"
        with log.nested(f"booting {self.domain} from {self.box.vagrant_name}, {accel}"):
            self._up_with_free_ports()
            target = parse_ssh_config(self._vagrant().ssh_config())
            machine = Machine(self.domain, target, self.console_log)
            machine.connect(timeout=120)
        return machine

    def _up_with_free_ports(self) -> None:
        """``vagrant up``; when qemu finds a port taken between picking and binding (another
        process got it), remove the half-made domain and try again with other ports."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            spec = self.write_vagrantfile(attempt)
            log.info(f"SSH on 127.0.0.1:{spec.ssh_port}; vagrant log: {self.vagrant_log}")
            seen = self.vagrant_log.stat().st_size if self.vagrant_log.exists() else 0
            with heartbeat(self.vagrant_log):
                try:
                    self._vagrant().up(provider=self.settings.provider)
                    return
                except subprocess.CalledProcessError as e:
                    failure = e
            with self.vagrant_log.open(errors="replace") as f:
                f.seek(seen)
                clash = port_clash(f.read())
            if clash is None or attempt == PORT_ATTEMPTS:
                break
            log.info(f"a port was taken when qemu started ({clash}); "
                     f"removing the domain and retrying with other ports ({attempt + 1}/"
                     f"{PORT_ATTEMPTS})")
            self.destroy()
        reason = f"; qemu said: {clash}" if clash else ""
        vagrant_log, console = self.save_boot_logs()
        raise HarnessError(
            f"vagrant up failed (exit {failure.returncode}){reason}; see {vagrant_log} "
            f"and the console {console}"
        ) from None

    def save_boot_logs(self) -> tuple[Path, Path]:
        """Copy the vagrant log and the console to ``failure_dir`` (if set); their paths."""
        if self.failure_dir is None:
            return self.vagrant_log, self.console_log
        self.failure_dir.mkdir(parents=True, exist_ok=True)
        saved = []
        for source in (self.vagrant_log, self.console_log):
            target = self.failure_dir / source.name
            if source.exists():
                shutil.copyfile(source, target)
            saved.append(target)
        return saved[0], saved[1]

    def destroy(self) -> None:
        """``vagrant destroy``; then make sure libvirt has no domain or volume of this run left."""
        with log.nested(f"destroying {self.domain}"):
            try:
                self._vagrant().destroy()
            except (subprocess.CalledProcessError, OSError) as e:
                log.info(f"vagrant destroy failed ({e}); removing the domain with virsh")
            if self.settings.provider == "libvirt":
                remove_libvirt_leftovers(self.settings.libvirt_uri, self.settings.pool,
                                         self.domain_prefix)
