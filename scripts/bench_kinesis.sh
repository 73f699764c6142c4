#!/usr/bin/env bash
# Benchmark the kinesis source: Kinesis (kinesalite from scripts/services.sh) → spillway → local
# folder (gzip). Fills a new stream of --shards shards with --records JSON records of about
# --record-bytes bytes (boto3 from the test venv), then starts the release binary reading it
# from TRIM_HORIZON and times the drain until every record is delivered. Prints records/s,
# MiB/s, spillway's CPU-s/GiB (its /metrics) and kinesalite's CPU-s/GiB over the same window
# (from /proc), since the endpoint's own cost is part of what a reader pays.
#
# --modes single,cluster drains the same filled stream in both modes, --runs times each, in
# turn: `cluster` is one node with a `cluster:` block (a fresh database on the services'
# PostgreSQL each run, dropped at the end), so its shards are leased and each is a sub-stream.
#
#   scripts/bench_kinesis.sh --shards 1
#   scripts/bench_kinesis.sh --shards 4 --records 400000
#   scripts/bench_kinesis.sh --shards 4 --records 400000 --modes single,cluster --runs 3
#
# Needs: scripts/services.sh up (kinesalite), the release binary ($CARGO_TARGET_DIR/release/spillway).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

shards=1 records=200000 record_bytes=200 port=4597 binary="${CARGO_TARGET_DIR:-target}/release/spillway"
modes=single runs=1
while (($#)); do
	case "$1" in
	--modes) modes=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--shards) shards=$2; shift 2 ;;
	--records) records=$2; shift 2 ;;
	--record-bytes) record_bytes=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	--binary) binary=$2; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done

eval "$(scripts/services.sh env)"
binary="$(realpath "$binary")"
[[ -x "$binary" ]] || { echo "build it first: cargo build --release" >&2; exit 1; }
kinesalite_pid="$(cat "${SPILLWAY_CACHE_DIR:-$HOME/.cache/spillway}/run/kinesalite.pid")"
work="$(mktemp -d)"
delete_stream() {
	"$SPILLWAY_TEST_PYTHON" -c 'import sys, boto3; boto3.client("kinesis", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").delete_stream(StreamName=sys.argv[2])' \
		"$SPILLWAY_TEST_KINESIS_ENDPOINT" "$stream" 2>/dev/null || true
}
database="bench_cluster_$$"
drop_database() {
	if [[ ",$modes," == *",cluster,"* ]]; then
		psql "$SPILLWAY_TEST_PG_URL" -qc "DROP DATABASE IF EXISTS $database" >/dev/null 2>&1 || true
	fi
}
trap 'kill "$spillway_pid" 2>/dev/null || true; delete_stream; drop_database; rm -rf "$work"' EXIT
spillway_pid=
stream="bench-kinesis-$$-$(date +%s)"

echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "filling $stream: $shards shard(s), $records records of ~$record_bytes B"
"$SPILLWAY_TEST_PYTHON" - "$SPILLWAY_TEST_KINESIS_ENDPOINT" "$stream" "$shards" "$records" "$record_bytes" <<'EOF'
import sys, time, boto3
endpoint, stream, shards, records, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
k = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
k.create_stream(StreamName=stream, ShardCount=shards)
while k.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
    time.sleep(0.05)
started = time.time()
pad = "x" * max(0, size - 60)
for first in range(0, records, 500):
    batch = [{"PartitionKey": f"key-{n % 1024}", "Data": f'{{"n":{n},"key":"key-{n % 1024}","pad":"{pad}"}}'.encode()}
             for n in range(first, min(first + 500, records))]
    out = k.put_records(StreamName=stream, Records=batch)
    assert out["FailedRecordCount"] == 0
print(f"filled in {time.time() - started:.1f} s")
EOF

