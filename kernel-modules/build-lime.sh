#!/usr/bin/env bash
# Build LiME kernel modules from Debian packages, without installing a kernel.
#
#   kernel-modules/build-lime.sh [--arch ARCH] [--work DIR] [--headers DIR]
#                                [--keep-headers] --out REPO RELEASE...
#
# For each RELEASE (a target's `uname -r`) this writes
#   REPO/modules/ARCH/lime-RELEASE.ko             (debug info stripped)
#   REPO/modules/ARCH/lime-RELEASE.ko.build.json  (how it was built)
# where ARCH is the target's `uname -m`: this machine's by default; --arch
# aarch64 on an x86_64 machine cross-builds (Debian's arm64 headers package,
# unpacked, and gcc-N-aarch64-linux-gnu). `mshot repo index REPO` then lists
# them in REPO/manifest.json. LiME comes from `lime-forensics-dkms`, the
# headers from `linux-headers-RELEASE`; --headers DIR uses a kernel build tree
# already on disk instead (one RELEASE only; for other distributions).
# --keep-headers keeps each kernel build tree and links it as REPO/headers-RELEASE
# (lab/build-guest.sh builds its test module against it).
# Used by `mshot repo build` (which embeds this script) and lab/build-guest.sh.
set -euo pipefail

PROG=build-lime
die() { echo "$PROG: ERROR: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }
trap 'rc=$?; echo "$PROG: FAILED (exit $rc) at line $LINENO: $BASH_COMMAND" >&2' ERR

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

OUT=""
ARCH=""
WORK=""
HEADERS=""
KEEP_HEADERS=0
RELEASES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --arch) [ $# -ge 2 ] || die "--arch needs a value"; ARCH=$2; shift 2 ;;
    --arch=*) ARCH=${1#*=}; shift ;;
    --work) [ $# -ge 2 ] || die "--work needs a value"; WORK=$2; shift 2 ;;
    --work=*) WORK=${1#*=}; shift ;;
    --headers) [ $# -ge 2 ] || die "--headers needs a value"; HEADERS=$2; shift 2 ;;
    --headers=*) HEADERS=${1#*=}; shift ;;
    --keep-headers) KEEP_HEADERS=1; shift ;;
    -h|--help) usage 0 ;;
    -*) die "unknown option: $1" ;;
    *) RELEASES+=("$1"); shift ;;
  esac
done
[ -n "$OUT" ] || { echo "$PROG: --out missing" >&2; usage 2; }
[ ${#RELEASES[@]} -gt 0 ] || { echo "$PROG: no RELEASE given" >&2; usage 2; }
if [ -n "$HEADERS" ] && [ ${#RELEASES[@]} -ne 1 ]; then
  die "--headers builds one RELEASE only"
fi
for r in "${RELEASES[@]}"; do
  case "$r" in *[!A-Za-z0-9.+_~-]*|"") die "bad release '$r' (expected a uname -r)" ;; esac
done

# Target architecture (uname -m spelling). A different one than this machine's
# is a cross build: the Debian headers package of the target's architecture is
# unpacked (never installed) and built with the matching cross compiler; the
# kbuild helpers (fixdep, modpost) are the host's, from linux-kbuild-*.
HOST_ARCH=$(uname -m)
case "${ARCH:-$HOST_ARCH}" in
  x86_64|amd64) ARCH=x86_64 ;;
  aarch64|arm64) ARCH=aarch64 ;;
  *) ARCH=${ARCH:-$HOST_ARCH} ;;
