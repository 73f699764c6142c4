//! Shard sharing: in cluster mode a stream with a shard source (`kinesis`, `dynamodb_streams`)
//! runs one **sub-stream per shard lease** this node holds: the shard's own WAL (a local cache
//! under `streams/<stream>/shards/<shard>/`), its reader, and its delivery loop, whose checkpoint
//! and intents live in the coordinator ([`super::shard_state`]). A claimed shard starts from the
//! coordinator's row — its local folder is discarded — so a new owner and a restarted old one do
//! the same thing: open the WAL at the resume sequence, read the shard from the resume position
//! (the records get the sequences the last owner gave them), re-send pending intents under their
//! ids and skip the records of done ones. Batch ids are seeded by the shard's generation, not
//! the node, so a re-sent batch lands on the same object key / batch id / document ids.
//!
//! One task per stream ([`run`]) discovers shards, keeps a lease per shard (children name their
//! parents), and every `lease_seconds / 3` applies [`super::balance::plan`]: claims its share,
//! asks a busier node for a lease, hands leases over (reader stopped, open batches delivered,
//! lease released), finishes closed shards once delivered (their children may start), and stops
//! at once any sub-stream whose lease is no longer valid (lost at renewal, or not renewed within
//! a lease period: the coordinator is unreachable). On stop (SIGTERM, reload, delete) every
//! lease is handed over the same way.
//!
//! Must not: write shard state without the fencing of [`super::shard_state`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::balance;
use super::leases::LeaseSpec;
use super::shard_state::{ShardResume, ShardStates};
use crate::config::StreamConfig;
use crate::metrics::StreamMetrics;
use crate::sources::shards::{self, Boundaries, Initial, Outcome, Position, ShardTarget, SharedShardSource, Start};
use crate::streams::{DeliveryBuilder, DeliveryPlace, DeliveryTask};
use crate::wal::{Wal, WalOptions};

/// How long a stopping reader may take to finish its current append.
const READER_STOP: Duration = Duration::from_secs(30);

/// What one stream's sharing task needs.
pub struct SharedStream {
    pub config: StreamConfig,
    pub version_id: u64,
    pub metrics: Arc<StreamMetrics>,
    pub states: Arc<ShardStates>,
    pub builder: DeliveryBuilder,
    /// The stream's folder; sub-streams live under `shards/`.
    pub stream_dir: PathBuf,
    /// The stream's WAL options (the folder is replaced per shard).
    pub wal: WalOptions,
    /// How long a hand-over may take to deliver a shard's open batches.
    pub drain_timeout: Duration,
}

/// The lease key of a shard: `<kind>:<stream>:<shard id>`.
pub fn lease_key(kind: &str, stream: &str, shard_id: &str) -> String {
    format!("{kind}:{stream}:{shard_id}")
}

/// One shard this node reads and delivers, under a lease.
struct SubStream {
    epoch: i64,
    wal: Wal,
    /// The shard's local folder (its WAL): a cache, removed when the shard leaves this node.
    dir: PathBuf,
    delivery: DeliveryTask,
    reader_stop: watch::Sender<bool>,
    /// `None` once it ended.
    reader: Option<JoinHandle<Outcome>>,
    /// The reader read the closed shard to its end.
    read_to_end: bool,
}

