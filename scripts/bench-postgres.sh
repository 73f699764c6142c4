#!/usr/bin/env bash
# PostgreSQL sink benchmark: ~1 KiB JSON records mapped to 8 columns, loaded by spillway
# (Direct PUT → WAL → COPY text FROM STDIN, one transaction per batch with its batch id) and, in
# the same run, by `psql \copy` of the same data as CSV (the practical limit). Also times psql
# \copy of the same rows in COPY text and binary format (why the sink encodes text).
#
#   scripts/services.sh up && eval "$(scripts/services.sh env)"
#   cargo build --release --bin spillway
#   scripts/bench-postgres.sh [RECORDS]        # default 100000 (~90 MiB of JSON)
#   PSQL_ONLY=1 scripts/bench-postgres.sh      # only the psql rows (text vs CSV vs binary)
#   SIZE_MIB=4 scripts/bench-postgres.sh       # spillway's buffering.size_mib (default 16)
#   KEEP_WORK=1 scripts/bench-postgres.sh      # keep spillway's log (with SPILLWAY_LOG=info,spillway::pipeline=debug
#                                              #   it has each batch's COPY time)
#
# "loaded" is timed from the first put until spillway_batches counts every row, watched on one
# psql connection (\watch 0.02), so the wait costs neither side a process per poll.
#
# Needs SPILLWAY_TEST_PG_URL (the shared test server); uses its own uniquely named tables and
# drops them at the end.
set -euo pipefail

