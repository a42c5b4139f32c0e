#!/usr/bin/env bash
# End-to-end capture time on the lab guest: mshot against an OpenSSH-forward
# reference capture of the same guest, in the same invocation.
#
# Reference: push lime.ko over ssh, insmod in TCP mode, `ssh -L`, a plain reader
# into a file, rmmod (what a careful responder does by hand with OpenSSH).
# mshot: the full capture (checks, push, verify, load, stream, validate, hash,
# fsync, cleanup, manifest), by default and with --digest: LiME's own
# SHA-256 (off by default) hashes in the target's kernel while it streams,
# which the reference does not do (and which is slow on the emulated CPU).
#
# Usage: benches/lab.sh [LAB_DIR=lab/build/amd64] [ROUNDS=1]
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=${1:-lab/build/amd64}
ROUNDS=${2:-1}
PORT=2298
MSHOT=${MSHOT:-target/release/mshot}
[ -x "$MSHOT" ] || cargo build --release
W=$(mktemp -d /tmp/mshot-labbench.XXXXXX)
trap 'lab/stop-guest.sh "$LAB" $PORT >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
lab/start-guest.sh "$LAB" --port $PORT > /dev/null
KH="$LAB/known_hosts-$PORT"
SSH=(ssh -i "$LAB/id_ed25519" -o UserKnownHostsFile="$KH" -o StrictHostKeyChecking=yes -o BatchMode=yes -p $PORT root@127.0.0.1)
FWD=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')

openssh_capture() {
  "${SSH[@]}" 'mkdir -p /tmp/ref && cat > /tmp/ref/lime.ko' < "$LAB/lime.ko"
  "${SSH[@]}" 'insmod /tmp/ref/lime.ko "path=tcp:4444 format=lime localhostonly=1 timeout=0"' &
  local insmod=$!
  "${SSH[@]}" -N -o ExitOnForwardFailure=yes -L "127.0.0.1:$FWD:127.0.0.1:4444" &
  local fwd=$!
  until "${SSH[@]}" 'grep -q "0100007F:115C 00000000:0000 0A" /proc/net/tcp'; do sleep 0.2; done
  python3 benches/read_socket.py 127.0.0.1 "$FWD" "$W/ref.lime" > /dev/null
  wait $insmod || true
  kill $fwd; wait $fwd 2>/dev/null || true
  "${SSH[@]}" 'rmmod lime; rm -rf /tmp/ref'
}

printf '%-6s %12s %12s %8s %18s %8s %14s\n' round openssh_s mshot_s ratio mshot_digest_s ratio image_bytes
for round in $(seq "$ROUNDS"); do
  t0=$(date +%s.%N); openssh_capture; t1=$(date +%s.%N)
  ref_size=$(stat -c %s "$W/ref.lime"); rm -f "$W/ref.lime"
  "$MSHOT" --server 127.0.0.1 --port $PORT --user root --key "$LAB/id_ed25519" --known-hosts "$KH" \
      --module "$LAB/lime.ko" --output-dir "$W" --filename mshot.lime > /dev/null 2> "$W/mshot.err" || { cat "$W/mshot.err"; exit 1; }
  t2=$(date +%s.%N)
  size=$(stat -c %s "$W/mshot.lime"); rm -f "$W/mshot.lime" "$W/mshot.json"
  "$MSHOT" --server 127.0.0.1 --port $PORT --user root --key "$LAB/id_ed25519" --known-hosts "$KH" \
      --module "$LAB/lime.ko" --output-dir "$W" --filename mshot.lime --digest > /dev/null 2> "$W/mshot.err" || { cat "$W/mshot.err"; exit 1; }
  t3=$(date +%s.%N)
  rm -f "$W/mshot.lime" "$W/mshot.json"
  [ "$size" = "$ref_size" ] || echo "warning: sizes differ ($ref_size vs $size)"
  printf '%-6s %12.1f %12.1f %8.2f %18.1f %8.2f %14s\n' "$round" "$(python3 -c "print($t1-$t0)")" "$(python3 -c "print($t2-$t1)")" \
      "$(python3 -c "print(($t1-$t0)/($t2-$t1))")" "$(python3 -c "print($t3-$t2)")" "$(python3 -c "print(($t1-$t0)/($t3-$t2))")" "$size"
done
