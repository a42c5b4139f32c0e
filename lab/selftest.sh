#!/usr/bin/env bash
# End-to-end check of a lab guest with the OpenSSH client only (no mshot):
# busybox applets the capture tool relies on, pushing lime.ko over ssh stdin,
# a LiME capture in TCP mode read back through `ssh -L`, and its size and magic.
#
#   lab/selftest.sh OUTDIR [--port 2299] [--mem 512] [--keep-image FILE] [--no-capture]
#
# Starts the guest on PORT unless one is already running there (then it is left
# running); a guest it started is stopped at the end.
set -euo pipefail

PROG=selftest
HERE=$(cd "$(dirname "$0")" && pwd)
die() { echo "$PROG: FAIL: $*" >&2; exit 1; }
ok() { echo "$PROG: ok: $*" >&2; }
log() { echo "$PROG: $*" >&2; }

OUTDIR="" PORT=2299 MEM=512 KEEP="" CAPTURE=1 FWD_PORT="" LIME_PORT=4444
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --keep-image) KEEP=$2; shift 2 ;;
    --no-capture) CAPTURE=0; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) OUTDIR=$1; shift ;;
  esac
done
[ -n "$OUTDIR" ] || die "usage: $0 OUTDIR [--port PORT]"
OUTDIR=$(cd "$OUTDIR" && pwd)
. "$OUTDIR/env"

STARTED=0 FWD_PID="" INSMOD_PID="" IMG=""
INSLOG="$OUTDIR/selftest-$PORT-insmod.log"
cleanup() {
  [ -n "$FWD_PID" ] && kill "$FWD_PID" 2>/dev/null || true
  [ -n "$INSMOD_PID" ] && kill "$INSMOD_PID" 2>/dev/null || true
  [ -n "$IMG" ] && [ -z "$KEEP" ] && rm -f "$IMG"
  [ "$STARTED" = 1 ] && "$HERE/stop-guest.sh" "$OUTDIR" "$PORT" || true
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { echo "$(now) $1" | awk '{printf "%.1f", $1 - $2}'; }

PIDFILE="$OUTDIR/qemu-$PORT.pid"
if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  log "using the guest already running on port $PORT"
  printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cat "$LAB_HOST_KEY_PUB")" >"$OUTDIR/known_hosts-$PORT"
else
  t=$(now)
  STARTED=1
  "$HERE/start-guest.sh" "$OUTDIR" --port "$PORT" --mem "$MEM"
  ok "boot-to-ssh $(since "$t") s"
fi

KH="$OUTDIR/known_hosts-$PORT"
SSH=(ssh -i "$LAB_KEY" -o UserKnownHostsFile="$KH" -o StrictHostKeyChecking=yes
     -o BatchMode=yes -o IdentitiesOnly=yes -o ConnectTimeout=20 -p "$PORT" root@127.0.0.1)
g() { "${SSH[@]}" "$@"; }

