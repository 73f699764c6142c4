#!/usr/bin/env bash
# HTTP endpoint sink throughput next to a plain client posting the same request bodies, in one run.
#
#   scripts/bench_http_endpoint.sh [--records N] [--buffer-mib M] [--clients C] [--gzip] [--drain]
#       [--order reference-first|spillway-first] [--bin PATH]
#
# Both deliver the same ~1 KiB JSON log records to one receiver (scripts/bench_http_endpoint/,
# Go's standard library: reads each body, counts its records, answers the contract's 200 at once):
# - reference: the Go client of the same folder POSTs pre-built Firehose request bodies
#   (`{"requestId","timestamp","records":[{"data":<base64>}]}`, records grouped as spillway
#   groups them: up to --buffer-mib of record bytes and 10,000 records per request), --clients
#   at a time, bodies read into memory before the clock starts; timed until the last answer;
# - spillway: the release binary with an `http_endpoint` sink (buffering.size_mib = --buffer-mib,
#   1 s interval), records sent as NDJSON (5,000 lines per request, --clients curls), timed from
#   the first request until its /metrics count every record delivered (so it includes the
#   intake, the WAL with fsync: always, base64, and the last batch's 1 s buffering interval);
#   with --drain, the records are taken in while the receiver is down, spillway is stopped, and
#   the timed phase is a restart delivering that backlog from the WAL (read-back, base64, HTTP:
#   the sink's path alone, start-up included), to a receiver of its own.
# Prints records/s and MiB/s (record bytes) for both, the ratio, and CPU seconds per GiB of
# record bytes: the reference client's own (getrusage), spillway's whole process (intake and WAL
# included), and the receiver's in each phase. The phases run one after the other (--order).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
records=200000
buffer_mib=4
clients=4
gzip=false
drain=false
order=reference-first
port=4598
receiver_port=4599
bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/spillway"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--records) records=$2; shift 2 ;;
	--buffer-mib) buffer_mib=$2; shift 2 ;;
	--clients) clients=$2; shift 2 ;;
	--gzip) gzip=true; shift ;;
	--drain) drain=true; shift ;;
	--order) order=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	--bin) bin=$2; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
[[ -x "$bin" ]] || { echo "build it first: cargo build --release --bin spillway" >&2; exit 2; }
command -v go >/dev/null || { echo "needs Go (the receiver and the reference client)" >&2; exit 2; }
work="$(mktemp -d)"
server_pid=""
receiver_pid=""
drain_receiver_pid=""
cleanup() {
	for pid in "$server_pid" "$receiver_pid" "$drain_receiver_pid"; do
		if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	done
	rm -rf "$work"
}
trap cleanup EXIT
(cd "$ROOT/scripts/bench_http_endpoint" && GOFLAGS=-mod=mod go build -o "$work/bench" .)

python3 - "$work" "$records" "$buffer_mib" "$gzip" <<'PY'
import base64, gzip, json, os, random, sys
work, records, buffer_mib, use_gzip = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "true"
random.seed(7)
os.makedirs(f"{work}/ref"); os.makedirs(f"{work}/ndjson")
paths = ["/api/v1/orders", "/api/v1/users/42", "/static/app.js", "/health", "/api/v2/search?q=spillway"]
lines = []
for n in range(records):
    doc = {"id": f"rec-{n}", "ts": f"2026-12-06T00:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}Z",
           "level": random.choice(["info", "info", "info", "warn", "error"]), "service": f"svc-{n % 17}",
           "method": random.choice(["GET", "POST", "PUT"]), "path": random.choice(paths),
           "status": random.choice([200, 200, 201, 404, 500]), "bytes": random.randint(100, 90000),
           "duration_ms": round(random.random() * 250, 3), "trace_id": "%032x" % random.getrandbits(128)}
    base = json.dumps(doc, separators=(",", ":"))
    doc["message"] = "request served " + "x" * max(0, 1000 - len(base) - 30)
    lines.append(json.dumps(doc, separators=(",", ":")))
