//! Where a delivery loop keeps what survives it: the checkpoint (the watermark as stored) and the
//! intents of batches above it. [`FileState`] keeps them in the stream's folder (single node, and
//! every push source in cluster mode); in cluster mode a shared shard keeps them in the
//! coordinator (`crate::cluster::shard_state`), so whichever node owns the shard next carries on
//! from them. The loop's restart logic is the same over both.
//!
//! Must not: decide what a batch is or when the watermark moves (that is the loop's).

use std::sync::Arc;

use super::PipelineError;
use super::intent::{Intent, IntentError, IntentLog};
use crate::checkpoint::Checkpoint;

/// The store of one delivery loop's checkpoint and intents. Every call is durable when it returns.
#[async_trait::async_trait]
pub trait DeliveryState: Send + Sync + 'static {
    /// The stored checkpoint (0 when none) and the intents recorded above or below it.
    async fn load(&self) -> Result<(u64, Vec<Intent>), PipelineError>;
    /// Record (or overwrite, to mark done) intents, all before any of their batches leaves.
    async fn record(&self, intents: Vec<Intent>) -> Result<(), PipelineError>;
    /// The checkpoint moved to `watermark`; `passed` intents (ending at or below it) are forgotten.
    async fn advance(&self, watermark: u64, passed: Vec<Intent>) -> Result<(), PipelineError>;
    /// Forget intents the watermark already passed (left by an earlier run).
    async fn forget(&self, stale: Vec<Intent>) -> Result<(), PipelineError>;
}

/// Checkpoint and intents as files in the stream's folder. Blocking I/O runs on the blocking pool.
#[derive(Debug, Clone)]
pub struct FileState {
    checkpoint: Checkpoint,
    intents: IntentLog,
}

impl FileState {
    pub fn new(checkpoint: Checkpoint, intents: IntentLog) -> Arc<Self> {
        Arc::new(Self { checkpoint, intents })
    }

    fn remove_all(log: &IntentLog, intents: &[Intent]) -> Result<(), IntentError> {
        intents.iter().try_for_each(|intent| log.remove(intent))
    }
}

#[async_trait::async_trait]
impl DeliveryState for FileState {
    async fn load(&self) -> Result<(u64, Vec<Intent>), PipelineError> {
        let (checkpoint, intents) = (self.checkpoint.clone(), self.intents.clone());
        tokio::task::spawn_blocking(move || Ok((checkpoint.load()?, intents.load()?))).await?
    }

    async fn record(&self, intents: Vec<Intent>) -> Result<(), PipelineError> {
        let log = self.intents.clone();
        tokio::task::spawn_blocking(move || intents.iter().try_for_each(|intent| log.record(intent))).await??;
        Ok(())
    }

    async fn advance(&self, watermark: u64, passed: Vec<Intent>) -> Result<(), PipelineError> {
        let (checkpoint, log) = (self.checkpoint.clone(), self.intents.clone());
        tokio::task::spawn_blocking(move || -> Result<(), PipelineError> {
            checkpoint.store(watermark)?;
            Ok(Self::remove_all(&log, &passed)?)
        })
        .await?
    }

    async fn forget(&self, stale: Vec<Intent>) -> Result<(), PipelineError> {
        if stale.is_empty() {
            return Ok(());
        }
        let log = self.intents.clone();
        tokio::task::spawn_blocking(move || Self::remove_all(&log, &stale)).await??;
        Ok(())
    }
}
