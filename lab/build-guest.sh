#!/usr/bin/env bash
# Build a bootable QEMU lab guest from Debian packages, plus a LiME module for it.
#
#   lab/build-guest.sh [--flavour amd64|cloud-amd64|arm64|cloud-arm64|arm64-16k]
#                      [--release 6.1.0-NN-amd64] OUTDIR
#
# OUTDIR gets: vmlinuz, initrd.img, lime.ko, testkit.ko, bpf-helper, rwx-helper,
# release, env, id_ed25519{,.pub}, host_key.pub (and the dropbear host key it was
# derived from). The arm64 flavours are built from Debian's arm64 packages
# (downloaded, never installed) and LiME is cross-built for them. A second run for
# the same release (and the same script and testkit sources) reuses the build and
# takes a second or two. See lab/README.md.
set -euo pipefail

PROG=build-guest
die() { echo "$PROG: ERROR: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }
trap 'rc=$?; echo "$PROG: FAILED (exit $rc) at line $LINENO: $BASH_COMMAND" >&2' ERR

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

FLAVOUR=""
RELEASE=""
OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --flavour|--flavor) [ $# -ge 2 ] || die "$1 needs a value"; FLAVOUR=$2; shift 2 ;;
    --flavour=*|--flavor=*) FLAVOUR=${1#*=}; shift ;;
    --release) [ $# -ge 2 ] || die "--release needs a value"; RELEASE=$2; shift 2 ;;
    --release=*) RELEASE=${1#*=}; shift ;;
    -h|--help) usage 0 ;;
    -*) die "unknown option: $1" ;;
    *) [ -z "$OUTDIR" ] || die "only one OUTDIR expected (got '$OUTDIR' and '$1')"; OUTDIR=$1; shift ;;
  esac
done
[ -n "$OUTDIR" ] || { echo "$PROG: OUTDIR missing" >&2; usage 2; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, dpkg -x, cpio ownership)"

# Flavour: explicit, or derived from --release, default amd64.
if [ -z "$FLAVOUR" ]; then
  case "$RELEASE" in
    *cloud-arm64) FLAVOUR=cloud-arm64 ;;
    *-arm64-16k) FLAVOUR=arm64-16k ;;
    *-arm64) FLAVOUR=arm64 ;;
    *cloud*) FLAVOUR=cloud-amd64 ;;
    *) FLAVOUR=amd64 ;;
  esac
fi
# GUEST_ARCH is the guest's uname -m; DEB_ARCH ("" = this machine's) the
# architecture of the Debian packages the guest is made of.
case "$FLAVOUR" in
  amd64)       NIC=e1000;          NIC_MODULES="e1000" ;;
  cloud-amd64) NIC=virtio-net-pci; NIC_MODULES="virtio_pci virtio_net" ;;
  # virtio_pci is built in (6.12 cloud) or a module (6.1 generic); virtio_net is a
  # module needing failover and net_failover (--show-depends finds them).
  arm64|cloud-arm64|arm64-16k) NIC=virtio-net-pci; NIC_MODULES="virtio_pci virtio_net" ;;
  *) die "unknown flavour '$FLAVOUR' (amd64, cloud-amd64, arm64, cloud-arm64 or arm64-16k)" ;;
esac
# The CPU start-guest.sh gives QEMU unless told otherwise: 16 KiB pages need a
# CPU with that granule (QEMU's cortex-a72 has none); max with the IMPDEF
# pointer-authentication algorithm is the cheap one to emulate.
case "$FLAVOUR" in
  amd64|cloud-amd64) GUEST_CPU=qemu64 ;;
  arm64-16k) GUEST_CPU=max,pauth-impdef=on ;;
  *) GUEST_CPU=cortex-a72 ;;
