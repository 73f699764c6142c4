//! Wiring: builds every stream (WAL, sink, delivery loop) from a validated `Config`, serves the
//! HTTP front, and shuts down in order: stop intake → flush buffers → finish deliveries → commit
//! checkpoints → close the WAL. A stream whose WAL cannot be opened (damage, I/O) is marked
//! stopped with the reason and gets no delivery loop; every other stream runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::checkpoint::{Checkpoint, CheckpointError, write_atomically};
use crate::config::Config;
use crate::metrics::{Metrics, WalSize};
use crate::pipeline::{
    BatchingOptions, Delivery, DeliveryLoop, IntentError, IntentLog, JqPartitioner, MemoryBudget, Partitioner,
    PipelineError, Router,
};
use crate::processing::PartitionKeys;
use crate::server::health::{self, CheckedSink, Readiness};
use crate::sources::{Ingest, StreamIngest};
use crate::wal::{Wal, WalOptions};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
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
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("stream {stream}: delivery stopped: {source}")]
    Pipeline { stream: String, source: PipelineError },
    #[error("http server failed: {0}")]
    Server(std::io::Error),
}

/// A running spillway: the HTTP server and one delivery loop per stream.
pub struct App {
    addr: SocketAddr,
    stop_intake: watch::Sender<bool>,
    stop_delivery: watch::Sender<bool>,
    server: JoinHandle<Result<(), std::io::Error>>,
    pipelines: Vec<(String, JoinHandle<Result<(), PipelineError>>)>,
    wals: Vec<Wal>,
    grace: Duration,
    readiness: Arc<Readiness>,
}

