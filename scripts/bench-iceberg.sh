#!/usr/bin/env bash
# The Iceberg sink against spillway's own Parquet-to-S3 path on the same data: `spillway bench`
# (4 clients, PutRecordBatch of ~350-byte JSON access-log lines, one line per record) into
#   parquet: an S3 sink on the services' MinIO, `format: parquet` with the table's columns;
#   iceberg: an Iceberg table in the same MinIO (SQL catalog in the services' PostgreSQL) created
#            by pyiceberg, partitioned by day(ts) and identity(status), written with snappy as the
#            Parquet path is;
# alternating, each run on a fresh server. Prints `spillway bench`'s drained throughput, records/s
# and server CPU-s/GiB per run, then the Iceberg commits and data files (/metrics), the row
# count pyiceberg reads back, and pyiceberg's own `append` of those rows (already in Arrow) into a
# table of the same spec.
#
#   eval "$(scripts/services.sh env)"; scripts/bench-iceberg.sh [--total-mib 256] [--size-mib 32] [--runs 2]
#
# The binary is target/release/spillway (built first); SPILLWAY_BIN=path runs another one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

total_mib=256 size_mib=32 runs=2 port=4597
while (($#)); do
	case "$1" in
	--total-mib) total_mib=$2; shift 2 ;;
	--size-mib) size_mib=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
done
: "${SPILLWAY_TEST_PG_URL:?run eval \"\$(scripts/services.sh env)\" first}"
if [[ -n "${SPILLWAY_BIN:-}" ]]; then
	bin=$SPILLWAY_BIN
else
	cargo build --release --quiet --bin spillway
	bin=${CARGO_TARGET_DIR:-target}/release/spillway
