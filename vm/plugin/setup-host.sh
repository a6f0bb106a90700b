#!/usr/bin/env bash
# One-time (idempotent) set-up of a Debian 12 host for the portable-walkthrough suite.
#
#   sudo ./setup-host                     # in the repository
#   sudo portable-upgrade setup-host      # from the installed tool (the same script)
#
# It installs packages and tox, starts libvirt and defines the storage pool.
#
# A second run changes nothing and takes seconds. Everything it starts is a system daemon that
# the suite needs (virtlogd, libvirtd); on a host without systemd as PID 1 they are started by
# hand with PID files under /run and can be stopped with `./setup-host --stop-daemons`.
set -euo pipefail

STATE_DIR="${PWT_STATE_DIR:-/var/lib/portable-walkthrough-tests}"
POOL_NAME="${PWT_POOL:-pwt}"
POOL_DIR="$STATE_DIR/pool"
LIBVIRT_URI="qemu:///system"

APT_PACKAGES=(
  # VMs: Vagrant with the libvirt provider, qemu (TCG or KVM)
  vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
  dnsmasq-base iptables ebtables
  # the box builder: debootstrap, then one ext4 file system filled from the tree (mkfs.ext4 -d)
  # and booted with its own kernel: no loop device, no partition table, no boot loader
  debootstrap e2fsprogs util-linux
  # the portable image builder
  squashfs-tools
  # tools used on the host side by tests and reports
  apache2-utils haproxy netcat-openbsd python3-venv openssh-client
  # Fedora boxes (online users): gpgv checks the signed CHECKSUM before a download is used
  gpgv
  # the security checks read listening sockets and addresses on the host
  iproute2
)

