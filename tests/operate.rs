//! Operating spillway, end to end against the real binary: `/metrics` values match exactly what
//! a client sent and what landed in the sink; data freshness and open partitions show records
//! waiting in an open batch.

mod common;

use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, WAIT, local_objects};

/// Two local streams without compression or delimiter (delivered bytes = record bytes): `fast`
/// closes its batches every second, `slow` holds them for 15 minutes.
const YAML: &str = "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
    data_dir: ./data\n\
    streams:\n\
    \x20 - name: fast\n\
    \x20   buffering: { size_mib: 64, interval_seconds: 1 }\n\
    \x20   sink: { type: s3, url: file://./out-fast }\n\
    \x20 - name: slow\n\
    \x20   buffering: { size_mib: 64, interval_seconds: 900 }\n\
    \x20   sink: { type: s3, url: file://./out-slow }\n";

async fn metric(spillway: &Spillway, name: &str) -> f64 {
    spillway.metric(name).await.unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Poll `/metrics` until `name` reads `expected`.
async fn wait_for_metric(spillway: &Spillway, name: &str, expected: f64) {
    wait_until_metric(spillway, name, |value| value == expected).await;
}

/// Poll `/metrics` until `name` satisfies `accept`; its value then.
async fn wait_until_metric(spillway: &Spillway, name: &str, accept: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let value = spillway.metric(name).await;
        if let Some(value) = value.filter(|&value| accept(value)) {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "{name} is {value:?} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_match_what_was_sent_and_what_landed() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), YAML);
    let client = spillway.client().await;

    // Three PutRecordBatch calls of known sizes: 3 × 100 B, 5 × 2000 B, 7 × 31 B.
    let calls: [(usize, usize); 3] = [(3, 100), (5, 2000), (7, 31)];
    for (call, (records, size)) in calls.iter().enumerate() {
        let batch = (0..*records)
            .map(|index| {
                let mut data = format!("call {call} record {index} ").into_bytes();
                data.resize(*size, b'x');
                Record::builder().data(Blob::new(data)).build().unwrap()
            })
            .collect();
        let output =
            client.put_record_batch().delivery_stream_name("fast").set_records(Some(batch)).send().await.unwrap();
        assert_eq!(output.failed_put_count(), 0);
    }
    let sent_records: usize = calls.iter().map(|(records, _)| records).sum();
    let sent_bytes: usize = calls.iter().map(|(records, size)| records * size).sum();

    wait_for_metric(&spillway, "spillway_delivered_records_total{stream=\"fast\"}", sent_records as f64).await;
    let fast = "{stream=\"fast\"}";
    assert_eq!(metric(&spillway, &format!("spillway_incoming_records_total{fast}")).await, sent_records as f64);
    assert_eq!(metric(&spillway, &format!("spillway_incoming_bytes_total{fast}")).await, sent_bytes as f64);
    assert_eq!(metric(&spillway, &format!("spillway_incoming_put_requests_total{fast}")).await, 3.0);
    assert_eq!(metric(&spillway, &format!("spillway_put_latency_seconds_count{fast}")).await, 3.0);
    assert_eq!(metric(&spillway, &format!("spillway_throttled_records_total{fast}")).await, 0.0);
    let sink_labels = "{stream=\"fast\",sink=\"s3\"}";
    assert_eq!(metric(&spillway, &format!("spillway_delivered_bytes_total{sink_labels}")).await, sent_bytes as f64);
    assert_eq!(metric(&spillway, &format!("spillway_error_output_records_total{fast}")).await, 0.0);
    assert_eq!(metric(&spillway, "spillway_backup_writes_total{stream=\"fast\",outcome=\"success\"}").await, 0.0);

    // What landed: every byte sent, in as many objects as batches were delivered.
    let objects = local_objects(&dir.path().join("out-fast"));
    let landed_bytes: usize = objects.iter().map(|(_, bytes)| bytes.len()).sum();
    assert_eq!(landed_bytes, sent_bytes);
    let batches = metric(&spillway, &format!("spillway_delivered_batches_total{fast}")).await;
    assert_eq!(batches, objects.len() as f64);
    assert_eq!(metric(&spillway, &format!("spillway_batch_size_bytes_count{fast}")).await, batches);
    assert_eq!(metric(&spillway, &format!("spillway_batch_size_bytes_sum{fast}")).await, landed_bytes as f64);
    assert_eq!(metric(&spillway, &format!("spillway_delivery_latency_seconds_count{fast}")).await, batches);
    // Nothing waits: fresh, and the WAL has nothing undelivered (trimmed after the checkpoint).
    wait_for_metric(&spillway, &format!("spillway_data_freshness_seconds{fast}"), 0.0).await;
    wait_for_metric(&spillway, &format!("spillway_wal_bytes{fast}"), 0.0).await;
    assert_eq!(metric(&spillway, &format!("spillway_open_partitions{fast}")).await, 0.0);
    assert!(metric(&spillway, "spillway_wal_fsync_seconds_count").await >= 3.0, "one fsync per put at least");
    assert!(metric(&spillway, "process_cpu_seconds_total").await > 0.0);
    assert!(metric(&spillway, "process_peak_rss_bytes").await > 1e6);
    assert_eq!(spillway.terminate(), 0);
}

#[tokio::test]
async fn freshness_grows_while_records_wait_in_an_open_batch() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), YAML);
    let client = spillway.client().await;
    let record = Record::builder().data(Blob::new(vec![b'a'; 500])).build().unwrap();
    client.put_record_batch().delivery_stream_name("slow").records(record).send().await.unwrap();

    let slow = "{stream=\"slow\"}";
    wait_for_metric(&spillway, &format!("spillway_open_partitions{slow}"), 1.0).await;
    assert!(metric(&spillway, "spillway_open_batch_bytes").await >= 500.0);
    assert!(metric(&spillway, &format!("spillway_wal_bytes{slow}")).await > 500.0);
    let waited =
        wait_until_metric(&spillway, &format!("spillway_data_freshness_seconds{slow}"), |seconds| seconds >= 1.0).await;
    assert!(waited < 600.0, "{waited}");
    assert_eq!(metric(&spillway, "spillway_data_freshness_seconds{stream=\"fast\"}").await, 0.0);
    // Shutdown flushes the open batch.
    assert_eq!(spillway.terminate(), 0);
    let landed: usize = local_objects(&dir.path().join("out-slow")).iter().map(|(_, bytes)| bytes.len()).sum();
    assert_eq!(landed, 500);
}

/// Take a local sink down: its folder becomes a regular file, so writes and listings fail even
/// for root (see `tests/wal_full.rs`).
fn sink_down(out: &std::path::Path) {
    std::fs::remove_dir_all(out).unwrap();
    std::fs::write(out, b"not a folder").unwrap();
}

fn sink_up(out: &std::path::Path) {
    std::fs::remove_file(out).unwrap();
    std::fs::create_dir(out).unwrap();
}

/// `spillway <args>`: exit code and stdout + stderr.
fn spillway_command(args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// Poll `/ready` until it answers `status`; its body then.
async fn wait_for_ready_status(spillway: &Spillway, status: u16) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let response = reqwest::get(format!("{}/ready", spillway.endpoint)).await.unwrap();
        let answered = response.status().as_u16();
        let body = response.text().await.unwrap();
        if answered == status {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "/ready still answers {answered}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ready_turns_503_while_the_sink_is_unreachable_and_200_after() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out-fast");
    std::fs::create_dir(&out).unwrap();
    let yaml =
        YAML.replace("shutdown_grace_seconds: 30\n", "shutdown_grace_seconds: 30\n  healthcheck_interval_seconds: 1\n");
    let spillway = Spillway::start(dir.path(), &yaml);
    let endpoint = spillway.endpoint.clone();

    // Intake opens at once; /ready turns 200 when the first healthchecks have passed.
    assert_eq!(wait_for_ready_status(&spillway, 200).await, "ready\n");
    assert_eq!(spillway_command(&["health", "--ready", "--endpoint", &endpoint]).0, 0);
    assert_eq!(spillway.metric("spillway_sink_up{stream=\"fast\"}").await, Some(1.0));

    sink_down(&out);
    let body = wait_for_ready_status(&spillway, 503).await;
    assert!(body.contains("stream fast: s3 sink healthcheck failed") && !body.contains("stream slow"), "{body}");
    let (code, text) = spillway_command(&["health", "--ready", "--endpoint", &endpoint]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("503") && text.contains("stream fast"), "{text}");
    // Liveness does not depend on sinks.
    assert_eq!(spillway_command(&["health", "--endpoint", &endpoint]).0, 0);
    assert_eq!(spillway.metric("spillway_sink_up{stream=\"fast\"}").await, Some(0.0));
    let (code, table) = spillway_command(&["status", "--endpoint", &endpoint, "--interval-seconds", "0.2"]);
    assert_eq!(code, 0, "{table}");
    let fast_row = table.lines().find(|line| line.starts_with("fast ")).unwrap_or_else(|| panic!("{table}"));
    assert!(fast_row.ends_with("DOWN"), "{table}");
    assert!(table.lines().any(|line| line.starts_with("slow ") && line.ends_with("up")), "{table}");

    sink_up(&out);
    wait_for_ready_status(&spillway, 200).await;
    assert_eq!(spillway_command(&["health", "--ready", "--endpoint", &endpoint]).0, 0);
    assert!(spillway.log_text().contains("sink healthcheck passes again"));
    assert_eq!(spillway.terminate(), 0);
    // Not running: both probes fail.
    assert_eq!(spillway_command(&["health", "--endpoint", &endpoint]).0, 1);
}

/// A fake S3 endpoint (path style) that accepts every request for `errors-bucket` and answers
/// every other `503 Slow Down`; it keeps the request heads, to show that the sink really signed
/// requests with the configured credentials.
async fn refusing_s3() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 8192];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match connection.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let head = String::from_utf8_lossy(&request).to_string();
                let accepted = head.lines().next().is_some_and(|line| line.contains(" /errors-bucket/"));
                seen.lock().unwrap().push(head);
                let answer = if accepted {
                    "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = connection.write_all(answer.as_bytes()).await;
            });
        }
    });
    (endpoint, heads)
}

