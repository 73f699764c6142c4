//! Stream lifecycle: the one place a stream is built — WAL, sink, delivery loop — from its
//! `StreamConfig`, and stopped again. YAML streams at start-up and at a reload
//! ([`crate::reload`]) and API-created streams at runtime (create, update, delete) go through the
//! same functions, so all of them run the same code.
//!
//! Each stream's delivery loop has its own stop channel: stopping one stream (delete, or a new
//! destination) lets its loop deliver what the WAL holds and end, without touching the others.
//!
//! Must not: answer HTTP or persist the catalog; the control plane does that around these calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::{LimitsConfig, StreamConfig, WalConfig};
use crate::metrics::{Metrics, StreamMetrics, WalSize};
use crate::pipeline::invoker::Invoker;
use crate::pipeline::{
    BatchingOptions, Delivery, DeliveryLoop, DeliveryState, FileState, IntentError, IntentLog, JqPartitioner,
    LambdaRouting, LambdaStage, MemoryBudget, Partitioner, PipelineError, Router,
};
use crate::processing::{Chain, PartitionKeys};
use crate::readiness::CheckedSink;
use crate::readiness::Readiness;
use crate::sources::StreamIngest;
use crate::stream_record::StreamRecord;
use crate::wal::{Wal, WalDirectory, WalOptions};

/// Why a stream could not be built or removed, or why its delivery ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot use data_dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("stream {stream}: {source}")]
    Checkpoint { stream: String, source: CheckpointError },
    #[error("stream {stream}: {source}")]
    Intent { stream: String, source: IntentError },
    #[error("stream {stream}: cannot build its sink: {source}")]
    Sink { stream: String, source: Box<spillway_sink_api::SinkError> },
    #[error("stream {stream}: {message}")]
    Processing { stream: String, message: String },
    #[error("stream {stream}: delivery stopped: {source}")]
    Pipeline { stream: String, source: PipelineError },
    /// The stream cannot run in this mode (a shard source in cluster mode, for now).
    #[error("stream {stream}: {message}")]
    Refused { stream: String, message: String },
}

/// What every stream's build shares.
pub struct StreamEnv {
    pub data_dir: PathBuf,
    pub wal: WalConfig,
    pub limits: LimitsConfig,
    pub instance_id: Uuid,
    pub budget: Arc<MemoryBudget>,
    pub metrics: Arc<Metrics>,
    /// `/ready`'s view of the sinks: each stream's sink joins it when its delivery starts.
    pub readiness: Arc<Readiness>,
    /// `server.region` / `server.account_id`: the `region` and `deliveryStreamArn` of Lambda events.
    pub region: String,
    pub account_id: String,
    /// Cluster mode: shard sources share their shards through leases, their state in the
    /// coordinator (see [`crate::cluster::sharing`]).
    pub shard_states: Option<Arc<crate::cluster::shard_state::ShardStates>>,
    /// Cluster mode with `wal.replication`: push streams take puts through an ingest slot whose
    /// segments are replicated (see [`crate::cluster::replication`]).
    pub replication: Option<Arc<crate::cluster::replication::Replication>>,
    /// The running streams' WALs by name, for streams that read another stream.
    pub wals: Arc<WalDirectory>,
    /// How long a stream removed or restarted with [`StopMode::Drain`] may take to deliver what
    /// it holds (`server.shutdown_grace_seconds`); a destination that is down must not hang a
    /// reload or a delete. What it could not deliver stays in its WAL.
    pub drain_timeout: Duration,
}

/// A stream's running parts: its WAL and, unless the WAL could not be opened, its delivery task.
struct Running {
    wal: Wal,
    metrics: Arc<StreamMetrics>,
    stopped: Arc<OnceLock<String>>,
    delivery: Option<DeliveryTask>,
    /// The pull source's readers (a tailed file, …) and their stop switch; none for push sources.
    readers: Readers,
    /// Cluster mode, a shard source: the task running the sub-streams of the shards this node
    /// leases (see [`crate::cluster::sharing`]); stopping it hands every shard over. With
    /// `wal.replication`, a push stream's task adopting dead nodes' ingest slots.
    shared: Option<Readers>,
    /// With `wal.replication`, a push stream's ingest slot: `wal` is its local cache.
    intake: Option<Arc<crate::cluster::replication::IntakeSlot>>,
}

