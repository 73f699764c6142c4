#!/usr/bin/env bash
# Benchmark spillway end to end: build the release binary, start it with a generated config,
# drive it with `spillway bench` (4 keep-alive clients, ~1 MiB PutRecordBatch calls of ~350-byte
# JSON access-log lines), print accepted/drained throughput, server CPU-s/GiB and peak RSS.
#
#   scripts/bench.sh                                   # local sink, gzip, 256 MiB
#   scripts/bench.sh --sink minio                      # MinIO from scripts/services.sh (must be up)
#   scripts/bench.sh --total-mib 5120 --size-mib 64    # 5 GiB through 64 MiB buffers
#   scripts/bench.sh --fsync interval                  # WAL fsync policy
#   scripts/bench.sh --compression zstd
#   scripts/bench.sh --recovery-mib 1024               # SIGKILL with 1 GiB undelivered, time the restart
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sink=local total_mib=256 size_mib=5 fsync=always compression=gzip recovery_mib=0 port=4599
while (($#)); do
	case "$1" in
	--sink) sink=$2; shift 2 ;;
	--total-mib) total_mib=$2; shift 2 ;;
	--size-mib) size_mib=$2; shift 2 ;;
	--fsync) fsync=$2; shift 2 ;;
	--compression) compression=$2; shift 2 ;;
	--recovery-mib) recovery_mib=$2; shift 2 ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
done

cargo build --release --quiet --bin spillway
bin=target/release/spillway
work=$(mktemp -d /tmp/spillway-bench.XXXXXX)
server_pid=
cleanup() {
	[[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

case "$sink" in
local)
	sink_yaml="      url: file://$work/out" ;;
minio)
	eval "$(scripts/services.sh env)"
	bucket="bench-$(date +%s)"
	"$SPILLWAY_TEST_PYTHON" -c "import boto3,os; boto3.client('s3', endpoint_url=os.environ['SPILLWAY_TEST_S3_ENDPOINT'], aws_access_key_id=os.environ['SPILLWAY_TEST_S3_ACCESS_KEY'], aws_secret_access_key=os.environ['SPILLWAY_TEST_S3_SECRET_KEY'], region_name=os.environ['SPILLWAY_TEST_S3_REGION']).create_bucket(Bucket='$bucket')"
	sink_yaml="      url: s3://$bucket
      endpoint: $SPILLWAY_TEST_S3_ENDPOINT
      region: $SPILLWAY_TEST_S3_REGION
      access_key_id: $SPILLWAY_TEST_S3_ACCESS_KEY
      secret_access_key: $SPILLWAY_TEST_S3_SECRET_KEY" ;;
*) echo "--sink is local or minio" >&2; exit 2 ;;
esac

max_wal=$((size_mib * 4 > 4096 ? size_mib * 4 : 4096))
cat >"$work/bench.yaml" <<YAML
server: { listen: 127.0.0.1:$port }
data_dir: $work/data
wal: { fsync: $fsync }
limits: { max_wal_mib: $max_wal }
streams:
  - name: bench
    buffering: { size_mib: $size_mib, interval_seconds: 1 }
    sink:
      type: s3
$sink_yaml
      compression: $compression
YAML

start_server() {
	"$bin" run --config "$work/bench.yaml" >"$work/stdout.log" 2>"$work/server.log" &
	server_pid=$!
	for _ in $(seq 1 100); do
		curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
		sleep 0.1
	done
	echo "spillway did not start:" >&2; cat "$work/server.log" >&2; exit 1
}

echo "== sink=$sink total=${total_mib}MiB buffer=${size_mib}MiB fsync=$fsync compression=$compression ($(nproc) cores)"
if ((recovery_mib > 0)); then
	# Fill the WAL while the sink is unreachable (deliveries fail and are retried, nothing is
	# trimmed), SIGKILL, then restart with the real sink and time it until the backlog is delivered.
	cp "$work/bench.yaml" "$work/deliver.yaml"
	sed -i -e "s/max_wal_mib: $max_wal/max_wal_mib: $((recovery_mib * 2))/" \
		-e 's|^      url: .*|      url: s3://unreachable\n      endpoint: http://127.0.0.1:9\n      access_key_id: x\n      secret_access_key: y|' \
		-e '/^      endpoint: http:\/\/127.0.0.1:18/d;/^      region: /d' "$work/bench.yaml"
	start_server
	"$bin" bench --endpoint "http://127.0.0.1:$port" --stream bench --total-mib "$recovery_mib" --drain-timeout-seconds 1 >/dev/null 2>&1 || true
	kill -9 "$server_pid"; wait "$server_pid" 2>/dev/null || true
	echo "wal before restart: $(du -sh "$work/data/streams/bench/wal" | cut -f1)"
	cp "$work/deliver.yaml" "$work/bench.yaml"
	sed -i "s/max_wal_mib: $max_wal/max_wal_mib: $((recovery_mib * 2))/" "$work/bench.yaml"
	started=$(date +%s.%N)
	start_server
	ready=$(date +%s.%N)
	for _ in $(seq 1 6000); do
		grep -q "records left in the wal by the last run are delivered" "$work/server.log" && break
		sleep 0.1
	done
	done_at=$(date +%s.%N)
	grep -E "wal opened|records left in the wal" "$work/server.log" | sed 's/^/  /'
	awk -v a="$started" -v b="$ready" -v c="$done_at" 'BEGIN { printf "restart to serving: %.2f s; restart to backlog delivered: %.2f s\n", b - a, c - a }'
	exit 0
fi

start_server
"$bin" bench --endpoint "http://127.0.0.1:$port" --stream bench --total-mib "$total_mib"
