//! jq transforms end to end on the local sink (YAML in, objects out): records are mapped,
//! filtered and split before partitioning, records a transform fails land under
//! `processing-failed/` with Firehose's error JSON, and seeded SIGKILL rounds show that a record
//! split in several outputs is delivered exactly once per output.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use base64::Engine;
use common::{Spillway, local_objects};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Drops debug records, splits `batch` records into their entries, keeps three fields, and
/// partitions by service.
const YAML: &str = "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
    data_dir: ./data\n\
    streams:\n\
    \x20 - name: app-logs\n\
    \x20   processing:\n\
    \x20     record_delimiter: newline\n\
    \x20     transforms:\n\
    \x20       - { type: jq, expr: 'if has(\"batch\") then .batch[] else . end' }\n\
    \x20       - { type: jq, expr: 'select(.level != \"debug\") | {id, service, level}' }\n\
    \x20     dynamic_partitioning: { keys: { service: .service } }\n\
    \x20   buffering: { size_mib: 1, interval_seconds: 60 }\n\
    \x20   sink:\n\
    \x20     type: s3\n\
    \x20     url: file://./out\n\
    \x20     compression: gzip\n\
    \x20     prefix: 'logs/service=!{partitionKeyFromQuery:service}/'\n\
    \x20     error_output_prefix: 'errors/!{firehose:error-output-type}/'\n";

async fn put(client: &aws_sdk_firehose::Client, records: &[String]) {
    let records = records.iter().map(|data| Record::builder().data(Blob::new(data.as_bytes())).build().unwrap());
    let output = client
        .put_record_batch()
        .delivery_stream_name("app-logs")
        .set_records(Some(records.collect()))
        .send()
        .await
        .expect("put");
    assert_eq!(output.failed_put_count(), 0);
}

