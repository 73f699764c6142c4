//! `mode: s3_manifest` (Redshift) against the real MinIO and PostgreSQL of `scripts/services.sh`.
//! PostgreSQL cannot run `COPY … FROM 's3://…' MANIFEST`, so the COPY step is an emulated
//! Redshift: it is handed the exact statement, reads the manifest that statement names from
//! MinIO, reads every object the manifest lists, and loads their JSON lines into the table inside
//! the sink's own transaction. Everything around it is the sink's real code against the real
//! services: staging through the S3 sink, the manifest, the transaction with the batch id
//! (idempotency), rollback on a failed COPY, the conformance suite, and the failed manifest under
//! `errors/manifests/`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use spillway_sink_api::testkit::{ReadBack, check_conformance, encode_batch};
use spillway_sink_api::{Batch, PartitionKeys, Record};
use spillway_sink_postgres::error::PgError;
use spillway_sink_postgres::{CopyExecutor, ManifestCopy, PostgresSinkConfig, REDSHIFT_FAILED_OUTPUT_TYPE};
use tokio_postgres::{Client, NoTls, Transaction};
use uuid::Uuid;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test.sh (it starts the services)"))
}

async fn connect() -> Client {
    let (client, connection) = tokio_postgres::connect(&env("SPILLWAY_TEST_PG_URL"), NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12])
}

fn bucket() -> String {
    env("SPILLWAY_TEST_S3_BUCKET")
}

fn minio() -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(env("SPILLWAY_TEST_S3_ENDPOINT"))
            .with_allow_http(true)
            .with_region(env("SPILLWAY_TEST_S3_REGION"))
            .with_access_key_id(env("SPILLWAY_TEST_S3_ACCESS_KEY"))
            .with_secret_access_key(env("SPILLWAY_TEST_S3_SECRET_KEY"))
            .with_bucket_name(bucket())
            .build()
            .expect("minio store"),
    )
}

/// The s3_manifest sink block: staging on the test MinIO under `prefix`, uncompressed, errors
/// of other types into `errors`.
fn config(table: &str, prefix: &str, errors: &std::path::Path) -> PostgresSinkConfig {
    let block = serde_json::json!({
        "url": env("SPILLWAY_TEST_PG_URL"),
        "mode": "s3_manifest",
        "table": table,
        "columns": ["sequence", "message"],
        "copy_options": "JSON 'auto' TIMEFORMAT 'auto'",
        "iam_role": "arn:aws:iam::123456789012:role/spillway-copy",
        "s3_staging": {
            "url": format!("s3://{}", bucket()),
            "prefix": prefix,
            "endpoint": env("SPILLWAY_TEST_S3_ENDPOINT"),
            "region": env("SPILLWAY_TEST_S3_REGION"),
            "access_key_id": env("SPILLWAY_TEST_S3_ACCESS_KEY"),
            "secret_access_key": env("SPILLWAY_TEST_S3_SECRET_KEY"),
        },
        "backup": { "sink": { "url": format!("file://{}", errors.display()) } },
    });
    serde_json::from_value(block).expect("sink block")
}

/// An emulated Redshift COPY (see the module header).
struct EmulatedRedshift {
    store: Arc<dyn ObjectStore>,
    table: String,
    statements: Mutex<Vec<String>>,
    /// Fail the next COPY after its rows are in (the transaction must roll them back).
    fail_next_after_rows: AtomicBool,
    copies: AtomicUsize,
}

impl EmulatedRedshift {
    fn new(table: &str) -> Arc<Self> {
        Arc::new(Self {
            store: minio(),
            table: table.to_string(),
            statements: Mutex::new(Vec::new()),
            fail_next_after_rows: AtomicBool::new(false),
            copies: AtomicUsize::new(0),
        })
    }

    async fn get(&self, url: &str) -> Vec<u8> {
        let key = url.strip_prefix(&format!("s3://{}/", bucket())).expect("a url in the test bucket");
        self.store.get(&Path::from(key)).await.expect("object exists").bytes().await.expect("body").to_vec()
    }
}

/// The `FROM '<url>'` of a COPY statement.
fn from_url(statement: &str) -> &str {
    let after = &statement[statement.find(" FROM '").expect("FROM") + " FROM '".len()..];
    &after[..after.find('\'').expect("closing quote")]
}

#[async_trait]
impl CopyExecutor for EmulatedRedshift {
    async fn copy(&self, transaction: &Transaction<'_>, copy: &ManifestCopy) -> Result<u64, PgError> {
        self.copies.fetch_add(1, Ordering::SeqCst);
        self.statements.lock().unwrap().push(copy.statement.clone());
        // As Redshift: the manifest the statement names, then every object it lists.
        let manifest: serde_json::Value = serde_json::from_slice(&self.get(from_url(&copy.statement)).await).unwrap();
        let mut records = Vec::new();
        for entry in manifest["entries"].as_array().expect("entries") {
            assert_eq!(entry["mandatory"], true);
            let body = self.get(entry["url"].as_str().expect("url")).await;
            for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
                records.push(serde_json::from_slice::<serde_json::Value>(line).expect("a JSON record"));
            }
        }
        let rows = transaction
            .execute(
                &format!(
                    "INSERT INTO {} (sequence, message) SELECT sequence, message FROM json_populate_recordset(null::{}, $1::text::json)",
                    self.table, self.table
                ),
                &[&serde_json::Value::Array(records).to_string()],
            )
            .await?;
        if self.fail_next_after_rows.swap(false, Ordering::SeqCst) {
            return Err(PgError::Protocol("injected: the COPY failed after loading its rows".into()));
        }
        Ok(rows)
    }
}

