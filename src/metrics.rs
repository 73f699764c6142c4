//! What an operator watches, exported on `/metrics` in the OpenMetrics text format: Firehose's
//! CloudWatch set under Prometheus names (incoming, throttled, delivered, data freshness,
//! partitions), plus the WAL, open batches, retries, the error output, latency and size
//! histograms, and the process's CPU time and peak RSS (read by the benchmark).
//!
//! Crate choice: `prometheus-client`, the Prometheus project's own Rust client. Its registry is an
//! explicit value owned by one [`Metrics`] (no process-global recorder as with the `metrics`
//! facade), so unit tests and tests that run several spillways in one process each read their own
//! exact values; label sets are typed. Instruments are cheap clones sharing their value, handed
//! to the code that updates them ([`StreamMetrics`]). Values that are read rather than counted
//! (WAL sizes, open-batch bytes, data freshness, CPU and RSS) are computed at scrape time by a
//! collector. The one process-wide instrument is the WAL fsync histogram, observed at the
//! writer's fsync call without plumbing a handle through the WAL's options.
//!
//! Must not: block or do I/O on the update paths (counters are atomics, histograms a short lock).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A memory budget read at scrape time: bytes held now and the limit (the pipeline's open-batch
/// budget, `limits.max_open_batches_mib`). A trait, so this module imports nothing it reports on.
pub trait BudgetGauge: Send + Sync {
    fn held(&self) -> usize;
    fn limit(&self) -> usize;
}

/// The HTTP front's connection counts, updated by the server and read at scrape time.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections refused since start (over the cap, answered or closed at once).
    pub refused: AtomicU64,
    pub open: AtomicU64,
}

/// Cluster mode's state, updated by the lease store and read at scrape time (exported only in
/// cluster mode).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Leases this node holds now.
    pub leases_held: AtomicI64,
    /// Expired leases of another owner (or an earlier run) this node took over.
    pub lease_takeovers: AtomicU64,
    /// Writes conditional on (owner, epoch) that touched no row, renewals included: this node
    /// had lost the lease.
    pub fenced_writes: AtomicU64,
    /// Leases this node gave up for another node after delivering their open batches (a
    /// balancing request, SIGTERM, a reload).
    pub lease_handoffs: AtomicU64,
    /// 1 when the last heartbeat reached the coordinator, else 0.
    pub coordinator_up: AtomicI64,
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

/// A stream and its destination type (`sink.type`), for delivery metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub stream: String,
    pub sink: String,
}

/// A pulled source's shard (a Kinesis shard id, …), for per-shard source metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub stream: String,
    pub shard: String,
}

/// Seconds a put waits for its records to be durable in the WAL: 0.5 ms … 4 s.
fn put_latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// Seconds one batch takes from being handed to the sink to being delivered or routed to the
/// error output, retries included: 5 ms … 2.7 min.
fn delivery_latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Encoded bytes of one delivered batch: 1 KiB … 256 MiB.
fn batch_size_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1024.0, 4.0, 10))
}

/// Seconds of one WAL fsync: 0.1 ms … 3.3 s.
fn fsync_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every WAL's fsyncs in this process (group commit: one fsync acknowledges many puts).
static WAL_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(fsync_buckets);

/// The replicated WAL (cluster mode, `wal.replication`), all streams of this node: segment
/// objects stored and indexed, their bytes, how long each took (upload + index), and the bytes
/// appended locally that wait for their segment (puts not yet acknowledged).
pub static WAL_REPLICATION_SEGMENTS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static WAL_REPLICATION_BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static WAL_REPLICATION_SECONDS: LazyLock<Histogram> = LazyLock::new(fsync_buckets);
pub static WAL_REPLICATION_PENDING_BYTES: LazyLock<Gauge> = LazyLock::new(Gauge::default);

/// Record one WAL fsync's duration; called by the WAL writer around `sync_data`.
pub fn observe_wal_fsync(elapsed: Duration) {
    WAL_FSYNC_SECONDS.observe(elapsed.as_secs_f64());
}

