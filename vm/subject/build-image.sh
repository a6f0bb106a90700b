#!/usr/bin/env bash
# Build a subject's portable images <NAME>_<V>.raw (squashfs) from a Debian minbase with the
# subject's packages. Called by vm/subject/image.py, which renders each version's files into
# $OUT_DIR/overlay-<V> first and caches the output by a hash of the recipe.
#
# In: SUITE MIRROR ROOTFS (cached base tree; built if missing) OUT_DIR NAME VERSIONS ("1 2")
#     OS_RELEASE_EXTRA (optional lines appended to each image's os-release)
#     PACKAGES (comma-separated, may be empty) STATE_DIRS (space-separated names under /var/lib)
set -euo pipefail
: "${SUITE:?}" "${MIRROR:?}" "${ROOTFS:?}" "${OUT_DIR:?}" "${NAME:?}" "${VERSIONS:?}"

if [ ! -e "$ROOTFS/.complete" ]; then
  echo "==> debootstrap $SUITE minbase + ${PACKAGES:-nothing more} into $ROOTFS"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase ${PACKAGES:+--include="$PACKAGES"} "$SUITE" "$ROOTFS" "$MIRROR"
  # The image is read-only and needs no package manager state, docs or caches.
  rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc \
    "$ROOTFS"/usr/share/man "$ROOTFS"/usr/share/info "$ROOTFS"/usr/share/locale
  touch "$ROOTFS/.complete"
fi

mkdir -p "$OUT_DIR"
for version in $VERSIONS; do
  tree="$OUT_DIR/tree-$version"
  echo "==> image $NAME v$version"
  rm -rf "$tree"
  cp -a "$ROOTFS" "$tree"
  rm -f "$tree/.complete"
  cp -a "$OUT_DIR/overlay-$version/." "$tree/"
  # What a read-only portable image needs: os-release, an empty machine-id and resolv.conf
  # (bind-mount targets), and the StateDirectory mount points.
  rm -f "$tree/etc/os-release"
  cp "$tree/usr/lib/os-release" "$tree/etc/os-release"
  printf 'IMAGE_ID=%s\nIMAGE_VERSION=%s\nPORTABLE_PRETTY_NAME="%s v%s"\n' \
    "$NAME" "$version" "$NAME" "$version" >> "$tree/etc/os-release"
  # Images for a user's portabled (260+) say so: PORTABLE_SCOPE=user.
  if [ -n "${OS_RELEASE_EXTRA:-}" ]; then
    printf '%s\n' "$OS_RELEASE_EXTRA" >> "$tree/etc/os-release"
  fi
  rm -f "$tree/etc/machine-id" "$tree/etc/resolv.conf"
  : > "$tree/etc/machine-id"
  : > "$tree/etc/resolv.conf"
  for dir in ${STATE_DIRS:-}; do
    mkdir -p "$tree/var/lib/$dir"
  done
  out="$OUT_DIR/${NAME}_$version.raw"
  mksquashfs "$tree" "$out.tmp" -noappend -comp zstd -all-root -quiet -mkfs-time 0 -all-time 0
  mv "$out.tmp" "$out"
  rm -rf "$tree"
  echo "==> $out ($(du -h "$out" | cut -f1))"
done
