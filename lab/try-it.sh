#!/usr/bin/env bash
# The README's first command: build the lab guest from Debian packages, boot it,
# capture its memory with mshot, analyse it, stop the guest.
#
#   sudo lab/try-it.sh [--flavour amd64|cloud-amd64] [--output-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
FLAVOUR=amd64
OUT=captures
while [ $# -gt 0 ]; do
  case $1 in
    --flavour) FLAVOUR=$2; shift 2 ;;
    --output-dir) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--flavour amd64|cloud-amd64] [--output-dir DIR]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "try-it: run as root (QEMU, apt-get)" >&2; exit 2; }
if ! command -v cargo >/dev/null; then
  echo "try-it: installing Rust with rustup (mshot needs Rust 1.89 or newer)"
  apt-get install -y --no-install-recommends curl ca-certificates build-essential >/dev/null
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
LAB=lab/build/$FLAVOUR
PORT=2230
lab/build-guest.sh --flavour "$FLAVOUR" "$LAB"
cargo build --release --locked
trap 'lab/stop-guest.sh "$LAB" $PORT' EXIT
lab/start-guest.sh "$LAB" --port $PORT
mkdir -p "$OUT"
ANALYZE=()
# The only Volatility profile at hand is the one in ../shared for 6.1.0-56; use it if it matches.
ISF=../shared/fixtures/debian-6.1.0-56-amd64/debian-6.1.0-56-amd64.json.xz
if [ "$(cat "$LAB/release")" = 6.1.0-56-amd64 ] && [ -f "$ISF" ]; then
  ANALYZE=(--analyze pstree,lsmod --profile "$ISF")
fi
target/release/mshot --server 127.0.0.1 --port $PORT --user root \
  --key "$LAB/id_ed25519" --known-hosts "$LAB/known_hosts-$PORT" \
  --module "$LAB/lime.ko" --output-dir "$OUT" "${ANALYZE[@]}"
echo "try-it: done; the image and its manifest are in $OUT/"
