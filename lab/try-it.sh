#!/usr/bin/env bash
# The README's first command: build the lab guest from Debian packages, boot it,
# capture its memory with mshot, analyse it, stop the guest.
#
#   sudo lab/try-it.sh [--flavour amd64|cloud-amd64|cloud-arm64|arm64-16k] [--output-dir DIR]
#
# The arm64 flavours (a Graviton-like guest under qemu-system-aarch64, LiME
# cross-built) take about twice as long to boot and capture.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAVOUR=amd64
OUT=captures
while [ $# -gt 0 ]; do
  case $1 in
    --flavour) FLAVOUR=$2; shift 2 ;;
    --output-dir) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--flavour amd64|cloud-amd64|cloud-arm64|arm64-16k] [--output-dir DIR]" >&2; exit 2 ;;
  esac
done
case $FLAVOUR in
  amd64|cloud-amd64|cloud-arm64|arm64|arm64-16k) ;;
  *) echo "try-it: unknown flavour $FLAVOUR: amd64, cloud-amd64, cloud-arm64, arm64 or arm64-16k" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "try-it: run as root (QEMU, apt-get)" >&2; exit 2; }
if ! command -v cargo >/dev/null; then
  echo "try-it: installing Rust with rustup (mshot needs Rust 1.89 or newer)"
  apt-get update -qq
  apt-get install -y --no-install-recommends curl ca-certificates build-essential >/dev/null
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
LAB=lab/build/$FLAVOUR
PORT=2230
mkdir -p lab/build
LOG=lab/build/try-it.log
: >"$LOG"
# step TEXT CMD...: one line per step; the tools' own output goes to $LOG.
step() {
  local text=$1
  shift
  echo "try-it: $text"
  "$@" >>"$LOG" 2>&1 || { echo "try-it: failed: $text (the last lines of $LOG follow)" >&2; tail -20 "$LOG" >&2; exit 1; }
}
step "building the lab guest from Debian packages ($LAB)" lab/build-guest.sh --flavour "$FLAVOUR" "$LAB"
step "building mshot (cargo build --release; about 10 minutes on 2 cores the first time)" \
  cargo build --release --locked
trap 'lab/stop-guest.sh "$LAB" $PORT >>"$LOG" 2>&1' EXIT
step "booting the guest (kernel $(cat "$LAB/release"))" lab/start-guest.sh "$LAB" --port $PORT
mkdir -p "$OUT"
# No profile is needed: mshot takes BTF and kallsyms from the target while
# it captures and analyses with them, whatever the kernel.
echo "try-it: capturing with mshot, then pstree and triage from the capture's own material"
target/release/mshot --server 127.0.0.1 --port $PORT --user root \
  --key "$LAB/id_ed25519" --known-hosts "$LAB/known_hosts-$PORT" \
  --module "$LAB/lime.ko" --output-dir "$OUT" --analyze pstree,triage
echo "try-it: the same guest without capturing: mshot live netstat (reads /proc/kcore over SSH)"
target/release/mshot live --server 127.0.0.1 --port $PORT --user root \
  --key "$LAB/id_ed25519" --known-hosts "$LAB/known_hosts-$PORT" \
  --output-dir "$OUT" netstat
echo "try-it: done; the image, its manifest and the analysis are in $OUT/ (tool output: $LOG)"
