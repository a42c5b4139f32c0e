#!/usr/bin/env bash
# Benchmark: `mshot analyze IMAGE pstree` vs Volatility 3 `linux.pstree`
# on the Debian 6.1 fixture, first run (no profile cache) and warm run,
# reported as ratios from one invocation. Peak RSS from /usr/bin/time.
# Then the same, warm, for netstat vs linux.sockstat (goal >= 50x) and
# maps vs linux.proc.Maps.
#
# Usage: benches/analyze.sh            (needs shared/fixtures, zstd, python3)
#   MSHOT_BIN=path/to/mshot  an mshot already built (default: build one)
#   RUNS=3                   warm runs per tool (best is kept)
#   FIRST_RUNS=1             first runs per tool, each with its cache removed
#                            (best is kept; these machines are noisy)
#   MSHOT_VOL=path/to/vol    Volatility 3 to compare with (default: the venv
#                            tests/run installs, else one made here)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${CARGO_TARGET_DIR:-$ROOT/target-analysis}
FIX=${MSHOT_FIXTURES:-$ROOT/../shared/fixtures}/debian-6.1.0-56-amd64
RUNS=${RUNS:-3}
FIRST_RUNS=${FIRST_RUNS:-1}
W=$T/bench
mkdir -p "$W"
[ -f "$FIX/capture.lime.zst" ] || { echo "skipped: fixture not found at $FIX"; exit 0; }
IMG=$W/capture.lime
[ -f "$IMG" ] || zstd -d -q --long=27 -o "$IMG" "$FIX/capture.lime.zst"
PROFILE=$FIX/debian-6.1.0-56-amd64.json.xz

if [ -n "${MSHOT_BIN:-}" ]; then
  MSHOT=("$MSHOT_BIN" analyze)
else
  (cd "$ROOT" && CARGO_TARGET_DIR=$T cargo build -q --release --bin mshot)
  MSHOT=("$T/release/mshot" analyze)
fi

# Volatility 3 in a venv, with the ISF in a symbol directory.
TOOLS=${MSHOT_TOOLS_DIR:-${HOME:-/root}/.cache/mshot-tools}
VOLBIN=${MSHOT_VOL:-}
[ -n "$VOLBIN" ] || { [ -x "$TOOLS/vol3/bin/vol" ] && VOLBIN=$TOOLS/vol3/bin/vol; } || true
if [ -z "$VOLBIN" ]; then
  VENV=$T/vol3-venv
  [ -x "$VENV/bin/vol" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q volatility3; }
  VOLBIN=$VENV/bin/vol
fi
SYM=$W/symbols/linux
mkdir -p "$SYM" && cp -f "$PROFILE" "$SYM/"

# measure NAME CMD... -> prints "seconds kb" (wall time to the
# microsecond: /usr/bin/time's 10 ms steps are an eighth of a first run)
measure() {
  local t0=$EPOCHREALTIME t1
  /usr/bin/time -o "$W/time.txt" -f "%M" "$@" >/dev/null 2>"$W/last-stderr.txt" || {
    echo "failed: $* (see $W/last-stderr.txt)" >&2; }
  t1=$EPOCHREALTIME
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}') $(tail -1 "$W/time.txt")"
}
best() { # best of RUNS warm runs
  local b="" r
  for _ in $(seq "$RUNS"); do
    r=$(measure "$@")
    if [ -z "$b" ] || awk -v a="${r% *}" -v c="${b% *}" 'BEGIN{exit !(a<c)}'; then b=$r; fi
  done
  echo "$b"
}

best_first() { # CLEANUP CMD...: best of FIRST_RUNS runs, each after CLEANUP
  local clean=$1 b="" r
  shift
  for _ in $(seq "$FIRST_RUNS"); do
    $clean
    r=$(measure "$@")
    if [ -z "$b" ] || awk -v a="${r% *}" -v c="${b% *}" 'BEGIN{exit !(a<c)}'; then b=$r; fi
  done
  echo "$b"
}

VHOME=$W/vol-home
vol_clean() { rm -rf "$VHOME"; mkdir -p "$VHOME"; }
mshot_clean() { rm -rf "$MCACHE"; }
vol_clean
VOL=(env HOME="$VHOME" "$VOLBIN" -q -r json -s "$W/symbols" -f "$IMG" linux.pstree)
MCACHE=$W/mshot-cache
MS=("${MSHOT[@]}" "$IMG" pstree --profile "$PROFILE" --cache-dir "$MCACHE" --format json)

read -r vf vfm <<<"$(best_first vol_clean "${VOL[@]}")"
read -r vw vwm <<<"$(best "${VOL[@]}")"
read -r mf mfm <<<"$(best_first mshot_clean "${MS[@]}")"
read -r mw mwm <<<"$(best "${MS[@]}")"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b<=0) b=0.005; printf "%.0fx", a/b }'; }
printf '%-28s %10s %12s\n' "run" "seconds" "peak RSS KB"
printf '%-28s %10s %12s\n' "volatility3 first (best)" "$vf" "$vfm"
printf '%-28s %10s %12s\n' "volatility3 warm (best)" "$vw" "$vwm"
printf '%-28s %10s %12s\n' "mshot first (best, no cache)" "$mf" "$mfm"
printf '%-28s %10s %12s\n' "mshot warm (best)" "$mw" "$mwm"
echo "speed-up first: $(ratio "$vf" "$mf") (goal >= 100x)   warm: $(ratio "$vw" "$mw") (goal >= 50x)"
echo "peak RSS warm: mshot ${mwm} KB vs volatility3 ${vwm} KB (goal <= ~107 MB)"

# Warm runs of the plugins added for issue 7, each against its Volatility
# counterpart (same image, same ISF, caches warm on both sides).
for pair in netstat:linux.sockstat maps:linux.proc.Maps; do
  ours=${pair%%:*} theirs=${pair#*:}
  VOLP=(env HOME="$VHOME" "$VOLBIN" -q -r json -s "$W/symbols" -f "$IMG" "$theirs")
  MSP=("${MSHOT[@]}" "$IMG" "$ours" --profile "$PROFILE" --cache-dir "$MCACHE" --format json)
  read -r pw pwm <<<"$(best "${VOLP[@]}")"
  read -r ow owm <<<"$(best "${MSP[@]}")"
  printf '%-28s %10s %12s\n' "volatility3 $theirs" "$pw" "$pwm"
  printf '%-28s %10s %12s\n' "mshot $ours" "$ow" "$owm"
  goal=""; [ "$ours" = netstat ] && goal=" (goal >= 50x)"
  echo "speed-up warm $ours: $(ratio "$pw" "$ow")$goal; peak RSS ${owm} KB vs ${pwm} KB"
done
