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
