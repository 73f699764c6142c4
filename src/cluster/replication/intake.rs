//! A node's live ingest slot for one push stream: the lease `ingest:<stream>:<slot>`, the local
//! WAL its puts are appended to (a cache), and the replicator that stores that WAL's frames as
//! segment objects and indexes them. A put is acknowledged once its segment is indexed
//! ([`Replica::acknowledged`]); delivery sees records only then too ([`crate::wal::Wal::gated`]),
//! so every batch a next owner must re-send can be rebuilt from the object store.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::segments::SegmentRow;
use super::{Replication, slot_lease_key};
use crate::cluster::ClusterError;
use crate::pipeline::{AbortOnDrop, DeliveryState};
use crate::sources::shards::Boundaries;
use crate::wal::{Wal, WalOptions};

/// Exit status of a node whose ingest slot was taken over while it was cut off (see
/// [`fenced_exit`]).
pub const FENCED_EXIT_CODE: i32 = 75;

/// How far the replicator got, for the puts waiting on it.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every record below this sequence is in an indexed segment.
    replicated: u64,
    /// Set when the slot can replicate nothing more (lost, stopped).
    failed: Option<Arc<str>>,
}

/// What a put waits on: its records' segment indexed.
#[derive(Clone)]
pub struct Replica {
    progress: watch::Receiver<Progress>,
    timeout: Duration,
}

/// Why a put was not acknowledged (the client retries: `ServiceUnavailableException`).
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(
        "Slow down. The records are in this node's wal but not yet in the object store and the coordinator (waited {0:?}); retry"
    )]
    TimedOut(Duration),
    #[error("this node's ingest slot cannot take records: {0}; retry")]
    Failed(Arc<str>),
}

impl Replica {
    /// Wait until every record below `end` is stored and indexed, at most the ack timeout.
    pub async fn acknowledged(&self, end: u64) -> Result<(), ReplicaError> {
        let mut progress = self.progress.clone();
        let wait = async {
            loop {
                {
                    let now = progress.borrow_and_update();
                    if now.replicated >= end {
                        return Ok(());
                    }
                    if let Some(reason) = &now.failed {
                        return Err(ReplicaError::Failed(reason.clone()));
                    }
                }
                if progress.changed().await.is_err() {
                    return Err(ReplicaError::Failed("the replicator stopped".into()));
                }
            }
        };
        tokio::time::timeout(self.timeout, wait).await.unwrap_or(Err(ReplicaError::TimedOut(self.timeout)))
    }
}

