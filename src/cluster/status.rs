//! `spillway cluster status`: the nodes (alive, dead or stopped, heartbeat age by the database's
//! clock), the leases of each node (epoch, expiry) and, for shard leases, how far the shard is
//! delivered (the checkpoint, batches in flight, when it last moved), read straight from the
//! coordinator with
//! the `cluster:` block of a configuration file. Read-only: it neither migrates nor registers.
//!
//! Must not: write to the coordinator.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use spillway_sink_postgres::pool::Pool;

use super::ClusterError;
use super::config::ClusterConfig;
use super::leases::{LeaseRow, NodeRow, read_cluster};

/// What the coordinator holds now.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub schema_version: i32,
    pub nodes: Vec<NodeRow>,
    pub leases: Vec<LeaseRow>,
    /// Shard leases' delivery progress, by lease key.
    pub progress: BTreeMap<String, ShardProgress>,
}

/// How far a shared shard is delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardProgress {
    /// Every record below this WAL sequence is delivered.
    pub checkpoint: i64,
    /// Batches recorded above the checkpoint (pending or done).
    pub batches_in_flight: i64,
    /// Seconds since the checkpoint or the resume point last moved (the database's clock).
    pub moved_seconds_ago: f64,
}

/// Read the coordinator named in `cluster`.
pub async fn read(cluster: &ClusterConfig) -> Result<ClusterStatus, ClusterError> {
    let coordinator =
        cluster.coordinator_config().map_err(|message| ClusterError::Config(format!("coordinator {message}")))?;
    let pool = Pool::new(coordinator, cluster.ca_file.as_deref(), 1)
        .map_err(|error| ClusterError::Unreachable(super::error_chain(&error)))?;
    let work = async {
        let mut pooled = pool.get().await.map_err(|error| ClusterError::Unreachable(super::error_chain(&error)))?;
        let client = pooled.client();
        let exists: bool =
            client.query_one("SELECT to_regclass('spillway_cluster_schema') IS NOT NULL", &[]).await?.get(0);
        if !exists {
            return Err(ClusterError::Config(
                "no spillway cluster in this database yet (no node has joined it)".to_string(),
            ));
        }
        let schema_version: i32 =
            client.query_one("SELECT coalesce(max(version), 0) FROM spillway_cluster_schema", &[]).await?.get(0);
        if schema_version == 0 {
            return Err(ClusterError::Config("the cluster schema is not created yet".to_string()));
        }
        let (nodes, leases) = read_cluster(client, cluster.lease_seconds as f64).await?;
        let mut progress = BTreeMap::new();
        if schema_version >= 3 {
            let rows = client
                .query(
                    "SELECT s.lease_key, s.checkpoint,
                         (SELECT count(*) FROM spillway_shard_intents i WHERE i.lease_key = s.lease_key),
                         extract(epoch FROM now() - s.updated_at)::float8
                     FROM spillway_shard_state s",
                    &[],
                )
                .await?;
            for row in rows {
                let progress_row = ShardProgress {
                    checkpoint: row.get(1),
                    batches_in_flight: row.get(2),
                    moved_seconds_ago: row.get(3),
                };
                progress.insert(row.get::<_, String>(0), progress_row);
            }
        }
        Ok(ClusterStatus { schema_version, nodes, leases, progress })
    };
    match tokio::time::timeout(std::time::Duration::from_secs(15), work).await {
        Ok(result) => result,
        Err(_) => Err(ClusterError::Unreachable("no answer within 15 s".to_string())),
    }
}

impl ClusterStatus {
    /// Two tables: nodes (with their lease counts), then leases grouped by owner.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut per_owner: BTreeMap<Option<&str>, Vec<&LeaseRow>> = BTreeMap::new();
        for lease in &self.leases {
            per_owner.entry(lease.state.owner.as_deref()).or_default().push(lease);
        }
        let alive = self.nodes.iter().filter(|node| node.alive).count();
        let _ = writeln!(
            out,
            "{} node(s), {alive} alive; {} lease(s); schema version {}",
            self.nodes.len(),
            self.leases.len(),
            self.schema_version
        );
        let _ = writeln!(
            out,
            "{:<40} {:<8} {:>10} {:>7}  {:<24} VERSION",
            "NODE", "STATE", "HEARTBEAT", "LEASES", "ADVERTISE"
        );
        for node in &self.nodes {
            let state = if node.alive {
                "alive"
            } else if node.stopped {
                "stopped"
            } else {
                "dead"
            };
            let held = per_owner.get(&Some(node.node_id.as_str())).map_or(0, Vec::len);
            let _ = writeln!(
                out,
                "{:<40} {:<8} {:>9.1}s {:>7}  {:<24} {}",
                node.node_id, state, node.heartbeat_age_seconds, held, node.advertise, node.version
            );
        }
        if self.leases.is_empty() {
            let _ = writeln!(out, "no leases");
            return out;
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<40} {:<40} {:>6} {:>10} {:>10} {:>8} {:>9}  NOTE",
            "LEASE", "OWNER", "EPOCH", "EXPIRES", "DELIVERED", "BATCHES", "MOVED"
        );
        for (owner, leases) in &per_owner {
            for lease in leases {
                let expires = if lease.expires_in_seconds >= 0.0 {
                    format!("in {:.1}s", lease.expires_in_seconds)
                } else {
                    format!("{:.1}s ago", -lease.expires_in_seconds)
                };
                let mut notes = Vec::new();
                if lease.state.finished {
                    notes.push("finished".to_string());
                }
                if lease.state.blocked {
                    notes.push("waits for its parents".to_string());
                }
                if let Some(requester) = &lease.state.requested_by {
                    notes.push(format!("requested by {requester}"));
                }
                let progress = self.progress.get(&lease.state.key);
                let (delivered, batches, moved) = match progress {
                    Some(progress) => (
                        progress.checkpoint.to_string(),
                        progress.batches_in_flight.to_string(),
                        format!("{:.1}s ago", progress.moved_seconds_ago),
                    ),
                    None => ("-".to_string(), "-".to_string(), "-".to_string()),
                };
                let _ = writeln!(
                    out,
                    "{:<40} {:<40} {:>6} {:>10} {:>10} {:>8} {:>9}  {}",
                    lease.state.key,
                    owner.unwrap_or("-"),
                    lease.epoch,
                    if owner.is_some() { expires.as_str() } else { "-" },
                    delivered,
                    batches,
                    moved,
                    notes.join(", ")
                );
            }
        }
        out
    }
}
