#!/usr/bin/env bash
# Real servers for spillway's service-backed tests, on loopback ports of their own.
#
#   scripts/services.sh up       install what is missing (cached), start every service, wait until ready
#   scripts/services.sh down     stop exactly the processes `up` started (by PID file)
#   scripts/services.sh status   show each service: running / stopped
#   scripts/services.sh env      print `export` lines for the tests (eval "$(scripts/services.sh env)")
#   scripts/services.sh install  only install / build (no start)
#
# The lock on $CACHE/.lock is held on fd 9; every started service gets `9>&-` so that it
# does not keep the lock after `up` returns.
# Everything lives under ${SPILLWAY_CACHE_DIR:-~/.cache/spillway}: tools in it, runtime state
# (PID files, data, logs) in its run/ folder. See docs/testing.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SPILLWAY_CACHE_DIR:-$HOME/.cache/spillway}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
RUN="$CACHE/run"
LOGS="$RUN/logs"
INSTALL_LOGS="$CACHE/install-logs"

# ---- pinned versions ----------------------------------------------------------------------
# MinIO has no semver tags; the Go module proxy serves its commits as pseudo-versions.
# This is the newest one it serves (master of 2026-02-12, go.mod: go 1.24).
MINIO_MODULE="github.com/minio/minio"
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
OPENSEARCH_VERSION="2.19.6" # in tests/services/opensearch/pom.xml
KINESALITE_VERSION="3.3.3"  # in tests/services/kinesalite/package.json
KAFKA_VERSION="4.1.1"       # in tests/services/kafka/pom.xml

# ---- fixed test endpoints (127.0.0.1 only; 18000-18099, none of the system defaults) --------
HOST=127.0.0.1
MINIO_PORT=18090
MINIO_CONSOLE_PORT=18091 # the console is disabled (MINIO_BROWSER=off); the flag keeps it off random ports
PG_PORT=18032
OPENSEARCH_PORT=18092
OPENSEARCH_TRANSPORT_PORT=18093
KINESALITE_PORT=18045
MOTO_PORT=18050
KAFKA_PORT=18094            # PLAINTEXT
KAFKA_CONTROLLER_PORT=18095 # KRaft controller (not for clients)
KAFKA_SASL_PORT=18096       # SASL_PLAINTEXT: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, user spillway / spillwaysecret
KAFKA_TLS_PORT=18097        # SSL: a certificate for 127.0.0.1 signed by the test CA ($CACHE/kafka/tls/ca.pem)
KAFKA_IAM_PORT=18098        # SASL_SSL OAUTHBEARER: SigV4 tokens as MSK IAM (key AKIDSPILLWAYTEST, us-east-1), same certificate

S3_ACCESS_KEY=spillwaytest
S3_SECRET_KEY=spillwaytestsecret
S3_REGION=us-east-1
S3_BUCKET=spillway-test
PG_DB=spillway_test

SERVICES=(postgres minio opensearch kinesalite moto kafka)

# ---- small helpers ------------------------------------------------------------------------
log() { printf '[services] %s\n' "$*" >&2; }
die() {
	printf '[services] error: %s\n' "$*" >&2
	exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

tail_log() { # FILE: show the end of a service or install log
	local file="$1"
	if [[ -f "$file" ]]; then
		printf '[services] ---- last 40 lines of %s ----\n' "$file" >&2
		tail -n 40 "$file" >&2 || true
		printf '[services] ---- end of %s ----\n' "$file" >&2
	else
		printf '[services] (no log at %s)\n' "$file" >&2
	fi
}

hash_of() { # FILES...: content hash, for install stamps
	cat "$@" | sha256sum | cut -c1-16
}

port_open() { # PORT: true if something accepts TCP connections on 127.0.0.1:PORT
	(exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

pid_file() { echo "$RUN/$1.pid"; }

# The string a service's command line must contain, so that a stale PID file whose number
# was reused by an unrelated process is never mistaken for ours (and never signalled).
cmd_marker() {
	case "$1" in
	postgres) echo "postgres" ;;
	minio) echo "$HOST:$MINIO_PORT" ;;
	opensearch) echo "dev.spillway.testsvc.OpenSearchLauncher" ;;
	kinesalite) echo "kinesalite-local.js" ;;
	moto) echo "moto_server" ;;
	kafka) echo "spillway-test-kafka.properties" ;;
	esac
}

