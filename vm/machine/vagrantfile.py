"""Render the Vagrantfile of one run.

Networking obeys the project's rule: the guest's only working NIC is qemu user-mode networking
with ``restrict=on`` (the guest reaches nothing outside) and SSH forwarded to 127.0.0.1. No
libvirt bridge is created. vagrant-libvirt still needs a NIC in the domain XML whose MAC it can
match against the guest agent's interface list; that NIC is a UDP tunnel between two loopback
ports with the same MAC as the user-mode NIC, so it carries nothing anywhere.

The one exception is ``network="provision"``: the VM that provisions a downloaded box once
(vm/boxes/fedora_box.py) needs dnf's mirrors, so its user-mode NIC is not restricted. Every run then
boots the packaged result with ``network="restricted"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VagrantfileSpec:
    box: str
    domain_prefix: str  # the libvirt domain is "<prefix>default"; carries the run id
    private_key: Path | None  # None: Vagrant's own key handling (downloaded boxes)
    ssh_port: int
    udp_port: int
    udp_local_port: int
    mac: str
    accel: str  # "kvm" or "tcg"
    memory_mb: int
    cpus: int
    libvirt_uri: str
    pool: str
    console_log: Path
    boot_timeout_s: int
    provider: str = "libvirt"
    # Direct kernel boot (boxes built here); None: the box boots its own way (Fedora).
    kernel: Path | None = None
    initrd: Path | None = None
    cmd_line: str | None = None
    network: str = "restricted"  # or "provision": open, for the one-time provisioning VM


NETWORK_CHOICES = ("restricted", "provision")


def _rb(value: object) -> str:
    """A Ruby literal for a str/int/bool (JSON strings are valid Ruby strings)."""
    return json.dumps(value)


def _ssh_key_lines(spec: VagrantfileSpec) -> str:
    """Our own per-host key for boxes built here; none for downloaded boxes (Vagrant then
    replaces the box's insecure key at first boot)."""
    if spec.private_key is None:
        return ""
    return (
        "  config.ssh.insert_key = false\n"
        f"  config.ssh.private_key_path = [{_rb(str(spec.private_key))}]\n"
    )


def _direct_boot_lines(spec: VagrantfileSpec) -> str:
    """qemu starts the box's own kernel: no boot loader, no partition table to probe."""
    if spec.kernel is None:
        return ""
    if spec.initrd is None or not spec.cmd_line:
        raise ValueError("a direct kernel boot needs an initrd and a kernel command line")
    return (
        "    # Direct kernel boot: the box's own kernel and initramfs, root on the virtio disk.\n"
        f"    lv.kernel = {_rb(str(spec.kernel))}\n"
        f"    lv.initrd = {_rb(str(spec.initrd))}\n"
        f"    lv.cmd_line = {_rb(spec.cmd_line)}\n"
    )


def render(spec: VagrantfileSpec) -> str:
    """The Vagrantfile text for ``spec`` (libvirt, or VirtualBox for online users)."""
    if spec.network not in NETWORK_CHOICES:
        raise ValueError(f"network must be one of {', '.join(NETWORK_CHOICES)}, "
                         f"not {spec.network!r}")
    if spec.provider == "virtualbox":
        return _render_virtualbox(spec)
    if spec.provider != "libvirt":
        raise ValueError(f"provider {spec.provider!r} is not supported by this renderer")
    driver = "kvm" if spec.accel == "kvm" else "qemu"
    if spec.accel == "kvm":
        cpu = '    lv.cpu_mode = "host-passthrough"\n'
    else:
        cpu = (
            '    lv.cpu_mode = "custom"\n'
            '    lv.cpu_model = "qemu64"\n'
            '    lv.cpu_fallback = "allow"\n'
        )
    key = _ssh_key_lines(spec)
    boot = _direct_boot_lines(spec)
    restrict = "on" if spec.network == "restricted" else "off"
    netdev = f"user,id=pwtnet,restrict={restrict},hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
    device = f"virtio-net-pci,netdev=pwtnet,mac={spec.mac},bus=pci.0,addr=0x1f"
    return f"""\
# Rendered by vm/machine/vagrantfile.py for one test run; edits are lost.
Vagrant.configure("2") do |config|
  config.vm.box = {_rb(spec.box)}
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.boot_timeout = {spec.boot_timeout_s}
{key}  config.ssh.username = "vagrant"
  config.ssh.host = "127.0.0.1"
  config.ssh.port = {spec.ssh_port}
  # A NIC in the domain XML for vagrant-libvirt's agent lookup: a UDP tunnel on loopback.
  config.vm.network :private_network, auto_config: false,
    libvirt__tunnel_type: "udp",
    libvirt__tunnel_ip: "127.0.0.1", libvirt__tunnel_port: {spec.udp_port},
    libvirt__tunnel_local_ip: "127.0.0.1", libvirt__tunnel_local_port: {spec.udp_local_port},
    libvirt__mac: {_rb(spec.mac)}
  config.vm.provider :libvirt do |lv|
    lv.uri = {_rb(spec.libvirt_uri)}
    lv.driver = {_rb(driver)}
{cpu}    lv.machine_type = "pc"
    lv.memory = {spec.memory_mb}
    lv.cpus = {spec.cpus}
    lv.default_prefix = {_rb(spec.domain_prefix)}
    lv.storage_pool_name = {_rb(spec.pool)}
    lv.disk_bus = "virtio"
    lv.graphics_type = "none"
{boot}    lv.mgmt_attach = false
    lv.qemu_use_agent = true
    lv.serial :type => "file", :source => {{:path => {_rb(str(spec.console_log))}}}
    # The guest's real NIC: qemu user networking ({spec.network}), SSH forwarded to 127.0.0.1.
    lv.qemuargs :value => "-netdev"
    lv.qemuargs :value => {_rb(netdev)}
    lv.qemuargs :value => "-device"
    lv.qemuargs :value => {_rb(device)}
  end
end
"""


def _render_virtualbox(spec: VagrantfileSpec) -> str:
    """VirtualBox: NAT with SSH forwarded to 127.0.0.1 only; the console goes to a file.

    NAT cannot refuse what the guest starts, so "restricted" is enforced inside the derived
    box (vm/boxes/provision.py NO_EGRESS_RULES); the provisioning VM has not got those rules yet."""
    key = _ssh_key_lines(spec)
    return f"""\
# Rendered by vm/machine/vagrantfile.py for one test run; edits are lost.
# Guest network: {spec.network} (restricted: the box's own rules drop guest-started traffic).
Vagrant.configure("2") do |config|
  config.vm.box = {_rb(spec.box)}
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.boot_timeout = {spec.boot_timeout_s}
{key}  config.vm.network "forwarded_port", id: "ssh", guest: 22, host: {spec.ssh_port},
    host_ip: "127.0.0.1", auto_correct: false
  config.ssh.host = "127.0.0.1"
  config.ssh.port = {spec.ssh_port}
  config.vm.provider :virtualbox do |vb|
    vb.name = {_rb(spec.domain_prefix + "default")}
    vb.memory = {spec.memory_mb}
    vb.cpus = {spec.cpus}
    vb.customize ["modifyvm", :id, "--uart1", "0x3F8", "4", "--uartmode1", "file",
                  {_rb(str(spec.console_log))}]
  end
end
"""
