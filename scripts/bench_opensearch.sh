#!/usr/bin/env bash
# OpenSearch sink throughput next to a plain reference loader on the same node, in one run.
#
#   eval "$(scripts/services.sh env)"; scripts/bench_opensearch.sh [--records N] [--bulk-mib M] [--clients C]
#       [--order reference-first|spillway-first] [--bin PATH]
#
# Both load the same ~1 KiB JSON log records (unique ids) into fresh indices with the same settings
# (1 shard, 0 replicas) on the OpenSearch of scripts/services.sh:
# - reference: pre-built `_bulk` bodies of --bulk-mib (explicit `_id`s, like spillway's), sent by
#   `curl` with --clients in parallel (xargs -P), timed until the last `_bulk` is answered;
# - spillway: the release binary with an `opensearch` sink (bulk_max_mib = buffering.size_mib =
#   --bulk-mib), records sent as NDJSON (5,000 lines per request, --clients curls), timed from the
#   first request until its /metrics count every record delivered, i.e. every `_bulk` item answered
#   (so it includes the WAL, fsync: always, and the last batch's 1 s buffering interval).
# Then each checks with `_refresh` + `_count` that every document is there (not timed: refreshing
# while loading would cost the node CPU in proportion to the wait).
# Concurrency: the reference sends --clients requests at once. spillway takes --clients intake
# requests at once and has up to 8 batches in flight, as many as fit in max(24 MiB, 4.5 batches)
# of encoded bytes; a batch is one `_bulk` request of --bulk-mib plus one of the ~8 % its action
# lines add. So with --bulk-mib 5 or more spillway has 4 large requests in flight, as the
# reference with --clients 4 (below 5 MiB more: up to 8).
# Prints documents/s and MiB/s (record bytes) for both and the ratio, and for each phase who
# used the CPU (OpenSearch's and spillway's CPU seconds, the machine's idle time): on a machine
# where they share the cores, the node's CPU is the limit and the loader's own CPU is taken
# from it. The phases run one after the other (--order), 3 s apart. Last line: the ratio the
# CPU seconds predict where the node and the loader have the cores to themselves and the node is
# CPU-bound (reference phase node CPU ÷ (spillway phase node CPU + spillway's own CPU)); unlike
# the wall-clock ratio it does not move with other processes' load on a shared machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
records=200000
bulk_mib=5
clients=4
order=reference-first
port=4597
bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/spillway"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--records) records=$2; shift 2 ;;
	--bulk-mib) bulk_mib=$2; shift 2 ;;
	--clients) clients=$2; shift 2 ;;
	--order) order=$2; shift 2 ;; # reference-first (default) | spillway-first
	--port) port=$2; shift 2 ;;
	--bin) bin=$2; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
OS="${SPILLWAY_TEST_OPENSEARCH_URL:?eval \"\$(scripts/services.sh env)\" first}"
[[ -x "$bin" ]] || { echo "build it first: cargo build --release --bin spillway" >&2; exit 2; }
work="$(mktemp -d)"
server_pid=""
cleanup() {
	if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
run_id="$(date +%s)"
ref_index="bench-ref-$run_id"
sp_index="bench-spillway-$run_id"

python3 - "$work" "$records" "$bulk_mib" "$ref_index" <<'PY'
import json, os, random, sys
work, records, bulk_mib, ref_index = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
random.seed(7)
os.makedirs(f"{work}/ref"); os.makedirs(f"{work}/ndjson")
paths = ["/api/v1/orders", "/api/v1/users/42", "/static/app.js", "/health", "/api/v2/search?q=spillway"]
agents = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
          "curl/8.5.0", "aws-sdk-rust/1.3 os/linux lang/rust/1.95"]
