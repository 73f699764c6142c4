//! The delivery loop against the in-memory sink: intent replay under the recorded id, done intents
//! skipped after a restart, partitions completing out of order with the watermark held by the
//! slowest, interval flushes on paused time, retries, partial failures and the error output.
//! End-to-end behaviour through real processes is in `tests/`.

use std::collections::BTreeMap;

use bytes::Bytes;
use spillway_sink_api::testkit::{MemoryEncoderFactory, MemorySink};
use spillway_sink_api::{EncodeError, PartitionKeys, RecordFailure, RecordPosition, SinkError};

use super::*;
use crate::checkpoint::Checkpoint;
use crate::config::{FsyncPolicy, RecordDelimiter};
use crate::metrics::StreamMetrics;
use crate::record_metadata::MetadataRef;
use crate::wal::WalOptions;

/// Partitions JSON-free test records `"<key>:<n>"` by the text before the colon; `bad:` fails.
struct PrefixPartitioner;

impl Partitioner for PrefixPartitioner {
    fn partition(&self, record: &[u8], _: MetadataRef<'_>) -> Result<Arc<PartitionKeys>, PartitionFailure> {
        let text = String::from_utf8_lossy(record);
        let key = text.split(':').next().unwrap_or_default().to_string();
        if key == "bad" {
            return Err(PartitionFailure { code: "Test.NoKey".into(), message: "no key".into() });
        }
        Ok(Arc::new(PartitionKeys::from([("k".to_string(), key)])))
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    stream_dir: std::path::PathBuf,
    wal: Wal,
    sink: Arc<MemorySink>,
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
            track_positions: false,
        };
        let (wal, _) = Wal::open(options, 0).unwrap();
        Self {
            _dir: dir,
            stream_dir,
            wal,
            sink: Arc::new(MemorySink::default()),
            metrics: Arc::new(StreamMetrics::default()),
        }
    }

    fn delivery_loop(&self, size_bytes: usize, interval: Duration, retry: Duration) -> DeliveryLoop {
        self.delivery_loop_with(size_bytes, interval, retry, Router::new(None, None, RecordDelimiter::None))
    }

    fn delivery_loop_with(
        &self,
        size_bytes: usize,
        interval: Duration,
        retry: Duration,
        router: Router,
    ) -> DeliveryLoop {
        let encoders: Arc<dyn EncoderFactory> = Arc::new(MemoryEncoderFactory);
        DeliveryLoop {
            stream: "s".into(),
            wal: self.wal.clone(),
            state: FileState::new(Checkpoint::new(&self.stream_dir), IntentLog::open(&self.stream_dir).unwrap()),
            delivery: self.delivery(self.sink.clone(), retry, router.clone()),
            instance_id: Uuid::from_u128(7),
            router,
            encoders,
            batching: BatchingOptions { size_bytes, interval, max_partitions: 500, full_batches_in_flight: None },
            budget: MemoryBudget::new(64 << 20),
        }
    }

    /// Delivery to `sink` (errors to the memory sink), as the loop under test uses it.
    fn delivery(&self, sink: Arc<dyn spillway_sink_api::Sink>, retry: Duration, router: Router) -> Arc<Delivery> {
        Arc::new(Delivery {
            sink,
            error_output: self.sink.clone(),
            failure_output_type: "test-failed",
            recovery: Default::default(),
            retry_duration: retry,
            metrics: self.metrics.clone(),
            wal: self.wal.clone(),
            encoders: Arc::new(MemoryEncoderFactory),
            router,
        })
    }

    async fn append(&self, count: usize) {
        let records: Vec<Bytes> = (0..count).map(|index| Bytes::from(format!("r{index}"))).collect();
        self.wal.append(chrono::Utc::now().timestamp_millis(), records).await.unwrap();
    }

    async fn append_lines(&self, lines: &[&str]) {
        let records: Vec<Bytes> = lines.iter().map(|line| Bytes::from(line.to_string())).collect();
        self.wal.append(chrono::Utc::now().timestamp_millis(), records).await.unwrap();
    }

    fn intents(&self) -> Vec<Intent> {
        IntentLog::open(&self.stream_dir).unwrap().load().unwrap()
    }

    fn delivered(&self) -> Vec<(u64, String)> {
        self.sink
            .records()
            .into_iter()
            .map(|record| (record.sequence, String::from_utf8_lossy(&record.data).into_owned()))
            .collect()
    }
}

fn partition(value: &str) -> Route {
    Route::sink(Arc::new(PartitionKeys::from([("k".to_string(), value.to_string())])))
}

