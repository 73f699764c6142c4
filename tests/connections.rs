//! Connection limits end to end (`server.header_read_timeout_seconds`, `idle_timeout_seconds`,
//! `max_connections`): the real binary, raw sockets on 127.0.0.1 for the clients that misbehave,
//! and the real `aws-sdk-firehose` client or reqwest for the ones that do not. Timers are
//! configured small; every wait is bounded. A server timer never fires early, so "still open
//! after less than the timeout" is a safe lower bound, and upper bounds are generous.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, local_objects};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn yaml(server_extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n{server_extra}\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   buffering: {{ size_mib: 128, interval_seconds: 900 }}\n\
         \x20   sink: {{ type: s3, url: file://./out }}\n"
    )
}

fn address(spillway: &Spillway) -> String {
    spillway.endpoint.trim_start_matches("http://").to_string()
}

/// Read until the peer closes (Ok with what arrived) or `limit` passes (Err).
async fn read_until_closed(socket: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(received),
            Ok(Ok(read)) => received.extend_from_slice(&chunk[..read]),
            Err(_elapsed) => return Err(received),
        }
    }
}

/// Send `GET /health` on a keep-alive connection and read the whole answer.
async fn keep_alive_health(socket: &mut TcpStream) -> String {
    socket.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("send request");
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let complete = |received: &[u8]| {
        let Some(head_end) = received.windows(4).position(|window| window == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        received.len() >= head_end + 4 + length
    };
    while !complete(&received) {
        let read = tokio::time::timeout_at(deadline, socket.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(read > 0, "closed before answering: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn slow_header_and_silent_clients_are_disconnected_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml("  header_read_timeout_seconds: 1\n  idle_timeout_seconds: 60\n"));
    let address = address(&spillway);

    // Twenty clients that send part of a head, a byte now and then, and never finish it.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut socket = TcpStream::connect(&address).await.expect("connect");
        socket.write_all(b"POST / HTTP/1.1\r\nhost: x\r\n").await.expect("send part of a head");
        slow.push(socket);
    }
    // One that connects and sends nothing at all.
    let mut silent = TcpStream::connect(&address).await.expect("connect");
    let started = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for socket in &mut slow {
            // Trickling more header bytes does not extend the deadline.
            let _ = socket.write_all(b"x").await;
        }
    }
    for socket in &mut slow {
        let closed = read_until_closed(socket, Duration::from_secs(15)).await;
        assert!(closed.is_ok(), "a slow-header client is still connected after {:?}", started.elapsed());
    }
    assert!(read_until_closed(&mut silent, Duration::from_secs(15)).await.is_ok(), "a silent client stays connected");

    // A well-behaved client is unaffected.
    let client = spillway.client().await;
    let record = Record::builder().data(Blob::new("after\n")).build().expect("record");
    client.put_record().delivery_stream_name("app-logs").record(record).send().await.expect("put accepted");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml("  header_read_timeout_seconds: 1\n  idle_timeout_seconds: 3\n"));
    let mut socket = TcpStream::connect(address(&spillway)).await.expect("connect");
    let answer = keep_alive_health(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Idle, not reading a head: the header timeout (1 s) does not apply, the idle one (3 s) does.
    let still_open = read_until_closed(&mut socket, Duration::from_millis(1500)).await;
    assert!(still_open.is_err(), "closed before the idle timeout: {still_open:?}");
    // And the connection still serves a second request within it.
    let answer = keep_alive_health(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let idle_since = Instant::now();
    let closed = read_until_closed(&mut socket, Duration::from_secs(15)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection is still open after {:?}", idle_since.elapsed());
    assert!(idle_since.elapsed() >= Duration::from_secs(2), "closed after {:?}", idle_since.elapsed());
}

/// What a user sees at the cap: new connections still get an answer — `/health` 200, puts a
/// `503 ServiceUnavailableException` (SDKs retry it), `/ready` 503 — a warning in the log, the
/// count in `/metrics`; once connections are given back, puts go through again.
#[tokio::test]
async fn connections_over_the_cap_get_503_while_health_answers_and_puts_resume_after() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(
        dir.path(),
        &yaml("  header_read_timeout_seconds: 5\n  idle_timeout_seconds: 60\n  max_connections: 3\n"),
    );
    let address = address(&spillway);
    // Three keep-alive connections fill the cap and stay idle.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut socket = TcpStream::connect(&address).await.expect("connect");
        let answer = keep_alive_health(&mut socket).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(socket);
    }

    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("http client");
    let health = http.get(format!("{}/health", spillway.endpoint)).send().await.expect("health answered");
    assert_eq!(health.status(), 200, "the process is alive");
    let ready = http.get(format!("{}/ready", spillway.endpoint)).send().await.expect("ready answered");
    assert_eq!(ready.status(), 503, "no room for more traffic");
    let put = http
        .post(format!("{}/streams/app-logs/records", spillway.endpoint))
        .body("{\"over\":\"cap\"}\n")
        .send()
        .await
        .expect("put answered");
    assert_eq!(put.status(), 503);
    let error: serde_json::Value = put.json().await.expect("json error");
    assert_eq!(error["error"], "ServiceUnavailableException", "{error}");
    assert!(error["message"].as_str().unwrap_or_default().contains("server.max_connections"), "{error}");

    let client = spillway.client().await;
    let record = || Record::builder().data(Blob::new("sdk\n")).build().expect("record");
    let refused = client.put_record().delivery_stream_name("app-logs").record(record()).send().await;
    let error = refused.expect_err("over the cap, the SDK's put (and its retries) are refused");
    assert_eq!(error.code(), Some("ServiceUnavailableException"), "{error:?}");

    // A warning for the burst (one per 10 s at most), not one per refused connection.
    let log = spillway.log_text();
    let warnings = log.matches("connection limit reached").count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings for 6 refused connections:\n{log}");

    // Give the connections back: puts go through again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.put_record().delivery_stream_name("app-logs").record(record()).send().await {
            Ok(_) => break,
            Err(error) => assert!(Instant::now() < deadline, "puts still refused: {error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused_count = spillway.metric("spillway_http_connections_refused_total").await;
    assert!(refused_count.is_some_and(|count| count >= 5.0), "{refused_count:?}");

    let out = spillway.dir.join("out");
    assert_eq!(spillway.terminate(), 0);
    let delivered: Vec<u8> = local_objects(&out).into_iter().flat_map(|(_, body)| body).collect();
    assert_eq!(String::from_utf8_lossy(&delivered), "sdk\n", "only the put made under the cap landed");
}
