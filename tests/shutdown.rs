//! Graceful stop when the sink is down: the first SIGTERM stops intake and waits for deliveries
//! up to `server.shutdown_grace_seconds`, then exits 0; a second signal exits at once. Either way
//! every acknowledged record stays in the WAL and is delivered by the next start.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, local_objects, signal};

/// Records go to an S3 endpoint nothing listens on: every delivery fails and is retried.
fn unreachable_yaml(grace_seconds: u64) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, shutdown_grace_seconds: {grace_seconds} }}\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 0 }}\n\
         \x20   sink: {{ type: s3, url: 's3://nowhere', endpoint: 'http://127.0.0.1:9', access_key_id: x, secret_access_key: y }}\n"
    )
}

fn reachable_yaml() -> String {
    "server: { listen: 127.0.0.1:0 }\ndata_dir: ./data\nstreams:\n  - name: app-logs\n    buffering: { size_mib: 1, interval_seconds: 0 }\n    sink: { type: s3, url: file://./out }\n".to_string()
}

async fn put(spillway: &Spillway) -> Vec<u8> {
    let client = spillway.client().await;
    let data: Vec<Vec<u8>> = (0..100).map(|index| format!("{{\"i\":{index}}}\n").into_bytes()).collect();
    let records = data.iter().map(|data| Record::builder().data(Blob::new(data.clone())).build().unwrap()).collect();
    client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await.unwrap();
    data.concat()
}

#[tokio::test]
async fn the_grace_period_bounds_shutdown_and_the_next_start_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &unreachable_yaml(1));
    let expected = put(&spillway).await;
    let log = spillway.log.clone();
    let started = Instant::now();
    assert_eq!(spillway.terminate(), 0, "a grace period that runs out is still a clean exit");
    assert!(started.elapsed() < Duration::from_secs(20), "stopped soon after the 1 s grace period");
    assert!(std::fs::read_to_string(log).unwrap().contains("grace period over"));

    let fixed = Spillway::start(dir.path(), &reachable_yaml());
    assert_eq!(fixed.terminate(), 0);
    let delivered = common::concat_in_sent_order(local_objects(&dir.path().join("out")), &expected);
    assert_eq!(delivered, expected);
}

#[tokio::test]
async fn a_second_signal_exits_at_once_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut spillway = Spillway::start(dir.path(), &unreachable_yaml(600));
    let expected = put(&spillway).await;
    signal(&spillway.child, "TERM");
    // Wait until the first signal is being handled, then send the second.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spillway.log_text().contains("shutting down") {
        assert!(Instant::now() < deadline, "first signal not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    signal(&spillway.child, "INT");
    let status = loop {
        if let Some(status) = spillway.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the second signal did not exit at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(130));
    drop(spillway);

    let fixed = Spillway::start(dir.path(), &reachable_yaml());
    assert_eq!(fixed.terminate(), 0);
    let delivered = common::concat_in_sent_order(local_objects(&dir.path().join("out")), &expected);
    assert_eq!(delivered, expected);
}
