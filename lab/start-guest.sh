#!/usr/bin/env bash
# Start a lab guest built by lab/build-guest.sh in the background (QEMU, TCG).
#
#   lab/start-guest.sh OUTDIR --port PORT [--mem 512] [--smp 1] [--cpu qemu64]
#                      [--netns NS] [--append "extra kernel args"] [--timeout 90]
#
# An arm64 build (LAB_ARCH=aarch64 in OUTDIR/env) runs in qemu-system-aarch64
# -M virt, --cpu cortex-a72 by default (--cpu max: 52-bit VA with LPA2), console
# ttyAMA0, default --timeout 180 (-cpu max emulates about 3x more slowly).
# Guest port 22 (dropbear) is forwarded to 127.0.0.1:PORT (inside NS with --netns).
# Writes OUTDIR/qemu-PORT.pid, OUTDIR/console-PORT.log (serial console) and
# OUTDIR/known_hosts-PORT ("[127.0.0.1]:PORT ssh-ed25519 AAAA..."), then waits until
# an SSH banner answers. Exit 0 when ready; otherwise prints the console tail,
# stops the guest and exits non-zero. Stop it with lab/stop-guest.sh OUTDIR PORT.
set -euo pipefail

PROG=start-guest
die() { echo "$PROG: ERROR: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

OUTDIR="" PORT="" MEM=512 SMP=1 CPU="" NETNS="" APPEND="" TIMEOUT=""
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --port) need "$@"; PORT=$2; shift 2 ;;
    --mem) need "$@"; MEM=$2; shift 2 ;;
    --smp) need "$@"; SMP=$2; shift 2 ;;
    --cpu) need "$@"; CPU=$2; shift 2 ;;
    --netns) need "$@"; NETNS=$2; shift 2 ;;
    --append) need "$@"; APPEND=$2; shift 2 ;;
    --timeout) need "$@"; TIMEOUT=$2; shift 2 ;;
    --port=*|--mem=*|--smp=*|--cpu=*|--netns=*|--append=*|--timeout=*)
      k=${1%%=*}; v=${1#*=}; shift; set -- "$k" "$v" "$@" ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option: $1" ;;
    *) [ -z "$OUTDIR" ] || die "only one OUTDIR expected"; OUTDIR=$1; shift ;;
  esac
done
[ -n "$OUTDIR" ] || die "usage: $0 OUTDIR --port PORT [options] (see --help)"
[ -n "$PORT" ] || die "--port PORT is required"
case "$PORT" in *[!0-9]*) die "bad port '$PORT'" ;; esac
[ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "bad port '$PORT'"
case "$MEM" in *[!0-9]*) die "--mem takes MiB as a number, got '$MEM'" ;; esac
case "$TIMEOUT" in *[!0-9]*) die "bad --timeout '$TIMEOUT'" ;; esac
[ -d "$OUTDIR" ] || die "no such directory: $OUTDIR (run lab/build-guest.sh first)"
OUTDIR=$(cd "$OUTDIR" && pwd)
[ -f "$OUTDIR/env" ] || die "$OUTDIR/env missing: run lab/build-guest.sh $OUTDIR first"
# shellcheck disable=SC1091
. "$OUTDIR/env"
for f in "$LAB_VMLINUZ" "$LAB_INITRD" "$LAB_HOST_KEY_PUB"; do
  [ -s "$f" ] || die "$f missing: rebuild with lab/build-guest.sh $OUTDIR"
done
NIC=${LAB_NIC:-e1000}
# Builds from before LAB_ARCH are x86_64.
case "${LAB_ARCH:-x86_64}" in
  x86_64)
    QEMU_NAME=qemu-system-x86_64 QEMU_PKG=qemu-system-x86
    MACHINE=(-machine pc) CONSOLE_DEV=ttyS0
    CPU=${CPU:-${LAB_CPU:-qemu64}} TIMEOUT=${TIMEOUT:-90} ;;
  aarch64)
    QEMU_NAME=qemu-system-aarch64 QEMU_PKG=qemu-system-arm
    MACHINE=(-machine virt) CONSOLE_DEV=ttyAMA0
    CPU=${CPU:-${LAB_CPU:-cortex-a72}} TIMEOUT=${TIMEOUT:-180} ;;
  *) die "LAB_ARCH=$LAB_ARCH in $OUTDIR/env: not x86_64 or aarch64 (rebuild with lab/build-guest.sh)" ;;
