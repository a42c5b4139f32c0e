#!/usr/bin/env bash
# Stop a lab guest started by lab/start-guest.sh and wait for QEMU to exit.
#
#   lab/stop-guest.sh OUTDIR PORT
#
# Exit 0 when it is gone (or was not running).
set -euo pipefail

PROG=stop-guest
die() { echo "$PROG: ERROR: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 OUTDIR PORT"
OUTDIR=$1 PORT=$2
PIDFILE="$OUTDIR/qemu-$PORT.pid"
if [ ! -s "$PIDFILE" ]; then
  echo "$PROG: no pidfile $PIDFILE: nothing to stop" >&2
  exit 0
fi
PID=$(cat "$PIDFILE")
case "$PID" in ''|*[!0-9]*) die "bad pid '$PID' in $PIDFILE" ;; esac

is_our_qemu() {
  [ -r "/proc/$PID/cmdline" ] && tr '\0' ' ' <"/proc/$PID/cmdline" | grep -q -- "mshot-lab-$PORT"
}
if ! is_our_qemu; then
  echo "$PROG: pid $PID is not running (or not our QEMU): removing stale $PIDFILE" >&2
  rm -f "$PIDFILE"
  exit 0
fi

kill -TERM "$PID" 2>/dev/null || true
for _ in $(seq 1 100); do
  is_our_qemu || break
  sleep 0.1
done
if is_our_qemu; then
  echo "$PROG: QEMU $PID ignored SIGTERM, sending SIGKILL" >&2
  kill -KILL "$PID" 2>/dev/null || true
  for _ in $(seq 1 50); do
    is_our_qemu || break
    sleep 0.1
  done
fi
is_our_qemu && die "QEMU $PID is still running"
rm -f "$PIDFILE"
echo "$PROG: stopped guest on port $PORT (pid $PID)" >&2
