#!/usr/bin/env bash
# Cluster coordinator load: what cluster mode asks of PostgreSQL (docs/benchmarks.md, "Cluster
# coordinator"; docs/scaling.md builds on it). Each node round's latency by leases held
# (heartbeat, renew_all, scan, the shared catalog's poll), then the node rounds per second one
# server sustains with 10,000 leases over 40 simulated nodes. Uses a database of its own on
# scripts/services.sh's PostgreSQL (created and dropped).
#
#   scripts/bench-coordinator.sh                 # builds examples/coordinator_load (dist profile)
#   PG_URL=postgres://u@host:5432/db scripts/bench-coordinator.sh   # another server
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PG_URL:-}" ]]; then
	scripts/services.sh up >/dev/null
	eval "$(scripts/services.sh env)"
	PG_URL=$SPILLWAY_TEST_PG_URL
fi
cargo build --quiet --profile dist --example coordinator_load
target/dist/examples/coordinator_load "$PG_URL"