/// One stream's instruments. Clones share their values with the registry they came from; a
/// `StreamMetrics::default()` is detached (for tests that read the values directly).
#[derive(Clone)]
pub struct StreamMetrics {
    pub incoming_records: Counter,
    pub incoming_bytes: Counter,
    pub incoming_put_requests: Counter,
    pub throttled_records: Counter,
    pub put_latency: Histogram,
    pub delivered_records: Counter,
    pub delivered_bytes: Counter,
    pub delivered_batches: Counter,
    pub delivery_retries: Counter,
    pub error_output_records: Counter,
    /// Writes to the error output / S3 backup that succeeded and that failed (and were retried):
    /// Firehose's `DeliveryToS3.Success` for a backup is the first over both.
    pub backup_writes_succeeded: Counter,
    pub backup_writes_failed: Counter,
    pub batch_size: Histogram,
    pub delivery_latency: Histogram,
    /// Batches closed early because a new partition would pass `max_active_partitions`.
    pub partition_count_exceeded: Counter,
    /// Partitions with an open batch right now.
    pub open_partitions: Gauge,
    /// A windowed sql transform's open windows, the rows its closed windows gave, and the
    /// records that came after their windows had closed.
    pub sql_open_windows: Gauge,
    pub sql_window_rows: Counter,
    pub sql_late_records: Counter,
    /// 1 when the sink's last healthcheck passed, else 0.
    pub sink_up: Gauge,
    /// Lambda transform invocations (Firehose's `ExecuteProcessing.*` and `SucceedProcessing.*`).
    pub processing: ProcessingMetrics,
    /// Arrival time (Unix ms) of the oldest record not yet delivered, 0 when there is none; the
    /// freshness gauge is its age at scrape time.
    oldest_undelivered_arrival_ms: Arc<AtomicI64>,
    /// The last delivery error, for the status page (not a metric: its text varies).
    last_error: Arc<Mutex<Option<LastError>>>,
    /// Per-shard instruments of a pulled source (Kinesis, …).
    pub source: SourceMetrics,
    /// The current sink's own request counts, set when the sink is built.
    sink_requests: Arc<Mutex<Option<SinkRequestsProbe>>>,
}

/// A stream's Lambda invocations: outcomes, durations (first attempt to answer, retries
/// included) and what happened to the records.
#[derive(Clone)]
pub struct ProcessingMetrics {
    pub invocations_succeeded: Counter,
    pub invocations_failed: Counter,
    pub duration: Histogram,
    pub records_ok: Counter,
    pub records_dropped: Counter,
    pub records_failed: Counter,
}

impl Default for ProcessingMetrics {
    fn default() -> Self {
        Self {
            invocations_succeeded: Counter::default(),
            invocations_failed: Counter::default(),
            duration: processing_duration_buckets(),
            records_ok: Counter::default(),
            records_dropped: Counter::default(),
            records_failed: Counter::default(),
        }
    }
}

fn processing_duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// A stream, its sink type and a request outcome, for a sink's own request counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkOutcomeLabels {
    stream: String,
    sink: String,
    outcome: String,
}

/// Reads a sink's request counts at scrape time (see `Sink::request_counts`).
pub type SinkRequestsProbe = Arc<dyn Fn() -> Option<spillway_sink_api::RequestCounts> + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    stream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    stream: String,
    result: &'static str,
}

/// The registered processing families.
struct ProcessingFamilies {
    invocations: Family<OutcomeLabels, Counter>,
    duration: HistogramFamily<StreamLabels>,
    records: Family<ResultLabels, Counter>,
}

impl ProcessingFamilies {
    fn register(registry: &mut Registry) -> Self {
        let families = Self {
            invocations: Family::default(),
            duration: Family::new_with_constructor(processing_duration_buckets),
            records: Family::default(),
        };
        registry.register(
            "spillway_processing_invocations",
            "lambda invocations by outcome: success, or failure after the retries (ExecuteProcessing.Success)",
            families.invocations.clone(),
        );
        registry.register(
            "spillway_processing_duration_seconds",
            "time from a lambda invocation's first attempt to its outcome (ExecuteProcessing.Duration)",
            families.duration.clone(),
        );
        registry.register(
            "spillway_processing_records",
            "records a lambda answered, by result: ok, dropped, failed (SucceedProcessing.Records)",
            families.records.clone(),
        );
        families
    }

    fn instruments(&self, stream: &str) -> ProcessingMetrics {
        let outcome = |outcome| OutcomeLabels { stream: stream.to_string(), outcome };
        let result = |result| ResultLabels { stream: stream.to_string(), result };
        ProcessingMetrics {
            invocations_succeeded: self.invocations.get_or_create_owned(&outcome("success")),
            invocations_failed: self.invocations.get_or_create_owned(&outcome("failure")),
            duration: self.duration.get_or_create_owned(&StreamLabels { stream: stream.to_string() }),
            records_ok: self.records.get_or_create_owned(&result("ok")),
            records_dropped: self.records.get_or_create_owned(&result("dropped")),
            records_failed: self.records.get_or_create_owned(&result("failed")),
        }
    }

    fn remove(&self, stream: &str) {
        for outcome in ["success", "failure"] {
            self.invocations.remove(&OutcomeLabels { stream: stream.to_string(), outcome });
        }
        for result in ["ok", "dropped", "failed"] {
            self.records.remove(&ResultLabels { stream: stream.to_string(), result });
        }
        self.duration.remove(&StreamLabels { stream: stream.to_string() });
    }
}

