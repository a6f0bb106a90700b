"""Boot and destroy one VM with Vagrant (through python-vagrant) and the libvirt provider."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_portable_upgrade.boxes.vagrant_boxes import BuiltBox, vagrant_env
from pytest_portable_upgrade.core.config import Settings
from pytest_portable_upgrade.core.errors import HarnessError
from pytest_portable_upgrade.core.host import (
    check_vagrant_prerequisites,
    free_port,
    random_mac,
    remove_libvirt_leftovers,
)
from pytest_portable_upgrade.core.log import log
from pytest_portable_upgrade.core.proc import heartbeat, signals_deferred
from pytest_portable_upgrade.machine.machine import Machine, SshTarget, parse_ssh_config
from pytest_portable_upgrade.machine.saved_guest import (
    RunDomain,
    SavedGuest,
    domain_uuid,
    host_versions,
    main_disk,
    new_uuid,
    pool_path,
    retarget_domain_xml,
    retarget_image,
    saved_guest_for,
    saved_key,
    stale_saved_guests,
    user_nic_mac,
    virsh,
    write_vagrant_machine_id,
)
from pytest_portable_upgrade.machine.vagrantfile import VagrantfileSpec, render

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
    # How the guest came up: "boot_cold" (vagrant up) or "restore" (the saved guest).
    boot_path: str = "boot_cold"

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

    def write_vagrantfile(self, attempt: int = 1, mac: str | None = None) -> VagrantfileSpec:
        s = self.settings
        spec = VagrantfileSpec(
            box=self.box.vagrant_name, domain_prefix=self.domain_prefix,
            private_key=self.box.private_key, ssh_port=self.pick_ssh_port(attempt),
            udp_port=free_port(kind=2), udp_local_port=free_port(kind=2),
            mac=mac or random_mac(),
            accel=self.accel, memory_mb=s.memory_mb, cpus=s.cpus, libvirt_uri=s.libvirt_uri,
            pool=s.pool, console_log=self.console_log, boot_timeout_s=int(s.boot_timeout_s),
            provider=s.provider, kernel=self.box.kernel, initrd=self.box.initrd,
            cmd_line=self.box.cmd_line,
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        (self.run_dir / "Vagrantfile").write_text(render(spec))
        # qemu (as libvirt-qemu) writes the console; libvirt hands it an existing file.
        self.console_log.touch()
        return spec

    def up(self) -> Machine:
        """A running guest with a Machine connected over SSH: the box's saved guest restored
        (``boot_path`` "restore"), or ``vagrant up`` ("boot_cold"), which then saves the
        guest for the next runs of this box."""
        check_vagrant_prerequisites(self.settings.libvirt_uri, self.env, self.settings.provider)
        saved = self.saved_guest()
        if saved is not None and saved.complete():
            try:
                machine = self._restore(saved)
                self.boot_path = "restore"
                return machine
            except HarnessError as e:
                log.info(f"restoring the saved guest failed ({e}); dropping it, booting cold")
                self.destroy()
                shutil.rmtree(saved.directory, ignore_errors=True)
        elif saved is not None:
            log.info(f"no saved guest for {self.box.vagrant_name} with this qemu, libvirt and "
                     f"VM size: booting cold, then saving it ({saved.directory})")
        accel = "KVM" if self.accel == "kvm" else "TCG (no usable KVM)"
        with log.nested(f"booting {self.domain} from {self.box.vagrant_name}, {accel}"):
            self._up_with_free_ports()
            target = parse_ssh_config(self._vagrant().ssh_config())
            machine = Machine(self.domain, target, self.console_log)
            machine.connect(timeout=120)
        self.boot_path = "boot_cold"
        if saved is not None:
            self._save_for_next_runs(saved, machine)
        return machine

    # --- saved guest: save once per box and host, restore per run -------------------------
    def saved_guest(self) -> SavedGuest | None:
        """Where this box's saved guest lives, or None when runs do not restore (--restore
        off, VirtualBox, or a downloaded box that boots its own way)."""
        s = self.settings
        if s.restore != "on" or s.provider != "libvirt" or self.box.kernel is None:
            return None
        qemu, libvirt = host_versions(s.libvirt_uri)
        key = saved_key(self.box.vagrant_name, self.accel, s.memory_mb, s.cpus, qemu, libvirt)
        saved = saved_guest_for(s.state_dir, self.box.vagrant_name, key)
        for stale in stale_saved_guests(s.state_dir, self.box.recipe.name, saved):
            log.info(f"removing the saved guest {stale.name}: made from another build of the "
                     "box, or with another qemu, libvirt or recipe")
            shutil.rmtree(stale, ignore_errors=True)
        return saved

    def _settle_and_close(self, machine: Machine) -> None:
        """Let the guest finish booting and drop its page cache (a smaller memory image)."""
        state = machine.execute("timeout 120 systemctl is-system-running --wait; "
                                "sync; echo 3 > /proc/sys/vm/drop_caches", timeout=150)
        if state.stdout.strip() not in ("running", "degraded"):
            raise HarnessError(f"the guest did not settle: {state.describe()}")
        machine.close()

    def _save_for_next_runs(self, saved: SavedGuest, machine: Machine) -> None:
        """``virsh save`` the freshly booted guest with a frozen copy of its disk, then
        restore it for this run (its disk has not changed meanwhile)."""
        uri = self.settings.libvirt_uri
        scratch = saved.directory.with_name(f"{saved.directory.name}.tmp-{self.settings.run_id}")
        with log.nested("saving the booted guest for the next runs"), \
                signals_deferred("saving the guest"):
            self._settle_and_close(machine)
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            try:
                virsh(uri, "save", self.domain, str(scratch / "memory.sav"))
                domain_xml = virsh(uri, "save-image-dumpxml", str(scratch / "memory.sav"),
                                   "--security-info")
                disk = main_disk(domain_xml)
                subprocess.run(["cp", "--sparse=always", disk, str(scratch / "disk.qcow2")],
                               check=True, start_new_session=True)
                (scratch / "domain.xml").write_text(domain_xml)
                (scratch / "saved.json").write_text(json.dumps({
                    "name": self.domain, "uuid": domain_uuid(domain_xml), "disk": disk,
                    "mac": user_nic_mac(domain_xml), "box": self.box.vagrant_name,
                }, indent=1))
                try:
                    scratch.rename(saved.directory)
                    log.info(f"saved: {saved.directory} "
                             f"({saved.memory.stat().st_size / 2**20:.0f} MB of memory)")
                    restore_from = saved.memory
                except OSError:  # another run saved the same guest first: keep theirs
                    restore_from = scratch / "memory.sav"
                virsh(uri, "restore", str(restore_from))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            machine.connect(timeout=60)
            self._after_restore(machine)

    def _restore(self, saved: SavedGuest) -> Machine:
        """Restore the saved guest into this run's own domain, overlay and ports."""
        s = self.settings
        meta = saved.meta()
        with log.nested(f"restoring the saved guest of {self.box.vagrant_name} as {self.domain}"):
            spec = self.write_vagrantfile(mac=meta["mac"])
            overlay = pool_path(s.libvirt_uri, s.pool) / f"{self.domain}.img"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            str(saved.disk), str(overlay)], check=True, capture_output=True,
                           start_new_session=True)
            virsh(s.libvirt_uri, "pool-refresh", s.pool)
            run = RunDomain(self.domain, new_uuid(), overlay, self.console_log, spec.ssh_port,
                            spec.udp_port, spec.udp_local_port)
            xml_path = self.run_dir / "domain.xml"
            xml_path.write_text(retarget_domain_xml(
                (saved.directory / "domain.xml").read_text(), meta["disk"], run))
            image = self.run_dir / "memory.sav"
            try:
                retarget_image(saved.memory, image, {meta["name"]: run.name,
                                                     meta["uuid"]: run.uuid})
                virsh(s.libvirt_uri, "define", str(xml_path))
                write_vagrant_machine_id(self.run_dir, run.uuid)
                virsh(s.libvirt_uri, "restore", str(image), "--xml", str(xml_path))
            finally:
                image.unlink(missing_ok=True)
            assert self.box.private_key is not None
            machine = Machine(self.domain, SshTarget("127.0.0.1", spec.ssh_port, "vagrant",
                                                     self.box.private_key), self.console_log)
            machine.connect(timeout=60)
            self._after_restore(machine)
        return machine

    @staticmethod
    def _after_restore(machine: Machine) -> None:
        """The guest's clock stood still while it was saved; its entropy pool is the same in
        every restored run: set the one, stir the other."""
        machine.succeed(f"date -s @{time.time():.3f} >/dev/null && "
                        f"printf %s {secrets.token_hex(32)} > /dev/urandom", timeout=30)

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

    def _vagrant_destroy(self) -> None:
        """``vagrant destroy --force`` in a session of its own (python-vagrant's call would
        share the terminal's process group and die with a second Ctrl-C)."""
        with self.vagrant_log.open("ab") as out:
            subprocess.run(["vagrant", "destroy", "--force"], cwd=self.run_dir, env=self.env,
                           stdout=out, stderr=subprocess.STDOUT, timeout=300, check=True,
                           start_new_session=True)

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
        """``vagrant destroy``; then make sure libvirt has no domain or volume of this run left.

        Signals are deferred meanwhile and vagrant runs in its own session, so neither a second
        Ctrl-C nor tox passing one on can stop the clean-up halfway."""
        with log.nested(f"destroying {self.domain}"), signals_deferred("destroying the VM"):
            if (self.run_dir / "Vagrantfile").exists():
                try:
                    self._vagrant_destroy()
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
                    log.info(f"vagrant destroy failed ({e}); removing the domain with virsh")
            if self.settings.provider == "libvirt":
                remove_libvirt_leftovers(self.settings.libvirt_uri, self.settings.pool,
                                         self.domain_prefix)
