#!/usr/bin/env bash
# Benchmark: `mshot analyze IMAGE triage` against Volatility 3's malware
# plugins that triage covers (check_syscall, hidden_modules, check_modules,
# check_idt, keyboard_notifiers, netfilter, check_creds, malfind), run one
# after the other on the Debian 6.1 fixture with the same ISF, caches warm
# on both sides; reported as one ratio from one invocation (goal >= 20x).
# Also mshot's first run (profile cache empty).
#
# Usage: benches/triage.sh      (needs shared/fixtures, zstd, python3)
#   MSHOT_BIN=path/to/mshot  an mshot already built (default: build one)
#   RUNS=3                   mshot runs (best kept); Volatility runs once
#   MSHOT_VOL=path/to/vol    Volatility 3 (default: the tests/run venv)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${CARGO_TARGET_DIR:-$ROOT/target-analysis}
FIX=${MSHOT_FIXTURES:-$ROOT/../shared/fixtures}/debian-6.1.0-56-amd64
RUNS=${RUNS:-3}
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
TOOLS=${MSHOT_TOOLS_DIR:-${HOME:-/root}/.cache/mshot-tools}
VOLBIN=${MSHOT_VOL:-$TOOLS/vol3/bin/vol}
[ -x "$VOLBIN" ] || { echo "skipped: no Volatility 3 at $VOLBIN (tests/run installs it)"; exit 0; }
SYM=$W/symbols/linux
mkdir -p "$SYM" && cp -f "$PROFILE" "$SYM/"
VHOME=$W/vol-home
mkdir -p "$VHOME"

seconds() { # CMD... -> wall seconds
  local t0=$EPOCHREALTIME
  "$@" >/dev/null 2>"$W/last-stderr.txt" || { echo "failed: $* (see $W/last-stderr.txt)" >&2; }
  awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b - a}'
}

MCACHE=$W/mshot-cache-triage
rm -rf "$MCACHE"
MS=("${MSHOT[@]}" "$IMG" triage --profile "$PROFILE" --cache-dir "$MCACHE" --format json)
first=$(seconds "${MS[@]}")
best=""
for _ in $(seq "$RUNS"); do
  s=$(seconds "${MS[@]}")
  if [ -z "$best" ] || awk -v a="$s" -v b="$best" 'BEGIN{exit !(a<b)}'; then best=$s; fi
done

# Volatility's own cache warmed by one plugin run first.
env HOME="$VHOME" "$VOLBIN" -q -r json -s "$W/symbols" -f "$IMG" linux.pslist >/dev/null 2>&1 || true
total=0
printf '%-40s %10s\n' run seconds
for p in check_syscall hidden_modules check_modules check_idt keyboard_notifiers netfilter check_creds malfind; do
  s=$(seconds env HOME="$VHOME" "$VOLBIN" -q -r json -s "$W/symbols" -f "$IMG" "linux.malware.$p")
  printf '%-40s %10s\n' "volatility3 linux.malware.$p" "$s"
  total=$(awk -v a="$total" -v b="$s" 'BEGIN{printf "%.3f", a + b}')
done
printf '%-40s %10s\n' "volatility3 all eight" "$total"
printf '%-40s %10s\n' "mshot triage, first run (no cache)" "$first"
printf '%-40s %10s\n' "mshot triage, warm (best of $RUNS)" "$best"
echo "speed-up: $(awk -v a="$total" -v b="$best" 'BEGIN{printf "%.0fx", a/b}') warm, $(awk -v a="$total" -v b="$first" 'BEGIN{printf "%.0fx", a/b}') first run (goal >= 20x)"