/// A pulled source's per-shard instruments: take one shard's with [`SourceMetrics::shard`].
#[derive(Clone, Default)]
pub struct SourceMetrics {
    stream: String,
    families: SourceFamilies,
    /// Shards that have series, so that removing the stream removes them.
    shards: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

/// The instruments of one shard of a pulled source.
#[derive(Clone)]
pub struct ShardMetrics {
    /// Records appended to the WAL (user records, after KPL de-aggregation).
    pub records: Counter,
    pub bytes: Counter,
    /// Kinesis `MillisBehindLatest` of the last `GetRecords` (iterator age).
    pub millis_behind_latest: Gauge,
    /// Reads refused with `ProvisionedThroughputExceededException` (and other throttling).
    pub throttled_reads: Counter,
    /// KPL aggregates with a bad checksum or protobuf, passed through as one record each.
    pub malformed_aggregates: Counter,
}

impl SourceMetrics {
    pub fn shard(&self, shard: &str) -> ShardMetrics {
        self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(shard.to_string());
        let labels = ShardLabels { stream: self.stream.clone(), shard: shard.to_string() };
        let f = &self.families;
        ShardMetrics {
            records: f.records.get_or_create_owned(&labels),
            bytes: f.bytes.get_or_create_owned(&labels),
            millis_behind_latest: f.millis_behind_latest.get_or_create_owned(&labels),
            throttled_reads: f.throttled_reads.get_or_create_owned(&labels),
            malformed_aggregates: f.malformed_aggregates.get_or_create_owned(&labels),
        }
    }

    /// Shards being read right now.
    pub fn set_active_shards(&self, shards: i64) {
        self.families.active_shards.get_or_create(&StreamLabels { stream: self.stream.clone() }).set(shards);
    }

    fn remove(&self) {
        let shards = std::mem::take(&mut *self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let f = &self.families;
        for shard in shards {
            let labels = ShardLabels { stream: self.stream.clone(), shard };
            f.records.remove(&labels);
            f.bytes.remove(&labels);
            f.millis_behind_latest.remove(&labels);
            f.throttled_reads.remove(&labels);
            f.malformed_aggregates.remove(&labels);
        }
        f.active_shards.remove(&StreamLabels { stream: self.stream.clone() });
    }
}

/// The registered per-shard source families.
#[derive(Clone, Default)]
struct SourceFamilies {
    records: Family<ShardLabels, Counter>,
    bytes: Family<ShardLabels, Counter>,
    millis_behind_latest: Family<ShardLabels, Gauge>,
    throttled_reads: Family<ShardLabels, Counter>,
    malformed_aggregates: Family<ShardLabels, Counter>,
    active_shards: Family<StreamLabels, Gauge>,
}

impl SourceFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "spillway_source_records",
            "records a pulled source appended, per shard",
            self.records.clone(),
        );
        registry.register(
            "spillway_source_bytes",
            "record bytes a pulled source appended, per shard",
            self.bytes.clone(),
        );
        registry.register(
            "spillway_source_millis_behind_latest",
            "kinesis MillisBehindLatest of the shard's last read",
            self.millis_behind_latest.clone(),
        );
        registry.register(
            "spillway_source_throttled_reads",
            "shard reads refused for throughput (ProvisionedThroughputExceededException)",
            self.throttled_reads.clone(),
        );
        registry.register(
            "spillway_source_malformed_aggregates",
            "KPL aggregates with a bad checksum or protobuf, passed through whole",
            self.malformed_aggregates.clone(),
        );
        registry.register("spillway_source_active_shards", "shards being read", self.active_shards.clone());
    }
}

/// A delivery error as the status page shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LastError {
    pub at_ms: i64,
    pub message: String,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        Self {
            incoming_records: Counter::default(),
            incoming_bytes: Counter::default(),
            incoming_put_requests: Counter::default(),
            throttled_records: Counter::default(),
            put_latency: put_latency_buckets(),
            delivered_records: Counter::default(),
            delivered_bytes: Counter::default(),
            delivered_batches: Counter::default(),
            delivery_retries: Counter::default(),
            error_output_records: Counter::default(),
            backup_writes_succeeded: Counter::default(),
            backup_writes_failed: Counter::default(),
            batch_size: batch_size_buckets(),
            delivery_latency: delivery_latency_buckets(),
            partition_count_exceeded: Counter::default(),
            open_partitions: Gauge::default(),
            sql_open_windows: Gauge::default(),
            sql_window_rows: Counter::default(),
            sql_late_records: Counter::default(),
            sink_up: Gauge::default(),
            processing: ProcessingMetrics::default(),
            oldest_undelivered_arrival_ms: Arc::default(),
            last_error: Arc::default(),
            source: SourceMetrics::default(),
            sink_requests: Arc::default(),
        }
    }
}

