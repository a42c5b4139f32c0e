#!/usr/bin/env bash
# Benchmark: what the module repository costs a capture. Serves
# kernel-modules/repo (4 modules) with python3 -m http.server on loopback and
# compares, in one invocation:
#   reference  one curl fetching manifest.json, its .minisig and every module (no checks)
#   verify     `mshot repo verify URL`: the same fetches plus the signature,
#              size, SHA-256 and ELF checks of every module
#   minisign   `minisign -V` of the manifest alone (the C tool's signature check)
# Reported as ratios to the reference (best of RUNS).
#
# Usage: benches/repository.sh     (needs python3, curl; minisign optional)
#   MSHOT_BIN=path/to/mshot   default: target/release/mshot, else target/debug/mshot
#   RUNS=5
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-5}
MSHOT=${MSHOT_BIN:-}
if [ -z "$MSHOT" ]; then
  for c in "$ROOT/target/release/mshot" "$ROOT/target/debug/mshot"; do
    [ -x "$c" ] && MSHOT=$c && break
  done
fi
[ -x "$MSHOT" ] || { echo "build mshot first (cargo build --release)"; exit 1; }
REPO=$ROOT/kernel-modules/repo
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
W=$(mktemp -d)
python3 -m http.server --bind 127.0.0.1 --directory "$REPO" "$PORT" >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/manifest.json" >/dev/null && break; sleep 0.1; done
URL=http://127.0.0.1:$PORT/
FILES=$(python3 -c 'import json,sys; print(" ".join(m["file"] for m in json.load(open(sys.argv[1]))["modules"]))' "$REPO/manifest.json")

now() { date +%s.%N; }
best() { # best of RUNS: CMD...
  local b="" s e t
  for _ in $(seq "$RUNS"); do
    s=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; e=$(now)
    t=$(echo "$e - $s" | bc -l)
    if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
  done
  echo "$b"
}
# One curl process for all files (one connection reused), as mshot does.
fetch_all() {
  local args=(-sf -o "$W/m" "${URL}manifest.json" -o "$W/s" "${URL}manifest.json.minisig") f
  for f in $FILES; do args+=(-o "$W/k" "$URL$f"); done
  curl "${args[@]}"
}
ref=$(best fetch_all)
ver=$(best "$MSHOT" repo verify "$URL")
printf '%-10s %8.3f s  %5.2fx\n' reference "$ref" 1
printf '%-10s %8.3f s  %5.2fx\n' verify "$ver" "$(echo "$ver / $ref" | bc -l)"
if command -v minisign >/dev/null; then
  ms=$(best minisign -V -q -p "$ROOT/kernel-modules/mshot-modules.pub" -m "$REPO/manifest.json")
  printf '%-10s %8.3f s  %5.2fx\n' minisign "$ms" "$(echo "$ms / $ref" | bc -l)"
fi
