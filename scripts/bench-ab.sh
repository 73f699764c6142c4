#!/usr/bin/env bash
# The core drain benchmark (the defaults of scripts/bench.sh: Direct PUT of 256 MiB of ~350-byte
# JSON lines in ~1 MiB PutRecordBatch calls from 4 clients → WAL with fsync always → gzip → local
# folder, 5 MiB buffers) for two commits, alternated pair by pair so that a machine whose speed
# drifts affects both alike. Each build is driven by its own `spillway bench` client (the metric
# names it reads changed between versions). Prints per run: server CPU seconds (utime + stime
# from /proc), drain MiB/s, peak RSS; then the medians and the B/A ratios.
#
#   scripts/bench-ab.sh [A] [B] [PAIRS]    # default: f04d08c^ f04d08c 8
#
# The defaults measure what the metrics change (hand-written exposition → prometheus-client, all
# the new instruments: issue 13) costs: A is the code just before it, B the commit that made it.
# Builds go to a worktree per commit under $AB_DIR (default /tmp/spillway-ab), reused by later runs.
# AB_BIN_A / AB_BIN_B name ready binaries instead (A and B are then only labels), and BENCH_ARGS
# passes options to `spillway bench`, e.g. BENCH_ARGS='--lines-per-record 1' for the per-record
# cost (one ~350-byte JSON line per record).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
a=${1:-f04d08c^} b=${2:-f04d08c} pairs=${3:-8}
dir=${AB_DIR:-/tmp/spillway-ab}
mkdir -p "$dir"

build() { # commit → path of its release binary
	local commit sha tree
	commit=$1
	sha=$(git rev-parse --short "$commit")
	tree="$dir/$sha"
	if [[ ! -x "$dir/bin-$sha" ]]; then
		[[ -d "$tree" ]] || git worktree add --detach "$tree" "$sha" >/dev/null 2>&1
		(cd "$tree" && cargo build --release --quiet --bin spillway) >&2
		cp "$tree/target/release/spillway" "$dir/bin-$sha"
	fi
	echo "$dir/bin-$sha"
}

drain() { # binary port → "cpu_s drained_mib_s peak_rss_kib"
	local bin=$1 port=$2 work pid out cpu rss drained
	work=$(mktemp -d "$dir/run.XXXXXX")
	cat >"$work/bench.yaml" <<YAML
server: { listen: 127.0.0.1:$port }
data_dir: $work/data
wal: { fsync: always }
limits: { max_wal_mib: 4096 }
streams:
  - name: bench
    buffering: { size_mib: 5, interval_seconds: 1 }
    sink: { type: s3, url: 'file://$work/out', compression: gzip }
YAML
	"$bin" run --config "$work/bench.yaml" >"$work/stdout.log" 2>"$work/server.log" &
	pid=$!
	for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
	# shellcheck disable=SC2086 # BENCH_ARGS is a list of options
	out=$("$bin" bench --endpoint "http://127.0.0.1:$port" --stream bench --total-mib 256 ${BENCH_ARGS:-} 2>&1) || true
	cpu=$(awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / tck }' "/proc/$pid/stat")
	rss=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
	drained=$(echo "$out" | sed -n 's/^drained: *[0-9.]* s, \([0-9.]*\) MiB\/s.*/\1/p')
	kill "$pid"; wait "$pid" 2>/dev/null || true
	rm -rf "$work"
	[[ -n "$drained" ]] || { echo "no drain figure from $bin: $out" >&2; exit 1; }
	echo "$cpu $drained $rss"
}

bin_a=${AB_BIN_A:-$(build "$a")}
bin_b=${AB_BIN_B:-$(build "$b")}
echo "A = $a ($bin_a), B = $b ($bin_b), $pairs pairs, bench options: ${BENCH_ARGS:-none}; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
results=$(mktemp)
for pair in $(seq 1 "$pairs"); do
	for side in A B; do
		bin=$bin_a; [[ $side == B ]] && bin=$bin_b
		read -r cpu drained rss < <(drain "$bin" $((4700 + RANDOM % 200)))
		echo "$pair $side $cpu $drained $rss $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$results" |
			awk '{ printf "pair %s %s: server CPU %s s, drained %s MiB/s, peak RSS %d MiB (load %s)\n", $1, $2, $3, $4, $5 / 1024, $6 }'
	done
done
python3 - "$results" <<'PY'
import statistics as st, sys
runs = {}
for line in open(sys.argv[1]):
    pair, side, cpu, drained, rss, _ = line.split()
    runs.setdefault(pair, {})[side] = (float(cpu), float(drained), int(rss))
def med(values): return st.median(values)
for i, name in ((0, "server CPU s"), (1, "drained MiB/s"), (2, "peak RSS KiB")):
    a = [run["A"][i] for run in runs.values()]
    b = [run["B"][i] for run in runs.values()]
    ratios = [run["B"][i] / run["A"][i] for run in runs.values()]
    print(f"{name}: A median {med(a):.2f}, B median {med(b):.2f}; B/A pair by pair median {med(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
PY
rm -f "$results"
