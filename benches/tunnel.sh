#!/usr/bin/env bash
# Tunnel + sink throughput: mshot's capture receive path against OpenSSH.
#
# One local sshd on loopback, one local LiME-format TCP source (not emulated),
# read (a) through `ssh -L` by a plain reader into a file, (b) through mshot's
# direct-tcpip path into a file (validation + SHA-256 included). Same cipher,
# same size, same invocation; reports the ratio and peak RSS.
#
# `default` in CIPHERS lets each client negotiate as it does out of the box
# (both offer chacha20-poly1305 first today); the row names what sshd agreed
# to with each.
#
# Usage: benches/tunnel.sh [SIZE_GIB=2] [CIPHERS="chacha20-poly1305@openssh.com aes256-gcm@openssh.com default"]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_GIB=${1:-2}
CIPHERS=${2:-"chacha20-poly1305@openssh.com aes256-gcm@openssh.com default"}
SIZE=$((SIZE_GIB * 1024 * 1024 * 1024))
MSHOT=${MSHOT:-target/release/mshot}
[ -x "$MSHOT" ] || cargo build --release
W=$(mktemp -d "${BENCH_DIR:-/tmp}/mshot-bench.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT

ssh-keygen -q -t ed25519 -N '' -f "$W/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$W/client_key"
cp "$W/client_key.pub" "$W/authorized_keys"
SSHD_PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
SRC_PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
FWD_PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$W/host_key.pub")" > "$W/known_hosts"
mkdir -p /run/sshd

python3 benches/lime_source.py "$SRC_PORT" "$SIZE" > "$W/source.log" &
sleep 0.5

# CPU seconds of the client side (ssh + the reader, or mshot) per GiB: unlike
# the rates, this hardly moves when the machine is busy.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
# sshd's CPU ticks: the listener and every process under it, each with what
# it already reaped (a finished session's CPU moves into its parent's).
sshd_ticks() {
  local total=0 p
  for p in $(pstree -p "$1" | grep -o '([0-9]*)' | tr -d '()'); do
    total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
# Until the session's sshd has exited and been reaped.
sshd_quiet() { for _ in $(seq 40); do [ -z "$(pgrep -P "$1")" ] && return; sleep 0.05; done; }
printf '%-44s %10s %12s %10s %8s %10s %10s %12s %12s %14s %14s\n' cipher ssh_MiB/s ssh+sha_MiB/s mshot_MiB/s ratio ratio_sha mshot_RSS ssh+sha_cpu/GiB mshot_cpu/GiB sshd_cpu/GiB:ssh sshd_cpu/GiB:mshot
for cipher in $CIPHERS; do
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
LogLevel DEBUG1
CFG
  if [ "$cipher" != default ]; then echo "Ciphers $cipher" >> "$W/sshd_config"; fi
  /usr/sbin/sshd -f "$W/sshd_config" -D -e 2> "$W/sshd.log" &
  SSHD=$!
  sleep 0.5

  # (a) OpenSSH: ssh -L and a plain reader.
  ssh -N -i "$W/client_key" -o UserKnownHostsFile="$W/known_hosts" -o StrictHostKeyChecking=yes \
      -o BatchMode=yes $([ "$cipher" = default ] || echo "-c $cipher") -o ExitOnForwardFailure=yes \
      -L "127.0.0.1:$FWD_PORT:127.0.0.1:$SRC_PORT" -p "$SSHD_PORT" root@127.0.0.1 &
  FWD=$!
  for _ in $(seq 50); do python3 -c "import socket;socket.create_connection(('127.0.0.1',$FWD_PORT)).close()" 2>/dev/null && break; sleep 0.1; done
  # the probe connection above consumed one image; the source serves each connection afresh
  t0=$(date +%s.%N)
  python3 benches/read_socket.py 127.0.0.1 "$FWD_PORT" "$W/openssh.lime" > /dev/null
  t1=$(date +%s.%N)
  rm -f "$W/openssh.lime"
  c0=$(cpu_ticks $FWD)
  s0=$(sshd_ticks $SSHD)
  /usr/bin/time -f '%U %S' -o "$W/reader_cpu" \
    python3 benches/read_socket.py 127.0.0.1 "$FWD_PORT" "$W/openssh.lime" --sha256 > /dev/null
  t2=$(date +%s.%N)
  c1=$(cpu_ticks $FWD)
  s1=$(sshd_ticks $SSHD)
  ossh_cpu=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v g="$SIZE_GIB" '{print ((b - a) / t + $1 + $2) / g}' "$W/reader_cpu")
  kill $FWD; wait $FWD 2>/dev/null || true
  ossh=$(python3 -c "print($SIZE/1048576/($t1-$t0))")
  ossh_sha=$(python3 -c "print($SIZE/1048576/($t2-$t1))")
  rm -f "$W/openssh.lime"

  # (b) mshot: the capture receive path.
  sshd_quiet $SSHD
  s2=$(sshd_ticks $SSHD)
  /usr/bin/time -f '%M %U %S' -o "$W/rss" "$MSHOT" bench-receive --server 127.0.0.1 --port "$SSHD_PORT" --user root \
      --key "$W/client_key" --known-hosts "$W/known_hosts" --source-port "$SRC_PORT" \
      --output-dir "$W" --filename mshot.lime > "$W/mshot.out" 2> "$W/mshot.err" || { cat "$W/mshot.err"; exit 1; }
  mshot_rate=$(sed -n 's/.*mib_per_s=\([0-9.]*\).*/\1/p' "$W/mshot.out")
  rm -f "$W/mshot.lime"
  sshd_quiet $SSHD
  s3=$(sshd_ticks $SSHD)
  kill $SSHD; wait $SSHD 2>/dev/null || true
  read -r rss_kb m_user m_sys < "$W/rss"
  # What sshd agreed to for the image's direction: OpenSSH's session, then mshot's.
  agreed=$(sed -n 's/.*kex: server->client cipher: \([^ ]*\).*/\1/p' "$W/sshd.log" | sed 's/@openssh.com//' | uniq | paste -sd/)
  label=$cipher
  [ "$cipher" = default ] && label="default ($agreed)"
  mshot_cpu=$(awk -v u="$m_user" -v s="$m_sys" -v g="$SIZE_GIB" 'BEGIN {print (u + s) / g}')
  sshd_ossh=$(awk -v a="$s0" -v b="$s1" -v t="$TICK" -v g="$SIZE_GIB" 'BEGIN {print (b - a) / t / g}')
  sshd_mshot=$(awk -v a="$s2" -v b="$s3" -v t="$TICK" -v g="$SIZE_GIB" 'BEGIN {print (b - a) / t / g}')
  printf '%-44s %10.1f %12.1f %10.1f %8.2f %10.2f %7s MB %12.2f %12.2f %14.2f %14.2f\n' "$label" "$ossh" "$ossh_sha" "$mshot_rate" \
     "$(python3 -c "print($mshot_rate/$ossh)")" "$(python3 -c "print($mshot_rate/$ossh_sha)")" "$(( rss_kb / 1024 ))" \
     "$ossh_cpu" "$mshot_cpu" "$sshd_ossh" "$sshd_mshot"
done
