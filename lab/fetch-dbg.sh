#!/usr/bin/env bash
# Fetch the debug vmlinux of a lab build's kernel from Debian's -dbg package.
#
#   lab/fetch-dbg.sh OUTDIR
#
# OUTDIR is a build of lab/build-guest.sh; its env names the release and the
# architecture. Writes OUTDIR/vmlinux-dbg (the package's
# usr/lib/debug/boot/vmlinux-RELEASE), which `mshot profile build --vmlinux`
# turns into a profile with link-time addresses. The package (about 320 MB)
# is downloaded, not installed, and only the vmlinux is kept; a second run
# with the file present does nothing.
set -euo pipefail

PROG=fetch-dbg
die() { echo "$PROG: ERROR: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUTDIR=$1
[ -f "$OUTDIR/env" ] || die "$OUTDIR/env missing: build the guest first (lab/build-guest.sh)"
# shellcheck disable=SC1091
. "$OUTDIR/env"
RELEASE=${LAB_RELEASE:?}
case "${LAB_ARCH:-x86_64}" in
  aarch64) DEB_ARCH=arm64 ;;
  x86_64) DEB_ARCH=amd64 ;;
  *) die "unknown LAB_ARCH '$LAB_ARCH'" ;;
esac
TARGET="$OUTDIR/vmlinux-dbg"
if [ -s "$TARGET" ]; then
  log "reusing $TARGET"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (apt-get)"
PKG="linux-image-$RELEASE-dbg"
if [ "$DEB_ARCH" = arm64 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq >&2
fi
WORK=$(mktemp -d "$OUTDIR/.dbg.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# apt-get download drops privileges to _apt where it can write.
chmod 755 "$WORK"
chown _apt "$WORK" 2>/dev/null || true
start=$SECONDS
(cd "$WORK" && apt-get download -q "$PKG:$DEB_ARCH" >&2) ||
  (apt-get update -qq >&2 && cd "$WORK" && apt-get download -q "$PKG:$DEB_ARCH" >&2) ||
  die "could not download $PKG:$DEB_ARCH (check the apt sources)"
log "downloaded $PKG in $((SECONDS - start)) s"
deb=$(ls "$WORK"/*.deb)
dpkg-deb --fsys-tarfile "$deb" |
  tar -x -C "$WORK" "./usr/lib/debug/boot/vmlinux-$RELEASE" ||
  die "$deb holds no usr/lib/debug/boot/vmlinux-$RELEASE"
mv "$WORK/usr/lib/debug/boot/vmlinux-$RELEASE" "$TARGET.tmp"
mv "$TARGET.tmp" "$TARGET"
log "wrote $TARGET ($(stat -c %s "$TARGET") bytes) in $((SECONDS - start)) s"