say() { printf '\033[1m[setup-host]\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host: run as root (sudo ./setup-host): it installs packages and starts libvirtd" >&2
  exit 1
fi

stop_daemons() {
  for name in libvirtd-probe libvirtd virtlogd; do
    pidfile="/run/pwt-$name.pid"
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      say "stopping $name (pid $(cat "$pidfile"))"
      kill "$(cat "$pidfile")"
    fi
    rm -f "$pidfile"
  done
  rm -f /run/pwt-nokvm
}

if [ "${1:-}" = "--stop-daemons" ]; then
  stop_daemons
  exit 0
fi

# --- packages ---------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${#missing[@]} Debian package(s): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all ${#APT_PACKAGES[@]} present"
fi

externally_managed() {
  python3 -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")) else 1)'
}
if ! command -v tox >/dev/null 2>&1; then
  if python3 -m pip --version >/dev/null 2>&1 && ! externally_managed; then
    say "installing tox from PyPI"
    python3 -m pip install --quiet --root-user-action=ignore "tox>=4"
  else
    # Debian's own Python refuses pip installs (PEP 668): take Debian's tox (4.x on bookworm).
    say "installing tox from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends tox
  fi
else
  say "tox: $(tox --version | head -n1)"
fi

# --- daemons ----------------------------------------------------------------------------
running() { # NAME: is the daemon running (by our PID file, or by the init system)?
  local pidfile="/run/pwt-$1.pid"
  [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && return 0
  [ -S "/run/libvirt/$2" ] && [ -d /run/systemd/system ] && systemctl is-active --quiet "$1" && return 0
  return 1
}

if [ -d /run/systemd/system ]; then
  for unit in virtlogd.socket libvirtd.socket libvirtd.service; do
    systemctl is-active --quiet "$unit" || { say "starting $unit"; systemctl enable --now "$unit"; }
  done
else
  if ! running virtlogd virtlogd-sock; then
    say "starting virtlogd (no systemd here: by hand, pid file /run/pwt-virtlogd.pid)"
    virtlogd -d -p /run/pwt-virtlogd.pid
  fi
  if ! running libvirtd libvirt-sock; then
    say "starting libvirtd (no systemd here: by hand, pid file /run/pwt-libvirtd.pid)"
    libvirtd -d -p /run/pwt-libvirtd.pid
  fi
fi

wait_for_libvirtd() {
  for _ in $(seq 1 50); do
    virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

stop_by_pidfile() { # PIDFILE: stop that daemon and wait until it is gone
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$1"
}

kvm_unreachable_for_qemu() { # /dev/kvm exists, but libvirt's qemu user cannot open it
  [ -e /dev/kvm ] && id libvirt-qemu >/dev/null 2>&1 &&
    ! runuser -u libvirt-qemu -- sh -c 'test -r /dev/kvm && test -w /dev/kvm'
}

# On a host like this one, libvirt probes qemu with KVM but then finds /dev/kvm closed to
# libvirt-qemu, so it discards its qemu capability cache and probes qemu again (25 s and more
# under load) on every domain define, device attach and start: `vagrant up` took 180-350 s
# instead of about 60 s. qemu cannot use KVM here anyway: let a throw-away libvirtd that has
# /dev/kvm masked in its own mount namespace probe once, so the cache says "no KVM" and stays
# valid for the real libvirtd. (Only libvirtd instances this script started; nothing else.)
reseed_qemu_caps_without_kvm() {
  local caps
  caps=$(virsh -c "$LIBVIRT_URI" capabilities 2>/dev/null) || return 0
  grep -q "domain type='kvm'" <<<"$caps" || return 0
  say "libvirt-qemu cannot open /dev/kvm, yet libvirt's qemu capabilities claim KVM: re-probing" \
      "qemu once with /dev/kvm masked, so libvirt stops re-probing on every domain change"
  stop_by_pidfile /run/pwt-libvirtd.pid
  : >/run/pwt-nokvm && chmod 000 /run/pwt-nokvm
  if unshare --mount --propagation slave sh -c \
      'mount --bind /run/pwt-nokvm /dev/kvm && exec libvirtd -d -p /run/pwt-libvirtd-probe.pid' &&
      wait_for_libvirtd; then
    virsh -c "$LIBVIRT_URI" capabilities >/dev/null 2>&1 || true
  fi
  stop_by_pidfile /run/pwt-libvirtd-probe.pid
  rm -f /run/pwt-nokvm
  libvirtd -d -p /run/pwt-libvirtd.pid
  wait_for_libvirtd || return 0
  caps=$(virsh -c "$LIBVIRT_URI" capabilities 2>/dev/null) || return 0
  if grep -q "domain type='kvm'" <<<"$caps"; then
    say "warning: libvirt still claims KVM; each vagrant up may take minutes longer"
  fi
}

wait_for_libvirtd || true
if [ ! -d /run/systemd/system ] && [ -s /run/pwt-libvirtd.pid ] && kvm_unreachable_for_qemu &&
   [ -z "$(virsh -c "$LIBVIRT_URI" list --name 2>/dev/null | tr -d '[:space:]')" ]; then
  reseed_qemu_caps_without_kvm
fi
virsh -c "$LIBVIRT_URI" version >/dev/null || { echo "setup-host: libvirtd does not answer" >&2; exit 1; }
say "libvirt: $(virsh -c "$LIBVIRT_URI" version 2>/dev/null | grep -i 'running hypervisor' | sed 's/.*: //')"

# The suite never uses a libvirt bridge network: the VM's only reachable NIC is qemu user-mode
# networking forwarded to 127.0.0.1. Debian's package autostarts a "default" NAT network;
# stop it (only when this script is what started libvirtd) so no bridge appears on the host.
if [ ! -d /run/systemd/system ] && virsh -c "$LIBVIRT_URI" net-info default >/dev/null 2>&1; then
  # (output captured first: grep -q closing the pipe early would fail the pipe under pipefail)
  net_info=$(virsh -c "$LIBVIRT_URI" net-info default)
  if grep -q 'Active:.*yes' <<<"$net_info"; then
    say "stopping libvirt's autostarted 'default' NAT network (the suite uses no bridge)"
    virsh -c "$LIBVIRT_URI" net-destroy default >/dev/null
  fi
  virsh -c "$LIBVIRT_URI" net-autostart default --disable >/dev/null 2>&1 || true
fi

# --- state directory and storage pool ---------------------------------------------------
# qemu runs as libvirt-qemu: the state directory (boxes, console logs) must be traversable.
install -d -m 0755 "$STATE_DIR" "$POOL_DIR"
if ! virsh -c "$LIBVIRT_URI" pool-info "$POOL_NAME" >/dev/null 2>&1; then
  say "defining storage pool $POOL_NAME at $POOL_DIR"
  virsh -c "$LIBVIRT_URI" pool-define-as "$POOL_NAME" dir --target "$POOL_DIR" >/dev/null
  virsh -c "$LIBVIRT_URI" pool-build "$POOL_NAME" >/dev/null
fi
pool_info=$(virsh -c "$LIBVIRT_URI" pool-info "$POOL_NAME")
if ! grep -q 'State:.*running' <<<"$pool_info"; then
  virsh -c "$LIBVIRT_URI" pool-start "$POOL_NAME" >/dev/null
fi
virsh -c "$LIBVIRT_URI" pool-autostart "$POOL_NAME" >/dev/null 2>&1 || true
say "storage pool $POOL_NAME: $POOL_DIR (running)"
say "ready: now run 'tox -e integration' in the repository, or 'portable-upgrade run SPEC'"
