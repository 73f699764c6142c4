//! A connection pool to the coordinator whose every round of statements is bounded: past the
//! bound, or on a connection-level error, the coordinator counts as unreachable and the client is
//! not reused. The lease store and the shared stream catalog each keep one, so the heartbeat
//! never waits behind a catalog poll.
//!
//! Must not: know any table.

use std::time::Duration;

use spillway_sink_postgres::pool::Pool;
use tokio_postgres::Client;

use super::ClusterError;
use super::config::ResolvedCluster;

pub struct Coordinator {
    pool: Pool,
    /// Longest any one round may take.
    timeout: Duration,
}

impl Coordinator {
    /// `connections` clients at most; rounds bounded by `lease_seconds` (at least 2 s). No
    /// connection is made yet.
    pub fn new(cluster: &ResolvedCluster, connections: usize) -> Result<Self, ClusterError> {
        let timeout = Duration::from_secs(cluster.lease_seconds).max(Duration::from_secs(2));
        // A node paused inside a transaction (SIGSTOP, a VM freeze) would keep its row locks —
        // a lease row locked `FOR SHARE` by a fenced write — and every other node's claim of that
        // lease would skip it for as long as the pause lasts. The server ends such a session
        // after one lease period; the paused node's write then fails, as its lease has.
        let mut coordinator = cluster.coordinator.clone();
        let setting = format!("-c idle_in_transaction_session_timeout={}", timeout.as_millis());
        let options = match coordinator.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {setting}"),
            _ => setting,
        };
        coordinator.options(&options);
        let pool = Pool::new(coordinator, cluster.ca_file.as_deref(), connections)
            .map_err(|error| ClusterError::Unreachable(super::error_chain(&error)))?;
        Ok(Self { pool, timeout })
    }

    /// Run `operation` on a pooled client within the bound.
    pub async fn with_client<T>(
        &self,
        operation: impl AsyncFnOnce(&mut Client) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        let work = async {
            let mut pooled =
                self.pool.get().await.map_err(|error| ClusterError::Unreachable(super::error_chain(&error)))?;
            let result = operation(pooled.client()).await;
            pooled.release(!matches!(result, Err(ClusterError::Unreachable(_))));
            result
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_elapsed) => Err(ClusterError::Unreachable(format!("no answer within {} s", self.timeout.as_secs()))),
        }
    }
}
