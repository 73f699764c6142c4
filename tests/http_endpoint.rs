//! The HTTP endpoint sink end to end against a receiver written here from AWS's published
//! contract ("HTTP endpoint delivery request and response specifications", Amazon Data Firehose
//! developer guide), not from spillway's code: it checks every header and the body of every
//! request, answers 500 / 413 / 302 / malformed JSON / wrong request ids / slowly on chosen
//! requests, and takes each request id once, as the contract suggests receivers deduplicate.
//! Checked: records arrive once per request id, retries keep their id and their records, 413
//! splits, what runs out of retries reaches the backup with the receiver's `errorMessage`, and
//! seeded SIGKILL rounds leave every acknowledged record delivered exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::{Spillway, WAIT, eventually, local_objects};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// What the receiver answers to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    /// A status with the contract's error body (`errorMessage`).
    Fail(u16, &'static str),
    /// 302 to elsewhere: must not be followed.
    Redirect,
    /// 200 with a body that is not the contract's JSON.
    Malformed,
    /// 200 naming another request id.
    WrongId,
    /// Takes the records (as a real receiver would) but answers after the client gave up.
    Slow(Duration),
}

/// What the receiver knows of a request when it chooses its answer.
struct Seen<'a> {
    /// 0 for the first request id the receiver saw, 1 for the next new one, …
    id_index: usize,
    /// 1 for the first time this id arrives, 2 for its first retry, …
    attempt: usize,
    records: &'a [Vec<u8>],
}

type Behaviour = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// What the sink is expected to send, from its YAML.
#[derive(Clone)]
struct Expect {
    stream: String,
    access_key: Option<String>,
    common_attributes: Value,
    gzip: bool,
}

#[derive(Default)]
struct State {
    /// Each id's order of first arrival and the records of its first attempt; later attempts
    /// must carry the same.
    records_by_id: HashMap<String, (usize, Vec<Vec<u8>>)>,
    attempts: HashMap<String, usize>,
    /// The receiver's deduplicated intake: request id → records (first taken attempt).
    taken: BTreeMap<String, Vec<Vec<u8>>>,
    /// Answers given, by kind.
    answered: BTreeMap<String, usize>,
    violations: Vec<String>,
}