impl StreamMetrics {
    /// The delivery loop calls this when its watermark may have moved: the arrival time of the
    /// oldest record it holds (open, queued or in flight), or `None` when it holds none.
    pub fn set_oldest_undelivered(&self, arrival_ms: Option<i64>) {
        self.oldest_undelivered_arrival_ms.store(arrival_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// Export the sink's own request counts (`spillway_sink_requests_total`, …); a rebuilt sink
    /// (a destination update) replaces the previous one's.
    pub fn set_sink_requests(&self, probe: SinkRequestsProbe) {
        *self.sink_requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(probe);
    }

    /// The sink's request counts now, if it keeps any.
    pub fn sink_requests(&self) -> Option<spillway_sink_api::RequestCounts> {
        let probe = self.sink_requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        probe.and_then(|probe| probe())
    }

    /// Remember a delivery error (a failed write, records routed to the error output).
    pub fn note_error(&self, message: String) {
        let at_ms = chrono::Utc::now().timestamp_millis();
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(LastError { at_ms, message });
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Age in seconds of the oldest undelivered record at `now_ms`; 0 when nothing waits.
    pub fn data_freshness_seconds(&self, now_ms: i64) -> f64 {
        match self.oldest_undelivered_arrival_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            oldest => (now_ms.saturating_sub(oldest)).max(0) as f64 / 1000.0,
        }
    }
}

/// A stream's WAL size, read when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalSize {
    /// Bytes of frames not yet delivered (what `limits.max_wal_mib` bounds).
    pub undelivered_bytes: u64,
    /// Size of the segment files, which may still hold delivered frames.
    pub disk_bytes: u64,
}

/// Reads a stream's current WAL size when metrics are rendered.
pub type WalSizeProbe = Box<dyn Fn() -> WalSize + Send + Sync>;

type CounterFamily = Family<StreamLabels, Counter>;
type SinkCounterFamily = Family<SinkLabels, Counter>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The registered families; each stream takes its own instruments out of them.
struct Families {
    incoming_records: CounterFamily,
    incoming_bytes: CounterFamily,
    incoming_put_requests: CounterFamily,
    throttled_records: CounterFamily,
    put_latency: HistogramFamily<StreamLabels>,
    delivered_records: SinkCounterFamily,
    delivered_bytes: SinkCounterFamily,
    delivered_batches: SinkCounterFamily,
    delivery_retries: SinkCounterFamily,
    error_output_records: SinkCounterFamily,
    backup_writes: Family<OutcomeLabels, Counter>,
    batch_size: HistogramFamily<SinkLabels>,
    delivery_latency: HistogramFamily<SinkLabels>,
    partition_count_exceeded: CounterFamily,
    open_partitions: Family<StreamLabels, Gauge>,
    sql_open_windows: Family<StreamLabels, Gauge>,
    sql_window_rows: CounterFamily,
    sql_late_records: CounterFamily,
    sink_up: Family<SinkLabels, Gauge>,
    source: SourceFamilies,
    processing: ProcessingFamilies,
}

impl Families {
    fn register(registry: &mut Registry) -> Self {
        let families = Families {
            incoming_records: Family::default(),
            incoming_bytes: Family::default(),
            incoming_put_requests: Family::default(),
            throttled_records: Family::default(),
            put_latency: Family::new_with_constructor(put_latency_buckets),
            delivered_records: Family::default(),
            delivered_bytes: Family::default(),
            delivered_batches: Family::default(),
            delivery_retries: Family::default(),
            error_output_records: Family::default(),
            backup_writes: Family::default(),
            batch_size: Family::new_with_constructor(batch_size_buckets),
            delivery_latency: Family::new_with_constructor(delivery_latency_buckets),
            partition_count_exceeded: Family::default(),
            open_partitions: Family::default(),
            sql_open_windows: Family::default(),
            sql_window_rows: Family::default(),
            sql_late_records: Family::default(),
            sink_up: Family::default(),
            source: SourceFamilies::default(),
            processing: ProcessingFamilies::register(registry),
        };
        // Counters get their `_total` suffix from the encoder.
        let f = &families;
        registry.register("spillway_incoming_records", "records accepted", f.incoming_records.clone());
        registry.register("spillway_incoming_bytes", "record bytes accepted", f.incoming_bytes.clone());
        registry.register("spillway_incoming_put_requests", "put requests accepted", f.incoming_put_requests.clone());
        registry.register(
            "spillway_throttled_records",
            "records refused with ServiceUnavailableException (wal full)",
            f.throttled_records.clone(),
        );
        registry.register(
            "spillway_put_latency_seconds",
            "time a put waits until it is acknowledged: durable in the wal (with wal.replication: stored and indexed)",
            f.put_latency.clone(),
        );
        registry.register("spillway_delivered_records", "records delivered to the sink", f.delivered_records.clone());
        registry.register(
            "spillway_delivered_bytes",
            "record bytes delivered to the sink (before compression)",
            f.delivered_bytes.clone(),
        );
        registry.register(
            "spillway_delivered_batches",
            "batches delivered to the sink (delivery success)",
            f.delivered_batches.clone(),
        );
        registry.register("spillway_delivery_retries", "retried sink writes", f.delivery_retries.clone());
        registry.register(
            "spillway_error_output_records",
            "records written to the error output",
            f.error_output_records.clone(),
        );
        registry.register(
            "spillway_backup_writes",
            "writes to the error output or S3 backup by outcome: success, failure (retried); DeliveryToS3.Success",
            f.backup_writes.clone(),
        );
        registry.register(
            "spillway_batch_size_bytes",
            "encoded bytes of each batch handed to the sink",
            f.batch_size.clone(),
        );
        registry.register(
            "spillway_delivery_latency_seconds",
            "time from handing a batch to the sink until it is delivered or routed to the error output",
            f.delivery_latency.clone(),
        );
        registry.register(
            "spillway_partition_count_exceeded",
            "batches closed early because a new partition passed max_active_partitions",
            f.partition_count_exceeded.clone(),
        );
        registry.register("spillway_open_partitions", "partitions with an open batch", f.open_partitions.clone());
        registry.register(
            "spillway_sql_open_windows",
            "windows of a windowed sql transform not yet closed",
            f.sql_open_windows.clone(),
        );
        registry.register(
            "spillway_sql_window_rows",
            "rows given by the closed windows of a windowed sql transform",
            f.sql_window_rows.clone(),
        );
        registry.register(
            "spillway_sql_late_records",
            "records read after every window they belong to had closed (error output, or dropped)",
            f.sql_late_records.clone(),
        );
        registry.register(
            "spillway_sink_up",
            "1 when the sink's last background healthcheck passed, else 0",
            f.sink_up.clone(),
        );
        registry.register(
            "spillway_wal_fsync_seconds",
            "duration of wal fsyncs (group commit), all streams",
            WAL_FSYNC_SECONDS.clone(),
        );
        registry.register(
            "spillway_wal_replication_segments",
            "replicated wal segment objects stored and indexed (cluster mode, wal.replication)",
            WAL_REPLICATION_SEGMENTS.clone(),
        );
        registry.register(
            "spillway_wal_replication_bytes",
            "bytes of replicated wal segment objects stored and indexed",
            WAL_REPLICATION_BYTES.clone(),
        );
        registry.register(
            "spillway_wal_replication_seconds",
            "time to store and index one replicated wal segment (object put + index row)",
            WAL_REPLICATION_SECONDS.clone(),
        );
        registry.register(
            "spillway_wal_replication_pending_bytes",
            "bytes appended to the local wal whose segment is not yet stored and indexed (puts waiting)",
            WAL_REPLICATION_PENDING_BYTES.clone(),
        );
        families.source.register(registry);
        families
    }
}

/// Every stream's instruments and the values read at scrape time.
pub struct Metrics {
    registry: Registry,
    families: Families,
    scraped: Arc<Scraped>,
    reloads: ConfigReloads,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let families = Families::register(&mut registry);
        let scraped = Arc::new(Scraped::default());
        registry.register_collector(Box::new(scraped.clone()));
        let reloads = ConfigReloads::register(&mut registry);
        Self { registry, families, scraped, reloads }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Configuration reloads (SIGHUP, `--watch-config`) by result, and when the last one was applied.
struct ConfigReloads {
    total: Family<ReloadLabels, Counter>,
    last_applied_seconds: Gauge,
}

impl ConfigReloads {
    fn register(registry: &mut Registry) -> Self {
        let reloads = Self { total: Family::default(), last_applied_seconds: Gauge::default() };
        // Both series exist from the start, so a rate or an alert on `rejected` sees a 0 first.
        for result in ["applied", "rejected"] {
            let _series = reloads.total.get_or_create_owned(&ReloadLabels { result });
        }
        registry.register(
            "spillway_config_reloads",
            "configuration reloads by result: applied, or rejected (the running configuration was kept)",
            reloads.total.clone(),
        );
        registry.register(
            "spillway_config_last_reload_success_timestamp_seconds",
            "unix time of the last applied configuration reload (0: none since start)",
            reloads.last_applied_seconds.clone(),
        );
        reloads
    }
}

impl Metrics {
    /// Register a stream delivering to a `sink` of that type; `wal_size` reads its WAL size.
    pub fn register(&self, stream: &str, sink: &str, wal_size: WalSizeProbe) -> Arc<StreamMetrics> {
        let by_stream = StreamLabels { stream: stream.to_string() };
        let by_sink = SinkLabels { stream: stream.to_string(), sink: sink.to_string() };
        let f = &self.families;
        let backup_outcome = |outcome| OutcomeLabels { stream: stream.to_string(), outcome };
        let metrics = Arc::new(StreamMetrics {
            incoming_records: f.incoming_records.get_or_create_owned(&by_stream),
            incoming_bytes: f.incoming_bytes.get_or_create_owned(&by_stream),
            incoming_put_requests: f.incoming_put_requests.get_or_create_owned(&by_stream),
            throttled_records: f.throttled_records.get_or_create_owned(&by_stream),
            put_latency: f.put_latency.get_or_create_owned(&by_stream),
            delivered_records: f.delivered_records.get_or_create_owned(&by_sink),
            delivered_bytes: f.delivered_bytes.get_or_create_owned(&by_sink),
            delivered_batches: f.delivered_batches.get_or_create_owned(&by_sink),
            delivery_retries: f.delivery_retries.get_or_create_owned(&by_sink),
            error_output_records: f.error_output_records.get_or_create_owned(&by_sink),
            backup_writes_succeeded: f.backup_writes.get_or_create_owned(&backup_outcome("success")),
            backup_writes_failed: f.backup_writes.get_or_create_owned(&backup_outcome("failure")),
            batch_size: f.batch_size.get_or_create_owned(&by_sink),
            delivery_latency: f.delivery_latency.get_or_create_owned(&by_sink),
            partition_count_exceeded: f.partition_count_exceeded.get_or_create_owned(&by_stream),
            open_partitions: f.open_partitions.get_or_create_owned(&by_stream),
            sql_open_windows: f.sql_open_windows.get_or_create_owned(&by_stream),
            sql_window_rows: f.sql_window_rows.get_or_create_owned(&by_stream),
            sql_late_records: f.sql_late_records.get_or_create_owned(&by_stream),
            sink_up: f.sink_up.get_or_create_owned(&by_sink),
            processing: f.processing.instruments(stream),
            oldest_undelivered_arrival_ms: Arc::default(),
            last_error: Arc::default(),
            source: SourceMetrics { stream: stream.to_string(), families: f.source.clone(), shards: Arc::default() },
            sink_requests: Arc::default(),
        });
        let stream_state = ScrapedStream { labels: by_sink, wal_size, metrics: metrics.clone() };
        self.scraped.streams().insert(stream.to_string(), stream_state);
        metrics
    }

