//! What `/ready` answers from: each sink's last healthcheck, the WAL disk, the cluster
//! coordinator, shutdown. Written by the healthchecks ([`crate::server::health`]), the WAL's
//! appenders and the cluster membership; read by the probe and the status page.
//!
//! Must not: run checks or answer HTTP.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use spillway_sink_api::Sink;

use crate::metrics::StreamMetrics;

/// The last healthcheck result of one stream's sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkHealth {
    /// No healthcheck has finished yet.
    Pending,
    Healthy,
    Unhealthy(String),
}

/// What `/ready` answers from.
#[derive(Debug, Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
    sinks: Mutex<BTreeMap<String, (String, SinkHealth)>>,
    /// The WAL's disk: why appends cannot be made now (a full disk), if they cannot.
    wal_disk: Mutex<Option<String>>,
    /// Fast path of `wal_disk` for every append: whether it holds a reason.
    wal_disk_full: AtomicBool,
    /// Cluster mode: this node's id (for the status page).
    cluster_node: Mutex<Option<String>>,
    /// Cluster mode: the leases this node held at the last renewal.
    cluster_leases: Mutex<Vec<String>>,
    /// Cluster mode: why the coordinator cannot be used now, if it cannot.
    coordinator: Mutex<Option<String>>,
}

impl Readiness {
    /// Readiness for these streams' sinks (stream → sink type), every one pending.
    pub fn new<'a>(sinks: impl IntoIterator<Item = (&'a str, &'a str)>) -> Arc<Self> {
        let sinks = sinks
            .into_iter()
            .map(|(stream, sink)| (stream.to_string(), (sink.to_string(), SinkHealth::Pending)))
            .collect();
        Arc::new(Self { sinks: Mutex::new(sinks), ..Self::default() })
    }

    /// From now on `/ready` answers 503: the load balancer stops sending while we drain.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// A stream's sink joins the checks (pending until its first healthcheck).
    pub fn add_sink(&self, stream: &str, sink: &str) {
        let mut sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        sinks.insert(stream.to_string(), (sink.to_string(), SinkHealth::Pending));
    }

    /// A removed stream's sink leaves the checks.
    pub fn remove_sink(&self, stream: &str) {
        self.sinks.lock().unwrap_or_else(PoisonError::into_inner).remove(stream);
    }

    /// Record a stream's sink health; the one it replaces, if the stream is known.
    pub fn set_sink_health(&self, stream: &str, health: SinkHealth) -> Option<SinkHealth> {
        let mut sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        sinks.get_mut(stream).map(|(_, current)| std::mem::replace(current, health))
    }

    /// The WAL's disk is full (`Some(why)`) or has room again (`None`). Cheap when nothing
    /// changes, as every append reports success.
    pub fn set_wal_disk_full(&self, reason: Option<String>) {
        if reason.is_none() && !self.wal_disk_full.load(Ordering::Relaxed) {
            return;
        }
        let mut current = self.wal_disk.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*current, &reason) {
            (None, Some(why)) => {
                tracing::warn!(reason = %why, "wal disk full; puts are answered slow down and /ready 503")
            }
            (Some(_), None) => tracing::info!("wal disk has room again"),
            _ => {}
        }
        self.wal_disk_full.store(reason.is_some(), Ordering::Relaxed);
        *current = reason;
    }

    /// Cluster mode: this node's id, shown on the status page.
    pub fn set_cluster_node(&self, node_id: Option<String>) {
        *self.cluster_node.lock().unwrap_or_else(PoisonError::into_inner) = node_id;
    }

    pub fn cluster_node(&self) -> Option<String> {
        self.cluster_node.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Cluster mode: the leases this node holds, as of the last renewal round.
    pub fn set_cluster_leases(&self, leases: Vec<String>) {
        *self.cluster_leases.lock().unwrap_or_else(PoisonError::into_inner) = leases;
    }

    pub fn cluster_leases(&self) -> Vec<String> {
        self.cluster_leases.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Cluster mode: the coordinator cannot be reached (`Some(why)`), or answers again (`None`).
    pub fn set_coordinator_problem(&self, reason: Option<String>) {
        *self.coordinator.lock().unwrap_or_else(PoisonError::into_inner) = reason;
    }

    /// Every reason not to be ready, in a stable order; empty when ready.
    pub fn reasons(&self, stopped_streams: &[(String, String)]) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.shutting_down.load(Ordering::Relaxed) {
            reasons.push("shutting down".to_string());
        }
        if let Some(why) = &*self.wal_disk.lock().unwrap_or_else(PoisonError::into_inner) {
            reasons.push(format!("wal disk full: {why}"));
        }
        if let Some(why) = &*self.coordinator.lock().unwrap_or_else(PoisonError::into_inner) {
            reasons.push(why.clone());
        }
        for (stream, reason) in stopped_streams {
            reasons.push(format!("stream {stream} stopped: {reason}"));
        }
        let sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        for (stream, (sink, health)) in sinks.iter() {
            match health {
                SinkHealth::Healthy => {}
                SinkHealth::Pending => reasons.push(format!("stream {stream}: {sink} sink healthcheck pending")),
                SinkHealth::Unhealthy(error) => {
                    reasons.push(format!("stream {stream}: {sink} sink healthcheck failed: {error}"))
                }
            }
        }
        reasons
    }
}

/// A sink to check, with the stream it belongs to and its metrics (for `spillway_sink_up`).
#[derive(Clone)]
pub struct CheckedSink {
    pub stream: String,
    pub sink: Arc<dyn Sink>,
    pub metrics: Arc<StreamMetrics>,
    /// A passing check wakes the stream's retries that wait since a failed delivery.
    pub recovery: crate::pipeline::retry::Recovery,
}