struct Receiver {
    url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(expect: Expect, behaviour: Behaviour) -> Receiver {
        let state = Arc::new(Mutex::new(State::default()));
        let handler_state = state.clone();
        let app = axum::Router::new().route(
            "/intake",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (state, expect, behaviour) = (handler_state.clone(), expect.clone(), behaviour.clone());
                async move { receive(&state, &expect, &behaviour, &headers, &body).await }
            })
            .get(|| async { "the intake takes POSTs" }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address: SocketAddr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Receiver { url: format!("http://{address}/intake"), state, task }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// How many times each record was taken, over distinct request ids.
    fn delivered(&self) -> BTreeMap<Vec<u8>, usize> {
        let mut delivered = BTreeMap::new();
        for records in self.state().taken.values() {
            for record in records {
                *delivered.entry(record.clone()).or_default() += 1;
            }
        }
        delivered
    }

    fn assert_no_violations(&self) {
        let state = self.state();
        assert!(
            state.violations.is_empty(),
            "contract violations: {:#?}",
            &state.violations[..state.violations.len().min(10)]
        );
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn contract_body(request_id: &str, error_message: Option<&str>) -> String {
    let mut body = json!({ "requestId": request_id, "timestamp": now_ms() });
    if let Some(message) = error_message {
        body["errorMessage"] = json!(message);
    }
    body.to_string()
}

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, [("content-type", "application/json")], body).into_response()
}

/// One request, checked against the contract and answered as `behaviour` says.
async fn receive(
    state: &Mutex<State>,
    expect: &Expect,
    behaviour: &Behaviour,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut violations = Vec::new();
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string);
    if header("content-type").as_deref() != Some("application/json") {
        violations.push(format!("Content-Type is {:?}", header("content-type")));
    }
    if header("x-amz-firehose-protocol-version").as_deref() != Some("1.0") {
        violations.push(format!("protocol version {:?}", header("x-amz-firehose-protocol-version")));
    }
    let expected_arn = format!("arn:aws:firehose:us-east-1:000000000000:deliverystream/{}", expect.stream);
    if header("x-amz-firehose-source-arn").as_deref() != Some(expected_arn.as_str()) {
        violations.push(format!("source arn {:?}", header("x-amz-firehose-source-arn")));
    }
    if header("x-amz-firehose-access-key") != expect.access_key {
        violations.push(format!("access key {:?}", header("x-amz-firehose-access-key")));
    }
    let attributes: Option<Value> =
        header("x-amz-firehose-common-attributes").and_then(|text| serde_json::from_str(&text).ok());
    if attributes.as_ref() != Some(&json!({ "commonAttributes": expect.common_attributes })) {
        violations.push(format!("common attributes {:?}", header("x-amz-firehose-common-attributes")));
    }
    if header("content-length").is_none() {
        violations.push("no Content-Length".into());
    }
    let gzipped = header("content-encoding").as_deref() == Some("gzip");
    if gzipped != expect.gzip || (!gzipped && header("content-encoding").is_some()) {
        violations.push(format!("Content-Encoding {:?}", header("content-encoding")));
    }
    let mut decoded = Vec::new();
    let body = if gzipped {
        if let Err(error) = flate2::read::MultiGzDecoder::new(body).read_to_end(&mut decoded) {
            violations.push(format!("gzip body: {error}"));
        }
        &decoded[..]
    } else {
        body
    };
    let Some(header_id) = header("x-amz-firehose-request-id") else {
        state.lock().unwrap().violations.push("no X-Amz-Firehose-Request-Id".into());
        return json_response(400, contract_body("", Some("no request id")));
    };
    if uuid::Uuid::parse_str(&header_id).is_err() {
        violations.push(format!("request id {header_id:?} is not a GUID"));
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(error) => {
            state.lock().unwrap().violations.push(format!("body is not JSON: {error}"));
            return json_response(400, contract_body(&header_id, Some("body is not JSON")));
        }
    };
    let fields: BTreeSet<&str> =
        parsed.as_object().map(|object| object.keys().map(String::as_str).collect()).unwrap_or_default();
    if fields != BTreeSet::from(["records", "requestId", "timestamp"]) {
        violations.push(format!("body fields {fields:?}"));
    }
    if parsed["requestId"].as_str() != Some(header_id.as_str()) {
        violations.push(format!("body requestId {:?} differs from header {header_id}", parsed["requestId"]));
    }
    match parsed["timestamp"].as_i64() {
        Some(timestamp) if (timestamp - now_ms()).abs() < 600_000 => {}
        other => violations.push(format!("timestamp {other:?} is not now in epoch ms")),
    }
    let mut records = Vec::new();
    let entries = parsed["records"].as_array().cloned().unwrap_or_default();
    if !(1..=10_000).contains(&entries.len()) {
        violations.push(format!("{} records in one request", entries.len()));
    }
    for entry in &entries {
        let keys: Vec<&String> = entry.as_object().map(|object| object.keys().collect()).unwrap_or_default();
        let data = entry["data"].as_str().and_then(|data| base64::engine::general_purpose::STANDARD.decode(data).ok());
        match data {
            Some(data) if keys.len() == 1 => records.push(data),
            _ => violations.push(format!("record entry {entry}")),
        }
    }
    let answer = {
        let mut state = state.lock().unwrap();
        state.violations.extend(violations);
        let known = state.records_by_id.len();
        let id_index = match state.records_by_id.get(&header_id).map(|(index, first)| (*index, first == &records)) {
            Some((index, same)) => {
                if !same {
                    state.violations.push(format!("request {header_id} came again with other records"));
                }
                index
            }
            None => {
                state.records_by_id.insert(header_id.clone(), (known, records.clone()));
                known
            }
        };
        let attempt = {
            let attempts = state.attempts.entry(header_id.clone()).or_default();
            *attempts += 1;
            *attempts
        };
        let answer = behaviour(&Seen { id_index, attempt, records: &records });
        *state.answered.entry(format!("{answer:?}")).or_default() += 1;
        // A slow answer comes after the records were processed (the client gives up before it:
        // the connection closes, and this handler with it, so they are taken first).
        if matches!(answer, Answer::Ok | Answer::Slow(_)) {
            state.taken.entry(header_id.clone()).or_insert(records.clone());
        }
        answer
    };
    match answer {
        Answer::Ok => json_response(200, contract_body(&header_id, None)),
        Answer::Fail(status, message) => json_response(status, contract_body(&header_id, Some(message))),
        Answer::Redirect => {
            (StatusCode::FOUND, [("location", "http://127.0.0.1:9/elsewhere")], "moved").into_response()
        }
        Answer::Malformed => (StatusCode::OK, [("content-type", "application/json")], "{not json").into_response(),
        Answer::WrongId => json_response(200, contract_body(&uuid::Uuid::new_v4().to_string(), None)),
        Answer::Slow(wait) => {
            tokio::time::sleep(wait).await;
            json_response(200, contract_body(&header_id, None))
        }
    }
}