/// Run `stream`'s shard sharing until `stop`, then hand every lease over.
pub async fn run(stream: SharedStream, source: BoxFuture<'static, SharedShardSource>, mut stop: watch::Receiver<bool>) {
    let source = Arc::new(source.await);
    let name = stream.config.name.clone();
    let kind = source.api.kind();
    let prefix = lease_key(kind, &name, "");
    let leases = stream.states.leases().clone();
    let me = leases.node_id().to_string();
    let period = leases.lease_duration() / 3;
    let mut shards: BTreeMap<String, shards::ShardInfo> = BTreeMap::new();
    let mut next_discovery = tokio::time::Instant::now();
    let mut running: BTreeMap<String, SubStream> = BTreeMap::new();
    // Shards on their way out (handed over, or closed and finishing): their drains run beside
    // the loop, so a slow destination never holds up claims and take-overs of other shards.
    let mut leaving: JoinSet<()> = JoinSet::new();
    loop {
        while leaving.try_join_next().is_some() {}
        if *stop.borrow() {
            break;
        }
        if tokio::time::Instant::now() >= next_discovery {
            match source.api.list_shards().await {
                Ok(listed) => {
                    let specs: Vec<LeaseSpec> = listed
                        .iter()
                        .map(|(shard_id, info)| LeaseSpec {
                            key: lease_key(kind, &name, shard_id),
                            parents: info
                                .parents
                                .iter()
                                .filter(|parent| listed.contains_key(*parent))
                                .map(|parent| lease_key(kind, &name, parent))
                                .collect(),
                        })
                        .collect();
                    match leases.ensure_leases(&specs).await {
                        Ok(()) => {
                            shards = listed;
                            next_discovery = tokio::time::Instant::now() + source.settings.discovery_interval;
                        }
                        Err(error) => tracing::warn!(stream = %name, %error, "cannot record the {kind} shards' leases"),
                    }
                }
                Err(error) => {
                    tracing::warn!(stream = %name, %error, "cannot list {kind} shards; retrying");
                    next_discovery = tokio::time::Instant::now() + period;
                }
            }
        }

        // Sub-streams whose lease is gone stop now: another node may own the shard.
        let valid = leases.valid_leases();
        let lost: Vec<String> = running
            .iter()
            .filter(|(key, sub)| valid.get(key.as_str()) != Some(&sub.epoch))
            .map(|(key, _)| key.clone())
            .collect();
        for key in lost {
            if let Some(sub) = running.remove(&key) {
                tracing::warn!(stream = %name, lease = %key, "lease no longer held; the shard's reading and delivery stop");
                let epoch = sub.epoch;
                sub.abort().await;
                // Not renewed any more: once it expires it is claimed afresh (by this node too).
                leases.forget(&key, epoch);
            }
        }
        // Closed shards read to their end: deliver the rest, finish the lease (children may
        // start). A delivery that stopped (a failed write, a refused state write): give the
        // lease back, to be claimed afresh from the coordinator's state.
        let keys: Vec<String> = running.keys().cloned().collect();
        for key in keys {
            let Some(sub) = running.get_mut(&key) else { continue };
            sub.note_reader_end().await;
            if sub.delivery.is_finished() {
                if let Some(sub) = running.remove(&key) {
                    let epoch = sub.epoch;
                    sub.abort().await;
                    tracing::warn!(stream = %name, lease = %key, "shard delivery stopped; releasing its lease");
                    give_up(&leases, &key, epoch).await;
                }
            } else if sub.read_to_end
                && let Some(sub) = running.remove(&key)
            {
                leaving.spawn(finish_shard(name.clone(), stream.drain_timeout, leases.clone(), key, sub));
            }
        }

        match leases.scan().await {
            Ok((nodes, rows)) => {
                let live: Vec<String> = nodes.into_iter().filter(|node| node.alive).map(|node| node.node_id).collect();
                let states: Vec<balance::LeaseState> =
                    rows.into_iter().map(|row| row.state).filter(|state| state.key.starts_with(&prefix)).collect();
                let plan = balance::plan(&me, &live, &states);
                for key in &plan.hand_off {
                    if let Some(sub) = running.remove(key) {
                        tracing::info!(stream = %name, lease = %key, "handing a shard over on request");
                        leaving.spawn(hand_over(stream.drain_timeout, leases.clone(), key.clone(), sub));
                    }
                }
                let mut candidates = plan.claim_free.clone();
                candidates.extend(plan.take_expired.clone());
                if !candidates.is_empty() {
                    let max = candidates.len();
                    match leases.claim(&candidates, max).await {
                        Ok(claimed) => {
                            for claim in claimed {
                                let shard_id = claim.key[prefix.len()..].to_string();
                                match start(&stream, &source, &shards, &claim.key, &shard_id, claim.epoch).await {
                                    Ok(Some(sub)) => {
                                        running.insert(claim.key, sub);
                                    }
                                    Ok(None) => {
                                        let _ = leases.finish(&claim.key, claim.epoch).await;
                                    }
                                    Err(error) => {
                                        tracing::warn!(stream = %name, lease = %claim.key, %error, "cannot start the shard; releasing its lease");
                                        give_up(&leases, &claim.key, claim.epoch).await;
                                    }
                                }
                            }
                        }
                        Err(error) => tracing::warn!(stream = %name, %error, "cannot claim shard leases"),
                    }
                }
                if let Some(key) = &plan.request {
                    match leases.request_handoff(key).await {
                        Ok(true) => {
                            tracing::info!(stream = %name, lease = %key, "asked for a shard (under the fair share)")
                        }
                        Ok(false) => {}
                        Err(error) => tracing::debug!(stream = %name, %error, "cannot ask for a shard"),
                    }
                }
            }
            Err(error) => tracing::debug!(stream = %name, %error, "cannot scan the leases"),
        }
        stream.metrics.source.set_active_shards(running.len() as i64);

        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.changed() => {}
        }
    }
    // Hand everything over: each shard's open batches delivered, then its lease released.
    for (key, sub) in running {
        leaving.spawn(hand_over(stream.drain_timeout, leases.clone(), key, sub));
    }
    while leaving.join_next().await.is_some() {}
    stream.metrics.source.set_active_shards(0);
}