lines = []
for n in range(records):
    doc = {"id": f"rec-{n}", "ts": f"2026-11-26T00:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}Z",
           "level": random.choice(["info", "info", "info", "warn", "error"]), "service": f"svc-{n % 17}",
           "method": random.choice(["GET", "POST", "PUT"]), "path": random.choice(paths),
           "status": random.choice([200, 200, 201, 404, 500]), "bytes": random.randint(100, 90000),
           "duration_ms": round(random.random() * 250, 3), "agent": random.choice(agents),
           "trace_id": "%032x" % random.getrandbits(128)}
    base = json.dumps(doc, separators=(",", ":"))
    doc["message"] = "request served " + "x" * max(0, 1000 - len(base) - 30)
    lines.append(json.dumps(doc, separators=(",", ":")))
limit = bulk_mib << 20
body, part = [], 0
def flush():
    global body, part
    if body:
        with open(f"{work}/ref/{part:06d}.ndjson", "w") as f: f.write("".join(body))
        part += 1; body = []
size = 0
for n, line in enumerate(lines):
    entry = json.dumps({"index": {"_index": ref_index, "_id": f"ref-{n}"}}) + "\n" + line + "\n"
    if size + len(entry) > limit and body: flush(); size = 0
    body.append(entry); size += len(entry)
flush()
for i in range(0, len(lines), 5000):
    with open(f"{work}/ndjson/{i // 5000:06d}.ndjson", "w") as f: f.write("\n".join(lines[i:i + 5000]) + "\n")
total = sum(len(line) for line in lines)
open(f"{work}/bytes", "w").write(str(total))
print(f"{records} records, {total / records:.0f} B each, {total / 2**20:.1f} MiB; {part} reference bodies of <= {bulk_mib} MiB")
PY
record_bytes="$(cat "$work/bytes")"

for index in "$ref_index" "$sp_index"; do
	curl -sf -X PUT "$OS/$index" -H 'Content-Type: application/json' \
		-d '{"settings":{"number_of_shards":1,"number_of_replicas":0}}' >/dev/null
done

now() { date +%s.%N; }
# CPU seconds (user + system) of a process, and of the whole machine's busy / idle time, from
# /proc: to see who used the 2 cores in each phase (is OpenSearch waiting on the loader?).
ticks="$(getconf CLK_TCK)"
os_pid="$(cat "${SPILLWAY_CACHE_DIR:-$HOME/.cache/spillway}/run/opensearch.pid" 2>/dev/null || true)"
cpu_of() { # PID -> CPU seconds so far (0 when unknown)
	[[ -n "$1" && -r "/proc/$1/stat" ]] || { echo 0; return; }
	awk -v t="$ticks" '{ sub(/^.*\) /, ""); print ($12 + $13) / t }' "/proc/$1/stat"
}
idle_of() { awk -v t="$ticks" '/^cpu / { print ($5 + $6) / t }' /proc/stat; }
phase_start() { p_start="$(now)"; p_os="$(cpu_of "$os_pid")"; p_self="$(cpu_of "${1:-}")"; p_idle="$(idle_of)"; }
phase_end() { # NAME PID: wall seconds and who used the CPU, printed on stderr
	local wall os self idle
	wall="$(awk -v a="$p_start" -v b="$(now)" 'BEGIN { print b - a }')"
	os="$(awk -v a="$p_os" -v b="$(cpu_of "$os_pid")" 'BEGIN { print b - a }')"
	self="$(awk -v a="$p_self" -v b="$(cpu_of "${2:-}")" 'BEGIN { print b - a }')"
	idle="$(awk -v a="$p_idle" -v b="$(idle_of)" 'BEGIN { print b - a }')"
	echo "$os $self" >"$work/cpu-$1"
	awk -v n="$1" -v w="$wall" -v o="$os" -v s="$self" -v i="$idle" 'BEGIN {
		printf "  %s: %.1f s wall; CPU-s: opensearch %.1f, loader %.1f, machine idle %.1f (of %.1f)\n", n, w, o, s, i, 2 * w }' >&2
	echo "$wall"
}
count() { curl -s -m 30 -X POST "$OS/$1/_refresh" >/dev/null; curl -s -m 30 "$OS/$1/_count" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("count", 0))
except Exception: print(0)'; }
wait_count() { # INDEX: until every record is searchable (at most 600 s)
	local deadline=$((SECONDS + 600))
	while [[ "$(count "$1")" -lt "$records" ]]; do
		if ((SECONDS > deadline)); then echo "$1: $(count "$1") of $records documents after 600 s" >&2; exit 1; fi
		sleep 0.2
	done
}