esac
CROSS=""
if [ "$ARCH" != "$HOST_ARCH" ]; then
  case "$HOST_ARCH/$ARCH" in
    x86_64/aarch64) CROSS=aarch64-linux-gnu- DEB_ARCH=arm64 KARCH=arm64 ;;
    *) die "cross build from $HOST_ARCH to $ARCH is not supported (x86_64 to aarch64 is; else build on a $ARCH machine)" ;;
  esac
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/mshot/build}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- packages
apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    [ "$(id -u)" = 0 ] || die "apt-get needs root: run as root, or install the packages first"
    log "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    apt_updated=1
  fi
}
installed() {
  dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'
}
# Install the given packages unless they are all installed already.
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do
    installed "$p" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}: install them, or run as root"
  # A package the lists don't know yet: refresh them first.
  for p in "${missing[@]}"; do
    apt-cache show "$p" >/dev/null 2>&1 || { apt_update_once; break; }
  done
  log "apt-get install ${missing[*]}"
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    apt_update_once
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
      || die "apt-get install ${missing[*]} failed"
  fi
}
# apt-get download PKG into $WORK/debs (kept for reuse); prints the .deb path.
# PKG:ARCH downloads that architecture's package.
fetch_deb() {
  local pkg=$1 deb glob
  case "$pkg" in *:*) glob="${pkg%%:*}_*_${pkg#*:}.deb" ;; *) glob="${pkg}_*.deb" ;; esac
  mkdir -p "$WORK/debs"
  # shellcheck disable=SC2086
  deb=$(cd "$WORK/debs" && ls $glob 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    log "apt-get download $pkg"
    (cd "$WORK/debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) \
      || { apt_update_once; (cd "$WORK/debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2); } \
      || die "apt-get download $pkg failed (is it still in the archive?)"
    # shellcheck disable=SC2086
    deb=$(cd "$WORK/debs" && ls $glob | head -n1)
  fi
  echo "$WORK/debs/$deb"
}
json_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

if [ -z "$HEADERS" ]; then
  ensure_pkgs lime-forensics-dkms kmod make gcc binutils
else
  ensure_pkgs lime-forensics-dkms kmod binutils
fi
STRIP=strip
if [ -n "$CROSS" ]; then
  # The target architecture's packages are only downloaded (apt-get download
  # PKG:arm64), which needs it as a foreign architecture in apt's lists.
  if ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH"; then
    [ "$(id -u)" = 0 ] || die "$DEB_ARCH is not a dpkg architecture here: run as root, or dpkg --add-architecture $DEB_ARCH && apt-get update"
    log "dpkg --add-architecture $DEB_ARCH"
    dpkg --add-architecture "$DEB_ARCH" || die "dpkg --add-architecture $DEB_ARCH failed"
    apt_updated=0
    apt_update_once
  fi
  ensure_pkgs "binutils-${CROSS%-}"
  STRIP=${CROSS}strip
