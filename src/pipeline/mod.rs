//! Delivery of one stream: read committed records back from the WAL, buffer them until the size or
//! interval hint, record the batch's intent, hand it to the sink (retries and error output in
//! [`retry`]), then move the checkpoint and trim the WAL — strictly in sequence order, with up to
//! [`MAX_IN_FLIGHT`] batches being written at once so compression uses every core.
//!
//! Must not: parse records or know a sink's protocol.

mod buffer;
pub mod intent;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use spillway_sink_api::{Batch, Record};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::RecordDelimiter;
use crate::wal::{Wal, WalError, WalReader};
pub use buffer::Buffer;
pub use intent::{Intent, IntentError, IntentLog};
pub use retry::Delivery;

/// Batches written concurrently per stream; checkpoints still advance in order.
pub const MAX_IN_FLIGHT: usize = 2;
/// Most record bytes read from the WAL in one blocking call.
const READ_CHUNK_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Intent(#[from] IntentError),
    #[error("wal reader task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub struct DeliveryLoop {
    pub stream: String,
    pub wal: Wal,
    pub checkpoint: Checkpoint,
    pub intents: IntentLog,
    pub delivery: Arc<Delivery>,
    /// Seeds batch ids: the same (instance, stream, first sequence) always gives the same id.
    pub instance_id: Uuid,
    pub size_bytes: usize,
    pub interval: Duration,
    pub delimiter: RecordDelimiter,
}

impl DeliveryLoop {
    /// Run until `stop` turns true and every committed record is delivered.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), PipelineError> {
        let mut delivered = self.checkpoint.load()?;
        delivered = self.replay_intents(delivered).await?;

        let mut reader = Some(self.wal.reader(delivered));
        let mut committed_rx = self.wal.committed();
        let mut buffer = Buffer::new(self.delimiter);
        let mut next_batch_start = delivered;
        let mut in_flight = FuturesOrdered::new();
        let mut stopping = *stop.borrow();
        let recovery_started = Instant::now();
        let mut backlog_end = Some(*committed_rx.borrow()).filter(|&end| end > delivered);

        loop {
            let committed = *committed_rx.borrow_and_update();
            let position = reader.as_ref().map(WalReader::position).unwrap_or(committed);
            let caught_up = position >= committed;

            if !caught_up && buffer.bytes() < self.size_bytes {
                let budget = (self.size_bytes - buffer.bytes()).min(READ_CHUNK_BYTES);
                let mut taken = reader.take().ok_or(WalError::Closed)?;
                let (returned, frames) = tokio::task::spawn_blocking(move || {
                    let frames = taken.read(committed, budget);
                    (taken, frames)
                })
                .await?;
                reader = Some(returned);
                let (now, now_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis());
                for frame in frames? {
                    buffer.push_frame(frame, now, now_ms);
                }
                continue;
            }

            let interval_elapsed = buffer.opened_at().is_some_and(|opened| opened.elapsed() >= self.interval);
            let flush_due = !buffer.is_empty()
                && (buffer.bytes() >= self.size_bytes || interval_elapsed || (stopping && caught_up));
            if flush_due && in_flight.len() < MAX_IN_FLIGHT {
                let records = buffer.take();
                let intent = self.intent_for(next_batch_start, &records);
                next_batch_start = intent.end;
                self.intents.record(&intent)?;
                let batch = Batch { stream: self.stream.clone(), id: intent.id, records };
                let delivery = self.delivery.clone();
                in_flight.push_back(async move {
                    delivery.deliver(&batch).await;
                    intent
                });
                continue;
            }

            if stopping && caught_up && buffer.is_empty() && in_flight.is_empty() {
                return Ok(());
            }

            let deadline = buffer.opened_at().map(|opened| opened + self.interval);
            tokio::select! {
                Some(intent) = in_flight.next(), if !in_flight.is_empty() => {
                    self.complete(&intent)?;
                    if backlog_end.is_some_and(|end| intent.end >= end) {
                        backlog_end = None;
                        tracing::info!(stream = %self.stream, recovery_ms = recovery_started.elapsed().as_millis() as u64, "records left in the wal by the last run are delivered");
                    }
                }
                changed = committed_rx.changed(), if caught_up && !stopping => {
                    if changed.is_err() {
                        stopping = true;
                    }
                }
                () = sleep_until_option(deadline), if deadline.is_some() && in_flight.len() < MAX_IN_FLIGHT => {}
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                }
            }
        }
    }

    /// Re-send batches whose intent was recorded but whose checkpoint was not, under the same id.
    async fn replay_intents(&self, mut delivered: u64) -> Result<u64, PipelineError> {
        for intent in self.intents.pending()? {
            if intent.end <= delivered {
                self.intents.remove(&intent)?;
                continue;
            }
            let mut reader = self.wal.reader(intent.start);
            let end = intent.end;
            let frames = tokio::task::spawn_blocking(move || reader.read(end, usize::MAX)).await??;
            let mut buffer = Buffer::new(self.delimiter);
            let (now, now_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis());
            for frame in frames {
                buffer.push_frame(frame, now, now_ms);
            }
            let mut records = buffer.take();
            records.retain(|record| record.sequence < intent.end);
            tracing::info!(stream = %self.stream, batch = %intent.id, start = intent.start, end = intent.end, "re-sending a batch recorded before a restart");
            let batch = Batch { stream: self.stream.clone(), id: intent.id, records };
            self.delivery.deliver(&batch).await;
            self.complete(&intent)?;
            delivered = intent.end;
        }
        Ok(delivered)
    }

    fn intent_for(&self, start: u64, records: &[Record]) -> Intent {
        let end = records.last().map(|record| record.sequence + 1).unwrap_or(start);
        let name = format!("{}/{start}", self.stream);
        Intent { id: Uuid::new_v5(&self.instance_id, name.as_bytes()), start, end }
    }

    /// The batch is delivered (or in the error output): move the checkpoint, drop the intent,
    /// trim the WAL.
    fn complete(&self, intent: &Intent) -> Result<(), PipelineError> {
        self.checkpoint.store(intent.end)?;
        self.intents.remove(intent)?;
        self.wal.trim(intent.end);
        Ok(())
    }
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
