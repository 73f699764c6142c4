//! Request counters of one HTTP endpoint sink: requests by outcome (`200`, `3xx`, `413`, `4xx`,
//! `5xx`, `timeout`, `connection`, `invalid_response`, …), records and body bytes sent. The sink
//! counts; spillway's `/metrics` and status page read them at scrape time.
//!
//! Must not: hold labels of other sinks or streams.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct RequestStats {
    by_outcome: Mutex<BTreeMap<&'static str, u64>>,
    records_sent: AtomicU64,
    /// Request bodies as sent (after `Content-Encoding`).
    bytes_sent: AtomicU64,
    /// 413 answers that split a request in two.
    splits: AtomicU64,
}

/// A reading of [`RequestStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestStatsSnapshot {
    pub by_outcome: BTreeMap<&'static str, u64>,
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub splits: u64,
}

impl RequestStats {
    pub(crate) fn request(&self, outcome: &'static str, records: usize, bytes: usize) {
        if let Ok(mut by_outcome) = self.by_outcome.lock() {
            *by_outcome.entry(outcome).or_default() += 1;
        }
        self.records_sent.fetch_add(records as u64, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn split(&self) {
        self.splits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RequestStatsSnapshot {
        RequestStatsSnapshot {
            by_outcome: self.by_outcome.lock().map(|by_outcome| by_outcome.clone()).unwrap_or_default(),
            records_sent: self.records_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            splits: self.splits.load(Ordering::Relaxed),
        }
    }
}
