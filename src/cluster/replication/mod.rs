//! The replicated WAL (cluster mode, `wal.replication`): a push stream's puts are acknowledged
//! only once the segment object holding their frames is in the object store and indexed in the
//! coordinator, so losing a node — its disk included — loses nothing acknowledged. Each node takes
//! a stream's puts through its own **ingest slot** (a lease `ingest:<stream>:<slot>`, a new slot
//! per start); the local WAL is a cache. When a node dies, a survivor adopts its slot, reads the
//! segments back and delivers them under the slot's lease, carrying on from the checkpoint and
//! intents in the coordinator (as a shard's next owner does). See `docs/cluster.md`, "Replicated
//! WAL".
//!
//! Module map:
//! - [`config`]: the `wal.replication` block.
//! - [`segments`]: segment objects (keys, frames) and their index rows (fenced writes).
//! - [`intake`]: a live slot: lease, local WAL, the replicator, what a put waits on.
//! - [`recovery`]: adopting dead nodes' slots, and the sweep of objects never acknowledged.
//!
//! Must not: acknowledge a put before its segment is indexed; index under a lease it lost.

pub mod config;
pub mod intake;
pub mod recovery;
pub mod segments;

use std::sync::Arc;

pub use config::ReplicationConfig;
pub use intake::{FENCED_EXIT_CODE, IntakeSlot, Replica, ReplicaError};

use super::ClusterError;
use super::shard_state::ShardStates;
use crate::config::FsyncPolicy;
use crate::wal::WalOptions;
use segments::{SegmentIndex, SegmentStore};

/// What every stream's slots share on this node.
pub struct Replication {
    pub config: ReplicationConfig,
    pub segments: SegmentStore,
    pub index: SegmentIndex,
    pub states: Arc<ShardStates>,
}

impl Replication {
    pub fn new(config: ReplicationConfig, states: Arc<ShardStates>) -> Result<Self, String> {
        let (store, prefix) = config.open()?;
        Ok(Self {
            config,
            segments: SegmentStore::new(store, prefix),
            index: SegmentIndex { states: states.clone() },
            states,
        })
    }
}

/// A slot's local WAL is a cache: what a put is acknowledged on is its segment in the object
/// store and the index, and a slot's local files are never read after a restart (a new slot
/// starts empty; an adopted one is rebuilt from its segments). So it is not fsynced before the
/// replicator reads it (`wal.fsync: always` would only add a disk flush to every put's wait).
pub fn cache_options(options: WalOptions) -> WalOptions {
    WalOptions { fsync: FsyncPolicy::Interval, ..options }
}

/// The lease of one ingest slot.
pub fn slot_lease_key(stream: &str, slot: &str) -> String {
    format!("{}{slot}", slot_lease_prefix(stream))
}

pub fn slot_lease_prefix(stream: &str) -> String {
    format!("ingest:{stream}:")
}

/// Forget a slot delivered to its end (index rows, state, lease: one fenced transaction), then
/// delete its objects.
pub async fn retire_slot(replication: &Replication, key: &str, epoch: i64) -> Result<(), ClusterError> {
    let objects = replication.index.retire(key, epoch).await?;
    replication.states.leases().forget(key, epoch);
    if let Err(error) = replication.segments.delete(&objects).await {
        tracing::debug!(lease = %key, %error, "cannot delete a retired slot's objects; the sweep will");
    }
    Ok(())
}
