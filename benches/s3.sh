#!/usr/bin/env bash
# S3 upload throughput and memory: mshot streaming a capture into a bucket
# against `aws s3 cp` (PyPI awscli) of a file of the same size, to the same
# local Garage, in the same invocation.
#
# mshot's run is the whole capture receive path: a local LiME-format TCP source
# read through a real local sshd (direct-tcpip), LiME validation, SHA-256,
# and the multipart upload (CRC32C per part, --s3-concurrency parts in flight),
# with no local image. Two references, same invocation: `aws s3 cp` of a file
# of the same size from the page cache (the AWS CLI's defaults: 8 MiB parts,
# 10 in flight), and the same bytes through `ssh -L` piped into `aws s3 cp -`
# (what a responder would run without mshot: same tunnel cost as mshot). Peak
# RSS of mshot is compared with the stated bound: the capture path's own RSS
# (measured here, to a local file) + part_size x (concurrency + 1).
#
# `mshot upload FILE` (an image and manifest written by mshot's receive path
# to local disk) is timed against `aws s3 cp FILE` of the same file, in
# alternation, REPEAT times: that pair is the like-for-like "upload
# throughput" comparison; the capture rows are the like-for-like comparison
# of the streaming path (mshot vs ssh -L | aws s3 cp -).
#
# Usage: benches/s3.sh [SIZE_GIB=4] [CONCURRENCY=4] [PART_MIB=8]   (REPEAT=3 in the environment)
# Needs: garage (tests/run installs it into /opt/garage), python3, sshd.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_GIB=${1:-4}
CONCURRENCY=${2:-4}
PART_MIB=${3:-8}
REPEAT=${REPEAT:-3}
SIZE=$((SIZE_GIB * 1024 * 1024 * 1024))
MSHOT=${MSHOT:-target/release/mshot}
GARAGE=${MSHOT_GARAGE:-/opt/garage/bin/garage}
TOOLS=${MSHOT_TOOLS_DIR:-${HOME:-/root}/.cache/mshot-tools}
[ -x "$MSHOT" ] || cargo build --release
[ -x "$GARAGE" ] || { echo "no garage at $GARAGE (see tests/run)" >&2; exit 1; }
AWS=$TOOLS/awscli-venv/bin/aws
if [ ! -x "$AWS" ]; then
  python3 -m venv "$TOOLS/awscli-venv"
  "$TOOLS/awscli-venv/bin/pip" install --quiet --disable-pip-version-check awscli
