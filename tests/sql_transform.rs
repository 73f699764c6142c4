//! `sql` transforms end to end on the local sink (YAML in, objects out): a filter with a
//! projection and computed columns after a jq transform, compared row by row with the same
//! computation done here; each record's own inferred types; records that are not JSON or do not
//! fit the table land under `processing-failed/` while the others are delivered; queries that do
//! not parse, name an unknown column or are not stateless are refused by `spillway validate`.
//!
//! Seeded SIGKILL rounds with an `sql` stage after a jq split and dynamic partitions: the
//! transform runs where jq's does (the assembler's routing of the records read from the WAL, and
//! the rebuilding of a recorded batch from the same records), but on micro-batches of all the
//! records read at once, so the rounds check that a rebuilt batch holds the same rows: every kept
//! row once, none twice, each record set aside once.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use base64::Engine;
use common::{Spillway, json_lines_under, local_objects, put_in_batches};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn yaml(transforms: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   processing:\n\
         \x20     record_delimiter: newline\n\
         \x20     transforms:\n{transforms}\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 60 }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     prefix: 'logs/'\n\
         \x20     error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n"
    )
}

/// A jq split, then SQL with a given table: slow or failed requests, a computed column and a
/// function call.
const FILTER_AND_PROJECT: &str = "\x20       - { type: jq, expr: 'if type == \"object\" and has(\"batch\") then .batch[] else . end' }\n\
    \x20       - type: sql\n\
    \x20         query: >-\n\
    \x20           SELECT id, upper(service) AS service, status, latency_ms * 1000 AS latency_us,\n\
    \x20           status >= 500 AS failed FROM records WHERE status >= 500 OR latency_ms > 250.5\n\
    \x20         schema:\n\
    \x20           columns:\n\
    \x20             - { name: id, type: bigint }\n\
    \x20             - { name: service, type: string }\n\
    \x20             - { name: status, type: int }\n\
    \x20             - { name: latency_ms, type: double }\n\
    \x20             - { name: message, type: string }\n";

/// `rawData` → `errorCode` of the records under `processing-failed/`.
fn failures(objects: &[(String, Vec<u8>)]) -> BTreeMap<String, String> {
    let mut failures = BTreeMap::new();
    for line in json_lines_under(objects, "errors/processing-failed/") {
        let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
        assert!(line["errorMessage"].as_str().is_some_and(|message| !message.is_empty()), "{line}");
        failures.insert(String::from_utf8(raw).unwrap(), line["errorCode"].as_str().unwrap().to_string());
    }
    failures
}

fn sorted_by_id(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|row| row["id"].as_i64());
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_and_projection_deliver_what_the_same_computation_gives() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml(FILTER_AND_PROJECT));
    let client = spillway.client().await;
    let services = ["checkout", "search", "auth"];
    let mut records = Vec::new();
    let mut sent: Vec<(i64, &str, i64, f64)> = Vec::new();
    for id in 0..1500i64 {
        let service = services[(id % 3) as usize];
        let status = [200, 200, 404, 500, 503][(id % 5) as usize];
        let latency_ms = (id * 37 % 500) as f64 + 0.25;
        sent.push((id, service, status, latency_ms));
        records.push(
            json!({"id": id, "service": service, "status": status, "latency_ms": latency_ms, "message": "m\n\"q\""})
                .to_string(),
        );
    }
    // One record the jq stage splits in two, each output then filtered by SQL on its own.
    records.push(
        r#"{"batch":[{"id":5000,"service":"auth","status":502,"latency_ms":1},{"id":5001,"service":"auth","status":200,"latency_ms":2}]}"#
            .into(),
    );
    sent.push((5000, "auth", 502, 1.0));
    // Bad input: a string for the bigint column, an array instead of an object (not JSON is
    // refused by the jq stage first, and by SQL in the next test).
    let bad = [
        (r#"{"id":"seven","service":"auth","status":500,"latency_ms":1}"#, "Sql.MalformedData"),
        ("[1,2,3]", "Sql.MalformedData"),
    ];
    records.extend(bad.iter().map(|(record, _)| record.to_string()));
    // A record without `latency_ms` or `status`: NULL in the table, so the WHERE drops it.
    records.push(r#"{"id":7000,"service":"auth"}"#.into());
    put_in_batches(&client, "app-logs", &records, 400).await;
    assert_eq!(spillway.terminate(), 0);

    let objects = local_objects(&dir.path().join("out"));
    let expected: Vec<Value> = sent
        .iter()
        .filter(|(_, _, status, latency_ms)| *status >= 500 || *latency_ms > 250.5)
        .map(|(id, service, status, latency_ms)| {
            json!({
                "id": id,
                "service": service.to_uppercase(),
                "status": status,
                "latency_us": latency_ms * 1000.0,
                "failed": *status >= 500,
            })
        })
        .collect();
    let delivered = sorted_by_id(json_lines_under(&objects, "logs/"));
    assert!(expected.len() > 500, "the filter keeps a good share: {}", expected.len());
    assert_eq!(delivered.len(), expected.len(), "every kept row exactly once");
    assert_eq!(delivered, sorted_by_id(expected));
    let keys: Vec<&String> = delivered[0].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "only the selected columns: {keys:?}");

    let expected_failures: BTreeMap<String, String> =
        bad.iter().map(|(record, code)| (record.to_string(), code.to_string())).collect();
    assert_eq!(failures(&objects), expected_failures, "records that cannot be read are kept as they arrived");
}

