//! Reload: re-read the configuration file (on SIGHUP, or with `run --watch-config` when its
//! contents change) and bring the running YAML streams in line with it, through the stream
//! lifecycle the control plane uses ([`crate::streams::Lifecycle`]: `start`, `restart`,
//! `remove`).
//!
//! - A file that does not load (syntax, validation, what `validate` checks on this machine) is
//!   refused as a whole: the running configuration stays and every problem is logged.
//! - Unchanged streams are not touched. A changed stream's delivery delivers what it holds and
//!   starts again with the new configuration on the same WAL (`UpdateDestination`'s path), so
//!   intake continues and every acknowledged record leaves once; a changed `source` restarts the
//!   stream's readers too (remove, then start on the same WAL).
//! - A removed stream stops taking records at once (puts answer `ResourceNotFoundException`) and
//!   delivers everything it accepted, as `DeleteDeliveryStream` does; unlike a delete, its folder
//!   under `data_dir/streams/` stays, so a stream added back under that name continues its
//!   sequence (batch ids, hence S3 keys and PostgreSQL batch ids, never repeat) and delivers
//!   anything a put racing the removal left in the WAL.
//! - Streams created through the API are never removed or replaced; a YAML stream taking an API
//!   stream's name refuses the file.
//! - Settings read only at start (`server.listen`, TLS, `data_dir`, `wal`, `limits`, `cluster`, …) are logged
//!   as needing a restart; the rest is applied.
//!
//! Must not: answer HTTP or change API streams; import the app.

pub mod plan;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{self, Config, Overrides, StreamConfig};
use crate::control::Control;
use crate::control::catalog::{self, Catalog, StreamOrigin};
use crate::sources::Ingest;
use crate::streams::{Lifecycle, StopMode, StreamError};
use plan::{Change, Plan};

/// What one reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file was accepted; these streams were changed.
    Applied(Applied),
    /// The file was refused for these problems; nothing changed.
    Rejected(Vec<String>),
    /// The process is shutting down; the file was not read.
    ShuttingDown,
}

/// The streams a reload added, changed, removed and left alone, by name.
#[derive(Debug, Default)]
pub struct Applied {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Streams the new configuration could not be applied to (each logged with its reason).
    pub failed: Vec<String>,
    /// Settings that differ from the running ones and wait for a restart.
    pub needs_restart: Vec<String>,
}

/// Applies the configuration file to the running process; one reload at a time.
pub struct Reloader {
    ingest: Arc<Ingest>,
    control: Control,
    path: PathBuf,
    overrides: Overrides,
    one_at_a_time: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// Cluster mode: where this node's YAML streams are published after a reload changes them.
    cluster: Option<Arc<crate::cluster::LeaseStore>>,
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
}

impl Reloader {
    /// `path` is the file `run` started from; `overrides` the command line's, applied to every
    /// read as they were at start.
    pub fn new(ingest: Arc<Ingest>, control: Control, path: PathBuf, overrides: Overrides) -> Self {
        Self {
            ingest,
            control,
            path,
            overrides,
            one_at_a_time: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            cluster: None,
        }
    }

    /// Cluster mode: publish the node's YAML streams after each reload that changes them.
    pub fn with_cluster(mut self, store: Arc<crate::cluster::LeaseStore>) -> Self {
        self.cluster = Some(store);
        self
    }

    /// No reload starts after this; waits (until `deadline`) for one under way to finish, so
    /// shutdown never stops streams a reload is starting.
    pub async fn close(&self, deadline: tokio::time::Instant) {
        self.closed.store(true, Ordering::SeqCst);
        if tokio::time::timeout_at(deadline, self.one_at_a_time.lock()).await.is_err() {
            tracing::warn!("a configuration reload is still under way at shutdown");
        }
    }