fi
py=$SPILLWAY_TEST_PYTHON
work=$(mktemp -d /tmp/spillway-bench-iceberg.XXXXXX)
server_pid=
cleanup() {
	if [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; then
		for _ in $(seq 1 300); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

stamp=$(date +%s)
bucket="bench-iceberg-$stamp"
database="bench_iceberg_$stamp"
catalog_uri="${SPILLWAY_TEST_PG_URL%/*}/$database"
warehouse="s3://$bucket/warehouse"
"$py" - "$bucket" "$database" <<'PY'
import os, sys
import boto3, psycopg2
bucket, database = sys.argv[1:3]
boto3.client("s3", endpoint_url=os.environ["SPILLWAY_TEST_S3_ENDPOINT"],
             aws_access_key_id=os.environ["SPILLWAY_TEST_S3_ACCESS_KEY"],
             aws_secret_access_key=os.environ["SPILLWAY_TEST_S3_SECRET_KEY"],
             region_name=os.environ["SPILLWAY_TEST_S3_REGION"]).create_bucket(Bucket=bucket)
connection = psycopg2.connect(os.environ["SPILLWAY_TEST_PG_URL"])
connection.autocommit = True
connection.cursor().execute(f"CREATE DATABASE {database}")
PY

# pyiceberg on the bench catalog: create <table> | count <table>
iceberg() {
	"$py" - "$catalog_uri" "$warehouse" "$@" <<'PY'
import os, sys
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import DoubleType, IntegerType, LongType, NestedField, StringType, TimestamptzType
uri, warehouse, command, name = sys.argv[1:5]
catalog = SqlCatalog("default", uri=uri.replace("postgres://", "postgresql+psycopg2://", 1), warehouse=warehouse, **{
    "s3.endpoint": os.environ["SPILLWAY_TEST_S3_ENDPOINT"], "s3.access-key-id": os.environ["SPILLWAY_TEST_S3_ACCESS_KEY"],
    "s3.secret-access-key": os.environ["SPILLWAY_TEST_S3_SECRET_KEY"], "s3.region": os.environ["SPILLWAY_TEST_S3_REGION"]})
def create(name):
    catalog.create_namespace_if_not_exists("bench")
    schema = Schema(
        NestedField(1, "ts", TimestamptzType()), NestedField(2, "seq", LongType()), NestedField(3, "client", StringType()),
        NestedField(4, "method", StringType()), NestedField(5, "path", StringType()), NestedField(6, "status", IntegerType()),
        NestedField(7, "bytes", LongType()), NestedField(8, "duration_ms", DoubleType()),
        NestedField(9, "user_agent", StringType()), NestedField(10, "request_id", StringType()))
    spec = PartitionSpec(PartitionField(1, 1000, DayTransform(), "ts_day"), PartitionField(6, 1001, IdentityTransform(), "status"))
    return catalog.create_table(name, schema=schema, partition_spec=spec, properties={"write.parquet.compression-codec": "snappy"})
if command == "create":
    create(name)
elif command == "append-copy":
    # pyiceberg's own append of the same rows, already in Arrow (no JSON to read: a lower bound).
    import time
    rows = catalog.load_table(name).scan().to_arrow()
    copy = create(name + "_pyiceberg")
    wall, cpu = time.perf_counter(), time.process_time()
    copy.append(rows)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mib = rows.nbytes / 2**20
    print(f"pyiceberg append of the same {rows.num_rows} rows ({mib:.0f} MiB in Arrow): {wall:.2f} s, "
          f"{rows.num_rows / wall:.0f} rows/s, {cpu:.2f} CPU-s")
else:
    table = catalog.load_table(name)
    print(table.scan(selected_fields=("seq",)).to_arrow().num_rows)
PY
}

connection() { # INDENT: the S3 connection fields of the services' MinIO
	local indent=$1
	printf '%sendpoint: %s\n%sregion: %s\n%saccess_key_id: %s\n%ssecret_access_key: %s\n' \
		"$indent" "$SPILLWAY_TEST_S3_ENDPOINT" "$indent" "$SPILLWAY_TEST_S3_REGION" \
		"$indent" "$SPILLWAY_TEST_S3_ACCESS_KEY" "$indent" "$SPILLWAY_TEST_S3_SECRET_KEY"
}
write_config() { # KIND RUN
	local kind=$1 run=$2
	{
		cat <<YAML
server: { listen: 127.0.0.1:$port }
data_dir: $work/data-$kind-$run
limits: { max_wal_mib: 4096 }
streams:
  - name: bench
    buffering: { size_mib: $size_mib, interval_seconds: 5 }
    sink:
YAML
		if [[ $kind == parquet ]]; then
			cat <<YAML
      type: s3
      url: s3://$bucket
      prefix: 'parquet-$run/'
$(connection "      ")
      format:
        type: parquet
        compression: snappy
        schema:
          columns:
            - { name: ts, type: timestamp }
            - { name: seq, type: bigint }
            - { name: client, type: string }
            - { name: method, type: string }
            - { name: path, type: string }
            - { name: status, type: int }
            - { name: bytes, type: bigint }
            - { name: duration_ms, type: double }
            - { name: user_agent, type: string }
            - { name: request_id, type: string }
YAML
		else
			cat <<YAML
      type: iceberg
      catalog: { type: sql, uri: '$catalog_uri', warehouse: '$warehouse' }
      table: bench.access_$run
      s3:
$(connection "        ")
      backup: { sink: { url: 'file://$work/errors' } }
YAML
		fi
	} >"$work/$kind.yaml"
}

echo "machine: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
for run in $(seq 1 "$runs"); do
	iceberg create "bench.access_$run"
	for kind in parquet iceberg; do
		write_config "$kind" "$run"
		"$bin" validate --config "$work/$kind.yaml" >/dev/null
		"$bin" run --config "$work/$kind.yaml" >"$work/stdout.log" 2>"$work/server-$kind-$run.log" &
		server_pid=$!
		for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
		echo "== run $run: $kind (load average $(cut -d' ' -f1-3 /proc/loadavg))"
		"$bin" bench --endpoint "http://127.0.0.1:$port" --stream bench --total-mib "$total_mib" --lines-per-record 1 \
			--drain-timeout-seconds 600 | grep -E "^(sent|drained|server)"
		if [[ $kind == iceberg ]]; then
			curl -s "http://127.0.0.1:$port/metrics" | grep -E '^spillway_sink_requests_total\{.*outcome="(commit|data_file|already_committed|failed)"' | sed 's/^/  /'
			echo "  rows pyiceberg reads: $(iceberg count "bench.access_$run")"
			kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
			server_pid=
			echo "  $(iceberg append-copy "bench.access_$run")"
			continue
		fi
		kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
		server_pid=
	done
done