records="${1:-100000}"
url="${SPILLWAY_TEST_PG_URL:?run: eval \"\$(scripts/services.sh env)\"}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/spillway}"
psql_only="${PSQL_ONLY:-0}"   # PSQL_ONLY=1: only the psql \copy rows (no spillway build needed)
[[ "$psql_only" == 1 || -x "$bin" ]] || { echo "build first: cargo build --release --bin spillway" >&2; exit 1; }
work="$(mktemp -d /tmp/spillway-bench-pg.XXXXXX)"
suffix="$$"
spillway_pid=""
cleanup() {
	local status=$?
	[[ -n "$spillway_pid" ]] && kill "$spillway_pid" 2>/dev/null || true
	if [[ "$status" != 0 ]]; then
		echo "failed; spillway's log and data kept in $work" >&2
		return
	fi
	psql -q "$url" -c "DROP TABLE IF EXISTS bench_csv_$suffix, bench_text_$suffix, bench_binary_$suffix, bench_spillway_$suffix" >/dev/null 2>&1 || true
	if [[ "${KEEP_WORK:-0}" == 1 ]]; then
		rm -f "$work"/records.* "$work"/part.*
		echo "spillway's log and data kept in $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT

now() { date +%s.%N; }
rate() { # seconds bytes records → "X MiB/s (Y rows/s, Z s)"
	python3 -c "import sys; s,b,r=map(float,sys.argv[1:]); print(f'{b/s/1048576:.1f} MiB/s ({r/s:,.0f} rows/s, {s:.2f} s)')" "$@"
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(psql -tA "$url" -c 'show server_version')"
python3 - "$records" "$work" <<'EOF'
import csv, json, random, sys
count, work = int(sys.argv[1]), sys.argv[2]
random.seed(11)
words = "spillway delivers buffered batches of records from streams into tables with exactly once loads".split()
with open(f"{work}/records.ndjson", "w") as ndjson, open(f"{work}/records.csv", "w", newline="") as out:
    writer = csv.writer(out)
    for n in range(count):
        record = {
            "id": n,
            "at": f"2026-11-25T{n % 24:02d}:{n % 60:02d}:{(n * 7) % 60:02d}.{n % 1000:03d}Z",
            "service": f"svc-{n % 17}",
            "level": random.choice(["info", "warn", "error", "debug"]),
            "status": random.choice([200, 201, 204, 301, 404, 500]),
            "latency_ms": round(random.random() * 1000, 3),
            "attrs": {"region": f"eu-{n % 3}", "host": f"h{n % 97}", "retry": n % 5 == 0},
            "message": " ".join(random.choice(words) for _ in range(120))[:760],
        }
        ndjson.write(json.dumps(record, separators=(",", ":")) + "\n")
        writer.writerow([record["id"], record["at"], record["service"], record["level"], record["status"],
                         record["latency_ms"], json.dumps(record["attrs"], separators=(",", ":")), record["message"]])
EOF
json_bytes=$(stat -c %s "$work/records.ndjson")
csv_bytes=$(stat -c %s "$work/records.csv")
echo "data: $records records, JSON $(python3 -c "print(f'{$json_bytes/1048576:.1f}')") MiB ($((json_bytes / records)) B/record), CSV $(python3 -c "print(f'{$csv_bytes/1048576:.1f}')") MiB"

columns="id bigint, at timestamptz, service text, level text, status integer, latency_ms numeric, attrs jsonb, message text"
for table in csv text binary spillway; do
	psql -q "$url" -c "CREATE TABLE bench_${table}_$suffix ($columns)"
done

start=$(now)
psql -q "$url" -c "\\copy bench_csv_$suffix FROM '$work/records.csv' CSV"
csv_seconds=$(python3 -c "print($(now) - $start)")
psql -q "$url" -c "\\copy bench_csv_$suffix TO '$work/records.txt'"
psql -q "$url" -c "\\copy bench_csv_$suffix TO '$work/records.bin' (FORMAT binary)"
start=$(now)
psql -q "$url" -c "\\copy bench_text_$suffix FROM '$work/records.txt'"
text_seconds=$(python3 -c "print($(now) - $start)")
start=$(now)
psql -q "$url" -c "\\copy bench_binary_$suffix FROM '$work/records.bin' (FORMAT binary)"
binary_seconds=$(python3 -c "print($(now) - $start)")

if [[ "$psql_only" == 1 ]]; then
	echo
	echo "| load | rate (file MiB/s) |"
	echo "|---|---|"
	echo "| psql \\copy CSV | $(rate "$csv_seconds" "$csv_bytes" "$records") |"
	echo "| psql \\copy text format | $(rate "$text_seconds" "$(stat -c %s "$work/records.txt")" "$records") |"
	echo "| psql \\copy binary format | $(rate "$binary_seconds" "$(stat -c %s "$work/records.bin")" "$records") |"
	exit 0
fi
cat >"$work/spillway.yaml" <<EOF
server: { listen: 127.0.0.1:0 }
data_dir: $work/data
streams:
  - name: bench
    buffering: { size_mib: ${SIZE_MIB:-16}, interval_seconds: 1 }
    sink:
      type: postgres
      url: $url
      table: bench_spillway_$suffix
      s3_backup: { url: 'file://$work/errors' }
EOF
"$bin" run --config "$work/spillway.yaml" >"$work/stdout" 2>"$work/spillway.log" &
spillway_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/stdout" 2>/dev/null && break; sleep 0.1; done
endpoint="$(sed -n 's/^spillway listening on //p' "$work/stdout")"
[[ -n "$endpoint" ]] || { cat "$work/spillway.log" >&2; exit 1; }
split -n l/4 "$work/records.ndjson" "$work/part."
start=$(now)
for part in "$work"/part.*; do
	"$bin" put --stream bench --endpoint "$endpoint" --max-attempts 10000 "$part" >/dev/null &
done
wait $(jobs -p | grep -v "^$spillway_pid$") 2>/dev/null || true
accepted_seconds=$(python3 -c "print($(now) - $start)")
# Wait for the last row on one psql connection re-running the count every 20 ms (`\watch`):
# spawning a psql (and a server backend) per poll would take CPU from spillway and PostgreSQL.
mkfifo "$work/loaded"
timeout 600 psql -X -tA "$url" >"$work/loaded" 2>/dev/null <<EOF &
SELECT coalesce(sum(row_count), 0) FROM spillway_batches WHERE target = 'bench_spillway_$suffix'
\watch 0.02
EOF
watch_pid=$!
loaded=0
while read -r line; do
	[[ "$line" =~ ^[0-9]+$ ]] && loaded=$line
	(( loaded >= records )) && break
done <"$work/loaded"
kill "$watch_pid" 2>/dev/null || true
if (( loaded < records )); then
	echo "only $loaded of $records rows loaded after 600 s; spillway's log:" >&2
	tail -n 30 "$work/spillway.log" >&2
	exit 1
fi
spillway_seconds=$(python3 -c "print($(now) - $start)")
errors=$(find "$work/errors" -type f 2>/dev/null | wc -l)
[[ "$errors" == 0 ]] || { echo "records reached the error output" >&2; exit 1; }

echo
echo "| load | rate (JSON MiB/s for spillway, file MiB/s for psql) |"
echo "|---|---|"
echo "| psql \\copy CSV | $(rate "$csv_seconds" "$csv_bytes" "$records") |"
echo "| psql \\copy text format | $(rate "$text_seconds" "$(stat -c %s "$work/records.txt")" "$records") |"
echo "| psql \\copy binary format | $(rate "$binary_seconds" "$(stat -c %s "$work/records.bin")" "$records") |"
echo "| spillway accepted (4 × spillway put) | $(rate "$accepted_seconds" "$json_bytes" "$records") |"
echo "| spillway loaded (Direct PUT → COPY) | $(rate "$spillway_seconds" "$json_bytes" "$records") |"
python3 -c "print(f'spillway rows/s ÷ psql \\\\copy CSV rows/s: {float($csv_seconds)/float($spillway_seconds):.2f}')"
