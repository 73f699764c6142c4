//! The Iceberg sink end to end: a SQL catalog in the services' PostgreSQL (a fresh database per
//! test), the warehouse in MinIO, tables created, read, appended to and inspected by pyiceberg
//! (`tests/services/python/iceberg_table.py`), records through the Firehose API of the real
//! binary. Partitioned appends read back with their types, misfits in the error output, a
//! missing table (`validate --connect`, then delivery once it exists), pyiceberg committing
//! beside spillway, and seeded SIGKILL rounds, with kills between data files and commit.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
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

/// A catalog database and a warehouse bucket of the test's own.
struct Catalog {
    uri: String,
    warehouse: String,
}

impl Catalog {
    async fn new(prefix: &str) -> Catalog {
        let uri = pg::fresh_database(prefix).await;
        let s3 = common::s3::client().await;
        let bucket = common::s3::new_bucket(&s3).await;
        Catalog { uri, warehouse: format!("s3://{bucket}/warehouse") }
    }

    /// Run the pyiceberg script; its JSON answer.
    fn py(&self, table: &str, args: &[&str]) -> Value {
        let output = Command::new(env("SPILLWAY_TEST_PYTHON"))
            .arg(SCRIPT)
            .args([&self.uri, &self.warehouse, table])
            .args(args)
            .output()
            .expect("run pyiceberg");
        assert!(output.status.success(), "pyiceberg {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("pyiceberg answers JSON")
    }

    fn sink_yaml(&self, table: &str) -> String {
        format!(
            "    sink:\n\
             \x20     type: iceberg\n\
             \x20     catalog: {{ type: sql, uri: '{uri}', warehouse: '{warehouse}' }}\n\
             \x20     table: {table}\n\
             \x20     s3:\n\
             \x20       endpoint: ${{SPILLWAY_TEST_S3_ENDPOINT}}\n\
             \x20       region: ${{SPILLWAY_TEST_S3_REGION}}\n\
             \x20       access_key_id: ${{SPILLWAY_TEST_S3_ACCESS_KEY}}\n\
             \x20       secret_access_key: ${{SPILLWAY_TEST_S3_SECRET_KEY}}\n\
             \x20     backup: {{ sink: {{ url: 'file://./errors', error_output_prefix: 'errors/!{{firehose:error-output-type}}/' }} }}\n",
            uri = self.uri,
            warehouse = self.warehouse,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn partition_keys_route_one_stream_to_several_tables() {
    let catalog = Catalog::new("iceberg_routes").await;
    catalog.py("db.clicks", &["create", "plain"]);
    catalog.py("db.views", &["create", "partitioned"]);
    let dir = tempfile::tempdir().unwrap();
    let routing = "    processing:\n      dynamic_partitioning: { keys: { t: .kind } }\n";
    let spillway = Spillway::start(dir.path(), &catalog.yaml_with("'db.!{partitionKeyFromQuery:t}'", routing));
    let records: Vec<String> = (0..200)
        .map(|n| {
            let kind = if n % 4 == 0 { "clicks" } else { "views" };
            format!(r#"{{"id":"t{n}","kind":"{kind}","at":"2026-12-07T10:00:00Z"}}"#)
        })
        .collect();
    put(&spillway.client().await, &records).await;
    let (clicks, _) = catalog.wait_rows("db.clicks", 50).await;
    let (views, _) = catalog.wait_rows("db.views", 150).await;
    assert_eq!((clicks.len(), views.len()), (50, 150));
    assert!(clicks.values().all(|row| row["kind"] == "clicks"));
    catalog.assert_files_and_batches_once("db.clicks");
    catalog.assert_files_and_batches_once("db.views");
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
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(20261207);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let catalog = Catalog::new("iceberg_chaos").await;
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
        let spillway = Spillway::start_with_env(dir.path(), &config, &[(hook, &delay)], &[]);
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
    let final_run = Spillway::start_with_config(dir.path(), &config);
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
    // its commit.
    let bucket = catalog.warehouse.trim_start_matches("s3://").split('/').next().unwrap().to_string();
    let s3 = common::s3::client().await;
    let stored = common::s3::objects(&s3, &bucket, "warehouse/").await;
    let parquet_objects = stored.iter().filter(|(key, _)| key.ends_with(".parquet")).count();
    let orphans = parquet_objects.saturating_sub(files);
    let logs: String = common::files_under(dir.path())
        .iter()
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .collect();
    let already = logs.matches("batch already committed, not appended again").count();
    eprintln!(
        "seed {seed}: {rounds} SIGKILL rounds, {} acknowledged, {} unknown at a kill, {} rows, {files} live data files, \
         {batches} spillway commits, {already} re-sent batches found already committed, {orphans} orphan data files \
         (kills between files and commit)",
        ledger.acknowledged.len(),
        ledger.unknown.len(),
        rows.len()
    );
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
