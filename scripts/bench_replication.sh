#!/usr/bin/env bash
# The replicated WAL against the local WAL, side by side in one run: one node in cluster mode
# (the services' PostgreSQL as coordinator), `wal.fsync: always`, Direct PUT driven by
# `spillway bench` (~1 MiB PutRecordBatch calls, keep-alive clients), into a local folder.
#   local       — puts acknowledged after the local fsync (no `wal.replication`)
#   replicated  — acknowledged once the segment is in MinIO and indexed in PostgreSQL
# For each mode and client count: accepted / drained MiB/s, server CPU-s/GiB, the put
# acknowledgement latency p50 / p99 from the server's `spillway_put_latency_seconds` histogram
# (bucket upper bounds: a factor-2 resolution), and for `replicated` the segment objects written
# per GiB (spillway_wal_replication_segments_total).
#
#   scripts/bench_replication.sh                         # 4 and 32 clients, 256 MiB each
#   scripts/bench_replication.sh --clients "4 32" --total-mib 512 --max-delay-ms 50
#   scripts/bench_replication.sh --uploads 8 --max-segment-mib 16   # more, larger segments in flight
#   scripts/bench_replication.sh --store folder   # segments in a local folder (file://): spillway's own cost, no MinIO
#
# Needs `scripts/services.sh up`. SPILLWAY_BIN (default target/release/spillway, built first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

clients_list="4 32" total_mib=256 max_delay_ms=50 port=4611 uploads=4 max_segment_mib=8 store=minio
while (($#)); do
	case "$1" in
	--clients) clients_list=$2; shift 2 ;;
	--total-mib) total_mib=$2; shift 2 ;;
	--max-delay-ms) max_delay_ms=$2; shift 2 ;;
	--uploads) uploads=$2; shift 2 ;;
	--store) store=$2; shift 2 ;;
	--max-segment-mib) max_segment_mib=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done

eval "$(scripts/services.sh env)"
bin=${SPILLWAY_BIN:-}
if [[ -z "$bin" ]]; then
	cargo build --release --quiet
	bin=${CARGO_TARGET_DIR:-target}/release/spillway
fi
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); binary $bin"

# p-quantile of a Prometheus histogram (bucket upper bound where the cumulative count reaches it).
quantile() { # metrics-file q [histogram]
	awk -v q="$2" -v name="${3:-spillway_put_latency_seconds}" -F'[ ]' 'index($0, name "_bucket{") == 1 && (/stream="bench"/ || !/stream=/) {
		match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); les[n] = le; counts[n++] = $NF }
		END { total = counts[n - 1]; for (i = 0; i < n; i++) if (counts[i] >= q * total) { print les[i]; exit } }' "$1"
}

# utime + stime of a process, in clock ticks (0 when it is not found).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

run() { # mode clients
	local mode=$1 clients=$2 db="bench_repl_$$_${1}_$2" dir="$work/$1-$2"
	mkdir -p "$dir"
	psql -q "$SPILLWAY_TEST_PG_URL" -c "CREATE DATABASE $db" >/dev/null
	local replication=""
	if [[ $mode == replicated && $store == folder ]]; then
		replication="  replication:
    url: file://$dir/segments
    max_delay_ms: $max_delay_ms
    uploads_in_flight: $uploads
    max_segment_mib: $max_segment_mib"
	elif [[ $mode == replicated ]]; then
		replication="  replication:
    url: s3://$SPILLWAY_TEST_S3_BUCKET/bench-$$-$clients
    endpoint: $SPILLWAY_TEST_S3_ENDPOINT
    region: $SPILLWAY_TEST_S3_REGION
    access_key_id: $SPILLWAY_TEST_S3_ACCESS_KEY
    secret_access_key: $SPILLWAY_TEST_S3_SECRET_KEY
    max_delay_ms: $max_delay_ms
    uploads_in_flight: $uploads
    max_segment_mib: $max_segment_mib"
	fi
	cat >"$dir/spillway.yaml" <<-YAML
	server: { listen: 127.0.0.1:$port }
	data_dir: $dir/data
	cluster: { coordinator: '${SPILLWAY_TEST_PG_URL%/*}/$db', lease_seconds: 10 }
	limits: { max_inflight_request_mib: 256 }
	wal:
	  fsync: always
	$replication
	streams:
	  - name: bench
	    buffering: { size_mib: 64, interval_seconds: 1 }
	    sink: { type: s3, url: 'file://$dir/out', compression: gzip }
	YAML
	"$bin" run --config "$dir/spillway.yaml" >"$dir/stdout" 2>"$dir/log" &
	server=$!
	for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/ready" && break; sleep 0.2; done
	local minio_pid minio_before minio_after
	minio_pid=$(pgrep -f "minio server --address ${SPILLWAY_TEST_S3_ENDPOINT#http://}" | head -1)
	minio_before=$(cpu_ticks "$minio_pid")
	"$bin" bench --endpoint "http://127.0.0.1:$port" --stream bench --total-mib "$total_mib" --clients "$clients" >"$dir/bench" 2>&1
	minio_after=$(cpu_ticks "$minio_pid")
	curl -sf "http://127.0.0.1:$port/metrics" >"$dir/metrics"
	kill "$server"; wait "$server" || true
	psql -q "$SPILLWAY_TEST_PG_URL" -c "DROP DATABASE $db" >/dev/null
	local accepted drained cpu p50 p99 segments
	accepted=$(awk '/^accepted:/ {print $4}' "$dir/bench")
	drained=$(awk '/^drained:/ {print $4}' "$dir/bench")
	cpu=$(sed -n 's/.*(\([0-9.]*\) CPU-s\/GiB).*/\1/p' "$dir/bench")
	p50=$(quantile "$dir/metrics" 0.5)
	p99=$(quantile "$dir/metrics" 0.99)
	local store_p50="-" store_p99="-"
	if [[ $mode == replicated ]]; then
		store_p50=$(quantile "$dir/metrics" 0.5 spillway_wal_replication_seconds)
		store_p99=$(quantile "$dir/metrics" 0.99 spillway_wal_replication_seconds)
	fi
	segments=$(awk '/^spillway_wal_replication_segments_total / {print $2}' "$dir/metrics")
	local per_gib
	per_gib=$(awk -v s="${segments:-0}" -v m="$total_mib" 'BEGIN { printf "%.0f", s * 1024 / m }')
	local minio_cpu
	minio_cpu=$(awk -v t=$((minio_after - minio_before)) -v hz="$(getconf CLK_TCK)" -v m="$total_mib" 'BEGIN { printf "%.1f", t / hz * 1024 / m }')
	printf '%-10s clients %-3s accepted %7s MiB/s  drained %7s MiB/s  CPU %6s CPU-s/GiB (MinIO %s)  ack p50 <= %-8s p99 <= %-8s segments/GiB %s  store+index p50 <= %s p99 <= %s\n' \
		"$mode" "$clients" "$accepted" "$drained" "$cpu" "$minio_cpu" "${p50}s" "${p99}s" "$per_gib" "${store_p50}s" "${store_p99}s"
}

for clients in $clients_list; do
	run local "$clients"
	run replicated "$clients"
done
