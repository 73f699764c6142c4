//! Sources: where records come from. Pushed sources (the Firehose Direct PUT API and NDJSON over
//! HTTP) append to the stream's WAL through [`Ingest`] and acknowledge only after the append.
//! Pulled sources (`file`, `kafka`, and `kinesis` / `dynamodb_streams`, thin adapters over the
//! shard-reader core in [`shards`]) append with their position in each frame.
//!
//! Must not: buffer or deliver; that is the pipeline's job.

// Each pulled source is built with its cargo feature (Cargo.toml `[features]`); Direct PUT and
// NDJSON always are.
#[cfg(any(feature = "source-kinesis", feature = "source-dynamodb-streams"))]
mod aws;
pub mod descriptor;
pub mod direct_put;
#[cfg(feature = "source-dynamodb-streams")]
pub mod dynamodb_streams;
#[cfg(feature = "source-file")]
pub mod file;
pub mod http;
#[cfg(feature = "source-kafka")]
pub mod kafka;
#[cfg(feature = "source-kinesis")]
pub mod kinesis;
// Always built: cluster mode's shard sharing runs on it whatever sources a build has.
pub mod shards;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, StreamConfig};
use crate::metrics::{Metrics, StreamMetrics};
use crate::readiness::Readiness;
use crate::stream_record::{StreamRecord, StreamStatus};
use crate::wal::{Records, Wal};
pub use descriptor::{ReaderContext, SourceDescribeContext, SourceDescriptor};

