//! Cluster mode (`cluster:` in the YAML): several spillway nodes share work through leases in
//! PostgreSQL, the coordinator. This part is the foundation: the configuration, the versioned
//! schema, the lease store with its fencing, the balancer, and the node's membership (register,
//! heartbeat, renew, leave), and shard sharing: the shards of `kinesis` and `dynamodb_streams`
//! sources and the partitions of `kafka` sources are leased one by one and read and delivered by
//! their owner, with what a next owner needs in the coordinator; push and file sources run on
//! every node as in single-node mode. See `docs/cluster.md`.
//!
//! Module map:
//! - [`config`]: the `cluster:` block, its validation and its defaults (node id, advertise).
//! - [`schema`]: the tables, created and migrated under an advisory lock.
//! - [`leases`]: [`leases::LeaseStore`]: registration, heartbeat, claim / renew / release /
//!   hand-off, conditional writes fenced by (owner, epoch).
//! - [`balance`]: the pure balancer (fair share, one expired take per scan, hand-off rules).
//! - [`shard_state`]: a shared shard's resume point, checkpoint and intents (fenced writes).
//! - [`sharing`]: one task per shard-source stream: leases, sub-streams, hand-over.
//! - [`status`]: `spillway cluster status`.
//!
//! Without `cluster:` nothing here runs and no PostgreSQL is contacted.

pub mod balance;
pub mod catalog;
pub mod config;
pub mod coordinator;
pub mod leases;
pub mod replication;
pub mod schema;
pub mod shard_state;
pub mod sharing;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{ClusterConfig, ResolvedCluster};
pub use leases::LeaseStore;

use crate::metrics::ClusterStats;
use crate::readiness::Readiness;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster coordinator unreachable: {0}")]
    Unreachable(String),
    #[error(
        "the cluster schema in the coordinator is version {found}, newer than this spillway knows (version {known}); \
         upgrade spillway on this node"
    )]
    SchemaTooNew { found: i32, known: i32 },
    #[error(
        "cluster.node_id {node_id} is in use by a live node (advertising {advertise}); give each node its own node_id"
    )]
    NodeIdInUse { node_id: String, advertise: String },
    #[error("another process registered cluster.node_id {node_id}; this node no longer counts as alive")]
    Replaced { node_id: String },
    #[error("lease {key} (epoch {epoch}) is no longer this node's: fenced")]
    Fenced { key: String, epoch: i64 },
    #[error("cluster: {0}")]
    Config(String),
    #[error("the cluster coordinator refused the data: {0}")]
    Rejected(String),
    #[error(
        "stream `{stream}` differs from the cluster's: live node {node} {how}; every node's YAML streams must be \
         the same (give this node the same streams, or stop the other nodes first)"
    )]
    YamlDiffers { stream: String, node: String, how: String },
}

impl From<tokio_postgres::Error> for ClusterError {
    fn from(error: tokio_postgres::Error) -> Self {
        // Data exceptions and integrity violations (SQLSTATE classes 22, 23) are about what was
        // written, not about reaching the server: retrying them cannot help.
        let refused_data = error.as_db_error().is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23"));
        if refused_data {
            ClusterError::Rejected(describe_pg_error(&error))
        } else {
            ClusterError::Unreachable(describe_pg_error(&error))
        }
    }
}

/// tokio-postgres's text, with the server's own message for database errors (`db error` alone
/// says nothing) and the causes of a failed connection (`error connecting to server` alone
/// neither).
fn describe_pg_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => error_chain(error),
    }
}

/// An error and its sources (see [`spillway_sink_api::error_chain`]).
pub(crate) use spillway_sink_api::error_chain;

/// This node's membership: the lease store and the task that heartbeats and renews every
/// `lease_seconds / 3`, reporting the coordinator's reachability to `/ready` and `/metrics`.
pub struct Membership {
    store: Arc<LeaseStore>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Membership {
    /// Create or migrate the schema and register this node: each failure (no answer, refused
    /// credentials, a newer schema, a node id in use) stops the start with its reason.
    pub async fn join(
        cluster: &ResolvedCluster,
        stats: Arc<ClusterStats>,
        readiness: Arc<Readiness>,
    ) -> Result<Membership, ClusterError> {
        let store = Arc::new(LeaseStore::new(cluster, stats.clone())?);
        let before = store.migrate().await?;
        store.register().await?;
        stats.coordinator_up.store(1, Ordering::Relaxed);
        tracing::info!(
            node_id = %cluster.node_id,
            advertise = %cluster.advertise,
            lease_seconds = cluster.lease_seconds,
            schema_before = before,
            schema = schema::CURRENT_VERSION,
            "joined the cluster"
        );
        readiness.set_cluster_node(Some(cluster.node_id.clone()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(keep_alive(store.clone(), stats, readiness, stopped));
        Ok(Membership { store, stop, task })
    }

    pub fn store(&self) -> &Arc<LeaseStore> {
        &self.store
    }

    /// Stop renewing, release every lease and mark the node stopped (bounded by one lease
    /// period; what is not released expires by itself).
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let bound = self.store.lease_duration();
        match tokio::time::timeout(bound, self.store.deregister()).await {
            Ok(Ok(())) => tracing::info!(node_id = %self.store.node_id(), "left the cluster"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not leave the cluster cleanly; its leases expire by themselves")
            }
            Err(_) => {
                tracing::warn!("the coordinator did not answer the leave; this node's leases expire by themselves")
            }
        }
    }
}

/// Heartbeat and renew every lease period / 3 until `stop`. A failed round marks the
/// coordinator unreachable (`/ready` 503, `spillway_cluster_coordinator_up` 0) and the next
/// round simply tries again: no restart, no crash loop.
async fn keep_alive(
    store: Arc<LeaseStore>,
    stats: Arc<ClusterStats>,
    readiness: Arc<Readiness>,
    mut stop: watch::Receiver<bool>,
) {
    let period = store.lease_duration() / 3;
    let mut reachable = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
        let round = async {
            match store.heartbeat().await {
                // An operator removed the row, or our id was taken while we were cut off: join
                // again if the id is free, else say who holds it.
                Err(ClusterError::Replaced { .. }) => store.register().await?,
                other => other?,
            }
            store.renew_all().await
        };
        match round.await {
            Ok(renewal) => {
                if !reachable {
                    tracing::info!("cluster coordinator reachable again");
                }
                reachable = true;
                store.note_reachable(true);
                stats.coordinator_up.store(1, Ordering::Relaxed);
                readiness.set_coordinator_problem(None);
                readiness.set_cluster_leases(store.held().into_keys().collect());
                for (lease, requester) in renewal.requests {
                    tracing::debug!(%lease, %requester, "hand-off requested");
                }
            }
            Err(error) => {
                if reachable {
                    tracing::warn!(%error, "cluster heartbeat failed; /ready answers 503 until the coordinator answers");
                }
                reachable = false;
                store.note_reachable(false);
                stats.coordinator_up.store(0, Ordering::Relaxed);
                let reason = match &error {
                    ClusterError::Unreachable(_) => error.to_string(),
                    _ => format!("cluster coordinator unreachable: {error}"),
                };
                readiness.set_coordinator_problem(Some(reason));
            }
        }
    }
}
