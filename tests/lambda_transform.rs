//! The Lambda transform end to end (YAML in, objects out): the spillway binary calls a real HTTP
//! function served by the test, which speaks Firehose's event / response JSON. Records are
//! transformed, dropped and failed by the function; its partition keys name the object
//! prefixes; broken responses and failing calls send the invocation's records to
//! `processing-failed/` with Firehose's codes; retries, the processor buffer hints and SIGKILL
//! rounds (0 missing, 0 duplicated with a deterministic function) are checked.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::{Spillway, local_objects};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:upper";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

/// What the function saw of one invocation.
#[derive(Debug, Clone)]
struct Seen {
    event: Value,
    body_bytes: usize,
    /// Decoded record bytes.
    data_bytes: usize,
    at: Instant,
    authorization: Option<String>,
}

/// What the function returns for a record `deepen`: JSON nested 10,000 deep (~20 KB).
fn deep_answer(n: u64) -> String {
    format!(r#"{{"N":{n},"DEEP":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000))
}

/// A Firehose-style transform function. Per record (JSON `{"n", "team", "act"}`): `keep` → `Ok`
/// with the record uppercased and `partitionKeys {team}`; `drop` → `Dropped`; `fail` →
/// `ProcessingFailed`; `nokey` → `Ok` without partition keys; `deepen` → `Ok` with a record
/// nested 10,000 deep ([`deep_answer`]). The first record's `mode` breaks
/// the whole answer: `missing`,
/// `duplicated`, `invented`, `notjson`, `badresult`, `http500`, `slow` (answers after 3 s).
#[derive(Default)]
struct Function {
    seen: Mutex<Vec<Seen>>,
    /// The next this many calls answer HTTP 500.
    fail_next: AtomicUsize,
    /// Calls answered, 500s included.
    calls: AtomicUsize,
}

impl Function {
    async fn serve() -> (Arc<Function>, String) {
        let function = Arc::new(Function::default());
        // `/invoke`, and the Lambda Invoke API's path, where `api_defaults.lambda.url` points.
        let app = axum::Router::new()
            .route("/invoke", axum::routing::post(handle))
            .route("/2015-03-31/functions/{function}/invocations", axum::routing::post(handle))
            .with_state(function.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/invoke", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (function, url)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(State(function): State<Arc<Function>>, headers: HeaderMap, body: Bytes) -> Response {
    function.calls.fetch_add(1, Ordering::SeqCst);
    let event: Value = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let records = event["records"].as_array().cloned().unwrap_or_default();
    let data: Vec<Vec<u8>> = records.iter().map(|record| unb64(record["data"].as_str().unwrap_or(""))).collect();
    function.seen.lock().unwrap().push(Seen {
        event: event.clone(),
        body_bytes: body.len(),
        data_bytes: data.iter().map(Vec::len).sum(),
        at: Instant::now(),
        authorization: headers.get("authorization").and_then(|value| value.to_str().ok()).map(str::to_string),
    });
    if function.fail_next.load(Ordering::SeqCst) > 0 {
        function.fail_next.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response();
    }
    let parsed: Vec<Value> = data.iter().map(|data| serde_json::from_slice(data).unwrap_or(Value::Null)).collect();
    let mode = parsed.first().and_then(|first| first["mode"].as_str()).unwrap_or("").to_string();
    let mut answers: Vec<Value> = records
        .iter()
        .zip(data.iter().zip(&parsed))
        .map(|(record, (data, parsed))| {
            let id = record["recordId"].clone();
            match parsed["act"].as_str() {
                Some("drop") => json!({"recordId": id, "result": "Dropped"}),
                Some("fail") => json!({"recordId": id, "result": "ProcessingFailed", "data": b64(data)}),
                Some("nokey") => json!({"recordId": id, "result": "Ok", "data": b64(&data.to_ascii_uppercase())}),
                // A poison record: the function answers with one nested 10,000 deep.
                Some("deepen") => json!({
                    "recordId": id,
                    "result": "Ok",
                    "data": b64(deep_answer(parsed["n"].as_u64().unwrap_or(0)).as_bytes()),
                    "metadata": {"partitionKeys": {"team": "deep"}},
                }),
                _ => json!({
                    "recordId": id,
                    "result": "Ok",
                    "data": b64(&data.to_ascii_uppercase()),
                    "metadata": {"partitionKeys": {"team": parsed["team"].as_str().unwrap_or("none")}},
                }),
            }
        })
        .collect();
    match mode.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        "http500" => return (StatusCode::INTERNAL_SERVER_ERROR, "always failing").into_response(),
        "notjson" => return (StatusCode::OK, "this is not json").into_response(),
        "missing" => {
            answers.pop();
        }
        "duplicated" => answers.push(answers[0].clone()),
        "invented" => answers.push(json!({"recordId": "invented-1", "result": "Ok", "data": b64(b"x")})),
        "badresult" => answers[0]["result"] = json!("Fine"),
        _ => {}
    }
    axum::Json(json!({ "records": answers })).into_response()
}

fn yaml(url: &str, lambda_extra: &str, buffering: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   processing:\n\
         \x20     record_delimiter: newline\n\
         \x20     transforms:\n\
         \x20       - type: lambda\n\
         \x20         url: '{url}'\n\
         \x20         function_arn: '{FUNCTION_ARN}'\n\
         \x20         headers: {{ Authorization: 'Bearer ${{LAMBDA_TOKEN}}' }}\n\
         {lambda_extra}\
         \x20     dynamic_partitioning: {{ enabled: true }}\n\
         \x20   buffering: {buffering}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     prefix: 'team=!{{partitionKeyFromLambda:team}}/'\n\
         \x20     error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n"
    )
}

fn start(dir: &std::path::Path, yaml: &str) -> Spillway {
    let config = dir.join("spillway.yaml");
    std::fs::write(&config, yaml).expect("write config");
    Spillway::start_with_env(dir, &config, &[("LAMBDA_TOKEN", "s3cr3t")], &[])
}

/// Wait (bounded) until a metric reaches `value`.
async fn wait_for_metric(spillway: &Spillway, name: &str, value: f64) {
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let now = spillway.metric(name).await;
        if now.is_some_and(|now| now >= value) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{name} is {now:?}, not {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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

fn record(n: u64, team: &str, act: &str) -> String {
    format!(r#"{{"n":{n},"team":"{team}","act":"{act}"}}"#)
}

/// JSON lines of the objects whose key starts with `prefix`, with the key.
fn lines_under(objects: &[(String, Vec<u8>)], prefix: &str) -> Vec<(String, Value)> {
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

/// `processing-failed` records: raw data (decoded) → the record.
fn failed_records(objects: &[(String, Vec<u8>)]) -> BTreeMap<String, Value> {
    lines_under(objects, "errors/processing-failed/")
        .into_iter()
        .map(|(_, line)| (String::from_utf8(unb64(line["rawData"].as_str().expect("rawData"))).unwrap(), line))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_transformed_dropped_failed_and_partitioned_by_the_function_s_keys() {
    let (function, url) = Function::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let spillway = start(
        dir.path(),
        &yaml(&url, "          buffer_interval_seconds: 0\n", "{ size_mib: 1, interval_seconds: 60 }"),
    );
    let client = spillway.client().await;
    let before_put = chrono::Utc::now().timestamp_millis();
    let mut records = Vec::new();
    for n in 0..60u64 {
        let act = match n % 5 {
            0 => "drop",
            1 => "fail",
            _ => "keep",
        };
        records.push(record(n, ["alpha", "beta", "gamma"][(n % 3) as usize], act));
    }
    records.push(record(60, "alpha", "nokey"));
    put(&client, &records).await;
    // Processing metrics: exact record counts by the function's result (SucceedProcessing).
    let expected_results = [("ok", 37.0), ("dropped", 12.0), ("failed", 12.0)];
    wait_for_metric(&spillway, "spillway_processing_records_total{result=\"ok\",stream=\"app-logs\"}", 37.0).await;
    for (result, count) in expected_results {
        let name = format!("spillway_processing_records_total{{result=\"{result}\",stream=\"app-logs\"}}");
        assert_eq!(spillway.metric(&name).await, Some(count), "{name}");
    }
    let invocations = function.seen().len() as f64;
    let metric =
        |outcome: &str| format!("spillway_processing_invocations_total{{outcome=\"{outcome}\",stream=\"app-logs\"}}");
    assert_eq!(spillway.metric(&metric("success")).await, Some(invocations));
    assert_eq!(spillway.metric(&metric("failure")).await, Some(0.0));
    let durations = spillway.metric("spillway_processing_duration_seconds_count{stream=\"app-logs\"}").await;
    assert_eq!(durations, Some(invocations), "one duration per invocation");
    assert_eq!(spillway.terminate(), 0);

    let objects = local_objects(&dir.path().join("out"));
    let delivered = lines_under(&objects, "team=");
    let mut kept = Vec::new();
    for (key, line) in &delivered {
        let team = line["TEAM"].as_str().expect("the function uppercased the record").to_ascii_lowercase();
        assert!(key.starts_with(&format!("team={team}/")), "{line} under {key}");
        assert_eq!(line["ACT"], "KEEP");
        kept.push(line["N"].as_u64().unwrap());
    }
    kept.sort_unstable();
    assert_eq!(kept, (0..60).filter(|n| n % 5 >= 2).collect::<Vec<_>>(), "kept records exactly once, dropped absent");

    let failed = failed_records(&objects);
    let expected: BTreeSet<String> = records.iter().filter(|data| data.contains("\"fail\"")).cloned().collect();
    assert_eq!(failed.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let after_stop = chrono::Utc::now().timestamp_millis();
    for line in failed.values() {
        let fields: BTreeSet<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        for field in [
            "attemptsMade",
            "arrivalTimestamp",
            "errorCode",
            "errorMessage",
            "attemptEndingTimestamp",
            "rawData",
            "lambdaArn",
        ] {
            assert!(fields.contains(field), "{field} missing in {line}");
        }
        assert_eq!(line["attemptsMade"], 1);
        assert_eq!(line["errorCode"], "Lambda.ProcessingFailedStatus");
        assert_eq!(line["errorMessage"], "ProcessingFailed status set for record");
        assert_eq!(line["lambdaArn"], FUNCTION_ARN);
        let arrival = line["arrivalTimestamp"].as_i64().unwrap();
        let ending = line["attemptEndingTimestamp"].as_i64().unwrap();
        assert!(before_put - 1000 <= arrival && arrival <= ending && ending <= after_stop, "{line}");
    }

    // The event as Firehose sends it, and the header from the environment.
    let seen = function.seen();
    assert!(!seen.is_empty());
    for invocation in &seen {
        assert_eq!(invocation.authorization.as_deref(), Some("Bearer s3cr3t"));
        let event = &invocation.event;
        assert!(event["invocationId"].as_str().is_some_and(|id| !id.is_empty()), "{event}");
        assert_eq!(event["deliveryStreamArn"], "arn:aws:firehose:us-east-1:000000000000:deliverystream/app-logs");
        assert_eq!(event["region"], "us-east-1");
        for record in event["records"].as_array().unwrap() {
            assert!(record["recordId"].as_str().is_some(), "{record}");
            let arrival = record["approximateArrivalTimestamp"].as_i64().unwrap();
            assert!(arrival >= before_put - 1000 && arrival <= after_stop, "{record}");
            assert!(record.get("kinesisRecordMetadata").is_none(), "direct put has no kinesis metadata");
        }
    }
    let sent: usize = seen.iter().map(|invocation| invocation.event["records"].as_array().unwrap().len()).sum();
    assert_eq!(sent, 61, "each record is sent once");

    // A record that comes back without the key the prefix names cannot be placed.
    let unplaced = lines_under(&objects, "errors/metadata-extraction-failed/");
    assert_eq!(unplaced.len(), 1, "{unplaced:?}");
    let line = &unplaced[0].1;
    assert_eq!(line["errorCode"], "DynamicPartitioning.MetadataExtractionFailed");
    assert!(line["errorMessage"].as_str().unwrap().contains("`team`"), "{line}");
    assert_eq!(
        unb64(line["rawData"].as_str().unwrap()),
        record(60, "alpha", "nokey").to_ascii_uppercase().into_bytes()
    );
}

/// A record the function returns nested 10,000 deep (which once overflowed jaq's stack and
/// aborted the process at every start) is set aside by the jq transform after the function,
/// with the reason, while the records around it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_record_the_function_returns_is_set_aside_and_its_neighbours_are_delivered() {
    let (_function, url) = Function::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let after = "          buffer_interval_seconds: 0
        - { type: jq, expr: '{N, TEAM}' }
";
    let yaml = yaml(&url, after, "{ size_mib: 1, interval_seconds: 60 }");
    let spillway = start(dir.path(), &yaml);
    let client = spillway.client().await;
    put(&client, &[record(1, "alpha", "keep"), record(2, "alpha", "deepen"), record(3, "alpha", "keep")]).await;
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(start(dir.path(), &yaml).terminate(), 0, "and it starts again cleanly");

    let objects = local_objects(&dir.path().join("out"));
    let mut kept: Vec<u64> =
        lines_under(&objects, "team=alpha/").iter().map(|(_, line)| line["N"].as_u64().unwrap()).collect();
    kept.sort_unstable();
    assert_eq!(kept, [1, 3]);
    let failed = failed_records(&objects);
    assert_eq!(failed.keys().collect::<Vec<_>>(), [&deep_answer(2)], "the record as the function returned it");
    let line = &failed[&deep_answer(2)];
    assert_eq!(line["errorCode"], "Jq.RecordTooDeep");
    assert_eq!(
        line["errorMessage"],
        "jq cannot read the record: JSON nested deeper than 100 levels (the bracket at byte 113 opens level 101)"
    );
}

/// Each kind of broken answer fails its invocation: its records land in `processing-failed`
/// with Firehose's code, and nothing else is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_answer_fails_the_invocation_with_firehose_s_code() {
    let (function, url) = Function::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let spillway = start(
        dir.path(),
        &yaml(
            &url,
            "          buffer_interval_seconds: 0\n          number_of_retries: 1\n          timeout_seconds: 1\n",
            "{ size_mib: 1, interval_seconds: 60 }",
        ),
    );
    let client = spillway.client().await;
    let kinds = [
        ("missing", "Lambda.MissingRecordId"),
        ("duplicated", "Lambda.DuplicatedRecordId"),
        ("invented", "Lambda.UnknownRecordId"),
        ("notjson", "Lambda.JsonProcessingException"),
        ("badresult", "Lambda.JsonProcessingException"),
        ("http500", "Lambda.FunctionError"),
        ("slow", "Lambda.FunctionTimedOut"),
    ];
    let mut sent_by_kind: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut n = 0u64;
    for (kind, _) in kinds.iter().chain([("fine", "")].iter()) {
        // One put per kind, and wait for its invocation: each invocation holds one kind.
        let records: Vec<String> = (0..4)
            .map(|index| {
                n += 1;
                format!(r#"{{"n":{n},"team":"t{index}","act":"keep","mode":"{kind}"}}"#)
            })
            .collect();
        let calls_before = function.calls.load(Ordering::SeqCst);
        put(&client, &records).await;
        let retried = matches!(*kind, "http500" | "slow");
        let attempts = if retried { 2 } else { 1 };
        common::eventually(common::WAIT, "the invocation", || {
            (function.calls.load(Ordering::SeqCst) >= calls_before + attempts).then_some(())
        })
        .await;
        sent_by_kind.insert(kind, records);
    }
    assert_eq!(spillway.terminate(), 0);

    let objects = local_objects(&dir.path().join("out"));
    let failed = failed_records(&objects);
    for (kind, code) in kinds {
        for data in &sent_by_kind[kind] {
            let line = failed.get(data).unwrap_or_else(|| panic!("{kind}: {data} is not in processing-failed"));
            assert_eq!(line["errorCode"], code, "{kind}: {line}");
            assert_eq!(line["lambdaArn"], FUNCTION_ARN);
            assert!(line["errorMessage"].as_str().is_some_and(|message| !message.is_empty()), "{line}");
            let retried = matches!(kind, "http500" | "slow");
            assert_eq!(line["attemptsMade"], if retried { 2 } else { 1 }, "{kind}: {line}");
        }
    }
    assert_eq!(failed.len(), kinds.len() * 4, "only the broken invocations' records failed");
    let delivered: Vec<u64> =
        lines_under(&objects, "team=").iter().map(|(_, line)| line["N"].as_u64().unwrap()).collect();
    assert_eq!(delivered.len(), 4, "the good invocation is delivered: {delivered:?}");
}

/// A function that fails twice and then answers: the invocation is retried and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_call_is_retried_until_the_function_answers() {
    let (function, url) = Function::serve().await;
    function.fail_next.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let spillway = start(
        dir.path(),
        &yaml(&url, "          buffer_interval_seconds: 0\n", "{ size_mib: 1, interval_seconds: 60 }"),
    );
    let client = spillway.client().await;
    let records: Vec<String> = (0..10).map(|n| record(n, "alpha", "keep")).collect();
    put(&client, &records).await;
    common::eventually(common::WAIT, "three calls", || (function.calls.load(Ordering::SeqCst) >= 3).then_some(()))
        .await;
    // Retries are inside one invocation: one success, its duration spanning them.
    let success = "spillway_processing_invocations_total{outcome=\"success\",stream=\"app-logs\"}";
    wait_for_metric(&spillway, success, 1.0).await;
    let failure = "spillway_processing_invocations_total{outcome=\"failure\",stream=\"app-logs\"}";
    assert_eq!(spillway.metric(failure).await, Some(0.0));
    assert_eq!(spillway.terminate(), 0);

    let objects = local_objects(&dir.path().join("out"));
    let delivered = lines_under(&objects, "team=alpha/");
    assert_eq!(delivered.len(), 10, "every record delivered after the retries");
    assert!(failed_records(&objects).is_empty());
    let seen = function.seen();
    assert_eq!(seen.len(), 3, "two failed calls, then one that answered");
    let ids = |invocation: &Seen| invocation.event["invocationId"].clone();
    assert!(ids(&seen[0]) == ids(&seen[1]) && ids(&seen[1]) == ids(&seen[2]), "a retry re-sends the same invocation");
}

/// `buffer_size_mib` groups records into invocations of about that size (never past Lambda's
/// 6 MiB), and `buffer_interval_seconds` sends a small invocation once its oldest record waited
/// that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_follow_the_processor_buffer_hints() {
    let (function, url) = Function::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let spillway = start(
        dir.path(),
        &yaml(
            &url,
            "          buffer_size_mib: 0.2\n          buffer_interval_seconds: 2\n",
            "{ size_mib: 64, interval_seconds: 60 }",
        ),
    );
    let client = spillway.client().await;
    let padding = "x".repeat(1000);
    let size_hint = (0.2 * (1 << 20) as f64) as usize;
    let mut n = 0u64;
    let mut total = 0usize;
    for _ in 0..8 {
        let records: Vec<String> = (0..250)
            .map(|_| {
                n += 1;
                format!(r#"{{"n":{n},"team":"alpha","act":"keep","pad":"{padding}"}}"#)
            })
            .collect();
        total += records.iter().map(String::len).sum::<usize>();
        put(&client, &records).await;
    }
    let expected_full = total / size_hint;
    common::eventually(common::WAIT, "the full invocations", || (function.seen().len() >= expected_full).then_some(()))
        .await;
    let record_len = total / n as usize;
    let seen = function.seen();
    for invocation in &seen[..expected_full] {
        assert!(
            invocation.data_bytes >= size_hint && invocation.data_bytes < size_hint + record_len + 8,
            "an invocation closes at the size hint: {} bytes (hint {size_hint})",
            invocation.data_bytes
        );
        assert!(invocation.body_bytes < 6 << 20);
    }
    // The rest waits for the interval.
    let remainder_from = Instant::now();
    common::eventually(Duration::from_secs(10), "the remainder", || {
        let seen = function.seen();
        (seen.iter().map(|invocation| invocation.event["records"].as_array().unwrap().len()).sum::<usize>()
            == n as usize)
            .then_some(())
    })
    .await;
    let last = function.seen().last().cloned().unwrap();
    assert!(last.data_bytes < size_hint, "the remainder is smaller than the hint");
    assert!(last.at.duration_since(remainder_from) <= Duration::from_secs(3));

    // A lone record waits `buffer_interval_seconds` for company.
    let calls = function.seen().len();
    let put_at = Instant::now();
    put(&client, &[record(n + 1, "alpha", "keep")]).await;
    common::eventually(Duration::from_secs(10), "the lone record", || (function.seen().len() > calls).then_some(()))
        .await;
    let waited = function.seen()[calls].at.duration_since(put_at);
    assert!(waited >= Duration::from_millis(1800), "invoked after {waited:?}, before the 2 s interval");
    assert_eq!(spillway.terminate(), 0);
    let delivered = lines_under(&local_objects(&dir.path().join("out")), "team=alpha/");
    assert_eq!(delivered.len(), n as usize + 1);
}

/// Seeded SIGKILL rounds (`SPILLWAY_CHAOS_SEED`, `SPILLWAY_CHAOS_ROUNDS`, default 8) under load
/// with a deterministic function: every acknowledged record is delivered exactly once, under
/// the partition its key names (batches rebuilt after a crash invoke the function again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_rounds_deliver_each_record_once_with_a_deterministic_function() {
    let (_function, url) = Function::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml(&url, "          buffer_interval_seconds: 0\n", "{ size_mib: 1, interval_seconds: 1 }");
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(11);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(8);
    let mut rng = StdRng::seed_from_u64(seed);
    let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut next_id = 0u64;
    for _ in 0..rounds {
        let spillway = start(dir.path(), &yaml);
        let client = spillway.client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let first_id = next_id;
        next_id += 1_000_000;
        let pusher = tokio::spawn({
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            async move {
                let mut id = first_id;
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<u64> = (id..id + 50).collect();
                    id += 50;
                    let records = ids.iter().map(|id| {
                        let team = ["alpha", "beta", "gamma", "delta"][(id % 4) as usize];
                        Record::builder().data(Blob::new(record(*id, team, "keep"))).build().unwrap()
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
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        spillway.kill();
        stop.store(true, Ordering::Relaxed);
        pusher.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let final_run = start(dir.path(), &yaml);
    let delivered = || {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for (key, line) in lines_under(&local_objects(&dir.path().join("out")), "team=") {
            let id = line["N"].as_u64().unwrap();
            let team = ["alpha", "beta", "gamma", "delta"][(id % 4) as usize];
            assert!(key.starts_with(&format!("team={team}/")), "{line} under {key}");
            *counts.entry(id).or_default() += 1;
        }
        counts
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    while Instant::now() < deadline {
        let counts = delivered();
        if acknowledged.iter().all(|id| counts.contains_key(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(final_run.terminate(), 0);

    let objects = local_objects(&dir.path().join("out"));
    let counts = delivered();
    assert!(acknowledged.len() > 1_000, "the client got work done: {}", acknowledged.len());
    let missing: Vec<&u64> = acknowledged.iter().filter(|id| !counts.contains_key(id)).collect();
    let duplicated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "seed {seed}, {rounds} rounds: {} missing (first {:?}), {} duplicated (first {:?})",
        missing.len(),
        missing.first(),
        duplicated.len(),
        duplicated.first()
    );
    assert!(lines_under(&objects, "errors/").is_empty(), "no record failed");
}

/// A Kinesis source: each event record carries `kinesisRecordMetadata` with the shard, the
/// partition key and the sequence number Kinesis gave the record.
#[cfg(feature = "source-kinesis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn kinesis_records_carry_their_metadata_in_the_event() {
    use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
    let endpoint = std::env::var("SPILLWAY_TEST_KINESIS_ENDPOINT")
        .expect("SPILLWAY_TEST_KINESIS_ENDPOINT (scripts/services.sh env)");
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "test"))
        .build();
    let kinesis = aws_sdk_kinesis::Client::from_conf(config);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let stream = format!("spw-lambda-{}-{}", std::process::id(), nanos % 1_000_000_000);
    kinesis.create_stream().stream_name(&stream).shard_count(1).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = kinesis.describe_stream_summary().stream_name(&stream).send().await.unwrap();
        if summary.stream_description_summary().is_some_and(|s| s.stream_status() == &StreamStatus::Active) {
            break;
        }
        assert!(Instant::now() < deadline, "stream {stream} not ACTIVE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entries: Vec<PutRecordsRequestEntry> = (0..5u64)
        .map(|n| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("pk-{n}"))
                .data(aws_sdk_kinesis::primitives::Blob::new(record(n, "alpha", "keep")))
                .build()
                .unwrap()
        })
        .collect();
    let output = kinesis.put_records().stream_name(&stream).set_records(Some(entries)).send().await.unwrap();
    let sequence_numbers: Vec<String> =
        output.records().iter().map(|entry| entry.sequence_number().unwrap_or_default().to_string()).collect();

    let (function, url) = Function::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let source = format!(
        "{{ type: kinesis, stream_name: {stream}, endpoint: '{endpoint}', region: us-east-1, poll_interval_ms: 200, starting_position: TRIM_HORIZON }}"
    );
    let yaml = yaml(&url, "          buffer_interval_seconds: 0\n", "{ size_mib: 1, interval_seconds: 1 }")
        .replace("  - name: app-logs\n", &format!("  - name: app-logs\n    source: {source}\n"));
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, yaml).unwrap();
    let spillway = Spillway::start_with_env(
        dir.path(),
        &config,
        &[("LAMBDA_TOKEN", "s3cr3t"), ("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")],
        &["AWS_PROFILE", "AWS_SESSION_TOKEN"],
    );
    let sent = || -> Vec<Value> {
        function.seen().iter().flat_map(|invocation| invocation.event["records"].as_array().cloned().unwrap()).collect()
    };
    common::eventually(common::WAIT, "five records sent to the function", || (sent().len() >= 5).then_some(())).await;
    assert_eq!(spillway.terminate(), 0);
    let _ = kinesis.delete_stream().stream_name(&stream).send().await;

    let records = sent();
    assert_eq!(records.len(), 5);
    for (n, record) in records.iter().enumerate() {
        let data: Value = serde_json::from_slice(&unb64(record["data"].as_str().unwrap())).unwrap();
        assert_eq!(data["n"], n as u64, "in the order written");
        let metadata = &record["kinesisRecordMetadata"];
        assert_eq!(metadata["shardId"], "shardId-000000000000", "{record}");
        assert_eq!(metadata["partitionKey"], format!("pk-{n}"));
        assert_eq!(metadata["sequenceNumber"], sequence_numbers[n].as_str());
        assert_eq!(metadata["subsequenceNumber"], 0);
        assert!(metadata["approximateArrivalTimestamp"].as_i64().is_some_and(|ms| ms > 1_600_000_000_000), "{record}");
    }
    let delivered = lines_under(&local_objects(&dir.path().join("out")), "team=alpha/");
    assert_eq!(delivered.len(), 5);
}

/// A stream created through the Firehose API with `RecordDeAggregation`, `Lambda` and
/// `AppendDelimiterToRecord` processors: each record is split into its JSON sub-records, the
/// `LambdaArn` is invoked where `api_defaults.lambda.url` says, and describe gives the
/// processors back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_of_an_api_created_stream_split_records_and_call_the_function_by_arn() {
    use aws_sdk_firehose::types::{
        ExtendedS3DestinationConfiguration, ProcessingConfiguration, Processor, ProcessorParameter,
        ProcessorParameterName, ProcessorType,
    };
    let (function, url) = Function::serve().await;
    let functions = url.replace("/invoke", "/2015-03-31/functions/{function}/invocations");
    let dir = tempfile::tempdir().unwrap();
    let spillway = start(
        dir.path(),
        &format!(
            "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
             data_dir: ./data\n\
             api_defaults:\n\
             \x20 s3: {{ url: 'file://./buckets/{{bucket}}' }}\n\
             \x20 lambda:\n\
             \x20   url: '{functions}'\n\
             \x20   headers: {{ Authorization: 'Bearer ${{LAMBDA_TOKEN}}' }}\n\
             streams: []\n"
        ),
    );
    let client = spillway.client().await;
    let parameter = |name: ProcessorParameterName, value: &str| {
        ProcessorParameter::builder().parameter_name(name).parameter_value(value).build().unwrap()
    };
    let processors = ProcessingConfiguration::builder()
        .enabled(true)
        .processors(
            Processor::builder()
                .r#type(ProcessorType::RecordDeAggregation)
                .parameters(parameter(ProcessorParameterName::SubRecordType, "JSON"))
                .build()
                .unwrap(),
        )
        .processors(
            Processor::builder()
                .r#type(ProcessorType::Lambda)
                .parameters(parameter(ProcessorParameterName::LambdaArn, FUNCTION_ARN))
                .parameters(parameter(ProcessorParameterName::BufferIntervalInSeconds, "1"))
                .parameters(parameter(ProcessorParameterName::LambdaNumberOfRetries, "2"))
                .build()
                .unwrap(),
        )
        .processors(Processor::builder().r#type(ProcessorType::AppendDelimiterToRecord).build().unwrap())
        .build();
    let destination = ExtendedS3DestinationConfiguration::builder()
        .role_arn("arn:aws:iam::123456789012:role/firehose")
        .bucket_arn("arn:aws:s3:::split-logs")
        .prefix("kept/")
        .error_output_prefix("errors/!{firehose:error-output-type}/")
        .buffering_hints(aws_sdk_firehose::types::BufferingHints::builder().interval_in_seconds(1).build())
        .processing_configuration(processors)
        .build()
        .unwrap();
    client
        .create_delivery_stream()
        .delivery_stream_name("app-logs")
        .extended_s3_destination_configuration(destination)
        .send()
        .await
        .expect("create");
    // Describe gives back the processors as they were created (order and parameters), so
    // Terraform sees no change.
    let described = client.describe_delivery_stream().delivery_stream_name("app-logs").send().await.unwrap();
    let description = described.delivery_stream_description().unwrap();
    let s3 = description.destinations()[0].extended_s3_destination_description().unwrap();
    let kinds: Vec<String> = s3
        .processing_configuration()
        .unwrap()
        .processors()
        .iter()
        .map(|processor| processor.r#type().as_str().to_string())
        .collect();
    assert_eq!(kinds, ["RecordDeAggregation", "Lambda", "AppendDelimiterToRecord"]);

    // Two records of three JSON sub-records each: 6 sub-records, 2 dropped by the function.
    let aggregated = [
        format!("{}{}\n{}", record(0, "alpha", "keep"), record(1, "beta", "drop"), record(2, "gamma", "keep")),
        format!("{} {}{}", record(3, "alpha", "keep"), record(4, "beta", "keep"), record(5, "gamma", "drop")),
    ];
    put(&client, &aggregated).await;
    wait_for_metric(&spillway, "spillway_delivered_records_total{stream=\"app-logs\",sink=\"s3\"}", 4.0).await;
    assert_eq!(spillway.terminate(), 0);

    let objects = local_objects(&dir.path().join("buckets/split-logs"));
    let mut kept: Vec<u64> =
        lines_under(&objects, "kept/").iter().map(|(_, line)| line["N"].as_u64().expect("uppercased")).collect();
    kept.sort_unstable();
    assert_eq!(kept, [0, 2, 3, 4]);
    assert!(lines_under(&objects, "errors/").is_empty());
    let seen = function.seen();
    let sent: usize = seen.iter().map(|invocation| invocation.event["records"].as_array().unwrap().len()).sum();
    assert_eq!(sent, 6, "the function saw each sub-record once");
    assert!(seen.iter().all(|invocation| invocation.authorization.as_deref() == Some("Bearer s3cr3t")));
}