/// A live ingest slot.
pub struct IntakeSlot {
    pub key: String,
    pub epoch: i64,
    /// Seeds the slot's batch ids (the same for whoever delivers it).
    pub generation: Uuid,
    /// Where puts are appended.
    pub wal: Wal,
    /// The same WAL as delivery sees it: up to what is replicated.
    pub gated: Wal,
    pub replica: Replica,
    replication: Arc<Replication>,
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl IntakeSlot {
    /// Open a new slot for `stream`: its lease (owned from the start), its row, a fresh local
    /// WAL in `options.dir` (anything there is an older slot's cache: its records are in the
    /// object store, delivered by whoever takes that slot), and the replicator.
    pub async fn open(replication: &Arc<Replication>, stream: &str, options: WalOptions) -> Result<Self, String> {
        let slot = Uuid::new_v4().simple().to_string();
        let key = slot_lease_key(stream, &slot);
        let leases = replication.states.leases().clone();
        let epoch = leases.create_owned(&key).await.map_err(|error| error.to_string())?;
        let resume = replication.states.open(&key, epoch).await.map_err(|error| error.to_string())?;
        let options = super::cache_options(options);
        let wal = tokio::task::spawn_blocking(move || Wal::open_cleared(options, 0))
            .await
            .map_err(|join| join.to_string())??;
        let (progress_tx, progress) = watch::channel(Progress::default());
        let (replicated_tx, replicated) = watch::channel(0);
        let (stop, stopped) = watch::channel(false);
        let replicator = Replicator {
            replication: replication.clone(),
            stream: stream.to_string(),
            slot,
            key: key.clone(),
            epoch,
            wal: wal.clone(),
            progress: progress_tx,
            replicated: replicated_tx,
        };
        let task = tokio::spawn(replicator.run(stopped));
        tracing::info!(stream, lease = %key, "ingest slot opened; puts are acknowledged once replicated");
        let timeout = Duration::from_millis(replication.config.ack_timeout_ms);
        Ok(Self {
            gated: wal.gated(replicated),
            wal,
            replica: Replica { progress, timeout },
            key,
            epoch,
            generation: resume.generation,
            replication: replication.clone(),
            stop,
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// The delivery loop's state: rows under the slot's lease.
    pub fn delivery_state(&self) -> Arc<dyn DeliveryState> {
        self.replication.states.delivery_state(&self.key, self.epoch, Arc::new(Boundaries::default()), None)
    }

    /// Stop taking puts: replicate what the WAL holds (bounded by `timeout`), then retire the
    /// slot when everything was delivered, else release its lease (another node — or this one
    /// after a restart — delivers the rest from the object store).
    pub async fn close(&self, timeout: Duration) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(mut task) = task else { return };
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
        }
        let committed = *self.wal.committed().borrow();
        let delivered = *self.wal.delivered().borrow();
        let leases = self.replication.states.leases().clone();
        if delivered >= committed {
            match super::retire_slot(&self.replication, &self.key, self.epoch).await {
                Ok(()) => tracing::info!(lease = %self.key, "ingest slot delivered to its end and retired"),
                Err(error) => {
                    tracing::warn!(lease = %self.key, %error, "cannot retire the ingest slot; another node will")
                }
            }
        } else if let Err(error) = leases.release(&self.key, self.epoch).await {
            tracing::warn!(lease = %self.key, %error, "cannot release the ingest slot; it expires by itself");
        } else {
            tracing::info!(lease = %self.key, undelivered = committed - delivered, "ingest slot released; another node delivers the rest from the object store");
        }
        leases.forget(&self.key, self.epoch);
    }
}

/// The task that turns the local WAL into indexed segments.
struct Replicator {
    replication: Arc<Replication>,
    stream: String,
    slot: String,
    key: String,
    epoch: i64,
    wal: Wal,
    progress: watch::Sender<Progress>,
    replicated: watch::Sender<u64>,
}

type Upload = BoxFuture<'static, Result<Result<(u64, u64), ClusterError>, tokio::task::JoinError>>;

/// An upload as a task of its own: it moves on (its PUT, then its index row) while the loop
/// reads the WAL, instead of only when the loop polls it. Dropping it (the loop stopping)
/// aborts it.
fn spawned(store: impl Future<Output = Result<(u64, u64), ClusterError>> + Send + 'static) -> Upload {
    Box::pin(AbortOnDrop(tokio::spawn(store)).join())
}

impl Replicator {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let config = &self.replication.config;
        let max_bytes = (config.max_segment_mib << 20) as usize;
        let min_bytes = (config.min_segment_kib << 10) as usize;
        let max_delay = Duration::from_millis(config.max_delay_ms);
        let mut committed = self.wal.committed();
        let mut reader = Some(self.wal.reader(0));
        // Frames read but not yet cut into a segment: bytes, first sequence, end sequence, and
        // when the oldest of them was read.
        let mut buffer: Vec<u8> = Vec::new();
        let mut buffer_first = 0;
        let mut read_to = 0;
        let mut oldest: Option<Instant> = None;
        let mut uploads: FuturesOrdered<Upload> = FuturesOrdered::new();
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        // Clean-up runs beside the loop: its requests must not hold up the uploads.
        let _cleaner = AbortOnDrop(tokio::spawn(clean_delivered(
            self.replication.clone(),
            self.stream.clone(),
            self.key.clone(),
            self.epoch,
            self.wal.delivered(),
        )));
        let mut stopping = false;
        let mut writer_open = true;
        let leases = self.replication.states.leases().clone();
        let mut lease_check = tokio::time::interval(leases.lease_duration() / 6);
        loop {
            let head = *committed.borrow_and_update();
            if head > read_to && buffer.len() < max_bytes {
                let Some(mut taken) = reader.take() else { break };
                let room = max_bytes - buffer.len();
                // The frames are copied as stored, straight onto the segment being filled.
                if buffer.is_empty() {
                    buffer_first = read_to;
                }
                let mut filling = std::mem::take(&mut buffer);
                if filling.capacity() == 0 {
                    // Room for a whole segment at once: no regrowing copies (pages are touched
                    // only as frames arrive).
                    filling.reserve(max_bytes);
                }
                let read = tokio::task::spawn_blocking(move || {
                    let read = taken.read_stored(head, room, &mut filling);
                    (taken, filling, read)
                })
                .await;
                match read {
                    Ok((taken, filled, Ok(()))) => {
                        buffer = filled;
                        read_to = taken.position();
                        reader = Some(taken);
                        oldest.get_or_insert_with(Instant::now);
                    }
                    Ok((_, _, Err(error))) => {
                        self.fail(format!("cannot read the local wal: {error}"));
                        return;
                    }
                    Err(join) => {
                        self.fail(format!("the wal read failed: {join}"));
                        return;
                    }
                }
                self.note_pending(&buffer, &in_flight);
            }
            let due = oldest.map(|oldest| oldest + max_delay);
            let cut = !buffer.is_empty()
                && uploads.len() < config.uploads_in_flight
                && (buffer.len() >= min_bytes || stopping || due.is_some_and(|due| Instant::now() >= due));
            if cut {
                let bytes = Bytes::from(std::mem::take(&mut buffer));
                in_flight.push_back(bytes.len() as u64);
                uploads.push_back(spawned(self.store(buffer_first, read_to, bytes)));
                oldest = None;
                continue;
            }
            if stopping && uploads.is_empty() && buffer.is_empty() && read_to >= *committed.borrow() {
                return;
            }
            let wait_for_uploads = !uploads.is_empty();
            tokio::select! {
                changed = committed.changed(), if buffer.len() < max_bytes && writer_open => {
                    if changed.is_err() {
                        // The WAL's writer is gone: nothing more comes; finish what was read.
                        writer_open = false;
                        stopping = true;
                    }
                }
                () = sleep_until(due), if due.is_some() && uploads.len() < config.uploads_in_flight => {}
                Some(stored) = uploads.next(), if wait_for_uploads => {
                    in_flight.pop_front();
                    match stored {
                        Ok(Ok((_, end))) => {
                            self.progress.send_modify(|progress| progress.replicated = end);
                            self.replicated.send_replace(end);
                        }
                        Ok(Err(error)) => {
                            fenced_exit(&self.key, &error);
                            self.fail(error.to_string());
                            return;
                        }
                        Err(join) => {
                            self.fail(format!("a wal segment upload stopped: {join}"));
                            return;
                        }
                    }
                    self.note_pending(&buffer, &in_flight);
                }
                _ = lease_check.tick() => {
                    // Lost at a renewal: another node adopted this slot while this one was cut off.
                    if leases.held().get(&self.key).is_none_or(|held| held.epoch != self.epoch) {
                        let error = ClusterError::Fenced { key: self.key.clone(), epoch: self.epoch };
                        fenced_exit(&self.key, &error);
                    }
                }
                changed = stop.changed(), if !stopping => {
                    stopping = changed.is_err() || *stop.borrow();
                }
            }
        }
    }

    fn note_pending(&self, buffer: &[u8], in_flight: &VecDeque<u64>) {
        let pending = buffer.len() as u64 + in_flight.iter().sum::<u64>();
        crate::metrics::WAL_REPLICATION_PENDING_BYTES.set(pending as i64);
    }

    fn fail(&self, reason: String) {
        tracing::error!(stream = %self.stream, lease = %self.key, %reason, "the ingest slot stopped replicating; puts are refused");
        self.progress.send_modify(|progress| progress.failed = Some(reason.into()));
    }

    /// Store one segment and index it, retrying (with backoff) whatever is not a fencing.
    fn store(
        &self,
        first: u64,
        end: u64,
        body: Bytes,
    ) -> impl Future<Output = Result<(u64, u64), ClusterError>> + use<> {
        let replication = self.replication.clone();
        let object_key = replication.segments.key(&self.stream, &self.slot, first, end);
        let (key, epoch, stream) = (self.key.clone(), self.epoch, self.stream.clone());
        async move {
            let started = std::time::Instant::now();
            let size = body.len() as u64;
            let mut backoff = Backoff::default();
            while let Err(error) = replication.segments.put(&object_key, body.clone()).await {
                tracing::warn!(%stream, object = %object_key, %error, "cannot store a wal segment; retrying (puts wait)");
                backoff.wait().await;
            }
            let row = SegmentRow { first_sequence: first, end_sequence: end, object_key };
            let mut backoff = Backoff::default();
            loop {
                match replication.index.insert(&key, epoch, &row, size).await {
                    Ok(()) => break,
                    Err(error @ ClusterError::Fenced { .. }) => return Err(error),
                    Err(error) => {
                        tracing::warn!(%stream, %error, "cannot index a wal segment; retrying (puts wait)");
                        backoff.wait().await;
                    }
                }
            }
            crate::metrics::WAL_REPLICATION_SEGMENTS.inc();
            crate::metrics::WAL_REPLICATION_BYTES.inc_by(size);
            crate::metrics::WAL_REPLICATION_SECONDS.observe(started.elapsed().as_secs_f64());
            Ok((first, end))
        }
    }
}

/// Forget and delete a slot's segments as delivery passes them (every record of a segment
/// delivered); a failed attempt is tried again at the next move.
async fn clean_delivered(
    replication: Arc<Replication>,
    stream: String,
    key: String,
    epoch: i64,
    mut delivered: watch::Receiver<u64>,
) {
    let mut cleaned = 0;
    while delivered.changed().await.is_ok() {
        let now = *delivered.borrow_and_update();
        if now <= cleaned {
            continue;
        }
        match replication.index.delete_below(&key, epoch, now).await {
            Ok(keys) => {
                cleaned = now;
                if let Err(error) = replication.segments.delete(&keys).await {
                    tracing::debug!(%stream, %error, "cannot delete delivered wal segments; the sweep will");
                }
            }
            Err(error) => tracing::debug!(%stream, %error, "cannot forget delivered wal segments yet"),
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with jitter, 100 ms to 5 s.
#[derive(Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    async fn wait(&mut self) {
        let base = 100u64.saturating_mul(1 << self.attempts.min(6)).min(5_000);
        self.attempts += 1;
        let jitter = rand::random::<u64>() % (base / 2 + 1);
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    }
}

/// A slot's lease moved on while this node could not renew it (paused, cut off from the
/// coordinator): another node now delivers everything this node acknowledged, and this node
/// must not take puts on a slot nobody will deliver. Like an HBase region server whose session
/// expired, the node stops at once; its supervisor restarts it and it joins with new slots.
fn fenced_exit(key: &str, error: &ClusterError) {
    if matches!(error, ClusterError::Fenced { .. }) {
        tracing::error!(lease = %key, %error, exit_code = FENCED_EXIT_CODE, "this node's ingest slot was taken over while it was cut off; exiting so that it rejoins with a new slot (nothing acknowledged is lost)");
        std::process::exit(FENCED_EXIT_CODE);
    }
}