esac

QEMU=$(command -v "$QEMU_NAME" || true)
if [ -z "$QEMU" ]; then
  log "$QEMU_NAME missing: apt-get install $QEMU_PKG"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$QEMU_PKG" >&2 \
    || die "could not install $QEMU_PKG"
  QEMU=$(command -v "$QEMU_NAME") || die "$QEMU_NAME still missing"
fi

NS=()
if [ -n "$NETNS" ]; then
  ip netns list | awk '{print $1}' | grep -qx "$NETNS" || die "network namespace '$NETNS' does not exist (ip netns add $NETNS)"
  NS=(ip netns exec "$NETNS")
  "${NS[@]}" ip link set lo up
fi

PIDFILE="$OUTDIR/qemu-$PORT.pid"
CONSOLE="$OUTDIR/console-$PORT.log"
QEMULOG="$OUTDIR/qemu-$PORT.log"
if [ -s "$PIDFILE" ]; then
  oldpid=$(cat "$PIDFILE")
  if kill -0 "$oldpid" 2>/dev/null && grep -q qemu "/proc/$oldpid/cmdline" 2>/dev/null; then
    die "a guest is already running for port $PORT (pid $oldpid); lab/stop-guest.sh $OUTDIR $PORT"
  fi
  rm -f "$PIDFILE"
fi

printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cat "$LAB_HOST_KEY_PUB")" >"$OUTDIR/known_hosts-$PORT"

: >"$CONSOLE"
START=$(date +%s.%N)
# -daemonize: QEMU forks once everything (including the port forward) is set up,
# so a busy port or a bad option fails here, with its message on stderr.
if ! "${NS[@]}" "$QEMU" \
    -name "mshot-lab-$PORT" \
    "${MACHINE[@]}" -accel tcg -cpu "$CPU" -smp "$SMP" -m "$MEM" \
    -nodefaults -display none -monitor none -no-reboot \
    -serial "file:$CONSOLE" \
    -kernel "$LAB_VMLINUZ" -initrd "$LAB_INITRD" \
    -append "console=$CONSOLE_DEV panic=1 $APPEND" \
    -nic "user,model=$NIC,hostfwd=tcp:127.0.0.1:$PORT-:22" \
    -daemonize -pidfile "$PIDFILE" 2>"$QEMULOG"; then
  cat "$QEMULOG" >&2
  die "QEMU did not start (is port $PORT in use${NETNS:+ in netns $NETNS}?)"
fi
PID=$(cat "$PIDFILE")
[ -s "$QEMULOG" ] || rm -f "$QEMULOG"
log "QEMU pid $PID (kernel $LAB_RELEASE, ${LAB_ARCH:-x86_64} cpu $CPU, ${MEM} MiB, NIC $NIC, console $CONSOLE)"

banner() {
  "${NS[@]}" timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && head -c 4 <&3' "$PORT" 2>/dev/null || true
}
fail() {
  echo "$PROG: ---- last lines of $CONSOLE ----" >&2
  tail -n 40 "$CONSOLE" >&2 || true
  echo "$PROG: ----" >&2
  if kill -0 "$PID" 2>/dev/null; then kill "$PID" 2>/dev/null || true; sleep 1; kill -9 "$PID" 2>/dev/null || true; fi
  rm -f "$PIDFILE"
  die "$*"
}
DEADLINE=$(( $(date +%s) + TIMEOUT ))
while :; do
  kill -0 "$PID" 2>/dev/null || fail "QEMU exited before SSH came up"
  if [ "$(banner)" = "SSH-" ]; then
    ELAPSED=$(echo "$(date +%s.%N) $START" | awk '{printf "%.1f", $1 - $2}')
    log "guest ready: ${NETNS:+ip netns exec $NETNS }ssh -i $LAB_KEY -o UserKnownHostsFile=$OUTDIR/known_hosts-$PORT -p $PORT root@127.0.0.1 (boot-to-ssh ${ELAPSED}s)"
    exit 0
  fi
  [ "$(date +%s)" -lt "$DEADLINE" ] || fail "no SSH banner on 127.0.0.1:$PORT after ${TIMEOUT}s"
  sleep 0.3
done
