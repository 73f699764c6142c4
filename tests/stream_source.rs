//! Streams that read another stream (`source: { type: stream }`), YAML in and objects out on the
//! local sink: one Direct PUT intake feeds a raw archive, a jq filter, an SQL projection and
//! windowed SQL counts, each delivering every record of its own once; seeded SIGKILL rounds under load, after which the
//! archive and two readers hold every acknowledged record exactly once and the upstream's WAL is
//! trimmed; a reader that cannot deliver holds the upstream's WAL until intake is throttled, and
//! removing it from the file (a reload) lets the upstream go on; configurations that read an
//! unknown stream, themselves or in a cycle are refused by `spillway validate`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, eventually, local_json_lines, put_in_batches, validate_yaml};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// One stream's YAML: `source`, `transforms` (already indented lines) and a local folder under
/// `out/<name>/`.
fn stream(name: &str, source: &str, transforms: &str) -> String {
    format!(
        "\x20 - name: {name}\n\
         {source}\
         \x20   processing:\n\
         \x20     record_delimiter: newline\n\
         \x20     transforms: [{transforms}]\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: file://./out, prefix: '{name}/', error_output_prefix: 'errors/{name}/' }}\n"
    )
}

fn reads(upstream: &str) -> String {
    format!("\x20   source: {{ type: stream, stream: {upstream} }}\n")
}

fn config(streams: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n{}",
        streams.concat()
    )
}

fn id_counts(lines: &[Value]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        *counts.entry(line["id"].as_u64().expect("an id")).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_intake_feeds_a_raw_archive_a_filter_a_projection_and_windowed_counts() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(&[
        stream("app-logs", "", ""),
        stream("server-errors", &reads("app-logs"), "{ type: jq, expr: 'select(.status >= 500)' }"),
        stream(
            "latency",
            &reads("app-logs"),
            "{ type: sql, query: 'SELECT id, service, latency_ms * 1000 AS latency_us FROM records', \
             schema: { columns: [ { name: id, type: bigint }, { name: service, type: string }, { name: latency_ms, type: double } ] } }",
        ),
        stream(
            "counts",
            &reads("app-logs"),
            "{ type: sql, query: 'SELECT service, count(*) AS n FROM records GROUP BY service', \
             schema: { columns: [ { name: service, type: string } ] }, window: { type: tumbling, size_seconds: 1 } }",
        ),
    ]);
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let sent: Vec<Value> = (0..2000u64)
        .map(|id| {
            let (service, status) = (["auth", "search"][(id % 2) as usize], [200, 503, 404, 500][(id % 4) as usize]);
            json!({"id": id, "service": service, "status": status, "latency_ms": id as f64 / 4.0})
        })
        .collect();
    put_in_batches(&client, "app-logs", &sent.iter().map(Value::to_string).collect::<Vec<_>>(), 400).await;
    let errors: Vec<&Value> = sent.iter().filter(|record| record["status"].as_u64() >= Some(500)).collect();
    eventually(Duration::from_secs(60), "every stream delivered its records", || {
        let counted: u64 =
            local_json_lines(&dir.path().join("out"), "counts/").iter().map(|row| row["n"].as_u64().unwrap_or(0)).sum();
        let done = local_json_lines(&dir.path().join("out"), "app-logs/").len() == sent.len()
            && local_json_lines(&dir.path().join("out"), "server-errors/").len() == errors.len()
            && local_json_lines(&dir.path().join("out"), "latency/").len() == sent.len()
            && counted == sent.len() as u64;
        done.then_some(())
    })
    .await;
    let metric = spillway.metric("spillway_incoming_records_total{stream=\"latency\"}").await;
    assert_eq!(spillway.terminate(), 0);

    // The archive: every record as sent, in order within each object, once.
    let mut archived = local_json_lines(&dir.path().join("out"), "app-logs/");
    archived.sort_by_key(|line| line["id"].as_u64());
    assert_eq!(archived, sent);
    let mut filtered = local_json_lines(&dir.path().join("out"), "server-errors/");
    filtered.sort_by_key(|line| line["id"].as_u64());
    assert_eq!(filtered.iter().collect::<Vec<_>>(), errors);
    let mut projected = local_json_lines(&dir.path().join("out"), "latency/");
    projected.sort_by_key(|line| line["id"].as_u64());
    for (row, record) in projected.iter().zip(&sent) {
        let expected = json!({"id": record["id"], "service": record["service"], "latency_us": record["latency_ms"].as_f64().unwrap() * 1000.0});
        assert_eq!(row, &expected);
    }
    assert_eq!(metric, Some(sent.len() as f64), "the reading stream counts what it copied as its intake");
    // Per-second counts by arrival: every record counted once, in its service's rows.
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for row in local_json_lines(&dir.path().join("out"), "counts/") {
        assert!(row["window_start"].is_string() && row["window_end"].is_string(), "{row}");
        *counted.entry(row["service"].as_str().unwrap().to_string()).or_default() += row["n"].as_u64().unwrap();
    }
    assert_eq!(counted, BTreeMap::from([("auth".to_string(), 1000), ("search".to_string(), 1000)]));
    assert!(local_json_lines(&dir.path().join("out"), "errors/").is_empty(), "nothing failed");
}

