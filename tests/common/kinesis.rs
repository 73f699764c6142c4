//! Kinesis helpers the Kinesis end-to-end tests share (kinesalite from `scripts/services.sh`,
//! the real `aws-sdk-kinesis` as producer): streams, puts, the test records and the checks that
//! every record arrived once and in key order. Included with `#[path]` by the tests that need
//! the `source-kinesis` feature.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};

use super::common::{eventually, local_objects};

pub fn endpoint() -> String {
    std::env::var("SPILLWAY_TEST_KINESIS_ENDPOINT").expect("SPILLWAY_TEST_KINESIS_ENDPOINT (scripts/services.sh env)")
}

pub async fn kinesis() -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    Client::from_conf(config)
}

/// A stream name no other test (or run) uses.
pub fn unique_name(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("spw-{test}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

pub async fn wait_active(client: &Client, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = client.describe_stream_summary().stream_name(stream).send().await.unwrap();
        if summary.stream_description_summary().is_some_and(|s| s.stream_status() == &StreamStatus::Active) {
            return;
        }
        assert!(Instant::now() < deadline, "stream {stream} not ACTIVE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes its Kinesis stream when dropped (kinesalite allows 100 shards in all).
pub struct StreamGuard(String);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async { kinesis().await.delete_stream().stream_name(name).send().await.is_ok() })
        });
        let _ = deleted.join();
    }
}

/// Delete test streams older than 10 minutes that a failed or killed run left behind.
pub async fn delete_stale_streams(client: &Client) {
    let Ok(listed) = client.list_streams().limit(1000).send().await else { return };
    for name in listed.stream_names().iter().filter(|name| name.starts_with("spw-")) {
        let Ok(summary) = client.describe_stream_summary().stream_name(name).send().await else { continue };
        let created = summary.stream_description_summary().map(|summary| summary.stream_creation_timestamp().secs());
        let now = chrono::Utc::now().timestamp();
        if created.is_some_and(|created| now - created > 600) {
            let _ = client.delete_stream().stream_name(name).send().await;
        }
    }
}

pub async fn create_stream(client: &Client, stream: &str, shards: i32) -> StreamGuard {
    delete_stale_streams(client).await;
    client.create_stream().stream_name(stream).shard_count(shards).send().await.unwrap();
    wait_active(client, stream).await;
    StreamGuard(stream.to_string())
}

/// Put `(partition key, data)` entries in order, 500 per call; every entry must be accepted.
pub async fn put(client: &Client, stream: &str, entries: &[(String, Vec<u8>)]) {
    for chunk in entries.chunks(500) {
        let records = chunk
            .iter()
            .map(|(key, data)| {
                PutRecordsRequestEntry::builder().partition_key(key).data(Blob::new(data.clone())).build().unwrap()
            })
            .collect();
        let output = client.put_records().stream_name(stream).set_records(Some(records)).send().await.unwrap();
        assert_eq!(output.failed_record_count(), Some(0), "kinesalite refused records");
    }
}

