#!/usr/bin/env bash
# PostgreSQL sink benchmark: ~1 KiB JSON records mapped to 8 columns, loaded by spillway
# (Direct PUT → WAL → COPY FROM STDIN, one transaction per batch with its batch id) and, in
# the same run, by `psql \copy` of the same data as CSV (the practical limit). Also times psql
# \copy of the same rows in COPY text and binary format (the server's cost of each format).
#
#   scripts/services.sh up && eval "$(scripts/services.sh env)"
#   cargo build --release --bin spillway
#   scripts/bench-postgres.sh [RECORDS]        # default 100000 (~90 MiB of JSON): end to end, the
#                                              #   load timed from the first put (intake included)
#   scripts/bench-postgres.sh --drain-only [RECORDS]
#                                              # like for like with psql \copy reading a file: the
#                                              #   records are put while PostgreSQL is unreachable
#                                              #   (the sink's url points at a closed port), spillway
#                                              #   is SIGKILLed, then restarted with the real url and
#                                              #   timed from exec until every row is committed
#                                              #   (restarted once the backlog is older than the
#                                              #   1 s buffer interval, as after an outage)
#   PSQL_ONLY=1 scripts/bench-postgres.sh      # only the psql rows (text vs CSV vs binary)
#   SIZE_MIB=4 scripts/bench-postgres.sh       # spillway's buffering.size_mib (default 16)
#   COPY_FORMAT=text scripts/bench-postgres.sh # the sink's copy_format (default: not set, i.e. auto)
#   PERF_OUT=/tmp/x.data scripts/bench-postgres.sh --drain-only   # perf record -a -g of the drain
#   KEEP_WORK=1 scripts/bench-postgres.sh      # keep spillway's log (with SPILLWAY_LOG=info,spillway::pipeline=debug
#                                              #   it has each batch's COPY time)
#
# "loaded" is timed until spillway_batches counts every row, watched on one psql connection
# (\watch 0.02), so the wait costs neither side a process per poll. CPU seconds (robust on a
# shared machine, unlike wall time) are printed for each side: the client (psql, or spillway's
# process) and the PostgreSQL server (postmaster + backends, exited ones included; other users of
# the shared server are counted too, so run it while the server is otherwise idle).
#
# Needs SPILLWAY_TEST_PG_URL (the shared test server); uses its own uniquely named tables and
# drops them at the end.
set -euo pipefail

drain_only=0
if [[ "${1:-}" == --drain-only ]]; then
	drain_only=1
	shift
