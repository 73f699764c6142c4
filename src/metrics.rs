//! Counters users watch, named after Firehose's CloudWatch metrics where one exists, exported in
//! Prometheus text format on `/metrics`, with the process's CPU time and peak RSS (read by the
//! benchmark).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One stream's counters, all monotonic (the WAL size gauges come from a [`WalSizeProbe`]).
#[derive(Default)]
pub struct StreamMetrics {
    pub incoming_records: AtomicU64,
    pub incoming_bytes: AtomicU64,
    pub incoming_put_requests: AtomicU64,
    pub throttled_records: AtomicU64,
    pub delivered_records: AtomicU64,
    pub delivered_bytes: AtomicU64,
    pub delivered_batches: AtomicU64,
    pub delivery_retries: AtomicU64,
    pub error_output_records: AtomicU64,
    /// Batches closed early because a new partition would pass `max_active_partitions`.
    pub partition_count_exceeded: AtomicU64,
}

impl StreamMetrics {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
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

/// Picks one counter out of a stream's metrics.
type CounterOf = fn(&StreamMetrics) -> &AtomicU64;

/// Picks one gauge out of a stream's WAL size.
type WalGaugeOf = fn(&WalSize) -> u64;

/// Every stream's counters. Streams come and go at runtime (the control plane creates and deletes
/// them), so the table sits behind a lock that is only held to register, remove or render.
#[derive(Default)]
pub struct Metrics {
    streams: RwLock<BTreeMap<String, Registered>>,
}

/// One registered stream: its counters and its WAL size probe.
type Registered = (Arc<StreamMetrics>, Arc<WalSizeProbe>);

impl Metrics {
    /// Register a stream (again: a re-registered stream keeps counting from zero); `wal_size`
    /// reads its current WAL size.
    pub fn register(&self, stream: &str, wal_size: WalSizeProbe) -> Arc<StreamMetrics> {
        let metrics = Arc::new(StreamMetrics::default());
        let mut streams = self.streams.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        streams.insert(stream.to_string(), (metrics.clone(), Arc::new(wal_size)));
        metrics
    }

    /// Forget a deleted stream.
    pub fn unregister(&self, stream: &str) {
        let mut streams = self.streams.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        streams.remove(stream);
    }

    pub fn render(&self) -> String {
        // A snapshot, so the lock is not held while the WAL sizes are read.
        let streams: BTreeMap<String, Registered> =
            self.streams.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut out = String::new();
        let counters: [(&str, &str, CounterOf); 10] = [
            ("spillway_incoming_records_total", "records accepted", |m| &m.incoming_records),
            ("spillway_incoming_bytes_total", "bytes accepted", |m| &m.incoming_bytes),
            ("spillway_incoming_put_requests_total", "put requests accepted", |m| &m.incoming_put_requests),
            ("spillway_throttled_records_total", "records refused with ServiceUnavailableException", |m| {
                &m.throttled_records
            }),
            ("spillway_delivered_records_total", "records delivered to the sink", |m| &m.delivered_records),
            ("spillway_delivered_bytes_total", "record bytes delivered (before compression)", |m| &m.delivered_bytes),
            ("spillway_delivered_batches_total", "batches delivered", |m| &m.delivered_batches),
            ("spillway_delivery_retries_total", "retried sink writes", |m| &m.delivery_retries),
            ("spillway_error_output_records_total", "records written to the error output", |m| &m.error_output_records),
            (
                "spillway_partition_count_exceeded_total",
                "batches closed early because a new partition passed max_active_partitions",
                |m| &m.partition_count_exceeded,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (stream, (metrics, _)) in &streams {
                let _ = writeln!(out, "{name}{{stream=\"{stream}\"}} {}", counter(metrics).load(Ordering::Relaxed));
            }
        }
        let sizes: Vec<(&String, WalSize)> =
            streams.iter().map(|(stream, (_, wal_size))| (stream, wal_size())).collect();
        let gauges: [(&str, &str, WalGaugeOf); 2] = [
            ("spillway_wal_bytes", "undelivered bytes in the WAL (bounded by limits.max_wal_mib)", |size| {
                size.undelivered_bytes
            }),
            ("spillway_wal_disk_bytes", "size of the WAL segment files, delivered parts included", |size| {
                size.disk_bytes
            }),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (stream, size) in &sizes {
                let _ = writeln!(out, "{name}{{stream=\"{stream}\"}} {}", value(size));
            }
        }
        if let Some(cpu) = process_cpu_seconds() {
            let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu:.3}");
        }
        if let Some(peak) = process_peak_rss_bytes() {
            let _ = writeln!(out, "# TYPE process_peak_rss_bytes gauge\nprocess_peak_rss_bytes {peak}");
        }
        out
    }
}

/// The value of the first sample named `name` (with its labels, if any, e.g.
/// `spillway_delivered_bytes_total{stream="logs"}`) in Prometheus text as `render` writes it.
pub fn read_metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')).and_then(|value| value.trim().parse().ok())
}

/// User + system CPU time of this process, from `/proc/self/stat` (Linux only).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux target we run on.
    100.0
}

/// Peak resident set size (`VmHWM`), from `/proc/self/status` (Linux only).
fn process_peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_samples_read_back_by_name_and_labels() {
        let metrics = Metrics::default();
        let logs = metrics.register("logs", Box::new(|| WalSize { undelivered_bytes: 7, disk_bytes: 9 }));
        StreamMetrics::add(&logs.delivered_bytes, 1234);
        let text = metrics.render();
        assert_eq!(read_metric(&text, "spillway_delivered_bytes_total{stream=\"logs\"}"), Some(1234.0));
        assert_eq!(read_metric(&text, "spillway_wal_bytes{stream=\"logs\"}"), Some(7.0));
        assert_eq!(read_metric(&text, "spillway_wal_disk_bytes{stream=\"logs\"}"), Some(9.0));
        assert_eq!(read_metric(&text, "spillway_delivered_bytes_total{stream=\"other\"}"), None);
        assert!(read_metric(&text, "process_cpu_seconds_total").is_some());
    }
}
