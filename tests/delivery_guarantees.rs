//! Delivery guarantees under failure, black-box against real MinIO: crashes at random moments,
//! a MinIO outage, a missing bucket routed to the error output, and back-pressure. Every test
//! checks the sink's content record by record: every acknowledged record exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use base64::Engine;
use common::Spillway;
use common::s3::{self, env};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Pause between one client's calls: about 4 × 2 MiB/s, enough load to keep batches in flight
/// at every kill without making the test about throughput.
const PACE: Duration = Duration::from_millis(20);

/// What the clients did: ids the server acknowledged, and ids sent whose outcome is unknown
/// (the connection died with the server). Unknown ones may or may not be delivered.
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeSet<String>,
    unknown: BTreeSet<String>,
    /// Poison records (one per SIGKILL round, nested 10,000 deep): acknowledged, and those whose
    /// put died with the server.
    poisons: BTreeSet<String>,
    poisons_unknown: BTreeSet<String>,
    /// The errors that ended a client, for the failure message.
    errors: Vec<String>,
    /// Calls the clients saw refused with ServiceUnavailableException (after the SDK's retries).
    throttled_calls: u64,
}

/// `clients` tasks push batches of unique JSON records, one call every `PACE` per client, until
/// `stop` is set or a call fails with a connection error (the server died). A call refused with
/// ServiceUnavailableException is retried after a pause, as the SDK's caller would.
/// Each record's `service` field is one of `partitions` values (derived from its id).
async fn push_until_stopped(
    endpoint: String,
    clients: usize,
    tag: String,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    partitions: u64,
) -> u64 {
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let (endpoint, tag, ledger, stop) = (endpoint.clone(), tag.clone(), ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = common::firehose_client(&endpoint).await;
            let mut rng = StdRng::seed_from_u64(seed ^ client_index as u64);
            let mut throttled = 0u64;
            let mut counter = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(PACE).await;
                let size = rng.random_range(1..=200);
                let ids: Vec<String> = (0..size)
                    .map(|_| {
                        counter += 1;
                        format!("{tag}-c{client_index}-{counter}")
                    })
                    .collect();
                loop {
                    let records = ids
                        .iter()
                        .map(|id| {
                            Record::builder()
                                .data(Blob::new(format!(
                                    "{{\"id\":\"{id}\",\"service\":\"svc-{}\",\"pad\":\"{}\"}}\n",
                                    service_of(id, partitions),
                                    "x".repeat(200)
                                )))
                                .build()
                                .unwrap()
                        })
                        .collect();
                    let result = client
                        .put_record_batch()
                        .delivery_stream_name("app-logs")
                        .set_records(Some(records))
                        .send()
                        .await;
                    match result {
                        Ok(output) => {
                            assert_eq!(output.failed_put_count(), 0, "batches are all or nothing");
                            ledger.lock().unwrap().acknowledged.extend(ids.iter().cloned());
                            break;
                        }
                        Err(error) => {
                            let throttle =
                                error.as_service_error().is_some_and(|e| e.is_service_unavailable_exception());
                            if throttle {
                                // Refused as a whole: nothing of it was appended.
                                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                    return throttled;
                                }
                                throttled += 1;
                                ledger.lock().unwrap().throttled_calls += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                            let mut ledger = ledger.lock().unwrap();
                            ledger.unknown.extend(ids.iter().cloned());
                            ledger.errors.push(aws_sdk_firehose::error::DisplayErrorContext(&error).to_string());
                            return throttled;
                        }
                    }
                }
            }
            throttled
        }));
    }
    let mut throttled = 0;
    for task in tasks {
        throttled += task.await.expect("client task");
    }
    throttled
}

/// A record's partition, derived from its id so the delivered object can be checked against it.
fn service_of(id: &str, partitions: u64) -> u64 {
    id.bytes().fold(0u64, |hash, byte| hash.wrapping_mul(31).wrapping_add(byte as u64)) % partitions
}