esac
case "$FLAVOUR" in
  *arm64|arm64-16k) GUEST_ARCH=aarch64 DEB_ARCH=arm64 QEMU_BIN=qemu-system-aarch64 CROSS=aarch64-linux-gnu- ;;
  *)      GUEST_ARCH=x86_64  DEB_ARCH=""    QEMU_BIN=qemu-system-x86_64  CROSS="" ;;
esac
CROSS_TRIPLET=${CROSS%-}
# The arm64 guest's userland: busybox, dropbear and sftp-server, and the libraries
# they need (each NEEDED entry must be found in one of these).
GUEST_PKGS="busybox-static dropbear-bin openssh-sftp-server libc6 libcrypt1 zlib1g libtomcrypt1 libtommath1 libgmp10"
[ "$(uname -m)" = x86_64 ] || die "build-guest.sh runs on an x86_64 Debian machine (this is $(uname -m))"

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
# One build per OUTDIR at a time (parallel test runs may all call this script).
exec 9>"$OUTDIR/.lock"
flock 9
WORK="$OUTDIR/work"
LIME_BUILDER="$(cd "$(dirname "$0")/.." && pwd)/kernel-modules/build-lime.sh"
[ -f "$LIME_BUILDER" ] || die "$LIME_BUILDER missing"
# The test rootkit (kernel-modules/testkit), loaded only with mshot.testkit=1.
TESTKIT="$(dirname "$LIME_BUILDER")/testkit"
[ -f "$TESTKIT/mshot_testkit.c" ] || die "$TESTKIT/mshot_testkit.c missing"
SCRIPT_HASH=$(cat "$0" "$LIME_BUILDER" "$TESTKIT/Kbuild" "$TESTKIT/mshot_testkit.c" "$TESTKIT/rwx.c" "$TESTKIT/bpf.c" \
  | sha256sum | cut -c1-16)
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- packages
apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    apt_updated=1
  fi
}
# Install the given packages unless they are all installed already.
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
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

# A qemu-utils from another release (backports) conflicts with the
# distribution's qemu-system-x86; asked for together, apt replaces it with
# the matching version instead of removing it, so qemu-img stays.
QEMU_PKGS=(qemu-system-x86)
if [ -z "$DEB_ARCH" ] && dpkg-query -W -f='${Status}' qemu-utils 2>/dev/null | grep -q '^install ok installed$' &&
  ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q '^install ok installed$'; then
  apt_update_once
  candidate=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  log "note: qemu-utils $(dpkg-query -W -f='${Version}' qemu-utils) is kept, at $candidate to match qemu-system-x86"
  QEMU_PKGS=("qemu-system-x86=$candidate" "qemu-utils=$candidate")
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${QEMU_PKGS[@]}" >&2 ||
    log "warning: could not keep qemu-utils beside qemu-system-x86; apt may remove it"
  QEMU_PKGS=(qemu-system-x86)
fi
if [ -z "$DEB_ARCH" ]; then
  ensure_pkgs "${QEMU_PKGS[@]}" busybox-static dropbear-bin lime-forensics-dkms \
    openssh-sftp-server openssh-client cpio gzip zstd xz-utils kmod make gcc binutils libc6-dev
else
  # The guest's userland comes from $DEB_ARCH packages (downloaded below); the host
  # needs dropbear-bin for dropbearkey, the cross compiler and libc for rwx-helper.
  ensure_pkgs qemu-system-arm dropbear-bin lime-forensics-dkms openssh-client cpio gzip \
    zstd xz-utils kmod make gcc binutils binutils-aarch64-linux-gnu gcc-12-aarch64-linux-gnu \
    libc6-dev-arm64-cross
  # apt-get download PKG:arm64 needs arm64 as a foreign architecture (nothing of it is installed).
  if ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH"; then
    log "dpkg --add-architecture $DEB_ARCH"
    dpkg --add-architecture "$DEB_ARCH" || die "dpkg --add-architecture $DEB_ARCH failed"
    apt_updated=0
    apt_update_once
  fi
fi

