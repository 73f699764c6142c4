//! The delivery loop against the in-memory sink: intent replay under the recorded id, interval
//! flushes on paused time, retries, and the error output. End-to-end behaviour through real
//! processes is in `tests/`.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use bytes::Bytes;
use spillway_sink_api::testkit::MemorySink;
use spillway_sink_api::{ErrorOutput, SinkError};

use super::*;
use crate::config::FsyncPolicy;
use crate::metrics::StreamMetrics;
use crate::wal::WalOptions;

/// Collects error output documents in memory.
#[derive(Default)]
struct MemoryErrorOutput {
    written: Mutex<Vec<(Uuid, String, Vec<u8>)>>,
}

#[async_trait]
impl ErrorOutput for MemoryErrorOutput {
    async fn write_error_records(&self, batch: &Batch, kind: &str, lines: Vec<u8>) -> Result<(), SinkError> {
        self.written.lock().unwrap().push((batch.id, kind.to_string(), lines));
        Ok(())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    stream_dir: std::path::PathBuf,
    wal: Wal,
    sink: Arc<MemorySink>,
    errors: Arc<MemoryErrorOutput>,
    metrics: Arc<StreamMetrics>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stream_dir = dir.path().join("s");
        let options = WalOptions {
            dir: stream_dir.join("wal"),
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_millis(10),
            segment_bytes: 1 << 20,
            max_bytes: 1 << 30,
            full_wait: Duration::ZERO,
        };
        let (wal, _) = Wal::open(options, 0).unwrap();
        Self {
            _dir: dir,
            stream_dir,
            wal,
            sink: Arc::new(MemorySink::default()),
            errors: Arc::new(MemoryErrorOutput::default()),
            metrics: Arc::new(StreamMetrics::default()),
        }
    }

    fn delivery_loop(&self, size_bytes: usize, interval: Duration, retry: Duration) -> DeliveryLoop {
        DeliveryLoop {
            stream: "s".into(),
            wal: self.wal.clone(),
            checkpoint: Checkpoint::new(&self.stream_dir),
            intents: IntentLog::open(&self.stream_dir).unwrap(),
            delivery: Arc::new(Delivery {
                sink: self.sink.clone(),
                error_output: self.errors.clone(),
                failure_output_type: "test-failed",
                retry_duration: retry,
                metrics: self.metrics.clone(),
            }),
            instance_id: Uuid::from_u128(7),
            size_bytes,
            interval,
            delimiter: RecordDelimiter::None,
        }
    }

    async fn append(&self, count: usize) {
        let records = (0..count).map(|index| Bytes::from(format!("r{index}"))).collect();
        self.wal.append(chrono::Utc::now().timestamp_millis(), records).await.unwrap();
    }
}

#[tokio::test]
async fn a_recorded_intent_is_resent_under_its_id_before_the_rest() {
    let harness = Harness::new();
    harness.append(5).await;
    harness.append(3).await;
    let recorded = Intent { id: Uuid::from_u128(42), start: 0, end: 5 };
    IntentLog::open(&harness.stream_dir).unwrap().record(&recorded).unwrap();

    let (_stop, stop_rx) = watch::channel(true);
    harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60)).run(stop_rx).await.unwrap();

    let batches = harness.sink.batches();
    let replayed = batches.iter().find(|batch| batch.id == recorded.id).expect("the intent's batch id");
    assert_eq!(replayed.records.iter().map(|r| r.sequence).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(batches.len(), 2, "then the rest as a batch of its own");
    assert_eq!(harness.sink.records().len(), 8);
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 8);
    assert!(IntentLog::open(&harness.stream_dir).unwrap().pending().unwrap().is_empty());
    harness.wal.close();
}

#[tokio::test(start_paused = true)]
async fn an_idle_buffer_flushes_when_its_interval_has_passed() {
    let harness = Harness::new();
    let (stop, stop_rx) = watch::channel(false);
    let task =
        tokio::spawn(harness.delivery_loop(1 << 20, Duration::from_secs(60), Duration::from_secs(60)).run(stop_rx));
    harness.append(2).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(harness.sink.batches().is_empty(), "not before the interval");
    tokio::time::sleep(Duration::from_secs(31)).await;
    for _ in 0..100 {
        if !harness.sink.batches().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(harness.sink.records().len(), 2, "flushed by the interval with no new record");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    harness.wal.close();
}

#[tokio::test(start_paused = true)]
async fn a_retriable_failure_is_retried_and_a_permanent_one_goes_to_the_error_output() {
    let harness = Harness::new();
    harness.sink.fail_next(SinkError::retriable("Test.Unavailable", "try later"));
    harness.append(3).await;
    let (_stop, stop_rx) = watch::channel(true);
    harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60)).run(stop_rx).await.unwrap();
    assert_eq!(harness.sink.records().len(), 3, "delivered after the retry");
    assert_eq!(harness.metrics.delivery_retries.load(Ordering::Relaxed), 1);
    assert!(harness.errors.written.lock().unwrap().is_empty());

    harness.sink.fail_next(SinkError::permanent("Test.Refused", "never"));
    harness.append(2).await;
    let (_stop, stop_rx) = watch::channel(true);
    harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60)).run(stop_rx).await.unwrap();
    let written = harness.errors.written.lock().unwrap().clone();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].1, "test-failed");
    let lines: Vec<serde_json::Value> = written[0]
        .2
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["errorCode"], "Test.Refused");
    assert_eq!(lines[0]["attemptsMade"], 1);
    assert_eq!(lines[1]["rawData"], "cjE=", "base64 of the record's bytes");
    assert_eq!(harness.metrics.error_output_records.load(Ordering::Relaxed), 2);
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 5, "routed records count as done");
    harness.wal.close();
}
