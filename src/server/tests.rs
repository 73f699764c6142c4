//! The router's request limits, through the router itself (`oneshot`) or, where a client must
//! stall mid-body, through a real listener on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use super::router;
use crate::config::FsyncPolicy;
use crate::metrics::Metrics;
use crate::sources::http::MAX_NDJSON_RECORDS;
use crate::sources::{Ingest, MAX_REQUEST_BODY_BYTES, StreamIngest};
use crate::wal::{Wal, WalOptions};

struct Harness {
    _dir: tempfile::TempDir,
    ingest: Arc<Ingest>,
}

/// One stream `s`, with the given `server:` and `limits:` YAML.
fn harness(server_yaml: &str, limits_yaml: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, {server_yaml} }}\nlimits: {{ {limits_yaml} }}\n\
         streams:\n  - name: s\n    sink: {{ type: s3, url: file://./out }}\n"
    );
    let config = crate::config::parse_str(&yaml, Path::new("test.yaml")).expect("test config is valid");
    let options = WalOptions {
        dir: dir.path().join("wal"),
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_millis(10),
        segment_bytes: 1 << 20,
        max_bytes: 1 << 30,
        full_wait: Duration::ZERO,
        track_positions: false,
    };
    let (wal, _) = Wal::open(options, 0).expect("wal opens");
    let metrics = Metrics::default();
    let stream_metrics = metrics.register("s", "s3", Box::new(crate::metrics::WalSize::default));
    let stream_config = config.streams[0].clone();
    let streams = BTreeMap::from([(
        "s".to_string(),
        StreamIngest {
            config: stream_config,
            record: Arc::new(crate::control::catalog::StreamRecord::new(
                "s",
                crate::control::catalog::StreamOrigin::Yaml,
                0,
            )),
            wal,
            metrics: stream_metrics,
            stopped: Arc::default(),
            replica: None,
        },
    )]);
    let readiness = crate::server::health::Readiness::new(std::iter::empty());
    let ingest = Arc::new(Ingest::new(config, streams, Arc::new(metrics), "test".into(), readiness));
    Harness { _dir: dir, ingest }
}

fn firehose_put(body: Body) -> Request<Body> {
    Request::post("/")
        .header("x-amz-target", "Firehose_20150804.PutRecord")
        .header("content-type", "application/x-amz-json-1.1")
        .body(body)
        .expect("request builds")
}

fn ndjson_put(body: Body) -> Request<Body> {
    Request::post("/streams/s/records").body(body).expect("request builds")
}

async fn json_of(response: axum::response::Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("response body");
    serde_json::from_slice(&bytes).expect("response is JSON")
}

/// Send the head and part of the body over a raw socket, then stall; return the status line, the
/// response text and how long the answer took.
async fn trickle(ingest: Arc<Ingest>, head: &str) -> (String, Duration) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server = tokio::spawn(async move { axum::serve(listener, router(ingest)).await });
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    socket.write_all(head.as_bytes()).await.expect("send head");
    socket.write_all(b"{\"Deliv").await.expect("send part of the body");
    let mut answer = Vec::new();
    // Never more than a few seconds: the configured timeout is 1 s.
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            let read = socket.read(&mut chunk).await.expect("read");
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..read]);
            if answer.windows(4).any(|window| window == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    server.abort();
    assert!(read.is_ok(), "no answer within 10 s: {:?}", String::from_utf8_lossy(&answer));
    (String::from_utf8_lossy(&answer).into_owned(), elapsed)
}

#[tokio::test]
async fn a_trickling_firehose_body_gets_408_with_a_firehose_error_within_the_timeout() {
    let harness = harness("request_timeout_seconds: 1", "");
    let head = "POST / HTTP/1.1\r\nhost: x\r\nx-amz-target: Firehose_20150804.PutRecord\r\n\
                content-type: application/x-amz-json-1.1\r\ncontent-length: 100\r\n\r\n";
    let (answer, elapsed) = trickle(harness.ingest.clone(), head).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"__type\":\"RequestTimeoutException\""), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("x-amzn-errortype: requesttimeoutexception"), "{answer}");
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(harness.ingest.body_budget_available_kib(), 64 * 1024, "the budget is given back");
}