impl SubStream {
    /// Take note of a reader that ended: read to the end of a closed shard, or stopped.
    async fn note_reader_end(&mut self) {
        if self.reader.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(reader) = self.reader.take()
        {
            self.read_to_end = matches!(reader.await, Ok(Outcome::Finished));
        }
    }

    /// Stop reading and delivering now (the lease is gone: another node may send these batches).
    async fn abort(self) {
        let _ = self.reader_stop.send(true);
        if let Some(reader) = self.reader {
            reader.abort();
            let _ = reader.await;
        }
        self.delivery.abort().await;
        close_and_clear(self.wal, self.dir).await;
    }
}

/// A closed shard was read to its end: deliver what is left, then finish its lease (its children
/// may be claimed). If the last batches do not leave in time, release it instead.
async fn finish_shard(
    name: String,
    drain_timeout: Duration,
    leases: Arc<super::LeaseStore>,
    key: String,
    sub: SubStream,
) {
    let (key, leases) = (key.as_str(), &leases);
    let epoch = sub.epoch;
    let delivered = sub.delivery.drain(drain_timeout).await;
    close_and_clear(sub.wal, sub.dir).await;
    match delivered {
        Ok(true) => match leases.finish(key, epoch).await {
            Ok(()) => {
                tracing::info!(stream = %name, lease = %key, "shard read to its end and delivered; lease finished")
            }
            Err(error) => tracing::warn!(stream = %name, lease = %key, %error, "cannot finish the shard's lease"),
        },
        outcome => {
            tracing::warn!(stream = %name, lease = %key, ?outcome, "a closed shard's last batches did not leave; releasing its lease");
            give_up(leases, key, epoch).await;
        }
    }
}

/// Close a shard's WAL and remove its local folder (whoever owns the shard next starts from the
/// coordinator's state, never from this cache).
async fn close_and_clear(wal: Wal, dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || {
        wal.close();
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), %error, "cannot remove a shard's local folder");
        }
    })
    .await;
}

/// Give a lease back to be claimed afresh; when the coordinator does not answer, stop renewing
/// it (it expires and is taken over).
async fn give_up(leases: &Arc<super::LeaseStore>, key: &str, epoch: i64) {
    if leases.release(key, epoch).await.is_err() {
        leases.forget(key, epoch);
    }
}