coordinator="${SPILLWAY_TEST_PG_URL%/*}/$database"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
metric() { # NAME_PREFIX: the sum of the samples starting with it, or nothing
	curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null | awk -v name="$1" 'index($0, name) == 1 { sum += $NF; found = 1 } END { if (found) print sum }' || true
}
ticks_per_second="$(getconf CLK_TCK)"

# Drain the whole stream once in MODE (single | cluster) from a fresh data_dir; print the figures.
drain() {
	local mode=$1 run_dir="$work/$1-$2" cluster_block=""
	mkdir -p "$run_dir"
	if [[ $mode == cluster ]]; then
		# A fresh database each run: the shards' state starts empty, as on a first start.
		psql "$SPILLWAY_TEST_PG_URL" -qc "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $database" -c "CREATE DATABASE $database" >/dev/null
		cluster_block="cluster: { coordinator: '$coordinator' }"
	fi
	cat >"$run_dir/spillway.yaml" <<EOF
server: { listen: 127.0.0.1:$port }
data_dir: ./data
$cluster_block
streams:
  - name: bench
    source: { type: kinesis, stream_name: $stream, endpoint: '$SPILLWAY_TEST_KINESIS_ENDPOINT', region: us-east-1, starting_position: TRIM_HORIZON, poll_interval_ms: 200 }
    processing: { record_delimiter: newline }
    buffering: { size_mib: 5, interval_seconds: 1 }
    sink: { type: s3, url: 'file://./out', compression: gzip }
EOF
	local kinesalite_before started delivered=0 ended kinesalite_after spillway_cpu bytes peak_rss objects
	kinesalite_before="$(cpu_ticks "$kinesalite_pid")"
	started="$(date +%s.%N)"
	(cd "$run_dir" && AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x SPILLWAY_LOG=warn exec "$binary" run --config spillway.yaml >/dev/null 2>"$run_dir/spillway.log") &
	spillway_pid=$!
	while ((delivered < records)); do
		sleep 0.2
		delivered="$(metric 'spillway_delivered_records_total{stream="bench"')"
		delivered="${delivered%%.*}"
		delivered="${delivered:-0}"
		kill -0 "$spillway_pid" 2>/dev/null || { cat "$run_dir/spillway.log" >&2; exit 1; }
	done
	ended="$(date +%s.%N)"
	kinesalite_after="$(cpu_ticks "$kinesalite_pid")"
	spillway_cpu="$(metric 'process_cpu_seconds_total')"
	bytes="$(metric 'spillway_incoming_bytes_total{stream="bench"')"
	peak_rss="$(metric 'process_peak_rss_bytes')"
	kill -TERM "$spillway_pid"
	wait "$spillway_pid" || true
	spillway_pid=
	objects="$(find "$run_dir/out" -type f -not -path '*/.spillway-staging/*' | wc -l)"
	awk -v mode="$mode" -v records="$records" -v bytes="$bytes" -v start="$started" -v end="$ended" -v cpu="$spillway_cpu" \
		-v kin_before="$kinesalite_before" -v kin_after="$kinesalite_after" -v tck="$ticks_per_second" -v rss="$peak_rss" \
		-v shards="$shards" -v objects="$objects" 'BEGIN {
		seconds = end - start; gib = bytes / 1073741824; kin = (kin_after - kin_before) / tck
		printf "%s, %d shard(s): %d records (%.1f MiB) drained in %.2f s = %.0f records/s, %.2f MiB/s, %d objects\n", mode, shards, records, bytes / 1048576, seconds, records / seconds, bytes / 1048576 / seconds, objects
		printf "  spillway CPU %.2f s = %.1f CPU-s/GiB, peak RSS %.0f MiB; kinesalite CPU %.2f s = %.1f CPU-s/GiB (its share of the window: %.0f%%)\n", cpu, cpu / gib, rss / 1048576, kin, kin / gib, 100 * kin / seconds
	}'
}

for ((run = 1; run <= runs; run++)); do
	for mode in ${modes//,/ }; do
		drain "$mode" "$run"
	done
done
