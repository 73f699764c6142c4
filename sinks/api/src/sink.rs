//! The `Sink` trait: what every destination must do, nothing more. Batching, in-flight limits and
//! retries belong to the pipeline; a sink makes one attempt per call and classifies the outcome.

use async_trait::async_trait;

use crate::{Batch, SinkError};

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Write the batch. `Ok` means durably accepted by the destination. Writing the same batch
    /// (same `Batch::id`) twice must not duplicate it at the destination.
    async fn write(&self, batch: &Batch) -> Result<(), SinkError>;

    /// Check that the destination is reachable and writable, without writing data.
    async fn healthcheck(&self) -> Result<(), SinkError>;

    /// Release connections; called once after the last write.
    async fn close(&self) -> Result<(), SinkError>;

    /// Requests sent so far, by outcome, for a sink whose writes are requests it counts itself
    /// (the HTTP endpoint: `200`, `5xx`, `timeout`, …); read when `/metrics` is scraped. `None`
    /// (the default): the sink has no such counts, and the pipeline's own metrics describe it.
    fn request_counts(&self) -> Option<RequestCounts> {
        None
    }
}

/// A sink's request counters since it was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests by outcome (`200`, `3xx`, `413`, `4xx`, `5xx`, `timeout`, `connection`, …).
    pub by_outcome: Vec<(&'static str, u64)>,
    /// Records the requests carried (a retried request counts again).
    pub records: u64,
    /// Request body bytes as sent (after compression).
    pub bytes: u64,
}

/// Where records that could not be delivered are written, as Firehose error JSON documents
/// (one per line). The S3 sink is one; other sinks name an S3 sink as their backup.
#[async_trait]
pub trait ErrorOutput: Send + Sync + 'static {
    /// Write `lines` (newline-delimited Firehose error records for records of `batch`) under the
    /// error output prefix evaluated with `error_output_type` (e.g. `processing-failed`). Writing
    /// the same batch id and type twice overwrites, never duplicates.
    async fn write_error_records(
        &self,
        batch: &Batch,
        error_output_type: &str,
        lines: Vec<u8>,
    ) -> Result<(), SinkError>;
}