/// Seeded SIGKILL rounds (`SPILLWAY_CHAOS_SEED`, `SPILLWAY_CHAOS_ROUNDS`, default 10) while a
/// client puts records: the archive and a copy hold every acknowledged record exactly once, the
/// even-id filter every even one; at the end the upstream WAL keeps nothing its readers copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_rounds_every_reader_delivers_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(&[
        stream("app-logs", "", ""),
        stream("copy", &reads("app-logs"), ""),
        stream("evens", &reads("app-logs"), "{ type: jq, expr: 'select(.id % 2 == 0)' }"),
    ]);
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(7);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut next_id = 0u64;
    for _ in 0..rounds {
        let spillway = Spillway::start(dir.path(), &yaml);
        let client = spillway.client().await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first_id = next_id;
        next_id += 1_000_000;
        let pusher = tokio::spawn({
            let (acknowledged, stop, client) = (acknowledged.clone(), stop.clone(), client.clone());
            async move {
                let mut id = first_id;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ids: Vec<u64> = (id..id + 100).collect();
                    id += 100;
                    let records = ids.iter().map(|id| {
                        Record::builder()
                            .data(Blob::new(json!({"id": id, "pad": "x".repeat(200)}).to_string()))
                            .build()
                            .unwrap()
                    });
                    let sent = client
                        .put_record_batch()
                        .delivery_stream_name("app-logs")
                        .set_records(Some(records.collect()))
                        .send()
                        .await;
                    match sent {
                        Ok(output) if output.failed_put_count() == 0 => acknowledged.lock().unwrap().extend(ids),
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
        spillway.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pusher.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let evens: Vec<u64> = acknowledged.iter().copied().filter(|id| id % 2 == 0).collect();
    let final_run = Spillway::start(dir.path(), &yaml);
    let complete = |prefix: &str, expected: &[u64]| {
        let counts = id_counts(&local_json_lines(&dir.path().join("out"), prefix));
        expected.iter().all(|id| counts.contains_key(id))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while std::time::Instant::now() < deadline
        && !(complete("app-logs/", &acknowledged) && complete("copy/", &acknowledged) && complete("evens/", &evens))
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Delivered everywhere: the upstream trims to its own checkpoint (its readers copied all).
    let trimmed = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let undelivered = final_run.metric("spillway_wal_bytes{stream=\"app-logs\"}").await;
            if undelivered == Some(0.0) || std::time::Instant::now() > deadline {
                return undelivered;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    assert_eq!(final_run.terminate(), 0);

    assert!(acknowledged.len() > 2_000, "the client got work done: {}", acknowledged.len());
    for (prefix, expected) in [("app-logs/", &acknowledged), ("copy/", &acknowledged), ("evens/", &evens)] {
        let counts = id_counts(&local_json_lines(&dir.path().join("out"), prefix));
        let missing: Vec<&u64> = expected.iter().filter(|id| !counts.contains_key(id)).collect();
        let duplicated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, count)| **count > 1).collect();
        assert!(
            missing.is_empty() && duplicated.is_empty(),
            "seed {seed}, {rounds} rounds, {prefix}: {} of {} missing (first {:?}), {} duplicated (first {:?})",
            missing.len(),
            expected.len(),
            missing.first(),
            duplicated.len(),
            duplicated.first()
        );
        if prefix == "evens/" {
            assert!(counts.keys().all(|id| id % 2 == 0), "the filter kept only even ids");
        }
    }
    assert_eq!(trimmed, Some(0.0), "the upstream wal holds nothing its readers still need");
}

/// A reader whose destination is down stops copying once its own WAL is full; the upstream keeps
/// what it has not copied, so the upstream's intake is throttled too (nothing is lost). Removing
/// the reader from the file (SIGHUP) releases the upstream's WAL and intake resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reader_holds_the_upstream_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = "\x20 - name: stuck\n\
         \x20   source: { type: stream, stream: app-logs }\n\
         \x20   buffering: { size_mib: 1, interval_seconds: 1 }\n\
         \x20   retry: { duration_seconds: 3600 }\n\
         \x20   sink: { type: s3, url: 's3://nowhere', endpoint: 'http://127.0.0.1:9', region: us-east-1, access_key_id: a, secret_access_key: b }\n";
    let limits = "limits: { max_wal_mib: 8, full_wait_ms: 0 }\n";
    // A short grace: removing the stuck reader gives up on delivering what it holds after 3 s.
    let grace = |yaml: String| yaml.replace("shutdown_grace_seconds: 30", "shutdown_grace_seconds: 3");
    let with_reader = grace(format!("{limits}{}", config(&[stream("app-logs", "", ""), stuck.to_string()])));
    let without_reader = grace(format!("{limits}{}", config(&[stream("app-logs", "", "")])));
    let config_path = dir.path().join("spillway.yaml");
    std::fs::write(&config_path, &with_reader).unwrap();
    let spillway = Spillway::start_with_config(dir.path(), &config_path);
    let client = spillway.client().await;
    let payload = "y".repeat(60_000);
    let mut acknowledged = 0u64;
    let mut refused = None;
    for id in 0..1_000u64 {
        let record = Record::builder().data(Blob::new(json!({"id": id, "pad": payload}).to_string())).build().unwrap();
        match client.put_record().delivery_stream_name("app-logs").record(record).send().await {
            Ok(_) => acknowledged += 1,
            Err(error) => {
                refused = Some(format!("{:?}", error.into_service_error()));
                break;
            }
        }
    }
    let refused = refused.expect("intake is throttled once the stuck reader holds 8 MiB of the upstream's wal");
    assert!(refused.contains("ServiceUnavailableException"), "{refused}");
    // The archive itself delivered everything it acknowledged: only the reader holds the WAL.
    eventually(Duration::from_secs(30), "the archive delivered what it acknowledged", || {
        (local_json_lines(&dir.path().join("out"), "app-logs/").len() as u64 == acknowledged).then_some(())
    })
    .await;
    let hold = dir.path().join("data/streams/app-logs/wal/readers/stuck.hold");
    assert!(hold.exists(), "the hold is on disk");

    std::fs::write(&config_path, &without_reader).unwrap();
    common::signal(&spillway.child, "HUP");
    eventually(Duration::from_secs(30), "the removed reader's hold was released", || (!hold.exists()).then_some(()))
        .await;
    let record = Record::builder().data(Blob::new(json!({"id": 5_000, "pad": payload}).to_string())).build().unwrap();
    let mut accepted = false;
    for _ in 0..50 {
        if client.put_record().delivery_stream_name("app-logs").record(record.clone()).send().await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(accepted, "intake resumed once no reader held the wal");
    eventually(Duration::from_secs(30), "the new record was archived", || {
        id_counts(&local_json_lines(&dir.path().join("out"), "app-logs/")).contains_key(&5_000).then_some(())
    })
    .await;
    assert!(spillway.log_text().contains("no longer does; its wal is no longer kept for it"));
    assert_eq!(spillway.terminate(), 0);
}

#[test]
fn reading_an_unknown_stream_itself_or_in_a_cycle_is_refused() {
    let (ok, stderr) = validate_yaml(&config(&[stream("app-logs", "", ""), stream("copy", &reads("app-log"), "")]));
    assert!(
        !ok && stderr.contains("streams[1].source.stream") && stderr.contains("no stream named \"app-log\""),
        "{stderr}"
    );
    let (ok, stderr) = validate_yaml(&config(&[stream("app-logs", &reads("app-logs"), "")]));
    assert!(!ok && stderr.contains("a stream cannot read itself"), "{stderr}");
    let (ok, stderr) = validate_yaml(&config(&[
        stream("a", &reads("c"), ""),
        stream("b", &reads("a"), ""),
        stream("c", &reads("b"), ""),
    ]));
    assert!(!ok && stderr.contains("streams read each other in a cycle: a -> c -> b -> a"), "{stderr}");
    let (ok, stderr) = validate_yaml(&config(&[stream("app-logs", "", ""), stream("copy", &reads("app-logs"), "")]));
    assert!(ok, "{stderr}");
}
