#!/usr/bin/env bash
# Fleet scale: N simulated targets on loopback, captured by one `mshot -c`.
#
# One local sshd stands for every target (each host entry is its own SSH
# session), and one local TCP source serves a LiME-format image of SIZE MiB
# to each connection (not emulated: what is measured is mshot's tunnel,
# validation, hashing and writing, N times at once). The hidden fleet flag
# --bench-source-port makes each host stream that source instead of loading
# LiME. For each N the script reports total time, aggregate throughput and
# peak RSS, as ratios to the one-target run of the same invocation.
#
# Usage: benches/fleet.sh [SIZE_MIB=256] [COUNTS="1 10 25 50"] [WORKERS=auto]
#   MSHOT=path/to/mshot (default: target/release/mshot, else target/debug/mshot)
#   BENCH_DIR=dir for images (default /tmp); about SIZE x max(COUNTS) of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-256}
COUNTS=${2:-"1 10 25 50"}
WORKERS=${3:-auto}
SIZE=$((SIZE_MIB * 1024 * 1024))
if [ -z "${MSHOT:-}" ]; then
  MSHOT=target/release/mshot
  [ -x "$MSHOT" ] || MSHOT=target/debug/mshot
fi
[ -x "$MSHOT" ] || { echo "build mshot first (cargo build --release)" >&2; exit 1; }
W=$(mktemp -d "${BENCH_DIR:-/tmp}/mshot-fleet-bench.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT

ssh-keygen -q -t ed25519 -N '' -f "$W/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$W/client_key"
cp "$W/client_key.pub" "$W/authorized_keys"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SSHD_PORT=$(free_port)
SRC_PORT=$(free_port)
echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$W/host_key.pub")" > "$W/known_hosts"
mkdir -p /run/sshd
cat > "$W/sshd_config" <<CFG
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $W/host_key
AuthorizedKeysFile $W/authorized_keys
PidFile $W/sshd.pid
StrictModes no
UsePAM no
PermitRootLogin yes
AllowTcpForwarding yes
MaxStartups 256:30:512
MaxSessions 64
CFG
/usr/sbin/sshd -f "$W/sshd_config" -D -e 2> "$W/sshd.log" &
python3 benches/lime_source_many.py "$SRC_PORT" "$SIZE" > "$W/source.log" &
for _ in $(seq 50); do grep -q ready "$W/source.log" && break; sleep 0.1; done
sleep 0.5

fleet_file() { # N
  {
    echo "output_dir: $W/out"
    echo "defaults: {username: root, key: $W/client_key, known_hosts: $W/known_hosts, agent: false, port: $SSHD_PORT, connect_timeout: 60, stream_timeout: 300}"
    echo "hosts:"
    for i in $(seq 1 "$1"); do printf '  - {addr: 127.0.0.1, name: t%03d}\n' "$i"; done
  } > "$W/fleet-$1.yaml"
}

echo "mshot: $MSHOT; $SIZE_MIB MiB per target; workers $WORKERS; $(nproc) cores"
printf '%6s %9s %10s %12s %10s %10s %12s %12s\n' hosts seconds MiB/s per_host_s RSS_MB t_ratio 't/(N*t1)' rss_ratio
t1=""; r1=""
for n in $COUNTS; do
  fleet_file "$n"
  rm -rf "$W/out"
  /usr/bin/time -f '%M %e' -o "$W/time" "$MSHOT" -c "$W/fleet-$n.yaml" --workers "$WORKERS" \
      --bench-source-port "$SRC_PORT" --report "$W/report-$n.json" > "$W/out-$n.txt" 2> "$W/err-$n.txt" \
      || { tail -20 "$W/err-$n.txt" "$W/out-$n.txt"; exit 1; }
  read -r rss secs < "$W/time"
  [ -n "$t1" ] || { t1=$secs; r1=$rss; }
  python3 - "$W/report-$n.json" "$n" "$SIZE_MIB" "$secs" "$rss" "$t1" "$r1" <<'PY' || exit 1
import json, sys
path, n, size, secs, rss, t1, r1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(float, sys.argv[4:])
r = json.load(open(path))
if r["summary"]["succeeded"] != n:
    sys.exit(f"only {r['summary']['succeeded']} of {n} succeeded")
per = sum(h["duration_seconds"] for h in r["hosts"]) / n
print(f"{n:6d} {secs:9.1f} {n * size / secs:10.1f} {per:12.1f} {rss / 1024:10.0f} {secs / t1:10.2f} {secs / (n * t1):12.2f} {rss / r1:12.2f}")
PY
  rm -rf "$W/out"
done