/// A stream's pull-source reader tasks; they append to the WAL independently of delivery, so a
/// restart with a new destination leaves them running.
#[derive(Default)]
struct Readers {
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Readers {
    fn spawn(config: &StreamConfig, wal: &Wal, wals: &Arc<WalDirectory>, metrics: &Arc<StreamMetrics>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let tasks = config.source.descriptor().spawn_readers(crate::sources::ReaderContext {
            stream: &config.name,
            wal,
            wals,
            transforms: &config.processing.transforms,
            metrics,
            stop: stop_rx,
        });
        if tasks.is_empty() { Self::default() } else { Self { stop: Some(stop), tasks } }
    }

    /// Stop reading and wait (until `deadline`) for the current append to finish.
    async fn stop(self, deadline: tokio::time::Instant) {
        if let Some(stop) = self.stop {
            let _ = stop.send(true);
        }
        for task in self.tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
    }
}

/// How long the start-up sink check may take before the stream starts anyway.
const SINK_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A running delivery loop.
pub struct DeliveryTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), PipelineError>>,
    /// The sink this delivery writes to, for the background healthchecks.
    checked: CheckedSink,
}

impl DeliveryTask {
    /// Close open batches, deliver everything committed, end; abort after `timeout` (what is
    /// left stays in the WAL). `Ok(false)` when the timeout cut it short.
    pub async fn drain(self, timeout: Duration) -> Result<bool, PipelineError> {
        let _ = self.stop.send(true);
        let mut task = self.task;
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(result)) => result.map(|()| true),
            Ok(Err(join)) => Err(PipelineError::Join(join)),
            Err(_) => {
                task.abort();
                let _ = task.await;
                Ok(false)
            }
        }
    }

    /// End now; undelivered records stay in the WAL.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// The loop ended (delivered everything after a stop, or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// How a stream's delivery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Close open batches, deliver everything committed to the WAL, then end.
    Drain,
    /// End now; undelivered records stay in the WAL.
    Abort,
}

/// Builds, restarts and stops streams; owns their delivery tasks.
pub struct Lifecycle {
    env: StreamEnv,
    running: Mutex<BTreeMap<String, Running>>,
    /// Serialises control-plane changes (create, update, delete, tag), so two of them never
    /// interleave on one stream's files. Held across awaits, hence tokio's mutex.
    pub control: tokio::sync::Mutex<()>,
}

impl Lifecycle {
    pub fn new(env: StreamEnv) -> Self {
        Self { env, running: Mutex::new(BTreeMap::new()), control: tokio::sync::Mutex::new(()) }
    }

    pub fn env(&self) -> &StreamEnv {
        &self.env
    }

    pub fn data_dir(&self) -> &Path {
        &self.env.data_dir
    }