#[tokio::test]
async fn a_recorded_intent_is_resent_under_its_id_before_the_rest() {
    let harness = Harness::new();
    harness.append(5).await;
    harness.append(3).await;
    // A batch of the first five records, recorded (pending) by the run before a crash.
    let recorded = Intent::new(&Uuid::from_u128(7), "s", &Route::sink(Arc::default()), 0, 5);
    IntentLog::open(&harness.stream_dir).unwrap().record(&recorded).unwrap();

    let (_stop, stop_rx) = watch::channel(true);
    harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60)).run(stop_rx).await.unwrap();

    let batches = harness.sink.batches();
    let replayed = batches.iter().find(|batch| batch.id == recorded.id).expect("the intent's batch id");
    assert_eq!(replayed.sequences.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(batches.len(), 2, "then the rest as a batch of its own");
    assert_eq!(harness.sink.records().len(), 8);
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 8);
    assert!(harness.intents().is_empty());
    harness.wal.close();
}

/// Real time, not paused: with a paused clock, tokio advances time while the loop waits for its
/// blocking steps, so "not before the interval" would race.
#[tokio::test]
async fn an_idle_batch_closes_when_its_interval_has_passed() {
    let harness = Harness::new();
    let (stop, stop_rx) = watch::channel(false);
    let interval = Duration::from_millis(800);
    let task = tokio::spawn(harness.delivery_loop(1 << 20, interval, Duration::from_secs(60)).run(stop_rx));
    let appended = std::time::Instant::now();
    harness.append(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(harness.sink.batches().is_empty(), "not before the interval");
    for _ in 0..500 {
        if !harness.sink.batches().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(harness.sink.records().len(), 2, "closed by the interval with no new record");
    assert!(appended.elapsed() >= interval);
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
    assert_eq!(harness.metrics.delivery_retries.get(), 1);
    assert!(harness.sink.error_lines().is_empty());

    harness.sink.fail_next(SinkError::permanent("Test.Refused", "never"));
    harness.sink.fail_next_error_write(SinkError::retriable("Test.BackupUnavailable", "try later"));
    harness.append(2).await;
    let (_stop, stop_rx) = watch::channel(true);
    harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60)).run(stop_rx).await.unwrap();
    let written = harness.sink.error_lines();
    assert!(written.iter().all(|(kind, _)| kind == "test-failed"));
    let lines: Vec<serde_json::Value> = written.iter().map(|(_, line)| serde_json::from_slice(line).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["errorCode"], "Test.Refused");
    assert_eq!(lines[0]["attemptsMade"], 1);
    assert_eq!(lines[1]["rawData"], "cjE=", "base64 of the record's bytes");
    assert_eq!(harness.metrics.error_output_records.get(), 2);
    // The error output refused once: written on the second try, both writes counted.
    assert_eq!(harness.metrics.backup_writes_failed.get(), 1);
    assert_eq!(harness.metrics.backup_writes_succeeded.get(), 1);
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 5, "routed records count as done");
    harness.wal.close();
}

#[tokio::test]
async fn partitions_get_their_own_batches_and_key_failures_go_to_the_error_output() {
    let harness = Harness::new();
    harness.append_lines(&["a:1", "b:1", "a:2", "bad:1", "b:2", "c:1"]).await;
    let (_stop, stop_rx) = watch::channel(true);
    harness
        .delivery_loop_with(1 << 20, Duration::from_secs(900), Duration::from_secs(60), partitioned())
        .run(stop_rx)
        .await
        .unwrap();
    let mut by_partition: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for batch in harness.sink.batches() {
        by_partition.entry(batch.partition["k"].clone()).or_default().extend(batch.sequences.iter());
    }
    assert_eq!(
        by_partition,
        BTreeMap::from([("a".into(), vec![0, 2]), ("b".into(), vec![1, 4]), ("c".into(), vec![5])])
    );
    let errors = harness.sink.error_lines();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "metadata-extraction-failed");
    let line: serde_json::Value = serde_json::from_slice(&errors[0].1).unwrap();
    assert_eq!((line["errorCode"].as_str(), line["rawData"].as_str()), (Some("Test.NoKey"), Some("YmFkOjE=")));
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 6);
    assert!(harness.intents().is_empty());
    harness.wal.close();
}