/// Without a schema each record is read with its own types; a column a record lacks is NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferred_types_are_each_records_own() {
    let dir = tempfile::tempdir().unwrap();
    let transforms = "\x20       - type: sql\n\
        \x20         query: \"SELECT id, coalesce(user_name, 'anonymous') AS who, bytes / 1024 AS kib FROM records WHERE bytes > 2048\"\n";
    let spillway = Spillway::start(dir.path(), &yaml(transforms));
    let client = spillway.client().await;
    let records: Vec<String> = vec![
        r#"{"id":1,"user_name":"ana","bytes":4096}"#.into(),
        r#"{"id":2,"bytes":8192}"#.into(),
        r#"{"id":3,"user_name":"bo","bytes":100}"#.into(),
        r#"{"id":4,"user_name":"cy","bytes":3072.0,"extra":{"nested":[1,2]}}"#.into(),
        r#"{"id":5}"#.into(),
        "{not json".into(),
        "[1]".into(),
        r#"{"id":8,"bytes":"lots"}"#.into(),
    ];
    put_in_batches(&client, "app-logs", &records, 400).await;
    assert_eq!(spillway.terminate(), 0);

    let objects = local_objects(&dir.path().join("out"));
    let delivered = sorted_by_id(json_lines_under(&objects, "logs/"));
    assert_eq!(
        delivered,
        [
            json!({"id": 1, "who": "ana", "kib": 4}),
            json!({"id": 2, "who": "anonymous", "kib": 8}),
            json!({"id": 4, "who": "cy", "kib": 3.0}),
        ]
    );
    // A string where the query compares with a number: DataFusion casts it, and the cast fails.
    let expected_failures = [
        ("{not json", "Sql.NonJsonRecord"),
        ("[1]", "Sql.MalformedData"),
        (r#"{"id":8,"bytes":"lots"}"#, "Sql.QueryFailed"),
    ];
    assert_eq!(
        failures(&objects),
        expected_failures.iter().map(|(record, code)| (record.to_string(), code.to_string())).collect()
    );
}

fn validate(transforms: &str) -> (bool, String) {
    common::validate_yaml(&yaml(transforms))
}

fn with_query(query: &str) -> String {
    FILTER_AND_PROJECT.replace(
        "query: >-\n\
         \x20           SELECT id, upper(service) AS service, status, latency_ms * 1000 AS latency_us,\n\
         \x20           status >= 500 AS failed FROM records WHERE status >= 500 OR latency_ms > 250.5\n",
        &format!("query: \"{query}\"\n"),
    )
}

#[test]
fn the_example_query_validates() {
    let (ok, stderr) = validate(FILTER_AND_PROJECT);
    assert!(ok, "{stderr}");
}

#[test]
fn queries_that_do_not_plan_are_refused_by_validate_with_datafusions_message() {
    let path = "streams[0].processing.transforms[1].query";
    let cases = [
        // Does not parse.
        ("SELEC id FROM records", "SQL error: ParserError"),
        ("SELECT id FROM records WHERE", "SQL error: ParserError"),
        // Unknown column, unknown table, unknown function.
        ("SELECT id, latency FROM records", "No field named latency"),
        ("SELECT id FROM logs", "table 'logs' not found"),
        ("SELECT nosuchfn(id) FROM records", "nosuchfn"),
        // A type error.
        ("SELECT id FROM records WHERE service + 1 > 2", "Cannot coerce arithmetic expression Utf8 + Int64"),
        // Not stateless: each would depend on more than one record, or on the clock.
        ("SELECT service, count(*) AS n FROM records GROUP BY service", "need a window"),
        ("SELECT id FROM records ORDER BY id", "ORDER BY is not supported"),
        ("SELECT id FROM records LIMIT 5", "LIMIT / OFFSET are not supported"),
        ("SELECT id, now() AS at FROM records", "now() is not supported"),
        ("SELECT id, random() AS r FROM records", "random() is not supported"),
    ];
    for (query, message) in cases {
        let (ok, stderr) = validate(&with_query(query));
        assert!(!ok, "{query} is refused");
        assert!(stderr.contains(path), "{query}: the path in {stderr}");
        assert!(stderr.contains(message), "{query}: `{message}` in {stderr}");
    }
}

