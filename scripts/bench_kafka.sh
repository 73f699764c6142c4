#!/usr/bin/env bash
# Benchmark the kafka source: a preloaded Kafka topic (the broker of scripts/services.sh) →
# spillway → local folder (gzip), against Kafka's own console consumer reading the same topic to
# /dev/null in the same run. Fills a new topic of --partitions partitions with --mib MiB of 1 KiB
# JSON records (kafka-python from the test venv), then times:
#   1. spillway (release binary) reading it from `earliest` until every record is delivered
#      (in the WAL, gzip-compressed, in objects on disk);
#   2. kafka-console-consumer (org.apache.kafka.tools.consumer.ConsoleConsumer, the broker's own
#      jars) printing every record to /dev/null, JVM start included.
# Prints MiB/s, CPU-s/GiB and peak RSS of each, and spillway ÷ console consumer.
#
#   scripts/bench_kafka.sh                     # 256 MiB, 6 partitions
#   scripts/bench_kafka.sh --mib 512 --partitions 12
#   scripts/bench_kafka.sh --topic bench-kafka-…   # again on a topic an earlier run filled
#
# Needs: scripts/services.sh up (kafka), the release binary ($CARGO_TARGET_DIR/release/spillway).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mib=256 partitions=6 port=4598 topic= binary="${CARGO_TARGET_DIR:-target}/release/spillway"
while (($#)); do
	case "$1" in
	--mib) mib=$2; shift 2 ;;
	--partitions) partitions=$2; shift 2 ;;
	--topic) topic=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	--binary) binary=$2; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done

eval "$(scripts/services.sh env)"
binary="$(realpath "$binary")"
[[ -x "$binary" ]] || { echo "build it first: cargo build --release" >&2; exit 1; }
tool=tests/services/kafka/kafka_tool.py
work="$(mktemp -d)"
spillway_pid=
trap 'if [[ -n "$spillway_pid" ]]; then kill "$spillway_pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ -z "$topic" ]]; then
	topic="bench-kafka-$$-$(date +%s)"
	echo "filling $topic: $partitions partition(s), $mib MiB of 1 KiB JSON records"
	fill_started="$(date +%s.%N)"
	"$SPILLWAY_TEST_PYTHON" "$tool" create "$SPILLWAY_TEST_KAFKA_BOOTSTRAP" "$topic" "$partitions"
	records="$("$SPILLWAY_TEST_PYTHON" "$tool" fill "$SPILLWAY_TEST_KAFKA_BOOTSTRAP" "$topic" "$partitions" "$mib")"
	echo "filled $records records in $(awk -v a="$fill_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
else
	# `fill` writes MIB × 1024 records.
	records=$((mib * 1024))
	echo "reading $topic again: $records records"
fi

# 1. spillway
cat >"$work/spillway.yaml" <<EOF
server: { listen: 127.0.0.1:$port }
data_dir: ./data
streams:
  - name: bench
    source: { type: kafka, bootstrap_servers: '$SPILLWAY_TEST_KAFKA_BOOTSTRAP', topics: [$topic], start: earliest }
    processing: { record_delimiter: newline }
    buffering: { size_mib: 64, interval_seconds: 1 }
    sink: { type: s3, url: 'file://./out', compression: gzip }
EOF
metric() { # NAME_PREFIX: the first sample starting with it, or nothing
	curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null | awk -v name="$1" 'index($0, name) == 1 { print $NF; exit }' || true
}
started="$(date +%s.%N)"
(cd "$work" && SPILLWAY_LOG=warn exec "$binary" run --config spillway.yaml >/dev/null 2>"$work/spillway.log") &
spillway_pid=$!
delivered=0
read_at=
while ((delivered < records)); do
	sleep 0.2
	kill -0 "$spillway_pid" 2>/dev/null || { cat "$work/spillway.log" >&2; exit 1; }
	if [[ -z "$read_at" ]]; then
		incoming="$(metric 'spillway_incoming_records_total{stream="bench"')"
		incoming="${incoming%%.*}"
		((${incoming:-0} >= records)) && read_at="$(date +%s.%N)"
	fi
	delivered="$(metric 'spillway_delivered_records_total{stream="bench"')"
	delivered="${delivered%%.*}"
	delivered="${delivered:-0}"
done
ended="$(date +%s.%N)"
read_at="${read_at:-$ended}"
spillway_cpu="$(metric 'process_cpu_seconds_total')"
bytes="$(metric 'spillway_incoming_bytes_total{stream="bench"')"
peak_rss="$(metric 'process_peak_rss_bytes')"
kill -TERM "$spillway_pid"
wait "$spillway_pid" || true
spillway_pid=
objects="$(find "$work/out" -type f | wc -l)"
compressed="$(du -sb "$work/out" | cut -f1)"

# 2. Kafka's console consumer, the same topic, to /dev/null
/usr/bin/time -f '%e %U %S %M' -o "$work/console.time" \
	java -Xmx512m -cp "$SPILLWAY_TEST_KAFKA_CLASSPATH" org.apache.kafka.tools.consumer.ConsoleConsumer \
	--bootstrap-server "$SPILLWAY_TEST_KAFKA_BOOTSTRAP" --topic "$topic" --from-beginning \
	--max-messages "$records" --timeout-ms 60000 >/dev/null 2>"$work/console.log" || {
	cat "$work/console.log" >&2
	exit 1
}
read -r c_seconds c_user c_sys c_rss_kib <"$work/console.time"

awk -v records="$records" -v bytes="$bytes" -v start="$started" -v read_at="$read_at" -v end="$ended" -v cpu="$spillway_cpu" \
	-v rss="$peak_rss" -v objects="$objects" -v compressed="$compressed" -v cs="$c_seconds" -v cu="$c_user" -v csy="$c_sys" \
	-v crss="$c_rss_kib" 'BEGIN {
	mib = bytes / 1048576; gib = bytes / 1073741824
	seconds = end - start; reading = read_at - start
	printf "spillway: %d records (%.1f MiB) read in %.2f s (%.1f MiB/s), delivered as %d gzip objects (%.1f MiB) in %.2f s = %.1f MiB/s; CPU %.1f s = %.1f CPU-s/GiB; peak RSS %.0f MiB\n", records, mib, reading, mib / reading, objects, compressed / 1048576, seconds, mib / seconds, cpu, cpu / gib, rss / 1048576
	printf "kafka-console-consumer → /dev/null: %.2f s = %.1f MiB/s; CPU %.1f s = %.1f CPU-s/GiB; peak RSS %.0f MiB\n", cs, mib / cs, cu + csy, (cu + csy) / gib, crss / 1024
	printf "spillway (read, compressed, delivered) ÷ console consumer: %.2f×\n", (mib / seconds) / (mib / cs)
}'
