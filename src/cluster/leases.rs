//! The lease store: this node's registration and heartbeat, and its leases in PostgreSQL. Every
//! time is the database's `now()`, never this machine's clock; the one local clock use is a
//! conservative deadline (a lease counts as held only until `lease_seconds` after the last
//! renewal that was *sent*), so a node cut off from the coordinator stops before anyone else may
//! take over.
//!
//! - [`LeaseStore::claim`]: free or expired leases, locked `FOR UPDATE SKIP LOCKED` so concurrent
//!   claimers never wait on nor take the same row; the epoch grows by one on every claim; at most
//!   one expired-but-owned lease per call.
//! - [`LeaseStore::renew_all`]: one statement renews every lease held, each conditional on
//!   (owner, epoch); a lease missing from its answer was taken over: this node is fenced on it.
//! - [`LeaseStore::release`], [`LeaseStore::finish`], [`LeaseStore::fenced_execute`]: writes
//!   conditional on (owner, epoch); 0 rows is [`ClusterError::Fenced`].
//! - [`LeaseStore::request_handoff`]: a node under its share asks an owner for a lease.
//! - [`LeaseStore::scan`]: the live nodes and every lease, for the balancer and `cluster status`.
//!
//! Must not: decide what to claim (that is [`super::balance`]) or read shards.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::ClusterError;
use super::balance::LeaseState;
use super::config::ResolvedCluster;
use super::coordinator::Coordinator;
use crate::metrics::ClusterStats;

/// A lease this node holds: its fencing epoch, and until when it may act on it without a newer
/// renewal (local monotonic time, measured from when the renewal was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    pub epoch: i64,
    pub valid_until: Instant,
}

/// A lease this node just claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub key: String,
    pub epoch: i64,
    /// The owner whose expired lease this was (a take-over), if any.
    pub taken_from: Option<String>,
}

/// One node as `spillway_nodes` holds it, with ages from the database clock.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub node_id: String,
    pub advertise: String,
    pub version: String,
    pub lease_seconds: f64,
    pub heartbeat_age_seconds: f64,
    pub stopped: bool,
    /// Not stopped, and heartbeat within its own lease period.
    pub alive: bool,
}

/// One lease with its expiry relative to the database's now.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    pub state: LeaseState,
    pub epoch: i64,
    /// Seconds until it expires (negative: expired that long ago).
    pub expires_in_seconds: f64,
}

/// A lease to exist, with the leases that must finish before it may be claimed.
#[derive(Debug, Clone)]
pub struct LeaseSpec {
    pub key: String,
    pub parents: Vec<String>,
}

pub struct LeaseStore {
    coordinator: Coordinator,
    node_id: String,
    advertise: String,
    /// Tells this process from an earlier (or a concurrent) one with the same `node_id`.
    incarnation: String,
    lease: Duration,
    held: Mutex<BTreeMap<String, HeldLease>>,
    stats: Arc<ClusterStats>,
    /// Since when the coordinator has answered every heartbeat round (`None`: the last failed).
    reachable_since: Mutex<Option<Instant>>,
}