impl App {
    pub async fn start(config: Config) -> Result<App, AppError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| AppError::DataDir { path: data_dir.clone(), source })?;
        let instance_id = load_or_create_instance_id(&data_dir)?;

        let mut metrics = Metrics::default();
        let budget = MemoryBudget::new((config.limits.max_open_batches_mib << 20) as usize);
        metrics.register_open_batch_budget(budget.clone());
        let mut streams = BTreeMap::new();
        let mut loops = Vec::new();
        let mut stopped_flags = Vec::new();
        let mut wals = Vec::new();
        let mut checked_sinks = Vec::new();
        for stream in &config.streams {
            let name = stream.name.clone();
            let stream_dir = data_dir.join("streams").join(&name);
            let checkpoint = Checkpoint::new(&stream_dir);
            std::fs::create_dir_all(&stream_dir)
                .map_err(|source| AppError::DataDir { path: stream_dir.clone(), source })?;
            let delivered =
                checkpoint.load().map_err(|source| AppError::Checkpoint { stream: name.clone(), source })?;
            let started = std::time::Instant::now();
            let options = WalOptions {
                dir: stream_dir.join("wal"),
                fsync: config.wal.fsync,
                fsync_interval: Duration::from_millis(config.wal.fsync_interval_ms),
                segment_bytes: config.wal.segment_mib << 20,
                max_bytes: config.limits.max_wal_mib << 20,
                full_wait: Duration::from_millis(config.limits.full_wait_ms),
            };
            let wal_dir = options.dir.clone();
            let (wal, report) = match Wal::open(options, delivered) {
                Ok(opened) => opened,
                Err(error) => {
                    // Only this stream stops; its files stay for `spillway wal inspect`.
                    let reason = format!(
                        "{error}; its wal files are kept: see `spillway wal inspect --stream {name}` and `spillway wal quarantine`"
                    );
                    tracing::error!(stream = %name, %error, "cannot open the wal; this stream is stopped, the others run");
                    let wal = Wal::unavailable(wal_dir);
                    let wal_for_metrics = wal.clone();
                    let stream_metrics = metrics.register(
                        &name,
                        stream.sink.type_name(),
                        Box::new(move || WalSize { undelivered_bytes: 0, disk_bytes: wal_for_metrics.disk_bytes() }),
                    );
                    let stopped = Arc::new(std::sync::OnceLock::from(reason));
                    streams
                        .insert(name, StreamIngest { config: stream.clone(), wal, metrics: stream_metrics, stopped });
                    continue;
                }
            };
            if let Some(truncated) = &report.truncated_tail {
                tracing::warn!(stream = %name, %truncated, "cut off a torn wal tail left by a crash");
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
            let built = stream
                .sink
                .build(&name)
                .await
                .map_err(|source| AppError::Sink { stream: name.clone(), source: Box::new(source) })?;
            let wal_for_metrics = wal.clone();
            let stream_metrics = metrics.register(
                &name,
                stream.sink.type_name(),
                Box::new(move || WalSize {
                    undelivered_bytes: wal_for_metrics.undelivered_bytes(),
                    disk_bytes: wal_for_metrics.disk_bytes(),
                }),
            );
            let partition_keys = stream.processing.partition_keys();
            let partitioner: Option<Arc<dyn Partitioner>> = if partition_keys.is_empty() {
                None
            } else {
                let compiled = PartitionKeys::compile(&partition_keys).map_err(|problems| AppError::Processing {
                    stream: name.clone(),
                    message: problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                })?;
                Some(Arc::new(JqPartitioner::new(compiled)))
            };
            let router = Router::new(partitioner, stream.processing.record_delimiter);
            checked_sinks.push(CheckedSink {
                stream: name.clone(),
                sink: built.sink.clone(),
                metrics: stream_metrics.clone(),
            });
            let delivery = Arc::new(Delivery {
                sink: built.sink,
                error_output: built.error_output,
                failure_output_type: built.failure_output_type,
                retry_duration: Duration::from_secs(stream.retry_duration_seconds()),
                metrics: stream_metrics.clone(),
                wal: wal.clone(),
                encoders: built.encoders.clone(),
                delimiter: stream.processing.record_delimiter.suffix(),
            });
            let intents =
                IntentLog::open(&stream_dir).map_err(|source| AppError::Intent { stream: name.clone(), source })?;
            loops.push(DeliveryLoop {
                stream: name.clone(),
                wal: wal.clone(),
                checkpoint,
                intents,
                delivery,
                instance_id,
                router,
                encoders: built.encoders,
                batching: BatchingOptions {
                    size_bytes: (stream.buffering.size_mib << 20) as usize,
                    interval: Duration::from_secs(stream.buffering.interval_seconds),
                    max_partitions: stream.processing.max_active_partitions(),
                },
                budget: budget.clone(),
            });
            wals.push(wal.clone());
            let stopped = Arc::new(std::sync::OnceLock::new());
            stopped_flags.push(stopped.clone());
            streams.insert(name, StreamIngest { config: stream.clone(), wal, metrics: stream_metrics, stopped });
        }

        let (stop_delivery, stop_rx) = watch::channel(false);
        let pipelines = loops
            .into_iter()
            .zip(stopped_flags)
            .map(|(delivery_loop, stopped)| {
                let stream = delivery_loop.stream.clone();
                let run = delivery_loop.run(stop_rx.clone());
                let stream_name = stream.clone();
                let task = tokio::spawn(async move {
                    let result = run.await;
                    if let Err(error) = &result {
                        // Only this stream stops; its records stay in the WAL.
                        tracing::error!(%stream_name, %error, "delivery stopped; fix the cause and restart");
                        let _ = stopped.set(error.to_string());
                    }
                    result
                });
                (stream, task)
            })
            .collect();

        let addr = config.server.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| AppError::Listen { addr, source })?;
        let addr = listener.local_addr().map_err(|source| AppError::Listen { addr, source })?;
        let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
        let record_id_prefix = instance_id.simple().to_string();
        let healthcheck_interval = Duration::from_secs(config.server.healthcheck_interval_seconds);
        let ingest = Arc::new(Ingest::new(config, streams, Arc::new(metrics), record_id_prefix));
        // The first round runs before serving, so `/ready` is decided from the first request on.
        let readiness = ingest.readiness.clone();
        health::check_all(&checked_sinks, &readiness).await;
        tokio::spawn(health::run_healthchecks(checked_sinks, readiness.clone(), healthcheck_interval, stop_rx));
        let (stop_intake, mut intake_rx) = watch::channel(false);
        let router = crate::server::router(ingest);
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = intake_rx.wait_for(|stop| *stop).await;
                })
                .await
        });
        Ok(App { addr, stop_intake, stop_delivery, server, pipelines, wals, grace, readiness })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
        let _ = self.stop_delivery.send(true);
        let mut first_error = None;
        for (stream, handle) in self.pipelines {
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(source))) => {
                    tracing::error!(%stream, error = %source, "delivery stopped with an error");
                    first_error.get_or_insert(AppError::Pipeline { stream, source });
                }
                Ok(Err(join)) => tracing::error!(%stream, error = %join, "delivery task failed"),
                Err(_) => {
                    tracing::warn!(%stream, grace_seconds = self.grace.as_secs(), "grace period over; undelivered records stay in the wal for the next start")
                }
            }
        }
        for wal in &self.wals {
            let wal = wal.clone();
            let _ = tokio::task::spawn_blocking(move || wal.close()).await;
        }
        tracing::info!("stopped");
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
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