/// JSON lines of the objects whose key starts with `prefix`, with the key.
fn lines_under(objects: &[(String, Vec<u8>)], prefix: &str) -> Vec<(String, serde_json::Value)> {
    objects
        .iter()
        .filter(|(key, _)| key.starts_with(prefix))
        .flat_map(|(key, body)| {
            body.split(|&byte| byte == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| (key.clone(), serde_json::from_slice(line).expect("a JSON line")))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_mapped_filtered_and_split_before_partitioning() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), YAML);
    let client = spillway.client().await;
    let mut records = Vec::new();
    for id in 0..300 {
        let level = if id % 3 == 0 { "debug" } else { "info" };
        records.push(format!(r#"{{"id":{id},"service":"svc-{}","level":"{level}","noise":"x"}}"#, id % 4));
    }
    // One record holding three entries, one of them debug.
    records.push(
        r#"{"batch":[{"id":1000,"service":"svc-0","level":"warn"},{"id":1001,"service":"svc-1","level":"debug"},{"id":1002,"service":"svc-2","level":"error"}]}"#.into(),
    );
    records.push("this is not json".into());
    records.push(r#"{"batch": 5}"#.into());
    put(&client, &records).await;
    assert_eq!(spillway.terminate(), 0);

    let objects = local_objects(&dir.path().join("out"));
    let delivered = lines_under(&objects, "logs/");
    let mut ids: Vec<u64> = Vec::new();
    for (key, line) in &delivered {
        let service = line["service"].as_str().expect("a service");
        assert!(key.starts_with(&format!("logs/service={service}/")), "{line} under {key}");
        assert_eq!(line.as_object().unwrap().len(), 3, "only id, service and level are kept: {line}");
        assert_ne!(line["level"], "debug");
        ids.push(line["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    let mut expected: Vec<u64> = (0..300).filter(|id| id % 3 != 0).collect();
    expected.extend([1000, 1002]);
    assert_eq!(ids, expected, "every kept record exactly once");

    let failed = lines_under(&objects, "errors/processing-failed/");
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    for (_, line) in &failed {
        let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
        failures.insert(String::from_utf8(raw).unwrap(), line["errorCode"].as_str().unwrap().to_string());
        assert!(line["errorMessage"].as_str().is_some_and(|message| !message.is_empty()), "{line}");
        assert!(line["attemptsMade"].as_u64().is_some() && line["arrivalTimestamp"].as_i64().is_some(), "{line}");
    }
    assert_eq!(
        failures,
        BTreeMap::from([
            ("this is not json".to_string(), "Jq.NonJsonRecord".to_string()),
            (r#"{"batch": 5}"#.to_string(), "Jq.FilterError".to_string()),
        ]),
        "records a transform fails are kept as they arrived, with the reason"
    );
}

/// `validate` names the transform whose expression does not compile.
#[test]
fn a_transform_that_does_not_compile_is_refused_by_validate() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, YAML.replace("select(.level", "select(.level ==")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("streams[0].processing.transforms[1].expr"), "{stderr}");
}

/// Seeded SIGKILL rounds (`SPILLWAY_CHAOS_SEED`, `SPILLWAY_CHAOS_ROUNDS`, default 10) while a
/// client puts records that the transform splits in two: every acknowledged record's two
/// outputs arrive exactly once, and nothing arrives twice. Each round also puts one poison
/// record (nested 10,000 deep, which once overflowed jaq's stack and aborted the process at
/// every start): acknowledged, it lands in `processing-failed/` exactly once with the reason,
/// and it never crashes a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_rounds_deliver_each_output_of_a_split_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = YAML.replace("interval_seconds: 60", "interval_seconds: 1");
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(9);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut poisons_acknowledged = Vec::new();
    let poison = |round: usize| format!(r#"{{"poison":{round},"deep":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let mut next_id = 0u64;
    for round in 0..rounds {
        let spillway = Spillway::start(dir.path(), &yaml);
        let client = spillway.client().await;
        let sent = client
            .put_record()
            .delivery_stream_name("app-logs")
            .record(Record::builder().data(Blob::new(poison(round))).build().unwrap())
            .send()
            .await;
        if sent.is_ok() {
            poisons_acknowledged.push(round);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first_id = next_id;
        next_id += 1_000_000;
        let pusher = tokio::spawn({
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            async move {
                let mut id = first_id;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ids: Vec<u64> = (id..id + 50).collect();
                    id += 50;
                    let records = ids.iter().map(|id| {
                        let data = format!(
                            r#"{{"batch":[{{"id":{id},"service":"svc-{}","level":"info"}},{{"id":{},"service":"svc-{}","level":"info"}}]}}"#,
                            id % 3,
                            id + 500_000,
                            (id + 1) % 3
                        );
                        Record::builder().data(Blob::new(data)).build().unwrap()
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
                    // A steady load rather than a flood: the point is where the kill lands.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
        spillway.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pusher.await.unwrap();
    }
    // The last run delivers the backlog (jq in a debug build is slower than the puts were), then
    // stops; a stop only waits `shutdown_grace_seconds`, so wait for the backlog first.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let final_run = Spillway::start(dir.path(), &yaml);
    let delivered = || {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, line) in lines_under(&local_objects(&dir.path().join("out")), "logs/") {
            *counts.entry(line["id"].as_u64().unwrap()).or_default() += 1;
        }
        counts
    };
    // The records set aside: poison round (`u64::MAX` for anything else) → (count, errorCode).
    let set_aside = || {
        let mut rounds: BTreeMap<u64, (usize, String)> = BTreeMap::new();
        for (_, line) in lines_under(&local_objects(&dir.path().join("out")), "errors/") {
            let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            let text = String::from_utf8_lossy(&raw);
            let digits = text.strip_prefix(r#"{"poison":"#).and_then(|rest| rest.split(',').next());
            let round = digits.and_then(|digits| digits.parse().ok()).unwrap_or(u64::MAX);
            let code = line["errorCode"].as_str().unwrap_or_default().to_string();
            rounds.entry(round).or_insert((0, code)).0 += 1;
        }
        rounds
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while std::time::Instant::now() < deadline {
        let counts = delivered();
        let poisons = set_aside();
        if acknowledged.iter().all(|id| counts.contains_key(id) && counts.contains_key(&(id + 500_000)))
            && poisons_acknowledged.iter().all(|round| poisons.contains_key(&(*round as u64)))
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(final_run.terminate(), 0, "no run crashed on a poison record");

    let objects = local_objects(&dir.path().join("out"));
    let counts = delivered();
    assert!(acknowledged.len() > 1_000, "the client got work done: {}", acknowledged.len());
    let missing: Vec<u64> =
        acknowledged.iter().flat_map(|id| [*id, id + 500_000]).filter(|id| !counts.contains_key(id)).collect();
    let duplicated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "seed {seed}, {rounds} rounds: {} outputs missing (first {:?}), {} duplicated (first {:?})",
        missing.len(),
        missing.first(),
        duplicated.len(),
        duplicated.first()
    );
    // Every acknowledged poison record is in the error output exactly once, with the reason;
    // one whose put died with the server may be there too (once), nothing else failed.
    let poisons = set_aside();
    assert!(poisons_acknowledged.len() * 2 >= rounds, "most poison puts were acknowledged: {poisons_acknowledged:?}");
    for round in &poisons_acknowledged {
        assert!(
            poisons.contains_key(&(*round as u64)),
            "seed {seed}: acknowledged poison of round {round} not set aside"
        );
    }
    for (round, (count, code)) in &poisons {
        assert!(*round < rounds as u64, "seed {seed}: only poison records failed, got {round} ({code})");
        assert_eq!((*count, code.as_str()), (1, "Jq.RecordTooDeep"), "seed {seed}: poison of round {round}");
    }
    assert_eq!(lines_under(&objects, "errors/").len(), poisons.values().map(|(count, _)| count).sum::<usize>());
}

/// `record_delimiter: newline_if_missing` ends every record with exactly one newline, whether
/// the producer sent one (Fluent Bit's firehose output does) or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newline_if_missing_never_doubles_a_producers_newline() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = common::local_yaml(1, 60, "    processing: { record_delimiter: newline_if_missing }\n");
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    put(&client, &["{\"a\":1}\n".into(), "{\"b\":2}".into(), "plain\n".into(), "\n".into()]).await;
    assert_eq!(spillway.terminate(), 0);
    let objects = local_objects(&dir.path().join("out"));
    let body: Vec<u8> = objects.into_iter().flat_map(|(_, body)| body).collect();
    assert_eq!(String::from_utf8(body).unwrap(), "{\"a\":1}\n{\"b\":2}\nplain\n\n");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// CloudWatch Logs subscription payloads (gzip, with a control message) become one record per
/// log event; gzipped records (Fluent Bit's `compression gzip`) land decompressed, not as gzip
/// inside gzip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_logs_payloads_and_gzipped_records_are_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
        data_dir: ./data\n\
        streams:\n\
        \x20 - name: cwl\n\
        \x20   processing:\n\
        \x20     record_delimiter: newline\n\
        \x20     transforms: [ { type: cloudwatch_logs } ]\n\
        \x20   sink: { type: s3, url: file://./out-cwl }\n\
        \x20 - name: fluent\n\
        \x20   processing:\n\
        \x20     record_delimiter: newline_if_missing\n\
        \x20     transforms: [ { type: decompress, format: gzip } ]\n\
        \x20   sink: { type: s3, url: file://./out-fluent, compression: gzip }\n";
    let spillway = Spillway::start(dir.path(), yaml);
    let client = spillway.client().await;
    let data = br#"{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"/aws/lambda/f","logStream":"2026/11/25/[$LATEST]abc","subscriptionFilters":["to-firehose"],"logEvents":[{"id":"1","timestamp":1764028800000,"message":"START RequestId: 1"},{"id":"2","timestamp":1764028800001,"message":"{\"level\":\"info\",\"msg\":\"hi\"}"}]}"#;
    let control = br#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1764028800000,"message":"CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}"#;
    for (stream, record) in [
        ("cwl", gzip(control)),
        ("cwl", gzip(data)),
        ("cwl", b"not a payload".to_vec()),
        ("fluent", gzip(b"{\"log\":\"one\"}\n")),
        ("fluent", gzip(b"{\"log\":\"two\"}\n")),
    ] {
        client
            .put_record()
            .delivery_stream_name(stream)
            .record(Record::builder().data(Blob::new(record)).build().unwrap())
            .send()
            .await
            .expect("put");
    }
    assert_eq!(spillway.terminate(), 0);

    let cwl = local_objects(&dir.path().join("out-cwl"));
    let delivered: Vec<&(String, Vec<u8>)> =
        cwl.iter().filter(|(key, _)| !key.starts_with("processing-failed/")).collect();
    let body: Vec<u8> = delivered.iter().flat_map(|(_, body)| body.clone()).collect();
    assert_eq!(String::from_utf8(body).unwrap(), "START RequestId: 1\n{\"level\":\"info\",\"msg\":\"hi\"}\n");
    let failed = lines_under(&cwl, "processing-failed/");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].1["errorCode"], "CloudWatchLogs.InvalidPayload");

    let fluent = local_objects(&dir.path().join("out-fluent"));
    let body: Vec<u8> = fluent.iter().flat_map(|(_, body)| body.clone()).collect();
    assert_eq!(String::from_utf8(body).unwrap(), "{\"log\":\"one\"}\n{\"log\":\"two\"}\n");
}