    /// Forget a removed stream: its series leave `/metrics`.
    pub fn unregister(&self, stream: &str) {
        let Some(removed) = self.scraped.streams().remove(stream) else { return };
        removed.metrics.source.remove();
        let by_stream = StreamLabels { stream: stream.to_string() };
        let by_sink = removed.labels;
        let f = &self.families;
        f.incoming_records.remove(&by_stream);
        f.incoming_bytes.remove(&by_stream);
        f.incoming_put_requests.remove(&by_stream);
        f.throttled_records.remove(&by_stream);
        f.put_latency.remove(&by_stream);
        f.partition_count_exceeded.remove(&by_stream);
        f.open_partitions.remove(&by_stream);
        f.sql_open_windows.remove(&by_stream);
        f.sql_window_rows.remove(&by_stream);
        f.sql_late_records.remove(&by_stream);
        f.delivered_records.remove(&by_sink);
        f.delivered_bytes.remove(&by_sink);
        f.delivered_batches.remove(&by_sink);
        f.delivery_retries.remove(&by_sink);
        f.error_output_records.remove(&by_sink);
        for outcome in ["success", "failure"] {
            f.backup_writes.remove(&OutcomeLabels { stream: stream.to_string(), outcome });
        }
        f.batch_size.remove(&by_sink);
        f.delivery_latency.remove(&by_sink);
        f.sink_up.remove(&by_sink);
        f.processing.remove(stream);
    }