#[tokio::test]
async fn json_logs_show_deliveries_and_error_routing_and_never_a_secret() {
    const KEY: &str = "AKIDSPILLWAYKEY7Q3X";
    const SECRET: &str = "s3cr3t-Zq9vW2pL8mT4yR6nB1xK5cH7";
    let (s3_endpoint, heads) = refusing_s3().await;
    let dir = tempfile::tempdir().unwrap();
    // `secure` writes to a bucket that always answers 503 and gives up after no retry time, so its
    // records are routed to the error output bucket; `plain` delivers to a local folder.
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 5\n  healthcheck_interval_seconds: 1\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: secure\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   retry: {{ duration_seconds: 0 }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: s3://logs-bucket\n\
         \x20     endpoint: {s3_endpoint}\n\
         \x20     access_key_id: ${{KEY}}\n\
         \x20     secret_access_key: ${{SECRET}}\n\
         \x20     error_output_url: s3://errors-bucket\n\
         \x20 - name: plain\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: file://./out }}\n"
    );
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, yaml).unwrap();
    let spillway = Spillway::start_with_env(
        dir.path(),
        &config,
        &[("KEY", KEY), ("SECRET", SECRET), ("SPILLWAY_LOG", "debug"), ("SPILLWAY_LOG_FORMAT", "json")],
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"],
    );
    let client = spillway.client().await;
    for stream in ["secure", "plain"] {
        let record = Record::builder().data(Blob::new(format!("{{\"to\":\"{stream}\"}}\n"))).build().unwrap();
        client.put_record_batch().delivery_stream_name(stream).records(record).send().await.unwrap();
    }
    wait_for_metric(&spillway, "spillway_error_output_records_total{stream=\"secure\"}", 1.0).await;
    // One write to the error output bucket, which took it the first time.
    let backup = |outcome| format!("spillway_backup_writes_total{{stream=\"secure\",outcome=\"{outcome}\"}}");
    assert_eq!(metric(&spillway, &backup("success")).await, 1.0);
    assert_eq!(metric(&spillway, &backup("failure")).await, 0.0);
    wait_for_metric(&spillway, "spillway_delivered_records_total{stream=\"plain\"}", 1.0).await;
    let metrics = reqwest::get(format!("{}/metrics", spillway.endpoint)).await.unwrap().text().await.unwrap();
    let ready = wait_for_ready_status(&spillway, 503).await;
    let ready = if ready.contains("healthcheck pending") {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let body = reqwest::get(format!("{}/ready", spillway.endpoint)).await.unwrap().text().await.unwrap();
            if !body.contains("healthcheck pending") {
                break body;
            }
            assert!(std::time::Instant::now() < deadline, "the first healthcheck round never ended: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        ready
    };
    assert!(ready.contains("stream secure: s3 sink healthcheck failed"), "{ready}");
    // The status page's data: source, sink and the last error with its time.
    let status_text = reqwest::get(format!("{}/api/status", spillway.endpoint)).await.unwrap().text().await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status_text).unwrap();
    assert_eq!(status["ready"], false);
    let secure = &status["streams"][1];
    assert_eq!(
        (&secure["name"], &secure["source"], &secure["sink"]),
        (&"secure".into(), &"direct_put".into(), &"s3".into())
    );
    let last_error = secure["last_error"]["message"].as_str().unwrap_or_default();
    assert!(last_error.contains("routed to the error output"), "{status}");
    assert!(secure["last_error"]["at_ms"].as_i64().is_some_and(|at| at > 1_700_000_000_000), "{status}");
    assert!(status["streams"][0]["last_error"].is_null(), "plain had no error: {status}");
    let page = reqwest::get(format!("{}/", spillway.endpoint)).await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("<title>spillway status</title>"));
    let log_path = spillway.log.clone();
    assert_eq!(spillway.terminate(), 0);

    // The credentials were in use: the fake S3 saw requests signed with the key id.
    assert!(heads.lock().unwrap().iter().any(|head| head.contains(KEY)), "no signed request reached the fake s3");
    let log = std::fs::read_to_string(&log_path).unwrap();
    for (what, text) in [("log", &log), ("/metrics", &metrics), ("/ready", &ready), ("/api/status", &status_text)] {
        assert!(!text.contains(SECRET) && !text.contains(KEY), "a credential leaked into the {what}");
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not json ({error}): {line}")))
        .collect();
    let find = |message: &str| {
        lines.iter().find(|line| line["message"] == message).unwrap_or_else(|| panic!("no {message:?} line in {log}"))
    };
    let delivered = find("batch delivered");
    assert_eq!(delivered["level"], "DEBUG");
    assert_eq!(delivered["stream"], "plain");
    assert_eq!(delivered["records"], 1);
    let routed = find("records routed to the error output");
    assert_eq!(routed["level"], "WARN");
    assert_eq!(routed["stream"], "secure");
    assert_eq!(routed["records"], 1);
    assert!(routed["code"].as_str().is_some_and(|code| !code.is_empty()), "{routed}");

    // A configuration error elsewhere in the file does not echo the interpolated secret either.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace("interval_seconds: 1 }", "interval_secs: 1 }"),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "--config"])
        .arg(&config)
        .envs([("KEY", KEY), ("SECRET", SECRET)])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success() && text.contains("interval_secs"), "{text}");
    assert!(!text.contains(SECRET) && !text.contains(KEY), "validate printed a credential: {text}");
}