# ---- basics
[ "$(g uname -r)" = "$LAB_RELEASE" ] || die "uname -r is not $LAB_RELEASE"
ok "uname -r = $LAB_RELEASE"
[ "$(g id -u)" = 0 ] || die "id -u is not 0"
ok "id -u = 0"
IOMEM=$(g cat /proc/iomem)
RANGES=$(echo "$IOMEM" | awk -F' : ' '/^[0-9a-f]+-[0-9a-f]+ : System RAM$/ {print $1}')
[ -n "$RANGES" ] || die "no System RAM in /proc/iomem"
EXPECTED=0 NR=0
for r in $RANGES; do
  s=$((16#${r%-*})) e=$((16#${r#*-}))
  EXPECTED=$((EXPECTED + e - s + 1 + 32)); NR=$((NR + 1))
done
ok "/proc/iomem: $NR System RAM ranges ($(echo $RANGES)), expected LiME image $EXPECTED bytes"
echo "$IOMEM" | grep -q 'Kernel code' || die "no 'Kernel code' in /proc/iomem"
g 'grep -c . /proc/net/tcp' >/dev/null || die "/proc/net/tcp unreadable"
g '! grep -q "^lime " /proc/modules' || die "lime already loaded"
ok "/proc/net/tcp readable, lime not loaded"
g 'test -s /sys/kernel/btf/vmlinux && test -r /proc/kallsyms && grep -q " T _stext" /proc/kallsyms' \
  || die "/sys/kernel/btf/vmlinux or /proc/kallsyms missing"
ok "/sys/kernel/btf/vmlinux ($(g 'wc -c </sys/kernel/btf/vmlinux') bytes) and /proc/kallsyms present"
g 'echo test | sha256sum' | grep -q '^f2ca1bb6c7e907d06dafe4687e579fce76b37e4e93b7605022da52e6ccc26fd2' \
  || die "sha256sum misbehaves"
D=$(g 'mktemp -d')
case "$D" in /tmp/*) ;; *) die "mktemp -d gave '$D'" ;; esac
ok "mktemp -d = $D, sha256sum works"
g "ps" | grep -q 'lab-sleeper' && g "ps" | grep -q 'httpd' || die "workload processes missing"
ok "workloads (lab-sleeper, httpd) running"
if command -v sftp >/dev/null; then
  echo "ls /usr/lib" | sftp -b - -i "$LAB_KEY" -o UserKnownHostsFile="$KH" -o StrictHostKeyChecking=yes \
    -o BatchMode=yes -P "$PORT" root@127.0.0.1 >/dev/null || die "sftp failed"
  ok "sftp works"
fi

# ---- push lime.ko through ssh stdin
g "cat > $D/lime.ko" <"$LAB_LIME"
[ "$(g "sha256sum $D/lime.ko" | cut -d' ' -f1)" = "$(sha256sum "$LAB_LIME" | cut -d' ' -f1)" ] \
  || die "pushed lime.ko differs"
ok "pushed lime.ko ($(stat -c %s "$LAB_LIME") bytes), sha256 matches"

[ "$CAPTURE" = 1 ] || { ok "capture skipped (--no-capture)"; exit 0; }

# ---- capture: insmod blocks until the image has been sent
t_cap=$(now)
"${SSH[@]}" "insmod $D/lime.ko 'path=tcp:$LIME_PORT format=lime localhostonly=1 timeout=0'" \
  >"$INSLOG" 2>&1 &
INSMOD_PID=$!
LPORT_HEX=$(printf '%04X' "$LIME_PORT")
listen=""
for _ in $(seq 1 120); do
  listen=$(g "grep ':$LPORT_HEX 00000000:0000 0A' /proc/net/tcp" || true)
  [ -n "$listen" ] && break
  kill -0 "$INSMOD_PID" 2>/dev/null || { cat "$INSLOG" >&2; die "insmod ended early"; }
  sleep 0.5
done
[ -n "$listen" ] || die "LiME never listened on port $LIME_PORT"
echo "$listen" | awk '{print $2}' | grep -qx "0100007F:$LPORT_HEX" \
  || die "LiME listens on $(echo "$listen" | awk '{print $2}'), not 127.0.0.1 only"
ok "LiME listening on 0100007F:$LPORT_HEX (127.0.0.1 only) after $(since "$t_cap") s"
g 'grep -q "^lime " /proc/modules' || die "lime not in /proc/modules while capturing"

# forward a free local port to the guest's 127.0.0.1:LIME_PORT
FWD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 5555)
"${SSH[@]}" -N -o ExitOnForwardFailure=yes -L "127.0.0.1:$FWD_PORT:127.0.0.1:$LIME_PORT" &
FWD_PID=$!
for _ in $(seq 1 100); do
  ss -ltnH "sport = :$FWD_PORT" | grep -q . && break
  kill -0 "$FWD_PID" 2>/dev/null || die "ssh -L exited"
  sleep 0.1
done
IMG=${KEEP:-"$OUTDIR/selftest-image.lime"}
t_read=$(now)
timeout 900 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && cat <&3' "$FWD_PORT" >"$IMG" || die "reading the stream failed"
READ_S=$(since "$t_read")
wait "$INSMOD_PID" || { cat "$INSLOG" >&2; die "insmod exited non-zero"; }
INSMOD_PID=""
kill "$FWD_PID" 2>/dev/null || true; FWD_PID=""
SIZE=$(stat -c %s "$IMG")
RATE=$(echo "$SIZE $READ_S" | awk '{printf "%.1f", $1 / $2 / 1e6}')
ok "read $SIZE bytes in $READ_S s ($RATE MB/s) through ssh -L; insmod to EOF $(since "$t_cap") s"
[ "$SIZE" = "$EXPECTED" ] || die "image is $SIZE bytes, expected $EXPECTED"
MAGIC=$(head -c 4 "$IMG" | od -An -tx1 | tr -d ' \n')
[ "$MAGIC" = 454d694c ] || die "image starts with $MAGIC, not 45 4d 69 4c (LiME magic)"
ok "image size matches System RAM + 32 bytes/range; magic 45 4d 69 4c"

[ -z "$(g "grep ':$LPORT_HEX 00000000:0000 0A' /proc/net/tcp" || true)" ] || die "LiME still listening after the capture"
ok "LiME socket gone from /proc/net/tcp after the capture"
g 'rmmod lime' || die "rmmod lime failed"
g '! grep -q "^lime " /proc/modules' || die "lime still in /proc/modules"
ok "rmmod lime works; /proc/modules has no lime"
g "rm -rf $D"
[ -n "$KEEP" ] && log "image kept at $KEEP"
rm -f "$INSLOG"
ok "all checks passed"
