#!/usr/bin/env bash
# Windowed SQL over an access log, side by side with DuckDB on the same file, one run: per-minute
# (event time) count, average and maximum per HTTP status.
#
# - spillway (release build): a `file` stream tails the log from its start and archives it to a
#   local folder (uncompressed); a second stream reads it (`source: { type: stream }`) and runs
#   the windowed query (tumbling 60 s on `.ts`, 30 s lateness), delivering the rows to a local
#   folder. Timed from start until /metrics counts every window row and every archived line
#   delivered (a last line an hour later closes the last minute; both streams flush after 1 s,
#   which the time includes). Its CPU seconds are the whole process's: tailing, two WALs, the
#   archive and the windows.
# - DuckDB: `SELECT time_bucket(...), status, count(*), avg(..), max(..) FROM read_json(...)
#   GROUP BY ALL` over the file, 1 and 2 threads (wall, CPU, peak RSS from /usr/bin/time).
#
#   scripts/bench-sql-windows.sh            # 256 MiB of ~330-byte lines
#   scripts/bench-sql-windows.sh --mib 64
#
# Needs the test venv (DuckDB): `scripts/services.sh install` makes it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mib=256
port=4597
while (($#)); do
	case "$1" in
	--mib) mib="$2"; shift 2 ;;
	--port) port="$2"; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
