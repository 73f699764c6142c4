#!/usr/bin/env bash
# JSON → Parquet conversion, side by side on the same file and schema, one run: spillway's Parquet
# encoder (sinks/s3, the conversion alone: `examples/parquet_convert.rs`), pyarrow
# (`pyarrow.json.read_json` + `pyarrow.parquet.write_table`) and DuckDB (`COPY (SELECT * FROM
# read_json(…)) TO … (FORMAT parquet)`), snappy, with 1 and 2 threads. Prints wall seconds, MiB of
# JSON per second, CPU seconds, MiB per CPU-second (the figure that survives a loaded machine),
# peak RSS and the rows each output holds (read back by DuckDB).
#
#   scripts/bench-parquet.sh                 # 256 MiB of ~350-byte access-log lines
#   scripts/bench-parquet.sh --mib 64
#   scripts/bench-parquet.sh --keep /tmp/x   # keep the input and outputs in /tmp/x
#
# Needs the test venv (pyarrow, DuckDB): `scripts/services.sh install` makes it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mib=256
keep=""
while (($#)); do
	case "$1" in
	--mib) mib="$2"; shift 2 ;;
	--keep) keep="$2"; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done

python="${SPILLWAY_TEST_PYTHON:-${SPILLWAY_CACHE_DIR:-$HOME/.cache/spillway}/venv/bin/python}"
[[ -x "$python" ]] || { echo "no test venv at $python: run scripts/services.sh install" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p spillway-sink-s3 --example parquet_convert
convert="$target/release/examples/parquet_convert"

if [[ -n "$keep" ]]; then
	work="$keep"; mkdir -p "$work"
else
	work="$(mktemp -d)"
	trap 'rm -rf "$work"' EXIT
fi
input="$work/access.json"
[[ -s "$input" && -n "$keep" ]] || "$python" - "$input" "$mib" <<'PY'
import json, random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
paths = ["/api/v1/orders", "/api/v1/users/profile", "/static/app.js", "/health", "/api/v2/search", "/login"]
agents = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
          "curl/8.5.0", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"]
limit, written, seq = mib << 20, 0, 0
with open(path, "w") as out:
    while written < limit:
        line = json.dumps({"ts": f"2026-11-25T17:{rng.randrange(60):02}:{rng.randrange(60):02}.{rng.randrange(1000):03}Z",
            "seq": seq, "client": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}", "method": "GET",
            "path": f"{rng.choice(paths)}?id={rng.randrange(100000)}", "status": rng.choice([200, 200, 200, 201, 304, 404, 500]),
            "bytes": rng.randrange(100, 90000), "duration_ms": round(rng.uniform(0.1, 900.0), 3),
            "user_agent": rng.choice(agents), "request_id": f"{rng.getrandbits(64):016x}"}, separators=(",", ":")) + "\n"
        out.write(line); written += len(line); seq += 1
PY
size_mib=$(awk -v b="$(stat -c %s "$input")" 'BEGIN { printf "%.1f", b / 1048576 }')
lines=$(wc -l <"$input")

columns="ts:timestamp,seq:bigint,client:string,method:string,path:string,status:int,bytes:bigint,duration_ms:double,user_agent:string,request_id:string"

cat >"$work/convert_pyarrow.py" <<'PY'
import sys, pyarrow as pa, pyarrow.json as pj, pyarrow.parquet as pq
path, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
pa.set_cpu_count(threads); pa.set_io_thread_count(threads)
schema = pa.schema([("ts", pa.timestamp("us", tz="UTC")), ("seq", pa.int64()), ("client", pa.string()), ("method", pa.string()),
    ("path", pa.string()), ("status", pa.int32()), ("bytes", pa.int64()), ("duration_ms", pa.float64()),
    ("user_agent", pa.string()), ("request_id", pa.string())])
table = pj.read_json(path, read_options=pj.ReadOptions(use_threads=threads > 1), parse_options=pj.ParseOptions(explicit_schema=schema))
pq.write_table(table, out, compression="snappy")
PY
cat >"$work/convert_duckdb.py" <<'PY'
import sys, duckdb
path, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute(f"SET threads={threads}")
con.execute(f"""COPY (SELECT * FROM read_json('{path}', format='newline_delimited', columns={{
  ts: 'TIMESTAMPTZ', seq: 'BIGINT', client: 'VARCHAR', method: 'VARCHAR', path: 'VARCHAR', status: 'INTEGER',
  bytes: 'BIGINT', duration_ms: 'DOUBLE', user_agent: 'VARCHAR', request_id: 'VARCHAR'}})) TO '{out}' (FORMAT parquet, COMPRESSION snappy)""")
PY

run() { # name threads command... (OUT in the command is replaced by the output path)
	local name="$1" threads="$2"; shift 2
	local out="$work/$name-$threads.parquet" args=()
	for arg in "$@"; do args+=("${arg/#OUT/$out}"); done
	/usr/bin/time -f "%e %U %S %M" -o "$work/time" "${args[@]}" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; return 1; }
	read -r wall user sys rss <"$work/time"
	local rows
	rows=$("$python" -c "import duckdb,sys; print(duckdb.connect().execute('SELECT count(*) FROM read_parquet(?)', [sys.argv[1]]).fetchone()[0])" "$out")
	awk -v n="$name" -v t="$threads" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v m="$size_mib" -v rows="$rows" -v o="$(stat -c %s "$out")" \
		'BEGIN { printf "%-10s %7s %8.2f %9.1f %8.2f %11.1f %10.0f %9.1f %10d\n", n, t, w, m / w, u + s, m / (u + s), r / 1024, o / 1048576, rows }'
}

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "input: $size_mib MiB, $lines JSON lines; snappy; $(basename "$convert") built from $(git rev-parse --short HEAD)"
printf "%-10s %7s %8s %9s %8s %11s %10s %9s %10s\n" tool threads wall_s MiB/s cpu_s MiB/cpu_s peak_MiB out_MiB rows
run spillway 1 "$convert" "$input" OUT "$columns" snappy 32 1
run spillway 2 "$convert" "$input" OUT "$columns" snappy 32 2
run pyarrow 1 "$python" "$work/convert_pyarrow.py" "$input" OUT 1
run pyarrow 2 "$python" "$work/convert_pyarrow.py" "$input" OUT 2
run duckdb 1 "$python" "$work/convert_duckdb.py" "$input" OUT 1
run duckdb 2 "$python" "$work/convert_duckdb.py" "$input" OUT 2