    /// Re-read the file and apply it; `trigger` says why (`SIGHUP`, `file changed`) for the log.
    /// Logs one summary line and counts `spillway_config_reloads_total`.
    pub async fn reload(&self, trigger: &str) -> ReloadOutcome {
        let _one_at_a_time = self.one_at_a_time.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return ReloadOutcome::ShuttingDown;
        }
        tracing::info!(trigger, path = %self.path.display(), "reloading the configuration");
        let outcome = match self.read().await {
            Ok(new) => self.apply(&new).await,
            Err(problems) => ReloadOutcome::Rejected(problems),
        };
        let now_seconds = chrono::Utc::now().timestamp();
        match &outcome {
            ReloadOutcome::Applied(applied) => {
                self.ingest.metrics.note_config_reload(true, now_seconds);
                log_applied(applied);
                self.publish_yaml_streams(applied).await;
            }
            ReloadOutcome::Rejected(problems) => {
                self.ingest.metrics.note_config_reload(false, now_seconds);
                for problem in problems {
                    tracing::error!("{problem}");
                }
                tracing::error!(
                    problems = problems.len(),
                    path = %self.path.display(),
                    "kept the running configuration: {} problem(s) in the new file",
                    problems.len()
                );
            }
            ReloadOutcome::ShuttingDown => {}
        }
        outcome
    }

    /// Load the file as `run` and `validate` do: parse, validate, the command line's overrides,
    /// then what `validate` checks on this machine. Every problem, or the configuration.
    async fn read(&self) -> Result<Config, Vec<String>> {
        let (path, overrides) = (self.path.clone(), self.overrides.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let mut config = config::load_file(&path).map_err(|error| error.messages())?;
            overrides.apply(&mut config);
            let problems = config::preflight(&config);
            if !problems.is_empty() {
                return Err(problems.iter().map(|problem| format!("{}: {problem}", path.display())).collect());
            }
            Ok(config)
        })
        .await;
        let config = loaded.unwrap_or_else(|join| Err(vec![format!("reading the configuration failed: {join}")]))?;
        for warning in config.warnings() {
            tracing::warn!(path = %warning.path, "{}", warning.message);
        }
        Ok(config)
    }

    async fn apply(&self, new: &Config) -> ReloadOutcome {
        let (lifecycle, catalog) = (self.control.lifecycle.clone(), self.control.catalog.clone());
        // Never beside a control-plane change (create, update, delete through the API).
        let _one_change_at_a_time = lifecycle.control.lock().await;
        let (running_streams, api_streams) = self.running_streams();
        let plan = match plan::plan(&self.ingest.config, &running_streams, &api_streams, new) {
            Ok(plan) => plan,
            Err(problems) => {
                let path = self.path.display();
                return ReloadOutcome::Rejected(
                    problems.into_iter().map(|problem| format!("{path}: {problem}")).collect(),
                );
            }
        };
        for setting in &plan.needs_restart {
            tracing::warn!(%setting, "{setting} changed in the file but needs a restart; the running value stays");
        }
        let Plan { added, changed, removed, unchanged, needs_restart } = plan;
        let mut applied = Applied { unchanged, needs_restart, ..Applied::default() };
        // Removed first: a stream renamed in the file frees its resources before its successor starts.
        for name in removed {
            match self.remove(&lifecycle, &name).await {
                Ok(()) => applied.removed.push(name),
                Err(error) => {
                    tracing::error!(stream = %name, %error, "cannot remove the stream");
                    applied.failed.push(name);
                }
            }
        }
        for change in changed {
            let name = change.new.name.clone();
            match self.change(&lifecycle, catalog.as_ref(), &change).await {
                Ok(()) => applied.changed.push(name),
                Err(error) => {
                    tracing::error!(stream = %name, %error, "cannot apply the stream's new configuration");
                    applied.failed.push(name);
                }
            }
        }
        for stream in added {
            match self.add(&lifecycle, catalog.as_ref(), &stream).await {
                Ok(()) => applied.added.push(stream.name),
                Err(error) => {
                    tracing::error!(stream = %stream.name, %error, "cannot start the added stream");
                    applied.failed.push(stream.name);
                }
            }
        }
        // A reader removed from the file (or now reading another stream) holds no WAL any more.
        let (yaml, _) = self.running_streams();
        let yaml: Vec<StreamConfig> = yaml.into_values().collect();
        lifecycle.release_stale_holds(&crate::config::stream_readers(&yaml)).await;
        ReloadOutcome::Applied(applied)
    }

    /// Cluster mode: record the YAML streams as they run now, so a node starting next is
    /// compared with them. Not compared here: during a rolling reload the nodes differ for a
    /// moment, and refusing the reload would keep them apart.
    async fn publish_yaml_streams(&self, applied: &Applied) {
        let Some(store) = &self.cluster else { return };
        if applied.added.is_empty() && applied.changed.is_empty() && applied.removed.is_empty() {
            return;
        }
        let (yaml, _) = self.running_streams();
        let fingerprints = yaml.iter().map(|(name, stream)| (name.clone(), catalog::fingerprint(stream))).collect();
        if let Err(error) = crate::cluster::catalog::publish_yaml_streams(store, &fingerprints).await {
            tracing::warn!(%error, "cannot record this node's new YAML streams in the cluster; a node starting with them may be refused until it is");
        }
    }

    /// The YAML streams as they run now, and the names of the API-created ones.
    fn running_streams(&self) -> (BTreeMap<String, StreamConfig>, BTreeSet<String>) {
        let mut yaml = BTreeMap::new();
        let mut api = BTreeSet::new();
        for name in self.ingest.stream_names() {
            let Some(stream) = self.ingest.stream(&name) else { continue };
            match stream.record.origin {
                StreamOrigin::Yaml => {
                    yaml.insert(name, stream.config.clone());
                }
                StreamOrigin::Api => {
                    api.insert(name);
                }
            }
        }
        (yaml, api)
    }

    /// Stop intake at once, deliver what the stream accepted, close its WAL; its folder stays.
    async fn remove(&self, lifecycle: &Lifecycle, name: &str) -> Result<(), ApplyError> {
        self.ingest.remove_stream(name);
        let removed = lifecycle.remove(name, StopMode::Drain).await?;
        if removed.has_undelivered() {
            tracing::warn!(
                stream = %name,
                undelivered_records = removed.committed - removed.delivered,
                folder = %crate::streams::stream_dir(lifecycle.data_dir(), name).display(),
                "removed stream still holds undelivered records in its wal; adding the stream back delivers them"
            );
        }
        tracing::info!(stream = %name, "stream removed; it delivered what it had accepted");
        Ok(())
    }

    /// Restart the stream with its new configuration on the same WAL; if it cannot start with
    /// it (a sink that cannot be built), go back to the configuration it ran with.
    async fn change(&self, lifecycle: &Lifecycle, catalog: &dyn Catalog, change: &Change) -> Result<(), ApplyError> {
        let name = &change.new.name;
        let Some(current) = self.ingest.stream(name) else {
            return self.add(lifecycle, catalog, &change.new).await;
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        // The catalog counts the change (the stream's `VersionId`), as at a start with a changed file.
        let record = catalog.load_yaml_record(name, &catalog::fingerprint(&change.new), now_ms).await?;
        let result = if change.source_changed {
            // New readers: stop the old ones with the stream, then start afresh on the same WAL.
            self.ingest.remove_stream(name);
            lifecycle.remove(name, StopMode::Drain).await?;
            lifecycle.start(&change.new, record).await
        } else {
            // The old delivery delivers what it holds under the old configuration; intake goes on.
            lifecycle.restart(&change.new, record).await
        };
        match result {
            Ok(restarted) => {
                self.ingest.put_stream(name, restarted);
                crate::streams::log_stream(&change.new, "stream restarted with its new configuration");
                Ok(())
            }
            Err(error) => {
                tracing::error!(stream = %name, %error, "cannot start the stream with its new configuration; going back to the one it ran with");
                let old_record = crate::control::catalog::StreamRecord::clone(&current.record);
                let restored = if change.source_changed {
                    lifecycle.start(&change.old, old_record).await?
                } else {
                    lifecycle.restart(&change.old, old_record).await?
                };
                self.ingest.put_stream(name, restored);
                Err(error.into())
            }
        }
    }

    async fn add(&self, lifecycle: &Lifecycle, catalog: &dyn Catalog, stream: &StreamConfig) -> Result<(), ApplyError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let record = catalog.load_yaml_record(&stream.name, &catalog::fingerprint(stream), now_ms).await?;
        let started = lifecycle.start(stream, record).await?;
        self.ingest.put_stream(&stream.name, started);
        crate::streams::log_stream(stream, "stream added");
        Ok(())
    }
}

/// One line per reload: what was added, changed, removed and left alone.
fn log_applied(applied: &Applied) {
    let summary = format!(
        "configuration reloaded: {} added, {} changed, {} removed, {} unchanged{}",
        applied.added.len(),
        applied.changed.len(),
        applied.removed.len(),
        applied.unchanged.len(),
        if applied.failed.is_empty() { String::new() } else { format!(", {} failed", applied.failed.len()) },
    );
    let fields = (
        applied.added.join(","),
        applied.changed.join(","),
        applied.removed.join(","),
        applied.failed.join(","),
        applied.needs_restart.join(","),
    );
    let (added, changed, removed, failed, needs_restart) = fields;
    if applied.failed.is_empty() {
        tracing::info!(%added, %changed, %removed, %needs_restart, "{summary}");
    } else {
        tracing::error!(%added, %changed, %removed, %failed, %needs_restart, "{summary}");
    }
}
