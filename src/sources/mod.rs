//! Sources: where records come from. Pushed sources (the Firehose Direct PUT API and NDJSON over
//! HTTP) append to the stream's WAL through [`Ingest`] and acknowledge only after the append.
//!
//! Must not: buffer or deliver; that is the pipeline's job.

pub mod direct_put;
pub mod http;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, StreamConfig};
use crate::metrics::{Metrics, StreamMetrics};
use crate::wal::Wal;

/// Firehose's limit on one record's data: 1,000 KiB.
pub const MAX_RECORD_BYTES: usize = 1_024_000;
/// Firehose's limits on one `PutRecordBatch`.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Largest request body read: a full 4 MiB batch in base64 plus JSON framing.
pub const MAX_REQUEST_BODY_BYTES: usize = 6 * 1024 * 1024;

/// A pushed stream's entry point.
pub struct StreamIngest {
    pub config: StreamConfig,
    pub wal: Wal,
    pub metrics: Arc<StreamMetrics>,
    /// Set when the stream's delivery stopped (e.g. a corrupt WAL segment): intake stops too,
    /// so nothing more piles up behind a stream that cannot deliver.
    pub stopped: Arc<std::sync::OnceLock<String>>,
}

/// Shared by every push handler: the streams by name, and the memory budget for request bodies.
pub struct Ingest {
    pub streams: BTreeMap<String, StreamIngest>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Permits are KiB of request bodies held in memory; a request waits for its share.
    body_budget: Arc<Semaphore>,
    body_budget_kib: usize,
    /// Prefix of record ids, unique per instance.
    pub record_id_prefix: String,
    started_at_seconds: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("unknown stream")]
    UnknownStream,
    #[error("slow down")]
    Throttled,
    #[error("{0}")]
    Internal(String),
}

impl Ingest {
    pub fn new(
        config: Config,
        streams: BTreeMap<String, StreamIngest>,
        metrics: Arc<Metrics>,
        record_id_prefix: String,
    ) -> Self {
        let body_budget_kib = (config.limits.max_inflight_request_mib as usize) * 1024;
        Self {
            streams,
            config,
            metrics,
            body_budget: Arc::new(Semaphore::new(body_budget_kib)),
            body_budget_kib,
            record_id_prefix,
            started_at_seconds: chrono::Utc::now().timestamp(),
        }
    }

    /// Reserve memory for a request body of (at most) `bytes`; waits while the budget is spent.
    pub async fn reserve_body(&self, bytes: usize) -> OwnedSemaphorePermit {
        let kib = (bytes / 1024 + 1).min(self.body_budget_kib) as u32;
        self.body_budget.clone().acquire_many_owned(kib).await.expect("the body budget semaphore is never closed")
    }

    /// Append one request's records to the stream's WAL, all or nothing.
    pub async fn append(&self, stream: &str, records: Vec<Bytes>) -> Result<Range<u64>, IngestError> {
        let target = self.streams.get(stream).ok_or(IngestError::UnknownStream)?;
        if let Some(reason) = target.stopped.get() {
            return Err(IngestError::Internal(format!("stream {stream} stopped delivering: {reason}")));
        }
        let count = records.len() as u64;
        let bytes: u64 = records.iter().map(|record| record.len() as u64).sum();
        let arrival_ms = chrono::Utc::now().timestamp_millis();
        match target.wal.append(arrival_ms, records).await {
            Ok(range) => {
                StreamMetrics::add(&target.metrics.incoming_records, count);
                StreamMetrics::add(&target.metrics.incoming_bytes, bytes);
                StreamMetrics::add(&target.metrics.incoming_put_requests, 1);
                Ok(range)
            }
            Err(error) if error.is_retriable() => {
                StreamMetrics::add(&target.metrics.throttled_records, count);
                tracing::warn!(stream, records = count, %error, "throttling a put");
                Err(IngestError::Throttled)
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
            .iter()
            .filter_map(|(name, stream)| stream.stopped.get().map(|reason| (name.clone(), reason.clone())))
            .collect()
    }

    /// When this process started; reported as the streams' creation time.
    pub fn started_at_seconds(&self) -> i64 {
        self.started_at_seconds
    }

    /// Firehose-style record id: opaque, unique, 56+ characters.
    pub fn record_id(&self, sequence: u64) -> String {
        format!("{}{sequence:024}", self.record_id_prefix)
    }
}
