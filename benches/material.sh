#!/usr/bin/env bash
# Benchmark: analysis of a fresh capture with no profile, from its capture
# material (NAME.material/: BTF + kallsyms), against Volatility 3 reading the
# same image with the ISF `mshot profile export` made from that material.
# Same plugin (pstree), one invocation, ratios; peak RSS from /usr/bin/time.
#
# Usage: benches/material.sh IMAGE     (IMAGE.lime with IMAGE.material/ beside it,
#                                       e.g. a capture of the lab guest)
#   MSHOT_BIN=path/to/mshot  use that binary (default: release build of the
#                            a release build of mshot)
#   MSHOT_VOL=path/to/vol    Volatility 3 (default $MSHOT_TOOLS_DIR/vol3/bin/vol)
#   RUNS=3                   warm runs per tool (best is kept)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMG=${1:?usage: benches/material.sh IMAGE (a capture with its NAME.material/ beside it)}
T=${CARGO_TARGET_DIR:-$ROOT/target}
RUNS=${RUNS:-3}
W=$(mktemp -d /tmp/mshot-material-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
TOOLS=${MSHOT_TOOLS_DIR:-$HOME/.cache/mshot-tools}
VOL=${MSHOT_VOL:-$TOOLS/vol3/bin/vol}
[ -x "$VOL" ] || { echo "skipped: no Volatility 3 at $VOL (tests/run installs it)"; exit 0; }

if [ -n "${MSHOT_BIN:-}" ]; then
  MSHOT=("$MSHOT_BIN")
else
  (cd "$ROOT" && CARGO_TARGET_DIR=$T cargo build -q --release --bin mshot)
  MSHOT=("$T/release/mshot")
fi
EXPORT_BIN=${MSHOT_BIN:-$T/release/mshot}

measure() { # CMD... -> "seconds kb"
  /usr/bin/time -o "$W/time.txt" -f "%e %M" "$@" >/dev/null 2>"$W/stderr.txt" ||
    { echo "failed: $* ($(tail -2 "$W/stderr.txt"))" >&2; }
  tail -1 "$W/time.txt"
}
best() {
  local b="" r
  for _ in $(seq "$RUNS"); do
    r=$(measure "$@")
    if [ -z "$b" ] || awk -v a="${r% *}" -v c="${b% *}" 'BEGIN{exit !(a<c)}'; then b=$r; fi
  done
  echo "$b"
}

ANALYZE=("${MSHOT[@]}" analyze)
MS=("${ANALYZE[@]}" "$IMG" pstree --no-cache --format json)

mkdir -p "$W/symbols/linux"
read -r ef efm <<<"$(measure "$EXPORT_BIN" profile export "$IMG" -o "$W/symbols/linux/material.json.xz")"
mkdir -p "$W/vol-home"
VOLCMD=(env HOME="$W/vol-home" "$VOL" -q -r json -s "$W/symbols" -f "$IMG" linux.pstree)

read -r mf mfm <<<"$(measure "${MS[@]}")"
read -r mw mwm <<<"$(best "${MS[@]}")"
read -r vf vfm <<<"$(measure "${VOLCMD[@]}")"
read -r vw vwm <<<"$(best "${VOLCMD[@]}")"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b<=0) b=0.005; printf "%.0fx", a/b }'; }
printf '%-36s %10s %12s\n' run seconds "peak RSS KB"
printf '%-36s %10s %12s\n' "mshot profile export (ISF, xz)" "$ef" "$efm"
printf '%-36s %10s %12s\n' "mshot pstree, material, first run" "$mf" "$mfm"
printf '%-36s %10s %12s\n' "mshot pstree, material, warm (best)" "$mw" "$mwm"
printf '%-36s %10s %12s\n' "volatility3 pstree, ISF, first run" "$vf" "$vfm"
printf '%-36s %10s %12s\n' "volatility3 pstree, ISF, warm (best)" "$vw" "$vwm"
echo "speed-up first run: $(ratio "$vf" "$mf")   warm: $(ratio "$vw" "$mw")"