    /// The stream's folder under `data_dir` (WAL, checkpoint, intents).
    fn stream_dir(&self, name: &str) -> PathBuf {
        stream_dir(&self.env.data_dir, name)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Open the stream's WAL (on the blocking pool), build its sink and start its delivery loop.
    /// A WAL that cannot be opened stops only this stream: it is returned marked stopped with
    /// the reason, and gets no delivery loop.
    pub async fn start(&self, config: &StreamConfig, record: StreamRecord) -> Result<StreamIngest, StreamError> {
        let name = config.name.clone();
        // Two delivery loops on one WAL would deliver its records twice.
        if self.running().contains_key(&name) {
            return Err(StreamError::Refused { stream: name, message: "it runs already".to_string() });
        }
        // With `wal.replication` a push stream takes puts through a new ingest slot.
        let replication = self.env.replication.clone().filter(|_| config.source.descriptor().accepts_puts());
        let intake = match &replication {
            Some(replication) => {
                let slot = crate::cluster::replication::IntakeSlot::open(replication, &name, self.wal_options(config))
                    .await
                    .map_err(|message| StreamError::Refused {
                        stream: name.clone(),
                        message: format!("cannot open an ingest slot: {message}"),
                    })?;
                Some(Arc::new(slot))
            }
            None => None,
        };
        let opened = if let Some(slot) = &intake {
            OpenedWal { wal: slot.wal.clone(), failure: None }
        } else {
            let (dir, options) = (self.stream_dir(&name), self.wal_options(config));
            let numbering = numbering(&self.env.data_dir, &name);
            let name = name.clone();
            tokio::task::spawn_blocking(move || open_wal(&name, &dir, &numbering, options)).await.map_err(
                |join| StreamError::DataDir {
                    path: self.stream_dir(&config.name),
                    source: std::io::Error::other(join),
                },
            )??
        };
        let wal = opened.wal.clone();
        let probe_wal = wal.clone();
        let metrics = self.env.metrics.register(
            &name,
            config.sink.descriptor().type_name(),
            Box::new(move || WalSize {
                undelivered_bytes: probe_wal.undelivered_bytes(),
                disk_bytes: probe_wal.disk_bytes(),
            }),
        );
        let stopped = Arc::new(OnceLock::new());
        let delivery = match opened.failure {
            Some(reason) => {
                let _ = stopped.set(reason);
                None
            }
            None => {
                match self.start_delivery(config, record.version_id, &wal, &metrics, &stopped, intake.as_deref()).await
                {
                    Ok(delivery) => Some(delivery),
                    Err(error) => {
                        // Nothing was accepted yet through this build: undo it.
                        self.env.metrics.unregister(&name);
                        if let Some(slot) = &intake {
                            slot.close(Duration::from_secs(5)).await;
                        }
                        let _ = tokio::task::spawn_blocking(move || wal.close()).await;
                        return Err(error);
                    }
                }
            }
        };
        // A stream whose WAL could not be opened reads nothing.
        // Streams reading this one find its WAL here (a WAL that could not be opened has nothing
        // to give them).
        if delivery.is_some() {
            self.env.wals.insert(&name, wal.clone());
        }
        let shared = if delivery.is_some() { self.cluster_work(config, record.version_id, &metrics) } else { None };
        let readers = if delivery.is_some() && shared.is_none() {
            Readers::spawn(config, &wal, &self.env.wals, &metrics)
        } else {
            Readers::default()
        };
        self.running().insert(
            name,
            Running {
                wal: wal.clone(),
                metrics: metrics.clone(),
                stopped: stopped.clone(),
                delivery,
                readers,
                shared,
                intake: intake.clone(),
            },
        );
        let replica = intake.map(|slot| slot.replica.clone());
        Ok(StreamIngest { config: config.clone(), record: Arc::new(record), wal, metrics, stopped, replica })
    }

    /// Cluster mode, a shard source: the task that leases the stream's shards and runs a
    /// sub-stream per shard held, in place of the readers (the stream's own WAL stays empty).
    fn shared_shards(&self, config: &StreamConfig, version_id: u64, metrics: &Arc<StreamMetrics>) -> Option<Readers> {
        let states = self.env.shard_states.as_ref()?;
        let source = config.source.descriptor().shard_source(&config.name)?;
        let shared = crate::cluster::sharing::SharedStream {
            config: config.clone(),
            version_id,
            metrics: metrics.clone(),
            states: states.clone(),
            builder: self.delivery_builder(),
            stream_dir: self.stream_dir(&config.name),
            wal: self.wal_options(config),
            drain_timeout: self.env.drain_timeout,
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(crate::cluster::sharing::run(shared, source, stopped));
        Some(Readers { stop: Some(stop), tasks: vec![task] })
    }

    /// The stream's share of cluster work: adopting dead nodes' ingest slots (a push stream with
    /// `wal.replication`), or leasing its shards (a shard source); `None` otherwise.
    fn cluster_work(&self, config: &StreamConfig, version_id: u64, metrics: &Arc<StreamMetrics>) -> Option<Readers> {
        if config.source.descriptor().accepts_puts() {
            self.orphan_slots(config, version_id, metrics)
        } else {
            self.shared_shards(config, version_id, metrics)
        }
    }

    /// With `wal.replication`, a push stream: the task adopting dead nodes' ingest slots.
    fn orphan_slots(&self, config: &StreamConfig, version_id: u64, metrics: &Arc<StreamMetrics>) -> Option<Readers> {
        let orphans = crate::cluster::replication::recovery::OrphanSlots {
            replication: self.env.replication.clone()?,
            config: config.clone(),
            version_id,
            metrics: metrics.clone(),
            builder: self.delivery_builder(),
            stream_dir: self.stream_dir(&config.name),
            wal: self.wal_options(config),
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(crate::cluster::replication::recovery::run(orphans, stopped));
        Some(Readers { stop: Some(stop), tasks: vec![task] })
    }

    /// Stop the stream's delivery after it delivered what it holds, then start it again with
    /// `config` (a new destination) on the same WAL. Appends continue meanwhile.
    pub async fn restart(&self, config: &StreamConfig, record: StreamRecord) -> Result<StreamIngest, StreamError> {
        let name = config.name.clone();
        // A stream whose WAL could not be opened (stopped from its start, no delivery) stays
        // stopped; one whose last restart failed to build its delivery gets a new one.
        let delivers = self
            .running()
            .get(&name)
            .is_some_and(|current| current.delivery.is_some() || current.stopped.get().is_none());
        let stop_result = self.stop_delivery(&name, StopMode::Drain).await;
        let current = self
            .running()
            .get(&name)
            .map(|current| (current.wal.clone(), current.metrics.clone(), current.intake.clone()));
        let Some((wal, metrics, intake)) = current else {
            return self.start(config, record).await;
        };
        if let Err(error) = stop_result {
            // The old loop failed (its records stay in the WAL); the new sink gets a fresh try.
            tracing::warn!(stream = %name, %error, "delivery ended with an error before the restart");
        }
        // A stream whose WAL could not be opened has no delivery to restart and stays stopped.
        let stopped = match self.running().get(&name) {
            Some(current) if !delivers => current.stopped.clone(),
            _ => Arc::new(OnceLock::new()),
        };
        let delivery = if delivers {
            Some(self.start_delivery(config, record.version_id, &wal, &metrics, &stopped, intake.as_deref()).await?)
        } else {
            None
        };
        // Shared shards deliver through sub-streams of their own: hand them over and start
        // again with the new destination.
        let shared = self.running().get_mut(&name).and_then(|current| current.shared.take());
        let mut restarted = None;
        if let Some(readers) = shared {
            readers.stop(tokio::time::Instant::now() + self.env.drain_timeout + Duration::from_secs(30)).await;
            restarted = self.cluster_work(config, record.version_id, &metrics);
        }
        if let Some(current) = self.running().get_mut(&name) {
            current.delivery = delivery;
            current.stopped = stopped.clone();
            if restarted.is_some() {
                current.shared = restarted;
            }
        }
        let replica = intake.map(|slot| slot.replica.clone());
        Ok(StreamIngest { config: config.clone(), record: Arc::new(record), wal, metrics, stopped, replica })
    }

    /// End the stream's delivery (see [`StopMode`]), close its WAL and forget it. Returns the
    /// WAL's committed end and the checkpoint, so the caller can tell whether anything is left.
    pub async fn remove(&self, name: &str, mode: StopMode) -> Result<Removed, StreamError> {
        let readers = self.running().get_mut(name).map(|stream| std::mem::take(&mut stream.readers));
        if let Some(readers) = readers {
            readers.stop(tokio::time::Instant::now() + Duration::from_secs(30)).await;
        }
        let shared = self.running().get_mut(name).and_then(|stream| stream.shared.take());
        if let Some(shared) = shared {
            let handed_over = tokio::time::Instant::now() + self.env.drain_timeout + Duration::from_secs(30);
            shared.stop(handed_over).await;
        }
        // Streams reading this one wait for it to come back. Its own holds on other WALs stay
        // until the configuration no longer names it ([`Lifecycle::release_stale_holds`]): a
        // stream removed to restart with a changed source comes back at once.
        self.env.wals.remove(name);
        let stop_result = self.stop_delivery(name, mode).await;
        let Some(running) = self.running().remove(name) else {
            return Ok(Removed { committed: 0, delivered: 0 });
        };
        if let Err(error) = stop_result {
            tracing::warn!(stream = %name, %error, "delivery ended with an error while the stream was removed");
        }
        self.env.metrics.unregister(name);
        self.env.readiness.remove_sink(name);
        if let Some(slot) = &running.intake {
            slot.close(self.env.drain_timeout).await;
        }
        let wal = running.wal;
        let committed = *wal.committed().borrow();
        let dir = self.stream_dir(name);
        let checkpoint = Checkpoint::new(&dir);
        let stream = name.to_string();
        let delivered = tokio::task::spawn_blocking(move || {
            wal.close();
            checkpoint.load()
        })
        .await
        .map_err(|join| StreamError::DataDir { path: dir.clone(), source: std::io::Error::other(join) })?
        .map_err(|source| StreamError::Checkpoint { stream, source })?;
        Ok(Removed { committed, delivered })
    }

    /// Drop `reader`'s holds on every running stream's WAL: it reads none of them any more.
    async fn release_holds(&self, reader: &str) {
        for (upstream, wal) in self.env.wals.all() {
            if !wal.holders().iter().any(|holder| holder == reader) {
                continue;
            }
            let reader_name = reader.to_string();
            let released = tokio::task::spawn_blocking(move || wal.release_hold(&reader_name)).await;
            match released {
                Ok(Ok(())) => {
                    tracing::info!(stream = %upstream, reader = %reader, "a stream that read this one no longer does; its wal is no longer kept for it")
                }
                Ok(Err(error)) => {
                    tracing::warn!(stream = %upstream, reader = %reader, %error, "cannot release a removed reader's hold on the wal")
                }
                Err(join) => {
                    tracing::warn!(stream = %upstream, reader = %reader, error = %join, "cannot release a removed reader's hold on the wal")
                }
            }
        }
    }

    /// Release every hold on a running stream's WAL whose reader is not in `readers` (each
    /// upstream stream with the streams that read it now): at start-up (a reader removed from
    /// the file while spillway was stopped) and after a reload.
    pub async fn release_stale_holds(&self, readers: &BTreeMap<String, Vec<String>>) {
        let mut stale = std::collections::BTreeSet::new();
        for (upstream, wal) in self.env.wals.all() {
            let current = readers.get(&upstream);
            for holder in wal.holders() {
                if !current.is_some_and(|current| current.contains(&holder)) {
                    stale.insert(holder);
                }
            }
        }
        for reader in stale {
            self.release_holds(&reader).await;
        }
    }

    /// The sinks of every running delivery, for the background healthchecks.
    pub fn checked_sinks(&self) -> Vec<CheckedSink> {
        self.running()
            .values()
            .filter_map(|stream| stream.delivery.as_ref().map(|delivery| delivery.checked.clone()))
            .collect()
    }

    /// Stop every pull source's readers (intake ends with them), waiting until `deadline` at most.
    pub async fn stop_readers(&self, deadline: tokio::time::Instant) {
        // Shared shards are handed over here too: each delivers its open batches, then releases.
        let all: Vec<Readers> = self
            .running()
            .values_mut()
            .flat_map(|stream| [std::mem::take(&mut stream.readers), stream.shared.take().unwrap_or_default()])
            .collect();
        for readers in &all {
            if let Some(stop) = &readers.stop {
                let _ = stop.send(true);
            }
        }
        for readers in all {
            readers.stop(deadline).await;
        }
    }

    /// Stop every stream's delivery (each drains what its WAL holds) until `deadline`, then
    /// close every WAL. The first delivery error is returned.
    pub async fn shutdown(&self, deadline: tokio::time::Instant, grace: Duration) -> Option<StreamError> {
        let tasks: Vec<(String, DeliveryTask)> = {
            let mut running = self.running();
            running.iter_mut().filter_map(|(name, stream)| Some((name.clone(), stream.delivery.take()?))).collect()
        };
        for (_, delivery) in &tasks {
            let _ = delivery.stop.send(true);
        }
        let mut first_error = None;
        for (stream, delivery) in tasks {
            match tokio::time::timeout_at(deadline, delivery.task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(source))) => {
                    tracing::error!(%stream, error = %source, "delivery stopped with an error");
                    first_error.get_or_insert(StreamError::Pipeline { stream, source });
                }
                Ok(Err(join)) => tracing::error!(%stream, error = %join, "delivery task failed"),
                Err(_) => {
                    tracing::warn!(%stream, grace_seconds = grace.as_secs(), "grace period over; undelivered records stay in the wal for the next start")
                }
            }
        }
        let slots: Vec<_> = self.running().values().filter_map(|stream| stream.intake.clone()).collect();
        for slot in slots {
            slot.close(grace).await;
        }
        let wals: Vec<Wal> = self.running().values().map(|stream| stream.wal.clone()).collect();
        for wal in wals {
            let _ = tokio::task::spawn_blocking(move || wal.close()).await;
        }
        first_error
    }

    /// Stop the stream's delivery loop and wait for it; `Ok` when it had none.
    async fn stop_delivery(&self, name: &str, mode: StopMode) -> Result<(), PipelineError> {
        let delivery = self.running().get_mut(name).and_then(|stream| stream.delivery.take());
        let Some(delivery) = delivery else { return Ok(()) };
        if mode == StopMode::Abort {
            delivery.abort().await;
            return Ok(());
        }
        if !delivery.drain(self.env.drain_timeout).await? {
            tracing::warn!(
                stream = %name,
                grace_seconds = self.env.drain_timeout.as_secs(),
                "delivery did not finish within the grace period (is the destination down?); undelivered records stay in the wal"
            );
        }
        Ok(())
    }

    fn wal_options(&self, config: &StreamConfig) -> WalOptions {
        WalOptions {
            dir: self.stream_dir(&config.name).join("wal"),
            fsync: self.env.wal.fsync,
            fsync_interval: Duration::from_millis(self.env.wal.fsync_interval_ms),
            segment_bytes: self.env.wal.segment_mib << 20,
            max_bytes: self.env.limits.max_wal_mib << 20,
            full_wait: Duration::from_millis(self.env.limits.full_wait_ms),
            track_positions: !config.source.descriptor().accepts_puts(),
        }
    }

    /// Build the sink and the delivery loop for `config` over `wal`, and spawn the loop; its
    /// checkpoint and intents are files in the stream's folder.
    async fn start_delivery(
        &self,
        config: &StreamConfig,
        version_id: u64,
        wal: &Wal,
        metrics: &Arc<StreamMetrics>,
        stopped: &Arc<OnceLock<String>>,
        intake: Option<&crate::cluster::replication::IntakeSlot>,
    ) -> Result<DeliveryTask, StreamError> {
        if let Some(slot) = intake {
            // An ingest slot's delivery sees what is replicated; its state is the slot's rows.
            let place = DeliveryPlace {
                wal: slot.gated.clone(),
                state: slot.delivery_state(),
                instance_id: slot.generation,
                stopped: stopped.clone(),
            };
            return self.delivery_builder().spawn(config, version_id, metrics, place).await;
        }
        let name = config.name.clone();
        let stream_dir = self.stream_dir(&name);
        let intents = {
            let dir = stream_dir.clone();
            tokio::task::spawn_blocking(move || IntentLog::open(&dir))
                .await
                .map_err(|join| StreamError::DataDir { path: stream_dir.clone(), source: std::io::Error::other(join) })?
                .map_err(|source| StreamError::Intent { stream: name.clone(), source })?
        };
        let state = FileState::new(Checkpoint::new(&stream_dir), intents);
        let place =
            DeliveryPlace { wal: wal.clone(), state, instance_id: self.env.instance_id, stopped: stopped.clone() };
        self.delivery_builder().spawn(config, version_id, metrics, place).await
    }

    /// What building a delivery loop needs from the environment, for tasks that build their own
    /// (a shared shard's, in cluster mode).
    pub fn delivery_builder(&self) -> DeliveryBuilder {
        DeliveryBuilder {
            region: self.env.region.clone(),
            account_id: self.env.account_id.clone(),
            budget: self.env.budget.clone(),
            readiness: self.env.readiness.clone(),
        }
    }
}

/// Where a delivery loop reads, keeps its state and reports that it stopped.
pub struct DeliveryPlace {
    pub wal: Wal,
    pub state: Arc<dyn DeliveryState>,
    /// Seeds batch ids (see [`crate::pipeline::Intent::new`]).
    pub instance_id: Uuid,
    pub stopped: Arc<OnceLock<String>>,
}

/// Builds a stream's sink and delivery loop (see [`Lifecycle::delivery_builder`]).
#[derive(Clone)]
pub struct DeliveryBuilder {
    region: String,
    account_id: String,
    budget: Arc<MemoryBudget>,
    readiness: Arc<Readiness>,
}

impl DeliveryBuilder {
    /// Build the sink and the delivery loop for `config` at `place`, and spawn the loop.
    pub async fn spawn(
        &self,
        config: &StreamConfig,
        version_id: u64,
        metrics: &Arc<StreamMetrics>,
        place: DeliveryPlace,
    ) -> Result<DeliveryTask, StreamError> {
        let DeliveryPlace { wal, state, instance_id, stopped } = place;
        let wal = &wal;
        let name = config.name.clone();
        let stream_arn = format!("arn:aws:firehose:{}:{}:deliverystream/{name}", self.region, self.account_id);
        let context = spillway_sink_api::BuildContext { stream: &name, version_id, stream_arn: &stream_arn };
        let built = config
            .sink
            .descriptor()
            .build_in(&context)
            .await
            .map_err(|source| StreamError::Sink { stream: name.clone(), source: Box::new(source) })?;
        // A destination that is down is not a reason to refuse records (they wait in the WAL),
        // but the operator should hear about it at once, not at the first batch.
        match tokio::time::timeout(SINK_CHECK_TIMEOUT, built.sink.healthcheck()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(stream = %name, %error, "sink healthcheck failed at start; records wait in the wal")
            }
            Err(_) => tracing::warn!(
                stream = %name,
                timeout_seconds = SINK_CHECK_TIMEOUT.as_secs(),
                "sink healthcheck did not answer at start; records wait in the wal"
            ),
        }
        let partition_keys = config.processing.partition_keys();
        let partitioner: Option<Arc<dyn Partitioner>> = if partition_keys.is_empty() {
            None
        } else {
            let compiled = PartitionKeys::compile(&partition_keys).map_err(|problems| StreamError::Processing {
                stream: name.clone(),
                message: problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            })?;
            Some(Arc::new(JqPartitioner::new(compiled)))
        };
        let chain = Chain::build(&config.processing.transforms).map_err(|problems| StreamError::Processing {
            stream: name.clone(),
            message: problems
                .iter()
                .map(|(index, reason)| format!("processing.transforms[{index}]: {reason}"))
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        let before = Some(Arc::new(chain.before)).filter(|transforms| !transforms.is_empty());
        let mut router = Router::new(partitioner, before.clone(), config.record_delimiter());
        if let Some(lambda) = &chain.lambda {
            let stream_arn = format!("arn:aws:firehose:{}:{}:deliverystream/{name}", self.region, self.account_id);
            let invoker = Invoker::new(lambda, stream_arn, self.region.clone(), metrics.processing.clone())
                .map_err(|error| StreamError::Processing { stream: name.clone(), message: error.to_string() })?;
            let descriptor = config.sink.descriptor();
            let lambda_keys: std::collections::BTreeSet<String> = descriptor
                .partition_keys_in_prefix()
                .unwrap_or_default()
                .into_iter()
                .filter(|(source, _)| *source == crate::sinks::PartitionKeySource::Lambda)
                .map(|(_, key)| key)
                .collect();
            let stage = LambdaStage {
                invoker: Arc::new(invoker),
                before,
                size_bytes: lambda.buffer_size_bytes(),
                interval: Duration::from_secs(lambda.buffer_interval_seconds),
            };
            router = router.with_lambda(LambdaRouting {
                stage: Arc::new(stage),
                after: Some(Arc::new(chain.after)).filter(|transforms| !transforms.is_empty()),
                keys: lambda_keys.into_iter().collect(),
                optional_keys: descriptor.optional_lambda_keys().iter().map(|key| key.to_string()).collect(),
            });
        }
        let counted = built.sink.clone();
        metrics.set_sink_requests(Arc::new(move || counted.request_counts()));
        let recovery = crate::pipeline::retry::Recovery::default();
        let checked = CheckedSink {
            stream: name.clone(),
            sink: built.sink.clone(),
            metrics: metrics.clone(),
            recovery: recovery.clone(),
        };
        self.readiness.add_sink(&name, config.sink.descriptor().type_name());
        let delivery = Arc::new(Delivery {
            sink: built.sink,
            error_output: built.error_output,
            failure_output_type: built.failure_output_type,
            recovery,
            retry_duration: Duration::from_secs(config.retry_duration_seconds()),
            metrics: metrics.clone(),
            wal: wal.clone(),
            encoders: built.encoders.clone(),
            router: router.clone(),
        });
        let delivery_loop = DeliveryLoop {
            stream: name.clone(),
            wal: wal.clone(),
            state,
            delivery,
            instance_id,
            router,
            encoders: built.encoders,
            batching: BatchingOptions {
                size_bytes: (config.buffering.size_mib << 20) as usize,
                interval: Duration::from_secs(config.buffering.interval_seconds),
                max_partitions: config.processing.max_active_partitions(),
                full_batches_in_flight: config.sink.descriptor().full_batches_in_flight(),
            },
            budget: self.budget.clone(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let run = delivery_loop.run(stop_rx);
        let stopped = stopped.clone();
        let task = tokio::spawn(async move {
            let result = run.await;
            if let Err(error) = &result {
                // Only this stream stops; its records stay in the WAL.
                tracing::error!(stream_name = %name, %error, "delivery stopped; fix the cause and restart");
                let _ = stopped.set(error.to_string());
            }
            result
        });
        Ok(DeliveryTask { stop, task, checked })
    }
}

/// What [`Lifecycle::remove`] left behind: everything below `committed` was appended, everything
/// below `delivered` left for the sink or the error output.
#[derive(Debug, Clone, Copy)]
pub struct Removed {
    pub committed: u64,
    pub delivered: u64,
}

impl Removed {
    /// Whether records were appended that were not delivered.
    pub fn has_undelivered(&self) -> bool {
        self.committed > self.delivered
    }
}

/// Log what a stream reads and where it delivers (at start-up, and when a reload adds or changes it).
pub fn log_stream(config: &StreamConfig, message: &str) {
    let (source, sink) = (config.source.descriptor(), config.sink.descriptor());
    tracing::info!(
        stream = %config.name,
        source = %source.type_name(),
        origin = ?source.origin(),
        sink = %sink.type_name(),
        destination = ?sink.destination(),
        "{message}"
    );
}

pub fn stream_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("streams").join(name)
}

/// The stream's own folder, only when `name` is a valid stream name that stays one folder below
/// `data_dir/streams` (never `.`, `..` or a path): whatever removes or moves a stream's files
/// goes through this, so a name can never make it touch another stream's or `data_dir` itself.
pub fn owned_stream_dir(data_dir: &Path, name: &str) -> Option<PathBuf> {
    let mut components = Path::new(name).components();
    let one_normal_component =
        matches!((components.next(), components.next()), (Some(std::path::Component::Normal(_)), None));
    (one_normal_component && crate::config::is_valid_stream_name(name)).then(|| stream_dir(data_dir, name))
}

struct OpenedWal {
    wal: Wal,
    /// Why the WAL could not be opened; the stream is then stopped.
    failure: Option<String>,
}

/// Blocking: create the stream's folder and open its WAL from the stored checkpoint.
/// Where the numbering of a deleted stream is kept (its next sequence), so that a stream created
/// again under the name continues it: batch ids, object names and document ids derive from
/// sequences, and a repeat would be skipped as already loaded (PostgreSQL) or overwrite an old
/// document (OpenSearch).
pub fn numbering(data_dir: &Path, name: &str) -> Checkpoint {
    Checkpoint::new(&numbering_dir(data_dir, name))
}

/// The folder [`numbering`] is kept in (created by whoever stores it).
pub fn numbering_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("stream-numbering").join(name)
}

fn open_wal(
    name: &str,
    stream_dir: &Path,
    numbering: &Checkpoint,
    options: WalOptions,
) -> Result<OpenedWal, StreamError> {
    std::fs::create_dir_all(stream_dir)
        .map_err(|source| StreamError::DataDir { path: stream_dir.to_path_buf(), source })?;
    let checkpoint_error = |source| StreamError::Checkpoint { stream: name.to_string(), source };
    // A fresh folder under a deleted stream's name starts where that stream's numbering ended.
    let checkpoint = Checkpoint::new(stream_dir);
    let mut delivered = checkpoint.load().map_err(checkpoint_error)?;
    let kept = numbering.load().map_err(checkpoint_error)?;
    if kept > delivered {
        checkpoint.store(kept).map_err(checkpoint_error)?;
        delivered = kept;
    }
    let started = std::time::Instant::now();
    let wal_dir = options.dir.clone();
    let (wal, report) = match Wal::open(options, delivered) {
        Ok(opened) => opened,
        Err(error) => {
            // Only this stream stops; its files stay for `spillway wal inspect`.
            let reason = format!(
                "{error}; its wal files are kept: see `spillway wal inspect --stream {name}` and `spillway wal quarantine`"
            );
            tracing::error!(stream = %name, %error, "cannot open the wal; this stream is stopped, the others run");
            return Ok(OpenedWal { wal: Wal::unavailable(wal_dir), failure: Some(reason) });
        }
    };
    if let Some(truncated) = &report.truncated_tail {
        tracing::warn!(stream = %name, %truncated, "cut off a torn wal tail left by a crash (a write never acknowledged)");
    }
    tracing::info!(
        stream = %name,
        segments = report.segments,
        undelivered_records = report.next_sequence.saturating_sub(delivered),
        undelivered_bytes = wal.undelivered_bytes(),
        wal_disk_bytes = report.bytes,
        recovery_ms = started.elapsed().as_millis() as u64,
        "wal opened"
    );
    Ok(OpenedWal { wal, failure: None })
}