/// Stop the shard's reader, deliver what it read (bounded by the drain timeout), release.
async fn hand_over(drain_timeout: Duration, leases: Arc<super::LeaseStore>, key: String, sub: SubStream) {
    let key = key.as_str();
    let _ = sub.reader_stop.send(true);
    if let Some(reader) = sub.reader
        && tokio::time::timeout(READER_STOP, reader).await.is_err()
    {
        tracing::warn!(lease = %key, "the shard reader did not stop in time");
    }
    match sub.delivery.drain(drain_timeout).await {
        Ok(true) => {}
        outcome => {
            tracing::warn!(lease = %key, ?outcome, "the shard's batches did not all leave before the hand-over; the next owner re-sends them")
        }
    }
    close_and_clear(sub.wal, sub.dir).await;
    match leases.release(key, sub.epoch).await {
        Ok(()) => {
            leases.note_handoff();
            tracing::info!(lease = %key, "shard lease handed over");
        }
        Err(error) => {
            leases.forget(key, sub.epoch);
            tracing::warn!(lease = %key, %error, "cannot release the shard lease; it expires by itself");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Cluster(#[from] super::ClusterError),
    #[error("{0}")]
    Local(String),
}

/// Start the sub-stream of a shard just claimed, from the coordinator's row; `None` when the
/// shard has nothing left to read or deliver (finish its lease).
async fn start(
    stream: &SharedStream,
    source: &Arc<SharedShardSource>,
    shards: &BTreeMap<String, shards::ShardInfo>,
    key: &str,
    shard_id: &str,
    epoch: i64,
) -> Result<Option<SubStream>, StartError> {
    let states = &stream.states;
    let resume = states.open(key, epoch).await?;
    let start = match resume.position.as_deref().map(Position::parse) {
        Some(Some(Position::After(sequence))) => Some(Start::After(sequence)),
        Some(Some(Position::StartedAt(ms))) => Some(Start::AtTimestamp(ms)),
        Some(Some(Position::Closed(_))) => None,
        Some(None) => {
            return Err(StartError::Local(format!("unreadable position {:?}", resume.position)));
        }
        None => first_start(stream, source, shards, key, shard_id, epoch).await?,
    };
    // A closed position is stored only once the checkpoint passed it: nothing is left to read
    // or deliver.
    let Some(start) = start else { return Ok(None) };
    let sub = open(stream, source, key, shard_id, epoch, &resume, start).await?;
    tracing::info!(stream = %stream.config.name, lease = %key, epoch, resume_sequence = resume.sequence, checkpoint = resume.checkpoint, position = ?resume.position, "reading a shared shard");
    Ok(Some(sub))
}

/// Where a shard never read before starts: its parents' children from their start, else as
/// configured (`LATEST` recorded as a time first, so the next owner starts at the same point).
async fn first_start(
    stream: &SharedStream,
    source: &Arc<SharedShardSource>,
    shards: &BTreeMap<String, shards::ShardInfo>,
    key: &str,
    shard_id: &str,
    epoch: i64,
) -> Result<Option<Start>, StartError> {
    let info = shards.get(shard_id);
    let has_listed_parent = info.is_some_and(|info| info.parents.iter().any(|parent| shards.contains_key(parent)));
    Ok(match source.settings.initial {
        Initial::TrimHorizon => Some(Start::TrimHorizon),
        Initial::AtTimestamp(ms) => Some(Start::AtTimestamp(ms)),
        Initial::Latest if has_listed_parent => Some(Start::TrimHorizon),
        Initial::Latest if info.is_some_and(|info| info.closed) => None,
        Initial::Latest => {
            let now = chrono::Utc::now().timestamp_millis();
            // Fenced: while this node holds the lease nobody else records a start meanwhile.
            stream.states.set_start(key, epoch, &Position::StartedAt(now).render()).await?;
            Some(Start::AtTimestamp(now))
        }
    })
}

/// Discard the shard's local folder, open its WAL at the resume sequence, start delivery and
/// (with a `start`) the reader.
async fn open(
    stream: &SharedStream,
    source: &Arc<SharedShardSource>,
    key: &str,
    shard_id: &str,
    epoch: i64,
    resume: &ShardResume,
    start: Start,
) -> Result<SubStream, StartError> {
    let dir = stream.stream_dir.join("shards").join(sanitize(shard_id));
    let options = WalOptions { dir: dir.join("wal"), track_positions: true, ..stream.wal.clone() };
    let resume_sequence = resume.sequence;
    let wal = tokio::task::spawn_blocking(move || Wal::open_cleared(options, resume_sequence))
        .await
        .map_err(|join| StartError::Local(join.to_string()))?
        .map_err(StartError::Local)?;
    let boundaries = Arc::new(Boundaries::default());
    let on_delivered: crate::cluster::shard_state::OnDelivered = {
        let (api, shard_id) = (source.api.clone(), shard_id.to_string());
        Arc::new(move |sequence: &str| api.delivered(&shard_id, sequence))
    };
    let place = DeliveryPlace {
        wal: wal.clone(),
        state: stream.states.delivery_state(key, epoch, boundaries.clone(), Some(on_delivered)),
        instance_id: resume.generation,
        stopped: Arc::new(OnceLock::new()),
    };
    let delivery = match stream.builder.spawn(&stream.config, stream.version_id, &stream.metrics, place).await {
        Ok(delivery) => delivery,
        Err(error) => {
            let _ = tokio::task::spawn_blocking(move || wal.close()).await;
            return Err(StartError::Local(error.to_string()));
        }
    };
    let (reader_stop, reader_stopped) = watch::channel(false);
    let reader = {
        let target = ShardTarget {
            stream: stream.config.name.clone(),
            wal: wal.clone(),
            metrics: stream.metrics.clone(),
            boundaries,
        };
        let (source, shard_id) = (source.clone(), shard_id.to_string());
        tokio::spawn(async move { shards::read_one_shard(&source, target, &shard_id, start, reader_stopped).await })
    };
    Ok(SubStream { epoch, wal, dir, delivery, reader_stop, reader: Some(reader), read_to_end: false })
}

/// A shard id as one folder name (ids are `[A-Za-z0-9_.-]` in both services; anything else is
/// replaced, and `.`/`..` cannot occur after the prefix).
fn sanitize(shard_id: &str) -> String {
    let cleaned: String = shard_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    format!("shard-{cleaned}")
}
