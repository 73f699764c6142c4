//! The `kinesis` source end to end against kinesalite (`SPILLWAY_TEST_KINESIS_ENDPOINT`), with the
//! real `aws-sdk-kinesis` as producer: YAML in, objects out (local sink). Every record arrives
//! once; per partition key in the order written, across a shard split and a merge while
//! producers write; KPL aggregates are de-aggregated; SIGTERM and SIGKILL restarts resume from
//! the WAL's positions without gaps or repeats; `AT_TIMESTAMP`; two delivery streams on one
//! Kinesis stream each get everything.

mod common;
#[path = "common/kinesis.rs"]
mod kinesis_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Spillway, eventually};
use kinesis_common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spillway::sources::kinesis::kpl;

const NEEDS: &str = "needs services: scripts/test.sh";

/// One stream's YAML block reading `kinesis_stream`, delivering to `./<out>`.
fn stream_yaml(name: &str, kinesis_stream: &str, out: &str, extra_source: &str) -> String {
    format!(
        "\x20 - name: {name}\n\
         \x20   source: {{ type: kinesis, stream_name: {kinesis_stream}, endpoint: '{}', region: us-east-1, poll_interval_ms: 200, shard_discovery_interval_ms: 300{extra_source} }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: 'file://./{out}', compression: gzip }}\n",
        endpoint()
    )
}

fn config_yaml(streams: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\ndata_dir: ./data\nstreams:\n{}",
        streams.concat()
    )
}

