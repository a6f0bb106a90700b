#!/usr/bin/env bash
# Build a Vagrant box (libvirt provider) from Debian with debootstrap. Called by vm/box.py,
# which passes the recipe in the environment and caches the result by a hash of this file and
# the recipe. Needs root (debootstrap, loop devices, mount).
#
# In:  SUITE MIRROR PACKAGES (comma list) EXTRA_SUITE EXTRA_PACKAGES (space list, from
#      EXTRA_SUITE) PUBKEY (file) DISK_GB WORK (scratch dir) OUT (the .box file to write)
set -euo pipefail
: "${SUITE:?}" "${MIRROR:?}" "${PACKAGES:?}" "${PUBKEY:?}" "${WORK:?}" "${OUT:?}"
DISK_GB="${DISK_GB:-8}"
ROOT="$WORK/rootfs"
MNT="$WORK/mnt"
LOOP=""

cleanup() {
  set +e
  for m in "$ROOT/proc" "$ROOT/sys" "$ROOT/dev/pts" "$ROOT/dev" "$MNT"; do
    mountpoint -q "$m" && umount -l "$m"
  done
  if [ -n "$LOOP" ]; then
    partx -d "$LOOP" 2>/dev/null
    losetup -d "$LOOP"
  fi
}
trap cleanup EXIT

step() { echo "==> $*"; }

rm -rf "$ROOT" "$MNT"
mkdir -p "$ROOT" "$MNT"

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

step "making a ${DISK_GB}G disk (MBR, ext4, GRUB)"
DISK="$WORK/disk.raw"
rm -f "$DISK"
truncate -s "${DISK_GB}G" "$DISK"
echo 'label: dos
start=2048, type=83, bootable' | sfdisk --quiet "$DISK"
LOOP=$(losetup --find --show "$DISK")
# losetup -P makes no partition node on some hosts; partx does.
partx -a "$LOOP" 2>/dev/null || true
for _ in $(seq 1 50); do [ -b "${LOOP}p1" ] && break; sleep 0.1; done
[ -b "${LOOP}p1" ] || { echo "no partition device ${LOOP}p1" >&2; exit 1; }
mkfs.ext4 -q -L pwt-root "${LOOP}p1"
mount "${LOOP}p1" "$MNT"
cp -a "$ROOT/." "$MNT/"
grub-install --target=i386-pc --boot-directory="$MNT/boot" --modules="part_msdos ext2" "$LOOP"
KERNEL=$(cd "$MNT/boot" && ls vmlinuz-* | sort -V | tail -n1)
INITRD=$(cd "$MNT/boot" && ls initrd.img-* | sort -V | tail -n1)
cat > "$MNT/boot/grub/grub.cfg" <<EOF
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
menuentry "Debian $SUITE" {
  search --no-floppy --label pwt-root --set=root
  linux /boot/$KERNEL root=LABEL=pwt-root ro console=ttyS0,115200 net.ifnames=0 systemd.show_status=1
  initrd /boot/$INITRD
}
EOF
# The KVM probe (vm/accel.py) boots this kernel to learn whether KVM really works here.
cp "$MNT/boot/$KERNEL" "$OUT.vmlinuz"
umount "$MNT"
partx -d "$LOOP" 2>/dev/null || true
losetup -d "$LOOP"
LOOP=""

step "packing the box"
BOXDIR="$WORK/box"
rm -rf "$BOXDIR"
mkdir -p "$BOXDIR"
qemu-img convert -O qcow2 "$DISK" "$BOXDIR/box.img"
rm -f "$DISK"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$DISK_GB" > "$BOXDIR/metadata.json"
cat > "$BOXDIR/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
tar -C "$BOXDIR" -cf "$OUT.tmp" metadata.json Vagrantfile box.img
mv "$OUT.tmp" "$OUT"
rm -rf "$BOXDIR" "$ROOT" "$MNT"
step "box written: $OUT ($(du -h "$OUT" | cut -f1))"