#[tokio::test]
async fn a_trickling_ndjson_body_gets_408_within_the_timeout() {
    let harness = harness("request_timeout_seconds: 1", "");
    let head = "POST /streams/s/records HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n";
    let (answer, elapsed) = trickle(harness.ingest.clone(), head).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"RequestTimeoutException\""), "{answer}");
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn with_the_body_budget_spent_a_request_gets_503_after_body_wait_ms() {
    // 8 MiB budget: a stalled 6 MiB request holds most of it; a 3 MiB request cannot fit.
    let harness = harness("request_timeout_seconds: 30", "max_inflight_request_mib: 8, body_wait_ms: 300");
    let budget_kib = harness.ingest.body_budget_available_kib();
    let stalled_body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
    let holder = router(harness.ingest.clone())
        .oneshot(Request::post("/streams/s/records").header("content-length", 6 << 20).body(stalled_body).unwrap());
    let holder = tokio::spawn(holder);
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.ingest.body_budget_available_kib() == budget_kib {
        assert!(Instant::now() < deadline, "the stalled request never reserved its body");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for request in [firehose_put(Body::from(vec![b' '; 3 << 20])), ndjson_put(Body::from(vec![b'\n'; 3 << 20]))] {
        let started = Instant::now();
        // Bounded, so a request that waits forever fails the test instead of hanging it.
        let answer = tokio::time::timeout(Duration::from_secs(5), router(harness.ingest.clone()).oneshot(request));
        let response = answer.await.expect("answered within 5 s").expect("router answers");
        let waited = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let firehose_error = response.headers().get("x-amzn-errortype").cloned();
        let body = json_of(response).await;
        let code = body.get("__type").or(body.get("error")).cloned();
        assert_eq!(code, Some("ServiceUnavailableException".into()), "{body}");
        assert_eq!(body["message"], "Slow down.");
        if let Some(header) = firehose_error {
            assert_eq!(header, "ServiceUnavailableException");
        }
        assert!(waited >= Duration::from_millis(280) && waited < Duration::from_secs(5), "{waited:?}");
    }
    holder.abort();
}

#[tokio::test]
async fn ndjson_over_the_record_limit_gets_400_naming_it_and_appends_nothing() {
    let harness = harness("", "");
    let over = "1\n".repeat(MAX_NDJSON_RECORDS + 1);
    let response = router(harness.ingest.clone()).oneshot(ndjson_put(Body::from(over))).await.expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = json_of(response).await;
    assert_eq!(body["error"], "InvalidArgumentException");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("more than {MAX_NDJSON_RECORDS} records")), "{message}");

    // Nothing was appended: the next accepted record is the WAL's first.
    let ok = router(harness.ingest.clone()).oneshot(ndjson_put(Body::from("{}\n"))).await.expect("answer");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(json_of(ok).await["firstSequence"], 0);
}

#[tokio::test]
async fn oversized_bodies_keep_their_error_shapes() {
    let harness = harness("", "");
    let declared = MAX_REQUEST_BODY_BYTES + 1;
    let firehose = firehose_put(Body::from("{}"));
    let (mut parts, body) = firehose.into_parts();
    parts.headers.insert("content-length", declared.into());
    let response = router(harness.ingest.clone()).oneshot(Request::from_parts(parts, body)).await.expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["x-amzn-errortype"], "InvalidArgumentException");
    let message = json_of(response).await["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(&format!("of {declared} bytes")), "{message}");

    let chunked_oversize = ndjson_put(Body::from(vec![b'\n'; declared]));
    let response = router(harness.ingest.clone()).oneshot(chunked_oversize).await.expect("answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_of(response).await["error"], "InvalidArgumentException");
}