fn yaml(stream: &str, receiver: &Receiver, retry_seconds: u64, extra_sink: &str) -> String {
    yaml_with_interval(stream, receiver, 1, retry_seconds, extra_sink)
}

fn yaml_with_interval(
    stream: &str,
    receiver: &Receiver,
    interval: u64,
    retry_seconds: u64,
    extra_sink: &str,
) -> String {
    yaml_with_buffering(stream, receiver, 1, interval, retry_seconds, extra_sink)
}

fn yaml_with_buffering(
    stream: &str,
    receiver: &Receiver,
    size_mib: u64,
    interval: u64,
    retry_seconds: u64,
    extra_sink: &str,
) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, shutdown_grace_seconds: 30 }}\ndata_dir: ./data\nstreams:\n\
         \x20 - name: {stream}\n\
         \x20   buffering: {{ size_mib: {size_mib}, interval_seconds: {interval} }}\n\
         \x20   retry: {{ duration_seconds: {retry_seconds} }}\n\
         \x20   sink:\n\
         \x20     type: http_endpoint\n\
         \x20     url: {}\n\
         {extra_sink}\
         \x20     backup: {{ mode: {mode}, sink: {{ url: 'file://./backup' }} }}\n",
        receiver.url,
        mode = if extra_sink.contains("# backup all") { "all" } else { "failed_only" },
    )
}

async fn put(client: &aws_sdk_firehose::Client, stream: &str, records: &[Vec<u8>]) {
    for chunk in records.chunks(500) {
        let entries: Vec<Record> =
            chunk.iter().map(|data| Record::builder().data(Blob::new(data.clone())).build().unwrap()).collect();
        let output = client
            .put_record_batch()
            .delivery_stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .expect("put");
        assert_eq!(output.failed_put_count(), 0);
    }
}

/// Error records in the backup folder: (raw record, errorCode, errorMessage, attemptsMade).
fn backup_records(dir: &std::path::Path) -> Vec<(Vec<u8>, String, String, u64)> {
    let mut found = Vec::new();
    for (key, bytes) in local_objects(&dir.join("backup")) {
        assert!(key.contains("http-endpoint-failed"), "error objects are under the output type: {key}");
        for line in bytes.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let record: Value = serde_json::from_slice(line).expect("an error record is JSON");
            let raw = base64::engine::general_purpose::STANDARD.decode(record["rawData"].as_str().unwrap()).unwrap();
            found.push((
                raw,
                record["errorCode"].as_str().unwrap_or_default().to_string(),
                record["errorMessage"].as_str().unwrap_or_default().to_string(),
                record["attemptsMade"].as_u64().unwrap_or_default(),
            ));
        }
    }
    found
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|n| format!("{{\"id\":\"{prefix}{n}\"}}").into_bytes()).collect()
}

