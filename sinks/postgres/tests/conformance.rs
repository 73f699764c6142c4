//! The sink conformance suite (`spillway_sink_api::testkit`) and the sink's own contract against
//! the real PostgreSQL of `scripts/services.sh`: a re-sent batch id is acknowledged with the
//! same outcome (row failures included) without loading again.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use spillway_sink_api::testkit::{ReadBack, check_conformance, encode_batch};
use spillway_sink_api::{Batch, ErrorClass, PartitionKeys, Record, Sink};
use spillway_sink_postgres::PostgresSinkConfig;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

fn url() -> String {
    std::env::var("SPILLWAY_TEST_PG_URL")
        .expect("SPILLWAY_TEST_PG_URL is not set: run scripts/test.sh (it starts the services)")
}

async fn connect() -> Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12])
}

fn config(table: &str, errors: &std::path::Path) -> PostgresSinkConfig {
    let block = serde_json::json!({
        "url": url(),
        "table": table,
        "backup": { "sink": { "url": format!("file://{}", errors.display()) } },
    });
    serde_json::from_value(block).expect("sink block")
}

/// Rows of the table as the sample records were sent, if the batch id was recorded.
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
async fn postgres_sink_passes_conformance() {
    let client = connect().await;
    let table = unique("conformance");
    client.batch_execute(&format!("CREATE TABLE {table} (sequence bigint, message text)")).await.unwrap();
    let errors = tempfile::tempdir().unwrap();
    let sink = config(&table, errors.path()).build("conformance").await.expect("build");
    let reader = TableReadBack { client, table, errors: errors.path().to_path_buf() };
    let error_output = sink.error_output();
    check_conformance(
        &sink,
        error_output.as_ref(),
        &sink.encoder_factory(),
        &reader,
        "conformance",
        PartitionKeys::new(),
    )
    .await;
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_resent_batch_returns_the_same_row_failures_without_loading_again() {
    let client = connect().await;
    let table = unique("resend");
    client.batch_execute(&format!("CREATE TABLE {table} (id integer NOT NULL, note text)")).await.unwrap();
    let errors = tempfile::tempdir().unwrap();
    let sink = config(&table, errors.path()).build("resend").await.expect("build");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let data = [r#"{"id":1}"#, r#"{"id":"two"}"#, "not json", r#"{"id":4,"note":"ok"}"#, r#"{"note":"no id"}"#];
    let records: Vec<Record> = data
        .iter()
        .enumerate()
        .map(|(index, data)| Record {
            data: Bytes::from(data.to_string()),
            arrival_ms: now,
            sequence: index as u64,
            output: 0,
        })
        .collect();
    let batch = encode_batch(&sink.encoder_factory(), "resend", Uuid::new_v4(), PartitionKeys::new(), &records);

    let first = sink.write(&batch).await.expect_err("row failures are reported");
    assert_eq!(first.class, ErrorClass::Partial);
    let outcome: Vec<(usize, bool, String)> =
        first.failures.iter().map(|failure| (failure.index, failure.retriable, failure.code.clone())).collect();
    assert_eq!(
        outcome,
        [
            (1, false, "Postgres.22P02".to_string()),
            (2, false, "Postgres.InvalidRecord".to_string()),
            (4, false, "Postgres.23502".to_string())
        ]
    );
    let second = sink.write(&batch).await.expect_err("the same outcome again");
    assert_eq!(second.failures, first.failures);
    let count: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(count, 2, "the good rows, once");
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn a_batch_of_only_refused_rows_is_split_out_row_by_row_in_bounded_time() {
    let client = connect().await;
    let table = unique("all_bad");
    client.batch_execute(&format!("CREATE TABLE {table} (id integer NOT NULL, note text)")).await.unwrap();
    let errors = tempfile::tempdir().unwrap();
    let sink = config(&table, errors.path()).build("all-bad").await.expect("build");
    let records: Vec<Record> = (0..2000u64)
        .map(|sequence| Record {
            data: Bytes::from(r#"{"note":"no id"}"#),
            arrival_ms: 1_764_000_000_000,
            sequence,
            output: 0,
        })
        .collect();
    let batch = encode_batch(&sink.encoder_factory(), "all-bad", Uuid::new_v4(), PartitionKeys::new(), &records);
    let started = std::time::Instant::now();
    let error = sink.write(&batch).await.expect_err("every row refused");
    let elapsed = started.elapsed();
    assert_eq!(error.failures.len(), 2000);
    assert!(error.failures.iter().all(|failure| failure.code == "Postgres.23502" && !failure.retriable));
    let count: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(count, 0);
    eprintln!("2000 refused rows split out in {elapsed:?}");
    assert!(elapsed < std::time::Duration::from_secs(30), "{elapsed:?}");
}
