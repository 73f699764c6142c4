#!/usr/bin/env bash
# Benchmark the dynamodb_streams source: a DynamoDB table's stream (moto from scripts/services.sh)
# → spillway → local folder (gzip). Fills a new table with --items items of about --item-bytes
# bytes (boto3 from the test venv, BatchWriteItem; each put is one INSERT stream record), then
# starts the release binary reading the stream from TRIM_HORIZON and times the drain until every
# record is delivered. Prints records/s, MiB/s (of the JSON records spillway writes), spillway's
# CPU-s/GiB (its /metrics) and moto's CPU-s/GiB over the same window (from /proc), since the
# endpoint's own cost is part of what a reader pays.
#
#   scripts/bench_dynamodb_streams.sh --items 20000
#   scripts/bench_dynamodb_streams.sh --items 20000 --unmarshal
#
# Needs: scripts/services.sh up (moto), the release binary ($CARGO_TARGET_DIR/release/spillway).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

items=20000 item_bytes=200 unmarshal=false port=4598 binary="${CARGO_TARGET_DIR:-target}/release/spillway"
while (($#)); do
	case "$1" in
	--items) items=$2; shift 2 ;;
	--item-bytes) item_bytes=$2; shift 2 ;;
	--unmarshal) unmarshal=true; shift ;;
	--port) port=$2; shift 2 ;;
	--binary) binary=$2; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done

eval "$(scripts/services.sh env)"
binary="$(realpath "$binary")"
[[ -x "$binary" ]] || { echo "build it first: cargo build --release" >&2; exit 1; }
moto_pid="$(cat "${SPILLWAY_CACHE_DIR:-$HOME/.cache/spillway}/run/moto.pid")"
work="$(mktemp -d)"
delete_table() {
	"$SPILLWAY_TEST_PYTHON" -c 'import sys, boto3; boto3.client("dynamodb", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").delete_table(TableName=sys.argv[2])' \
		"$SPILLWAY_TEST_DYNAMODB_ENDPOINT" "$table" 2>/dev/null || true
}
trap 'kill "$spillway_pid" 2>/dev/null || true; delete_table; rm -rf "$work"' EXIT
spillway_pid=
table="bench-ddb-$$-$(date +%s)"

echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "filling $table: $items items of ~$item_bytes B (NEW_AND_OLD_IMAGES), unmarshal: $unmarshal"
"$SPILLWAY_TEST_PYTHON" - "$SPILLWAY_TEST_DYNAMODB_ENDPOINT" "$table" "$items" "$item_bytes" <<'EOF'
import sys, time, boto3
endpoint, table, items, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
d = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
d.create_table(TableName=table, AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
               KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST",
               StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
started = time.time()
pad = "x" * max(0, size - 60)
for first in range(0, items, 25):
    writes = [{"PutRequest": {"Item": {"id": {"S": f"item-{n}"}, "n": {"N": str(n)}, "price": {"N": "12.5"},
                                       "tags": {"SS": ["a", "b"]}, "pad": {"S": pad}}}}
              for n in range(first, min(first + 25, items))]
    out = d.batch_write_item(RequestItems={table: writes})
    assert not out.get("UnprocessedItems"), out
print(f"filled in {time.time() - started:.1f} s")
EOF

cat >"$work/spillway.yaml" <<EOF
server: { listen: 127.0.0.1:$port }
data_dir: ./data
streams:
  - name: bench
    source: { type: dynamodb_streams, table_name: $table, endpoint: '$SPILLWAY_TEST_DYNAMODB_ENDPOINT', region: us-east-1, starting_position: TRIM_HORIZON, unmarshal: $unmarshal }
    processing: { record_delimiter: newline }
    buffering: { size_mib: 5, interval_seconds: 1 }
    sink: { type: s3, url: 'file://./out', compression: gzip }
EOF

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
metric() { # NAME_PREFIX: the first sample starting with it, or nothing
	curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null | awk -v name="$1" 'index($0, name) == 1 { print $NF; exit }' || true
}
ticks_per_second="$(getconf CLK_TCK)"
moto_before="$(cpu_ticks "$moto_pid")"
started="$(date +%s.%N)"
(cd "$work" && AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x SPILLWAY_LOG=warn exec "$binary" run --config spillway.yaml >/dev/null 2>"$work/spillway.log") &
spillway_pid=$!
delivered=0
while ((delivered < items)); do
	sleep 0.2
	delivered="$(metric 'spillway_delivered_records_total{stream="bench"')"
	delivered="${delivered%%.*}"
	delivered="${delivered:-0}"
	kill -0 "$spillway_pid" 2>/dev/null || { cat "$work/spillway.log" >&2; exit 1; }
done
ended="$(date +%s.%N)"
moto_after="$(cpu_ticks "$moto_pid")"
spillway_cpu="$(metric 'process_cpu_seconds_total')"
bytes="$(metric 'spillway_incoming_bytes_total{stream="bench"')"
peak_rss="$(metric 'process_peak_rss_bytes')"
kill -TERM "$spillway_pid"
wait "$spillway_pid" || true
spillway_pid=
awk -v records="$items" -v bytes="$bytes" -v start="$started" -v end="$ended" -v cpu="$spillway_cpu" \
	-v moto_before="$moto_before" -v moto_after="$moto_after" -v tck="$ticks_per_second" -v rss="$peak_rss" 'BEGIN {
	seconds = end - start; gib = bytes / 1073741824; moto = (moto_after - moto_before) / tck
	printf "%d records (%.1f MiB of JSON) drained in %.2f s = %.0f records/s, %.2f MiB/s\n", records, bytes / 1048576, seconds, records / seconds, bytes / 1048576 / seconds
	printf "spillway CPU %.2f s = %.1f CPU-s/GiB, peak RSS %.0f MiB; moto CPU %.2f s = %.1f CPU-s/GiB (its share of the window: %.0f%%)\n", cpu, cpu / gib, rss / 1048576, moto, moto / gib, 100 * moto / seconds
}'