limit, part, group, size = buffer_mib << 20, 0, [], 0
def flush():
    global group, part, size
    if group:
        entries = ",".join('{"data":"%s"}' % base64.b64encode(line.encode()).decode() for line in group)
        body = ('{"requestId":"ref-%06d","timestamp":1765000000000,"records":[%s]}' % (part, entries)).encode()
        with open(f"{work}/ref/{part:06d}.json", "wb") as f: f.write(gzip.compress(body, 6) if use_gzip else body)
        part += 1; group = []; size = 0
for line in lines:
    group.append(line); size += len(line)
    if size >= limit or len(group) == 10000: flush()
flush()
for i in range(0, len(lines), 5000):
    with open(f"{work}/ndjson/{i // 5000:06d}.ndjson", "w") as f: f.write("\n".join(lines[i:i + 5000]) + "\n")
total = sum(len(line) for line in lines)
open(f"{work}/bytes", "w").write(str(total))
print(f"{records} records, {total / records:.0f} B each, {total / 2**20:.1f} MiB; {part} reference requests")
PY
record_bytes="$(cat "$work/bytes")"
"$work/bench" receiver "127.0.0.1:$receiver_port" &
receiver_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$receiver_port/stats" >/dev/null 2>&1 && break; sleep 0.1; done

now() { date +%s.%N; }
ticks="$(getconf CLK_TCK)"
cpu_of() { awk -v t="$ticks" '{ sub(/^.*\) /, ""); print ($12 + $13) / t }' "/proc/$1/stat"; }
records_received() { curl -sf "http://127.0.0.1:$receiver_port/stats" | awk '{ print $2 }'; }

run_reference() {
	local before_receiver before_records
	before_receiver="$(cpu_of "$receiver_pid")"; before_records="$(records_received)"
	read -r ref_seconds ref_cpu ref_requests < <("$work/bench" post "http://127.0.0.1:$receiver_port/intake" "$work/ref" "$clients")
	ref_receiver_cpu="$(awk -v a="$before_receiver" -v b="$(cpu_of "$receiver_pid")" 'BEGIN { print b - a }')"
	local got=$(($(records_received) - before_records))
	[[ "$got" -eq "$records" ]] || { echo "reference: the receiver counted $got of $records records" >&2; exit 1; }
}

metric_sum() { # NAME: the sum of a counter's series on spillway's /metrics
	curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null | awk -v n="$1" 'index($0, n "{") == 1 { sum += $2 } END { printf "%d", sum }'
}

start_spillway() { # RECEIVER_PORT
	local encoding=none
	[[ "$gzip" == true ]] && encoding=gzip
	cat >"$work/bench.yaml" <<-YAML
	server: { listen: 127.0.0.1:$port, shutdown_grace_seconds: 1 }
	data_dir: $work/data
	streams:
	  - name: bench
	    buffering: { size_mib: $buffer_mib, interval_seconds: 1 }
	    retry: { duration_seconds: 7200 }
	    sink:
	      type: http_endpoint
	      url: http://127.0.0.1:$1/intake
	      content_encoding: $encoding
	      backup: { sink: { url: 'file://$work/backup' } }
	YAML
	"$bin" run --config "$work/bench.yaml" >>"$work/stdout.log" 2>>"$work/server.log" &
	server_pid=$!
	for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
}