#[tokio::test]
async fn done_intents_above_the_checkpoint_are_skipped_after_a_restart() {
    let harness = Harness::new();
    harness.append_lines(&["a:1", "b:1", "a:2", "b:2", "a:3"]).await;
    // Before the crash: b's batch [1, 4) had left (done); a's batch [0, 3) was recorded but its
    // outcome is unknown (pending); the checkpoint is still 0.
    let log = IntentLog::open(&harness.stream_dir).unwrap();
    let mut done = Intent::new(&Uuid::from_u128(7), "s", &partition("b"), 1, 4);
    done.state = IntentState::Done;
    log.record(&done).unwrap();
    let pending = Intent::new(&Uuid::from_u128(7), "s", &partition("a"), 0, 3);
    log.record(&pending).unwrap();

    let (_stop, stop_rx) = watch::channel(true);
    harness
        .delivery_loop_with(1 << 20, Duration::from_secs(900), Duration::from_secs(60), partitioned())
        .run(stop_rx)
        .await
        .unwrap();
    let batches = harness.sink.batches();
    let resent = batches.iter().find(|batch| batch.id == pending.id).expect("the pending batch, under its id");
    assert_eq!(resent.sequences.iter().collect::<Vec<_>>(), vec![0, 2]);
    assert!(batches.iter().all(|batch| batch.id != done.id), "the done batch is not sent again");
    assert_eq!(harness.delivered(), vec![(0, "a:1".into()), (2, "a:2".into()), (4, "a:3".into())]);
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 5);
    assert!(harness.intents().is_empty(), "intents below the watermark are removed");
    harness.wal.close();
}

/// A sink whose writes for one partition wait until released, to complete batches out of order.
struct HeldSink {
    inner: MemorySink,
    held_partition: String,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl spillway_sink_api::Sink for HeldSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.partition.get("k") == Some(&self.held_partition) {
            self.release.notified().await;
        }
        self.inner.write(batch).await
    }
    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_slow_partition_holds_the_watermark_but_not_the_others() {
    let harness = Harness::new();
    let held = Arc::new(HeldSink {
        inner: MemorySink::default(),
        held_partition: "slow".into(),
        release: tokio::sync::Notify::new(),
    });
    let mut delivery_loop =
        harness.delivery_loop_with(4, Duration::from_secs(900), Duration::from_secs(60), partitioned());
    delivery_loop.delivery = harness.delivery(held.clone(), Duration::from_secs(60), partitioned());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(delivery_loop.run(stop_rx));
    // Each record fills its batch (size hint 4 bytes).
    harness.append_lines(&["slow:1", "fast:1", "fast:2"]).await;
    // Real time (the sink is held by a real notify): wait generously, for a loaded machine, until
    // the fast batches are written *and* their intents marked done (the mark follows the write).
    let expected = vec![IntentState::Pending, IntentState::Done, IntentState::Done];
    let states = || -> Vec<IntentState> { harness.intents().iter().map(|intent| intent.state).collect() };
    for _ in 0..3000 {
        if held.inner.batches().len() == 2 && states() == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(held.inner.batches().len(), 2, "the fast partition's batches left");
    assert_eq!(states(), expected);
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 0, "the slow batch holds the watermark");

    held.release.notify_one();
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(held.inner.batches().len(), 3);
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 3);
    assert!(harness.intents().is_empty());
    harness.wal.close();
}

#[tokio::test(start_paused = true)]
async fn a_partial_failure_resends_only_the_retriable_records() {
    let harness = Harness::new();
    let failure = |index, retriable| RecordFailure {
        index,
        retriable,
        code: "Test.Item".into(),
        message: format!("item {index}"),
    };
    harness.sink.fail_next(SinkError::partial(vec![failure(1, true), failure(2, false)]));
    harness.append(4).await;
    let (_stop, stop_rx) = watch::channel(true);
    harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60)).run(stop_rx).await.unwrap();
    // The memory sink keeps the last write per batch id: the retry of record 1.
    let batches = harness.sink.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].sequences.iter().collect::<Vec<_>>(), vec![1], "only the retriable record is re-sent");
    let errors = harness.sink.error_lines();
    assert_eq!(errors.len(), 1, "the permanent failure goes to the error output");
    let line: serde_json::Value = serde_json::from_slice(&errors[0].1).unwrap();
    assert_eq!(line["rawData"], "cjI=");
    assert_eq!(harness.metrics.delivered_records.get(), 3);
    harness.wal.close();
}

