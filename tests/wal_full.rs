//! A full WAL, end to end: with `max_wal_mib` below `wal.segment_mib` and the sink down, puts
//! fill the WAL until they are refused with `ServiceUnavailableException`; once the sink is back
//! the WAL drains (delivered bytes stop counting, the segment is closed early and deleted) and
//! puts are accepted again, across a restart too. With `full_wait_ms` a put that arrives while
//! the WAL is full waits for the room instead of being refused. Every acknowledged record is
//! delivered exactly once; refused ones never.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::retry::RetryConfig;
use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, eventually, local_objects};

const STREAM: &str = "app-logs";
const RECORDS_PER_PUT: usize = 10;
/// A little over 1 MiB per put: seven fit in an 8 MiB WAL, eight do not.
const PAD_BYTES: usize = 105 << 10;
const BOUND: Duration = Duration::from_secs(20);

/// A local sink without compression (gzip in a debug build is slow enough to blur the timing),
/// batches closed every second, an 8 MiB WAL in 64 MiB segments.
fn yaml(full_wait_ms: u64) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         limits: {{ max_wal_mib: 8, full_wait_ms: {full_wait_ms} }}\n\
         wal: {{ segment_mib: 64 }}\n\
         streams:\n\
         \x20 - name: {STREAM}\n\
         \x20   buffering: {{ size_mib: 4, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: file://./out }}\n"
    )
}

/// A client that does not retry, so a refused put shows as refused.
async fn no_retry_client(spillway: &Spillway) -> Client {
    let client = spillway.client().await;
    Client::from_conf(client.config().to_builder().retry_config(RetryConfig::disabled()).build())
}

/// Take the local sink down: its output folder becomes a regular file, so writes fail (a
/// retriable error) even for root, which ignores permission bits.
fn sink_down(out: &Path) {
    std::fs::remove_dir_all(out).unwrap();
    std::fs::write(out, b"not a folder").unwrap();
}

fn sink_up(out: &Path) {
    std::fs::remove_file(out).unwrap();
    std::fs::create_dir(out).unwrap();
}

/// Put `RECORDS_PER_PUT` records with ids `<put>-<index>`; the ids on success, else the error code.
async fn put(client: &Client, put: &str) -> Result<Vec<String>, String> {
    let ids: Vec<String> = (0..RECORDS_PER_PUT).map(|index| format!("{put}-{index}")).collect();
    let pad = "x".repeat(PAD_BYTES);
    let records = ids
        .iter()
        .map(|id| Record::builder().data(Blob::new(format!("{{\"id\":\"{id}\",\"pad\":\"{pad}\"}}\n"))).build())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    match client.put_record_batch().delivery_stream_name(STREAM).set_records(Some(records)).send().await {
        Ok(output) if output.failed_put_count() == 0 => Ok(ids),
        Ok(output) => Err(format!("{} records failed", output.failed_put_count())),
        Err(error) => Err(error.code().unwrap_or("no error code").to_string()),
    }
}

/// Put until a put is refused; returns the acknowledged ids.
async fn fill_until_refused(client: &Client, prefix: &str) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for index in 0..40 {
        match put(client, &format!("{prefix}{index}")).await {
            Ok(ids) => acknowledged.extend(ids),
            Err(code) => {
                assert_eq!(code, "ServiceUnavailableException");
                assert!(!acknowledged.is_empty(), "the first put was refused");
                return acknowledged;
            }
        }
    }
    panic!("40 MiB of puts into an 8 MiB wal were all accepted");
}