    /// Export the HTTP front's connection counts (open, refused over `server.max_connections`).
    pub fn register_connection_stats(&self, stats: Arc<ConnectionStats>) {
        *self.scraped.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);
    }

    /// Export cluster mode's lease and coordinator state (`spillway_cluster_*`).
    pub fn register_cluster(&self, stats: Arc<ClusterStats>) {
        *self.scraped.cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);
    }

    /// Export the open-batch memory budget's use (`limits.max_open_batches_mib`).
    pub fn register_open_batch_budget(&self, budget: Arc<dyn BudgetGauge>) {
        *self.scraped.budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(budget);
    }

    /// Count one configuration reload: `applied`, or rejected (the running configuration kept).
    pub fn note_config_reload(&self, applied: bool, now_seconds: i64) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.total.get_or_create(&ReloadLabels { result }).inc();
        if applied {
            self.reloads.last_applied_seconds.set(now_seconds);
        }
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a collector.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

/// Values computed when `/metrics` is scraped.
#[derive(Default)]
struct Scraped {
    streams: Mutex<BTreeMap<String, ScrapedStream>>,
    budget: Mutex<Option<Arc<dyn BudgetGauge>>>,
    connections: Mutex<Option<Arc<ConnectionStats>>>,
    cluster: Mutex<Option<Arc<ClusterStats>>>,
}

struct ScrapedStream {
    labels: SinkLabels,
    wal_size: WalSizeProbe,
    metrics: Arc<StreamMetrics>,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Scraped").finish_non_exhaustive()
    }
}

