//! The Iceberg sink end to end: a SQL catalog in the services' PostgreSQL (a fresh database per
//! test), the warehouse in MinIO, tables created, read, appended to and inspected by pyiceberg
//! (`tests/services/python/iceberg_table.py`), records through the Firehose API of the real
//! binary. Partitioned appends read back with their types, misfits in the error output, a
//! missing table (`validate --connect`, then delivery once it exists), pyiceberg committing
//! beside spillway, and seeded SIGKILL rounds, with kills between data files and commit.
//! The REST catalog the same way, through Apache Iceberg's REST catalog server
//! (`tests/services/iceberg-rest`, started by each test on a free 127.0.0.1 port, backed by a
//! fresh database, warehouse in MinIO, OAuth2 client credentials required): appends read back by
//! pyiceberg's `RestCatalog`, commits answered 500 ("commit state unknown", applied or not),
//! SIGKILL rounds, and clear errors for a missing table or namespace, refused credentials and an
//! unreachable server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::s3::env;
use common::{Spillway, WAIT, pg};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services/python/iceberg_table.py");
const REST_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services/iceberg-rest/iceberg_rest_table.py");

/// The OAuth2 clients the REST servers of these tests accept: spillway's (handed to it in
/// `SPILLWAY_TEST_REST_CREDENTIAL`, which its YAML names) and pyiceberg's.
const SPILLWAY_CLIENT: &str = "spillway:rest-secret-7f3a";
const PYICEBERG_CLIENT: &str = "pyiceberg:py-secret-91c2";

/// Apache Iceberg's REST catalog server of one test (`tests/services/iceberg-rest`): 127.0.0.1
/// on a free port, its JdbcCatalog in a fresh PostgreSQL database, its tables' files in the
/// test's MinIO bucket, the two clients above required. Killed on drop.
struct RestServer {
    child: Option<Child>,
    url: String,
    home: tempfile::TempDir,
}