run_reference() {
	# Reference loader (curl's CPU is not counted: short-lived processes).
	phase_start
	ls "$work"/ref/*.ndjson | xargs -P "$clients" -I{} sh -c \
		"curl -s -H 'Content-Type: application/x-ndjson' --data-binary @{} '$OS/_bulk?filter_path=errors' | grep -q '\"errors\":false' || echo 'reference bulk had errors: {}' >&2"
	# Every `_bulk` answered: every document is indexed (searchable after a refresh).
	ref_seconds="$(phase_end reference)"
	wait_count "$ref_index"
}

run_spillway() {
	# spillway.
	cat >"$work/bench.yaml" <<-YAML
	server: { listen: 127.0.0.1:$port }
	data_dir: $work/data
	streams:
	  - name: bench
	    buffering: { size_mib: $bulk_mib, interval_seconds: 1 }
	    sink:
	      type: opensearch
	      url: $OS
	      index: $sp_index
	      index_rotation: none
	      bulk_max_mib: $bulk_mib
	      backup: { sink: { url: 'file://$work/backup' } }
	YAML
	"$bin" run --config "$work/bench.yaml" >"$work/stdout.log" 2>"$work/server.log" &
	server_pid=$!
	for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
	phase_start "$server_pid"
	ls "$work"/ndjson/*.ndjson | xargs -P "$clients" -I{} sh -c \
		"curl -sf -o /dev/null --data-binary @{} 'http://127.0.0.1:$port/streams/bench/records' || echo 'put failed: {}' >&2"
	# Done when spillway counts every record delivered (every `_bulk` item answered), read from its
	# /metrics: polling OpenSearch with refreshes would cost the node CPU in proportion to the wait.
	local deadline=$((SECONDS + 600)) delivered=0
	while [[ "$delivered" -lt "$records" ]]; do
		if ((SECONDS > deadline)); then echo "spillway: $delivered of $records delivered after 600 s" >&2; exit 1; fi
		sleep 0.05
		delivered="$(curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null | awk '/^spillway_delivered_records_total\{/ { sum += $2 } END { printf "%d", sum }')" || delivered=0
	done
	sp_seconds="$(phase_end spillway "$server_pid")"
	wait_count "$sp_index"
	kill "$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
}

# One phase after the other, in the order asked (the node's merges of the first index may run
# into the second phase); a short pause between them.
if [[ "$order" == spillway-first ]]; then
	run_spillway; sleep 3; run_reference
else
	run_reference; sleep 3; run_spillway
fi
if [[ -d "$work/backup" ]] && [[ -n "$(find "$work/backup" -type f)" ]]; then echo "documents reached the backup" >&2; exit 1; fi
read -r ref_os_cpu _ <"$work/cpu-reference"
read -r sp_os_cpu sp_self_cpu <"$work/cpu-spillway"

awk -v n="$records" -v bytes="$record_bytes" -v r="$ref_seconds" -v s="$sp_seconds" -v mib="$bulk_mib" -v c="$clients" 'BEGIN {
	printf "reference (curl _bulk, %d MiB bodies, %d parallel): %.1f s, %.0f docs/s, %.1f MiB/s\n", mib, c, r, n / r, bytes / 1048576 / r
	printf "spillway  (opensearch sink, bulk_max_mib %d):         %.1f s, %.0f docs/s, %.1f MiB/s\n", mib, s, n / s, bytes / 1048576 / s
	printf "spillway / reference: %.2f\n", r / s
}'
awk -v ro="$ref_os_cpu" -v so="$sp_os_cpu" -v sc="$sp_self_cpu" 'BEGIN {
	if (so + sc > 0) printf "CPU-bound estimate (reference node CPU / (spillway phase node CPU + spillway CPU)): %.2f\n", ro / (so + sc)
}'
curl -s -X DELETE "$OS/$ref_index,$sp_index" >/dev/null
