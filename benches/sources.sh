#!/usr/bin/env bash
# Stream sources on the lab guest, all in one invocation on one guest boot:
#
#   1. kcore against LiME (the reference), plain, on an unthrottled link:
#      wall time of the whole capture and the ratio kcore/LiME.
#   2. LiME compressed (compress=1) against plain LiME, on the same unthrottled
#      link and through a throttled relay (benches/throttle_relay.py, default
#      4 MiB/s): wire bytes, wall time, and the break-even link speed below
#      which compression wins (plain wire bytes / compressed wall time).
#
# Usage: benches/sources.sh [LAB_DIR=lab/build/amd64] [RATE_BYTES_PER_S=4194304]
# Runs the debug binary unless MSHOT is set (the guest is the bottleneck).
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=${1:-lab/build/amd64}
RATE=${2:-4194304}
PORT=2297
RELAY=2296
MSHOT=${MSHOT:-target/debug/mshot}
[ -x "$MSHOT" ] || cargo build
W=$(mktemp -d /tmp/mshot-sourcebench.XXXXXX)
relay_pid=
cleanup() {
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
  lab/stop-guest.sh "$LAB" $PORT >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
lab/start-guest.sh "$LAB" --port $PORT > /dev/null
KEY=$(cat "$LAB/host_key.pub")
printf '[127.0.0.1]:%s %s\n[127.0.0.1]:%s %s\n' $PORT "$KEY" $RELAY "$KEY" > "$W/known_hosts"
python3 benches/throttle_relay.py $RELAY $PORT "$RATE" > "$W/relay.out" &
relay_pid=$!
until grep -q ready "$W/relay.out"; do sleep 0.1; done

# capture NAME PORT ARGS...: prints "seconds wire_bytes image_bytes"
capture() {
  local name=$1 port=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  "$MSHOT" --server 127.0.0.1 --port "$port" --user root --key "$LAB/id_ed25519" --no-agent \
      --known-hosts "$W/known_hosts" --output-dir "$W" --filename "$name.lime" "$@" \
      > /dev/null 2> "$W/$name.err" || { cat "$W/$name.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 - "$W/$name.json" "$t0" "$t1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{float(sys.argv[3]) - float(sys.argv[2]):.1f} {m['source']['wire_bytes']} {m['image']['bytes']}")
PY
  rm -f "$W/$name.lime" "$W/$name.json"
}

row() { printf '%-28s %9s %13s %13s\n' "$@"; }
row run seconds wire_bytes image_bytes
read -r t_lime w_lime i_lime < <(capture lime $PORT --method lime --module "$LAB/lime.ko")
row "lime plain" "$t_lime" "$w_lime" "$i_lime"
read -r t_dig w_dig i_dig < <(capture lime-digest $PORT --method lime --module "$LAB/lime.ko" --digest)
row "lime plain + digest" "$t_dig" "$w_dig" "$i_dig"
read -r t_kc w_kc i_kc < <(capture kcore $PORT --method kcore)
row "kcore" "$t_kc" "$w_kc" "$i_kc"
read -r t_c w_c i_c < <(capture lime-z $PORT --method lime --module "$LAB/lime.ko" --compress)
row "lime compressed" "$t_c" "$w_c" "$i_c"
read -r t_pr w_pr i_pr < <(capture lime-slow $RELAY --method lime --module "$LAB/lime.ko")
row "lime plain @ $RATE B/s" "$t_pr" "$w_pr" "$i_pr"
read -r t_cr w_cr i_cr < <(capture lime-z-slow $RELAY --method lime --module "$LAB/lime.ko" --compress)
row "lime compressed @ $RATE B/s" "$t_cr" "$w_cr" "$i_cr"

python3 - "$t_lime" "$t_dig" "$t_kc" "$t_c" "$w_lime" "$w_c" "$t_pr" "$t_cr" "$RATE" <<'PY'
import sys
t_lime, t_dig, t_kc, t_c, w_lime, w_c, t_pr, t_cr, rate = map(float, sys.argv[1:])
print()
print(f"kcore / lime wall time:             {t_kc / t_lime:.2f}")
print(f"digest cost (lime+digest / lime):   {t_dig / t_lime:.2f}")
print(f"wire bytes plain / compressed:      {w_lime / w_c:.1f}x")
print(f"unthrottled compressed / plain:     {t_c / t_lime:.2f}")
print(f"throttled compressed / plain:       {t_cr / t_pr:.2f}")
# Plain LiME is link-bound below w_lime / t_c: compression (bound by the
# target's CPU at about t_c) wins on any link slower than that.
be = w_lime / t_c
print(f"break-even link speed:              {be / 1e6:.1f} MB/s = {be * 8 / 1e6:.0f} Mbit/s")
PY