# ---------------------------------------------------------------- release
if [ -z "$RELEASE" ]; then
  case "$FLAVOUR" in
    amd64) METAS="linux-image-amd64" ;;
    # The 6.12 cloud kernel (bookworm-security) first, then the 6.1 cloud one.
    cloud-amd64) METAS="linux-image-6.12-cloud-amd64 linux-image-cloud-amd64" ;;
    arm64) METAS="linux-image-arm64:arm64" ;;
    cloud-arm64) METAS="linux-image-6.12-cloud-arm64:arm64 linux-image-cloud-arm64:arm64" ;;
    arm64-16k) METAS="linux-image-6.12-arm64-16k:arm64" ;;
  esac
  # (apt-cache names a foreign architecture's packages PKG:ARCH.)
  resolve() {
    apt-cache depends "$1" 2>/dev/null \
      | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}' \
      | sed 's/^linux-image-//; s/:[a-z0-9]*$//'
  }
  for m in $METAS; do
    RELEASE=$(resolve "$m")
    [ -n "$RELEASE" ] && break
  done
  if [ -z "$RELEASE" ]; then
    apt_update_once
    for m in $METAS; do
      RELEASE=$(resolve "$m")
      [ -n "$RELEASE" ] && break
    done
  fi
  [ -n "$RELEASE" ] || die "could not resolve a kernel release from $METAS (check apt sources)"
  log "resolved kernel release $RELEASE via $m"
fi
case "$RELEASE" in *[!A-Za-z0-9.+_-]*|"") die "bad release '$RELEASE'" ;; esac

# ---------------------------------------------------------------- reuse
STAMP="$OUTDIR/.stamp"
STAMP_WANT="release=$RELEASE flavour=$FLAVOUR script=$SCRIPT_HASH"
write_env() {
  cat >"$OUTDIR/.env.tmp" <<EOF
# Generated by lab/build-guest.sh; source it: . $OUTDIR/env
LAB_DIR=$OUTDIR
LAB_FLAVOUR=$FLAVOUR
LAB_ARCH=$GUEST_ARCH
LAB_QEMU=$QEMU_BIN
LAB_CPU=$GUEST_CPU
LAB_RELEASE=$RELEASE
LAB_NIC=$NIC
LAB_VMLINUZ=$OUTDIR/vmlinuz
LAB_INITRD=$OUTDIR/initrd.img
LAB_LIME=$OUTDIR/lime.ko
LAB_TESTKIT=$OUTDIR/testkit.ko
LAB_RWX_HELPER=$OUTDIR/rwx-helper
LAB_BPF_HELPER=$OUTDIR/bpf-helper
LAB_KEY=$OUTDIR/id_ed25519
LAB_HOST_KEY_PUB=$OUTDIR/host_key.pub
EOF
  mv -f "$OUTDIR/.env.tmp" "$OUTDIR/env"
}
complete_build() {
  local f
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_WANT" ] || return 1
  for f in vmlinuz initrd.img lime.ko testkit.ko bpf-helper rwx-helper release env id_ed25519 id_ed25519.pub host_key.pub dropbear_ed25519_host_key; do
    [ -s "$OUTDIR/$f" ] || return 1
  done
  [ "$(cat "$OUTDIR/release")" = "$RELEASE" ]
}
if complete_build; then
  log "reusing the complete build in $OUTDIR ($RELEASE)"
  cat "$OUTDIR/env"
  exit 0
fi
rm -f "$STAMP"

