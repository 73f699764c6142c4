//! Wiring: builds the catalog ([`FolderCatalog`] under `data_dir`) and the stream lifecycle, starts
//! every stream — the YAML ones, then those created through the API (from the catalog) — through
//! [`crate::streams::Lifecycle`], hands both to the control plane ([`crate::control`]) through
//! [`Ingest`], serves the HTTP front, and shuts down in order: stop intake → flush buffers →
//! finish deliveries → commit checkpoints → close the WAL. A stream whose WAL cannot be opened (damage, I/O) is marked stopped with the
//! reason and gets no delivery loop; every other stream runs. [`App::reloader`] hands the same
//! streams to [`crate::reload`] for SIGHUP and `--watch-config`; shutdown waits for a reload
//! under way and allows no new one. With `cluster:` the node joins the cluster before any stream
//! starts ([`crate::cluster::Membership`]), keeps its catalog in the coordinator (every node runs
//! every API-created stream, [`crate::control::follow`]), and leaves the cluster last on shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::checkpoint::write_atomically;
use crate::cluster::Membership;
use crate::cluster::shard_state::ShardStates;
use crate::config::Config;
use crate::control::Control;
use crate::control::catalog::{self, Catalog, CatalogError, FolderCatalog};
use crate::data_dir::DataDirLock;
use crate::metrics::Metrics;
use crate::pipeline::MemoryBudget;
use crate::reload::Reloader;
use crate::server::health::{self, Readiness};
use crate::server::serve::{ConnectionLimits, ConnectionStats};
use crate::server::tls::TlsError;
use crate::sources::Ingest;
use crate::streams::{Lifecycle, StreamEnv, StreamError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot use data_dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("stream {stream}: {source}")]
    Catalog { stream: String, source: CatalogError },
    #[error("stream {stream}: {message}")]
    Processing { stream: String, message: String },
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("http server failed: {0}")]
    Server(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Lock(#[from] crate::data_dir::LockError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A running spillway: the HTTP server and the streams' lifecycle (one delivery loop per stream).
pub struct App {
    addr: SocketAddr,
    /// Serving HTTPS (`server.tls`).
    https: bool,
    stop_intake: watch::Sender<bool>,
    server: JoinHandle<Result<(), std::io::Error>>,
    lifecycle: Arc<Lifecycle>,
    ingest: Arc<Ingest>,
    control: Control,
    reloader: Option<Arc<Reloader>>,
    grace: Duration,
    readiness: Arc<Readiness>,
    /// Cluster mode: this node's membership (heartbeat, leases); left on shutdown.
    membership: Option<Membership>,
    /// Cluster mode: the task applying other nodes' catalog changes; awaited on shutdown, so it
    /// never starts a stream the shutdown would not stop.
    follower: Option<JoinHandle<()>>,
    /// Released when the app is dropped (after shutdown) or the process dies.
    _data_dir_lock: DataDirLock,
}

impl App {
    pub async fn start(config: Config) -> Result<App, AppError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| AppError::DataDir { path: data_dir.clone(), source })?;
        // Before anything in the folder is read or written: one process per data_dir.
        let data_dir_lock = DataDirLock::acquire(&data_dir)?;
        let instance_id = load_or_create_instance_id(&data_dir)?;
        // Before any stream starts: a bad certificate or key stops the start with nothing begun.
        let tls_acceptor = match &config.server.tls {
            Some(tls) => Some(crate::server::tls::load_acceptor(tls).await?),
            None => None,
        };

        // Bound before any stream starts: a port in use stops the start with nothing begun, and
        // cluster mode advertises the port actually bound.
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| AppError::Listen { addr, source })?;
        let addr = listener.local_addr().map_err(|source| AppError::Listen { addr, source })?;

        let metrics = Arc::new(Metrics::default());
        let budget = MemoryBudget::new((config.limits.max_open_batches_mib << 20) as usize);
        metrics.register_open_batch_budget(budget.clone());
        // Sinks join it as their streams start (YAML now, API streams at any time).
        let readiness = Readiness::new(std::iter::empty());
        // Cluster mode: join before any stream starts, so an unreachable coordinator, refused
        // credentials or a newer schema stop the start with nothing begun.
        let resolved_cluster = match &config.cluster {
            Some(cluster) => Some(cluster.resolve(&data_dir, addr).map_err(crate::cluster::ClusterError::Config)?),
            None => None,
        };
        let mut membership = match &resolved_cluster {
            Some(resolved) => {
                let stats = Arc::new(crate::metrics::ClusterStats::default());
                metrics.register_cluster(stats.clone());
                Some(Membership::join(resolved, stats, readiness.clone()).await?)
            }
            None => None,
        };
        let shard_states = match (&membership, &resolved_cluster) {
            (Some(joined), Some(resolved)) => Some(Arc::new(ShardStates::new(resolved, joined.store().clone())?)),
            _ => None,
        };
        let replication = match (&shard_states, &config.wal.replication) {
            (Some(states), Some(replication)) => Some(Arc::new(
                crate::cluster::replication::Replication::new(replication.clone(), states.clone())
                    .map_err(|message| crate::cluster::ClusterError::Config(format!("wal.replication: {message}")))?,
            )),
            _ => None,
        };
        let lifecycle = Arc::new(Lifecycle::new(StreamEnv {
            data_dir: data_dir.clone(),
            wal: config.wal.clone(),
            limits: config.limits.clone(),
            instance_id,
            budget,
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            region: config.server.region.clone(),
            account_id: config.server.account_id.clone(),
            shard_states,
            replication,
            wals: Arc::default(),
            drain_timeout: Duration::from_secs(config.server.shutdown_grace_seconds),
        }));
        // Cluster mode: the catalog every node shares, and the same YAML streams on every node.
        let stream_catalog: Arc<dyn Catalog> = match (&membership, &resolved_cluster) {
            (Some(joined), Some(resolved)) => match shared_catalog(&config, joined, resolved).await {
                Ok(shared) => shared,
                Err(error) => {
                    // Leave, so the refused node does not count as alive until its lease runs out.
                    if let Some(joined) = membership.take() {
                        joined.leave().await;
                    }
                    return Err(error.into());
                }
            },
            _ => Arc::new(FolderCatalog::new(data_dir.clone())),
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut streams = BTreeMap::new();
        for stream in &config.streams {
            let record = stream_catalog
                .load_yaml_record(&stream.name, &catalog::fingerprint(stream), now_ms)
                .await
                .map_err(|source| AppError::Catalog { stream: stream.name.clone(), source })?;
            let ingest = lifecycle.start(stream, record).await?;
            streams.insert(stream.name.clone(), ingest);
        }
        // Readers removed from the file while spillway was stopped no longer hold any WAL.
        lifecycle.release_stale_holds(&crate::config::stream_readers(&config.streams)).await;
        // Streams created through the API, as they were last described.
        let api_records = stream_catalog
            .load_api_records()
            .await
            .map_err(|source| AppError::Catalog { stream: String::new(), source })?;
        let mut deleting = Vec::new();
        let cluster_mode = membership.is_some();
        for mut record in api_records {
            if record.status == catalog::StreamStatus::Creating {
                // Cluster mode: another node may be building it right now; the follower starts it
                // once it is active (and promotes it if its creator died in the middle).
                if cluster_mode {
                    continue;
                }
                // A create interrupted by a crash: the stream builds now, so it is active, and so
                // recorded (later changes replace the record only as it was last read).
                record.status = catalog::StreamStatus::Active;
                stream_catalog
                    .save_api_record(&record)
                    .await
                    .map_err(|source| AppError::Catalog { stream: record.name.clone(), source })?;
            }
            if streams.contains_key(&record.name) {
                tracing::warn!(stream = %record.name, "a YAML stream has the name of an API-created stream; the YAML one is used");
                continue;
            }
            let name = record.name.clone();
            let is_deleting = record.status == catalog::StreamStatus::Deleting;
            let started = match crate::control::stream_config_for(&config, &record) {
                Ok(stream_config) => lifecycle.start(&stream_config, record).await.map_err(AppError::from),
                Err(message) => Err(AppError::Processing { stream: name.clone(), message }),
            };
            match started {
                Ok(ingest) => {
                    if is_deleting {
                        deleting.push(name.clone());
                    }
                    streams.insert(name, ingest);
                }
                // One node that cannot run a stream the others run (a sink type left out of its
                // build, say) still serves the rest.
                Err(error) if cluster_mode => {
                    tracing::error!(stream = %name, %error, "a stream of the shared catalog cannot run on this node");
                }
                Err(error) => return Err(error),
            }
        }

        let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
        let record_id_prefix = instance_id.simple().to_string();
        let healthcheck_interval = Duration::from_secs(config.server.healthcheck_interval_seconds);
        let control = Control { lifecycle: lifecycle.clone(), catalog: stream_catalog };
        let ingest = Arc::new(
            Ingest::new(config, streams, metrics, record_id_prefix, readiness.clone())
                .with_control(Arc::new(control.clone())),
        );
        // A delete interrupted by a restart resumes: deliver what is left, then remove.
        for name in deleting {
            crate::control::resume_delete(control.clone(), ingest.clone(), name);
        }
        let (stop_intake, mut intake_rx) = watch::channel(false);
        // Cluster mode: other nodes' API changes reach this node within a third of a lease.
        let follower = membership.as_ref().map(|joined| {
            let period = joined.store().lease_duration() / 3;
            tokio::spawn(crate::control::follow::follow(
                control.clone(),
                ingest.clone(),
                period,
                stop_intake.subscribe(),
            ))
        });
        // Healthchecks run beside intake: `/ready` answers pending until their first round.
        tokio::spawn(health::run_healthchecks(
            lifecycle.clone(),
            readiness.clone(),
            healthcheck_interval,
            stop_intake.subscribe(),
        ));
        let limits = ConnectionLimits::from_config(&ingest.config.server);
        crate::server::serve::warn_if_over_open_file_limit(limits.max_connections);
        let connection_stats = Arc::new(ConnectionStats::default());
        ingest.metrics.register_connection_stats(connection_stats.clone());
        log_streams(&ingest, &endpoint_of(addr, tls_acceptor.is_some()));
        let router = crate::server::router(ingest.clone());
        let stopped = async move {
            let _ = intake_rx.wait_for(|stop| *stop).await;
        };
        let https = tls_acceptor.is_some();
        let server = tokio::spawn(crate::server::serve::serve(
            listener,
            tls_acceptor,
            router,
            limits,
            connection_stats,
            stopped,
        ));
        Ok(App {
            addr,
            https,
            stop_intake,
            server,
            lifecycle,
            ingest,
            control,
            reloader: None,
            grace,
            readiness,
            membership,
            follower,
            _data_dir_lock: data_dir_lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint clients use: `http://…`, or `https://…` with `server.tls`.
    pub fn endpoint(&self) -> String {
        endpoint_of(self.addr, self.https)
    }

    /// What applies `path` (the file this app started from, read with `overrides`) to the
    /// running streams on a reload; shutdown closes it.
    pub fn reloader(&mut self, path: PathBuf, overrides: crate::config::Overrides) -> Arc<Reloader> {
        let mut reloader = Reloader::new(self.ingest.clone(), self.control.clone(), path, overrides);
        if let Some(membership) = &self.membership {
            reloader = reloader.with_cluster(membership.store().clone());
        }
        let reloader = Arc::new(reloader);
        self.reloader = Some(reloader.clone());
        reloader
    }

    /// Run until `signal` resolves (or a delivery loop fails), then shut down in order.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<(), AppError> {
        tokio::pin!(signal);
        let failed = tokio::select! {
            () = &mut signal => None,
            result = &mut self.server => Some(match result {
                Ok(Ok(())) => AppError::Server(std::io::Error::other("http server stopped")),
                Ok(Err(error)) => AppError::Server(error),
                Err(join) => AppError::Server(std::io::Error::other(join.to_string())),
            }),
        };
        if let Some(error) = failed {
            return Err(error);
        }
        self.shutdown().await
    }

    /// Stop intake, flush every buffer, wait for deliveries up to the grace period, close WALs.
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.readiness.set_shutting_down();
        tracing::info!("stopping intake");
        let _ = self.stop_intake.send(true);
        // One deadline for the whole shutdown: draining connections and finishing deliveries.
        let deadline = tokio::time::Instant::now() + self.grace;
        if let Some(reloader) = &self.reloader {
            reloader.close(deadline).await;
        }
        if let Some(follower) = self.follower
            && tokio::time::timeout_at(deadline, follower).await.is_err()
        {
            tracing::warn!("applying a change of the shared stream catalog is still under way at shutdown");
        }
        self.lifecycle.stop_readers(deadline).await;
        // Connections that never finish (a client that stalls its headers, idle keep-alives) must
        // not hold the shutdown past the grace period.
        let mut server = self.server;
        if tokio::time::timeout_at(deadline, &mut server).await.is_err() {
            tracing::warn!(
                grace_seconds = self.grace.as_secs(),
                "http connections still open after the grace period; closing them"
            );
            server.abort();
        }
        tracing::info!("flushing buffers");
        let first_error = self.lifecycle.shutdown(deadline, self.grace).await;
        if let Some(membership) = self.membership {
            membership.leave().await;
        }
        tracing::info!("stopped");
        match first_error {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

/// Cluster mode's catalog: refuses this node if its YAML streams differ from a live node's,
/// then the shared catalog in the coordinator.
async fn shared_catalog(
    config: &Config,
    membership: &Membership,
    resolved: &crate::cluster::ResolvedCluster,
) -> Result<Arc<dyn Catalog>, crate::cluster::ClusterError> {
    let fingerprints =
        config.streams.iter().map(|stream| (stream.name.clone(), catalog::fingerprint(stream))).collect();
    crate::cluster::catalog::check_yaml_streams(membership.store(), &fingerprints).await?;
    Ok(Arc::new(crate::cluster::catalog::PostgresCatalog::new(resolved)?))
}

fn endpoint_of(addr: SocketAddr, https: bool) -> String {
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// The start-up summary: each stream with its source and destination, and the status page.
fn log_streams(ingest: &Ingest, endpoint: &str) {
    for name in ingest.stream_names() {
        if let Some(stream) = ingest.stream(&name) {
            crate::streams::log_stream(&stream.config, "stream ready");
        }
    }
    tracing::info!("status page at {endpoint}/");
}

/// A random id made once per data directory; it seeds batch ids and record ids, so two
/// installations never produce the same object key.
fn load_or_create_instance_id(data_dir: &std::path::Path) -> Result<Uuid, AppError> {
    let path = data_dir.join("instance-id");
    let io_error = |source| AppError::DataDir { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) => Uuid::parse_str(text.trim()).map_err(|error| io_error(std::io::Error::other(error))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            write_atomically(&path, id.to_string().as_bytes()).map_err(io_error)?;
            Ok(id)
        }
        Err(error) => Err(io_error(error)),
    }
}
