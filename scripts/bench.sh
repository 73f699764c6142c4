#!/usr/bin/env bash
# Benchmark spillway end to end: build the release binary, start it with a generated config,
# drive it with `spillway bench` (4 keep-alive clients, ~1 MiB PutRecordBatch calls of ~350-byte
# JSON access-log lines), print accepted/drained throughput, server CPU-s/GiB and peak RSS.
# Before sending (server idle) the generator measures the codec alone on exactly the bytes it will
# send -- gzip -6 and zstd -3, one thread in 1 MiB writes and one line per write, two threads in
# 1 MiB writes -- and prints spillway's figures also as ratios to the codec's, so figures compare
# across machines. The CPU model, core count and load average are printed first.
#
#   scripts/bench.sh                                   # local sink, gzip, 256 MiB
#   scripts/bench.sh --sink minio                      # MinIO from scripts/services.sh (must be up)
#   scripts/bench.sh --total-mib 5120 --size-mib 64    # 5 GiB through 64 MiB buffers
#   scripts/bench.sh --fsync interval                  # WAL fsync policy
#   scripts/bench.sh --compression zstd
#   scripts/bench.sh --recovery-mib 1024               # SIGKILL with 1 GiB undelivered, time the restart
#   scripts/bench.sh --lines-per-record 1              # one record per ~350-byte line: per-record cost
#   scripts/bench.sh --partitions 100                  # dynamic partitioning on a "service" field of 100
#                                                      # values (one line per record: a key needs one JSON object)
#   scripts/bench.sh --codec-only                      # only the codec figures, no server
#   scripts/bench.sh --lambda 3                        # through an identity Lambda transform served locally
#                                                      # (scripts/lambda_identity.py), invocations of 3 MiB; prints
#                                                      # the function's own CPU too
# Other options: --codec-mib N (codec input, default min(256, total)), --no-codec (skip the codec),
# --port N, --drain-timeout SECONDS (default 600). The binary is $CARGO_TARGET_DIR/release/spillway (default target/),
# built first; SPILLWAY_BIN=path runs that binary instead (e.g. two builds alternated by hand).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sink=local total_mib=256 size_mib=5 fsync=always compression=gzip recovery_mib=0 port=4599
lines_per_record= partitions=0 codec_mib=256 codec=yes codec_only=no drain_timeout=600 lambda_mib=
while (($#)); do
	case "$1" in
	--lambda) lambda_mib=$2; shift 2 ;;
	--lines-per-record) lines_per_record=$2; shift 2 ;;
	--partitions) partitions=$2; shift 2 ;;
	--codec-mib) codec_mib=$2; shift 2 ;;
	--no-codec) codec=no; shift ;;
	--codec-only) codec_only=yes; shift ;;
	--port) port=$2; shift 2 ;;
	--drain-timeout) drain_timeout=$2; shift 2 ;;
	--sink) sink=$2; shift 2 ;;
	--total-mib) total_mib=$2; shift 2 ;;
	--size-mib) size_mib=$2; shift 2 ;;
	--fsync) fsync=$2; shift 2 ;;
	--compression) compression=$2; shift 2 ;;
	--recovery-mib) recovery_mib=$2; shift 2 ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
done

if ((partitions > 0)); then
	# The partition key is a jq query on the record, so a record must be one JSON object.
	if [[ -n "$lines_per_record" && "$lines_per_record" != 1 ]]; then
		echo "--partitions needs one JSON object per record: use --lines-per-record 1 (the default with --partitions)" >&2
		exit 2
	fi
	lines_per_record=1
fi
lines_per_record=${lines_per_record:-6}
case "$compression" in
gzip | zstd) codec_args=(--codec-baseline "$compression") ;;
*) codec_args=() ;;
esac
[[ $codec == no ]] && codec_args=()
gen_args=(--lines-per-record "$lines_per_record" --partitions "$partitions" --codec-mib "$codec_mib")

if [[ -n "${SPILLWAY_BIN:-}" ]]; then
	bin=$SPILLWAY_BIN
else
	cargo build --release --quiet --bin spillway
	bin=${CARGO_TARGET_DIR:-target}/release/spillway
fi
machine() {
	echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
}
if [[ $codec_only == yes ]]; then
	machine
	"$bin" bench --codec-only --total-mib "$total_mib" "${gen_args[@]}"
	exit 0