# ---------------------------------------------------------------- downloads
mkdir -p "$WORK/debs"
# apt-get download PKG into $WORK/debs (kept for reuse); prints the .deb path.
# PKG:ARCH downloads that architecture's package.
fetch_deb() {
  local pkg=$1 deb glob
  case "$pkg" in *:*) glob="${pkg%%:*}_*_${pkg#*:}.deb" ;; *) glob="${pkg}_*.deb" ;; esac
  # shellcheck disable=SC2086
  deb=$(cd "$WORK/debs" && ls $glob 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    log "apt-get download $pkg"
    (cd "$WORK/debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) \
      || { apt_update_once; (cd "$WORK/debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2); } \
      || die "apt-get download $pkg failed (is $RELEASE still in the archive?)"
    # shellcheck disable=SC2086
    deb=$(cd "$WORK/debs" && ls $glob | head -n1)
  fi
  echo "$WORK/debs/$deb"
}
# ---------------------------------------------------------------- kernel
KPKG="linux-image-$RELEASE${DEB_ARCH:+:$DEB_ARCH}"
DEB=$(fetch_deb "$KPKG")
KROOT="$WORK/kernel"
rm -rf "$KROOT"
log "dpkg -x $(basename "$DEB")"
dpkg -x "$DEB" "$KROOT"
VMLINUZ_SRC="$KROOT/boot/vmlinuz-$RELEASE"
[ -f "$VMLINUZ_SRC" ] || die "no boot/vmlinuz-$RELEASE in $DEB"
MODDIR=""
for d in "$KROOT/lib/modules/$RELEASE" "$KROOT/usr/lib/modules/$RELEASE"; do
  [ -d "$d" ] && MODDIR=$d && break
done
[ -n "$MODDIR" ] || die "no modules directory for $RELEASE in $DEB"
if [ "$MODDIR" = "$KROOT/usr/lib/modules/$RELEASE" ] && [ ! -e "$KROOT/lib/modules/$RELEASE" ]; then
  mkdir -p "$KROOT/lib/modules" && ln -s "../../usr/lib/modules/$RELEASE" "$KROOT/lib/modules/$RELEASE"
fi
depmod -b "$KROOT" "$RELEASE" || die "depmod on the unpacked kernel failed"

# ---------------------------------------------------------------- LiME
# The same build as the module repository's (kernel-modules/build-lime.sh):
# lime-forensics-dkms against linux-headers-$RELEASE, no kernel installed.
LIME_REPO="$WORK/lime-repo"
rm -rf "$LIME_REPO"
# For an arm64 guest it cross-builds (--arch aarch64).
LIME_ARCH=()
[ -z "$CROSS" ] || LIME_ARCH=(--arch "$GUEST_ARCH")
bash "$LIME_BUILDER" "${LIME_ARCH[@]}" --work "$WORK" --keep-headers --out "$LIME_REPO" "$RELEASE" \
  || die "LiME build for $RELEASE failed (kernel-modules/build-lime.sh)"
LIME_KO="$LIME_REPO/modules/$GUEST_ARCH/lime-$RELEASE.ko"
[ -s "$LIME_KO" ] || die "kernel-modules/build-lime.sh produced no $LIME_KO"

# ---------------------------------------------------------------- test rootkit
# Built like LiME, against the same headers tree (cross-built for arm64, as
# LiME is); the helpers with the host's gcc or the cross gcc.
TK_BUILD="$WORK/testkit-build"
rm -rf "$TK_BUILD"
mkdir -p "$TK_BUILD"
cp "$TESTKIT/Kbuild" "$TESTKIT/mshot_testkit.c" "$TK_BUILD/"
log "building mshot_testkit for $RELEASE"
TK_CROSS=()
[ -z "$CROSS" ] || TK_CROSS=(ARCH=arm64 CROSS_COMPILE="$CROSS")
make -s -C "$LIME_REPO/headers-$RELEASE/" "${TK_CROSS[@]}" M="$TK_BUILD" modules >"$TK_BUILD.log" 2>&1 \
  || { tail -n 30 "$TK_BUILD.log" >&2; die "mshot_testkit build for $RELEASE failed (log: $TK_BUILD.log)"; }
