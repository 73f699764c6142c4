//! `spillway cluster status`: the nodes (alive, dead or stopped, heartbeat age by the database's
//! clock) and the leases of each node (epoch, expiry), read straight from the coordinator with
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
        Ok(ClusterStatus { schema_version, nodes, leases })
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
        let _ = writeln!(out, "{:<40} {:<40} {:>6} {:>10}  NOTE", "LEASE", "OWNER", "EPOCH", "EXPIRES");
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
                let _ = writeln!(
                    out,
                    "{:<40} {:<40} {:>6} {:>10}  {}",
                    lease.state.key,
                    owner.unwrap_or("-"),
                    lease.epoch,
                    if owner.is_some() { expires.as_str() } else { "-" },
                    notes.join(", ")
                );
            }
        }
        out
    }
}
