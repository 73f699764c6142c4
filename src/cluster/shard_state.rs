//! What a shared shard's next owner carries on from, in the coordinator: per shard lease its
//! resume point, checkpoint and the intents of batches above it (`spillway_shard_state`,
//! `spillway_shard_intents`). Every write runs only while this node owns the lease at its epoch
//! (the lease row locked `FOR SHARE` in the same transaction, so no claim commits in between): a
//! node that lost the lease writes nothing more, and its delivery loop stops at the refused
//! write. See `docs/cluster.md`, "Shard sharing".
//!
//! Must not: decide which node reads what (that is [`super::balance`] and [`super::sharing`]).

use std::sync::Arc;

use tokio_postgres::Transaction;
use uuid::Uuid;

use super::config::ResolvedCluster;
use super::coordinator::Coordinator;
use super::{ClusterError, LeaseStore};
use crate::pipeline::{DeliveryState, Intent, PipelineError};
use crate::sources::shards::Boundaries;

/// A shard's row as a new owner reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardResume {
    /// Seeds the shard's batch ids: every owner names a batch alike.
    pub generation: Uuid,
    /// The WAL sequence the record after `position` gets.
    pub sequence: u64,
    /// The shard position to read on from (`None`: never read; start as configured).
    pub position: Option<String>,
    pub checkpoint: u64,
}

/// The coordinator connections for shard state (apart from the lease store's, so a burst of
/// intent writes never delays a heartbeat).
pub struct ShardStates {
    coordinator: Coordinator,
    leases: Arc<LeaseStore>,
}

impl ShardStates {
    pub fn new(cluster: &ResolvedCluster, leases: Arc<LeaseStore>) -> Result<Self, ClusterError> {
        Ok(Self { coordinator: Coordinator::new(cluster, 4)?, leases })
    }

    pub fn leases(&self) -> &Arc<LeaseStore> {
        &self.leases
    }

    /// The shard's row, made (with a new generation) on its first claim.
    pub async fn open(&self, key: &str, epoch: i64) -> Result<ShardResume, ClusterError> {
        let generation = Uuid::new_v4().to_string();
        let row = self
            .fenced(key, epoch, async |transaction| {
                transaction
                    .execute(
                        "INSERT INTO spillway_shard_state (lease_key, generation) VALUES ($1, $2)
                         ON CONFLICT (lease_key) DO NOTHING",
                        &[&key, &generation],
                    )
                    .await?;
                Ok(transaction
                    .query_one(
                        "SELECT generation, resume_sequence, resume_position, checkpoint
                         FROM spillway_shard_state WHERE lease_key = $1",
                        &[&key],
                    )
                    .await?)
            })
            .await?;
        let generation: String = row.get(0);
        let generation = Uuid::parse_str(&generation)
            .map_err(|error| ClusterError::Rejected(format!("shard {key}: unreadable generation: {error}")))?;
        Ok(ShardResume {
            generation,
            sequence: sequence(row.get(1)),
            position: row.get(2),
            checkpoint: sequence(row.get(3)),
        })
    }

