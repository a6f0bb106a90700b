#!/usr/bin/env bash
# Build a Vagrant box (libvirt provider) from Debian with debootstrap. Called by vm/box.py,
# which passes the recipe in the environment and caches the result by a hash of this file and
# the recipe. Needs root (debootstrap, and bind mounts of /proc, /sys and /dev for the chroot);
# no loop device, no disk mount, no boot loader (see vm/pack-box.sh), so it works on any kernel
# and inside a privileged container.
#
# In:  SUITE MIRROR PACKAGES (comma list) EXTRA_SUITE EXTRA_PACKAGES (space list, from
#      EXTRA_SUITE) PUBKEY (file) DISK_GB WORK (scratch dir) OUT (the .box file to write)
set -euo pipefail
: "${SUITE:?}" "${MIRROR:?}" "${PACKAGES:?}" "${PUBKEY:?}" "${WORK:?}" "${OUT:?}"
DISK_GB="${DISK_GB:-8}"
ROOT="$WORK/rootfs"

cleanup() {
  set +e
  for m in "$ROOT/proc" "$ROOT/sys" "$ROOT/dev/pts" "$ROOT/dev"; do
    mountpoint -q "$m" && umount -l "$m"
  done
}
trap cleanup EXIT

step() { echo "==> $*"; }

rm -rf "$ROOT"
mkdir -p "$ROOT"

step "debootstrap $SUITE (minbase + $PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR"

# No service may start inside the chroot while packages are installed.
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
in_root() { chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

if [ -n "${EXTRA_SUITE:-}" ]; then
  step "installing from $EXTRA_SUITE: $EXTRA_PACKAGES"
  echo "deb $MIRROR $EXTRA_SUITE main" > "$ROOT/etc/apt/sources.list.d/$EXTRA_SUITE.list"
  in_root apt-get update -q
  # shellcheck disable=SC2086
  in_root apt-get install -y -q --no-install-recommends -t "$EXTRA_SUITE" $EXTRA_PACKAGES
fi

step "configuring the guest"
echo pwt-guest > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 pwt-guest\n' > "$ROOT/etc/hosts"
# The disk is one ext4 file system without a partition table (vm/pack-box.sh labels it).
echo 'LABEL=pwt-root / ext4 defaults,noatime 0 1' > "$ROOT/etc/fstab"
# Each VM gets its own machine-id at first boot.
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"

mkdir -p "$ROOT/etc/systemd/network"
cat > "$ROOT/etc/systemd/network/10-dhcp.network" <<'EOF'
[Match]
Name=eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[Link]
RequiredForOnline=no
EOF
in_root systemctl enable systemd-networkd.service ssh.service
in_root systemctl mask systemd-networkd-wait-online.service
# Nothing periodic may run during a measurement, and every second of boot counts under TCG.
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
            e2scrub_reap.service fstrim.timer logrotate.timer dpkg-db-backup.timer \
            systemd-tmpfiles-clean.timer; do
  in_root systemctl mask "$unit" >/dev/null 2>&1 || true
done

step "a small initramfs: the guest boots from one virtio disk with ext4"
# The kernel is started directly by qemu (no boot loader); its initramfs only needs to find
# /dev/vda. MODULES=list keeps it to these modules (and what they depend on): a few MB instead
# of ~30, which TCG unpacks in a fraction of the time.
if [ -d "$ROOT/etc/initramfs-tools" ]; then
  printf 'MODULES=list\nCOMPRESS=gzip\n' > "$ROOT/etc/initramfs-tools/conf.d/pwt.conf"
  printf '%s\n' virtio_pci virtio_blk virtio_console ext4 crc32c_generic \
    >> "$ROOT/etc/initramfs-tools/modules"
  in_root update-initramfs -u -k all
elif [ -x "$ROOT/usr/bin/dracut" ]; then
  # Newer suites (sid) install dracut instead. Not host-only: the chroot would describe the
  # build host's disks, not the guest's.
  mkdir -p "$ROOT/etc/dracut.conf.d"
  printf '%s\n' 'hostonly="no"' 'compress="gzip"' \
    'add_drivers+=" virtio_pci virtio_blk virtio_console ext4 "' \
    'omit_dracutmodules+=" plymouth nfs iscsi lvm mdraid dmraid multipath crypt nbd "' \
    > "$ROOT/etc/dracut.conf.d/50-pwt.conf"
  for kver in $(ls "$ROOT/lib/modules"); do
    in_root dracut --force "/boot/initrd.img-$kver" "$kver"
  done
else
  echo "no initramfs generator (initramfs-tools or dracut) in the tree" >&2
  exit 1
fi

# The suite starts its own haproxy with its own config when a scenario needs it.
in_root systemctl disable haproxy.service 2>/dev/null || true

step "creating user vagrant (key login only)"
in_root useradd --create-home --shell /bin/bash vagrant
in_root usermod -p '*' vagrant
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > "$ROOT/etc/sudoers.d/vagrant"
chmod 0440 "$ROOT/etc/sudoers.d/vagrant"
install -d -m 0700 "$ROOT/home/vagrant/.ssh"
install -m 0600 "$PUBKEY" "$ROOT/home/vagrant/.ssh/authorized_keys"
in_root chown -R vagrant:vagrant /home/vagrant/.ssh
cat > "$ROOT/etc/ssh/sshd_config.d/pwt.conf" <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UseDNS no
EOF

rm -f "$ROOT/usr/sbin/policy-rc.d"
in_root apt-get clean
rm -rf "$ROOT/var/lib/apt/lists/"*
for m in "$ROOT/proc" "$ROOT/sys" "$ROOT/dev/pts" "$ROOT/dev"; do umount -l "$m"; done

# The disk step needs no loop device, no mount and no boot loader: vm/pack-box.sh fills an
# ext4 file system straight from the tree, and the guest boots its own kernel directly.
bash "$(dirname "$0")/pack-box.sh" "$ROOT" "$OUT" "$DISK_GB"
rm -rf "$ROOT"