/// One test record: a JSON line with its partition key and its number within the key.
pub fn record(key: &str, n: u64) -> Vec<u8> {
    format!("{{\"k\":\"{key}\",\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(64)).into_bytes()
}

/// Delivered lines of `<dir>/<out>` as objects, each a list of lines in object order.
pub fn delivered_objects(dir: &Path, out: &str) -> Vec<Vec<String>> {
    local_objects(&dir.join(out))
        .into_iter()
        .map(|(_, body)| String::from_utf8_lossy(&body).lines().map(str::to_string).collect())
        .collect()
}

/// How often each delivered line arrived.
pub fn counts(dir: &Path, out: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in delivered_objects(dir, out).into_iter().flatten() {
        *counts.entry(line).or_insert(0) += 1;
    }
    counts
}

pub async fn wait_for_lines(dir: &Path, out: &str, expected: usize, timeout: Duration) {
    let what = format!("{expected} lines in {out}");
    eventually(timeout, &what, || (counts(dir, out).len() >= expected).then_some(())).await;
}

/// Every expected line exactly once, nothing else.
pub fn assert_exactly_once(dir: &Path, out: &str, expected: &BTreeSet<String>) {
    assert_counts_exactly_once(&counts(dir, out), out, expected);
}

pub fn assert_counts_exactly_once(counts: &BTreeMap<String, usize>, out: &str, expected: &BTreeSet<String>) {
    let duplicated: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(duplicated.is_empty(), "{out}: delivered twice: {duplicated:?}");
    let missing: Vec<_> = expected.iter().filter(|line| !counts.contains_key(*line)).take(5).collect();
    assert!(
        missing.is_empty(),
        "{out}: {} of {} missing, e.g. {missing:?}",
        expected.len() - counts.len().min(expected.len()),
        expected.len()
    );
    let unexpected: Vec<_> = counts.keys().filter(|line| !expected.contains(*line)).take(5).collect();
    assert!(unexpected.is_empty(), "{out}: unexpected lines: {unexpected:?}");
}

/// (key, n) of a delivered test line.
pub fn key_and_number(line: &str) -> (String, u64) {
    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    (value["k"].as_str().unwrap().to_string(), value["n"].as_u64().unwrap())
}

/// Per key, the output order equals the written order (n = 0, 1, 2, …). Objects are contiguous WAL
/// ranges, but their keys do not order them within a second, so the objects' order is derived:
/// every key seen in two objects must order them the same way, each object must hold each key's
/// numbers rising, and in the derived order each key's numbers must be exactly 0..count.
pub fn assert_key_order(objects: &[Vec<String>]) {
    let per_object: Vec<BTreeMap<String, Vec<u64>>> = objects
        .iter()
        .map(|lines| {
            let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for line in lines {
                let (key, n) = key_and_number(line);
                by_key.entry(key).or_default().push(n);
            }
            by_key
        })
        .collect();
    for (index, by_key) in per_object.iter().enumerate() {
        for (key, numbers) in by_key {
            assert!(
                numbers.windows(2).all(|pair| pair[0] < pair[1]),
                "object {index}: {key} out of order: {numbers:?}"
            );
        }
    }
    for a in 0..per_object.len() {
        for b in a + 1..per_object.len() {
            let mut directions = BTreeSet::new();
            for (key, numbers_a) in &per_object[a] {
                if let Some(numbers_b) = per_object[b].get(key) {
                    directions.insert(numbers_a[0] < numbers_b[0]);
                    let (first, second) =
                        if numbers_a[0] < numbers_b[0] { (numbers_a, numbers_b) } else { (numbers_b, numbers_a) };
                    assert!(
                        first.last() < second.first(),
                        "{key}: objects {a} and {b} interleave: {first:?} / {second:?}"
                    );
                }
            }
            assert!(
                directions.len() <= 1,
                "keys disagree on the order of objects {a} and {b}: a key went out of order"
            );
        }
    }
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for object in &per_object {
        for (key, numbers) in object {
            by_key.entry(key.clone()).or_default().extend(numbers);
        }
    }
    for (key, mut numbers) in by_key {
        numbers.sort_unstable();
        assert!(numbers.iter().enumerate().all(|(i, n)| i as u64 == *n), "{key}: numbers are not 0..{}", numbers.len());
    }
}

/// Write one record to each of `keys` every `pace` until `stop`; `written` counts the rounds.
pub async fn produce(
    client: Client,
    stream: String,
    keys: u64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    pace: Duration,
) {
    produce_keys(client, stream, 0..keys, stop, written, pace).await;
}

/// [`produce`] for the keys `keys` (several producers write disjoint ranges).
pub async fn produce_keys(
    client: Client,
    stream: String,
    keys: std::ops::Range<u64>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    pace: Duration,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let entries: Vec<(String, Vec<u8>)> =
            keys.clone().map(|key| (format!("key-{key}"), record(&format!("key-{key}"), n))).collect();
        put(&client, &stream, &entries).await;
        n += 1;
        written.store(n, Ordering::Relaxed);
        tokio::time::sleep(pace).await;
    }
}

pub fn expected_lines(keys: u64, per_key: u64) -> BTreeSet<String> {
    expected_lines_of(0..keys, per_key)
}

/// What [`produce_keys`] wrote for `keys` in `per_key` rounds.
pub fn expected_lines_of(keys: std::ops::Range<u64>, per_key: u64) -> BTreeSet<String> {
    keys.flat_map(|key| (0..per_key).map(move |n| String::from_utf8(record(&format!("key-{key}"), n)).unwrap()))
        .collect()
}
