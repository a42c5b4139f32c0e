#!/usr/bin/env bash
# Live analysis against capture-then-analyse, on the lab guest, in one run:
# `mshot live pslist` (material fetch and all; first run with the BTF cache
# empty, then warm) against `mshot --analyze pslist` (the full capture plus
# the analysis of the image). Reports both ratios and the share of RAM that
# live read from /proc/kcore (goals: >= 20x, < 1%).
#
# Usage: benches/live.sh [LAB_DIR=lab/build/amd64] [ROUNDS=1]
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=${1:-lab/build/amd64}
ROUNDS=${2:-1}
PORT=2297
MSHOT=${MSHOT:-target/release/mshot}
[ -x "$MSHOT" ] || cargo build --release
W=$(mktemp -d /tmp/mshot-livebench.XXXXXX)
trap 'lab/stop-guest.sh "$LAB" $PORT >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
lab/start-guest.sh "$LAB" --port $PORT > /dev/null
KH="$LAB/known_hosts-$PORT"
CONN=(--server 127.0.0.1 --port $PORT --user root --key "$LAB/id_ed25519" --known-hosts "$KH" --no-agent)
secs() { python3 -c "print($2-$1)"; }

printf '%-6s %10s %10s %10s %8s %8s %10s\n' round capture_s live_cold_s live_warm_s cold_x warm_x ram_read
for round in $(seq "$ROUNDS"); do
  rm -rf "$W/cache"
  t0=$(date +%s.%N)
  "$MSHOT" live "${CONN[@]}" --cache-dir "$W/cache" --output-dir "$W" pslist > /dev/null 2> "$W/live.err" || { cat "$W/live.err"; exit 1; }
  t1=$(date +%s.%N)
  "$MSHOT" live "${CONN[@]}" --cache-dir "$W/cache" --output-dir "$W" pslist > /dev/null 2> "$W/live.err" || { cat "$W/live.err"; exit 1; }
  t2=$(date +%s.%N)
  "$MSHOT" "${CONN[@]}" --module "$LAB/lime.ko" --output-dir "$W" --filename cap.lime --analyze pslist > /dev/null 2> "$W/cap.err" || { cat "$W/cap.err"; exit 1; }
  t3=$(date +%s.%N)
  rm -rf "$W"/cap.*
  share=$(grep -o '([0-9.]*% of' "$W/live.err" | tr -d '(' | cut -d' ' -f1)
  cold=$(secs "$t0" "$t1"); warm=$(secs "$t1" "$t2"); cap=$(secs "$t2" "$t3")
  printf '%-6s %10.1f %10.2f %10.2f %8.1f %8.1f %10s\n' "$round" "$cap" "$cold" "$warm" \
    "$(python3 -c "print($cap/$cold)")" "$(python3 -c "print($cap/$warm)")" "$share"
done