impl RestServer {
    /// Starts the server with `options` (`spillway.commit-faults=N`, `spillway.token-uses=N`:
    /// see `IcebergRestLauncher`) and waits (bounded) until it serves.
    fn start(pg_uri: &str, warehouse: &str, options: &[&str]) -> RestServer {
        let home = tempfile::tempdir().unwrap();
        let (user, address) =
            pg_uri.trim_start_matches("postgres://").split_once('@').expect("user@host in the pg url");
        let output = std::fs::File::create(home.path().join("stdout.log")).unwrap();
        let log = std::fs::File::create(home.path().join("server.log")).unwrap();
        let clients = format!("spillway.clients={SPILLWAY_CLIENT},{PYICEBERG_CLIENT}");
        let child = Command::new("java")
            .args([
                "-Xms64m",
                "-Xmx384m",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                &env("SPILLWAY_TEST_ICEBERG_REST_CLASSPATH"),
            ])
            .arg("dev.spillway.testsvc.IcebergRestLauncher")
            .arg(format!("uri=jdbc:postgresql://{address}"))
            .arg(format!("jdbc.user={user}"))
            .arg(format!("warehouse={warehouse}"))
            .arg("io-impl=org.apache.iceberg.aws.s3.S3FileIO")
            .arg(format!("s3.endpoint={}", env("SPILLWAY_TEST_S3_ENDPOINT")))
            .arg("s3.path-style-access=true")
            .arg(format!("s3.access-key-id={}", env("SPILLWAY_TEST_S3_ACCESS_KEY")))
            .arg(format!("s3.secret-access-key={}", env("SPILLWAY_TEST_S3_SECRET_KEY")))
            .arg(format!("client.region={}", env("SPILLWAY_TEST_S3_REGION")))
            .arg(clients)
            .args(options)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(log)
            .spawn()
            .expect("start the iceberg rest server");
        let mut server = RestServer { child: Some(child), url: String::new(), home };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let text = std::fs::read_to_string(server.home.path().join("stdout.log")).unwrap_or_default();
            if let Some(address) = text.lines().find_map(|line| line.strip_prefix("listening on ")) {
                server.url = format!("http://{address}");
                return server;
            }
            let exited = server.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
            assert!(exited.is_none() && Instant::now() < deadline, "rest server not serving:\n{}", server.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.home.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A catalog database and a warehouse bucket of the test's own; with a REST server in front
/// for a REST catalog.
struct Catalog {
    /// The SQL catalog's PostgreSQL or SQLite url, or the REST server's.
    uri: String,
    warehouse: String,
    rest: Option<RestServer>,
    /// The folder of a SQLite catalog's file.
    _sqlite_home: Option<tempfile::TempDir>,
}

impl Catalog {
    async fn new(prefix: &str) -> Catalog {
        let uri = pg::fresh_database(prefix).await;
        Catalog { uri, warehouse: Self::new_warehouse().await, rest: None, _sqlite_home: None }
    }

    /// A SQL catalog in a SQLite file of its own (created by pyiceberg's first call).
    async fn sqlite() -> Catalog {
        let home = tempfile::tempdir().unwrap();
        let uri = format!("sqlite://{}/catalog.db", home.path().display());
        Catalog { uri, warehouse: Self::new_warehouse().await, rest: None, _sqlite_home: Some(home) }
    }

    /// A REST catalog: its server started with `options`.
    async fn rest(prefix: &str, options: &[&str]) -> Catalog {
        let pg_uri = pg::fresh_database(prefix).await;
        let warehouse = Self::new_warehouse().await;
        let (server_warehouse, options) =
            (warehouse.clone(), options.iter().map(|o| o.to_string()).collect::<Vec<_>>());
        let server = tokio::task::spawn_blocking(move || {
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            RestServer::start(&pg_uri, &server_warehouse, &options)
        })
        .await
        .unwrap();
        Catalog { uri: server.url.clone(), warehouse, rest: Some(server), _sqlite_home: None }
    }

    async fn new_warehouse() -> String {
        let s3 = common::s3::client().await;
        let bucket = common::s3::new_bucket(&s3).await;
        format!("s3://{bucket}/warehouse")
    }

    fn rest_server(&self) -> &RestServer {
        self.rest.as_ref().expect("a rest catalog")
    }

    /// Environment spillway needs for this catalog (the REST credential its YAML names).
    fn spillway_env(&self) -> Vec<(&'static str, &'static str)> {
        match self.rest {
            Some(_) => vec![("SPILLWAY_TEST_REST_CREDENTIAL", SPILLWAY_CLIENT)],
            None => Vec::new(),
        }
    }

    /// Run the pyiceberg script; its JSON answer. pyiceberg's `append` does not retry a commit
    /// that lost the race with spillway's (`CommitFailedException`: nothing was committed), so
    /// this does, a few times.
    fn py(&self, table: &str, args: &[&str]) -> Value {
        let script = if self.rest.is_some() { REST_SCRIPT } else { SCRIPT };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let output = Command::new(env("SPILLWAY_TEST_PYTHON"))
                .arg(script)
                .args([&self.uri, &self.warehouse, table])
                .args(args)
                .env("SPILLWAY_TEST_ICEBERG_REST_CREDENTIAL", PYICEBERG_CLIENT)
                .output()
                .expect("run pyiceberg");
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() && stderr.contains("CommitFailedException") && attempts < 5 {
                eprintln!(
                    "pyiceberg {args:?} lost a commit race, again: {}",
                    stderr.lines().last().unwrap_or_default()
                );
                continue;
            }
            assert!(output.status.success(), "pyiceberg {args:?} failed: {stderr}");
            return serde_json::from_slice(&output.stdout).expect("pyiceberg answers JSON");
        }
    }

    /// The sink's `catalog:` block.
    fn catalog_yaml(&self) -> String {
        match &self.rest {
            Some(server) => format!(
                "{{ type: rest, uri: '{}', warehouse: '{}', credential: '${{SPILLWAY_TEST_REST_CREDENTIAL}}' }}",
                server.url, self.warehouse
            ),
            None => format!("{{ type: sql, uri: '{}', warehouse: '{}' }}", self.uri, self.warehouse),
        }
    }

    /// Start spillway on `config` with this catalog's environment and `extra` variables.
    fn start_spillway(&self, dir: &std::path::Path, config: &std::path::Path, extra: &[(&str, &str)]) -> Spillway {
        let mut set = self.spillway_env();
        set.extend_from_slice(extra);
        Spillway::start_with_env(dir, config, &set, &[])
    }

    /// `spillway validate --connect` on `config`: whether it passed, and its stdout and stderr.
    fn validate_connect(&self, dir: &std::path::Path, config: &std::path::Path) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["validate", "--connect", "--config"])
            .arg(config)
            .current_dir(dir)
            .envs(self.spillway_env())
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    fn sink_yaml(&self, table: &str) -> String {
        format!(
            "    sink:\n\
             \x20     type: iceberg\n\
             \x20     catalog: {catalog}\n\
             \x20     table: {table}\n\
             \x20     s3:\n\
             \x20       endpoint: ${{SPILLWAY_TEST_S3_ENDPOINT}}\n\
             \x20       region: ${{SPILLWAY_TEST_S3_REGION}}\n\
             \x20       access_key_id: ${{SPILLWAY_TEST_S3_ACCESS_KEY}}\n\
             \x20       secret_access_key: ${{SPILLWAY_TEST_S3_SECRET_KEY}}\n\
             \x20     backup: {{ sink: {{ url: 'file://./errors', error_output_prefix: 'errors/!{{firehose:error-output-type}}/' }} }}\n",
            catalog = self.catalog_yaml(),
        )
    }

    fn yaml(&self, table: &str) -> String {
        self.yaml_with(table, "")
    }

    fn yaml_with(&self, table: &str, stream_extra: &str) -> String {
        format!(
            "server: {{ listen: 127.0.0.1:0, shutdown_grace_seconds: 60 }}\n\
             data_dir: ./data\n\
             streams:\n\
             \x20 - name: rows\n\
             \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
             \x20   retry: {{ duration_seconds: 600 }}\n\
             {stream_extra}{}",
            self.sink_yaml(table)
        )
    }

    /// Rows by id (each id once, or the test fails), after waiting for `count` of them.
    async fn wait_rows(&self, table: &str, count: usize) -> (BTreeMap<String, Value>, Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let read = self.py(table, &["read"]);
            let rows = read["rows"].as_array().cloned().unwrap_or_default();
            if rows.len() >= count {
                let mut by_id = BTreeMap::new();
                for row in rows {
                    let id = row["id"].as_str().expect("id").to_string();
                    assert!(by_id.insert(id.clone(), row).is_none(), "row {id} twice");
                }
                return (by_id, read["types"].clone());
            }
            assert!(Instant::now() < deadline, "{table}: {} of {count} rows after {WAIT:?}", rows.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every live data file once, and every batch id in one snapshot only.
    fn assert_files_and_batches_once(&self, table: &str) -> (usize, usize) {
        let inspected = self.py(table, &["inspect"]);
        let files: Vec<&str> = inspected["files"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        let unique: BTreeSet<&str> = files.iter().copied().collect();
        assert_eq!(unique.len(), files.len(), "a data file is referenced twice");
        let mut batches = BTreeSet::new();
        for snapshot in inspected["snapshots"].as_array().unwrap() {
            if let Some(batch) = snapshot["summary"]["spillway.batch-id"].as_str() {
                assert!(batches.insert(batch.to_string()), "batch {batch} committed twice");
                assert_eq!(snapshot["summary"]["spillway.stream"], "rows");
                assert!(snapshot["summary"]["spillway.wal-end"].as_str().is_some());
            }
        }
        (files.len(), batches.len())
    }
}

async fn put(client: &aws_sdk_firehose::Client, records: &[String]) {
    for chunk in records.chunks(500) {
        let batch: Vec<Record> =
            chunk.iter().map(|data| Record::builder().data(Blob::new(data.as_bytes())).build().unwrap()).collect();
        let output =
            client.put_record_batch().delivery_stream_name("rows").set_records(Some(batch)).send().await.expect("put");
        assert_eq!(output.failed_put_count(), 0);
    }
}

fn error_records(dir: &std::path::Path) -> Vec<Value> {
    common::local_json_lines(&dir.join("errors"), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn partitioned_appends_read_back_with_their_types_and_misfits_go_to_the_error_output() {
    let catalog = Catalog::new("iceberg_types").await;
    let table = "db.events";
    catalog.py(table, &["create", "partitioned"]);
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &catalog.yaml(table));
    let mut records: Vec<String> = (0..300)
        .map(|n| {
            format!(
                r#"{{"id":"r{n}","client":{},"amount":{n}.5,"at":"2026-12-0{}T10:00:00Z","kind":"{}","tags":["a","b{n}"],"attrs":{{"n":{n}}}}}"#,
                n % 7,
                1 + n % 3,
                ["click", "view"][n % 2]
            )
        })
        .collect();
    // Misfits: not JSON, a string where an int goes, the required id missing.
    records.push("not json".to_string());
    records.push(r#"{"id":"bad-int","client":"seven"}"#.to_string());
    records.push(r#"{"client":1}"#.to_string());
    put(&spillway.client().await, &records).await;

    let (rows, types) = catalog.wait_rows(table, 300).await;
    assert_eq!(rows.len(), 300);
    assert_eq!(types["id"], "string", "{types}");
    assert_eq!(types["tags"], "list<element: string>");
    assert_eq!(types["attrs"], "struct<n: int64>");
    assert_eq!(types["client"], "int32", "{types}");
    assert_eq!(types["amount"], "double");
    assert_eq!(types["at"], "timestamp[us, tz=UTC]");
    let r7 = &rows["r7"];
    assert_eq!(r7["client"], 0);
    assert_eq!(r7["amount"], 7.5);
    assert_eq!(r7["at"], "2026-12-02T10:00:00+00:00");
    assert_eq!(r7["kind"], "view");
    assert_eq!(r7["tags"], serde_json::json!(["a", "b7"]));
    assert_eq!(r7["attrs"], serde_json::json!({"n": 7}));

    let errors = common::eventually(WAIT, "3 error records", || {
        let found = error_records(dir.path());
        (found.len() >= 3).then_some(found)
    })
    .await;
    let mut codes: Vec<&str> = errors.iter().filter_map(|record| record["errorCode"].as_str()).collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![
            "DataFormatConversion.MalformedData",
            "DataFormatConversion.MalformedData",
            "DataFormatConversion.ParseError"
        ]
    );
    // One file per partition per batch: 3 days x 2 kinds x at most 4 buckets.
    let (files, batches) = catalog.assert_files_and_batches_once(table);
    assert!(batches >= 1 && files <= 24 * batches, "{files} files for {batches} batches");
    let commits = spillway.metric("spillway_sink_requests_total{stream=\"rows\",outcome=\"commit\"}").await;
    eprintln!("{files} data files, {batches} commits (metric {commits:?})");
    assert_eq!(spillway.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_missing_table_is_named_at_validate_connect_and_waited_for_at_run_time() {
    let catalog = Catalog::new("iceberg_missing").await;
    let table = "db.later";
    // The catalog's own tables exist (pyiceberg made them), the table does not.
    catalog.py("db.other", &["create", "plain"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, catalog.yaml(table)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "--connect", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("table db.later does not exist"), "{stderr}");

    let spillway = Spillway::start_with_config(dir.path(), &config);
    let records: Vec<String> = (0..50).map(|n| format!(r#"{{"id":"m{n}"}}"#)).collect();
    put(&spillway.client().await, &records).await;
    common::eventually(WAIT, "a failed attempt", || {
        spillway.log_text().contains("Iceberg.TableNotFound").then_some(())
    })
    .await;
    catalog.py(table, &["create", "plain"]);
    let (rows, _) = catalog.wait_rows(table, 50).await;
    assert_eq!(rows.len(), 50);
    let passed = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "--connect", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(passed.status.success(), "{}", String::from_utf8_lossy(&passed.stderr));
    assert_eq!(spillway.terminate(), 0);
}

/// The SQL catalog in a SQLite file (pyiceberg's and Java's `JdbcCatalog` layout, as in
/// PostgreSQL): spillway appends, pyiceberg reads every row with its types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_sqlite_catalog_appends_read_back_by_pyiceberg() {
    let catalog = Catalog::sqlite().await;
    catalog.py("db.events", &["create", "partitioned"]);
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &catalog.yaml("db.events"));
    let records: Vec<String> = (0..120)
        .map(|n| {
            format!(
                r#"{{"id":"s{n}","client":{n},"amount":{n}.5,"kind":"k{}","at":"2026-12-0{}T10:00:00Z"}}"#,
                n % 3,
                1 + n % 5
            )
        })
        .collect();
    put(&spillway.client().await, &records).await;
    let (rows, types) = catalog.wait_rows("db.events", 120).await;
    assert_eq!(rows.len(), 120);
    assert_eq!(rows["s7"]["client"], 7);
    assert_eq!(rows["s7"]["amount"], 7.5);
    assert_eq!(types["client"], "int32", "{types}");
    assert_eq!(types["at"], "timestamp[us, tz=UTC]");
    let (files, batches) = catalog.assert_files_and_batches_once("db.events");
    assert!(files >= 5 && batches >= 1, "one file per day partition at least: {files} files, {batches} batches");
    assert_eq!(spillway.terminate(), 0);
}

/// Records routed by a jq key to two tables; Firehose's `operation` key: `insert` appends,
/// `update` / `delete` (no row-delta commit) and an unknown operation go to the error output with
/// their codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn partition_keys_route_one_stream_to_several_tables() {
    let catalog = Catalog::new("iceberg_routes").await;
    catalog.py("db.clicks", &["create", "plain"]);
    catalog.py("db.views", &["create", "partitioned"]);
    let dir = tempfile::tempdir().unwrap();
    let routing = "    processing:\n      dynamic_partitioning: { keys: { t: .kind, operation: .op } }\n";
    let spillway = Spillway::start(dir.path(), &catalog.yaml_with("'db.!{partitionKeyFromQuery:t}'", routing));
    let operation = |n: usize| match n % 10 {
        1 => "update",
        2 => "DELETE",
        3 => "upsert",
        _ => "insert",
    };
    let kind = |n: usize| if n.is_multiple_of(4) { "clicks" } else { "views" };
    let records: Vec<String> = (0..200)
        .map(|n| format!(r#"{{"id":"t{n}","kind":"{}","op":"{}","at":"2026-12-07T10:00:00Z"}}"#, kind(n), operation(n)))
        .collect();
    put(&spillway.client().await, &records).await;
    let inserts = |table: &str| (0..200).filter(|n| kind(*n) == table && operation(*n) == "insert").count();
    let (clicks, _) = catalog.wait_rows("db.clicks", inserts("clicks")).await;
    let (views, _) = catalog.wait_rows("db.views", inserts("views")).await;
    assert_eq!((clicks.len(), views.len()), (inserts("clicks"), inserts("views")));
    assert!(clicks.values().all(|row| row["kind"] == "clicks"));
    let refused = |n: &usize| operation(*n) != "insert";
    common::eventually(WAIT, "every update, delete and upsert in the error output", || {
        (error_records(dir.path()).len() >= (0..200).filter(refused).count()).then_some(())
    })
    .await;
    let mut codes = BTreeMap::new();
    for record in error_records(dir.path()) {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(record["rawData"].as_str().unwrap()).unwrap();
        let row: Value = serde_json::from_slice(&raw).unwrap();
        let code = record["errorCode"].as_str().unwrap().to_string();
        assert!(record["errorMessage"].as_str().unwrap().contains(row["op"].as_str().unwrap()), "{record}");
        codes.entry(code).or_insert_with(BTreeSet::new).insert(row["op"].as_str().unwrap().to_string());
    }
    assert_eq!(
        codes,
        BTreeMap::from([
            ("Iceberg.InvalidOperation".to_string(), BTreeSet::from(["upsert".to_string()])),
            ("Iceberg.UnsupportedOperation".to_string(), BTreeSet::from(["DELETE".to_string(), "update".to_string()])),
        ])
    );
    catalog.assert_files_and_batches_once("db.clicks");
    catalog.assert_files_and_batches_once("db.views");
    assert_eq!(spillway.terminate(), 0);
}

/// A Lambda function in the test: returns every record unchanged with Firehose's `otfMetadata`
/// naming its table (`db.<kind>`) and operation (`op`).
async fn otf_function(body: axum::body::Bytes) -> axum::Json<Value> {
    use base64::Engine as _;
    let event: Value = serde_json::from_slice(&body).expect("event");
    let records = event["records"].as_array().cloned().unwrap_or_default();
    let answered: Vec<Value> = records
        .iter()
        .map(|record| {
            let data = base64::engine::general_purpose::STANDARD.decode(record["data"].as_str().unwrap()).unwrap();
            let row: Value = serde_json::from_slice(&data).unwrap();
            serde_json::json!({
                "recordId": record["recordId"],
                "result": "Ok",
                "data": record["data"],
                "metadata": { "otfMetadata": {
                    "destinationDatabaseName": "db",
                    "destinationTableName": row["kind"],
                    "operation": row["op"],
                } },
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "records": answered }))
}

/// Firehose's other way to route: a Lambda's `otfMetadata` names each record's database, table
/// and operation; the table comes from `!{partitionKeyFromLambda:…}` of those names, and an
/// `update` the function asks for is refused, not appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_lambda_s_otf_metadata_routes_records_to_their_table() {
    let catalog = Catalog::new("iceberg_otf").await;
    catalog.py("db.clicks", &["create", "plain"]);
    catalog.py("db.views", &["create", "plain"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/invoke", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/invoke", axum::routing::post(otf_function));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let processing = format!(
        "    processing:\n      dynamic_partitioning: {{ enabled: true }}\n      transforms:\n        - {{ type: lambda, url: '{url}', buffer_interval_seconds: 0 }}\n"
    );
    let table = "'!{partitionKeyFromLambda:destinationDatabaseName}.!{partitionKeyFromLambda:destinationTableName}'";
    let spillway = Spillway::start(dir.path(), &catalog.yaml_with(table, &processing));
    let records: Vec<String> = (0..60)
        .map(|n| {
            let kind = if n % 3 == 0 { "clicks" } else { "views" };
            let op = if n == 7 { "update" } else { "insert" };
            format!(r#"{{"id":"l{n}","kind":"{kind}","op":"{op}","at":"2026-12-07T10:00:00Z"}}"#)
        })
        .collect();
    put(&spillway.client().await, &records).await;
    let (clicks, _) = catalog.wait_rows("db.clicks", 20).await;
    let (views, _) = catalog.wait_rows("db.views", 39).await;
    assert_eq!((clicks.len(), views.len()), (20, 39));
    assert!(views.values().all(|row| row["kind"] == "views"));
    let errors = common::eventually(WAIT, "the update in the error output", || {
        let errors = error_records(dir.path());
        (!errors.is_empty()).then_some(errors)
    })
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["errorCode"], "Iceberg.UnsupportedOperation");
    assert_eq!(spillway.terminate(), 0);
}

#[derive(Default)]
struct Ledger {
    acknowledged: BTreeSet<String>,
    unknown: BTreeSet<String>,
}

/// `clients` tasks push batches of 100 unique records every 20 ms until `stop` is set or a call
/// fails (the server died).
async fn push_until_stopped(
    endpoint: String,
    clients: usize,
    tag: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let (endpoint, tag, ledger, stop) = (endpoint.clone(), tag.clone(), ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = common::firehose_client(&endpoint).await;
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let ids: Vec<String> = (0..100)
                    .map(|_| {
                        counter += 1;
                        format!("{tag}-c{client_index}-{counter}")
                    })
                    .collect();
                let records: Vec<Record> = ids
                    .iter()
                    .map(|id| {
                        let data = format!(
                            r#"{{"id":"{id}","client":{client_index},"at":"2026-12-07T0{}:00:00Z","kind":"k{}"}}"#,
                            counter % 3,
                            counter % 2
                        );
                        Record::builder().data(Blob::new(data)).build().unwrap()
                    })
                    .collect();
                let result =
                    client.put_record_batch().delivery_stream_name("rows").set_records(Some(records)).send().await;
                match result {
                    Ok(output) if output.failed_put_count() == 0 => ledger.lock().unwrap().acknowledged.extend(ids),
                    Ok(_) => panic!("batches are all or nothing"),
                    Err(error) if error.as_service_error().is_some_and(|e| e.is_service_unavailable_exception()) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(_) => {
                        ledger.lock().unwrap().unknown.extend(ids);
                        return;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigkill_rounds_with_pyiceberg_committing_beside_append_every_acknowledged_record_once() {
    sigkill_rounds(Catalog::new("iceberg_chaos").await, 10).await;
}

/// The same through a REST catalog, fewer rounds, and every fourth commit of spillway's
/// answered 500 by the server (applied or not): kills and ambiguous commits together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn rest_catalog_sigkill_rounds_with_unknown_commit_states_append_every_acknowledged_record_once() {
    let catalog = Catalog::rest("iceberg_rest_chaos", &["spillway.commit-faults=4"]).await;
    sigkill_rounds(catalog, 4).await;
}

/// `rounds` (or `SPILLWAY_CHAOS_ROUNDS`) seeded SIGKILL rounds under load, pyiceberg appending
/// beside spillway; then every acknowledged record is in the table once, nothing was invented,
/// and no data file or batch is in two snapshots.
async fn sigkill_rounds(catalog: Catalog, rounds: usize) {
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(20261207);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(rounds);
    let mut rng = StdRng::seed_from_u64(seed);
    let table = "db.chaos";
    catalog.py(table, &["create", "partitioned"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, catalog.yaml(table)).unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut python_rows = 0usize;
    for round in 0..rounds {
        // Rounds alternate: data files written some time before their commit (a kill often falls
        // between the two: orphan files), a commit answered some time after it (a kill there
        // leaves a committed batch to be re-sent), neither.
        let delay = rng.random_range(200..1500u64).to_string();
        let hook = match round % 3 {
            0 => "SPILLWAY_ICEBERG_TEST_COMMIT_DELAY_MS",
            1 => "SPILLWAY_ICEBERG_TEST_ACK_DELAY_MS",
            _ => "SPILLWAY_ICEBERG_TEST_NO_DELAY",
        };
        let spillway = catalog.start_spillway(dir.path(), &config, &[(hook, &delay)]);
        let stop = Arc::new(AtomicBool::new(false));
        let pushers = tokio::spawn(push_until_stopped(
            spillway.endpoint.clone(),
            3,
            format!("r{round}"),
            ledger.clone(),
            stop.clone(),
        ));
        // pyiceberg commits to the same table meanwhile.
        let first = (round * 10).to_string();
        catalog.py(table, &["append", &first, "10"]);
        python_rows += 10;
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
        spillway.kill();
        stop.store(true, Ordering::Relaxed);
        pushers.await.unwrap();
    }
    let final_run = catalog.start_spillway(dir.path(), &config, &[]);
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.acknowledged.len() > 1000, "the clients got work done: {}", ledger.acknowledged.len());
    let (rows, _) = catalog.wait_rows(table, ledger.acknowledged.len() + python_rows).await;
    let missing: Vec<_> = ledger.acknowledged.iter().filter(|id| !rows.contains_key(*id)).take(5).collect();
    assert!(missing.is_empty(), "seed {seed}: acknowledged records missing: {missing:?}");
    let python: usize = rows.keys().filter(|id| id.starts_with("py-")).count();
    assert_eq!(python, python_rows, "seed {seed}: pyiceberg's rows");
    let invented: Vec<_> = rows
        .keys()
        .filter(|id| !id.starts_with("py-") && !ledger.acknowledged.contains(*id) && !ledger.unknown.contains(*id))
        .take(5)
        .collect();
    assert!(invented.is_empty(), "seed {seed}: rows nobody sent: {invented:?}");
    let (files, batches) = catalog.assert_files_and_batches_once(table);
    assert_eq!(final_run.terminate(), 0);
    // Data files in the bucket that no snapshot references: written by an attempt killed before
    // its commit (or whose commit the server refused).
    let bucket = catalog.warehouse.trim_start_matches("s3://").split('/').next().unwrap().to_string();
    let s3 = common::s3::client().await;
    let stored = common::s3::objects(&s3, &bucket, "warehouse/").await;
    let parquet_objects = stored.iter().filter(|(key, _)| key.ends_with(".parquet")).count();
    let orphans = parquet_objects.saturating_sub(files);
    let logs = spillway_logs(dir.path());
    let already = logs.matches("batch already committed, not appended again").count();
    let faults = catalog.rest.as_ref().map_or(0, |server| server.log_text().matches("spillway-fault:").count());
    eprintln!(
        "seed {seed}: {rounds} SIGKILL rounds through the {}, {} acknowledged, {} unknown at a kill, {} rows, {files} live data \
         files, {batches} spillway commits, {already} re-sent batches found already committed, {faults} commits answered 500 \
         by the server, {orphans} orphan data files (kills between files and commit)",
        if catalog.rest.is_some() { "rest catalog" } else { "sql catalog" },
        ledger.acknowledged.len(),
        ledger.unknown.len(),
        rows.len()
    );
}

/// Every log file spillway wrote under `dir`, one text.
fn spillway_logs(dir: &std::path::Path) -> String {
    common::files_under(dir)
        .iter()
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .collect()
}

/// Through a REST catalog (OAuth2 client credentials from `${ENV}`, tokens the server refuses
/// after a few requests): a table pyiceberg created is appended to, and pyiceberg's
/// `RestCatalog` reads every row with its type; `validate --connect` loads the table through the
/// server; the credential and tokens appear in no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn rest_catalog_appends_read_back_by_pyiceberg_with_their_types() {
    let catalog = Catalog::rest("iceberg_rest_types", &["spillway.token-uses=12"]).await;
    let table = "db.events";
    catalog.py(table, &["create", "partitioned"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, catalog.yaml(table)).unwrap();
    let (passed, output) = catalog.validate_connect(dir.path(), &config);
    assert!(passed, "{output}");
    assert!(output.contains(&format!("iceberg table db.events in rest catalog {}", catalog.uri)), "{output}");
    assert!(output.contains("partitioned by day(at_day), identity(kind), bucket[4](id_bucket)"), "{output}");

    let spillway = catalog.start_spillway(dir.path(), &config, &[]);
    let client = spillway.client().await;
    let mut sent = 0;
    // Several batches, so tokens run out and are renewed between them.
    for part in 0..6 {
        let records: Vec<String> = (0..50)
            .map(|k| {
                let n = part * 50 + k;
                format!(
                    r#"{{"id":"r{n}","client":{},"amount":{n}.5,"at":"2026-12-0{}T10:00:00Z","kind":"{}","tags":["a","b{n}"],"attrs":{{"n":{n}}}}}"#,
                    n % 7,
                    1 + n % 3,
                    ["click", "view"][n % 2]
                )
            })
            .collect();
        put(&client, &records).await;
        sent += records.len();
        catalog.wait_rows(table, sent).await;
    }
    put(&client, &[r#"{"id":"bad-int","client":"seven"}"#.to_string()]).await;
    let (rows, types) = catalog.wait_rows(table, 300).await;
    assert_eq!(rows.len(), 300);
    assert_eq!(types["id"], "string", "{types}");
    assert!(types["tags"].as_str().is_some_and(|tags| tags.contains("list<element: ")), "{types}");
    assert_eq!(types["attrs"], "struct<n: int64>");
    assert_eq!(types["client"], "int32");
    assert_eq!(types["amount"], "double");
    assert_eq!(types["at"], "timestamp[us, tz=UTC]");
    let r7 = &rows["r7"];
    assert_eq!((r7["client"].clone(), r7["amount"].clone()), (serde_json::json!(0), serde_json::json!(7.5)));
    assert_eq!(r7["at"], "2026-12-02T10:00:00+00:00");
    assert_eq!(r7["tags"], serde_json::json!(["a", "b7"]));
    assert_eq!(r7["attrs"], serde_json::json!({"n": 7}));
    let errors = common::eventually(WAIT, "the misfit in the error output", || {
        let found = error_records(dir.path());
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(errors[0]["errorCode"], "DataFormatConversion.MalformedData");
    let (files, batches) = catalog.assert_files_and_batches_once(table);
    assert!(batches >= 6, "{batches} batches");
    assert_eq!(spillway.terminate(), 0);

    let server_log = catalog.rest_server().log_text();
    let tokens = server_log.matches("spillway-token: issued to spillway").count();
    assert!(tokens >= 2, "spillway asked for a new token once one was refused: {tokens} tokens\n{server_log}");
    let logs = spillway_logs(dir.path());
    assert!(logs.contains("Iceberg.CatalogAccessDenied"), "a refused token is named");
    let secret = SPILLWAY_CLIENT.split_once(':').unwrap().1;
    assert!(!logs.contains(secret) && !logs.contains("issued-"), "a credential or token in spillway's log");
    eprintln!("{files} data files, {batches} commits, {tokens} tokens issued to spillway");
}

/// A commit the server applies but answers 500, and one it answers 500 without applying (every
/// second commit of spillway's, alternately): the next attempt reads the snapshots, finds the
/// first batch committed and commits the second, so every record is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn rest_catalog_commits_of_unknown_state_are_settled_from_the_snapshots() {
    let catalog = Catalog::rest("iceberg_rest_unknown", &["spillway.commit-faults=2"]).await;
    let table = "db.unknown";
    catalog.py(table, &["create", "plain"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, catalog.yaml(table)).unwrap();
    let spillway = catalog.start_spillway(dir.path(), &config, &[]);
    let client = spillway.client().await;
    let mut sent = 0;
    for part in 0..6 {
        let records: Vec<String> = (0..40).map(|k| format!(r#"{{"id":"u{}"}}"#, part * 40 + k)).collect();
        put(&client, &records).await;
        sent += records.len();
        catalog.wait_rows(table, sent).await;
    }
    let (rows, _) = catalog.wait_rows(table, sent).await;
    assert_eq!(rows.len(), sent);
    catalog.assert_files_and_batches_once(table);
    let server_log = catalog.rest_server().log_text();
    let faults = server_log.matches("spillway-fault:").count();
    assert!(server_log.contains(" applied, answered 500"), "{server_log}");
    assert!(server_log.contains(" not applied, answered 500"), "{server_log}");
    let already = spillway.metric("spillway_sink_requests_total{stream=\"rows\",outcome=\"already_committed\"}").await;
    assert!(already.is_some_and(|count| count >= 1.0), "a batch found committed: {already:?}");
    assert_eq!(spillway.terminate(), 0);
    let logs = spillway_logs(dir.path());
    assert!(logs.contains("Iceberg.CommitStateUnknown"), "the unknown commit state is named");
    assert!(logs.contains("batch already committed, not appended again"));
    eprintln!("{faults} commits answered 500, {} batches", rows.len() / 40);
}

/// `validate --connect` through a REST catalog names what is wrong: a missing table, a missing
/// namespace, a refused credential, an unreachable server; no secret is echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn rest_catalog_problems_are_named_at_validate_connect() {
    let catalog = Catalog::rest("iceberg_rest_errors", &[]).await;
    catalog.py("db.present", &["create", "plain"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    let check = |yaml: String| {
        std::fs::write(&config, yaml).unwrap();
        let (passed, output) = catalog.validate_connect(dir.path(), &config);
        assert!(!passed, "{output}");
        output
    };
    let missing_table = check(catalog.yaml("db.absent"));
    assert!(
        missing_table.contains(&format!("table db.absent does not exist in the rest catalog {}", catalog.uri)),
        "{missing_table}"
    );
    let missing_namespace = check(catalog.yaml("nowhere.events"));
    assert!(
        missing_namespace.contains("table nowhere.events does not exist in the rest catalog"),
        "{missing_namespace}"
    );
    assert!(missing_namespace.contains("Iceberg.TableNotFound"), "{missing_namespace}");

    let refused =
        check(catalog.yaml("db.present").replace("${SPILLWAY_TEST_REST_CREDENTIAL}", "spillway:wrong-secret-5d1"));
    assert!(refused.contains("refused spillway's credentials"), "{refused}");
    assert!(refused.contains("Iceberg.CatalogAccessDenied"), "{refused}");
    assert!(!refused.contains("wrong-secret-5d1"), "the credential is echoed: {refused}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = check(catalog.yaml("db.present").replace(&catalog.uri, &format!("http://127.0.0.1:{closed}")));
    assert!(
        unreachable.contains(&format!("the rest catalog http://127.0.0.1:{closed} cannot be reached")),
        "{unreachable}"
    );
    assert!(unreachable.contains("Iceberg.CatalogUnavailable"), "{unreachable}");

    // https:// to a server that speaks plain HTTP: the TLS handshake (rustls with aws-lc-rs)
    // fails, and says so.
    let https_uri = catalog.uri.replace("http://", "https://");
    let not_tls = check(catalog.yaml("db.present").replace(&catalog.uri, &https_uri));
    assert!(not_tls.contains(&format!("the rest catalog {https_uri} cannot be reached")), "{not_tls}");

    std::fs::write(&config, catalog.yaml("db.present")).unwrap();
    let (passed, output) = catalog.validate_connect(dir.path(), &config);
    assert!(passed, "{output}");
    assert!(!output.contains(SPILLWAY_CLIENT.split_once(':').unwrap().1), "{output}");
}

/// A stream created through the Firehose API with the Rust SDK's
/// `IcebergDestinationConfiguration` (catalog from `api_defaults.iceberg_catalog`), fed, described;
/// what spillway cannot do (`UniqueKeys`) is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn an_iceberg_stream_created_through_the_firehose_api() {
    use aws_sdk_firehose::types::{
        BufferingHints, CatalogConfiguration, DeliveryStreamStatus, DestinationTableConfiguration,
        IcebergDestinationConfiguration, S3DestinationConfiguration,
    };
    let catalog = Catalog::new("iceberg_api").await;
    catalog.py("db.api", &["create", "partitioned"]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, shutdown_grace_seconds: 60 }}\n\
         data_dir: ./data\n\
         api_defaults:\n\
         \x20 iceberg_catalog: {{ type: sql, uri: '{uri}', warehouse: 's3://unused/elsewhere' }}\n\
         \x20 s3:\n\
         \x20   url: 'file://./buckets/{{bucket}}'\n\
         \x20   endpoint: ${{SPILLWAY_TEST_S3_ENDPOINT}}\n\
         \x20   region: ${{SPILLWAY_TEST_S3_REGION}}\n\
         \x20   access_key_id: ${{SPILLWAY_TEST_S3_ACCESS_KEY}}\n\
         \x20   secret_access_key: ${{SPILLWAY_TEST_S3_SECRET_KEY}}\n",
        uri = catalog.uri
    );
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let destination = |unique_keys: Vec<String>| {
        IcebergDestinationConfiguration::builder()
            .destination_table_configuration_list(
                DestinationTableConfiguration::builder()
                    .destination_database_name("db")
                    .destination_table_name("api")
                    .set_unique_keys((!unique_keys.is_empty()).then_some(unique_keys))
                    .s3_error_output_prefix("iceberg-errors/")
                    .build()
                    .unwrap(),
            )
            .buffering_hints(BufferingHints::builder().size_in_mbs(1).interval_in_seconds(1).build())
            .role_arn("arn:aws:iam::123456789012:role/firehose")
            .catalog_configuration(
                CatalogConfiguration::builder()
                    .catalog_arn("arn:aws:glue:us-east-1:123456789012:catalog")
                    .warehouse_location(catalog.warehouse.clone())
                    .build(),
            )
            .s3_configuration(
                S3DestinationConfiguration::builder()
                    .role_arn("arn:aws:iam::123456789012:role/firehose")
                    .bucket_arn("arn:aws:s3:::api-backup")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let refused = client
        .create_delivery_stream()
        .delivery_stream_name("upserts")
        .iceberg_destination_configuration(destination(vec!["id".into()]))
        .send()
        .await
        .expect_err("UniqueKeys are refused");
    let refused = format!("{:?}", refused.into_service_error());
    assert!(refused.contains("InvalidArgumentException") && refused.contains("UniqueKeys"), "{refused}");

    client
        .create_delivery_stream()
        .delivery_stream_name("rows")
        .iceberg_destination_configuration(destination(Vec::new()))
        .send()
        .await
        .expect("create");
    let deadline = Instant::now() + WAIT;
    let described = loop {
        let described = client.describe_delivery_stream().delivery_stream_name("rows").send().await.expect("describe");
        let description = described.delivery_stream_description().cloned().expect("description");
        if description.delivery_stream_status() == &DeliveryStreamStatus::Active {
            break description;
        }
        assert!(Instant::now() < deadline, "stream not active: {:?}", description.delivery_stream_status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let iceberg = described.destinations()[0].iceberg_destination_description().expect("iceberg description");
    assert_eq!(iceberg.destination_table_configuration_list()[0].destination_table_name(), "api");
    assert_eq!(iceberg.destination_table_configuration_list()[0].destination_database_name(), "db");
    let catalog_described = iceberg.catalog_configuration().expect("catalog");
    assert_eq!(catalog_described.catalog_arn(), Some("arn:aws:glue:us-east-1:123456789012:catalog"));
    assert_eq!(catalog_described.warehouse_location(), Some(catalog.warehouse.as_str()));

    let records: Vec<String> =
        (0..120).map(|n| format!(r#"{{"id":"api{n}","kind":"k","at":"2026-12-07T10:00:00Z"}}"#)).collect();
    put(&client, &records).await;
    put(&client, &["not json".to_string()]).await;
    let (rows, _) = catalog.wait_rows("db.api", 120).await;
    assert_eq!(rows.len(), 120);
    let errors = common::eventually(WAIT, "the misfit in the backup bucket's error prefix", || {
        let found = common::local_json_lines(&dir.path().join("buckets/api-backup"), "iceberg-errors/");
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(errors[0]["errorCode"], "DataFormatConversion.ParseError");
    assert_eq!(spillway.terminate(), 0);
}