    /// Record where a shard first started reading (its `LATEST` as a time), unless a position
    /// is known already.
    pub async fn set_start(&self, key: &str, epoch: i64, position: &str) -> Result<(), ClusterError> {
        self.fenced(key, epoch, async |transaction| {
            transaction
                .execute(
                    "UPDATE spillway_shard_state SET resume_position = $2, updated_at = now()
                     WHERE lease_key = $1 AND resume_position IS NULL",
                    &[&key, &position],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// The delivery loop's state store for one owned shard.
    pub fn delivery_state(
        self: &Arc<Self>,
        key: &str,
        epoch: i64,
        boundaries: Arc<Boundaries>,
        on_delivered: Option<OnDelivered>,
    ) -> Arc<dyn DeliveryState> {
        Arc::new(ShardDeliveryState { states: self.clone(), key: key.to_string(), epoch, boundaries, on_delivered })
    }

    /// Run `operation` on a pooled client (reads that need no fencing).
    pub(crate) async fn with_client<T>(
        &self,
        operation: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        self.coordinator.with_client(operation).await
    }

    /// Run `work` in a transaction only while this node owns `key` at `epoch`.
    pub(crate) async fn fenced<T>(
        &self,
        key: &str,
        epoch: i64,
        work: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        let node = self.leases.node_id();
        let outcome = self
            .coordinator
            .with_client(async |client| {
                let transaction = client.transaction().await?;
                let owned = transaction
                    .query_opt(
                        "SELECT 1 FROM spillway_leases WHERE lease_key = $1 AND owner = $2 AND epoch = $3 FOR SHARE",
                        &[&key, &node, &epoch],
                    )
                    .await?;
                if owned.is_none() {
                    return Ok(None);
                }
                let value = work(&transaction).await?;
                transaction.commit().await?;
                Ok(Some(value))
            })
            .await?;
        match outcome {
            Some(value) => Ok(value),
            None => {
                self.leases.forget(key, epoch);
                Err(self.leases.fenced(key, epoch))
            }
        }
    }
}

fn sequence(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

fn stored(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

/// Told the shard position (the sequence of its record) up to which everything is delivered,
/// after each checkpoint the coordinator recorded.
pub type OnDelivered = Arc<dyn Fn(&str) + Send + Sync>;

/// A delivery loop's checkpoint and intents for one owned shard, in the coordinator.
struct ShardDeliveryState {
    states: Arc<ShardStates>,
    key: String,
    epoch: i64,
    /// The shard's frame boundaries: the resume point moves with the checkpoint.
    boundaries: Arc<Boundaries>,
    on_delivered: Option<OnDelivered>,
}

/// Run a state read or write (an expression, evaluated again on each try), waiting out a
/// coordinator that does not answer (backoff 100 ms to 5 s): delivery pauses with it instead of
/// stopping the stream. A fenced or refused write returns at once. (A shard's sub-stream is
/// stopped meanwhile anyway once its lease is past its local deadline, see `sharing`.)
macro_rules! patiently {
    ($state:expr, $operation:expr) => {{
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            match $operation {
                Err(ClusterError::Unreachable(reason)) => {
                    tracing::warn!(lease = %$state.key, %reason, "coordinator unreachable; delivery waits for it to record its state");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
                other => break other.map_err(state_error),
            }
        }
    }};
}

fn state_error(error: ClusterError) -> PipelineError {
    let fenced = matches!(error, ClusterError::Fenced { .. });
    PipelineError::State { reason: error.to_string(), fenced }
}

#[async_trait::async_trait]
impl DeliveryState for ShardDeliveryState {
    async fn load(&self) -> Result<(u64, Vec<Intent>), PipelineError> {
        let key = &self.key;
        let loaded = patiently!(self, {
            self.states
                .coordinator
                .with_client(async |client| {
                    let checkpoint = client
                        .query_opt("SELECT checkpoint FROM spillway_shard_state WHERE lease_key = $1", &[key])
                        .await?
                        .map_or(0, |row| sequence(row.get(0)));
                    let rows = client
                    .query(
                        "SELECT intent::text FROM spillway_shard_intents WHERE lease_key = $1 ORDER BY start_sequence",
                        &[key],
                    )
                    .await?;
                    let mut intents = Vec::with_capacity(rows.len());
                    for row in rows {
                        let text: String = row.get(0);
                        let intent: Intent = serde_json::from_str(&text).map_err(|error| {
                            ClusterError::Rejected(format!("shard {key}: unreadable intent: {error}"))
                        })?;
                        intents.push(intent);
                    }
                    Ok((checkpoint, intents))
                })
                .await
        })?;
        Ok(loaded)
    }

    async fn record(&self, intents: Vec<Intent>) -> Result<(), PipelineError> {
        let key = &self.key;
        let rows: Vec<(String, i64, String)> = intents
            .iter()
            .map(|intent| {
                let json = serde_json::to_string(intent).unwrap_or_default();
                (intent.id.to_string(), stored(intent.start), json)
            })
            .collect();
        patiently!(self, {
            self.states
                .fenced(key, self.epoch, async |transaction| {
                    let upsert = transaction
                        .prepare(
                            "INSERT INTO spillway_shard_intents (lease_key, batch_id, start_sequence, intent)
                         VALUES ($1, $2, $3, $4::text::jsonb)
                         ON CONFLICT (lease_key, batch_id) DO UPDATE SET intent = excluded.intent",
                        )
                        .await?;
                    for (id, start, json) in &rows {
                        transaction.execute(&upsert, &[key, id, start, json]).await?;
                    }
                    Ok(())
                })
                .await
        })
    }

    async fn advance(&self, watermark: u64, passed: Vec<Intent>) -> Result<(), PipelineError> {
        let key = &self.key;
        let resume = self.boundaries.take_at_or_below(watermark);
        let (resume_sequence, resume_position) = match resume {
            Some((sequence, position)) => (Some(stored(sequence)), Some(position)),
            None => (None, None),
        };
        let passed: Vec<String> = passed.iter().map(|intent| intent.id.to_string()).collect();
        let checkpoint = stored(watermark);
        let advanced = patiently!(self, {
            self.states
                .fenced(key, self.epoch, async |transaction| {
                    transaction
                        .execute(
                            "UPDATE spillway_shard_state SET checkpoint = $2,
                             resume_sequence = coalesce($3, resume_sequence),
                             resume_position = coalesce($4, resume_position), updated_at = now()
                         WHERE lease_key = $1",
                            &[key, &checkpoint, &resume_sequence, &resume_position],
                        )
                        .await?;
                    if !passed.is_empty() {
                        transaction
                            .execute(
                                "DELETE FROM spillway_shard_intents WHERE lease_key = $1 AND batch_id = ANY($2)",
                                &[key, &passed],
                            )
                            .await?;
                    }
                    Ok(())
                })
                .await
        });
        if advanced.is_ok()
            && let (Some(on_delivered), Some(position)) = (&self.on_delivered, &resume_position)
            && let Some(crate::sources::shards::Position::After(sequence)) =
                crate::sources::shards::Position::parse(position)
        {
            on_delivered(&sequence);
        }
        advanced
    }

    async fn forget(&self, stale: Vec<Intent>) -> Result<(), PipelineError> {
        if stale.is_empty() {
            return Ok(());
        }
        let key = &self.key;
        let stale: Vec<String> = stale.iter().map(|intent| intent.id.to_string()).collect();
        patiently!(self, {
            self.states
                .fenced(key, self.epoch, async |transaction| {
                    transaction
                        .execute(
                            "DELETE FROM spillway_shard_intents WHERE lease_key = $1 AND batch_id = ANY($2)",
                            &[key, &stale],
                        )
                        .await?;
                    Ok(())
                })
                .await
        })
    }
}