python="${SPILLWAY_TEST_PYTHON:-${SPILLWAY_CACHE_DIR:-$HOME/.cache/spillway}/venv/bin/python}"
[[ -x "$python" ]] || { echo "no test venv at $python: run scripts/services.sh install" >&2; exit 1; }
bin="${CARGO_TARGET_DIR:-target}/release/spillway"
[[ -x "$bin" ]] || { echo "build it first: cargo build --release --bin spillway" >&2; exit 2; }
work="$(mktemp -d)"
pid=""
cleanup() {
	if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

input="$work/access.json"
"$python" - "$input" "$mib" <<'PY'
import json, random, sys, datetime
path, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
paths = ["/api/v1/orders", "/api/v1/users/profile", "/static/app.js", "/health", "/api/v2/search", "/login"]
base = datetime.datetime(2026, 11, 25, 17, 0, 0, tzinfo=datetime.timezone.utc).timestamp()
limit, written, seq = mib << 20, 0, 0
with open(path, "w") as out:
    while written < limit:
        # ~1,000 lines per event-second, up to 5 s out of order.
        ts = base + seq / 1000.0 - rng.uniform(0, 5)
        stamp = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        line = json.dumps({"ts": stamp, "seq": seq, "client": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "method": "GET", "path": f"{rng.choice(paths)}?id={rng.randrange(100000)}",
            "status": rng.choice([200, 200, 200, 201, 304, 404, 500]), "bytes": rng.randrange(100, 90000),
            "duration_ms": round(rng.uniform(0.1, 900.0), 3), "request_id": f"{rng.getrandbits(64):016x}"},
            separators=(",", ":")) + "\n"
        out.write(line); written += len(line); seq += 1
    # An hour later: closes every minute before it (its own stays open).
    last = datetime.datetime.fromtimestamp(base + seq / 1000.0 + 3600, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    out.write(json.dumps({"ts": last, "seq": seq, "status": 0, "bytes": 0, "duration_ms": 0.0}, separators=(",", ":")) + "\n")
PY
size_mib=$(awk -v b="$(stat -c %s "$input")" 'BEGIN { printf "%.1f", b / 1048576 }')
lines=$(wc -l <"$input")

cat >"$work/duck.py" <<'PY'
import sys, duckdb
path, threads = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
rows = con.execute(f"""
  SELECT time_bucket(INTERVAL 60 SECOND, ts) AS minute, status, count(*) AS n, avg(duration_ms) AS avg_ms, max(bytes) AS max_bytes
  FROM read_json('{path}', columns = {{'ts': 'TIMESTAMPTZ', 'status': 'INTEGER', 'bytes': 'BIGINT', 'duration_ms': 'DOUBLE'}})
  WHERE status > 0
  GROUP BY ALL""").fetchall()
print(len(rows))
PY

echo "input: $size_mib MiB, $lines lines (~1,000 per event-second, up to 5 s out of order)"
printf '%-22s %8s %10s %8s %12s %10s %8s\n' run wall_s MiB/s cpu_s CPU-s/GiB peak_MiB rows
for threads in 1 2; do
	read -r wall user sys rss rows < <(
		/usr/bin/time -f "%e %U %S %M" -o "$work/time" "$python" "$work/duck.py" "$input" "$threads" >"$work/rows"
		echo "$(cat "$work/time") $(cat "$work/rows")"
	)
	cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')
	printf '%-22s %8.2f %10.1f %8.2f %12.2f %10.0f %8s\n' "duckdb ${threads} thread(s)" "$wall" \
		"$(awk -v m="$size_mib" -v w="$wall" 'BEGIN { print m / w }')" "$cpu" \
		"$(awk -v c="$cpu" -v m="$size_mib" 'BEGIN { print c / (m / 1024) }')" "$((rss / 1024))" "$rows"
	expected_rows=$rows
done

cat >"$work/spillway.yaml" <<YAML
server: { listen: 127.0.0.1:$port }
data_dir: $work/data
streams:
  - name: access-logs
    source: { type: file, paths: ['$input'], read_from: beginning }
    buffering: { size_mib: 64, interval_seconds: 1 }
    sink: { type: s3, url: 'file://$work/out', prefix: 'archive/', compression: none }
  - name: per-minute
    source: { type: stream, stream: access-logs }
    processing:
      transforms:
        - type: sql
          query: SELECT status, count(*) AS n, avg(duration_ms) AS avg_ms, max(bytes) AS max_bytes FROM records WHERE status > 0 GROUP BY status
          schema:
            columns:
              - { name: ts, type: string }
              - { name: status, type: int }
              - { name: bytes, type: bigint }
              - { name: duration_ms, type: double }
          window: { type: tumbling, size_seconds: 60, time: { field: .ts }, allowed_lateness_seconds: 30 }
    buffering: { size_mib: 1, interval_seconds: 1 }
    sink: { type: s3, url: 'file://$work/out', prefix: 'windows/' }
YAML
# Before the listener is up, curl fails: an empty answer, not the end of the script.
scrape() { curl -s "http://127.0.0.1:$port/metrics" || true; }
metric() { scrape | awk -v name="$1" '$1 == name { print $2 }'; }
# The sum of a metric's series whose name and labels start with $1 (delivered counts carry the sink).
delivered() { scrape | awk -v prefix="$1" 'index($1, prefix) == 1 { sum += $2 } END { print sum + 0 }'; }
start=$(date +%s.%N)
"$bin" run --config "$work/spillway.yaml" >"$work/log" 2>&1 &
pid=$!
rows=0
for _ in $(seq 1 3600); do
	rows=$(delivered 'spillway_delivered_records_total{stream="per-minute"')
	archived=$(delivered 'spillway_delivered_records_total{stream="access-logs"')
	[[ "${rows%.*}" -ge "$expected_rows" && "${archived%.*}" -ge "$lines" ]] && break
	sleep 0.1
done
end=$(date +%s.%N)
read -r user sys < <(awk '{ print $14 / 100, $15 / 100 }' "/proc/$pid/stat")
peak=$(metric process_peak_rss_bytes)
kill "$pid"; wait "$pid" || true; pid=""
wall=$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')
cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')
printf '%-22s %8.2f %10.1f %8.2f %12.2f %10.0f %8s\n' "spillway (whole path)" "$wall" \
	"$(awk -v m="$size_mib" -v w="$wall" 'BEGIN { print m / w }')" "$cpu" \
	"$(awk -v c="$cpu" -v m="$size_mib" 'BEGIN { print c / (m / 1024) }')" \
	"$(awk -v p="${peak:-0}" 'BEGIN { print p / 1048576 }')" "${rows%.*}"
