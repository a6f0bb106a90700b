#!/usr/bin/env bash
# Pack a root file system tree into a Vagrant box (libvirt provider), with no loop device, no
# mount and no boot loader: on some kernels (6.18) GRUB cannot probe a loop partition, and in a
# container loop partition nodes never appear. Called by vm/build-box.sh; tests/unit runs it on
# a tiny tree where /dev has no loop device and losetup is not on PATH.
#
#   pack-box.sh TREE OUT [DISK_GB]
#
# Writes OUT (the .box: metadata.json, Vagrantfile, box.img = qcow2 of one ext4 file system
# labelled pwt-root, no partition table), OUT.vmlinuz and OUT.initrd (the tree's newest kernel
# and initramfs: the harness hands them to libvirt for a direct kernel boot, root=/dev/vda).
set -euo pipefail
TREE="${1:?tree}"
OUT="${2:?output .box}"
DISK_GB="${3:-8}"
WORK="$(mktemp -d "${OUT}.pack.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
step() { echo "==> $*"; }

KERNEL=$(cd "$TREE/boot" && ls vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
INITRD=$(cd "$TREE/boot" && ls initrd.img-* 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$KERNEL" ] || { echo "no kernel (boot/vmlinuz-*) in $TREE" >&2; exit 1; }
[ -n "$INITRD" ] || { echo "no initramfs (boot/initrd.img-*) in $TREE" >&2; exit 1; }
step "kernel $KERNEL, initramfs $INITRD ($(du -h "$TREE/boot/$INITRD" | cut -f1))"
cp "$TREE/boot/$KERNEL" "$OUT.vmlinuz.tmp"
cp "$TREE/boot/$INITRD" "$OUT.initrd.tmp"

step "making a ${DISK_GB}G ext4 file system from the tree (mkfs.ext4 -d: no loop device)"
truncate -s "${DISK_GB}G" "$WORK/disk.raw"
mkfs.ext4 -q -F -L pwt-root -d "$TREE" "$WORK/disk.raw"

step "packing the box"
mkdir -p "$WORK/box"
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/box/box.img"
rm -f "$WORK/disk.raw"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$DISK_GB" \
  > "$WORK/box/metadata.json"
# The box's kernel lives beside the .box; the run's Vagrantfile (vm/vagrantfile.py) passes it.
cat > "$WORK/box/Vagrantfile" <<'VF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
VF
tar -C "$WORK/box" -cf "$OUT.tmp" metadata.json Vagrantfile box.img
mv "$OUT.vmlinuz.tmp" "$OUT.vmlinuz"
mv "$OUT.initrd.tmp" "$OUT.initrd"
mv "$OUT.tmp" "$OUT"
step "box written: $OUT ($(du -h "$OUT" | cut -f1))"