fi
W=$(mktemp -d "${BENCH_DIR:-/tmp}/mshot-s3-bench.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT

# Garage, single node, on this issue's fixed ports (39590 S3, 39591 RPC).
S3_PORT=39590
export AWS_ACCESS_KEY_ID=GK$(python3 -c 'import secrets;print(secrets.token_hex(12))')
export AWS_SECRET_ACCESS_KEY=$(python3 -c 'import secrets;print(secrets.token_hex(32))')
export AWS_REGION=garage AWS_DEFAULT_REGION=garage AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=$W/none AWS_SHARED_CREDENTIALS_FILE=$W/none
unset AWS_PROFILE
cat > "$W/garage.toml" <<CFG
metadata_dir = "$W/meta"
data_dir = "$W/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((S3_PORT + 1))"
rpc_public_addr = "127.0.0.1:$((S3_PORT + 1))"
rpc_secret = "$(python3 -c 'import secrets;print(secrets.token_hex(32))')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"
CFG
GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  GARAGE_DEFAULT_BUCKET=bench RUST_LOG=garage=warn \
  "$GARAGE" -c "$W/garage.toml" server --single-node --default-bucket > "$W/garage.log" 2>&1 &
EP=http://127.0.0.1:$S3_PORT
for _ in $(seq 100); do "$AWS" --endpoint-url "$EP" s3api head-bucket --bucket bench 2>/dev/null && break; sleep 0.3; done

# sshd and the LiME-format source (as in benches/tunnel.sh).
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
CFG
/usr/sbin/sshd -f "$W/sshd_config" -D -e 2> "$W/sshd.log" &
python3 benches/lime_source.py "$SRC_PORT" "$((SIZE - 32))" > "$W/source.log" &
sleep 0.5

# (a) reference: aws s3 cp of a file of the same size (the source's bytes).
python3 - "$W/ref.lime" "$((SIZE - 32))" <<'PY'
import struct, sys
path, size = sys.argv[1], int(sys.argv[2])
block = bytes(range(256)) * 4096
with open(path, "wb") as f:
    f.write(struct.pack("<IIQQQ", 0x4C694D45, 1, 0x100000, 0x100000 + size - 1, 0))
    left = size
    while left:
        n = min(left, len(block)); f.write(block[:n]); left -= n
PY
cat "$W/ref.lime" > /dev/null  # into the page cache
t0=$(date +%s.%N)
"$AWS" --endpoint-url "$EP" s3 cp --only-show-errors "$W/ref.lime" s3://bench/ref.lime
t1=$(date +%s.%N)
rm -f "$W/ref.lime"
aws_rate=$(python3 -c "print($SIZE/1048576/($t1-$t0))")

# (a2) reference for the whole path: what a responder would otherwise run,
# `ssh -L` to the source and its stream piped into `aws s3 cp -`.
FWD_PORT=$(free_port)
ssh -N -i "$W/client_key" -o UserKnownHostsFile="$W/known_hosts" -o StrictHostKeyChecking=yes \
    -o BatchMode=yes -o ExitOnForwardFailure=yes \
    -L "127.0.0.1:$FWD_PORT:127.0.0.1:$SRC_PORT" -p "$SSHD_PORT" root@127.0.0.1 &
FWD=$!
for _ in $(seq 50); do python3 -c "import socket;socket.create_connection(('127.0.0.1',$FWD_PORT)).close()" 2>/dev/null && break; sleep 0.1; done
t0=$(date +%s.%N)
python3 benches/read_socket.py 127.0.0.1 "$FWD_PORT" /dev/stdout 2>/dev/null \
  | "$AWS" --endpoint-url "$EP" s3 cp --only-show-errors --expected-size "$SIZE" - s3://bench/stream.lime
t1=$(date +%s.%N)
kill $FWD; wait $FWD 2>/dev/null || true
pipe_rate=$(python3 -c "print($SIZE/1048576/($t1-$t0))")

# (c) mshot's capture path alone (local file, no bucket): its base RSS.
/usr/bin/time -f '%M' -o "$W/rss_base" "$MSHOT" bench-receive --server 127.0.0.1 --port "$SSHD_PORT" --user root \
    --key "$W/client_key" --known-hosts "$W/known_hosts" --source-port "$SRC_PORT" \
    --output-dir "$W" --filename local.lime > "$W/local.out" 2> "$W/local.err" \
  || { cat "$W/local.err"; exit 1; }
base_mb=$(( $(cat "$W/rss_base") / 1024 ))
local_rate=$(sed -n 's/.*mib_per_s=\([0-9.]*\).*/\1/p' "$W/local.out")

# (d) the same file (local.lime, with the manifest local.json the receive
# path wrote) uploaded by `aws s3 cp` and by `mshot upload`, alternately.
cat "$W/local.lime" > /dev/null  # into the page cache
up_ratios=() aws_up=() mshot_up=()
for i in $(seq "$REPEAT"); do
  t0=$(date +%s.%N)
  "$AWS" --endpoint-url "$EP" s3 cp --only-show-errors "$W/local.lime" "s3://bench/awsfile$i.lime"
  t1=$(date +%s.%N)
  a=$(python3 -c "print($SIZE/1048576/($t1-$t0))")
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$W/rss_up" "$MSHOT" upload "$W/local.lime" --bucket bench --endpoint-url "$EP" \
      --prefix "up$i" --s3-concurrency "$CONCURRENCY" --s3-part-size "$PART_MIB" > "$W/up.out" 2> "$W/up.err" \
    || { cat "$W/up.err"; exit 1; }
  t1=$(date +%s.%N)
  m=$(python3 -c "print($SIZE/1048576/($t1-$t0))")
  aws_up+=("$a"); mshot_up+=("$m"); up_ratios+=("$(python3 -c "print($m/$a)")")
done
up_rss_mb=$(( $(cat "$W/rss_up") / 1024 ))
rm -f "$W/local.lime"

# (b) mshot: capture receive path straight into the bucket, no local image.
/usr/bin/time -f '%M' -o "$W/rss" "$MSHOT" bench-receive --server 127.0.0.1 --port "$SSHD_PORT" --user root \
    --key "$W/client_key" --known-hosts "$W/known_hosts" --source-port "$SRC_PORT" \
    --bucket bench --endpoint-url "$EP" --filename mshot.lime --log-dir "$W" \
    --s3-concurrency "$CONCURRENCY" --s3-part-size "$PART_MIB" > "$W/mshot.out" 2> "$W/mshot.err" \
  || { cat "$W/mshot.err"; exit 1; }
mshot_rate=$(sed -n 's/.*mib_per_s=\([0-9.]*\).*/\1/p' "$W/mshot.out")
rss_mb=$(( $(cat "$W/rss") / 1024 ))
# The stated bound: the capture path's own RSS, part size x (concurrency + 1),
# and the AWS client's fixed 16 MiB (HTTP/TLS stack, credentials; 14-16 MiB
# measured with --s3-concurrency 1).
bound_mb=$(( base_mb + PART_MIB * (CONCURRENCY + 1) + 16 ))
# The object is what was sent: its size, read back.
obj=$("$AWS" --endpoint-url "$EP" s3api head-object --bucket bench --key 127.0.0.1/mshot.lime --query ContentLength --output text)
[ "$obj" = "$SIZE" ] || { echo "object is $obj bytes, expected $SIZE" >&2; exit 1; }

echo "MiB/s: aws_file = aws s3 cp of a file; ssh+aws = ssh -L piped into aws s3 cp -;"
echo "       local = mshot to a local file (the tunnel alone); mshot = mshot into the bucket"
printf '%-6s %-6s %-4s %9s %8s %8s %8s %8s %8s %9s %8s %8s\n' size parts conc aws_file ssh+aws local mshot vs_file vs_pipe base_MiB RSS_MiB bound
printf '%-6s %-6s %-4s %9.1f %8.1f %8.1f %8.1f %8.2f %8.2f %9s %8s %8s\n' "${SIZE_GIB}GiB" "${PART_MIB}MiB" "$CONCURRENCY" \
  "$aws_rate" "$pipe_rate" "$local_rate" "$mshot_rate" "$(python3 -c "print($mshot_rate/$aws_rate)")" \
  "$(python3 -c "print($mshot_rate/$pipe_rate)")" "$base_mb" "$rss_mb" "$bound_mb"
range() { python3 -c "import sys;v=[float(x) for x in sys.argv[1:]];print(f'{min(v):.2f}-{max(v):.2f}')" "$@"; }
echo
echo "Upload of the same ${SIZE_GIB} GiB file, $REPEAT runs alternating (MiB/s; ratio = mshot upload / aws s3 cp):"
printf '%-6s %-6s %-4s %-17s %-17s %-11s %8s\n' size parts conc aws_s3_cp_file mshot_upload ratio RSS_MiB
printf '%-6s %-6s %-4s %-17s %-17s %-11s %8s\n' "${SIZE_GIB}GiB" "${PART_MIB}MiB" "$CONCURRENCY" \
  "$(range "${aws_up[@]}")" "$(range "${mshot_up[@]}")" "$(range "${up_ratios[@]}")" "$up_rss_mb"