/// A poison record: JSON nested 10,000 deep (~20 KB), which once overflowed a parser's stack and
/// aborted the process at every start; a line, as the clients' records are. Its id is readable
/// without parsing it.
fn poison_record(id: &str, service: u64) -> String {
    format!(r#"{{"id":"{id}","service":"svc-{service}","deep":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000)) + "\n"
}

/// The id of a poison record's text, if it is one.
fn poison_id(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    let id = text.strip_prefix(r#"{"id":""#)?.split('"').next()?;
    id.starts_with("poison-").then(|| id.to_string())
}

/// Poison record ids in delivered lines, with how often each appears.
fn delivered_poisons(objects: &[(String, Vec<u8>)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, body) in objects {
        for id in body.split(|&byte| byte == b'\n').filter_map(poison_id) {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Every acknowledged poison record `found` once, none twice, none that nobody sent.
fn assert_poisons_once(ledger: &Ledger, found: &BTreeMap<String, usize>, seed: u64) {
    assert!(!ledger.poisons.is_empty(), "seed {seed}: no poison put was acknowledged");
    let missing: Vec<_> = ledger.poisons.iter().filter(|id| !found.contains_key(*id)).collect();
    let twice: Vec<_> = found.iter().filter(|(_, count)| **count > 1).collect();
    let invented: Vec<_> =
        found.keys().filter(|id| !ledger.poisons.contains(*id) && !ledger.poisons_unknown.contains(*id)).collect();
    assert!(
        missing.is_empty() && twice.is_empty() && invented.is_empty(),
        "seed {seed}: poison records missing {missing:?}, twice {twice:?}, never sent {invented:?}"
    );
}

/// Record ids in delivered objects (poison records aside), with how often each appears.
fn delivered_ids(objects: &[(String, Vec<u8>)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, body) in objects {
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty() && poison_id(line).is_none()) {
            let value: serde_json::Value = serde_json::from_slice(line).expect("delivered record is the JSON sent");
            *counts.entry(value["id"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn assert_exactly_once(ledger: &Ledger, delivered: &BTreeMap<String, usize>) {
    let duplicates: Vec<_> = delivered.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(duplicates.is_empty(), "records delivered twice: {duplicates:?}");
    let missing: Vec<_> = ledger.acknowledged.iter().filter(|id| !delivered.contains_key(*id)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged records missing: {missing:?} (of {})", ledger.acknowledged.len());
    let invented: Vec<_> = delivered
        .keys()
        .filter(|id| !ledger.acknowledged.contains(*id) && !ledger.unknown.contains(*id))
        .take(5)
        .collect();
    assert!(invented.is_empty(), "records nobody sent: {invented:?}");
}

fn stream_yaml(sink: &str, extra: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, shutdown_grace_seconds: 60 }}\n\
         data_dir: ./data\n\
         {extra}\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         {sink}"
    )
}

/// Seeded SIGKILL rounds (`SPILLWAY_CHAOS_SEED`, `SPILLWAY_CHAOS_ROUNDS`, default 20): 4 clients
/// push `partitions`-valued records while spillway is killed at a random moment, then a clean run
/// delivers the rest. Each round also puts one poison record ([`poison_record`]) first: no run
/// may crash on it. Returns the ledger, what the bucket holds, and the seed.
async fn sigkill_rounds(
    yaml: &str,
    dir: &std::path::Path,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    default_seed: u64,
    partitions: u64,
) -> (Ledger, Vec<(String, Vec<u8>)>, u64, usize) {
    let seed: u64 =
        std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(default_seed);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let mut rng = StdRng::seed_from_u64(seed);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for round in 0..rounds {
        let spillway = Spillway::start(dir, yaml);
        let poison = format!("poison-r{round}");
        let sent = spillway
            .client()
            .await
            .put_record()
            .delivery_stream_name("app-logs")
            .record(
                Record::builder().data(Blob::new(poison_record(&poison, round as u64 % partitions))).build().unwrap(),
            )
            .send()
            .await;
        match sent {
            Ok(_) => ledger.lock().unwrap().poisons.insert(poison),
            Err(_) => ledger.lock().unwrap().poisons_unknown.insert(poison),
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pushers = tokio::spawn(push_until_stopped(
            spillway.endpoint.clone(),
            4,
            format!("r{round}"),
            rng.random(),
            ledger.clone(),
            stop.clone(),
            partitions,
        ));
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..2500))).await;
        spillway.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pushers.await.unwrap();
    }
    let final_run = Spillway::start(dir, yaml);
    assert_eq!(final_run.terminate(), 0, "no run crashed on a poison record");
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.acknowledged.len() > 1000, "the clients got work done: {}", ledger.acknowledged.len());
    (ledger, s3::objects(s3, bucket, "").await, seed, rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let s3 = s3::client().await;
    let bucket = s3::new_bucket(&s3).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = stream_yaml(&s3::sink_yaml(&bucket, &env("SPILLWAY_TEST_S3_ENDPOINT")), "");
    let (ledger, objects, seed, rounds) = sigkill_rounds(&yaml, dir.path(), &s3, &bucket, 20261125, 1).await;
    let delivered = delivered_ids(&objects);
    assert_exactly_once(&ledger, &delivered);
    // Nothing parses a record on its way to a raw S3 object: poison records are delivered as
    // sent, exactly once, like any other.
    assert_poisons_once(&ledger, &delivered_poisons(&objects), seed);
    let poison_line = poison_record("poison-r0", 0).trim_end().as_bytes().to_vec();
    let sent_as_is = objects.iter().any(|(_, body)| body.split(|&byte| byte == b'\n').any(|line| line == poison_line));
    assert!(
        !ledger.poisons.contains("poison-r0") || sent_as_is,
        "seed {seed}: a poison record is delivered byte for byte"
    );
    eprintln!(
        "seed {seed}: {rounds} SIGKILL rounds, {} acknowledged, {} unacknowledged at a kill, {} delivered",
        ledger.acknowledged.len(),
        ledger.unknown.len(),
        delivered.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigkill_at_random_moments_with_24_partitions_loses_and_duplicates_nothing() {
    const PARTITIONS: u64 = 24;
    let s3 = s3::client().await;
    let bucket = s3::new_bucket(&s3).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "{}      prefix: 'logs/service=!{{partitionKeyFromQuery:service}}/'\n\
         \x20     error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n\
         \x20   processing:\n\
         \x20     dynamic_partitioning: {{ keys: {{ service: .service }} }}\n",
        s3::sink_yaml(&bucket, &env("SPILLWAY_TEST_S3_ENDPOINT"))
    );
    // Small batches: with 24 partitions at ~2 MiB/s, batches close by size and by interval, out
    // of order across partitions, so kills land between done intents and the watermark.
    let yaml = stream_yaml(&sink, "");
    let (ledger, objects, seed, rounds) = sigkill_rounds(&yaml, dir.path(), &s3, &bucket, 20261126, PARTITIONS).await;
    // Poison records have no partition keys (the record is never parsed): each acknowledged one
    // is in the error output exactly once, with the reason; nothing else failed.
    let (errors, objects): (Vec<_>, Vec<_>) =
        objects.into_iter().partition(|(key, _)| key.starts_with("errors/metadata-extraction-failed/"));
    let mut poisons: BTreeMap<String, usize> = BTreeMap::new();
    for (key, body) in &errors {
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let line: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(line["errorCode"], "DynamicPartitioning.MetadataExtractionFailed", "{key}");
            let message = line["errorMessage"].as_str().unwrap_or_default();
            assert!(message.contains("JSON nested deeper than 100 levels"), "{key}: {message}");
            let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            *poisons.entry(poison_id(&raw).expect("only poison records failed")).or_insert(0) += 1;
        }
    }
    assert_poisons_once(&ledger, &poisons, seed);
    assert!(
        objects.iter().all(|(key, _)| key.starts_with("logs/service=svc-")),
        "no other error output, keys partitioned"
    );
    // Every record sits under its own partition's prefix.
    for (key, body) in &objects {
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let value: serde_json::Value = serde_json::from_slice(line).unwrap();
            let id = value["id"].as_str().unwrap();
            let expected = format!("logs/service=svc-{}/", service_of(id, PARTITIONS));
            assert!(key.starts_with(&expected), "{id} in {key}");
        }
    }
    let partitions_seen: std::collections::BTreeSet<&str> =
        objects.iter().filter_map(|(key, _)| key.split('/').nth(1)).collect();
    assert!(partitions_seen.len() >= 20, "at least 20 active partitions: {}", partitions_seen.len());
    let delivered = delivered_ids(&objects);
    assert_exactly_once(&ledger, &delivered);
    eprintln!(
        "seed {seed}: {rounds} SIGKILL rounds over {PARTITIONS} partitions, {} acknowledged, {} unacknowledged at a kill, {} delivered in {} objects",
        ledger.acknowledged.len(),
        ledger.unknown.len(),
        delivered.len(),
        objects.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_missing_bucket_routes_records_to_the_error_output_and_a_fixed_config_delivers() {
    let s3 = s3::client().await;
    let errors_bucket = s3::new_bucket(&s3).await;
    let good_bucket = s3::new_bucket(&s3).await;
    let missing_bucket = format!("spillway-missing-{}", uuid::Uuid::new_v4().simple());
    let endpoint = env("SPILLWAY_TEST_S3_ENDPOINT");
    let dir = tempfile::tempdir().unwrap();
    let broken_sink = format!(
        "{}      error_output_url: s3://{errors_bucket}\n      error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n    retry: {{ duration_seconds: 2 }}\n",
        s3::sink_yaml(&missing_bucket, &endpoint)
    );
    let spillway = Spillway::start(dir.path(), &stream_yaml(&broken_sink, ""));
    let client = spillway.client().await;
    let sent: Vec<String> = (0..20).map(|index| format!("{{\"id\":\"lost-{index}\"}}\n")).collect();
    let records = sent.iter().map(|data| Record::builder().data(Blob::new(data.clone())).build().unwrap()).collect();
    client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let error_objects = loop {
        let objects = s3::objects(&s3, &errors_bucket, "errors/").await;
        if !objects.is_empty() {
            break objects;
        }
        assert!(Instant::now() < deadline, "no error output after 60 s:\n{}", spillway.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(error_objects[0].0.starts_with("errors/s3-failed/"), "{}", error_objects[0].0);
    let lines: Vec<serde_json::Value> = error_objects
        .iter()
        .flat_map(|(_, body)| {
            body.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines.len(), 20);
    for (line, expected) in lines.iter().zip(&sent) {
        assert_eq!(line["errorCode"], "S3.NoSuchBucket", "{line}");
        assert!(line["errorMessage"].as_str().unwrap().contains(&missing_bucket), "{line}");
        assert!(line["attemptsMade"].as_u64().unwrap() >= 1);
        assert!(line["arrivalTimestamp"].as_i64().unwrap() > 1_700_000_000_000);
        assert!(line["attemptEndingTimestamp"].as_i64().unwrap() >= line["arrivalTimestamp"].as_i64().unwrap());
        let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
        assert_eq!(String::from_utf8(raw).unwrap(), *expected);
    }
    assert!(spillway.log_text().contains("records routed to the error output"));
    assert_eq!(spillway.terminate(), 0);

    // The operator fixes the bucket name; new records are delivered, the routed ones are not resent.
    let fixed = stream_yaml(&s3::sink_yaml(&good_bucket, &endpoint), "");
    let spillway = Spillway::start(dir.path(), &fixed);
    let client = spillway.client().await;
    client
        .put_record()
        .delivery_stream_name("app-logs")
        .record(Record::builder().data(Blob::new("{\"id\":\"after-fix\"}\n")).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(spillway.terminate(), 0);
    let delivered = delivered_ids(&s3::objects(&s3, &good_bucket, "").await);
    assert_eq!(delivered.keys().collect::<Vec<_>>(), ["after-fix"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn back_pressure_throttles_fast_clients_and_delivers_everything_once() {
    let s3 = s3::client().await;
    let bucket = format!("spillway-late-{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    // The bucket does not exist yet: deliveries fail (retriably), the 16 MiB WAL fills, puts are
    // refused with ServiceUnavailableException until the bucket appears.
    let yaml = stream_yaml(
        &s3::sink_yaml(&bucket, &env("SPILLWAY_TEST_S3_ENDPOINT")),
        // full_wait_ms 0: refuse at once, so the clients themselves see the back-pressure.
        "limits: { max_wal_mib: 16, max_inflight_request_mib: 8, full_wait_ms: 0 }\nwal: { segment_mib: 2 }\n",
    );
    let spillway = Spillway::start(dir.path(), &yaml);
    // The idle process's resident set (code pages, runtime, clients) is the baseline: it grows with
    // the binary, while what back-pressure bounds is what the load adds on top of it.
    let idle_rss = spillway.metric("process_peak_rss_bytes").await.expect("peak rss metric") as u64;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pushers =
        tokio::spawn(push_until_stopped(spillway.endpoint.clone(), 4, "bp".into(), 7, ledger.clone(), stop.clone(), 1));
    // Until the clients themselves were refused (the SDK retries a refusal a few times first):
    // once the bucket exists the WAL drains within seconds, and their retries would succeed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let throttled = spillway.metric("spillway_throttled_records_total{stream=\"app-logs\"}").await.unwrap_or(0.0);
        if throttled > 0.0 && ledger.lock().unwrap().throttled_calls > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "clients were never throttled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s3.create_bucket().bucket(&bucket).send().await.expect("create the bucket late");
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let throttled_calls = pushers.await.unwrap();
    assert!(throttled_calls > 0, "clients saw ServiceUnavailableException");

    let peak_rss = spillway.metric("process_peak_rss_bytes").await.expect("peak rss metric") as u64;
    assert_eq!(spillway.terminate(), 0);
    // Bound on what the load adds: the configured in-flight request memory (8 MiB), three 1 MiB
    // buffers (one filling, two in flight) and ~24 MiB for the allocator's per-thread arenas, the
    // S3 client's first requests and four clients' connections.
    let added = peak_rss.saturating_sub(idle_rss);
    eprintln!("idle RSS {} MiB, peak RSS {} MiB", idle_rss >> 20, peak_rss >> 20);
    let bound = (8 + 3 + 24) << 20;
    assert!(
        added < bound,
        "load added {} MiB to the idle {} MiB, over the {} MiB bound",
        added >> 20,
        idle_rss >> 20,
        bound >> 20
    );
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let delivered = delivered_ids(&s3::objects(&s3, &bucket, "").await);
    assert!(ledger.unknown.is_empty(), "no call failed for any other reason than throttling: {:?}", ledger.errors);
    assert_exactly_once(&ledger, &delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_minio_outage_of_60_seconds_loses_and_duplicates_nothing() {
    // A MinIO of this test's own, so stopping it does not disturb other tests.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let data = tempfile::tempdir().unwrap();
    let start_minio = || {
        std::process::Command::new(env("SPILLWAY_TEST_MINIO_BIN"))
            .args(["server", "--address", &format!("127.0.0.1:{port}"), "--console-address", "127.0.0.1:0"])
            .arg(data.path())
            .env("MINIO_ROOT_USER", env("SPILLWAY_TEST_S3_ACCESS_KEY"))
            .env("MINIO_ROOT_PASSWORD", env("SPILLWAY_TEST_S3_SECRET_KEY"))
            .env("MINIO_BROWSER", "off")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start minio")
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let wait_ready = || async {
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if http.get(format!("{endpoint}/minio/health/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("minio on {endpoint} not ready");
    };
    let mut minio = start_minio();
    wait_ready().await;
    let s3 = s3::client_for(&endpoint).await;
    let bucket = s3::new_bucket(&s3).await;

    let dir = tempfile::tempdir().unwrap();
    // A small WAL: during the outage clients are throttled rather than piling up gigabytes.
    let yaml = stream_yaml(&s3::sink_yaml(&bucket, &endpoint), "limits: { max_wal_mib: 64 }\n");
    let spillway = Spillway::start(dir.path(), &yaml);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pushers = tokio::spawn(push_until_stopped(
        spillway.endpoint.clone(),
        4,
        "outage".into(),
        11,
        ledger.clone(),
        stop.clone(),
        1,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    minio.kill().unwrap();
    minio.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut minio = start_minio();
    wait_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pushers.await.unwrap();

    let retries =
        spillway.metric("spillway_delivery_retries_total{stream=\"app-logs\"}").await.expect("retries metric");
    assert!(retries > 0.0, "retries are visible in metrics");
    assert!(spillway.log_text().contains("delivery failed, retrying"), "and in the log");
    assert_eq!(spillway.terminate(), 0);
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.unknown.is_empty(), "intake never failed during the outage: {:?}", ledger.errors);
    let delivered = delivered_ids(&s3::objects(&s3, &bucket, "").await);
    assert_exactly_once(&ledger, &delivered);
    let _ = minio.kill();
    let _ = minio.wait();
}
