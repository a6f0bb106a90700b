"""Boot and destroy one VM with Vagrant (through python-vagrant) and the libvirt provider."""

from __future__ import annotations

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


@dataclass
class VagrantVM:
    """One VM of one run, in its own directory ``run_dir`` (Vagrantfile, .vagrant, logs)."""

    settings: Settings
    box: BuiltBox
    accel: str
    run_dir: Path

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

    def write_vagrantfile(self) -> VagrantfileSpec:
        s = self.settings
        spec = VagrantfileSpec(
            box=self.box.vagrant_name, domain_prefix=self.domain_prefix,
            private_key=self.box.private_key, ssh_port=free_port(),
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
        spec = self.write_vagrantfile()
        accel = "KVM" if self.accel == "kvm" else "TCG (no usable KVM)"
        with log.nested(f"booting {self.domain} from {self.box.vagrant_name}, {accel}"):
            log.info(f"SSH on 127.0.0.1:{spec.ssh_port}; vagrant log: {self.vagrant_log}")
            with heartbeat(self.vagrant_log):
                try:
                    self._vagrant().up(provider=self.settings.provider)
                except subprocess.CalledProcessError as e:
                    raise HarnessError(
                        f"vagrant up failed (exit {e.returncode}); see {self.vagrant_log} and "
                        f"the console {self.console_log}"
                    ) from None
            target = parse_ssh_config(self._vagrant().ssh_config())
            machine = Machine(self.domain, target, self.console_log)
            machine.connect(timeout=120)
        return machine

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