fi
records="${1:-100000}"
url="${SPILLWAY_TEST_PG_URL:?run: eval \"\$(scripts/services.sh env)\"}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/spillway}"
psql_only="${PSQL_ONLY:-0}"   # PSQL_ONLY=1: only the psql \copy rows (no spillway build needed)
[[ "$psql_only" == 1 || -x "$bin" ]] || { echo "build first: cargo build --release --bin spillway" >&2; exit 1; }
mkdir -p "${BENCH_TMP:-/tmp}"
work="$(mktemp -d "${BENCH_TMP:-/tmp}/spillway-bench-pg.XXXXXX")"
# Unique per run: a reused PID must not find an earlier run's rows in spillway_batches.
suffix="$$_$(date +%s)"
spillway_pid=""
cleanup() {
	local status=$?
	[[ -n "$spillway_pid" ]] && kill "$spillway_pid" 2>/dev/null || true
	if [[ "$status" != 0 ]]; then
		echo "failed; spillway's log and data kept in $work" >&2
		return
	fi
	psql -q "$url" -c "DROP TABLE IF EXISTS bench_csv_$suffix, bench_text_$suffix, bench_binary_$suffix, bench_spillway_$suffix" >/dev/null 2>&1 || true
	psql -q "$url" -c "DELETE FROM spillway_batches WHERE target = 'bench_spillway_$suffix'" >/dev/null 2>&1 || true
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

clk=$(getconf CLK_TCK)
proc_cpu() { # pid → utime + stime + children's, in seconds
	awk -v tck="$clk" '{ printf "%.2f", ($14 + $15 + $16 + $17) / tck }' "/proc/$1/stat"
}
pg_data="$(psql -tA "$url" -c 'show data_directory' 2>/dev/null || true)"
postmaster="$(pgrep -o -f -- "-D $pg_data( |$)" 2>/dev/null || true)"
pg_cpu() { # CPU seconds of the whole PostgreSQL server so far (postmaster, reaped and live children)
	[[ -n "$postmaster" ]] || { echo 0; return; }
	{
		proc_cpu "$postmaster"
		echo
		for child in $(ps -o pid= --ppid "$postmaster"); do { proc_cpu "$child" 2>/dev/null && echo; } || true; done
	} | awk '{ sum += $1 } END { printf "%.2f", sum }'
}
timed_psql() { # label file-for-cpu psql args… → runs psql, stores wall seconds in $label_seconds, client CPU in $label_cpu, server CPU in $label_pg
	local label=$1 start pg_before
	shift
	pg_before=$(pg_cpu)
	start=$(now)
	/usr/bin/time -f "%U %S" -o "$work/time.$label" psql -q "$url" "$@"
	printf -v "${label}_seconds" "%s" "$(python3 -c "print($(now) - $start)")"
	printf -v "${label}_cpu" "%s" "$(awk '{ printf "%.2f", $1 + $2 }' "$work/time.$label")"
	printf -v "${label}_pg" "%s" "$(python3 -c "print(f'{$(pg_cpu) - $pg_before:.2f}')")"
}

echo "machine: $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load average $(cut -d' ' -f1-3 /proc/loadavg), $(psql -tA "$url" -c 'show server_version')"
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

timed_psql csv -c "\\copy bench_csv_$suffix FROM '$work/records.csv' CSV"
psql -q "$url" -c "\\copy bench_csv_$suffix TO '$work/records.txt'"
psql -q "$url" -c "\\copy bench_csv_$suffix TO '$work/records.bin' (FORMAT binary)"
timed_psql text -c "\\copy bench_text_$suffix FROM '$work/records.txt'"
timed_psql binary -c "\\copy bench_binary_$suffix FROM '$work/records.bin' (FORMAT binary)"
cpus() { # client-cpu server-cpu → "CPU: client X s, PostgreSQL Y s"
	echo "CPU: client $1 s, PostgreSQL $2 s"
}

psql_rows() {
	echo "| psql \\copy CSV | $(rate "$csv_seconds" "$csv_bytes" "$records") | $(cpus "$csv_cpu" "$csv_pg") |"
	echo "| psql \\copy text format | $(rate "$text_seconds" "$(stat -c %s "$work/records.txt")" "$records") | $(cpus "$text_cpu" "$text_pg") |"
	echo "| psql \\copy binary format | $(rate "$binary_seconds" "$(stat -c %s "$work/records.bin")" "$records") | $(cpus "$binary_cpu" "$binary_pg") |"
}
if [[ "$psql_only" == 1 ]]; then
	echo
	echo "| load | rate (file MiB/s) | CPU seconds |"
	echo "|---|---|---|"
	psql_rows
	exit 0
fi
write_config() { # url → spillway.yaml
	cat >"$work/spillway.yaml" <<EOF
server: { listen: 127.0.0.1:0 }
data_dir: $work/data
streams:
  - name: bench
    buffering: { size_mib: ${SIZE_MIB:-16}, interval_seconds: 1 }
    sink:
      type: postgres
      url: $1
      table: bench_spillway_$suffix${COPY_FORMAT:+
      copy_format: $COPY_FORMAT}
      backup: { sink: { url: 'file://$work/errors' } }
EOF
}
start_spillway() {
	: >"$work/stdout"
	"$bin" run --config "$work/spillway.yaml" >"$work/stdout" 2>>"$work/spillway.log" &
	spillway_pid=$!
	for _ in $(seq 100); do grep -q "listening on" "$work/stdout" 2>/dev/null && break; sleep 0.05; done
	endpoint="$(sed -n 's/^spillway listening on //p' "$work/stdout")"
	[[ -n "$endpoint" ]] || { cat "$work/spillway.log" >&2; exit 1; }
}
put_all() {
	split -n l/4 "$work/records.ndjson" "$work/part."
	for part in "$work"/part.*; do
		"$bin" put --stream bench --endpoint "$endpoint" --max-attempts 10000 "$part" >/dev/null &
		put_pids+=("$!")
	done
	wait "${put_pids[@]}"
}
wait_loaded() {
	# Wait for the last row on one psql connection re-running the count every 20 ms (`\watch`):
	# spawning a psql (and a server backend) per poll would take CPU from spillway and PostgreSQL.
	rm -f "$work/loaded"
	mkfifo "$work/loaded"
	timeout 600 psql -X -tA "$url" >"$work/loaded" 2>/dev/null <<EOF &
SELECT coalesce(sum(row_count), 0) FROM spillway_batches WHERE target = 'bench_spillway_$suffix'
\watch 0.02
EOF
	local watch_pid=$! loaded=0 line
	while read -r line; do
		[[ "$line" =~ ^[0-9]+$ ]] && loaded=$line
		((loaded >= records)) && break
	done <"$work/loaded"
	kill "$watch_pid" 2>/dev/null || true
	if ((loaded < records)); then
		echo "only $loaded of $records rows loaded after 600 s; spillway's log:" >&2
		tail -n 30 "$work/spillway.log" >&2
		exit 1
	fi
}
spillway_results() { # after a load: CPU of each side, no error output, the COPY format; the psql rows
	spillway_pg=$(python3 -c "print(f'{$(pg_cpu) - $pg_before:.2f}')")
	spillway_cpu=$(proc_cpu "$spillway_pid")
	errors=$(find "$work/errors" -type f 2>/dev/null | wc -l)
	[[ "$errors" == 0 ]] || { echo "records reached the error output" >&2; exit 1; }
	format=$(sed -n 's/.*postgres table read.*format="\?\([a-z]*\).*/\1/p' "$work/spillway.log" | tail -1)
	echo
	echo "| load | rate (JSON MiB/s for spillway, file MiB/s for psql) | CPU seconds |"
	echo "|---|---|---|"
	psql_rows
}
put_pids=()

if [[ "$drain_only" == 1 ]]; then
	# The records wait in the WAL while the sink cannot reach PostgreSQL (port 9 is closed).
	write_config "postgres://spillway@127.0.0.1:9/none?connect_timeout=1"
	start_spillway
	put_all
	kill -9 "$spillway_pid"
	wait "$spillway_pid" 2>/dev/null || true
	# A backlog older than the buffer interval (1 s), as after an outage: otherwise the last partial
	# batch would wait out its interval after the restart, and the figure would time the buffering
	# policy rather than the load.
	sleep 1.2
	echo "wal before restart: $(du -sh "$work/data" | cut -f1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
	write_config "$url"
	pg_before=$(pg_cpu)
	start=$(now)
	start_spillway
	perf_pid=""
	if [[ -n "${PERF_OUT:-}" ]]; then
		# System wide, so PostgreSQL's backends are in the profile too (software clock: no PMU in VMs).
		perf record -q -e cpu-clock -F 999 -g -a -o "$PERF_OUT" 2>/dev/null &
		perf_pid=$!
	fi
	wait_loaded
	spillway_seconds=$(python3 -c "print($(now) - $start)")
	[[ -z "$perf_pid" ]] || { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
	spillway_results
	echo "| spillway drain (WAL → COPY ${format:-?}, from exec) | $(rate "$spillway_seconds" "$json_bytes" "$records") | $(cpus "$spillway_cpu" "$spillway_pg") |"
	python3 -c "print(f'spillway drain rows/s ÷ psql \\\\copy CSV rows/s: {float($csv_seconds)/float($spillway_seconds):.2f}; load average now $(cut -d' ' -f1-3 /proc/loadavg)')"
	exit 0
fi

write_config "$url"
start_spillway
pg_before=$(pg_cpu)
start=$(now)
put_all
accepted_seconds=$(python3 -c "print($(now) - $start)")
wait_loaded
spillway_seconds=$(python3 -c "print($(now) - $start)")
spillway_results
echo "| spillway accepted (4 × spillway put) | $(rate "$accepted_seconds" "$json_bytes" "$records") | |"
echo "| spillway loaded (Direct PUT → COPY ${format:-?}) | $(rate "$spillway_seconds" "$json_bytes" "$records") | $(cpus "$spillway_cpu" "$spillway_pg") (server process only, not the put clients) |"
python3 -c "print(f'spillway rows/s ÷ psql \\\\copy CSV rows/s: {float($csv_seconds)/float($spillway_seconds):.2f}; load average now $(cut -d' ' -f1-3 /proc/loadavg)')"
