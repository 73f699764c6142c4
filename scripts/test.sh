#!/usr/bin/env bash
# The one test command: starts the real test services, runs fmt + clippy + the whole test
# suite including the service-backed (#[ignore = "needs services: scripts/test.sh"]) tests,
# then clippy and a few test targets again in the smallest feature set (`--no-default-features
# --features source-file`), and stops the services again, also on failure.
#
#   scripts/test.sh                    # everything
#   scripts/test.sh --test s3_minio    # extra arguments go to `cargo test`
#   scripts/test.sh -p spillway -- name_filter
#
# Environment: SPILLWAY_CACHE_DIR (default ~/.cache/spillway) holds the installed services;
# SPILLWAY_KEEP_SERVICES=1 leaves them running afterwards. See docs/testing.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${CI:-}" == true ]]; then
	# nothing here may wait for a person
	exec </dev/null
	export DEBIAN_FRONTEND=noninteractive CARGO_TERM_PROGRESS_WHEN=never
	# a fresh clone builds once: incremental caches would only take disk (GBs) and time
	export CARGO_INCREMENTAL=0
fi

log() { printf '[test.sh] %s\n' "$*" >&2; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# cargo arguments before a `--`, test-binary arguments after it
cargo_args=()
test_args=()
seen_sep=0
for arg in "$@"; do
	if ((seen_sep == 0)) && [[ "$arg" == -- ]]; then
		seen_sep=1
	elif ((seen_sep == 0)); then
		cargo_args+=("$arg")
	else
		test_args+=("$arg")
	fi
done

t_all="$(now)"
timings=()

services_started=0
finish() {
	local rc=$?
	if ((services_started == 1)); then
		if [[ "${SPILLWAY_KEEP_SERVICES:-0}" == 1 ]]; then
			log "SPILLWAY_KEEP_SERVICES=1: leaving the services running (scripts/services.sh down stops them)"
		else
			local t
			t="$(now)"
			scripts/services.sh down || log "warning: scripts/services.sh down failed"
			timings+=("services down: $(took "$t")")
			if scripts/services.sh status | grep -q ' running'; then
				log "error: a service is still running after down:"
				scripts/services.sh status >&2
				((rc == 0)) && rc=1
			fi
		fi
	fi
	if ((${#timings[@]} > 0)); then
		log "timings:"
		printf '[test.sh]   %s\n' "${timings[@]}" >&2
	fi
	log "total $(took "$t_all"), exit code $rc"
	exit "$rc"
}
trap finish EXIT

step() { # NAME CMD...: run one step, record its time, stop at its failure
	local name="$1" t
	shift
	t="$(now)"
	log "$name: $*"
	if "$@"; then
		timings+=("$name: $(took "$t")")
	else
		local rc=$?
		timings+=("$name: $(took "$t") (FAILED, exit $rc)")
		log "$name failed (exit $rc)"
		exit "$rc"
	fi
}

step "cargo fmt" cargo fmt --all --check
step "doc links" python3 scripts/check-doc-links.py

services_started=1
step "services up" scripts/services.sh up
eval "$(scripts/services.sh env)"

up_again_is_a_noop() { # a second `up` must leave every service (and its PID) as it was
	local before after
	before="$(scripts/services.sh status)"
	scripts/services.sh up
	after="$(scripts/services.sh status)"
	[[ "$before" == "$after" ]] || { printf 'status changed:\n%s\n---\n%s\n' "$before" "$after" >&2; return 1; }
}
step "services up again (no-op)" up_again_is_a_noop

step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo test" cargo test --workspace "${cargo_args[@]}" -- --include-ignored "${test_args[@]}"

# The smallest build users make (Cargo.toml `[features]`, docs/architecture.md "Build"): no
# PostgreSQL, OpenSearch, Kinesis or DynamoDB code. Compiles the spillway crate a second time (the
# dependencies are shared with the steps above) and runs the tests that say most about it: the
# unit tests, the CLI (a left-out type is refused by name and feature), Direct PUT and the file
# source. Only in a full run; `scripts/test.sh --test x` runs what it names.
subset=(-p spillway --no-default-features --features source-file)
if ((${#cargo_args[@]} == 0 && ${#test_args[@]} == 0)); then
	step "cargo clippy (feature subset)" cargo clippy "${subset[@]}" --all-targets -- -D warnings
	step "cargo test (feature subset)" cargo test "${subset[@]}" --lib --test cli --test direct_put --test file_source \
		-- --include-ignored
else
	log "feature subset: skipped (a run with arguments runs only what it names)"
fi