impl LeaseStore {
    /// A store for this node (no connection is made yet).
    pub fn new(cluster: &ResolvedCluster, stats: Arc<ClusterStats>) -> Result<Self, ClusterError> {
        // Two connections: the heartbeat never waits behind a long claim.
        let coordinator = Coordinator::new(cluster, 2)?;
        let lease = Duration::from_secs(cluster.lease_seconds);
        Ok(Self {
            coordinator,
            node_id: cluster.node_id.clone(),
            advertise: cluster.advertise.clone(),
            incarnation: Uuid::new_v4().to_string(),
            lease,
            held: Mutex::new(BTreeMap::new()),
            stats,
            reachable_since: Mutex::new(Some(Instant::now())),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    fn lease_seconds(&self) -> f64 {
        self.lease.as_secs_f64()
    }

    /// Run `operation` on a pooled client within the coordinator's bound.
    pub(crate) async fn with_client<T>(
        &self,
        operation: impl AsyncFnOnce(&mut Client) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        self.coordinator.with_client(operation).await
    }

    /// Create or migrate the schema (see [`super::schema`]).
    pub async fn migrate(&self) -> Result<i32, ClusterError> {
        self.with_client(async |client| super::schema::migrate(client).await).await
    }

    /// Join the cluster: insert or take over this node's row. A row of another process that is
    /// still alive (same `node_id`, heartbeat within its lease) is waited out for up to one
    /// lease period (a restart right after a crash), then refused. Leases the previous
    /// incarnation held are marked expired, so they are taken over (with a new epoch).
    pub async fn register(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + self.lease + Duration::from_secs(1);
        loop {
            let holder = self.with_client(async |client| self.try_register(client).await).await?;
            let Some(holder) = holder else { return Ok(()) };
            if Instant::now() >= deadline {
                return Err(ClusterError::NodeIdInUse { node_id: self.node_id.clone(), advertise: holder });
            }
            tracing::info!(node_id = %self.node_id, holder = %holder, "node_id was alive moments ago; waiting for its heartbeat to expire");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `None` when registered; else the live holder's advertised address.
    async fn try_register(&self, client: &mut Client) -> Result<Option<String>, ClusterError> {
        let transaction = client.transaction().await?;
        let version = env!("CARGO_PKG_VERSION");
        let lease_seconds = self.lease_seconds();
        let registered = transaction
            .query_opt(
                "INSERT INTO spillway_nodes AS n (node_id, incarnation, advertise, version, lease_seconds)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (node_id) DO UPDATE SET incarnation = excluded.incarnation,
                     advertise = excluded.advertise, version = excluded.version,
                     lease_seconds = excluded.lease_seconds, started_at = now(), heartbeat_at = now(),
                     stopped_at = NULL, yaml_streams = NULL
                 WHERE n.stopped_at IS NOT NULL OR n.incarnation = excluded.incarnation
                     OR n.heartbeat_at <= now() - n.lease_seconds * interval '1 second'
                 RETURNING node_id",
                &[&self.node_id, &self.incarnation, &self.advertise, &version, &lease_seconds],
            )
            .await?;
        if registered.is_none() {
            let holder: String = transaction
                .query_one("SELECT advertise FROM spillway_nodes WHERE node_id = $1", &[&self.node_id])
                .await?
                .get(0);
            return Ok(Some(holder));
        }
        transaction.execute("UPDATE spillway_leases SET expires_at = now() WHERE owner = $1", &[&self.node_id]).await?;
        transaction.commit().await?;
        Ok(None)
    }

    /// Prove this node alive. [`ClusterError::Replaced`] when another process registered this
    /// `node_id` meanwhile (it judged this one dead).
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        let updated = self
            .with_client(async |client| {
                Ok(client
                    .execute(
                        "UPDATE spillway_nodes SET heartbeat_at = now() WHERE node_id = $1 AND incarnation = $2",
                        &[&self.node_id, &self.incarnation],
                    )
                    .await?)
            })
            .await?;
        if updated == 0 {
            return Err(ClusterError::Replaced { node_id: self.node_id.clone() });
        }
        Ok(())
    }

    /// Leave cleanly: release every lease held and mark the node stopped.
    pub async fn deregister(&self) -> Result<(), ClusterError> {
        for (key, held) in self.held() {
            match self.release(&key, held.epoch).await {
                Ok(()) | Err(ClusterError::Fenced { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        self.with_client(async |client| {
            client
                .execute(
                    "UPDATE spillway_nodes SET stopped_at = now() WHERE node_id = $1 AND incarnation = $2",
                    &[&self.node_id, &self.incarnation],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Make sure these leases exist (new shards); existing ones are left as they are.
    pub async fn ensure_leases(&self, specs: &[LeaseSpec]) -> Result<(), ClusterError> {
        self.with_client(async |client| {
            let transaction = client.transaction().await?;
            let insert = transaction
                .prepare(
                    "INSERT INTO spillway_leases (lease_key, parent_keys) VALUES ($1, $2)
                     ON CONFLICT (lease_key) DO NOTHING",
                )
                .await?;
            for spec in specs {
                transaction.execute(&insert, &[&spec.key, &spec.parents]).await?;
            }
            transaction.commit().await?;
            Ok(())
        })
        .await
    }

    /// Create a new lease already owned by this node (epoch 1): a key nobody else can know yet
    /// (a fresh ingest slot), so no other node can claim it between its creation and its claim.
    pub async fn create_owned(&self, key: &str) -> Result<i64, ClusterError> {
        let sent = Instant::now();
        let lease_seconds = self.lease_seconds();
        let epoch: i64 = self
            .with_client(async |client| {
                let row = client
                    .query_one(
                        "INSERT INTO spillway_leases (lease_key, owner, epoch, expires_at)
                         VALUES ($1, $2, 1, now() + $3 * interval '1 second') RETURNING epoch",
                        &[&key, &self.node_id, &lease_seconds],
                    )
                    .await?;
                Ok(row.get(0))
            })
            .await?;
        let mut held = self.lock_held();
        held.insert(key.to_string(), HeldLease { epoch, valid_until: sent + self.lease });
        self.stats.leases_held.store(held.len() as i64, Ordering::Relaxed);
        Ok(epoch)
    }

    /// Claim up to `max` of `candidates` that are free (or reserved for this node), not
    /// finished and not waiting for a parent, plus — only while room is left — at most one
    /// expired lease of another (or an earlier) owner. Each claim raises the epoch by one.
    pub async fn claim(&self, candidates: &[String], max: usize) -> Result<Vec<Claimed>, ClusterError> {
        if candidates.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let sent = Instant::now();
        let lease_seconds = self.lease_seconds();
        let claimed = self
            .with_client(async |client| {
                let transaction = client.transaction().await?;
                let rows = transaction
                    .query(
                        "SELECT l.lease_key, l.owner FROM spillway_leases l
                         WHERE l.lease_key = ANY($1) AND NOT l.finished
                           AND (l.owner IS NULL OR l.expires_at <= now())
                           AND (l.requested_by IS NULL OR l.requested_by = $2
                                OR l.requested_at <= now() - $3 * interval '1 second')
                           AND NOT EXISTS (SELECT 1 FROM spillway_leases p
                                           WHERE p.lease_key = ANY(l.parent_keys) AND NOT p.finished)
                         ORDER BY l.owner IS NOT NULL, l.lease_key
                         FOR UPDATE OF l SKIP LOCKED",
                        &[&candidates, &self.node_id, &lease_seconds],
                    )
                    .await?;
                let mut chosen: Vec<(String, Option<String>)> = Vec::new();
                let mut took_expired = false;
                for row in rows {
                    if chosen.len() == max {
                        break;
                    }
                    let (key, owner): (String, Option<String>) = (row.get(0), row.get(1));
                    if owner.is_some() {
                        if took_expired {
                            continue;
                        }
                        took_expired = true;
                    }
                    chosen.push((key, owner));
                }
                if chosen.is_empty() {
                    return Ok(Vec::new());
                }
                let keys: Vec<&str> = chosen.iter().map(|(key, _)| key.as_str()).collect();
                let updated = transaction
                    .query(
                        "UPDATE spillway_leases SET owner = $2, epoch = epoch + 1,
                             expires_at = now() + $3 * interval '1 second',
                             requested_by = NULL, requested_at = NULL, updated_at = now()
                         WHERE lease_key = ANY($1) RETURNING lease_key, epoch",
                        &[&keys, &self.node_id, &lease_seconds],
                    )
                    .await?;
                transaction.commit().await?;
                let previous: BTreeMap<String, Option<String>> = chosen.into_iter().collect();
                Ok(updated
                    .into_iter()
                    .map(|row| {
                        let key: String = row.get(0);
                        let taken_from = previous.get(&key).cloned().flatten();
                        Claimed { key, epoch: row.get(1), taken_from }
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut held = self.lock_held();
        for claim in &claimed {
            held.insert(claim.key.clone(), HeldLease { epoch: claim.epoch, valid_until: sent + self.lease });
            if let Some(from) = &claim.taken_from {
                self.stats.lease_takeovers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(lease = %claim.key, epoch = claim.epoch, from = %from, "took over an expired lease");
            }
        }
        self.stats.leases_held.store(held.len() as i64, Ordering::Relaxed);
        Ok(claimed)
    }

    /// Renew every lease held, in one statement conditional on (owner, epoch) for each. Returns
    /// the keys lost since the last renewal (taken over: this node is fenced on them; they are
    /// forgotten here) and the hand-off requests on leases still held (key → requester).
    pub async fn renew_all(&self) -> Result<Renewal, ClusterError> {
        let snapshot = self.held();
        let sent = Instant::now();
        let (keys, epochs): (Vec<&str>, Vec<i64>) =
            snapshot.iter().map(|(key, held)| (key.as_str(), held.epoch)).unzip();
        let lease_seconds = self.lease_seconds();
        let rows = self
            .with_client(async |client| {
                Ok(client
                    .query(
                        "UPDATE spillway_leases AS l SET expires_at = now() + $2 * interval '1 second',
                             updated_at = now()
                         FROM unnest($3::text[], $4::bigint[]) AS held(lease_key, epoch)
                         WHERE l.lease_key = held.lease_key AND l.owner = $1 AND l.epoch = held.epoch
                         RETURNING l.lease_key,
                             CASE WHEN l.requested_at > now() - $2 * interval '1 second' THEN l.requested_by END",
                        &[&self.node_id, &lease_seconds, &keys, &epochs],
                    )
                    .await?)
            })
            .await?;
        let mut renewal = Renewal::default();
        let mut renewed = std::collections::BTreeSet::new();
        for row in rows {
            let key: String = row.get(0);
            if let Some(requester) = row.get::<_, Option<String>>(1) {
                renewal.requests.insert(key.clone(), requester);
            }
            renewed.insert(key);
        }
        let mut held = self.lock_held();
        for (key, before) in &snapshot {
            // Only what this renewal covered: a lease claimed or released meanwhile is left alone.
            if held.get(key) != Some(before) {
                continue;
            }
            if renewed.contains(key) {
                if let Some(entry) = held.get_mut(key) {
                    entry.valid_until = sent + self.lease;
                }
            } else {
                held.remove(key);
                renewal.lost.push(key.clone());
                self.stats.fenced_writes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(lease = %key, epoch = before.epoch, "lease lost to another node; fenced");
            }
        }
        self.stats.leases_held.store(held.len() as i64, Ordering::Relaxed);
        Ok(renewal)
    }

    /// Give a lease up (hand-off or shutdown); a pending request of a node still alive keeps it
    /// reserved for that requester for one lease period (a requester that died meanwhile reserves
    /// nothing: anyone may claim it at once). [`ClusterError::Fenced`] when it was no longer ours.
    pub async fn release(&self, key: &str, epoch: i64) -> Result<(), ClusterError> {
        let updated = self
            .with_client(async |client| {
                Ok(client
                    .execute(
                        "WITH requester_alive AS (
                             SELECT EXISTS (SELECT 1 FROM spillway_leases l JOIN spillway_nodes n ON n.node_id = l.requested_by
                                            WHERE l.lease_key = $1 AND n.stopped_at IS NULL
                                              AND n.heartbeat_at > now() - n.lease_seconds * interval '1 second') AS alive)
                         UPDATE spillway_leases SET owner = NULL, expires_at = now(), updated_at = now(),
                             requested_by = CASE WHEN (SELECT alive FROM requester_alive) THEN requested_by END,
                             requested_at = CASE WHEN (SELECT alive FROM requester_alive) THEN now() END
                         WHERE lease_key = $1 AND owner = $2 AND epoch = $3",
                        &[&key, &self.node_id, &epoch],
                    )
                    .await?)
            })
            .await?;
        self.forget(key, epoch);
        if updated == 0 {
            return Err(self.fenced(key, epoch));
        }
        Ok(())
    }

    /// The lease's work is done for good (a closed shard read to its end and delivered): its
    /// children may be claimed now.
    pub async fn finish(&self, key: &str, epoch: i64) -> Result<(), ClusterError> {
        let updated = self
            .with_client(async |client| {
                Ok(client
                    .execute(
                        "UPDATE spillway_leases SET finished = true, owner = NULL, expires_at = now(),
                             updated_at = now()
                         WHERE lease_key = $1 AND owner = $2 AND epoch = $3",
                        &[&key, &self.node_id, &epoch],
                    )
                    .await?)
            })
            .await?;
        self.forget(key, epoch);
        if updated == 0 {
            return Err(self.fenced(key, epoch));
        }
        Ok(())
    }

    /// Ask the owner of a live lease to hand it over. False when it is free, ours, or already
    /// asked for by another node within the last lease period.
    pub async fn request_handoff(&self, key: &str) -> Result<bool, ClusterError> {
        let lease_seconds = self.lease_seconds();
        let updated = self
            .with_client(async |client| {
                Ok(client
                    .execute(
                        "UPDATE spillway_leases SET requested_by = $2, requested_at = now()
                         WHERE lease_key = $1 AND owner IS NOT NULL AND owner <> $2 AND NOT finished
                           AND (requested_by IS NULL OR requested_by = $2
                                OR requested_at <= now() - $3 * interval '1 second')",
                        &[&key, &self.node_id, &lease_seconds],
                    )
                    .await?)
            })
            .await?;
        Ok(updated == 1)
    }

    /// Run one write only while this node still owns `key` at `epoch`: the lease row is locked
    /// `FOR SHARE` in the same transaction (no claim can commit in between), then `statement`
    /// runs and both commit together. [`ClusterError::Fenced`] — and nothing written — when the
    /// lease has moved on. Returns the rows `statement` touched.
    pub async fn fenced_execute(
        &self,
        key: &str,
        epoch: i64,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, ClusterError> {
        let outcome = self
            .with_client(async |client| {
                let transaction = client.transaction().await?;
                let owned = transaction
                    .query_opt(
                        "SELECT 1 FROM spillway_leases WHERE lease_key = $1 AND owner = $2 AND epoch = $3 FOR SHARE",
                        &[&key, &self.node_id, &epoch],
                    )
                    .await?;
                if owned.is_none() {
                    return Ok(None);
                }
                let rows = transaction.execute(statement, params).await?;
                transaction.commit().await?;
                Ok(Some(rows))
            })
            .await?;
        match outcome {
            Some(rows) => Ok(rows),
            None => {
                self.forget(key, epoch);
                Err(self.fenced(key, epoch))
            }
        }
    }

    /// Every node and every lease, as the database sees them now.
    pub async fn scan(&self) -> Result<(Vec<NodeRow>, Vec<LeaseRow>), ClusterError> {
        self.with_client(async |client| read_cluster(client, self.lease_seconds()).await).await
    }

    /// The leases held now, with their local validity deadlines.
    pub fn held(&self) -> BTreeMap<String, HeldLease> {
        self.lock_held().clone()
    }

    /// The leases this node may act on now: held, and renewed within the last lease period.
    pub fn valid_leases(&self) -> BTreeMap<String, i64> {
        let now = Instant::now();
        self.lock_held()
            .iter()
            .filter(|(_, held)| held.valid_until > now)
            .map(|(key, held)| (key.clone(), held.epoch))
            .collect()
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HeldLease>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn forget(&self, key: &str, epoch: i64) {
        let mut held = self.lock_held();
        if held.get(key).is_some_and(|lease| lease.epoch == epoch) {
            held.remove(key);
        }
        self.stats.leases_held.store(held.len() as i64, Ordering::Relaxed);
    }

    /// Record whether the last heartbeat round reached the coordinator.
    pub(crate) fn note_reachable(&self, reachable: bool) {
        let mut since = self.reachable_since.lock().unwrap_or_else(PoisonError::into_inner);
        match (reachable, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, _) => *since = None,
            (true, Some(_)) => {}
        }
    }

    /// How long the coordinator has answered every heartbeat round. After an outage every live
    /// node needs up to a third of a lease to renew what it holds: until this node has been back
    /// for a whole lease period, an expired lease may belong to a live node that has not renewed
    /// yet.
    pub fn reachable_for(&self) -> Duration {
        self.reachable_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Count a lease handed over to another node.
    pub(crate) fn note_handoff(&self) {
        self.stats.lease_handoffs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fenced(&self, key: &str, epoch: i64) -> ClusterError {
        self.stats.fenced_writes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(lease = %key, epoch, "write refused: the lease has moved on (fenced)");
        ClusterError::Fenced { key: key.to_string(), epoch }
    }
}

/// What one [`LeaseStore::renew_all`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// Leases taken over since: stop working on them at once.
    pub lost: Vec<String>,
    /// Hand-off requests on leases still held: key → requesting node.
    pub requests: BTreeMap<String, String>,
}

/// Nodes and leases with ages computed by the database. A hand-off request older than
/// `lease_seconds` (the reader's) no longer counts.
pub async fn read_cluster(client: &Client, lease_seconds: f64) -> Result<(Vec<NodeRow>, Vec<LeaseRow>), ClusterError> {
    let nodes = client
        .query(
            "SELECT node_id, advertise, version, lease_seconds,
                 extract(epoch FROM now() - heartbeat_at)::float8,
                 stopped_at IS NOT NULL,
                 stopped_at IS NULL AND heartbeat_at > now() - lease_seconds * interval '1 second'
             FROM spillway_nodes ORDER BY node_id",
            &[],
        )
        .await?
        .into_iter()
        .map(|row| NodeRow {
            node_id: row.get(0),
            advertise: row.get(1),
            version: row.get(2),
            lease_seconds: row.get(3),
            heartbeat_age_seconds: row.get(4),
            stopped: row.get(5),
            alive: row.get(6),
        })
        .collect();
    let leases = client
        .query(
            "SELECT l.lease_key, l.owner, l.expires_at <= now(),
                 CASE WHEN l.requested_at > now() - $1 * interval '1 second' THEN l.requested_by END,
                 l.finished,
                 EXISTS (SELECT 1 FROM spillway_leases p WHERE p.lease_key = ANY(l.parent_keys) AND NOT p.finished),
                 l.epoch, extract(epoch FROM l.expires_at - now())::float8
             FROM spillway_leases l ORDER BY l.lease_key",
            &[&lease_seconds],
        )
        .await?
        .into_iter()
        .map(|row| LeaseRow {
            state: LeaseState {
                key: row.get(0),
                owner: row.get(1),
                expired: row.get(2),
                requested_by: row.get(3),
                finished: row.get(4),
                blocked: row.get(5),
            },
            epoch: row.get(6),
            expires_in_seconds: row.get(7),
        })
        .collect();
    Ok((nodes, leases))
}