/// Every header and the body as the contract says (access key from `${ENV}`, common attributes,
/// gzip), and every kind of failed first attempt retried under the same id with the same
/// records until taken: 500, 302 (not followed), malformed JSON, a wrong request id, a slow
/// answer after the client's timeout (the receiver took the records then: its dedup keeps them
/// once). Batches of more than 10,000 records go as several requests, some taken at once and
/// some retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_contract_is_followed_and_failed_requests_are_retried_under_their_id() {
    let expect = Expect {
        stream: "intake".into(),
        access_key: Some("key-from-env".into()),
        common_attributes: json!({ "env": "test", "team": "data" }),
        gzip: true,
    };
    let failures = [
        Answer::Fail(500, "intake is restarting"),
        Answer::Redirect,
        Answer::Malformed,
        Answer::WrongId,
        Answer::Slow(Duration::from_millis(2500)),
    ];
    let behaviour: Behaviour = Arc::new(move |seen: &Seen| match (seen.attempt, seen.id_index % 6) {
        (1, 5) => Answer::Ok,
        (1, kind) => failures[kind],
        _ => Answer::Ok,
    });
    let receiver = Receiver::start(expect, behaviour).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    let sink = "      access_key: ${INTAKE_KEY}\n      common_attributes: { env: test, team: data }\n\
                \x20     content_encoding: gzip\n      request_timeout_seconds: 1\n";
    std::fs::write(&config, yaml("intake", &receiver, 120, sink)).unwrap();
    let spillway = Spillway::start_with_env(dir.path(), &config, &[("INTAKE_KEY", "key-from-env")], &[]);
    let client = spillway.client().await;
    // A burst of 25,000 records (batches of more than 10,000: several requests), then puts
    // spread over a few seconds (more batches, more request ids).
    let mut sent = numbered("burst-", 0..25_000);
    put(&client, "intake", &sent).await;
    for round in 0..6 {
        let records = numbered(&format!("late{round}-"), 0..300);
        put(&client, "intake", &records).await;
        sent.extend(records);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let expected: BTreeSet<Vec<u8>> = sent.iter().cloned().collect();
    eventually(WAIT, "every record taken", || {
        let delivered = receiver.delivered();
        expected.iter().all(|record| delivered.contains_key(record)).then_some(())
    })
    .await;
    // The sink's own request counts, by outcome, on /metrics beside the pipeline's.
    let metric = |name: &str| {
        let spillway = &spillway;
        let name = name.to_string();
        async move { spillway.metric(&name).await.unwrap_or_default() }
    };
    // The receiver takes a slow request's records before spillway hears back: wait for its count.
    let deadline = std::time::Instant::now() + WAIT;
    while metric(r#"spillway_delivered_records_total{stream="intake"}"#).await < sent.len() as f64 {
        assert!(std::time::Instant::now() < deadline, "spillway counts every record delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(r#"spillway_sink_requests_total{stream="intake",sink="http_endpoint",outcome="200"}"#).await >= 3.0);
    for outcome in ["5xx", "3xx", "timeout"] {
        let series = format!(r#"spillway_sink_requests_total{{stream="intake",outcome="{outcome}"}}"#);
        assert!(metric(&series).await >= 1.0, "{series}");
    }
    assert!(metric(r#"spillway_sink_requests_total{stream="intake",outcome="invalid_response"}"#).await >= 2.0);
    assert!(metric(r#"spillway_sink_request_bytes_total{stream="intake"}"#).await > 0.0);
    assert!(metric(r#"spillway_sink_request_records_total{stream="intake"}"#).await > sent.len() as f64);
    assert!(metric(r#"spillway_delivery_retries_total{stream="intake"}"#).await >= 1.0);
    assert_eq!(spillway.terminate(), 0);
    receiver.assert_no_violations();
    let delivered = receiver.delivered();
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).take(3).collect();
    assert!(twice.is_empty(), "records taken under two request ids: {twice:?}");
    assert_eq!(delivered.len(), expected.len(), "nothing that was not sent");
    let state = receiver.state();
    for answer in ["Fail(500, \"intake is restarting\")", "Redirect", "Malformed", "WrongId", "Slow(2.5s)"] {
        assert!(state.answered.contains_key(answer), "{answer} was answered at least once: {:?}", state.answered);
    }
    let retried = state.attempts.values().filter(|attempts| **attempts > 1).count();
    assert!(retried >= 5, "failed first attempts came again under their id: {:?}", state.attempts);
    assert!(
        state.records_by_id.values().any(|(_, records)| records.len() == 10_000),
        "a full request of 10,000 records"
    );
    assert!(backup_records(dir.path()).is_empty(), "nothing ran out of retries");
}

/// A request refused with 413 is split in two (new ids, derived) until it is taken; a single
/// record refused with 413 is the record's own fault: it goes to the backup with the receiver's
/// `errorMessage`, at once, and the rest of its batch is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_413_splits_the_request_and_a_single_refused_record_goes_to_the_backup() {
    let expect = Expect { stream: "split".into(), access_key: None, common_attributes: json!({}), gzip: false };
    let behaviour: Behaviour = Arc::new(|seen: &Seen| {
        if seen.records.len() > 3 {
            Answer::Fail(413, "Payload too large")
        } else if seen.records.iter().any(|record| record.windows(4).any(|w| w == b"huge")) {
            Answer::Fail(413, "record too large for this intake")
        } else {
            Answer::Ok
        }
    });
    let receiver = Receiver::start(expect, behaviour).await;
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml("split", &receiver, 300, ""));
    let mut sent = numbered("small-", 0..20);
    sent.insert(7, b"{\"id\":\"huge-1\"}".to_vec());
    put(&spillway.client().await, "split", &sent).await;
    let backup = eventually(WAIT, "the refused record in the backup", || {
        let backup = backup_records(dir.path());
        (!backup.is_empty()).then_some(backup)
    })
    .await;
    let normal: BTreeSet<Vec<u8>> =
        sent.iter().filter(|record| !record.starts_with(b"{\"id\":\"huge")).cloned().collect();
    eventually(WAIT, "the other records taken", || {
        let delivered = receiver.delivered();
        normal.iter().all(|record| delivered.contains_key(record)).then_some(())
    })
    .await;
    let refused = spillway.metric(r#"spillway_sink_requests_total{stream="split",outcome="413"}"#).await;
    assert!(refused.unwrap_or_default() >= 2.0, "413 answers counted: {refused:?}");
    assert_eq!(spillway.terminate(), 0);
    receiver.assert_no_violations();
    assert_eq!(backup.len(), 1, "only the refused record: {backup:?}");
    let (raw, code, message, _) = &backup[0];
    assert_eq!(raw, b"{\"id\":\"huge-1\"}");
    assert_eq!(code, "HttpEndpoint.DestinationException");
    assert_eq!(message, "record too large for this intake");
    let delivered = receiver.delivered();
    assert!(delivered.values().all(|n| *n == 1), "each record once");
    assert_eq!(delivered.len(), normal.len());
    assert!(receiver.state().taken.values().all(|records| records.len() <= 3), "split down to what the receiver takes");
}

/// Requests the receiver keeps refusing are retried until `retry.duration_seconds`, then their
/// records go to the backup with Firehose's error code and the receiver's `errorMessage`; the
/// other requests of the same batch are delivered once (a partial retry re-sends only the
/// refused request, under its id).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_runs_out_of_retries_goes_to_the_backup_with_the_receivers_message() {
    let expect = Expect { stream: "doomed".into(), access_key: None, common_attributes: json!({}), gzip: false };
    let behaviour: Behaviour = Arc::new(|seen: &Seen| {
        if seen.records.iter().any(|record| record.starts_with(b"{\"id\":\"doomed")) {
            Answer::Fail(503, "intake is closed for doomed records")
        } else {
            Answer::Ok
        }
    });
    let receiver = Receiver::start(expect, behaviour).await;
    let dir = tempfile::tempdir().unwrap();
    // One batch (a 4 s interval for a burst of well under a second): two requests, one refused.
    let spillway = Spillway::start(dir.path(), &yaml_with_interval("doomed", &receiver, 4, 3, ""));
    let mut sent = numbered("fine-", 0..10_000);
    sent.extend(numbered("doomed-", 0..5));
    put(&spillway.client().await, "doomed", &sent).await;
    let doomed: BTreeSet<Vec<u8>> = numbered("doomed-", 0..5).into_iter().collect();
    let backup = eventually(WAIT, "the doomed records in the backup", || {
        let backup = backup_records(dir.path());
        let held: BTreeSet<Vec<u8>> = backup.iter().map(|(raw, ..)| raw.clone()).collect();
        doomed.is_subset(&held).then_some(backup)
    })
    .await;
    assert_eq!(spillway.terminate(), 0);
    receiver.assert_no_violations();
    for (raw, code, message, attempts) in &backup {
        assert_eq!(code, "HttpEndpoint.DestinationException", "{}", String::from_utf8_lossy(raw));
        assert_eq!(message, "intake is closed for doomed records");
        assert!(*attempts > 1, "retried before giving up: {attempts}");
    }
    // Every record once: taken by the receiver or in the backup (a fine record that shared a
    // request with a doomed one goes with it), never both.
    let delivered = receiver.delivered();
    let mut seen: BTreeMap<Vec<u8>, usize> = delivered.clone();
    for (raw, ..) in &backup {
        *seen.entry(raw.clone()).or_default() += 1;
    }
    let expected: BTreeSet<Vec<u8>> = sent.into_iter().collect();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(seen.values().all(|n| *n == 1), "each record in one place, once");
    assert_eq!(delivered.len(), 10_000, "the request without doomed records was delivered");
    assert_eq!(backup.len(), 5, "only the refused request's records are in the backup");
    let state = receiver.state();
    let requests: Vec<(usize, usize)> =
        state.records_by_id.iter().map(|(id, (_, records))| (records.len(), state.attempts[id])).collect();
    // The batch's two requests: the 10,000 fine records taken at once; the refused one sent again
    // alone, under its id, with its records (a partial retry re-sends only it), until given up.
    assert!(requests.contains(&(10_000, 1)), "{requests:?}");
    let refused: Vec<_> = requests.iter().filter(|(records, _)| *records == 5).collect();
    assert!(refused.len() == 1 && refused[0].1 > 1, "{requests:?}");
    assert_eq!(requests.len(), 2, "no other request id: {requests:?}");
}

/// Two refused requests of one batch with a taken one between them are sent again as they were
/// grouped, each under its own id, never merged into one request under a new id (which a
/// receiver that had processed them despite an error would take twice): the records of the
/// first one would otherwise fit together with the last one's within `max_body_mib`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_requests_are_sent_again_as_they_were_grouped_never_merged() {
    let expect = Expect { stream: "grouped".into(), access_key: None, common_attributes: json!({}), gzip: false };
    let behaviour: Behaviour = Arc::new(|seen: &Seen| {
        if seen.records.iter().any(|record| record.starts_with(b"{\"id\":\"doomed")) {
            Answer::Fail(503, "not now")
        } else {
            Answer::Ok
        }
    });
    let receiver = Receiver::start(expect, behaviour).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml_with_buffering("grouped", &receiver, 4, 4, 3, "      max_body_mib: 1\n");
    let spillway = Spillway::start(dir.path(), &yaml);
    // Sizes chosen against the 1 MiB body (records of 261,000 bytes are 348,000 in base64,
    // 262,107 are 349,476): requests [doomed-0, fine-1, fine-2] [fine-3, fine-4, fine-5]
    // [doomed-6]; the small doomed-6 does not fit after fine-5 but would after fine-2, so the
    // retried records, encoded afresh, would make one request of four.
    let record = |id: &str, raw_len: usize| {
        let head = format!("{{\"id\":\"{id}\",\"pad\":\"");
        let pad = "x".repeat(raw_len - head.len() - 2);
        format!("{head}{pad}\"}}").into_bytes()
    };
    let mut sent: Vec<Vec<u8>> =
        vec![record("doomed-0", 261_000), record("fine-1", 261_000), record("fine-2", 261_000)];
    sent.extend((3..6).map(|n| record(&format!("fine-{n}"), 262_107)));
    sent.push(b"{\"id\":\"doomed-6\"}".to_vec());
    put(&spillway.client().await, "grouped", &sent).await;
    let backup = eventually(WAIT, "the refused requests' records in the backup", || {
        let backup = backup_records(dir.path());
        (backup.len() == 4).then_some(backup)
    })
    .await;
    assert_eq!(spillway.terminate(), 0);
    receiver.assert_no_violations();
    let backed_up: BTreeSet<Vec<u8>> = backup.iter().map(|(raw, ..)| raw.clone()).collect();
    let expected: BTreeSet<Vec<u8>> = [&sent[0], &sent[1], &sent[2], &sent[6]].into_iter().cloned().collect();
    assert_eq!(backed_up, expected, "the two refused requests' records");
    let state = receiver.state();
    let mut requests: Vec<(usize, usize)> =
        state.records_by_id.iter().map(|(id, (_, records))| (records.len(), state.attempts[id])).collect();
    requests.sort();
    assert_eq!(requests.len(), 3, "three request ids, no merged one: {requests:?}");
    assert_eq!(requests.iter().filter(|(_, attempts)| *attempts == 1).count(), 1, "{requests:?}");
    assert!(
        requests.iter().filter(|(_, attempts)| *attempts > 1).map(|(records, _)| *records).eq([1, 3]),
        "{requests:?}"
    );
}

/// `backup.mode: all` (Firehose's `AllData`): every record also lands in the backup, once per
/// batch, besides being delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_mode_all_keeps_every_record_in_the_backup_too() {
    let expect = Expect { stream: "copied".into(), access_key: None, common_attributes: json!({}), gzip: false };
    let receiver = Receiver::start(expect, Arc::new(|_: &Seen| Answer::Ok)).await;
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml("copied", &receiver, 300, "      # backup all\n"));
    let sent = numbered("copy-", 0..200);
    put(&spillway.client().await, "copied", &sent).await;
    eventually(WAIT, "every record taken", || (receiver.delivered().len() == sent.len()).then_some(())).await;
    assert_eq!(spillway.terminate(), 0);
    receiver.assert_no_violations();
    let copied: Vec<u8> = local_objects(&dir.path().join("backup")).into_iter().flat_map(|(_, bytes)| bytes).collect();
    for record in &sent {
        let times = copied.windows(record.len()).filter(|window| window == record).count();
        assert_eq!(times, 1, "{} in the backup once", String::from_utf8_lossy(record));
    }
    assert_eq!(copied.len(), sent.iter().map(Vec::len).sum::<usize>(), "nothing else in the backup");
}

/// What the clients did: ids acknowledged, and ids whose put died with the server.
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeSet<String>,
    unknown: BTreeSet<String>,
}

/// `clients` tasks put batches of unique records until `stop` or until the server dies.
async fn push_until_stopped(
    endpoint: String,
    tag: String,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for client_index in 0..3 {
        let (endpoint, tag, ledger, stop) = (endpoint.clone(), tag.clone(), ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = common::firehose_client(&endpoint).await;
            let mut rng = StdRng::seed_from_u64(seed ^ client_index as u64);
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let ids: Vec<String> = (0..rng.random_range(1..=300))
                    .map(|_| {
                        counter += 1;
                        format!("{tag}-c{client_index}-{counter}")
                    })
                    .collect();
                let records = ids
                    .iter()
                    .map(|id| Record::builder().data(Blob::new(format!("{{\"id\":\"{id}\"}}"))).build().unwrap())
                    .collect();
                match client.put_record_batch().delivery_stream_name("crashy").set_records(Some(records)).send().await {
                    Ok(output) => {
                        assert_eq!(output.failed_put_count(), 0);
                        ledger.lock().unwrap().acknowledged.extend(ids);
                    }
                    Err(error) => {
                        if error.as_service_error().is_some_and(|e| e.is_service_unavailable_exception()) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        ledger.lock().unwrap().unknown.extend(ids);
                        return;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
}

/// Seeded SIGKILL rounds (`SPILLWAY_CHAOS_SEED`; `SPILLWAY_CHAOS_ROUNDS`, default 10) while 3
/// clients put records, with a receiver that fails a fifth of first attempts (500 or a slow
/// answer after taking the records) and deduplicates by request id: every acknowledged record is
/// taken exactly once, across crashes, because a batch re-sent after a restart makes the same
/// requests under the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_rounds_deliver_every_acknowledged_record_once_to_a_deduplicating_receiver() {
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(20261206);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let expect = Expect { stream: "crashy".into(), access_key: None, common_attributes: json!({}), gzip: false };
    let behaviour: Behaviour = Arc::new(|seen: &Seen| match (seen.attempt, seen.id_index % 10) {
        (1, 3) => Answer::Fail(500, "try again"),
        (1, 7) => Answer::Slow(Duration::from_millis(1500)),
        _ => Answer::Ok,
    });
    let receiver = Receiver::start(expect, behaviour).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml("crashy", &receiver, 7200, "      request_timeout_seconds: 1\n");
    let mut rng = StdRng::seed_from_u64(seed);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for round in 0..rounds {
        let spillway = Spillway::start(dir.path(), &yaml);
        let stop = Arc::new(AtomicBool::new(false));
        let pushers = tokio::spawn(push_until_stopped(
            spillway.endpoint.clone(),
            format!("r{round}"),
            rng.random(),
            ledger.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        spillway.kill();
        stop.store(true, Ordering::Relaxed);
        pushers.await.unwrap();
    }
    let final_run = Spillway::start(dir.path(), &yaml);
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.acknowledged.len() > 1000, "the clients got work done: {}", ledger.acknowledged.len());
    let id_of = |record: &Vec<u8>| -> String {
        let value: Value = serde_json::from_slice(record).expect("a sent record");
        value["id"].as_str().unwrap().to_string()
    };
    eventually(WAIT, "every acknowledged record taken", || {
        let delivered: BTreeSet<String> = receiver.delivered().keys().map(id_of).collect();
        ledger.acknowledged.iter().all(|id| delivered.contains(id)).then_some(())
    })
    .await;
    assert_eq!(final_run.terminate(), 0);
    receiver.assert_no_violations();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for (record, times) in receiver.delivered() {
        *by_id.entry(id_of(&record)).or_default() += times;
    }
    let twice: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "seed {seed}: records taken under two request ids: {twice:?}");
    let invented: Vec<_> =
        by_id.keys().filter(|id| !ledger.acknowledged.contains(*id) && !ledger.unknown.contains(*id)).take(5).collect();
    assert!(invented.is_empty(), "seed {seed}: records nobody sent: {invented:?}");
    let state = receiver.state();
    let repeated = state.attempts.values().filter(|attempts| **attempts > 1).count();
    eprintln!(
        "seed {seed}, {rounds} rounds: {} acknowledged, {} unknown, {} request ids ({repeated} sent more than once)",
        ledger.acknowledged.len(),
        ledger.unknown.len(),
        state.attempts.len()
    );
    assert!(backup_records(dir.path()).is_empty(), "nothing ran out of retries");
}