/// Partitions by [`PrefixPartitioner`] after a jq transform that splits `{"items": [...]}` into
/// its items (as raw text) and drops `"skip"`.
fn transformed() -> Router {
    let jq =
        crate::processing::TransformConfig::Jq { expr: r#".items[] | select(. != "skip")"#.into(), raw_output: true };
    let transforms = crate::processing::Transforms::build(&[jq]).unwrap();
    Router::new(Some(Arc::new(PrefixPartitioner)), Some(Arc::new(transforms)), RecordDelimiter::None)
}

fn partitioned() -> Router {
    Router::new(Some(Arc::new(PrefixPartitioner)), None, RecordDelimiter::None)
}

fn batch_contents(sink: &MemorySink) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut contents: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for batch in sink.batches() {
        let records = spillway_sink_api::testkit::split_memory_payload(&batch.payload);
        let entry = contents.entry(batch.partition["k"].clone()).or_default();
        entry.extend(
            batch
                .sequences
                .iter()
                .zip(records)
                .map(|(sequence, data)| (sequence, String::from_utf8_lossy(&data).into_owned())),
        );
    }
    contents
}

#[tokio::test]
async fn transforms_split_filter_and_fail_records_before_partitioning() {
    let harness = Harness::new();
    harness
        .append_lines(&[r#"{"items":["a:1","b:1"]}"#, "not json", r#"{"items":["skip","a:2"]}"#, r#"{"items":[]}"#])
        .await;
    let (_stop, stop_rx) = watch::channel(true);
    harness
        .delivery_loop_with(1 << 20, Duration::from_secs(900), Duration::from_secs(60), transformed())
        .run(stop_rx)
        .await
        .unwrap();
    assert_eq!(
        batch_contents(&harness.sink),
        BTreeMap::from([
            ("a".into(), vec![(0, "a:1".into()), (2, "a:2".into())]),
            ("b".into(), vec![(0, "b:1".into())]),
        ])
    );
    let errors = harness.sink.error_lines();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "processing-failed");
    let line: serde_json::Value = serde_json::from_slice(&errors[0].1).unwrap();
    assert_eq!(line["errorCode"], "Jq.NonJsonRecord");
    assert_eq!(line["rawData"], "bm90IGpzb24=", "the record as it arrived");
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 4, "dropped records count as done");
    harness.wal.close();
}