/// Seeded SIGKILL rounds (`SPILLWAY_CHAOS_SEED`, `SPILLWAY_CHAOS_ROUNDS`, default 10) while a
/// client puts records that jq splits in two and SQL filters (ids divisible by 3 dropped), with a
/// computed column, into three dynamic partitions: every kept output of an acknowledged record
/// arrives exactly once with its computed value, nothing arrives twice, and each round's record
/// that does not fit the table (a string id) is set aside exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_rounds_deliver_every_kept_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let transforms = "\x20       - { type: jq, expr: '.batch[]' }\n\
        \x20       - type: sql\n\
        \x20         query: \"SELECT id, service, id * 2 AS twice FROM records WHERE id % 3 <> 0\"\n\
        \x20         schema: { columns: [ { name: id, type: bigint }, { name: service, type: string } ] }\n\
        \x20     dynamic_partitioning: { keys: { service: .service } }\n";
    let yaml = yaml(transforms)
        .replace("interval_seconds: 60", "interval_seconds: 1")
        .replace("prefix: 'logs/'", "prefix: 'logs/service=!{partitionKeyFromQuery:service}/'");
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(11);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut misfits_acknowledged = Vec::new();
    let misfit = |round: usize| format!(r#"{{"batch":[{{"id":"bad-{round}","service":"svc-0"}}]}}"#);
    let mut next_id = 0u64;
    for round in 0..rounds {
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
                    let ids: Vec<u64> = (id..id + 50).collect();
                    id += 50;
                    let records = ids.iter().map(|id| {
                        let data = format!(
                            r#"{{"batch":[{{"id":{id},"service":"svc-{}"}},{{"id":{},"service":"svc-{}"}}]}}"#,
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
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        let sent = client
            .put_record()
            .delivery_stream_name("app-logs")
            .record(Record::builder().data(Blob::new(misfit(round))).build().unwrap())
            .send()
            .await;
        if sent.is_ok() {
            misfits_acknowledged.push(round);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        spillway.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pusher.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let kept: Vec<u64> = acknowledged.iter().flat_map(|id| [*id, id + 500_000]).filter(|id| id % 3 != 0).collect();
    let final_run = Spillway::start(dir.path(), &yaml);
    let delivered = || {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for (key, body) in local_objects(&dir.path().join("out")) {
            if !key.starts_with("logs/") {
                continue;
            }
            for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
                let row: Value = serde_json::from_slice(line).expect("a JSON line");
                let id = row["id"].as_u64().unwrap();
                let service = row["service"].as_str().unwrap();
                assert!(key.starts_with(&format!("logs/service={service}/")), "{row} under {key}");
                assert_eq!(row["twice"].as_u64(), Some(id * 2), "{row}");
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    };
    let set_aside = || {
        let mut rounds: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for line in json_lines_under(&local_objects(&dir.path().join("out")), "errors/") {
            let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            let code = line["errorCode"].as_str().unwrap_or_default().to_string();
            rounds.entry(String::from_utf8(raw).unwrap()).or_insert((0, code)).0 += 1;
        }
        rounds
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while std::time::Instant::now() < deadline {
        let counts = delivered();
        let misfits = set_aside();
        if kept.iter().all(|id| counts.contains_key(id))
            && misfits_acknowledged.iter().all(|round| misfits.contains_key(&misfit(*round)))
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(final_run.terminate(), 0);

    let counts = delivered();
    assert!(kept.len() > 1_000, "the client got work done: {}", kept.len());
    let missing: Vec<&u64> = kept.iter().filter(|id| !counts.contains_key(id)).collect();
    let duplicated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, count)| **count > 1).collect();
    let filtered_out: Vec<&u64> = counts.keys().filter(|id| *id % 3 == 0).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty() && filtered_out.is_empty(),
        "seed {seed}, {rounds} rounds: {} rows missing (first {:?}), {} duplicated (first {:?}), {} the WHERE drops",
        missing.len(),
        missing.first(),
        duplicated.len(),
        duplicated.first(),
        filtered_out.len()
    );
    let misfits = set_aside();
    assert!(misfits_acknowledged.len() * 2 >= rounds, "most misfit puts were acknowledged: {misfits_acknowledged:?}");
    for round in &misfits_acknowledged {
        assert!(
            misfits.contains_key(&misfit(*round)),
            "seed {seed}: acknowledged misfit of round {round} not set aside"
        );
    }
    for (record, (count, code)) in &misfits {
        assert!(record.contains("bad-"), "seed {seed}: only misfits are set aside, got {record} ({code})");
        assert_eq!((*count, code.as_str()), (1, "Sql.MalformedData"), "seed {seed}: {record}");
    }
}