fi
work=$(mktemp -d /tmp/spillway-bench.XXXXXX)
server_pid=
cleanup() {
	if [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; then
		# Bounded: SIGKILL if it has not stopped within 30 s.
		for _ in $(seq 1 300); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	if [[ -n "$function_pid" ]]; then kill "$function_pid" 2>/dev/null || true; wait "$function_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

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

processing_yaml= prefix_yaml= function_pid=
if [[ -n "$lambda_mib" ]]; then
	((partitions == 0)) || { echo "--lambda and --partitions do not combine here" >&2; exit 2; }
	function_port=$((port + 1))
	python3 scripts/lambda_identity.py "$function_port" >"$work/function.log" 2>&1 &
	function_pid=$!
	for _ in $(seq 1 100); do grep -q listening "$work/function.log" && break; sleep 0.1; done
	processing_yaml="    processing: { transforms: [ { type: lambda, url: 'http://127.0.0.1:$function_port/', buffer_size_mib: $lambda_mib, buffer_interval_seconds: 1 } ] }"
fi
if ((partitions > 0)); then
	processing_yaml="    processing: { dynamic_partitioning: { keys: { service: .service } } }"
	prefix_yaml="      prefix: 'logs/service=!{partitionKeyFromQuery:service}/'
      error_output_prefix: 'errors/!{firehose:error-output-type}/'"
fi
max_wal=$((size_mib * 4 > 4096 ? size_mib * 4 : 4096))
{
	cat <<YAML
server: { listen: 127.0.0.1:$port }
data_dir: $work/data
wal: { fsync: $fsync }
limits: { max_wal_mib: $max_wal }
streams:
  - name: bench
YAML
	[[ -n "$processing_yaml" ]] && echo "$processing_yaml"
	cat <<YAML
    buffering: { size_mib: $size_mib, interval_seconds: 1 }
    sink:
      type: s3
$sink_yaml
YAML
	[[ -n "$prefix_yaml" ]] && echo "$prefix_yaml"
	echo "      compression: $compression"
} >"$work/bench.yaml"
if ! "$bin" validate --config "$work/bench.yaml" >"$work/validate.log" 2>&1; then
	echo "spillway validate rejects the generated configuration:" >&2
	sed 's/^/  /' "$work/validate.log" >&2
	if ((partitions > 0)); then
		echo "(--partitions needs processing.dynamic_partitioning and partition-key prefixes; is that on this branch?)" >&2
	fi
	exit 1
fi

start_server() {
	"$bin" run --config "$work/bench.yaml" >"$work/stdout.log" 2>"$work/server.log" &
	server_pid=$!
	for _ in $(seq 1 100); do
		curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
		sleep 0.1
	done
	echo "spillway did not start:" >&2; cat "$work/server.log" >&2; exit 1
}

echo "== sink=$sink total=${total_mib}MiB buffer=${size_mib}MiB fsync=$fsync compression=$compression lines/record=$lines_per_record partitions=$partitions lambda=${lambda_mib:-none}"
machine
if ((recovery_mib > 0)); then
	# Fill the WAL while the sink is unreachable (deliveries fail and are retried, nothing is
	# trimmed), SIGKILL, then restart with the real sink and time it until the backlog is delivered.
	cp "$work/bench.yaml" "$work/deliver.yaml"
	sed -i -e "s/max_wal_mib: $max_wal/max_wal_mib: $((recovery_mib * 2))/" \
		-e 's|^      url: .*|      url: s3://unreachable\n      endpoint: http://127.0.0.1:9\n      access_key_id: x\n      secret_access_key: y|' \
		-e '/^      endpoint: http:\/\/127.0.0.1:18/d;/^      region: /d' "$work/bench.yaml"
	start_server
	"$bin" bench --endpoint "http://127.0.0.1:$port" --stream bench --total-mib "$recovery_mib" "${gen_args[@]}" --drain-timeout-seconds 1 >/dev/null 2>&1 || true
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
	# utime + stime of the restarted server (fields 14 and 15) when the backlog is delivered.
	cpu=$(awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / tck }' "/proc/$server_pid/stat")
	grep -E "wal opened|records left in the wal" "$work/server.log" | sed 's/^/  /'
	awk -v a="$started" -v b="$ready" -v c="$done_at" 'BEGIN { printf "restart to serving: %.2f s; restart to backlog delivered: %.2f s\n", b - a, c - a }'
	awk -v cpu="$cpu" -v mib="$recovery_mib" 'BEGIN { printf "server CPU until the backlog is delivered: %.2f s (%.1f CPU-s/GiB of the %d MiB put)\n", cpu, cpu * 1024 / mib, mib }'
	exit 0
fi

start_server
if ! "$bin" bench --endpoint "http://127.0.0.1:$port" --stream bench --total-mib "$total_mib" "${gen_args[@]}" \
	"${codec_args[@]}" --drain-timeout-seconds "$drain_timeout"; then
	echo "the load run failed; last lines of the server log:" >&2
	tail -n 20 "$work/server.log" >&2
	exit 1
fi
if ((partitions > 0)) && [[ $sink == local ]]; then
	made=$(find "$work/out/logs" -mindepth 1 -maxdepth 1 -type d -name 'service=*' 2>/dev/null | wc -l)
	echo "partitions: $made of $partitions service=* prefixes written"
	if [[ -d "$work/out/errors" ]] && [[ -n "$(find "$work/out/errors" -type f | head -1)" ]]; then
		echo "records went to the error output:" >&2
		find "$work/out/errors" -type f | head -5 >&2
		exit 1
	fi
fi
if [[ -n "$function_pid" ]]; then
	# utime + stime of the function process (fields 14 and 15), in seconds.
	awk -v tck="$(getconf CLK_TCK)" '{ printf "identity function CPU: %.2f s\n", ($14 + $15) / tck }' "/proc/$function_pid/stat"
fi