#[tokio::test]
async fn a_size_close_never_splits_one_records_outputs() {
    let harness = Harness::new();
    harness.append_lines(&[r#"{"items":["a:1","a:2","a:3"]}"#, r#"{"items":["a:4"]}"#]).await;
    let (_stop, stop_rx) = watch::channel(true);
    // A 1-byte size hint closes a batch after every WAL record, not after every output.
    harness
        .delivery_loop_with(1, Duration::from_secs(900), Duration::from_secs(60), transformed())
        .run(stop_rx)
        .await
        .unwrap();
    let mut batches: Vec<Vec<u64>> =
        harness.sink.batches().iter().map(|batch| batch.sequences.iter().collect()).collect();
    batches.sort();
    assert_eq!(batches, vec![vec![0, 0, 0], vec![1]]);
    harness.wal.close();
}

#[tokio::test]
async fn a_pending_intent_is_rebuilt_through_the_transforms() {
    let harness = Harness::new();
    harness.append_lines(&[r#"{"items":["a:1","b:1"]}"#, r#"{"items":["a:2","b:2"]}"#]).await;
    let pending = Intent::new(&Uuid::from_u128(7), "s", &partition("a"), 0, 2);
    IntentLog::open(&harness.stream_dir).unwrap().record(&pending).unwrap();
    let (_stop, stop_rx) = watch::channel(true);
    harness
        .delivery_loop_with(1 << 20, Duration::from_secs(900), Duration::from_secs(60), transformed())
        .run(stop_rx)
        .await
        .unwrap();
    let batches = harness.sink.batches();
    let resent = batches.iter().find(|batch| batch.id == pending.id).expect("the pending batch, under its id");
    let records = spillway_sink_api::testkit::split_memory_payload(&resent.payload);
    assert_eq!(records, vec![Bytes::from("a:1"), Bytes::from("a:2")]);
    assert_eq!(
        batch_contents(&harness.sink)["b"],
        vec![(0, "b:1".to_string()), (1, "b:2".to_string())],
        "the other partition's outputs of the same records are batched afresh"
    );
    harness.wal.close();
}

#[tokio::test(start_paused = true)]
async fn a_partial_retry_reads_back_the_transformed_records_of_its_partition() {
    let harness = Harness::new();
    let failure =
        |index, retriable| RecordFailure { index, retriable, code: "Test.Item".into(), message: "item".into() };
    // Partition a's batch holds a:1, a:2, a:3 (the outputs of WAL records 0 and 1).
    harness.sink.fail_next(SinkError::partial(vec![failure(1, true), failure(2, false)]));
    harness.append_lines(&[r#"{"items":["a:1","a:2"]}"#, r#"{"items":["a:3"]}"#]).await;
    let (_stop, stop_rx) = watch::channel(true);
    harness
        .delivery_loop_with(1 << 20, Duration::from_secs(900), Duration::from_secs(60), transformed())
        .run(stop_rx)
        .await
        .unwrap();
    let batches = harness.sink.batches();
    assert_eq!(batches.len(), 1);
    let records = spillway_sink_api::testkit::split_memory_payload(&batches[0].payload);
    assert_eq!(records, vec![Bytes::from("a:2")], "only the retriable output is re-sent");
    let errors = harness.sink.error_lines();
    assert_eq!(errors.len(), 1);
    let line: serde_json::Value = serde_json::from_slice(&errors[0].1).unwrap();
    assert_eq!(line["rawData"], "YToz", "the transformed record that failed (a:3)");
    harness.wal.close();
}

/// A retried subset that fails again is read from memory, not the WAL: the WAL would give back
/// every output of a record the transform split (a:1 and a:2 of record 0), so indices into the
/// subset would name the wrong records.
#[tokio::test(start_paused = true)]
async fn a_retried_subset_that_fails_again_names_its_own_records() {
    let harness = Harness::new();
    let failure =
        |index, retriable| RecordFailure { index, retriable, code: "Test.Item".into(), message: "item".into() };
    // Popped last first: attempt 1 fails a:1 and a:3 retriably; attempt 2 (the subset a:1, a:3)
    // fails its second record, a:3, for good.
    harness.sink.fail_next(SinkError::partial(vec![failure(1, false)]));
    harness.sink.fail_next(SinkError::partial(vec![failure(0, true), failure(2, true)]));
    harness.append_lines(&[r#"{"items":["a:1","a:2"]}"#, r#"{"items":["a:3"]}"#]).await;
    let (_stop, stop_rx) = watch::channel(true);
    harness
        .delivery_loop_with(1 << 20, Duration::from_secs(900), Duration::from_secs(60), transformed())
        .run(stop_rx)
        .await
        .unwrap();
    let errors = harness.sink.error_lines();
    assert_eq!(errors.len(), 1);
    let line: serde_json::Value = serde_json::from_slice(&errors[0].1).unwrap();
    assert_eq!(line["rawData"], "YToz", "a:3 given up, not a:2");
    assert_eq!(harness.metrics.delivered_records.get(), 2, "a:2 at the first attempt, a:1 at the second");
    harness.wal.close();
}

/// Refuses records that start with `reject`, as a Parquet encoder refuses what does not fit
/// its schema: at `push`, or (`deferred`, as when it reads records on worker threads) in the
/// payload.
struct RejectingEncoderFactory {
    deferred: bool,
}

struct RejectingEncoder {
    inner: Box<dyn spillway_sink_api::Encoder>,
    deferred: bool,
    refused: Vec<spillway_sink_api::Refusal>,
}

impl EncoderFactory for RejectingEncoderFactory {
    fn new_encoder(&self, chunk_bytes: usize) -> Box<dyn spillway_sink_api::Encoder> {
        let inner = MemoryEncoderFactory.new_encoder(chunk_bytes);
        Box::new(RejectingEncoder { inner, deferred: self.deferred, refused: Vec::new() })
    }
}

impl spillway_sink_api::Encoder for RejectingEncoder {
    fn push(&mut self, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        self.inner.push(data, delimiter)
    }
    fn push_at(&mut self, position: RecordPosition, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        if !data.starts_with(b"reject") {
            return self.inner.push_at(position, data, delimiter);
        }
        let (output_type, code, message) = ("format-conversion-failed", "Test.Rejected", "does not fit".to_string());
        if !self.deferred {
            return Err(EncodeError::Rejected { output_type, code, message });
        }
        self.refused.push(spillway_sink_api::Refusal { position, output_type, code, message });
        Ok(())
    }
    fn held_bytes(&self) -> usize {
        self.inner.held_bytes()
    }
    fn finish(self: Box<Self>) -> Result<spillway_sink_api::Payload, EncodeError> {
        Ok(self.inner.finish()?.with_refused(self.refused))
    }
}

async fn refused_records_go_to_the_error_output_and_the_rest_is_delivered(deferred: bool) {
    let harness = Harness::new();
    harness.append_lines(&["a:1", "reject:1", "a:2", "reject:2", "a:3"]).await;
    let (_stop, stop_rx) = watch::channel(true);
    let mut delivery_loop =
        harness.delivery_loop_with(1 << 20, Duration::from_secs(900), Duration::from_secs(60), partitioned());
    delivery_loop.encoders = Arc::new(RejectingEncoderFactory { deferred });
    delivery_loop.run(stop_rx).await.unwrap();
    assert_eq!(
        batch_contents(&harness.sink),
        BTreeMap::from([("a".into(), vec![(0, "a:1".into()), (2, "a:2".into()), (4, "a:3".into())])]),
        "no (empty) batch for the partition whose only records were refused"
    );
    let errors = harness.sink.error_lines();
    let raw: Vec<(String, String, String)> = errors
        .iter()
        .map(|(output_type, line)| {
            let line: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(line["errorCode"], "Test.Rejected");
            assert_eq!(line["attemptsMade"], 1);
            let sequence = line["sequenceNumber"].as_str().unwrap().to_string();
            (output_type.clone(), line["rawData"].as_str().unwrap().to_string(), sequence)
        })
        .collect();
    let expected = |raw: &str, sequence: &str| ("format-conversion-failed".to_string(), raw.into(), sequence.into());
    assert_eq!(raw, [expected("cmVqZWN0OjE=", "1"), expected("cmVqZWN0OjI=", "3")]);
    assert_eq!(harness.metrics.delivered_records.get(), 3, "refused records are not counted delivered");
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 5);
    harness.wal.close();
}

#[tokio::test]
async fn a_record_the_encoder_refuses_goes_to_the_error_output_and_the_rest_is_delivered() {
    refused_records_go_to_the_error_output_and_the_rest_is_delivered(false).await;
}

#[tokio::test]
async fn a_record_refused_in_the_payload_goes_to_the_error_output_when_its_batch_is_delivered() {
    refused_records_go_to_the_error_output_and_the_rest_is_delivered(true).await;
}

#[test]
fn four_full_batches_fit_in_flight_whatever_the_buffer_size() {
    const MIB: usize = 1 << 20;
    assert_eq!(super::in_flight_bytes_cap(MIB, Some(4)), super::MAX_IN_FLIGHT_BYTES);
    for size in [5 * MIB, 10 * MIB, 64 * MIB] {
        // A `_bulk` body is its records plus ~8 % of action lines.
        let bulk_body = size + size / 12;
        assert!(4 * bulk_body <= super::in_flight_bytes_cap(size, Some(4)), "{size}");
        assert!(5 * bulk_body > super::in_flight_bytes_cap(size, Some(4)), "{size}: still bounded");
        // A sink that asks for nothing (compressed S3 batches) keeps the default bound.
        assert_eq!(super::in_flight_bytes_cap(size, None), super::MAX_IN_FLIGHT_BYTES);
    }
}

/// The memory encoder with a bug: `push` panics on a record `poison…`, `finish` panics when the
/// batch holds a record `late-poison…`.
struct PanickingEncoderFactory;

struct PanickingEncoder {
    inner: Box<dyn spillway_sink_api::Encoder>,
    holds_late_poison: bool,
}

impl EncoderFactory for PanickingEncoderFactory {
    fn new_encoder(&self, chunk_bytes: usize) -> Box<dyn spillway_sink_api::Encoder> {
        Box::new(PanickingEncoder { inner: MemoryEncoderFactory.new_encoder(chunk_bytes), holds_late_poison: false })
    }
}

impl spillway_sink_api::Encoder for PanickingEncoder {
    fn push(&mut self, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        // Half-changed before the panic, as a real bug would leave it.
        self.inner.push(data, delimiter)?;
        assert!(!data.starts_with(b"poison"), "a bug in an encoder");
        self.holds_late_poison |= data.starts_with(b"late-poison");
        Ok(())
    }
    fn held_bytes(&self) -> usize {
        self.inner.held_bytes()
    }
    fn finish(self: Box<Self>) -> Result<spillway_sink_api::Payload, EncodeError> {
        assert!(!self.holds_late_poison, "a bug in finishing a batch");
        self.inner.finish()
    }
}

/// The error lines written: (output type, errorCode, errorMessage, record text).
fn error_records(sink: &MemorySink) -> Vec<(String, String, String, String)> {
    use base64::Engine;
    sink.error_lines()
        .iter()
        .map(|(output_type, line)| {
            let line: serde_json::Value = serde_json::from_slice(line).unwrap();
            let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            (
                output_type.clone(),
                line["errorCode"].as_str().unwrap().to_string(),
                line["errorMessage"].as_str().unwrap().to_string(),
                String::from_utf8(raw).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_encoder_that_panics_sets_its_batch_aside_and_the_stream_goes_on() {
    let harness = Harness::new();
    harness.append_lines(&["a:1", "poison:1", "a:2", "b:1", "late-poison:1", "a:3"]).await;
    let (_stop, stop_rx) = watch::channel(true);
    let mut delivery_loop = harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60));
    delivery_loop.encoders = Arc::new(PanickingEncoderFactory);
    delivery_loop.run(stop_rx).await.expect("the loop survives both panics");

    // `poison:1` poisoned the batch it joined (with `a:1`); the next batch took `a:2` … and
    // panicked when finished, for `late-poison:1`. Nothing is lost: every record is delivered
    // or in the error output with the reason.
    let errors = error_records(&harness.sink);
    let mut set_aside: Vec<&str> = errors.iter().map(|(_, _, _, record)| record.as_str()).collect();
    set_aside.sort_unstable();
    assert_eq!(set_aside, ["a:1", "a:2", "a:3", "b:1", "late-poison:1", "poison:1"]);
    for (output_type, code, message, record) in &errors {
        assert_eq!((output_type.as_str(), code.as_str()), ("test-failed", INTERNAL_ERROR), "{record}");
        let expected = if ["a:1", "poison:1"].contains(&record.as_str()) {
            "internal error: the encoder panicked on record 1 (output 0): a bug in an encoder"
        } else {
            "internal error: the encoder panicked finishing the batch: a bug in finishing a batch"
        };
        assert_eq!(message, expected, "{record}");
    }
    assert!(harness.delivered().is_empty());
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 6, "set-aside records count as done");
    assert!(harness.intents().is_empty());

    // The stream goes on: later records are delivered by the same kind of loop.
    harness.append_lines(&["a:4", "a:5"]).await;
    let (_stop, stop_rx) = watch::channel(true);
    let mut delivery_loop = harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60));
    delivery_loop.encoders = Arc::new(PanickingEncoderFactory);
    delivery_loop.run(stop_rx).await.unwrap();
    assert_eq!(harness.delivered(), vec![(6, "a:4".into()), (7, "a:5".into())]);
    harness.wal.close();
}

#[tokio::test]
async fn a_batch_recorded_before_a_crash_whose_encoder_panics_is_set_aside_again() {
    let harness = Harness::new();
    harness.append_lines(&["a:1", "poison:1", "a:2"]).await;
    // The run before the crash recorded the batch [0, 2) (pending); its outcome is unknown.
    let recorded = Intent::new(&Uuid::from_u128(7), "s", &Route::sink(Arc::default()), 0, 2);
    IntentLog::open(&harness.stream_dir).unwrap().record(&recorded).unwrap();
    let (_stop, stop_rx) = watch::channel(true);
    let mut delivery_loop = harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60));
    delivery_loop.encoders = Arc::new(PanickingEncoderFactory);
    delivery_loop.run(stop_rx).await.expect("no restart loop: the rebuilt batch is set aside");
    let mut set_aside: Vec<String> = error_records(&harness.sink).into_iter().map(|(.., record)| record).collect();
    set_aside.sort_unstable();
    assert_eq!(set_aside, ["a:1", "poison:1"]);
    assert_eq!(harness.delivered(), vec![(2, "a:2".into())]);
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 3);
    harness.wal.close();
}

/// A sink with a bug: `write` panics on a batch holding a record `poison…`.
struct PanickingSink {
    inner: MemorySink,
}

#[async_trait::async_trait]
impl spillway_sink_api::Sink for PanickingSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        let records = spillway_sink_api::testkit::split_memory_payload(&batch.payload);
        assert!(!records.iter().any(|record| record.starts_with(b"poison")), "a bug in a sink");
        self.inner.write(batch).await
    }
    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_sink_write_that_panics_sets_its_batch_aside_and_the_stream_goes_on() {
    let harness = Harness::new();
    let panicking = Arc::new(PanickingSink { inner: MemorySink::default() });
    // One batch per record (a 1-byte size hint), so the panic is the poison's batch's alone.
    let mut delivery_loop = harness.delivery_loop(1, Duration::from_secs(900), Duration::from_secs(60));
    delivery_loop.delivery = harness.delivery(panicking.clone(), Duration::from_secs(60), delivery_loop.router.clone());
    harness.append_lines(&["a:1", "poison:1", "a:2"]).await;
    let (_stop, stop_rx) = watch::channel(true);
    delivery_loop.run(stop_rx).await.expect("the loop survives the panic");
    let delivered: Vec<u64> = panicking.inner.records().iter().map(|record| record.sequence).collect();
    assert_eq!(delivered, [0, 2]);
    assert_eq!(
        error_records(&harness.sink),
        [(
            "test-failed".to_string(),
            INTERNAL_ERROR.to_string(),
            "internal error: delivering the batch panicked: a bug in a sink".to_string(),
            "poison:1".to_string()
        )]
    );
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 3);
    harness.wal.close();
}

/// Partitions as [`PrefixPartitioner`] does, with a bug: panics on a record `boom…`.
struct PanickingPartitioner;

impl Partitioner for PanickingPartitioner {
    fn partition(&self, record: &[u8], _: MetadataRef<'_>) -> Result<Arc<PartitionKeys>, PartitionFailure> {
        assert!(!record.starts_with(b"boom"), "a bug in a partitioner");
        PrefixPartitioner.partition(record, MetadataRef::None)
    }
}

#[tokio::test]
async fn a_partitioner_that_panics_fails_only_its_record() {
    let harness = Harness::new();
    harness.append_lines(&["a:1", "boom:1", "a:2"]).await;
    let router = Router::new(Some(Arc::new(PanickingPartitioner)), None, RecordDelimiter::None);
    let (_stop, stop_rx) = watch::channel(true);
    harness
        .delivery_loop_with(1 << 20, Duration::from_secs(900), Duration::from_secs(60), router)
        .run(stop_rx)
        .await
        .unwrap();
    assert_eq!(harness.delivered(), vec![(0, "a:1".into()), (2, "a:2".into())]);
    assert_eq!(
        error_records(&harness.sink),
        [(
            "metadata-extraction-failed".to_string(),
            INTERNAL_ERROR.to_string(),
            "internal error: computing the partition keys panicked: a bug in a partitioner".to_string(),
            "boom:1".to_string()
        )]
    );
    harness.wal.close();
}

/// Before a crash, the batch of `a:1` and `a:2` left (its intent done over [0, 3)), while the
/// record between them, refused by the encoder, waited in an open error-output batch: after
/// the restart the refused record must still reach the error output, though its sink batch's
/// range is claimed (it was skipped and lost before).
#[tokio::test]
async fn a_refused_record_inside_a_batch_that_left_before_a_crash_still_reaches_the_error_output() {
    let harness = Harness::new();
    harness.append_lines(&["a:1", "reject:1", "a:2"]).await;
    let mut done = Intent::new(&Uuid::from_u128(7), "s", &Route::sink(Arc::default()), 0, 3);
    done.state = IntentState::Done;
    IntentLog::open(&harness.stream_dir).unwrap().record(&done).unwrap();
    let (_stop, stop_rx) = watch::channel(true);
    let mut delivery_loop = harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60));
    delivery_loop.encoders = Arc::new(RejectingEncoderFactory { deferred: false });
    delivery_loop.run(stop_rx).await.unwrap();
    assert!(harness.delivered().is_empty(), "the batch that left is not sent again");
    let errors = error_records(&harness.sink);
    let found: Vec<(&str, &str, &str)> =
        errors.iter().map(|(kind, code, _, record)| (kind.as_str(), code.as_str(), record.as_str())).collect();
    assert_eq!(found, [("format-conversion-failed", "Test.Rejected", "reject:1")]);
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 3);
    harness.wal.close();
}

