#!/usr/bin/env bash
# Build a subject's portable images <NAME>_<V>.raw (squashfs) from a Debian minbase with the
# subject's packages. Called by vm/subject/image.py, which renders each version's files into
# $OUT_DIR/overlay-<V> first and caches the output by a hash of the recipe.
#
# In: SUITE MIRROR ROOTFS (cached base tree; built if missing) OUT_DIR NAME VERSIONS ("1 2")
#     OS_RELEASE_EXTRA (optional lines appended to each image's os-release)
#     PACKAGES (comma-separated, may be empty) STATE_DIRS (space-separated names under /var/lib)
#     LAYOUT (image: a whole image per version; extension: one base <NAME>-base.raw, the tree
#       with no overlay, and per version an extension <NAME>_<V>.raw holding only the overlay
#       and its extension-release)
#     EXTENSION_RELEASE (extension layout, optional: the file to ship as extension-release;
#       empty: ID= and VERSION_ID= of the base's os-release)
set -euo pipefail
: "${SUITE:?}" "${MIRROR:?}" "${ROOTFS:?}" "${OUT_DIR:?}" "${NAME:?}" "${VERSIONS:?}"
LAYOUT="${LAYOUT:-image}"

if [ ! -e "$ROOTFS/.complete" ]; then
  echo "==> debootstrap $SUITE minbase + ${PACKAGES:-nothing more} into $ROOTFS"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase ${PACKAGES:+--include="$PACKAGES"} "$SUITE" "$ROOTFS" "$MIRROR"
  # The image is read-only and needs no package manager state, docs or caches.
  rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc \
    "$ROOTFS"/usr/share/man "$ROOTFS"/usr/share/info "$ROOTFS"/usr/share/locale
  touch "$ROOTFS/.complete"
fi

# What a read-only portable image needs: os-release (naming it $1 $2), an empty machine-id and
# resolv.conf (bind-mount targets), and the StateDirectory mount points.
finish_portable_tree() {
  local tree="$1" image_id="$2" version="$3"
  rm -f "$tree/etc/os-release"
  cp "$tree/usr/lib/os-release" "$tree/etc/os-release"
  printf 'IMAGE_ID=%s\nIMAGE_VERSION=%s\nPORTABLE_PRETTY_NAME="%s v%s"\n' \
    "$image_id" "$version" "$image_id" "$version" >> "$tree/etc/os-release"
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
}

pack() {
  local tree="$1" out="$2"
  mksquashfs "$tree" "$out.tmp" -noappend -comp zstd -all-root -quiet -mkfs-time 0 -all-time 0
  mv "$out.tmp" "$out"
  rm -rf "$tree"
  echo "==> $out ($(du -h "$out" | cut -f1), $(stat -c %s "$out") bytes)"
}

mkdir -p "$OUT_DIR"
if [ "$LAYOUT" = image ]; then
  for version in $VERSIONS; do
    tree="$OUT_DIR/tree-$version"
    echo "==> image $NAME v$version"
    rm -rf "$tree"
    cp -a "$ROOTFS" "$tree"
    rm -f "$tree/.complete"
    cp -a "$OUT_DIR/overlay-$version/." "$tree/"
    finish_portable_tree "$tree" "$NAME" "$version"
    pack "$tree" "$OUT_DIR/${NAME}_$version.raw"
  done
  exit 0
fi

[ "$LAYOUT" = extension ] || { echo "LAYOUT must be image or extension, not $LAYOUT" >&2; exit 2; }
tree="$OUT_DIR/tree-base"
echo "==> base image $NAME-base (the runtime: $SUITE minbase + ${PACKAGES:-nothing more})"
rm -rf "$tree"
cp -a "$ROOTFS" "$tree"
rm -f "$tree/.complete"
finish_portable_tree "$tree" "$NAME-base" 1
release="$OUT_DIR/extension-release"
if [ -n "${EXTENSION_RELEASE:-}" ]; then
  cp "$EXTENSION_RELEASE" "$release"
else
  # portabled matches an extension to its base by ID= and VERSION_ID= (sid has no VERSION_ID).
  grep -E '^(ID|VERSION_ID)=' "$tree/usr/lib/os-release" > "$release"
fi
pack "$tree" "$OUT_DIR/$NAME-base.raw"
for version in $VERSIONS; do
  tree="$OUT_DIR/tree-ext-$version"
  echo "==> extension $NAME v$version"
  rm -rf "$tree"
  mkdir -p "$tree/usr/lib/extension-release.d"
  cp -a "$OUT_DIR/overlay-$version/." "$tree/"
  # Both names: systemd < 256 wants the image file's name exactly, version and all; 256+ also
  # takes the name without the version (vm/systemd/quirks.py).
  cp "$release" "$tree/usr/lib/extension-release.d/extension-release.$NAME"
  cp "$release" "$tree/usr/lib/extension-release.d/extension-release.${NAME}_$version"
  pack "$tree" "$OUT_DIR/${NAME}_$version.raw"
done
