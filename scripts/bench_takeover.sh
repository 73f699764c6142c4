#!/usr/bin/env bash
# Cluster mode take-over time (docs/benchmarks.md, "Cluster mode"): several nodes share a Kinesis
# stream's shards, a seeded node is killed with SIGKILL again and again, and each kill is timed
# from the kill to the first delivery from every shard it held (scripts/bench_takeover.py).
#
#   scripts/bench_takeover.sh                          # 10 kills, lease_seconds 10 (the default)
#   scripts/bench_takeover.sh --kills 10 --lease-seconds 2
#   scripts/bench_takeover.sh --nodes 1 --shards 100 --kills 0 --load-seconds 30   # coordinator load
#
# Needs: the release binary (cargo build --release); starts scripts/services.sh's services.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh up >/dev/null
eval "$(scripts/services.sh env)"
binary="${CARGO_TARGET_DIR:-target}/release/spillway"
[[ -x "$binary" ]] || { echo "build it first: cargo build --release" >&2; exit 1; }
echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$SPILLWAY_TEST_PYTHON" scripts/bench_takeover.py --binary "$binary" "$@"