service_pid() { # SERVICE: print the PID if its PID file names a live process of ours
	local file pid
	file="$(pid_file "$1")"
	[[ -f "$file" ]] || return 1
	pid="$(head -n1 "$file" 2>/dev/null || true)"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(cmd_marker "$1")" || return 1
	echo "$pid"
}

service_port() {
	case "$1" in
	postgres) echo "$PG_PORT" ;;
	minio) echo "$MINIO_PORT" ;;
	opensearch) echo "$OPENSEARCH_PORT" ;;
	kinesalite) echo "$KINESALITE_PORT" ;;
	moto) echo "$MOTO_PORT" ;;
	kafka) echo "$KAFKA_PORT" ;;
	esac
}

service_log() {
	if [[ "$1" == postgres ]]; then echo "$(pg_dir)/postgres.log"; else echo "$LOGS/$1.log"; fi
}

venv_python() { echo "$CACHE/venv/bin/python"; }

# ---- readiness checks: one real request each ------------------------------------------------
ready_postgres() { "$(pg_bin)/pg_isready" -q -h "$HOST" -p "$PG_PORT" -d postgres -U postgres; }
ready_minio() { curl -sf -o /dev/null --max-time 2 "http://$HOST:$MINIO_PORT/minio/health/ready"; }
ready_opensearch() {
	curl -sf -o /dev/null --max-time 3 "http://$HOST:$OPENSEARCH_PORT/_cluster/health?wait_for_status=yellow&timeout=1s"
}
ready_kinesalite() { # an unsigned request gets a real Kinesis error (HTTP 403 AccessDeniedException)
	local code
	code="$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://$HOST:$KINESALITE_PORT/" || true)"
	[[ "$code" == 403 || "$code" == 400 ]]
}
ready_moto() { curl -sf -o /dev/null --max-time 2 "http://$HOST:$MOTO_PORT/moto-api/"; }
ready_kafka() { # the broker logs this once it has joined the KRaft quorum and serves clients
	port_open "$KAFKA_PORT" && grep -q "Kafka Server started" "$LOGS/kafka.log" 2>/dev/null
}

ready_timeout() {
	case "$1" in
	postgres) echo 60 ;;
	minio) echo 90 ;;
	opensearch) echo 180 ;;
	kinesalite) echo 30 ;;
	moto) echo 90 ;;
	kafka) echo 90 ;;
	esac
}

wait_ready() { # SERVICE: bounded wait; on timeout or death, print the log tail and fail
	local svc="$1" limit start pid
	limit="$(ready_timeout "$svc")"
	start="$SECONDS"
	while true; do
		if "ready_$svc"; then
			return 0
		fi
		if ! pid="$(service_pid "$svc")"; then
			log "$svc exited before it became ready"
			tail_log "$(service_log "$svc")"
			return 1
		fi
		if ((SECONDS - start >= limit)); then
			log "$svc (pid $pid) not ready on 127.0.0.1:$(service_port "$svc") after ${limit}s"
			tail_log "$(service_log "$svc")"
			return 1
		fi
		sleep 0.3
	done
}

# ---- PostgreSQL ---------------------------------------------------------------------------
pg_bin() { # the newest Debian server install (its binaries are not on PATH)
	local dir
	dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1 || true)"
	if [[ -n "$dir" && -x "$dir/initdb" ]]; then
		echo "$dir"
	elif command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
		pg_config --bindir
	else
		return 1
	fi
}

# The cluster must be reachable by the `postgres` user when we run as root. If the run dir is
# not traversable by it (e.g. under /root, mode 700), the cluster goes to a folder in /tmp
# named after the run dir; the choice is remembered in run/postgres.dir.
pg_dir() {
	if [[ -f "$RUN/postgres.dir" ]]; then
		cat "$RUN/postgres.dir"
		return
	fi
	local dir="$RUN/postgres"
	if [[ "$(id -u)" == 0 ]]; then
		mkdir -p "$dir"
		chown postgres:postgres "$dir"
		if ! runuser -u postgres -- test -w "$dir" 2>/dev/null; then
			rmdir "$dir" 2>/dev/null || true
			dir="${TMPDIR:-/tmp}/spillway-postgres-$(echo "$RUN" | sha256sum | cut -c1-10)"
		fi
	fi
	mkdir -p "$RUN"
	echo "$dir" >"$RUN/postgres.dir"
	echo "$dir"
}