TK_KO="$TK_BUILD/mshot_testkit.ko"
[ -f "$TK_KO" ] || die "the testkit build produced no mshot_testkit.ko"
case "$(modinfo -F vermagic "$TK_KO")" in "$RELEASE "*) ;; *) die "mshot_testkit.ko vermagic does not match $RELEASE" ;; esac
"${CROSS}strip" --strip-debug "$TK_KO"
HELPER_CC=gcc
[ -z "$CROSS" ] || HELPER_CC="${CROSS}gcc-12"
"$HELPER_CC" -static -O2 -Wall -s -o "$TK_BUILD/rwx-helper" "$TESTKIT/rwx.c" \
  || die "rwx-helper build failed ($HELPER_CC; for arm64 the packages gcc-12-aarch64-linux-gnu libc6-dev-arm64-cross)"
"$HELPER_CC" -static -O2 -Wall -s -o "$TK_BUILD/bpf-helper" "$TESTKIT/bpf.c" \
  || die "bpf-helper build failed ($HELPER_CC; linux-libc-dev or linux-libc-dev-arm64-cross gives linux/bpf.h)"
# ---------------------------------------------------------------- keys
if [ ! -s "$OUTDIR/id_ed25519" ] || [ ! -s "$OUTDIR/id_ed25519.pub" ]; then
  rm -f "$OUTDIR/id_ed25519" "$OUTDIR/id_ed25519.pub"
  ssh-keygen -q -t ed25519 -N "" -C "mshot-lab" -f "$OUTDIR/id_ed25519"
fi
chmod 600 "$OUTDIR/id_ed25519"
if [ ! -s "$OUTDIR/dropbear_ed25519_host_key" ]; then
  rm -f "$OUTDIR/dropbear_ed25519_host_key"
  dropbearkey -t ed25519 -f "$OUTDIR/dropbear_ed25519_host_key" >/dev/null 2>&1 \
    || die "dropbearkey failed"
fi
dropbearkey -y -f "$OUTDIR/dropbear_ed25519_host_key" 2>/dev/null \
  | awk '$1=="ssh-ed25519" {print $1, $2; found=1} END {exit !found}' >"$OUTDIR/.host_key.pub.tmp" \
  || die "could not read the public host key back with dropbearkey -y"
mv -f "$OUTDIR/.host_key.pub.tmp" "$OUTDIR/host_key.pub"

# ---------------------------------------------------------------- initramfs
IR="$WORK/initramfs"
rm -rf "$IR"
mkdir -p "$IR"/{bin,dev,etc/dropbear,lib/modules/lab,lib/modules/testkit,proc,root/.ssh,run,srv/www,sys,tmp,usr/lib,usr/local/bin,var/log,mnt}
# Merged layout: every busybox applet lives in /bin, the other bin dirs point there,
# so any PATH (dropbear's default, a login shell's) finds insmod, rmmod, ip, ...
ln -s bin "$IR/sbin"
ln -s ../bin "$IR/usr/bin"
ln -s ../bin "$IR/usr/sbin"
ln -s ../run "$IR/var/run"
chmod 1777 "$IR/tmp"
chmod 700 "$IR/root" "$IR/root/.ssh"

