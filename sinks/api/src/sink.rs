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