impl Scraped {
    fn streams(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ScrapedStream>> {
        // A poisoned lock only means a scrape panicked; the map itself is intact.
        self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Picks one total out of a sink's request counts.
type RequestCountOf = fn(&spillway_sink_api::RequestCounts) -> u64;

/// Picks one gauge out of a stream's WAL size.
type WalGaugeOf = fn(&WalSize) -> u64;

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        {
            let streams = self.streams();
            let sizes: Vec<(&ScrapedStream, WalSize)> =
                streams.values().map(|stream| (stream, (stream.wal_size)())).collect();
            let wal_gauges: [(&str, &str, WalGaugeOf); 2] = [
                ("spillway_wal_bytes", "undelivered bytes in the wal (bounded by limits.max_wal_mib)", |size| {
                    size.undelivered_bytes
                }),
                ("spillway_wal_disk_bytes", "size of the wal segment files, delivered parts included", |size| {
                    size.disk_bytes
                }),
            ];
            for (name, help, value) in wal_gauges {
                let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (stream, size) in &sizes {
                    let labels = StreamLabels { stream: stream.labels.stream.clone() };
                    ConstGauge::new(value(size) as i64).encode(metric.encode_family(&labels)?)?;
                }
            }
            let mut freshness = encoder.encode_descriptor(
                "spillway_data_freshness_seconds",
                "age of the oldest record not yet delivered (0 when none waits)",
                None,
                MetricType::Gauge,
            )?;
            for (stream, _) in &sizes {
                let age = ConstGauge::new(stream.metrics.data_freshness_seconds(now_ms));
                age.encode(freshness.encode_family(&stream.labels)?)?;
            }
            let counts: Vec<(&ScrapedStream, spillway_sink_api::RequestCounts)> =
                streams.values().filter_map(|stream| Some((stream, stream.metrics.sink_requests()?))).collect();
            if !counts.is_empty() {
                let mut requests = encoder.encode_descriptor(
                    "spillway_sink_requests",
                    "requests the sink sent, by outcome (200, 3xx, 413, 4xx, 5xx, timeout, connection, …)",
                    None,
                    MetricType::Counter,
                )?;
                for (stream, counts) in &counts {
                    for (outcome, value) in &counts.by_outcome {
                        let labels = SinkOutcomeLabels {
                            stream: stream.labels.stream.clone(),
                            sink: stream.labels.sink.clone(),
                            outcome: outcome.to_string(),
                        };
                        ConstCounter::new(*value).encode(requests.encode_family(&labels)?)?;
                    }
                }
                let totals: [(&str, &str, RequestCountOf); 2] = [
                    ("spillway_sink_request_records", "records the sink's requests carried, retries included", |c| {
                        c.records
                    }),
                    ("spillway_sink_request_bytes", "request body bytes the sink sent (after compression)", |c| {
                        c.bytes
                    }),
                ];
                for (name, help, value) in totals {
                    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                    for (stream, counts) in &counts {
                        ConstCounter::new(value(counts)).encode(metric.encode_family(&stream.labels)?)?;
                    }
                }
            }
        }
        let budget = self.budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(budget) = budget {
            let held = ConstGauge::new(budget.held() as i64);
            held.encode(encoder.encode_descriptor(
                "spillway_open_batch_bytes",
                "bytes held by open batches, all streams (bounded by limits.max_open_batches_mib)",
                None,
                held.metric_type(),
            )?)?;
            let limit = ConstGauge::new(budget.limit() as i64);
            limit.encode(encoder.encode_descriptor(
                "spillway_open_batch_limit_bytes",
                "limits.max_open_batches_mib in bytes",
                None,
                limit.metric_type(),
            )?)?;
        }
        let connections = self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(connections) = connections {
            let open = ConstGauge::new(connections.open.load(std::sync::atomic::Ordering::Relaxed) as i64);
            open.encode(encoder.encode_descriptor(
                "spillway_http_connections",
                "http connections open now, those over server.max_connections included",
                None,
                open.metric_type(),
            )?)?;
            let refused = ConstCounter::new(connections.refused.load(std::sync::atomic::Ordering::Relaxed));
            refused.encode(encoder.encode_descriptor(
                "spillway_http_connections_refused",
                "connections accepted over server.max_connections (answered 503 or closed at once)",
                None,
                refused.metric_type(),
            )?)?;
        }
        let cluster = self.cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(cluster) = cluster {
            let gauges = [
                ("spillway_cluster_leases_held", "leases this node holds", &cluster.leases_held),
                (
                    "spillway_cluster_coordinator_up",
                    "1 when the last heartbeat reached the cluster coordinator, else 0",
                    &cluster.coordinator_up,
                ),
            ];
            for (name, help, value) in gauges {
                let gauge = ConstGauge::new(value.load(Ordering::Relaxed));
                gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
            }
            let counters = [
                (
                    "spillway_cluster_lease_takeovers",
                    "expired leases of another owner this node took over",
                    &cluster.lease_takeovers,
                ),
                (
                    "spillway_cluster_lease_handoffs",
                    "leases handed over to another node after their open batches were delivered",
                    &cluster.lease_handoffs,
                ),
                (
                    "spillway_cluster_fenced_writes",
                    "writes conditional on a lease's owner and epoch that found the lease moved on (renewals included)",
                    &cluster.fenced_writes,
                ),
            ];
            for (name, help, value) in counters {
                let counter = ConstCounter::new(value.load(Ordering::Relaxed));
                counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
            }
        }
        if let Some(usage) = process_usage() {
            let cpu = ConstCounter::new(usage.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "user and system cpu time of this process",
                None,
                cpu.metric_type(),
            )?)?;
            let peak = ConstGauge::new(usage.peak_rss_bytes as i64);
            peak.encode(encoder.encode_descriptor(
                "process_peak_rss_bytes",
                "peak resident set size of this process",
                None,
                peak.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// This process's CPU time and peak RSS.
struct ProcessUsage {
    cpu_seconds: f64,
    peak_rss_bytes: u64,
}

/// From `getrusage(RUSAGE_SELF)`: no `/proc` parsing, no clock-tick rate to know.
fn process_usage() -> Option<ProcessUsage> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let seconds = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
    let cpu_seconds = seconds(usage.user_time()) + seconds(usage.system_time());
    // Linux reports ru_maxrss in KiB (macOS in bytes).
    let max_rss = u64::try_from(usage.max_rss()).unwrap_or(0);
    let peak_rss_bytes = if cfg!(target_os = "macos") { max_rss } else { max_rss * 1024 };
    Some(ProcessUsage { cpu_seconds, peak_rss_bytes })
}

/// The sum of the samples named `name` whose labels include the ones given, e.g.
/// `spillway_delivered_bytes_total{stream="logs"}` (any `sink`), or `process_cpu_seconds_total`;
/// `None` when no sample matches. Label order does not matter.
pub fn read_metric(text: &str, name: &str) -> Option<f64> {
    let (wanted_name, wanted_labels) = split_sample(name)?;
    let mut found = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Some((sample_name, labels)) = split_sample(series) else { continue };
        if sample_name != wanted_name || !wanted_labels.iter().all(|wanted| labels.contains(wanted)) {
            continue;
        }
        if let Ok(value) = value.trim().parse::<f64>() {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// `name{a="1",b="2"}` → (`name`, [`a="1"`, `b="2"`]). Label values holding `",` are not split
/// correctly; spillway's stream names cannot contain quotes.
fn split_sample(series: &str) -> Option<(&str, Vec<&str>)> {
    let series = series.trim();
    let Some(open) = series.find('{') else { return Some((series, Vec::new())) };
    let labels = series[open + 1..].strip_suffix('}')?;
    let labels = labels.split(',').map(str::trim).filter(|label| !label.is_empty()).collect();
    Some((&series[..open], labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_samples_read_back_by_name_and_labels() {
        let metrics = Metrics::default();
        let logs = metrics.register("logs", "s3", Box::new(|| WalSize { undelivered_bytes: 7, disk_bytes: 9 }));
        logs.delivered_bytes.inc_by(1234);
        logs.incoming_records.inc_by(3);
        let text = metrics.render();
        assert_eq!(read_metric(&text, "spillway_delivered_bytes_total{stream=\"logs\"}"), Some(1234.0), "{text}");
        assert_eq!(read_metric(&text, "spillway_delivered_bytes_total{sink=\"s3\",stream=\"logs\"}"), Some(1234.0));
        assert_eq!(read_metric(&text, "spillway_incoming_records_total{stream=\"logs\"}"), Some(3.0));
        assert_eq!(read_metric(&text, "spillway_wal_bytes{stream=\"logs\"}"), Some(7.0));
        assert_eq!(read_metric(&text, "spillway_wal_disk_bytes{stream=\"logs\"}"), Some(9.0));
        assert_eq!(read_metric(&text, "spillway_delivered_bytes_total{stream=\"other\"}"), None);
        assert!(read_metric(&text, "process_cpu_seconds_total").is_some_and(|cpu| cpu > 0.0), "{text}");
        assert!(read_metric(&text, "process_peak_rss_bytes").is_some_and(|rss| rss > 1_000_000.0), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn freshness_is_the_age_of_the_oldest_undelivered_record() {
        let metrics = Metrics::default();
        let logs = metrics.register("logs", "s3", Box::new(WalSize::default));
        assert_eq!(logs.data_freshness_seconds(10_000), 0.0, "nothing waits");
        logs.set_oldest_undelivered(Some(4_000));
        assert_eq!(logs.data_freshness_seconds(10_000), 6.0);
        let now_ms = chrono::Utc::now().timestamp_millis();
        logs.set_oldest_undelivered(Some(now_ms - 90_000));
        let text = metrics.render();
        let freshness = read_metric(&text, "spillway_data_freshness_seconds{stream=\"logs\",sink=\"s3\"}");
        assert!(freshness.is_some_and(|seconds| (90.0..100.0).contains(&seconds)), "{text}");
        logs.set_oldest_undelivered(None);
        assert_eq!(read_metric(&metrics.render(), "spillway_data_freshness_seconds{stream=\"logs\"}"), Some(0.0));
    }

    #[test]
    fn histograms_and_the_open_batch_budget_are_exported() {
        let metrics = Metrics::default();
        let logs = metrics.register("logs", "s3", Box::new(WalSize::default));
        struct Budget;
        impl BudgetGauge for Budget {
            fn held(&self) -> usize {
                0
            }
            fn limit(&self) -> usize {
                1 << 20
            }
        }
        metrics.register_open_batch_budget(Arc::new(Budget));
        logs.batch_size.observe(5000.0);
        logs.put_latency.observe(0.002);
        observe_wal_fsync(Duration::from_millis(1));
        let text = metrics.render();
        assert_eq!(read_metric(&text, "spillway_batch_size_bytes_count{stream=\"logs\"}"), Some(1.0), "{text}");
        assert_eq!(read_metric(&text, "spillway_batch_size_bytes_sum{stream=\"logs\"}"), Some(5000.0));
        assert_eq!(read_metric(&text, "spillway_put_latency_seconds_count{stream=\"logs\"}"), Some(1.0));
        assert!(read_metric(&text, "spillway_wal_fsync_seconds_count").is_some_and(|count| count >= 1.0));
        assert_eq!(read_metric(&text, "spillway_open_batch_bytes"), Some(0.0));
        assert_eq!(read_metric(&text, "spillway_open_batch_limit_bytes"), Some(1048576.0));
    }
}