as_pg() { # run a command as the postgres user when we are root (postgres refuses to run as root)
	if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Test tools from Debian: strace observes the local sink's fsyncs (sinks/s3 config tests);
# chromium renders the status page headless (tests/status_page.rs); awscli is AWS CLI v2
# (/usr/bin/aws, tests/control_plane.rs; v1 comes from the venv).
install_test_tools() {
	local missing=()
	command -v strace >/dev/null || missing+=(strace)
	command -v chromium >/dev/null || missing+=(chromium)
	dpkg-query -W -f='${Status}' awscli 2>/dev/null | grep -q 'install ok installed' || missing+=(awscli)
	((${#missing[@]} == 0)) && return 0
	[[ "$(id -u)" == 0 ]] || die "${missing[*]} not found; install Debian's ${missing[*]} package(s)"
	log "installing Debian's ${missing[*]} (apt-get)"
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

install_postgres() {
	if pg_bin >/dev/null; then
		return 0
	fi
	[[ "$(id -u)" == 0 ]] || die "PostgreSQL server binaries (initdb) not found; install Debian's postgresql package"
	log "installing Debian's postgresql (apt-get)"
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
	pg_bin >/dev/null || die "apt-get installed postgresql but no initdb was found under /usr/lib/postgresql"
}

start_postgres() {
	local bin dir
	bin="$(pg_bin)"
	dir="$(pg_dir)"
	# a throwaway cluster: fresh on every start
	[[ "$dir" == */postgres || "$dir" == */spillway-postgres-* ]] || die "refusing to wipe unexpected postgres dir $dir"
	rm -rf "$dir"
	mkdir -p "$dir"
	if [[ "$(id -u)" == 0 ]]; then
		chown postgres:postgres "$dir"
	fi
	chmod 700 "$dir"
	ln -sfn "$dir/postgres.log" "$LOGS/postgres.log"
	as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
		>"$dir/initdb.log" 2>&1 || {
		tail_log "$dir/initdb.log"
		die "initdb failed"
	}
	as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
		-o "-p $PG_PORT -k $dir -c listen_addresses=$HOST -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
		start </dev/null >"$dir/pg_ctl.log" 2>&1 9>&- || {
		tail_log "$dir/pg_ctl.log"
		tail_log "$dir/postgres.log"
		die "pg_ctl start failed"
	}
	head -n1 "$dir/data/postmaster.pid" >"$(pid_file postgres)"
}

setup_postgres() { # after ready: the test database
	local psql
	psql="$(pg_bin)/psql"
	if ! "$psql" -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
		"$psql" -q -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE $PG_DB" >/dev/null
	fi
}

stop_postgres() {
	local pid="$1" dir
	dir="$(pg_dir)"
	as_pg "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
	stop_pid postgres "$pid"
}

# ---- MinIO (built from its Go module) ------------------------------------------------------
go_env() {
	env GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOBIN="$CACHE/bin" \
		GOFLAGS=-buildvcs=false GOTOOLCHAIN=local "$@"
}

install_minio() {
	local stamp="$CACHE/bin/.minio.stamp"
	if [[ -x "$CACHE/bin/minio" && "$(cat "$stamp" 2>/dev/null)" == "$MINIO_VERSION" ]]; then
		return 0
	fi
	command -v go >/dev/null || die "go not found (MinIO is built with the machine's Go)"
	mkdir -p "$CACHE/bin"
	go_env go install "$MINIO_MODULE@$MINIO_VERSION"
	echo "$MINIO_VERSION" >"$stamp"
}

start_minio() {
	rm -rf "$RUN/minio"
	mkdir -p "$RUN/minio/data"
	MINIO_ROOT_USER="$S3_ACCESS_KEY" MINIO_ROOT_PASSWORD="$S3_SECRET_KEY" MINIO_REGION="$S3_REGION" \
		MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CALLHOME_ENABLE=off \
		"$CACHE/bin/minio" server --address "$HOST:$MINIO_PORT" --console-address "$HOST:$MINIO_CONSOLE_PORT" \
		"$RUN/minio/data" </dev/null >"$LOGS/minio.log" 2>&1 9>&- &
	echo $! >"$(pid_file minio)"
}

setup_minio() { # after ready: the shared test bucket
	S3_ENDPOINT="http://$HOST:$MINIO_PORT" "$(venv_python)" - "$S3_BUCKET" <<PY
import sys, boto3, botocore
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url="http://$HOST:$MINIO_PORT", aws_access_key_id="$S3_ACCESS_KEY",
                  aws_secret_access_key="$S3_SECRET_KEY", region_name="$S3_REGION",
                  config=Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket=sys.argv[1])
except botocore.exceptions.ClientError as e:
    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        raise
PY
}

# ---- OpenSearch (jars from Maven Central, started by a small launcher) ------------------------
OS_SRC="$ROOT/tests/services/opensearch"
OS_BUILD="$CACHE/opensearch/build"

opensearch_inputs_hash() {
	(cd "$OS_SRC" && find pom.xml src -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)
}

install_opensearch() {
	local stamp="$OS_BUILD/.stamp" want
	want="$(opensearch_inputs_hash)"
	if [[ -f "$OS_BUILD/target/spillway-test-opensearch.jar" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
		return 0
	fi
	command -v mvn >/dev/null || die "mvn not found"
	command -v java >/dev/null || die "java not found"
	rm -rf "$OS_BUILD"
	mkdir -p "$OS_BUILD"
	cp -r "$OS_SRC/pom.xml" "$OS_SRC/src" "$OS_BUILD/"
	mvn -B -q -Dmaven.repo.local="$CACHE/m2" -f "$OS_BUILD/pom.xml" package
	echo "$want" >"$stamp"
}

start_opensearch() {
	local home="$RUN/opensearch"
	rm -rf "$home"
	mkdir -p "$home/tmp"
	java -Xms512m -Xmx768m -XX:+UseG1GC -Djava.io.tmpdir="$home/tmp" -Djava.awt.headless=true \
		-Dfile.encoding=UTF-8 -Djava.locale.providers=SPI,CLDR -Dlog4j.shutdownHookEnabled=false \
		-Dlog4j2.disable.jmx=true -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true \
		-Dio.netty.recycler.maxCapacityPerThread=0 \
		-cp "$OS_BUILD/target/lib/*:$OS_BUILD/target/spillway-test-opensearch.jar" \
		dev.spillway.testsvc.OpenSearchLauncher --home "$home" \
		-Enetwork.host="$HOST" -Ehttp.port="$OPENSEARCH_PORT" -Etransport.port="$OPENSEARCH_TRANSPORT_PORT" \
		</dev/null >"$LOGS/opensearch.log" 2>&1 9>&- &
	echo $! >"$(pid_file opensearch)"
}

# ---- Apache Iceberg REST catalog server (jars from Maven Central; not a service: each test ---
# starts its own on a free 127.0.0.1 port, backed by PostgreSQL and MinIO; see its pom.xml) ----
ICEBERG_REST_SRC="$ROOT/tests/services/iceberg-rest"
ICEBERG_REST_BUILD="$CACHE/iceberg-rest/build"

iceberg_rest_classpath() {
	echo "$ICEBERG_REST_BUILD/target/lib/*:$ICEBERG_REST_BUILD/target/spillway-test-iceberg-rest.jar"
}

install_iceberg_rest() {
	local stamp="$ICEBERG_REST_BUILD/.stamp" want
	want="$(cd "$ICEBERG_REST_SRC" && find pom.xml src -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"
	if [[ -f "$ICEBERG_REST_BUILD/target/spillway-test-iceberg-rest.jar" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
		return 0
	fi
	command -v mvn >/dev/null || die "mvn not found"
	command -v java >/dev/null || die "java not found"
	rm -rf "$ICEBERG_REST_BUILD"
	mkdir -p "$ICEBERG_REST_BUILD"
	cp -r "$ICEBERG_REST_SRC/pom.xml" "$ICEBERG_REST_SRC/src" "$ICEBERG_REST_BUILD/"
	mvn -B -q -Dmaven.repo.local="$CACHE/m2" -f "$ICEBERG_REST_BUILD/pom.xml" package
	echo "$want" >"$stamp"
}

# ---- kinesalite (npm) -------------------------------------------------------------------------
KIN_SRC="$ROOT/tests/services/kinesalite"
KIN_DIR="$CACHE/kinesalite"

install_kinesalite() {
	local stamp="$KIN_DIR/.stamp" want
	want="$(hash_of "$KIN_SRC/package.json" "$KIN_SRC/package-lock.json")"
	if [[ -d "$KIN_DIR/node_modules/kinesalite" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
		return 0
	fi
	command -v npm >/dev/null || die "npm not found"
	rm -rf "$KIN_DIR"
	mkdir -p "$KIN_DIR"
	cp "$KIN_SRC/package.json" "$KIN_SRC/package-lock.json" "$KIN_DIR/"
	(cd "$KIN_DIR" && npm ci --no-audit --no-fund --cache "$CACHE/npm-cache")
	echo "$want" >"$stamp"
}

start_kinesalite() {
	NODE_PATH="$KIN_DIR/node_modules" node "$KIN_SRC/kinesalite-local.js" --host "$HOST" --port "$KINESALITE_PORT" \
		--createStreamMs 50 --deleteStreamMs 50 --updateStreamMs 50 --shardLimit 100 \
		</dev/null >"$LOGS/kinesalite.log" 2>&1 9>&- &
	echo $! >"$(pid_file kinesalite)"
}

# ---- Apache Kafka (jars from Maven Central, one KRaft node) -----------------------------------
KAFKA_SRC="$ROOT/tests/services/kafka"
KAFKA_BUILD="$CACHE/kafka/build"

KAFKA_PY="$CACHE/kafka/python"

kafka_classpath() { echo "$KAFKA_BUILD/target/lib/*:$KAFKA_BUILD/target/spillway-test-kafka.jar"; }

kafka_inputs_hash() {
	(cd "$KAFKA_SRC" && find pom.xml src -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)
}

install_kafka() {
	install_kafka_signer
	local stamp="$KAFKA_BUILD/.stamp" want
	want="$(kafka_inputs_hash)"
	if [[ -f "$KAFKA_BUILD/target/spillway-test-kafka.jar" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
		return 0
	fi
	command -v mvn >/dev/null || die "mvn not found"
	command -v java >/dev/null || die "java not found"
	# Built beside, then swapped in: a broker still running on the old jars finds a jar at each
	# path whenever it opens one.
	local next="$KAFKA_BUILD.next"
	rm -rf "$next"
	mkdir -p "$next"
	cp -r "$KAFKA_SRC/pom.xml" "$KAFKA_SRC/src" "$next/"
	mvn -B -q -Dmaven.repo.local="$CACHE/m2" -f "$next/pom.xml" package
	echo "$want" >"$next/.stamp"
	rm -rf "$KAFKA_BUILD"
	mv "$next" "$KAFKA_BUILD"
}

# AWS's reference MSK IAM signer (tests/services/kafka/requirements.txt), without its dependencies:
# the venv's boto3 / botocore / click serve it (PYTHONPATH=$KAFKA_PY with SPILLWAY_TEST_PYTHON).
install_kafka_signer() {
	local stamp="$KAFKA_PY/.stamp" want
	want="$(hash_of "$KAFKA_SRC/requirements.txt")"
	if [[ -d "$KAFKA_PY/aws_msk_iam_sasl_signer" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
		return 0
	fi
	rm -rf "$KAFKA_PY"
	python3 -m pip install -q --disable-pip-version-check --cache-dir "$CACHE/pip" --no-deps \
		--target "$KAFKA_PY" -r "$KAFKA_SRC/requirements.txt"
	echo "$want" >"$stamp"
}

# The SSL listener's test CA and server certificate (for 127.0.0.1 and localhost), made with
# openssl once and kept in $KAFKA_TLS (made again when missing or expiring within a day):
# ca.pem (SPILLWAY_TEST_KAFKA_CA_FILE) and broker-keystore.pem (the broker's PKCS#8 key + chain).
KAFKA_TLS="$CACHE/kafka/tls"

kafka_tls() {
	if [[ -f "$KAFKA_TLS/ca.pem" && -f "$KAFKA_TLS/broker-keystore.pem" ]] &&
		openssl x509 -checkend 86400 -noout -in "$KAFKA_TLS/ca.pem" >/dev/null 2>&1 &&
		openssl x509 -checkend 86400 -noout -in "$KAFKA_TLS/broker.pem" >/dev/null 2>&1; then
		return 0
	fi
	command -v openssl >/dev/null || die "openssl not found (it makes the Kafka test broker's certificates)"
	local tmp
	mkdir -p "$CACHE/kafka"
	tmp="$(mktemp -d "$CACHE/kafka/tls.XXXXXX")"
	(
		cd "$tmp"
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
			-subj "/CN=spillway test CA" -keyout ca.key -out ca.pem \
			-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$HOST" \
			-keyout broker.key -out broker.csr
		printf '%s\n' "subjectAltName=IP:$HOST,DNS:localhost" "basicConstraints=CA:FALSE" \
			"keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >broker.ext
		openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
			-extfile broker.ext -out broker.pem
		cat broker.key broker.pem >broker-keystore.pem
		rm -f broker.csr broker.ext ca.srl
	) >"$tmp/openssl.log" 2>&1 || {
		tail_log "$tmp/openssl.log"
		die "making the kafka test certificates failed"
	}
	rm -rf "$KAFKA_TLS"
	mv "$tmp" "$KAFKA_TLS"
}

# A throwaway broker: storage formatted anew on every start, with the SASL listener's SCRAM users.
# The properties file's name is the command-line marker services.sh recognises the process by.
start_kafka() {
	local home="$RUN/kafka" props
	rm -rf "$home"
	mkdir -p "$home/data"
	kafka_tls
	props="$home/spillway-test-kafka.properties"
	sed -e "s#@HOST@#$HOST#g" -e "s#@PORT@#$KAFKA_PORT#g" -e "s#@CONTROLLER_PORT@#$KAFKA_CONTROLLER_PORT#g" \
		-e "s#@SASL_PORT@#$KAFKA_SASL_PORT#g" -e "s#@SSL_PORT@#$KAFKA_TLS_PORT#g" -e "s#@IAM_PORT@#$KAFKA_IAM_PORT#g" \
		-e "s#@KEYSTORE@#$KAFKA_TLS/broker-keystore.pem#g" -e "s#@DATA@#$home/data#g" \
		"$KAFKA_SRC/server.properties" >"$props"
	java -Xmx256m -cp "$(kafka_classpath)" kafka.tools.StorageTool format -t "$(java -cp "$(kafka_classpath)" kafka.tools.StorageTool random-uuid 2>/dev/null)" \
		-c "$props" --add-scram 'SCRAM-SHA-256=[name=spillway,password=spillwaysecret]' \
		--add-scram 'SCRAM-SHA-512=[name=spillway,password=spillwaysecret]' >"$home/format.log" 2>&1 || {
		tail_log "$home/format.log"
		die "formatting the kafka storage failed"
	}
	java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true -Djava.io.tmpdir="$home" \
		-cp "$(kafka_classpath)" kafka.Kafka "$props" </dev/null >"$LOGS/kafka.log" 2>&1 9>&- &
	echo $! >"$(pid_file kafka)"
}

# ---- Python venv (test readers + moto) ----------------------------------------------------
PY_SRC="$ROOT/tests/services/python"

install_venv() {
	local stamp="$CACHE/venv/.stamp" want
	want="$(hash_of "$PY_SRC/requirements.txt" "$PY_SRC/constraints.txt") $(python3 -c 'import sys; print(sys.version.split()[0])')"
	if [[ -x "$CACHE/venv/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
		return 0
	fi
	rm -rf "$CACHE/venv"
	python3 -m venv "$CACHE/venv"
	"$CACHE/venv/bin/pip" install -q --disable-pip-version-check --cache-dir "$CACHE/pip" \
		-r "$PY_SRC/requirements.txt" -c "$PY_SRC/constraints.txt"
	"$CACHE/venv/bin/python" -c 'import boto3, pyarrow, duckdb, moto, snappy, pyiceberg, pyiceberg_core'
	"$CACHE/venv/bin/aws" --version
	echo "$want" >"$stamp"
}

start_moto() {
	"$CACHE/venv/bin/moto_server" -H "$HOST" -p "$MOTO_PORT" </dev/null >"$LOGS/moto.log" 2>&1 9>&- &
	echo $! >"$(pid_file moto)"
}

# ---- stopping -----------------------------------------------------------------------------
stop_pid() { # SERVICE PID: TERM, bounded wait, then KILL; only ever this one PID
	local svc="$1" pid="$2" i
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "$svc (pid $pid) did not stop within 20s; sending KILL"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.2
		fi
	fi
}

stop_service() {
	local svc="$1" pid
	if pid="$(service_pid "$svc")"; then
		log "stopping $svc (pid $pid)"
		if [[ "$svc" == postgres ]]; then stop_postgres "$pid"; else stop_pid "$svc" "$pid"; fi
	fi
	rm -f "$(pid_file "$svc")"
}

# ---- commands -----------------------------------------------------------------------------
with_lock() { # serialise concurrent up/down on one cache dir
	exec 9>"$CACHE/.lock"
	flock -w 1800 9 || die "another scripts/services.sh holds $CACHE/.lock"
}

cmd_install() {
	local t0 name pids=() names=() failed=0 i
	t0="$(now)"
	mkdir -p "$INSTALL_LOGS"
	install_postgres
	install_test_tools
	# the rest are independent downloads/builds: run them side by side
	for name in minio opensearch kinesalite kafka iceberg_rest venv; do
		rm -f "$INSTALL_LOGS/$name.time"
		(
			start="$(now)"
			"install_$name"
			elapsed "$start" >"$INSTALL_LOGS/$name.time"
		) >"$INSTALL_LOGS/$name.log" 2>&1 &
		pids+=($!)
		names+=("$name")
	done
	for i in "${!pids[@]}"; do
		if wait "${pids[$i]}"; then
			log "install ${names[$i]}: ok ($(cat "$INSTALL_LOGS/${names[$i]}.time" 2>/dev/null || echo '?'))"
		else
			log "install ${names[$i]}: FAILED (log: $INSTALL_LOGS/${names[$i]}.log)"
			tail_log "$INSTALL_LOGS/${names[$i]}.log"
			failed=1
		fi
	done
	((failed == 0)) || die "installation failed"
	log "install: done in $(elapsed "$t0") (cache: $CACHE)"
}

cmd_up() {
	local t0 svc pid started=() start_t port
	t0="$(now)"
	with_lock
	mkdir -p "$RUN" "$LOGS"
	cmd_install
	for svc in "${SERVICES[@]}"; do
		if pid="$(service_pid "$svc")"; then
			continue
		fi
		rm -f "$(pid_file "$svc")"
		port="$(service_port "$svc")"
		if port_open "$port"; then
			die "port 127.0.0.1:$port is taken by a process this cache dir did not start (services of another SPILLWAY_CACHE_DIR? stop them with its 'scripts/services.sh down')"
		fi
		if [[ "$svc" == opensearch ]] && port_open "$OPENSEARCH_TRANSPORT_PORT"; then
			die "port 127.0.0.1:$OPENSEARCH_TRANSPORT_PORT (OpenSearch transport) is taken by another process"
		fi
		if [[ "$svc" == kafka ]] && { port_open "$KAFKA_CONTROLLER_PORT" || port_open "$KAFKA_SASL_PORT" || port_open "$KAFKA_TLS_PORT" || port_open "$KAFKA_IAM_PORT"; }; then
			die "port 127.0.0.1:$KAFKA_CONTROLLER_PORT, $KAFKA_SASL_PORT, $KAFKA_TLS_PORT or $KAFKA_IAM_PORT (Kafka) is taken by another process"
		fi
		log "starting $svc on 127.0.0.1:$port (log: $(service_log "$svc"))"
		"start_$svc"
		started+=("$svc")
	done
	start_t="$(now)"
	for svc in "${SERVICES[@]}"; do
		wait_ready "$svc" || die "$svc did not become ready; 'scripts/services.sh down' stops the others"
		if [[ " ${started[*]} " == *" $svc "* ]]; then
			log "$svc ready (pid $(service_pid "$svc"))"
		else
			log "$svc already running (pid $(service_pid "$svc"))"
		fi
	done
	setup_postgres
	setup_minio
	log "ready: services up in $(elapsed "$start_t") after install; total $(elapsed "$t0")"
}

cmd_down() {
	local svc pids=()
	with_lock
	# stop side by side (each waits at most ~20s for its own PID)
	for svc in "${SERVICES[@]}"; do
		stop_service "$svc" &
		pids+=($!)
	done
	for svc in "${pids[@]}"; do
		wait "$svc" || true
	done
	# the postgres cluster may live outside the run dir; it is throwaway
	if [[ -f "$RUN/postgres.dir" ]]; then
		rm -rf "$(cat "$RUN/postgres.dir")"
		rm -f "$RUN/postgres.dir"
	fi
	log "all services stopped"
}

cmd_status() {
	local svc pid state all=0
	for svc in "${SERVICES[@]}"; do
		if pid="$(service_pid "$svc")"; then
			if "ready_$svc" 2>/dev/null; then state="running (pid $pid, ready)"; else state="running (pid $pid, NOT ready)"; fi
		else
			state="stopped"
			all=3
		fi
		printf '%-11s %-32s 127.0.0.1:%s\n' "$svc" "$state" "$(service_port "$svc")"
	done
	printf 'versions: MinIO %s, OpenSearch %s, kinesalite %s, Kafka %s, %s, %s\n' "$MINIO_VERSION" "$OPENSEARCH_VERSION" \
		"$KINESALITE_VERSION" "$KAFKA_VERSION" "$(grep -o '^moto[^ ]*' "$PY_SRC/requirements.txt")" \
		"$( (pg_bin >/dev/null && "$(pg_bin)/postgres" --version) || echo 'PostgreSQL not installed')"
	printf 'cache: %s\nlogs:  %s\n' "$CACHE" "$LOGS"
	return "$all"
}

cmd_env() {
	local kv
	for kv in \
		"SPILLWAY_TEST_S3_ENDPOINT=http://$HOST:$MINIO_PORT" \
		"SPILLWAY_TEST_S3_ACCESS_KEY=$S3_ACCESS_KEY" \
		"SPILLWAY_TEST_S3_SECRET_KEY=$S3_SECRET_KEY" \
		"SPILLWAY_TEST_S3_REGION=$S3_REGION" \
		"SPILLWAY_TEST_S3_BUCKET=$S3_BUCKET" \
		"SPILLWAY_TEST_MINIO_BIN=$CACHE/bin/minio" \
		"SPILLWAY_TEST_PG_URL=postgres://postgres@$HOST:$PG_PORT/$PG_DB" \
		"SPILLWAY_TEST_OPENSEARCH_URL=http://$HOST:$OPENSEARCH_PORT" \
		"SPILLWAY_TEST_ICEBERG_REST_CLASSPATH=$(iceberg_rest_classpath)" \
		"SPILLWAY_TEST_KINESIS_ENDPOINT=http://$HOST:$KINESALITE_PORT" \
		"SPILLWAY_TEST_DYNAMODB_ENDPOINT=http://$HOST:$MOTO_PORT" \
		"SPILLWAY_TEST_KAFKA_BOOTSTRAP=$HOST:$KAFKA_PORT" \
		"SPILLWAY_TEST_KAFKA_SASL_BOOTSTRAP=$HOST:$KAFKA_SASL_PORT" \
		"SPILLWAY_TEST_KAFKA_TLS_BOOTSTRAP=$HOST:$KAFKA_TLS_PORT" \
		"SPILLWAY_TEST_KAFKA_CA_FILE=$KAFKA_TLS/ca.pem" \
		"SPILLWAY_TEST_KAFKA_IAM_BOOTSTRAP=$HOST:$KAFKA_IAM_PORT" \
		"SPILLWAY_TEST_KAFKA_PYTHONPATH=$KAFKA_PY" \
		"SPILLWAY_TEST_KAFKA_CLASSPATH=$(kafka_classpath)" \
		"SPILLWAY_TEST_PYTHON=$(venv_python)" \
		"SPILLWAY_TEST_AWS_CLI_V1=$CACHE/venv/bin/aws" \
		"SPILLWAY_TEST_AWS_CLI_V2=/usr/bin/aws"; do
		printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
	done
}

usage() {
	sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
install)
	with_lock
	cmd_install
	;;
*) usage ;;
esac