/// Retry a put (bounded) until it is accepted.
async fn put_until_accepted(client: &Client, name: &str) -> Vec<String> {
    let deadline = Instant::now() + BOUND;
    loop {
        match put(client, name).await {
            Ok(ids) => return ids,
            Err(code) => assert_eq!(code, "ServiceUnavailableException"),
        }
        assert!(Instant::now() < deadline, "put {name} still refused after {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every delivered id with how often it was delivered.
fn delivered_ids(out: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (key, body) in local_objects(out) {
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let value: serde_json::Value =
                serde_json::from_slice(line).unwrap_or_else(|error| panic!("{key}: not json: {error}"));
            *counts.entry(value["id"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn assert_delivered_exactly_once(out: &Path, acknowledged: &[String]) {
    let delivered = delivered_ids(out);
    let twice: Vec<_> = delivered.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let expected: BTreeMap<String, usize> = acknowledged.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(delivered.len(), expected.len(), "acknowledged and delivered differ");
    assert_eq!(delivered, expected);
}

#[tokio::test]
async fn a_wal_smaller_than_a_segment_drains_after_the_sink_recovers_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let spillway = Spillway::start(dir.path(), &yaml(0));
    sink_down(&out);
    let client = no_retry_client(&spillway).await;
    let mut acknowledged = fill_until_refused(&client, "before").await;
    spillway.kill();

    sink_up(&out);
    let spillway = Spillway::start(dir.path(), &yaml(0));
    let client = no_retry_client(&spillway).await;
    // Twice the WAL limit after the restart: only possible if delivered bytes are released.
    for index in 0..16 {
        acknowledged.extend(put_until_accepted(&client, &format!("after{index}")).await);
    }
    let undelivered = format!("spillway_wal_bytes{{stream=\"{STREAM}\"}}");
    let on_disk = format!("spillway_wal_disk_bytes{{stream=\"{STREAM}\"}}");
    let deadline = Instant::now() + BOUND;
    loop {
        let undelivered = spillway.metric(&undelivered).await;
        let on_disk = spillway.metric(&on_disk).await;
        // The open batch keeps the last records undelivered until its interval closes it.
        if undelivered == Some(0.0) && on_disk.is_some_and(|bytes| bytes < (2 << 20) as f64) {
            break;
        }
        assert!(Instant::now() < deadline, "wal not reclaimed: {undelivered:?} undelivered, {on_disk:?} on disk");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(spillway.terminate(), 0);
    assert_delivered_exactly_once(&out, &acknowledged);
}

#[tokio::test]
async fn a_put_into_a_full_wal_waits_and_is_accepted_when_the_sink_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let spillway = Spillway::start(dir.path(), &yaml(3000));
    sink_down(&out);
    let client = no_retry_client(&spillway).await;
    // Seven puts fit in 8 MiB; the eighth does not.
    let mut acknowledged = Vec::new();
    for index in 0..7 {
        acknowledged.extend(put(&client, &format!("fill{index}")).await.expect("room in the wal"));
    }
    let waiting = tokio::spawn({
        let client = client.clone();
        async move {
            let started = Instant::now();
            (put(&client, "waits").await, started.elapsed())
        }
    });
    // The first delivery attempt fails while the put waits; then the sink comes back.
    let retries = format!("spillway_delivery_retries_total{{stream=\"{STREAM}\"}}");
    let deadline = Instant::now() + BOUND;
    while spillway.metric(&retries).await.unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no failed delivery attempt:\n{}", spillway.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if waiting.is_finished() {
        let (outcome, waited) = waiting.await.unwrap();
        panic!("the put into a full wal did not wait: {outcome:?} after {waited:?}");
    }
    sink_up(&out);
    let (accepted, waited) = tokio::time::timeout(BOUND, waiting).await.unwrap().unwrap();
    let accepted = accepted
        .unwrap_or_else(|code| panic!("the waiting put was refused after {waited:?}: {code}\n{}", spillway.log_text()));
    acknowledged.extend(accepted);
    assert_eq!(spillway.metric(&format!("spillway_throttled_records_total{{stream=\"{STREAM}\"}}")).await, Some(0.0));

    eventually(BOUND, "the waiting put's records delivered", || {
        let delivered = delivered_ids(&out);
        delivered.contains_key("waits-0").then_some(())
    })
    .await;
    assert_eq!(spillway.terminate(), 0);
    assert_delivered_exactly_once(&out, &acknowledged);
}