fi
LIME_SRC=$(ls -d /usr/src/lime-forensics-*/ 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$LIME_SRC" ] && [ -f "$LIME_SRC/main.c" ] || die "LiME source not found in /usr/src/lime-forensics-*/"
LIME_PKG_VERSION=$(dpkg-query -W -f='${Version}' lime-forensics-dkms 2>/dev/null || echo unknown)
LIME_VERSION=${LIME_PKG_VERSION%%-*}

# ---------------------------------------------------------------- headers
# Unpack headers package DEB for RELEASE into $WORK/headers-RELEASE (not installed)
# and point its dangling relative links (scripts, tools -> ../../lib/linux-kbuild-*)
# at the real system paths. Sets HDRS and HDRS_VERSION.
unpack_headers() {
  local deb=$1 release=$2 hroot="$WORK/headers-$2" L T S
  rm -rf "$hroot"
  dpkg -x "$deb" "$hroot"
  while IFS= read -r -d '' L; do
    [ -e "$L" ] && continue
    T=$(readlink "$L")
    case "$T" in /*) S=$T ;; *) S=$(realpath -m "/${L#"$hroot"/}/../$T") ;; esac
    [ -e "$S" ] && ln -sfn "$S" "$L"
  done < <(find "$hroot" -type l -print0)
  HDRS="$hroot/usr/src/linux-headers-$release"
  HDRS_VERSION=$(dpkg-deb -f "$deb" Version)
}

# Cross build: the target architecture's headers package, downloaded and unpacked.
# Its dependencies are installed for this machine instead: -common (Architecture
# all; the unpacked Makefile includes /usr/src/linux-headers-*-common/Makefile by
# absolute path), linux-kbuild-* (Multi-Arch foreign: this machine's fixdep and
# modpost), and gcc-N becomes the cross compiler gcc-N-aarch64-linux-gnu, which the
# headers' Makefile calls as $(CROSS_COMPILE)gcc-N. The kernel image is skipped.
headers_for_cross() {
  local release=$1 hpkg="linux-headers-$1" deb d pkgs=() cc="" common
  HDRS_PKG="$hpkg:$DEB_ARCH"
  apt-cache show "$hpkg:$DEB_ARCH" >/dev/null 2>&1 || apt_update_once
  apt-cache show "$hpkg:$DEB_ARCH" >/dev/null 2>&1 \
    || die "no package $hpkg:$DEB_ARCH in the apt sources: is $release a Debian $DEB_ARCH kernel? (--headers DIR builds against a tree on disk)"
  deb=$(fetch_deb "$hpkg:$DEB_ARCH")
  for d in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/:any//' | tr -d ' '); do
    case "$d" in
      linux-image-*) ;;
      gcc-[0-9]*) cc="${CROSS}$d"; pkgs+=("$d-${CROSS%-}") ;;
      *) pkgs+=("$d") ;;
    esac
  done
  ensure_pkgs "${pkgs[@]}"
  if [ -n "$cc" ]; then
    command -v "$cc" >/dev/null || die "$cc missing after installing ${pkgs[*]}"
  fi
  unpack_headers "$deb" "$release"
  common=$(sed -n 's/^include \(\/usr\/src\/[^ ]*\)$/\1/p' "$HDRS/Makefile")
  [ -z "$common" ] || [ -f "$common" ] \
    || die "$common missing: the $DEB_ARCH headers need the -common package installed at /usr/src (apt-get install $(basename "$(dirname "$common")"))"
  log "unpacked $hpkg:$DEB_ARCH privately (cross build with ${cc:-${CROSS}gcc})"
}

# Sets HDRS (the kernel build tree) and HDRS_PKG/HDRS_VERSION for RELEASE.
headers_for() {
  local release=$1 hpkg="linux-headers-$1" hdeps other deb
  HDRS=/usr/src/linux-headers-$release
  HDRS_PKG=$hpkg
  if [ -f "$HDRS/Makefile" ] && installed "$hpkg"; then
    HDRS_VERSION=$(dpkg-query -W -f='${Version}' "$hpkg")
    return 0
  fi
  apt-cache show "$hpkg" >/dev/null 2>&1 || apt_update_once
  hdeps=$(apt-cache depends --important "$hpkg" 2>/dev/null) \
    || die "no package $hpkg in the apt sources: is $release a Debian kernel? (--headers DIR builds against a tree on disk)"
  if echo "$hdeps" | grep -Eq 'Depends: linux-image-'; then
    # Newer headers packages (6.12) depend on the kernel image: installing them would
    # install a kernel (and initramfs-tools, udev) here. Install only the other
    # dependencies (common headers, kbuild, compiler) and unpack the headers privately.
    other=$(echo "$hdeps" | awk '$1 ~ /Depends:$/ && $2 !~ /^linux-image-/ && $2 !~ /^</ {print $2}' | sort -u)
    # shellcheck disable=SC2086
    ensure_pkgs $other
    deb=$(fetch_deb "$hpkg")
    unpack_headers "$deb" "$release"
    log "unpacked $hpkg privately (it depends on the kernel image)"
  else
    ensure_pkgs "$hpkg"
    HDRS_VERSION=$(dpkg-query -W -f='${Version}' "$hpkg")
  fi
  [ -f "$HDRS/Makefile" ] || die "$HDRS/Makefile missing after installing $hpkg"
}

# ---------------------------------------------------------------- build
mkdir -p "$OUT/modules/$ARCH"
for RELEASE in "${RELEASES[@]}"; do
  if [ -n "$HEADERS" ]; then
    HDRS=$(cd "$HEADERS" && pwd)
    HDRS_PKG="(build tree $HDRS)"
    HDRS_VERSION=unknown
    [ -f "$HDRS/Makefile" ] || die "$HDRS/Makefile missing: --headers must be a kernel build tree"
  elif [ -n "$CROSS" ]; then
    headers_for_cross "$RELEASE"
  else
    headers_for "$RELEASE"
  fi
  BUILD="$WORK/lime-build-$RELEASE"
  rm -rf "$BUILD"
  cp -a "$LIME_SRC" "$BUILD"
  log "building LiME $LIME_PKG_VERSION for $RELEASE ($ARCH) against $HDRS"
  # Cross: Debian's headers set ARCH and CROSS_COMPILE themselves; given here
  # for other build trees (--headers).
  MAKE_CROSS=()
  [ -z "$CROSS" ] || MAKE_CROSS=(ARCH="$KARCH" CROSS_COMPILE="$CROSS")
  make -s -C "$HDRS" "${MAKE_CROSS[@]}" M="$BUILD" modules >"$BUILD.log" 2>&1 \
    || { tail -n 30 "$BUILD.log" >&2; die "LiME build for $RELEASE failed (log: $BUILD.log)"; }
  [ -f "$BUILD/lime.ko" ] || die "LiME build for $RELEASE produced no lime.ko"
  VERMAGIC=$(modinfo -F vermagic "$BUILD/lime.ko" | sed 's/ *$//')
  case "$VERMAGIC" in "$RELEASE "*) ;; *) die "lime.ko vermagic '$VERMAGIC' does not match $RELEASE" ;; esac
  if [ -n "$CROSS" ]; then
    MACHINE=$(readelf -h "$BUILD/lime.ko" | sed -n 's/^ *Machine: *//p')
    case "$ARCH/$MACHINE" in aarch64/AArch64) ;; *) die "lime.ko is for '$MACHINE', not $ARCH" ;; esac
  fi
  "$STRIP" --strip-debug "$BUILD/lime.ko"
  CC_LINE=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\(.*\)"$/\1/p' "$HDRS/.config" 2>/dev/null || true)
  DEST="$OUT/modules/$ARCH/lime-$RELEASE.ko"
  cp "$BUILD/lime.ko" "$DEST.tmp" && mv -f "$DEST.tmp" "$DEST"
  {
    echo "{"
    echo "  \"kernel_release\": $(json_string "$RELEASE"),"
    echo "  \"arch\": $(json_string "$ARCH"),"
    echo "  \"lime_version\": $(json_string "$LIME_VERSION"),"
    echo "  \"lime_source\": $(json_string "lime-forensics-dkms $LIME_PKG_VERSION"),"
    echo "  \"headers\": $(json_string "$HDRS_PKG $HDRS_VERSION"),"
    echo "  \"compiler\": $(json_string "${CC_LINE:-unknown}"),"
    echo "  \"vermagic\": $(json_string "$VERMAGIC"),"
    echo "  \"builder\": \"kernel-modules/build-lime.sh\","
    echo "  \"built\": $(json_string "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    echo "}"
  } >"$DEST.build.json.tmp"
  mv -f "$DEST.build.json.tmp" "$DEST.build.json"
  rm -rf "$BUILD" "$BUILD.log"
  if [ "$KEEP_HEADERS" = 1 ]; then
    ln -sfn "$HDRS" "$OUT/headers-$RELEASE"
  else
    rm -rf "$WORK/headers-$RELEASE"
  fi
  log "wrote $DEST ($(stat -c %s "$DEST") bytes)"
done