if [ -z "$DEB_ARCH" ]; then
  BUSYBOX=/bin/busybox
  [ -x "$BUSYBOX" ] || die "$BUSYBOX missing (package busybox-static)"
  case "$(ldd "$BUSYBOX" 2>&1 || true)" in *"not a dynamic"*|*"statically linked"*) ;; *) die "$BUSYBOX is not the static busybox (install busybox-static)" ;; esac
  cp "$BUSYBOX" "$IR/bin/busybox"
  n=0
  for applet in $("$IR/bin/busybox" --list); do
    # The list contains 'busybox' itself: linking it over the binary makes a loop (ELOOP, -40).
    case "$applet" in busybox|*/*|"") continue ;; esac
    [ -e "$IR/bin/$applet" ] || { ln -s busybox "$IR/bin/$applet"; n=$((n + 1)); }
  done
  [ -L "$IR/bin/busybox" ] && die "internal: busybox became a symlink"
  log "busybox: $n applets"

  # Copy a dynamic ELF binary and the libraries ldd lists, at the same paths.
  copy_with_libs() {
    local src=$1 dst=$2 lib
    mkdir -p "$IR/$(dirname "$dst")"
    cp -L "$src" "$IR/$dst"
    for lib in $(ldd "$src" | grep -o '/[^ ]*' | sort -u); do
      [ -e "$IR/$lib" ] && continue
      mkdir -p "$IR/$(dirname "$lib")"
      cp -L "$lib" "$IR/$lib"
    done
  }
  copy_with_libs /usr/sbin/dropbear /bin/dropbear
  SFTP_SRC=/usr/lib/openssh/sftp-server
  [ -x "$SFTP_SRC" ] || die "$SFTP_SRC missing (package openssh-sftp-server)"
  copy_with_libs "$SFTP_SRC" /usr/lib/sftp-server
  mkdir -p "$IR/usr/lib/openssh"
  ln -s ../sftp-server "$IR/usr/lib/openssh/sftp-server"
  # Prove the loader finds everything inside the image.
  chroot "$IR" /bin/dropbear -V >/dev/null 2>&1 || die "dropbear does not run inside the initramfs (missing libraries?)"
else
  # The guest's userland from $DEB_ARCH packages, unpacked into a sysroot. Nothing of it
  # runs here: busybox's applet links are made by /init (busybox --install), and the
  # libraries are found by following readelf's NEEDED entries inside the sysroot.
  SYSROOT="$WORK/sysroot"
  rm -rf "$SYSROOT"
  mkdir -p "$SYSROOT"
  for p in $GUEST_PKGS; do
    dpkg -x "$(fetch_deb "$p:$DEB_ARCH")" "$SYSROOT"
  done
  [ -f "$SYSROOT/bin/busybox" ] || die "no bin/busybox in busybox-static:$DEB_ARCH"
  cp "$SYSROOT/bin/busybox" "$IR/bin/busybox"
  ln -s busybox "$IR/bin/sh"
  LIBDIRS="lib/$CROSS_TRIPLET usr/lib/$CROSS_TRIPLET lib usr/lib"
  # Copy a $DEB_ARCH ELF binary from the sysroot and, recursively, the libraries it
  # needs (to /lib/TRIPLET) and its program interpreter (to the path it names).
  copy_guest_elf() {
    local src=$1 dst=$2 interp lib d found
    [ -f "$SYSROOT/$src" ] || die "$src missing in the $DEB_ARCH packages ($GUEST_PKGS)"
    mkdir -p "$IR/$(dirname "$dst")"
    cp -L "$SYSROOT/$src" "$IR/$dst"
    interp=$(readelf -l "$SYSROOT/$src" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
    if [ -n "$interp" ] && [ ! -e "$IR/$interp" ]; then
      [ -e "$SYSROOT/$interp" ] || die "interpreter $interp of $src not in the $DEB_ARCH packages (libc6)"
      mkdir -p "$IR/$(dirname "$interp")"
      cp -L "$SYSROOT/$interp" "$IR/$interp"
    fi
    for lib in $(readelf -d "$SYSROOT/$src" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
      [ -e "$IR/lib/$CROSS_TRIPLET/$lib" ] && continue
      [ "/lib/$lib" = "$interp" ] && continue
      found=""
      for d in $LIBDIRS; do
        [ -e "$SYSROOT/$d/$lib" ] && found="$d/$lib" && break
      done
      [ -n "$found" ] || die "$lib (needed by $src) is in none of the $DEB_ARCH packages $GUEST_PKGS: add its package to GUEST_PKGS in $0"
      copy_guest_elf "$found" "/lib/$CROSS_TRIPLET/$lib"
    done
  }
  copy_guest_elf usr/sbin/dropbear /bin/dropbear
  copy_guest_elf usr/lib/openssh/sftp-server /usr/lib/sftp-server
  mkdir -p "$IR/usr/lib/openssh"
  ln -s ../sftp-server "$IR/usr/lib/openssh/sftp-server"
  log "$DEB_ARCH userland: busybox, dropbear, sftp-server, $(ls "$IR/lib/$CROSS_TRIPLET" | tr '\n' ' ')"
fi

# Modules (and their dependencies) into DIR, named in LIST, decompressed:
# busybox insmod wants plain .ko.
copy_modules() {
  local dir=$1 list=$2 mod deps kind path name
  shift 2
  : >"$list"
  for mod in "$@"; do
    deps=$(modprobe -d "$KROOT" -S "$RELEASE" --show-depends "$mod" 2>&1) \
      || die "module $mod not found for $RELEASE: $deps"
    while read -r kind path _; do
      [ "$kind" = insmod ] || continue
      name=$(basename "$path"); name=${name%%.ko*}
      grep -qx "$name" "$list" && continue
      case "$path" in
        *.ko)     cp "$path" "$dir/$name.ko" ;;
        *.ko.xz)  xz -dc "$path" >"$dir/$name.ko" ;;
        *.ko.zst) zstd -qdc "$path" >"$dir/$name.ko" ;;
        *.ko.gz)  gzip -dc "$path" >"$dir/$name.ko" ;;
        *) die "unexpected module file $path" ;;
      esac
      echo "$name" >>"$list"
    done <<<"$deps"
  done
}
# shellcheck disable=SC2086 # word lists
copy_modules "$IR/lib/modules/lab" "$IR/etc/lab-modules" $NIC_MODULES
# tc's clsact qdisc and BPF classifier, for the BPF helper (test rootkit only).
copy_modules "$IR/lib/modules/testkit" "$IR/etc/testkit-modules" sch_ingress cls_bpf
log "NIC modules: $(tr '\n' ' ' <"$IR/etc/lab-modules")(NIC $NIC)"

cat >"$IR/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$IR/etc/shadow" <<'EOF'
root:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
chmod 600 "$IR/etc/shadow"
cat >"$IR/etc/group" <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
printf '/bin/sh\n/bin/ash\n' >"$IR/etc/shells"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' >"$IR/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n10.0.2.15 mshot-lab\n' >"$IR/etc/hosts"
echo mshot-lab >"$IR/etc/hostname"
cat >"$IR/etc/profile" <<'EOF'
export PATH=/bin
export HOME=/root
EOF
echo "$RELEASE" >"$IR/etc/lab-release"
cp "$OUTDIR/id_ed25519.pub" "$IR/root/.ssh/authorized_keys"
chmod 600 "$IR/root/.ssh/authorized_keys"
cp "$OUTDIR/dropbear_ed25519_host_key" "$IR/etc/dropbear/dropbear_ed25519_host_key"
chmod 600 "$IR/etc/dropbear/dropbear_ed25519_host_key"
echo '<html><body>mshot lab guest</body></html>' >"$IR/srv/www/index.html"
cp "$TK_KO" "$IR/lib/modules/testkit/mshot_testkit.ko"
cp "$TK_BUILD/rwx-helper" "$IR/usr/local/bin/rwx-helper"
cp "$TK_BUILD/bpf-helper" "$IR/usr/local/bin/bpf-helper"

cat >"$IR/usr/local/bin/lab-sleeper" <<'EOF'
#!/bin/sh
# Workload: a long-lived shell loop with a recognisable name.
n=0
while true; do
  n=$((n + 1))
  echo "$n" >/tmp/lab-sleeper.count
  sleep 5
done
EOF
chmod 755 "$IR/usr/local/bin/lab-sleeper"

# /init; the arm64 image's busybox makes its applet links here first (the build
# machine cannot run it), and has no test rootkit to load.
{
cat <<'EOF'
#!/bin/sh
# mshot lab guest /init (busybox). Sets up the system, then execs busybox init,
# which starts and respawns the workloads and dropbear (see /etc/inittab).
EOF
if [ -n "$DEB_ARCH" ]; then
  cat <<'EOF'
# Every applet as a link in /bin (this busybox was not run at build time).
/bin/busybox --install -s /bin
EOF
fi
cat <<'EOF'
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# securityfs, as systemd mounts it: /sys/kernel/security/lockdown says the
# kernel's lockdown mode (mshot reads it to pick a capture method).
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
hostname mshot-lab
echo "lab-init: kernel $(uname -r)"
for m in $(cat /etc/lab-modules); do
  insmod "/lib/modules/lab/$m.ko" || echo "lab-init: insmod $m failed"
done
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -e /sys/class/net/eth0 ] || echo "lab-init: no eth0!"
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo 'nameserver 10.0.2.3' >/etc/resolv.conf
EOF
cat <<'EOF'
# The test rootkit, opt-in: a guest without the parameter stays clean.
case " $(cat /proc/cmdline) " in
  *" mshot.testkit=1 "*)
    insmod /lib/modules/testkit/mshot_testkit.ko || echo "lab-init: insmod mshot_testkit failed"
    for m in $(cat /etc/testkit-modules); do
      insmod "/lib/modules/testkit/$m.ko" || echo "lab-init: insmod $m failed"
    done
    /usr/local/bin/rwx-helper >/run/rwx-helper.log 2>&1 &
    /usr/local/bin/bpf-helper >/run/bpf-helper.log 2>&1 &
    ;;
esac
echo "lab-init: network up, starting init"
exec /bin/init
EOF
} >"$IR/init"
chmod 755 "$IR/init"

cat >"$IR/etc/inittab" <<'EOF'
::respawn:/bin/dropbear -F -E -s -p 22 -W 1048576 -r /etc/dropbear/dropbear_ed25519_host_key
::respawn:/bin/sh /usr/local/bin/lab-sleeper
::respawn:/bin/httpd -f -p 8080 -h /srv/www
::sysinit:/bin/echo "lab-init: guest ready, dropbear on port 22"
::askfirst:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/umount -a -r
EOF

INITRD_TMP="$OUTDIR/.initrd.img.tmp"
(cd "$IR" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -9n >"$INITRD_TMP"

# ---------------------------------------------------------------- outputs
# Replace outputs atomically: a guest may be starting from this OUTDIR right now.
install_atomic() { cp "$1" "$OUTDIR/.$2.tmp" && mv -f "$OUTDIR/.$2.tmp" "$OUTDIR/$2"; }
install_atomic "$VMLINUZ_SRC" vmlinuz
mv -f "$INITRD_TMP" "$OUTDIR/initrd.img"
install_atomic "$LIME_KO" lime.ko
install_atomic "$TK_KO" testkit.ko
install_atomic "$TK_BUILD/bpf-helper" bpf-helper
install_atomic "$TK_BUILD/rwx-helper" rwx-helper
echo "$RELEASE" >"$OUTDIR/.release.tmp" && mv -f "$OUTDIR/.release.tmp" "$OUTDIR/release"
write_env
rm -rf "$KROOT" "$LIME_REPO" "$IR" "$TK_BUILD" "$TK_BUILD.log" "$WORK/headers-$RELEASE" "$WORK/sysroot"
echo "$STAMP_WANT" >"$STAMP"
log "done: $OUTDIR (release $RELEASE, $GUEST_ARCH, initrd $(stat -c %s "$OUTDIR/initrd.img") bytes, lime.ko $(stat -c %s "$OUTDIR/lime.ko") bytes, testkit.ko $(stat -c %s "$OUTDIR/testkit.ko") bytes)"
cat "$OUTDIR/env"