/// Declares [`SourceConfig`] (a YAML `source:` block, tagged by `type`; Direct PUT when absent)
/// with one variant per line and [`SourceConfig::descriptor`], so no other code matches on source
/// types. Push sources (the Firehose API and NDJSON) are served by the HTTP router and append
/// through [`Ingest`]; pull sources run reader tasks that append with their positions
/// ([`crate::wal::Wal::append_pulled`]) and resume from [`crate::wal::Wal::positions`]. A line may
/// name the cargo feature that builds it: without that feature its type still parses, into a
/// `not_built` value that refuses it by name and feature rather than serde's bare "unknown variant".
macro_rules! source_registry {
    ($($(#[cfg(feature = $feature:literal)])? $variant:ident($config:ty) = $type_name:literal,)+) => {
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type")]
        // A left-out type's variant is empty and never built: no size to even out by boxing.
        #[allow(clippy::large_enum_variant)]
        pub enum SourceConfig {
            $(
                $(#[cfg(feature = $feature)])? #[serde(rename = $type_name)] $variant($config),
                $(#[cfg(not(feature = $feature))] #[serde(rename = $type_name)] $variant(not_built::$variant),)?
            )+
        }

        impl SourceConfig {
            /// What this source type says about itself.
            pub fn descriptor(&self) -> &dyn SourceDescriptor {
                match self {
                    $(
                        $(#[cfg(feature = $feature)])? SourceConfig::$variant(config) => config,
                        $(#[cfg(not(feature = $feature))] SourceConfig::$variant(never) => match never.0 {},)?
                    )+
                }
            }
        }

        /// The source types this binary was built without: each parses only to refuse itself.
        mod not_built {
            $($(
                #[cfg(not(feature = $feature))]
                #[derive(Debug, Clone)]
                pub struct $variant(pub std::convert::Infallible);

                #[cfg(not(feature = $feature))]
                impl<'de> serde::Deserialize<'de> for $variant {
                    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                        Err(serde::de::Error::custom(concat!(
                            "source type `", $type_name, "` is not built into this binary (cargo feature `", $feature, "`)"
                        )))
                    }
                }
            )?)+
        }
    };
}

source_registry! {
    // Records pushed with the Firehose API (`PutRecord`, `PutRecordBatch`) or as NDJSON.
    DirectPut(direct_put::source::DirectPutSourceConfig) = "direct_put",
    // Lines of tailed log files.
    #[cfg(feature = "source-file")]
    File(file::FileSourceConfig) = "file",
    // The shards of a Kinesis data stream.
    #[cfg(feature = "source-kinesis")]
    Kinesis(kinesis::KinesisSourceConfig) = "kinesis",
    // The shards of a DynamoDB table's stream.
    #[cfg(feature = "source-dynamodb-streams")]
    DynamodbStreams(dynamodb_streams::DynamodbStreamsSourceConfig) = "dynamodb_streams",
    // The partitions of Kafka / Amazon MSK topics.
    #[cfg(feature = "source-kafka")]
    Kafka(kafka::KafkaSourceConfig) = "kafka",
    // Another stream of the same process, as a second reader of its WAL.
    Stream(stream::StreamSourceConfig) = "stream",
}

impl Default for SourceConfig {
    /// A stream without a `source:` block takes Direct PUT records.
    fn default() -> Self {
        SourceConfig::DirectPut(Default::default())
    }
}

/// Firehose's limit on one record's data: 1,000 KiB.
pub const MAX_RECORD_BYTES: usize = 1_024_000;
/// Firehose's limits on one `PutRecordBatch`.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Largest request body read: a full 4 MiB batch in base64 plus JSON framing.
pub const MAX_REQUEST_BODY_BYTES: usize = 6 * 1024 * 1024;

/// A pushed stream's entry point. Cheap to clone: a change (tags, status, a new destination)
/// builds a changed copy and swaps it into [`Ingest`]'s table.
#[derive(Clone)]
pub struct StreamIngest {
    pub config: StreamConfig,
    /// What the control plane reports and persists: status, version, timestamps, tags.
    pub record: Arc<StreamRecord>,
    pub wal: Wal,
    pub metrics: Arc<StreamMetrics>,
    /// Set when the stream's delivery stopped (e.g. a corrupt WAL segment): intake stops too,
    /// so nothing more piles up behind a stream that cannot deliver.
    pub stopped: Arc<std::sync::OnceLock<String>>,
    /// With `wal.replication`: a put is acknowledged only once this says its records are stored
    /// and indexed.
    pub replica: Option<crate::cluster::replication::Replica>,
}

/// Shared by every push handler: the streams by name, and the memory budget for request bodies.
pub struct Ingest {
    /// The stream table. The control plane adds, replaces and removes entries at runtime, so
    /// handlers take a snapshot of one entry ([`Ingest::stream`]) and never hold the lock across
    /// an `.await`.
    streams: RwLock<BTreeMap<String, Arc<StreamIngest>>>,
    /// Answers the Firehose endpoint's control operations; `None` in router tests that need no
    /// control plane.
    pub control: Option<Arc<dyn direct_put::ControlPlane>>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Permits are KiB of request bodies held in memory; a request waits for its share.
    body_budget: Arc<Semaphore>,
    body_budget_kib: usize,
    /// Prefix of record ids, unique per instance.
    pub record_id_prefix: String,
    /// What `/ready` answers from: sink healthchecks and shutdown.
    pub readiness: Arc<Readiness>,
    /// Throttled puts per stream: one warning per interval, not one per request, so a producer
    /// hammering a full WAL cannot flood the log.
    throttled_puts: ThrottleLog,
    /// Requests that gave up waiting for the body budget (no stream is known before the body is
    /// read, so they share one key).
    body_budget_timeouts: ThrottleLog,
}

/// How often a throttling warning may repeat (per stream).
pub const THROTTLE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The request's `Content-Length`, when it has a valid one.
pub fn declared_body_len(headers: &axum::http::HeaderMap) -> Option<usize> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok())
}

/// Run `decode` on `body`: on the runtime thread up to `inline_max_bytes`, on the blocking pool
/// above. Decoding costs CPU in proportion to the size, and a multi-MiB body would otherwise stall
/// every other connection served by the same worker thread; a small one costs less than the trip
/// to the blocking pool and back (each decoder sets its bound by its own speed). The outer error
/// is only a panicked or cancelled decode task; the inner one is the decoder's own answer.
pub async fn decode_off_runtime<T, E>(
    body: Bytes,
    inline_max_bytes: usize,
    decode: impl FnOnce(Bytes) -> Result<T, E> + Send + 'static,
) -> Result<Result<T, E>, IngestError>
where
    T: Send + 'static,
    E: Send + 'static,
{
    if body.len() <= inline_max_bytes {
        return Ok(decode(body));
    }
    tokio::task::spawn_blocking(move || decode(body))
        .await
        .map_err(|error| IngestError::Internal(format!("decoding the request body failed: {error}")))
}

/// Counts throttled puts per key and says when a summary line is due: the first event logs at
/// once, later ones within `interval` of the last line are only counted and reported, summed, by
/// the next line. The clock is passed in so the limiter is testable without sleeping.
#[derive(Debug)]
pub struct ThrottleLog {
    interval: Duration,
    windows: Mutex<HashMap<String, ThrottleWindow>>,
}

#[derive(Debug, Default)]
struct ThrottleWindow {
    last_logged: Option<Instant>,
    puts: u64,
    records: u64,
}

/// What a due warning reports: puts and records throttled since the previous line, this one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSummary {
    pub puts: u64,
    pub records: u64,
}

impl ThrottleLog {
    pub fn new(interval: Duration) -> Self {
        Self { interval, windows: Mutex::new(HashMap::new()) }
    }

    /// Count one throttled put of `records` under `key`; `Some` when a line should be logged now.
    pub fn note(&self, key: &str, records: u64, now: Instant) -> Option<ThrottleSummary> {
        // A poisoned lock only means another thread panicked mid-count; the counts stay usable.
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !windows.contains_key(key) {
            windows.insert(key.to_string(), ThrottleWindow::default());
        }
        let window = windows.get_mut(key)?;
        window.puts += 1;
        window.records += records;
        let due = window.last_logged.is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            return None;
        }
        let summary = ThrottleSummary { puts: window.puts, records: window.records };
        *window = ThrottleWindow { last_logged: Some(now), puts: 0, records: 0 };
        Some(summary)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("unknown stream")]
    UnknownStream,
    #[error("slow down")]
    Throttled,
    /// The stream reads its records from a source of its own (e.g. a tailed file).
    #[error("stream {stream} reads from its {source_type} source and does not accept puts")]
    NotPushable { stream: String, source_type: &'static str },
    #[error("stream is {0:?}")]
    NotActive(StreamStatus),
    /// The WAL's disk has no room: nothing was appended, a retry later can succeed.
    #[error("Slow down. The write-ahead log's disk is full.")]
    DiskFull,
    /// Cluster mode with `wal.replication`: the records' segment is not stored and indexed in
    /// time (object store or coordinator slow or unreachable). They may still be delivered; the
    /// client retries (as after any `ServiceUnavailableException`).
    #[error("{0}")]
    NotReplicated(String),
    #[error("{0}")]
    Internal(String),
}

/// An append refused for want of disk space (ENOSPC, a quota), not for a broken disk.
fn is_storage_full(error: &crate::wal::WalError) -> bool {
    let crate::wal::WalError::Io { source, .. } = error else {
        return false;
    };
    matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        || matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl Ingest {
    pub fn new(
        config: Config,
        streams: BTreeMap<String, StreamIngest>,
        metrics: Arc<Metrics>,
        record_id_prefix: String,
        readiness: Arc<Readiness>,
    ) -> Self {
        let body_budget_kib = (config.limits.max_inflight_request_mib as usize) * 1024;
        let streams = streams.into_iter().map(|(name, stream)| (name, Arc::new(stream))).collect();
        Self {
            streams: RwLock::new(streams),
            control: None,
            readiness,
            config,
            metrics,
            body_budget: Arc::new(Semaphore::new(body_budget_kib)),
            body_budget_kib,
            record_id_prefix,
            throttled_puts: ThrottleLog::new(THROTTLE_LOG_INTERVAL),
            body_budget_timeouts: ThrottleLog::new(THROTTLE_LOG_INTERVAL),
        }
    }

    /// Attach the control plane that answers the endpoint's control operations.
    pub fn with_control(mut self, control: Arc<dyn direct_put::ControlPlane>) -> Self {
        self.control = Some(control);
        self
    }

    /// A snapshot of one stream's entry.
    pub fn stream(&self, name: &str) -> Option<Arc<StreamIngest>> {
        self.streams.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    /// Stream names in alphabetical order (Firehose lists them so).
    pub fn stream_names(&self) -> Vec<String> {
        self.streams.read().unwrap_or_else(std::sync::PoisonError::into_inner).keys().cloned().collect()
    }

    /// Add or replace a stream's entry.
    pub fn put_stream(&self, name: &str, stream: StreamIngest) {
        let mut streams = self.streams.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        streams.insert(name.to_string(), Arc::new(stream));
    }

    /// Replace a stream's record (status, tags, version) and keep everything else.
    pub fn update_record(&self, name: &str, record: StreamRecord) -> Option<Arc<StreamIngest>> {
        let mut streams = self.streams.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = streams.get(name)?;
        let changed = Arc::new(StreamIngest { record: Arc::new(record), ..StreamIngest::clone(current) });
        streams.insert(name.to_string(), changed.clone());
        Some(changed)
    }

    pub fn remove_stream(&self, name: &str) -> Option<Arc<StreamIngest>> {
        self.streams.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name)
    }

    /// Reserve memory for a request body of (at most) `bytes`. Waits while the budget is spent,
    /// but at most `limits.body_wait_ms`: then the request is refused with
    /// [`IngestError::Throttled`] (the client backs off), so no request waits forever.
    pub async fn reserve_body(&self, bytes: usize) -> Result<OwnedSemaphorePermit, IngestError> {
        let kib = (bytes / 1024 + 1).min(self.body_budget_kib) as u32;
        let wait = Duration::from_millis(self.config.limits.body_wait_ms);
        match tokio::time::timeout(wait, self.body_budget.clone().acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(IngestError::Internal("the request body budget is closed".into())),
            Err(_elapsed) => {
                if let Some(summary) = self.body_budget_timeouts.note("", 0, Instant::now()) {
                    tracing::warn!(
                        requests = summary.puts,
                        wait_ms = wait.as_millis() as u64,
                        budget_mib = self.config.limits.max_inflight_request_mib,
                        "request body budget spent; answering slow down"
                    );
                }
                Err(IngestError::Throttled)
            }
        }
    }

    /// KiB of the request body budget not reserved right now.
    pub fn body_budget_available_kib(&self) -> usize {
        self.body_budget.available_permits()
    }

    /// Append one request's records to the stream's WAL, all or nothing.
    pub async fn append(&self, stream: &str, records: impl Into<Records>) -> Result<Range<u64>, IngestError> {
        let records = records.into();
        let target = self.stream(stream).ok_or(IngestError::UnknownStream)?;
        if !target.config.source.descriptor().accepts_puts() {
            return Err(IngestError::NotPushable {
                stream: stream.to_string(),
                source_type: target.config.source.descriptor().type_name(),
            });
        }
        if target.record.status != StreamStatus::Active {
            // A stream being deleted takes nothing more: what it holds is being delivered.
            return Err(IngestError::NotActive(target.record.status));
        }
        if let Some(reason) = target.stopped.get() {
            return Err(IngestError::Internal(format!("stream {stream} stopped delivering: {reason}")));
        }
        let count = records.len() as u64;
        let bytes = records.byte_len() as u64;
        let arrival_ms = chrono::Utc::now().timestamp_millis();
        let started = Instant::now();
        let appended = match target.wal.append(arrival_ms, records).await {
            Ok(range) => match &target.replica {
                Some(replica) => match replica.acknowledged(range.end).await {
                    Ok(()) => Ok(range),
                    Err(error) => {
                        target.metrics.throttled_records.inc_by(count);
                        if let Some(summary) = self.throttled_puts.note(stream, count, Instant::now()) {
                            tracing::warn!(stream, refused_puts = summary.puts, %error, "puts not replicated in time; answering ServiceUnavailableException");
                        }
                        return Err(IngestError::NotReplicated(error.to_string()));
                    }
                },
                None => Ok(range),
            },
            Err(error) => Err(error),
        };
        match appended {
            Ok(range) => {
                self.readiness.set_wal_disk_full(None);
                let metrics: &StreamMetrics = &target.metrics;
                metrics.put_latency.observe(started.elapsed().as_secs_f64());
                metrics.incoming_records.inc_by(count);
                metrics.incoming_bytes.inc_by(bytes);
                metrics.incoming_put_requests.inc();
                Ok(range)
            }
            Err(error) if error.is_retriable() => {
                target.metrics.throttled_records.inc_by(count);
                if let Some(summary) = self.throttled_puts.note(stream, count, Instant::now()) {
                    tracing::warn!(
                        stream,
                        throttled_puts = summary.puts,
                        throttled_records = summary.records,
                        since_seconds = THROTTLE_LOG_INTERVAL.as_secs(),
                        %error,
                        "throttling puts"
                    );
                }
                Err(IngestError::Throttled)
            }
            Err(error) if is_storage_full(&error) => {
                // Nothing was appended (the write is rolled back): the client may retry later.
                target.metrics.throttled_records.inc_by(count);
                self.readiness.set_wal_disk_full(Some(error.to_string()));
                Err(IngestError::DiskFull)
            }
            Err(error) => {
                tracing::error!(stream, %error, "wal append failed");
                Err(IngestError::Internal(error.to_string()))
            }
        }
    }

    /// Streams whose delivery stopped, with the reason.
    pub fn stopped_streams(&self) -> Vec<(String, String)> {
        self.streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(|(name, stream)| stream.stopped.get().map(|reason| (name.clone(), reason.clone())))
            .collect()
    }

    /// The record ids of one stream as it is now: a prefix unique to this installation, the
    /// stream's name and its creation time (sequences start again at 0 in another stream and
    /// after a delete and re-create, so the sequence alone would repeat ids).
    pub fn record_ids(&self, stream: &StreamRecord) -> RecordIds {
        let incarnation = format!("{}/{}/{}", self.record_id_prefix, stream.name, stream.create_timestamp_ms);
        RecordIds {
            prefix: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, incarnation.as_bytes()).simple().to_string(),
        }
    }
}

/// Firehose-style record ids of one stream: opaque, unique, 56 characters.
pub struct RecordIds {
    prefix: String,
}

impl RecordIds {
    pub fn id(&self, sequence: u64) -> String {
        let mut id = String::with_capacity(self.prefix.len() + 24);
        self.write(&mut id, sequence);
        id
    }

    /// Append a record id to `out` (a `PutRecordBatch` response writes 500 without allocating each).
    pub fn write(&self, out: &mut String, sequence: u64) {
        write_record_id_to(out, &self.prefix, sequence);
    }
}

/// A record id: the prefix, then the sequence as 24 zero-padded digits, written by hand:
/// `format!`'s padding went through `write_char` per digit, about 1 % of the server's CPU with
/// one small record per line.
fn write_record_id_to(out: &mut String, prefix: &str, sequence: u64) {
    out.push_str(prefix);
    let mut digits = [b'0'; 24];
    let mut rest = sequence;
    for digit in digits.iter_mut().rev() {
        if rest == 0 {
            break;
        }
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    // ASCII digits only, so this never fails.
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_are_the_prefix_and_24_zero_padded_digits() {
        for sequence in [0, 7, 1_234_567_890, u64::MAX] {
            let mut id = String::from("{\"RecordId\":\"");
            write_record_id_to(&mut id, "p-", sequence);
            assert_eq!(id, format!("{{\"RecordId\":\"p-{sequence:024}"));
        }
    }

    #[test]
    fn throttle_log_warns_once_per_interval_with_the_count() {
        let log = ThrottleLog::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(log.note("a", 5, at(0)), Some(ThrottleSummary { puts: 1, records: 5 }), "the first one logs");
        for second in 1..10 {
            assert_eq!(log.note("a", 2, at(second)), None, "suppressed within the interval");
        }
        assert_eq!(log.note("b", 1, at(3)), Some(ThrottleSummary { puts: 1, records: 1 }), "streams are apart");
        // Ten seconds after the last line: the nine suppressed puts and this one.
        assert_eq!(log.note("a", 2, at(10)), Some(ThrottleSummary { puts: 10, records: 20 }));
        assert_eq!(log.note("a", 1, at(11)), None);
        assert_eq!(log.note("a", 1, at(25)), Some(ThrottleSummary { puts: 2, records: 2 }));
    }
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    /// Every registered type parses by its name; one whose feature this build left out is refused
    /// by name and feature (the subset build in scripts/test.sh runs the refusals).
    #[test]
    fn every_type_parses_by_its_name_or_names_the_feature_it_needs() {
        let blocks = [
            ("direct_put", "type: direct_put\n", true, ""),
            ("file", "type: file\npaths: /var/log/app.log\n", cfg!(feature = "source-file"), "source-file"),
            ("kinesis", "type: kinesis\nstream_name: s\n", cfg!(feature = "source-kinesis"), "source-kinesis"),
            (
                "dynamodb_streams",
                "type: dynamodb_streams\ntable_name: t\n",
                cfg!(feature = "source-dynamodb-streams"),
                "source-dynamodb-streams",
            ),
            (
                "kafka",
                "type: kafka\nbootstrap_servers: b:9092\ntopics: [t]\n",
                cfg!(feature = "source-kafka"),
                "source-kafka",
            ),
        ];
        for (name, yaml, built, feature) in blocks {
            let parsed = serde_yaml_ng::from_str::<SourceConfig>(yaml);
            if built {
                let config = parsed.unwrap_or_else(|error| panic!("{name}: {error}"));
                assert_eq!(config.descriptor().type_name(), name);
            } else {
                let error = parsed.expect_err(name).to_string();
                let expected =
                    format!("source type `{name}` is not built into this binary (cargo feature `{feature}`)");
                assert!(error.contains(&expected), "{error}");
            }
        }
        // The control plane reads `KinesisStreamAsSource` through JSON: the same answer there.
        let from_api = serde_json::json!({ "type": "kinesis", "stream_name": "s", "region": "eu-west-1" });
        let parsed = serde_json::from_value::<SourceConfig>(from_api);
        if cfg!(feature = "source-kinesis") {
            assert_eq!(parsed.expect("kinesis from the API").descriptor().type_name(), "kinesis");
        } else {
            let error = parsed.expect_err("kinesis left out").to_string();
            assert!(error.contains("source type `kinesis` is not built into this binary"), "{error}");
        }
        assert_eq!(SourceConfig::default().descriptor().type_name(), "direct_put");
        let unknown = serde_yaml_ng::from_str::<SourceConfig>("type: pulsar\n").expect_err("unknown type");
        assert!(unknown.to_string().contains("expected one of `direct_put`, `file`"), "{unknown}");
        let extra = serde_yaml_ng::from_str::<SourceConfig>("type: direct_put\nport: 1\n").expect_err("no options");
        assert!(extra.to_string().contains("unknown field `port`"), "{extra}");
    }
}
