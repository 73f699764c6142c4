#!/usr/bin/env bash
# Tail a log file into the local sink, side by side with the codec alone on the same file, one
# run: spillway's `file` source reads a generated access log (~350-byte JSON lines, one record
# per line) from its start into gzip objects in a local folder; the figure is the time from start
# until every line is delivered, the CPU seconds and peak RSS of the whole process (GNU time).
# `gzip -6` of the same file is timed first: the practical limit of an archive of that file.
#
#   scripts/bench-tail.sh                # 256 MiB
#   scripts/bench-tail.sh --mib 1024
#
# Fluent Bit's `tail` → S3 on the same kind of file and machine drained about 15.6 MiB/s at 63
# CPU-s/GiB (issue 10); the target is ≥ 5× its rate at ≤ ⅓ of its CPU per GiB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mib=256 port=4597
while (($#)); do
	case "$1" in
	--mib) mib="$2"; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }

cargo build --release --quiet --bin spillway
bin=${CARGO_TARGET_DIR:-target}/release/spillway
work=$(mktemp -d /tmp/spillway-bench-tail.XXXXXX)
server_pid=
cleanup() {
	[[ -n "$server_pid" ]] && kill -9 "$server_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

python3 - "$work/access.log" "$mib" <<'PY'
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
bytes=$(stat -c %s "$work/access.log")
lines=$(wc -l <"$work/access.log")
file_mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "== file source → local sink, gzip: ${file_mib} MiB, $lines lines (one record each)"
echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# The codec alone on the same file (cached in memory by the generator).
/usr/bin/time -f '%e %U %S %M' -o "$work/gzip.time" gzip -6 -c "$work/access.log" >/dev/null
read -r g_wall g_user g_sys _ <"$work/gzip.time"
awk -v m="$file_mib" -v w="$g_wall" -v u="$g_user" -v s="$g_sys" \
	'BEGIN { printf "gzip -6 alone:   %6.1f MiB/s  %5.1f CPU-s/GiB\n", m / w, (u + s) * 1024 / m }'

cat >"$work/tail.yaml" <<YAML
server: { listen: 127.0.0.1:$port }
data_dir: $work/data
limits: { max_wal_mib: 4096 }
streams:
  - name: tail
    source: { type: file, paths: ['$work/access.log'], read_from: beginning }
    processing: { record_delimiter: newline }
    buffering: { size_mib: 5, interval_seconds: 1 }
    sink: { type: s3, url: 'file://$work/out', compression: gzip }
YAML
"$bin" validate --config "$work/tail.yaml" >/dev/null

started=$(date +%s.%N)
/usr/bin/time -f '%e %U %S %M' -o "$work/spillway.time" "$bin" run --config "$work/tail.yaml" >"$work/stdout.log" 2>"$work/server.log" &
server_pid=$!
delivered=0
for _ in $(seq 1 6000); do
	delivered=$(curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null | awk '/^spillway_delivered_records_total\{/ { sum += $2 } END { printf "%d", sum }') || true
	[[ "${delivered:-0}" -ge "$lines" ]] && break
	sleep 0.1
done
drained=$(date +%s.%N)
pkill -TERM -P "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
server_pid=
if [[ "${delivered:-0}" -lt "$lines" ]]; then
	echo "only $delivered of $lines lines delivered in 10 minutes" >&2
	tail -n 20 "$work/server.log" >&2
	exit 1
fi
read -r _ s_user s_sys s_rss <"$work/spillway.time"
awk -v m="$file_mib" -v a="$started" -v b="$drained" -v u="$s_user" -v s="$s_sys" -v r="$s_rss" -v gw="$g_wall" -v gu="$g_user" -v gs="$g_sys" \
	'BEGIN { rate = m / (b - a); cpu = (u + s) * 1024 / m; grate = m / gw; gcpu = (gu + gs) * 1024 / m;
	         printf "spillway tail:   %6.1f MiB/s  %5.1f CPU-s/GiB  peak RSS %d MiB  (%.2f× gzip alone'"'"'s rate, %.2f× its CPU/GiB)\n", rate, cpu, r / 1024, rate / grate, cpu / gcpu;
	         printf "vs Fluent Bit tail → S3 (15.6 MiB/s, 63 CPU-s/GiB): %.1f× the rate, %.2f× the CPU per GiB\n", rate / 15.6, cpu / 63 }'
