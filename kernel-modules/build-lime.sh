#!/usr/bin/env bash
# Build LiME kernel modules from Debian packages, without installing a kernel.
#
#   kernel-modules/build-lime.sh [--work DIR] [--headers DIR] [--keep-headers]
#                                --out REPO RELEASE...
#
# For each RELEASE (a target's `uname -r`) this writes
#   REPO/modules/ARCH/lime-RELEASE.ko             (debug info stripped)
#   REPO/modules/ARCH/lime-RELEASE.ko.build.json  (how it was built)
# where ARCH is this machine's `uname -m`. `mshot repo index REPO` then lists
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
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

OUT=""
WORK=""
HEADERS=""
KEEP_HEADERS=0
RELEASES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
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

ARCH=$(uname -m)
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
fetch_deb() {
  local pkg=$1 deb
  mkdir -p "$WORK/debs"
  deb=$(ls "$WORK"/debs/"${pkg}"_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    log "apt-get download $pkg"
    (cd "$WORK/debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) \
      || { apt_update_once; (cd "$WORK/debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2); } \
      || die "apt-get download $pkg failed (is it still in the archive?)"
    deb=$(ls "$WORK"/debs/"${pkg}"_*.deb | head -n1)
  fi
  echo "$deb"
}
json_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

if [ -z "$HEADERS" ]; then
  ensure_pkgs lime-forensics-dkms kmod make gcc binutils
else
  ensure_pkgs lime-forensics-dkms kmod binutils
fi
LIME_SRC=$(ls -d /usr/src/lime-forensics-*/ 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$LIME_SRC" ] && [ -f "$LIME_SRC/main.c" ] || die "LiME source not found in /usr/src/lime-forensics-*/"
LIME_PKG_VERSION=$(dpkg-query -W -f='${Version}' lime-forensics-dkms 2>/dev/null || echo unknown)
LIME_VERSION=${LIME_PKG_VERSION%%-*}

# ---------------------------------------------------------------- headers
# Sets HDRS (the kernel build tree) and HDRS_PKG/HDRS_VERSION for RELEASE.
headers_for() {
  local release=$1 hpkg="linux-headers-$1" hdeps other hroot deb L T S
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
    hroot="$WORK/headers-$release"
    rm -rf "$hroot"
    deb=$(fetch_deb "$hpkg")
    dpkg -x "$deb" "$hroot"
    # Relative links (scripts, tools -> ../../lib/linux-kbuild-*) point at the real system paths.
    while IFS= read -r -d '' L; do
      [ -e "$L" ] && continue
      T=$(readlink "$L")
      case "$T" in /*) S=$T ;; *) S=$(realpath -m "/${L#"$hroot"/}/../$T") ;; esac
      [ -e "$S" ] && ln -sfn "$S" "$L"
    done < <(find "$hroot" -type l -print0)
    HDRS="$hroot/usr/src/linux-headers-$release"
    HDRS_VERSION=$(dpkg-deb -f "$deb" Version)
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
  else
    headers_for "$RELEASE"
  fi
  BUILD="$WORK/lime-build-$RELEASE"
  rm -rf "$BUILD"
  cp -a "$LIME_SRC" "$BUILD"
  log "building LiME $LIME_PKG_VERSION for $RELEASE ($ARCH) against $HDRS"
  make -s -C "$HDRS" M="$BUILD" modules >"$BUILD.log" 2>&1 \
    || { tail -n 30 "$BUILD.log" >&2; die "LiME build for $RELEASE failed (log: $BUILD.log)"; }
  [ -f "$BUILD/lime.ko" ] || die "LiME build for $RELEASE produced no lime.ko"
  VERMAGIC=$(modinfo -F vermagic "$BUILD/lime.ko" | sed 's/ *$//')
  case "$VERMAGIC" in "$RELEASE "*) ;; *) die "lime.ko vermagic '$VERMAGIC' does not match $RELEASE" ;; esac
  strip --strip-debug "$BUILD/lime.ko"
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