run_spillway_drain() {
	# Take every record in while the drain receiver is not listening, then stop.
	local drain_port=$((receiver_port + 10))
	start_spillway "$drain_port"
	ls "$work"/ndjson/*.ndjson | xargs -P "$clients" -I{} sh -c \
		"curl -sf -o /dev/null --data-binary @{} 'http://127.0.0.1:$port/streams/bench/records' || echo 'put failed: {}' >&2"
	[[ "$(metric_sum spillway_incoming_records_total)" -eq "$records" ]] || { echo "not every record taken in" >&2; exit 1; }
	kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
	"$work/bench" receiver "127.0.0.1:$drain_port" &
	drain_receiver_pid=$!
	for _ in $(seq 100); do curl -sf "http://127.0.0.1:$drain_port/stats" >/dev/null 2>&1 && break; sleep 0.1; done
	local start receiver_before
	receiver_before="$(cpu_of "$drain_receiver_pid")"; start="$(now)"
	start_spillway "$drain_port"
	local deadline=$((SECONDS + 600)) delivered=0
	while [[ "$delivered" -lt "$records" ]]; do
		if ((SECONDS > deadline)); then echo "spillway: $delivered of $records delivered after 600 s" >&2; exit 1; fi
		sleep 0.05
		delivered="$(metric_sum spillway_delivered_records_total)" || delivered=0
	done
	sp_seconds="$(awk -v a="$start" -v b="$(now)" 'BEGIN { print b - a }')"
	sp_cpu="$(cpu_of "$server_pid")"
	sp_receiver_cpu="$(awk -v a="$receiver_before" -v b="$(cpu_of "$drain_receiver_pid")" 'BEGIN { print b - a }')"
	sp_requests="$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^spillway_sink_requests_total\{.*outcome="200"/ { sum += $2 } END { printf "%d", sum }')"
	local got
	got="$(curl -sf "http://127.0.0.1:$drain_port/stats" | awk '{ print $2 }')"
	[[ "$got" -eq "$records" ]] || { echo "spillway: the receiver counted $got of $records records" >&2; exit 1; }
	kill "$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
}

run_spillway() {
	if [[ "$drain" == true ]]; then run_spillway_drain; return; fi
	start_spillway "$receiver_port"
	local before_receiver before_records start self_before
	before_receiver="$(cpu_of "$receiver_pid")"; before_records="$(records_received)"
	self_before="$(cpu_of "$server_pid")"; start="$(now)"
	ls "$work"/ndjson/*.ndjson | xargs -P "$clients" -I{} sh -c \
		"curl -sf -o /dev/null --data-binary @{} 'http://127.0.0.1:$port/streams/bench/records' || echo 'put failed: {}' >&2"
	local deadline=$((SECONDS + 600)) delivered=0
	while [[ "$delivered" -lt "$records" ]]; do
		if ((SECONDS > deadline)); then echo "spillway: $delivered of $records delivered after 600 s" >&2; exit 1; fi
		sleep 0.05
		delivered="$(curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null | awk '/^spillway_delivered_records_total\{/ { sum += $2 } END { printf "%d", sum }')" || delivered=0
	done
	sp_seconds="$(awk -v a="$start" -v b="$(now)" 'BEGIN { print b - a }')"
	sp_cpu="$(awk -v a="$self_before" -v b="$(cpu_of "$server_pid")" 'BEGIN { print b - a }')"
	sp_receiver_cpu="$(awk -v a="$before_receiver" -v b="$(cpu_of "$receiver_pid")" 'BEGIN { print b - a }')"
	sp_requests="$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^spillway_sink_requests_total\{.*outcome="200"/ { sum += $2 } END { printf "%d", sum }')"
	local got=$(($(records_received) - before_records))
	[[ "$got" -eq "$records" ]] || { echo "spillway: the receiver counted $got of $records records" >&2; exit 1; }
	kill "$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
}

if [[ "$order" == spillway-first ]]; then
	run_spillway; sleep 2; run_reference
else
	run_reference; sleep 2; run_spillway
fi
if [[ -d "$work/backup" ]] && [[ -n "$(find "$work/backup" -type f)" ]]; then echo "records reached the backup" >&2; exit 1; fi

awk -v n="$records" -v bytes="$record_bytes" -v r="$ref_seconds" -v s="$sp_seconds" -v rc="$ref_cpu" -v sc="$sp_cpu" \
	-v rr="$ref_receiver_cpu" -v sr="$sp_receiver_cpu" -v rq="$ref_requests" -v sq="$sp_requests" -v c="$clients" -v g="$gzip" -v d="$drain" 'BEGIN {
	gib = bytes / 2^30
	printf "reference (Go client, pre-built bodies, %d parallel, gzip %s): %.2f s, %.0f records/s, %.1f MiB/s, %d requests; CPU %.1f s/GiB (receiver %.1f s/GiB)\n", c, g, r, n / r, bytes / 1048576 / r, rq, rc / gib, rr / gib
	printf "spillway  (http_endpoint sink, %s):          %.2f s, %.0f records/s, %.1f MiB/s, %d requests; CPU %.1f s/GiB (receiver %.1f s/GiB)\n", (d == "true" ? "drain of the WAL after a restart" : "intake + WAL included"), s, n / s, bytes / 1048576 / s, sq, sc / gib, sr / gib
	printf "spillway / reference: %.2f x records/s\n", r / s
}'