fn start(dir: &Path, yaml: &str) -> Spillway {
    let config = dir.join("spillway.yaml");
    std::fs::write(&config, yaml).unwrap();
    Spillway::start_with_env(
        dir,
        &config,
        &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")],
        &["AWS_PROFILE", "AWS_SESSION_TOKEN"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn four_shards_with_kpl_aggregates_reach_two_delivery_streams_once_each() {
    let _ = NEEDS;
    let client = kinesis().await;
    let name = unique_name("four");
    let _stream = create_stream(&client, &name, 4).await;
    let dir = tempfile::tempdir().unwrap();

    // 10,000 plain records over 64 keys, 100 KPL aggregates of 20 user records, one malformed
    // aggregate (passed through whole).
    let mut expected = BTreeSet::new();
    let mut entries = Vec::new();
    for n in 0..10_000u64 {
        let key = format!("key-{}", n % 64);
        let data = record(&key, n);
        expected.insert(String::from_utf8(data.clone()).unwrap());
        entries.push((key, data));
    }
    for aggregate in 0..100u64 {
        let users: Vec<(String, Vec<u8>)> =
            (0..20u64).map(|i| (format!("agg-{aggregate}"), record(&format!("agg-{aggregate}"), i))).collect();
        for (_, data) in &users {
            expected.insert(String::from_utf8(data.clone()).unwrap());
        }
        let borrowed: Vec<(&str, &[u8])> = users.iter().map(|(key, data)| (key.as_str(), data.as_slice())).collect();
        entries.push((format!("agg-{aggregate}"), kpl::aggregate(&borrowed)));
    }
    // The magic bytes, then no protobuf and a checksum that cannot match.
    let mut malformed = kpl::MAGIC.to_vec();
    malformed.extend_from_slice(b"{\"k\":\"bad\",\"n\":0}");
    malformed.extend_from_slice(&[b'x'; 16]);
    entries.push(("bad".to_string(), malformed));
    put(&client, &name, &entries).await;

    let yaml = config_yaml(&[
        stream_yaml("from-kinesis-a", &name, "out-a", ", starting_position: TRIM_HORIZON"),
        stream_yaml("from-kinesis-b", &name, "out-b", ", starting_position: TRIM_HORIZON"),
    ]);
    let spillway = start(dir.path(), &yaml);
    let total = expected.len() + 1;
    wait_for_lines(dir.path(), "out-a", total, Duration::from_secs(60)).await;
    wait_for_lines(dir.path(), "out-b", total, Duration::from_secs(60)).await;

    let metrics = reqwest::get(format!("{}/metrics", spillway.endpoint)).await.unwrap().text().await.unwrap();
    let malformed_count: f64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("spillway_source_malformed_aggregates_total{") && line.contains("from-kinesis-a")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(malformed_count, 1.0, "one malformed aggregate counted:\n{metrics}");
    let shard_series = metrics
        .lines()
        .filter(|line| line.starts_with("spillway_source_records_total{stream=\"from-kinesis-a\""))
        .count();
    assert_eq!(shard_series, 4, "records per shard:\n{metrics}");
    let refused = spillway
        .client()
        .await
        .put_record()
        .delivery_stream_name("from-kinesis-a")
        .record(
            aws_sdk_firehose::types::Record::builder()
                .data(aws_sdk_firehose::primitives::Blob::new("x"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect_err("a kinesis-sourced stream takes no puts");
    assert!(refused.as_service_error().is_some_and(|error| error.is_invalid_argument_exception()), "{refused:?}");
    assert_eq!(spillway.terminate(), 0);

    // The malformed aggregate arrives once, whole (its magic bytes are not UTF-8: read lossily).
    for out in ["out-a", "out-b"] {
        let mut lines = counts(dir.path(), out);
        let passed_through: Vec<(String, usize)> =
            lines.iter().filter(|(line, _)| line.contains("\"k\":\"bad\"")).map(|(l, c)| (l.clone(), *c)).collect();
        assert_eq!(passed_through.len(), 1, "{out}: the malformed aggregate as one record");
        assert_eq!(passed_through[0].1, 1, "{out}: the malformed aggregate once");
        assert!(passed_through[0].0.ends_with(&"x".repeat(16)), "{out}: passed through whole");
        lines.remove(&passed_through[0].0);
        assert_counts_exactly_once(&lines, out, &expected);
    }
    assert_wal_keeps_record_metadata(&dir.path().join("data/streams/from-kinesis-a/wal"));
}

/// The frames still in the WAL (its active segment outlives delivery) carry every record's
/// Kinesis metadata: partition key, sequence number, subsequence number within a KPL aggregate,
/// arrival time.
fn assert_wal_keeps_record_metadata(wal_dir: &Path) {
    use spillway::sources::kinesis::metadata::KinesisMetadata;
    let options = spillway::wal::WalOptions {
        dir: wal_dir.to_path_buf(),
        fsync: spillway::config::FsyncPolicy::Always,
        fsync_interval: Duration::from_millis(200),
        segment_bytes: 64 << 20,
        max_bytes: 1 << 30,
        full_wait: Duration::ZERO,
        track_positions: true,
    };
    let first = std::fs::read_dir(wal_dir)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".wal")?.parse::<u64>().ok())
        .min()
        .expect("a wal segment");
    let (wal, _) = spillway::wal::Wal::open(options, 0).unwrap();
    let committed = *wal.committed().borrow();
    let frames = wal.reader(first).read(committed, 256 << 20).unwrap();
    wal.close();
    let (mut plain, mut aggregated) = (0, BTreeMap::<String, Vec<u32>>::new());
    for frame in frames.iter().filter(|frame| !frame.records.is_empty()) {
        assert!(
            frame.source.as_ref().is_some_and(|source| source.shard.starts_with("kinesis:shardId-")),
            "{:?}",
            frame.source
        );
        assert_eq!(frame.metadata.len(), frame.records.len(), "one metadata entry per record");
        for (record, entry) in frame.records.iter().zip(&frame.metadata) {
            let metadata = KinesisMetadata::decode(entry).expect("a kinesis metadata entry");
            assert!(metadata.approximate_arrival_ms > 1_700_000_000_000, "{metadata:?}");
            assert!(metadata.sequence_number.len() > 20, "{metadata:?}");
            let text = String::from_utf8_lossy(record);
            if metadata.partition_key.starts_with("agg-") {
                assert!(text.contains(&format!("\"k\":\"{}\"", metadata.partition_key)), "{text} / {metadata:?}");
                aggregated.entry(metadata.sequence_number.clone()).or_default().push(metadata.subsequence_number);
            } else if metadata.partition_key.starts_with("key-") {
                assert!(text.contains(&format!("\"k\":\"{}\"", metadata.partition_key)), "{text} / {metadata:?}");
                assert_eq!(metadata.subsequence_number, 0);
                plain += 1;
            }
        }
    }
    assert!(plain > 0 && !aggregated.is_empty(), "records with metadata found in the wal");
    for subsequences in aggregated.values() {
        assert_eq!(*subsequences, (0..20).collect::<Vec<u32>>(), "an aggregate's user records by subsequence number");
    }
}

/// Producers write one record per key per call, so the written order per key is the call order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_split_and_a_merge_while_producing_keep_every_record_once_and_in_key_order() {
    let client = kinesis().await;
    let name = unique_name("reshard");
    let _stream = create_stream(&client, &name, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let spillway =
        start(dir.path(), &config_yaml(&[stream_yaml("resharded", &name, "out", ", starting_position: TRIM_HORIZON")]));

    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let keys = 32;
    let producer = tokio::spawn(produce(
        client.clone(),
        name.clone(),
        keys,
        stop.clone(),
        written.clone(),
        Duration::from_millis(10),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let shards = client.list_shards().stream_name(&name).send().await.unwrap();
    let first = &shards.shards()[0];
    let range = first.hash_key_range().unwrap();
    let (low, high): (u128, u128) =
        (range.starting_hash_key().parse().unwrap(), range.ending_hash_key().parse().unwrap());
    client
        .split_shard()
        .stream_name(&name)
        .shard_to_split(first.shard_id())
        .new_starting_hash_key(((low + high) / 2).to_string())
        .send()
        .await
        .unwrap();
    wait_active(&client, &name).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (third, fourth) = (shards.shards()[2].shard_id().to_string(), shards.shards()[3].shard_id().to_string());
    client
        .merge_shards()
        .stream_name(&name)
        .shard_to_merge(&third)
        .adjacent_shard_to_merge(&fourth)
        .send()
        .await
        .unwrap();
    wait_active(&client, &name).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let per_key = written.load(Ordering::Relaxed);
    let after = client.list_shards().stream_name(&name).send().await.unwrap();
    assert_eq!(after.shards().len(), 7, "4 shards, 2 split children, 1 merged child");

    let expected = expected_lines(keys, per_key);
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(60)).await;
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out", &expected);
    assert_key_order(&delivered_objects(dir.path(), "out"));
    eprintln!("{} records over {keys} keys across a split and a merge: once each, in key order", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigterm_and_seeded_sigkill_rounds_resume_without_gaps_or_repeats() {
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(20261126);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(12);
    let mut rng = StdRng::seed_from_u64(seed);
    let client = kinesis().await;
    let name = unique_name("kill");
    let _stream = create_stream(&client, &name, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[stream_yaml("killed", &name, "out", ", starting_position: TRIM_HORIZON")]);

    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let keys = 16;
    let producer = tokio::spawn(produce(
        client.clone(),
        name.clone(),
        keys,
        stop.clone(),
        written.clone(),
        Duration::from_millis(5),
    ));
    for round in 0..rounds {
        let spillway = start(dir.path(), &yaml);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        if round % 4 == 3 {
            assert_eq!(spillway.terminate(), 0, "clean SIGTERM exit");
        } else {
            spillway.kill();
        }
    }
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let per_key = written.load(Ordering::Relaxed);
    let expected = expected_lines(keys, per_key);
    let spillway = start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(60)).await;
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out", &expected);
    assert_key_order(&delivered_objects(dir.path(), "out"));
    eprintln!(
        "seed {seed}: {rounds} rounds (every 4th SIGTERM, else SIGKILL), {} records, each delivered once",
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn at_timestamp_and_latest_start_where_asked() {
    let client = kinesis().await;
    let name = unique_name("start");
    let _stream = create_stream(&client, &name, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let batch =
        |tag: &str| -> Vec<(String, Vec<u8>)> { (0..50u64).map(|n| (format!("{tag}-{n}"), record(tag, n))).collect() };
    let lines = |entries: &[(String, Vec<u8>)]| -> BTreeSet<String> {
        entries.iter().map(|(_, data)| String::from_utf8(data.clone()).unwrap()).collect()
    };
    let (before, after, later) = (batch("before"), batch("after"), batch("later"));
    put(&client, &name, &before).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let timestamp = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    put(&client, &name, &after).await;

    let at = format!(", starting_position: AT_TIMESTAMP, timestamp: '{}'", timestamp.to_rfc3339());
    let yaml = config_yaml(&[
        stream_yaml("at-timestamp", &name, "out-at", &at),
        stream_yaml("latest", &name, "out-latest", ""),
    ]);
    let spillway = start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out-at", after.len(), Duration::from_secs(30)).await;
    // LATEST: once both shards have recorded their start (a reader logs it after the marker is
    // in the WAL; "reading kinesis shard" comes before, so under load records put right after
    // it could still precede the start), only new records arrive.
    eventually(Duration::from_secs(30), "the LATEST stream's start recorded on both shards", || {
        let text = std::fs::read_to_string(&spillway.log).ok()?;
        (text.matches("kinesis shard starts at LATEST (recorded)").count() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    put(&client, &name, &later).await;
    // Generous: two streams read two shards each from kinesalite, which is slow on a busy machine.
    wait_for_lines(dir.path(), "out-latest", later.len(), Duration::from_secs(90)).await;
    wait_for_lines(dir.path(), "out-at", after.len() + later.len(), Duration::from_secs(90)).await;
    assert_eq!(spillway.terminate(), 0);

    let mut after_and_later = lines(&after);
    after_and_later.extend(lines(&later));
    assert_exactly_once(dir.path(), "out-at", &after_and_later);
    assert_exactly_once(dir.path(), "out-latest", &lines(&later));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_stream_created_after_start_is_read_once_it_exists() {
    let client = kinesis().await;
    let name = unique_name("later");
    let dir = tempfile::tempdir().unwrap();
    let spillway =
        start(dir.path(), &config_yaml(&[stream_yaml("waiting", &name, "out", ", starting_position: TRIM_HORIZON")]));
    eventually(Duration::from_secs(20), "a logged ListShards failure", || {
        spillway.log_text().contains("cannot list kinesis shards; retrying").then_some(())
    })
    .await;
    let _stream = create_stream(&client, &name, 1).await;
    let entries: Vec<(String, Vec<u8>)> = (0..100u64).map(|n| ("k".to_string(), record("k", n))).collect();
    put(&client, &name, &entries).await;
    wait_for_lines(dir.path(), "out", entries.len(), Duration::from_secs(30)).await;
    assert_eq!(spillway.terminate(), 0);
    let expected = entries.iter().map(|(_, data)| String::from_utf8(data.clone()).unwrap()).collect();
    assert_exactly_once(dir.path(), "out", &expected);
}

/// Back-pressure: the sink is down (its bucket does not exist yet) while 12 MiB wait in Kinesis;
/// the readers stop at the 8 MiB WAL limit instead of holding records in memory, then everything
/// arrives once when the bucket appears. One response in memory at a time for all four shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_full_wal_pauses_the_readers_and_loses_nothing() {
    let client = kinesis().await;
    let name = unique_name("full");
    let _stream = create_stream(&client, &name, 4).await;
    let mut expected = BTreeSet::new();
    let mut entries = Vec::new();
    for n in 0..12_000u64 {
        let key = format!("key-{}", n % 64);
        let data = format!("{{\"k\":\"{key}\",\"n\":{n},\"pad\":\"{}\"}}", "y".repeat(1000)).into_bytes();
        expected.insert(String::from_utf8(data.clone()).unwrap());
        entries.push((key, data));
    }
    put(&client, &name, &entries).await;

    let s3 = common::s3::client().await;
    let bucket = format!("spillway-later-{}", uuid::Uuid::new_v4().simple());
    let s3_endpoint = common::s3::env("SPILLWAY_TEST_S3_ENDPOINT");
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\ndata_dir: ./data\nlimits: {{ max_wal_mib: 8 }}\nstreams:\n\
         \x20 - name: paused\n\
         \x20   source: {{ type: kinesis, stream_name: {name}, endpoint: '{}', region: us-east-1, poll_interval_ms: 200, starting_position: TRIM_HORIZON, max_concurrent_reads: 1 }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   retry: {{ duration_seconds: 600 }}\n{}",
        endpoint(),
        common::s3::sink_yaml(&bucket, &s3_endpoint)
    );
    let dir = tempfile::tempdir().unwrap();
    let spillway = start(dir.path(), &yaml);
    eventually(Duration::from_secs(30), "the readers waiting on a full wal", || {
        spillway.log_text().contains("wal full; the kinesis reader waits").then_some(())
    })
    .await;
    let undelivered = spillway.metric("spillway_wal_bytes{stream=\"paused\"}").await.unwrap();
    assert!(undelivered <= 8.0 * 1024.0 * 1024.0, "wal within its limit: {undelivered}");
    let read = spillway.metric("spillway_incoming_records_total{stream=\"paused\"}").await.unwrap();
    assert!(read < entries.len() as f64, "reading paused before the backlog was read: {read}");

    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (_, body) in common::s3::objects(&s3, &bucket, "").await {
            for line in String::from_utf8(body).unwrap().lines() {
                *counts.entry(line.to_string()).or_insert(0) += 1;
            }
        }
        if counts.len() >= expected.len() {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} delivered after the bucket appeared",
            counts.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(spillway.terminate(), 0);
    assert_counts_exactly_once(&counts, "the bucket", &expected);
}

/// Bad configuration is refused before anything starts, every problem named with its YAML path.
#[test]
fn validate_names_every_kinesis_source_problem() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "streams:\n  - name: k\n    source: { type: kinesis, stream_name: a, stream_arn: 'arn:aws:kinesis:us-east-1:1:stream/a', starting_position: AT_TIMESTAMP, timestamp: yesterday, max_records_per_call: 20000, endpoint: 'ftp://x' }\n    sink: { type: s3, url: file://out }\n  - name: typo\n    source: { type: kinesis, stream: a }\n    sink: { type: s3, url: file://out2 }\n";
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "-c", "bad.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("unknown field `stream`"), "{stderr}");
    let yaml = "streams:\n  - name: k\n    source: { type: kinesis, stream_name: a, stream_arn: 'arn:aws:kinesis:us-east-1:1:stream/a', starting_position: AT_TIMESTAMP, timestamp: yesterday, max_records_per_call: 20000, endpoint: 'ftp://x' }\n    sink: { type: s3, url: file://out }\n";
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "-c", "bad.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for expected in [
        "streams[0].source.stream_arn: set only one of stream_name and stream_arn",
        "streams[0].source.timestamp: not an RFC 3339 time",
        "streams[0].source.endpoint",
        "streams[0].source.max_records_per_call: must be 1-10000",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

/// A proxy in front of kinesalite that answers some `GetRecords` calls itself: three in a row with
/// `ProvisionedThroughputExceededException` (more than the SDK's own retries), or one with
/// `ExpiredIteratorException` — what real Kinesis does that kinesalite does not.
async fn start_faulty_proxy(target: String) -> (String, Arc<AtomicU64>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    let faults = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let handler = {
        let faults = faults.clone();
        move |headers: HeaderMap, body: Bytes| {
            let (faults, calls, client, target) = (faults.clone(), calls.clone(), client.clone(), target.clone());
            async move {
                let operation =
                    headers.get("x-amz-target").and_then(|value| value.to_str().ok()).unwrap_or("").to_string();
                if operation.ends_with(".GetRecords") {
                    let call = calls.fetch_add(1, Ordering::Relaxed);
                    let fault = match call % 20 {
                        5..=7 => Some("ProvisionedThroughputExceededException"),
                        13 => Some("ExpiredIteratorException"),
                        _ => None,
                    };
                    if let Some(fault) = fault {
                        faults.fetch_add(1, Ordering::Relaxed);
                        let body = format!("{{\"__type\":\"{fault}\",\"message\":\"injected by the test proxy\"}}");
                        return (
                            StatusCode::BAD_REQUEST,
                            [("content-type", "application/x-amz-json-1.1".to_string())],
                            body.into_bytes(),
                        );
                    }
                }
                let mut request = client.post(&target).body(body);
                for (name, value) in &headers {
                    if name != "host" && name != "content-length" {
                        request = request.header(name, value);
                    }
                }
                let response = request.send().await.unwrap();
                let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
                let content_type = response
                    .headers()
                    .get("content-type")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("application/x-amz-json-1.1")
                    .to_string();
                (status, [("content-type", content_type)], response.bytes().await.unwrap().to_vec())
            }
        }
    };
    let router = axum::Router::new().fallback(axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{address}"), faults)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn throttling_and_expired_iterators_are_retried_without_loss_or_repeats() {
    let client = kinesis().await;
    let name = unique_name("faults");
    // One shard, so the injected faults hit one reader's consecutive calls.
    let _stream = create_stream(&client, &name, 1).await;
    let (proxy, faults) = start_faulty_proxy(endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[stream_yaml(
        "faulty",
        &name,
        "out",
        ", starting_position: TRIM_HORIZON, max_records_per_call: 100",
    )
    .replace(&format!("endpoint: '{}'", endpoint()), &format!("endpoint: '{proxy}'"))]);
    let spillway = start(dir.path(), &yaml);
    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let producer = tokio::spawn(produce(
        client.clone(),
        name.clone(),
        8,
        stop.clone(),
        written.clone(),
        Duration::from_millis(10),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let expected = expected_lines(8, written.load(Ordering::Relaxed));
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(60)).await;
    let throttled = spillway.metric("spillway_source_throttled_reads_total{stream=\"faulty\"}").await.unwrap_or(0.0);
    let log = spillway.log_text();
    assert_eq!(spillway.terminate(), 0);
    assert!(faults.load(Ordering::Relaxed) >= 4, "faults injected");
    assert!(throttled >= 1.0, "throttled reads counted: {throttled}");
    assert!(log.contains("renewing the shard iterator"), "an expired iterator renewed");
    assert_exactly_once(dir.path(), "out", &expected);
    assert_key_order(&delivered_objects(dir.path(), "out"));
}
