#!/usr/bin/env bash
# Build the portable images portable-walkthrough_<V>.raw (squashfs) from a Debian minbase with
# python3-minimal. Called by vm/image.py, which caches the output by a hash of this directory.
#
# In: SUITE MIRROR ROOTFS (cached base tree; built if missing) OUT_DIR VERSIONS ("1:Hello 2:Hola")
#     SOCKET_IN_IMAGE (1: also ship the .socket inside the image, the negative control)
set -euo pipefail
: "${SUITE:?}" "${MIRROR:?}" "${ROOTFS:?}" "${OUT_DIR:?}" "${VERSIONS:?}"
HERE="$(cd "$(dirname "$0")" && pwd)"

if [ ! -e "$ROOTFS/.complete" ]; then
  echo "==> debootstrap $SUITE minbase + python3-minimal into $ROOTFS"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --include=python3-minimal "$SUITE" "$ROOTFS" "$MIRROR"
  # The image is read-only and needs no package manager state, docs or caches.
  rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc \
    "$ROOTFS"/usr/share/man "$ROOTFS"/usr/share/info "$ROOTFS"/usr/share/locale
  touch "$ROOTFS/.complete"
fi

mkdir -p "$OUT_DIR"
for spec in $VERSIONS; do
  version="${spec%%:*}"
  greeting="${spec#*:}"
  tree="$OUT_DIR/tree-$version"
  echo "==> image v$version ($greeting)"
  rm -rf "$tree"
  cp -a "$ROOTFS" "$tree"
  rm -f "$tree/.complete"
  install -D -m 0755 "$HERE/server.py" "$tree/usr/lib/portable-walkthrough/server.py"
  sed -e "s/@VERSION@/$version/g" -e "s/@GREETING@/$greeting/g" \
    "$HERE/portable-walkthrough.service.in" > "$tree/usr/lib/systemd/system/portable-walkthrough.service"
  if [ "${SOCKET_IN_IMAGE:-0}" = 1 ]; then
    install -m 0644 "$HERE/portable-walkthrough.socket" "$tree/usr/lib/systemd/system/"
  fi
  # What a read-only portable image needs: os-release, an empty machine-id and resolv.conf
  # (bind-mount targets), and the StateDirectory mount point.
  rm -f "$tree/etc/os-release"
  cp "$tree/usr/lib/os-release" "$tree/etc/os-release"
  printf 'IMAGE_ID=portable-walkthrough\nIMAGE_VERSION=%s\nPORTABLE_PRETTY_NAME="Portable walkthrough v%s"\n' \
    "$version" "$version" >> "$tree/etc/os-release"
  rm -f "$tree/etc/machine-id" "$tree/etc/resolv.conf"
  : > "$tree/etc/machine-id"
  : > "$tree/etc/resolv.conf"
  mkdir -p "$tree/var/lib/portable-walkthrough"
  out="$OUT_DIR/portable-walkthrough_$version.raw"
  mksquashfs "$tree" "$out.tmp" -noappend -comp zstd -all-root -quiet -mkfs-time 0 -all-time 0
  mv "$out.tmp" "$out"
  rm -rf "$tree"
  echo "==> $out ($(du -h "$out" | cut -f1))"
done