/// The same record's error-output batch was recorded (pending) before the crash: it is rebuilt
/// under its id with the refused record in it, not as an empty batch.
#[tokio::test]
async fn a_recorded_error_output_batch_of_refused_records_is_rebuilt_with_them() {
    let harness = Harness::new();
    harness.append_lines(&["a:1", "reject:1", "a:2"]).await;
    let log = IntentLog::open(&harness.stream_dir).unwrap();
    let mut done = Intent::new(&Uuid::from_u128(7), "s", &Route::sink(Arc::default()), 0, 3);
    done.state = IntentState::Done;
    log.record(&done).unwrap();
    let pending = Intent::new(&Uuid::from_u128(7), "s", &Route::error_output("format-conversion-failed"), 1, 2);
    log.record(&pending).unwrap();
    let (_stop, stop_rx) = watch::channel(true);
    let mut delivery_loop = harness.delivery_loop(1 << 20, Duration::from_secs(900), Duration::from_secs(60));
    delivery_loop.encoders = Arc::new(RejectingEncoderFactory { deferred: false });
    delivery_loop.run(stop_rx).await.unwrap();
    let written = harness.sink.error_lines();
    assert_eq!(written.len(), 1, "one error record, not a second copy: {written:?}");
    let errors = error_records(&harness.sink);
    assert_eq!((errors[0].1.as_str(), errors[0].3.as_str()), ("Test.Rejected", "reject:1"));
    assert_eq!(Checkpoint::new(&harness.stream_dir).load().unwrap(), 3);
    harness.wal.close();
}