fn records(count: u64, first_sequence: u64) -> Vec<Record> {
    (first_sequence..first_sequence + count)
        .map(|sequence| Record {
            data: Bytes::from(format!("{{\"sequence\":{sequence},\"message\":\"row {sequence}\"}}\n")),
            arrival_ms: 1_764_000_000_000,
            sequence,
            output: 0,
        })
        .collect()
}

async fn build(
    stream: &str,
    table: &str,
    prefix: &str,
    errors: &std::path::Path,
    executor: Arc<EmulatedRedshift>,
) -> spillway_sink_api::BuiltSink {
    config(table, prefix, errors).build_redshift(stream, 1, executor).await.expect("build")
}

async fn keys_under(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let listed: Vec<_> = store.list(Some(&Path::from(prefix))).try_collect().await.expect("list");
    let mut keys: Vec<String> = listed.into_iter().map(|meta| meta.location.to_string()).collect();
    keys.sort();
    keys
}

async fn count(client: &Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_batch_is_staged_listed_in_a_manifest_and_copied_once_with_its_batch_id() {
    let client = connect().await;
    let table = unique("redshift");
    client.batch_execute(&format!("CREATE TABLE {table} (sequence bigint, message text)")).await.unwrap();
    let prefix = format!("{}/", unique("staging"));
    let errors = tempfile::tempdir().unwrap();
    let redshift = EmulatedRedshift::new(&table);
    let built = build("redshift-test", &table, &prefix, errors.path(), redshift.clone()).await;

    let batch =
        encode_batch(built.encoders.as_ref(), "redshift-test", Uuid::new_v4(), PartitionKeys::new(), &records(100, 0));
    built.sink.write(&batch).await.expect("loaded");
    assert_eq!(count(&client, &table).await, 100);

    // Staged: one object and its manifest, under Firehose's layout.
    let store = minio();
    let keys = keys_under(store.as_ref(), &prefix).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    let name = format!("redshift-test-1-2025-11-24-16-00-00-{}", batch.id);
    let object_key = format!("{prefix}2025/11/24/16/{name}");
    let manifest_key = format!("{prefix}manifests/2025/11/24/16/{name}");
    assert_eq!(keys, [object_key.clone(), manifest_key.clone()]);
    let manifest = store.get(&Path::from(manifest_key.as_str())).await.unwrap().bytes().await.unwrap();
    let object_url = format!("s3://{}/{object_key}", bucket());
    assert_eq!(
        std::str::from_utf8(&manifest).unwrap(),
        format!(r#"{{"entries":[{{"url":"{object_url}","mandatory":true}}]}}"#)
    );
    // The exact statement Redshift would run.
    let statements = redshift.statements.lock().unwrap().clone();
    assert_eq!(
        statements,
        [format!(
            "COPY {table} (\"sequence\", \"message\") FROM 's3://{}/{manifest_key}' \
             CREDENTIALS 'aws_iam_role=arn:aws:iam::123456789012:role/spillway-copy' MANIFEST JSON 'auto' TIMEFORMAT 'auto'",
            bucket()
        )]
    );
    // The batch id, committed with the rows.
    let recorded = client
        .query_one(
            "SELECT row_count FROM spillway_batches WHERE stream = 'redshift-test' AND batch_id = $1::text::uuid",
            &[&batch.id.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(recorded.get::<_, i64>(0), 100);

    // Re-sent (a retry after a lost acknowledgement, a restart): acknowledged, not loaded again.
    built.sink.write(&batch).await.expect("acknowledged");
    assert_eq!(count(&client, &table).await, 100);
    assert_eq!(redshift.copies.load(Ordering::SeqCst), 1, "no second COPY");
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_copy_that_fails_leaves_nothing_and_the_retry_loads_the_batch_once() {
    let client = connect().await;
    let table = unique("redshift_rollback");
    client.batch_execute(&format!("CREATE TABLE {table} (sequence bigint, message text)")).await.unwrap();
    let prefix = format!("{}/", unique("staging"));
    let errors = tempfile::tempdir().unwrap();
    let redshift = EmulatedRedshift::new(&table);
    let built = build("redshift-test", &table, &prefix, errors.path(), redshift.clone()).await;
    let batch =
        encode_batch(built.encoders.as_ref(), "redshift-test", Uuid::new_v4(), PartitionKeys::new(), &records(40, 7));

    redshift.fail_next_after_rows.store(true, Ordering::SeqCst);
    let error = built.sink.write(&batch).await.expect_err("the COPY failed");
    assert!(error.is_retriable(), "{error}");
    assert_eq!(count(&client, &table).await, 0, "the rows of the failed COPY were rolled back");
    let recorded: i64 = client
        .query_one(
            "SELECT count(*) FROM spillway_batches WHERE stream = 'redshift-test' AND batch_id = $1::text::uuid",
            &[&batch.id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0, "no batch id without its rows");

    built.sink.write(&batch).await.expect("the retry loads");
    built.sink.write(&batch).await.expect("and a third send is acknowledged");
    assert_eq!(count(&client, &table).await, 40);
    assert_eq!(redshift.copies.load(Ordering::SeqCst), 2);
    // The retry overwrote its own object and manifest: still two keys.
    assert_eq!(keys_under(minio().as_ref(), &prefix).await.len(), 2);
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_batch_given_up_on_gets_its_manifest_under_errors_manifests() {
    let table = unique("redshift_failed");
    let prefix = format!("{}/", unique("staging"));
    let errors = tempfile::tempdir().unwrap();
    let built = build("redshift-test", &table, &prefix, errors.path(), EmulatedRedshift::new(&table)).await;
    let batch =
        encode_batch(built.encoders.as_ref(), "redshift-test", Uuid::new_v4(), PartitionKeys::new(), &records(5, 0));
    let lines = b"{\"errorCode\":\"Postgres.42P01\",\"errorMessage\":\"relation does not exist\"}\n".to_vec();

    // What the pipeline does once the retry duration is over (the staging may never have happened).
    built.error_output.write_error_records(&batch, REDSHIFT_FAILED_OUTPUT_TYPE, lines.clone()).await.expect("routed");
    built.error_output.write_error_records(&batch, REDSHIFT_FAILED_OUTPUT_TYPE, lines).await.expect("replayed");

    let store = minio();
    let name = format!("redshift-test-1-2025-11-24-16-00-00-{}", batch.id);
    let object_key = format!("{prefix}2025/11/24/16/{name}");
    let error_manifest_key = format!("{prefix}errors/manifests/2025/11/24/16/{name}");
    assert_eq!(keys_under(store.as_ref(), &prefix).await, [object_key.clone(), error_manifest_key.clone()]);
    let manifest = store.get(&Path::from(error_manifest_key.as_str())).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        std::str::from_utf8(&manifest).unwrap(),
        format!(r#"{{"entries":[{{"url":"s3://{}/{object_key}","mandatory":true}}]}}"#, bucket())
    );
    let staged = store.get(&Path::from(object_key.as_str())).await.unwrap().bytes().await.unwrap();
    let expected: Vec<u8> = records(5, 0).iter().flat_map(|record| record.data.to_vec()).collect();
    assert_eq!(staged.to_vec(), expected, "the manifest's object holds the batch's records");
    assert!(std::fs::read_dir(errors.path()).map(|mut entries| entries.next().is_none()).unwrap_or(true));
}

/// Rows of the table for a recorded batch id, as the sample records were sent; error output
/// objects from the local backup folder.
struct TableReadBack {
    client: Client,
    table: String,
    errors: std::path::PathBuf,
}

#[async_trait]
impl ReadBack for TableReadBack {
    async fn read_back(&self, batch: &Batch) -> Vec<Vec<u8>> {
        let recorded = self
            .client
            .query_opt(
                "SELECT 1 FROM spillway_batches WHERE stream = $1 AND batch_id = $2::text::uuid",
                &[&batch.stream, &batch.id.to_string()],
            )
            .await
            .unwrap();
        if recorded.is_none() {
            return Vec::new();
        }
        let rows = self
            .client
            .query(&format!("SELECT sequence, message FROM {} ORDER BY sequence", self.table), &[])
            .await
            .unwrap();
        let body: Vec<u8> = rows
            .iter()
            .flat_map(|row| {
                let (sequence, message): (i64, String) = (row.get(0), row.get(1));
                format!("{{\"sequence\":{sequence},\"message\":\"{message}\"}}\n").into_bytes()
            })
            .collect();
        vec![body]
    }

    async fn read_error_output(&self, batch: &Batch, error_output_type: &str) -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        let mut pending = vec![self.errors.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let name = path.to_string_lossy().to_string();
                if path.is_dir() {
                    pending.push(path);
                } else if name.contains(error_output_type) && name.contains(&batch.id.to_string()) {
                    found.push(std::fs::read(&path).unwrap());
                }
            }
        }
        found
    }
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn redshift_sink_passes_conformance() {
    let client = connect().await;
    let table = unique("redshift_conformance");
    client.batch_execute(&format!("CREATE TABLE {table} (sequence bigint, message text)")).await.unwrap();
    let prefix = format!("{}/", unique("staging"));
    let errors = tempfile::tempdir().unwrap();
    let built = build("conformance", &table, &prefix, errors.path(), EmulatedRedshift::new(&table)).await;
    let reader = TableReadBack { client, table, errors: errors.path().to_path_buf() };
    check_conformance(
        built.sink.as_ref(),
        built.error_output.as_ref(),
        built.encoders.as_ref(),
        &reader,
        "conformance",
        PartitionKeys::new(),
    )
    .await;
}
