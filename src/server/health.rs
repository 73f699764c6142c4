//! Liveness and readiness for load balancers and Kubernetes probes.
//!
//! - `GET /health`: the process is alive and serving HTTP; always 200 (a restart would not mend
//!   a stopped stream, so liveness must not fail for one).
//! - `GET /ready`: 200 when the configuration is loaded and every WAL recovered (both true once
//!   the server listens), no stream has stopped, every sink's last healthcheck passed, in
//!   cluster mode the coordinator answered the last heartbeat, and spillway is not shutting
//!   down; otherwise 503 with one line per reason.
//!
//! Sink healthchecks run in the background ([`run_healthchecks`]), every
//! `server.healthcheck_interval_seconds`, each bounded by [`HEALTHCHECK_TIMEOUT`]; a probe only
//! reads their last result, so probes never load a destination.
//!
//! Must not: call a sink from a request handler.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

pub use crate::readiness::{CheckedSink, Readiness, SinkHealth};
use crate::sources::Ingest;

/// Longest a single sink healthcheck may take before it counts as failed.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// One round: every sink's healthcheck, concurrently, each bounded by [`HEALTHCHECK_TIMEOUT`].
/// Logs a warning when a sink turns unhealthy and an info line when it recovers.
pub async fn check_all(sinks: &[CheckedSink], readiness: &Readiness) {
    let checks = sinks.iter().map(|checked| async move {
        let health = match tokio::time::timeout(HEALTHCHECK_TIMEOUT, checked.sink.healthcheck()).await {
            Ok(Ok(())) => SinkHealth::Healthy,
            Ok(Err(error)) => SinkHealth::Unhealthy(error.to_string()),
            Err(_elapsed) => SinkHealth::Unhealthy(format!("no answer within {} s", HEALTHCHECK_TIMEOUT.as_secs())),
        };
        (checked, health)
    });
    for (checked, health) in futures::future::join_all(checks).await {
        checked.metrics.sink_up.set(i64::from(health == SinkHealth::Healthy));
        if health == SinkHealth::Healthy {
            checked.recovery.answered();
        }
        let previous = readiness.set_sink_health(&checked.stream, health.clone());
        match (&previous, &health) {
            (Some(SinkHealth::Unhealthy(_)), SinkHealth::Healthy) => {
                tracing::info!(stream = %checked.stream, "sink healthcheck passes again")
            }
            (Some(SinkHealth::Healthy | SinkHealth::Pending), SinkHealth::Unhealthy(error)) => {
                tracing::warn!(stream = %checked.stream, %error, "sink healthcheck failed; /ready answers 503")
            }
            _ => {}
        }
    }
}

/// Below this many free bytes on `data_dir`'s filesystem, the WAL counts as full for `/ready`.
const MIN_FREE_WAL_BYTES: u64 = 1 << 20;

/// The WAL's disk: full when `data_dir`'s filesystem has less than [`MIN_FREE_WAL_BYTES`] free.
/// An append that fails for want of space says so at once; this also clears it once there is
/// room again, with no put needed.
pub async fn check_wal_disk(data_dir: &std::path::Path, readiness: &Readiness) {
    let path = data_dir.to_path_buf();
    let free = tokio::task::spawn_blocking(move || crate::data_dir::available_bytes(&path)).await;
    if let Ok(Ok(free)) = free {
        let full =
            (free < MIN_FREE_WAL_BYTES).then(|| format!("data_dir {} has {free} bytes free", data_dir.display()));
        readiness.set_wal_disk_full(full);
    }
}

/// Check every sink and the WAL's disk now, then every `interval` until `stop` turns true.
/// Until the first round ends, each sink counts as pending (`/ready` 503) while intake is open:
/// a destination that hangs must not keep the server from taking records.
pub async fn run_healthchecks(
    lifecycle: Arc<crate::streams::Lifecycle>,
    readiness: Arc<Readiness>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let round = || async {
        check_wal_disk(lifecycle.data_dir(), &readiness).await;
        // The current sinks each round: streams come and go through the control plane.
        check_all(&lifecycle.checked_sinks(), &readiness).await;
    };
    round().await;
    while !*stop.borrow_and_update() {
        tokio::select! {
            () = tokio::time::sleep(interval) => round().await,
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Liveness: the process serves HTTP.
pub async fn health() -> Response {
    "ok\n".into_response()
}

/// Readiness: 200 `ready`, or 503 with one line per reason.
pub async fn ready(State(ingest): State<Arc<Ingest>>) -> Response {
    let reasons = ingest.readiness.reasons(&ingest.stopped_streams());
    if reasons.is_empty() {
        return "ready\n".into_response();
    }
    let body: String = reasons.iter().map(|reason| format!("{reason}\n")).collect();
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_until_all_are_cleared() {
        let readiness = Readiness::new([("a", "s3"), ("b", "s3")]);
        let stopped = vec![("b".to_string(), "wal damaged".to_string())];
        assert_eq!(
            readiness.reasons(&stopped),
            vec![
                "stream b stopped: wal damaged",
                "stream a: s3 sink healthcheck pending",
                "stream b: s3 sink healthcheck pending"
            ]
        );
        readiness.set_sink_health("a", SinkHealth::Healthy);
        readiness.set_sink_health("b", SinkHealth::Unhealthy("bucket gone".into()));
        assert_eq!(readiness.reasons(&[]), vec!["stream b: s3 sink healthcheck failed: bucket gone"]);
        readiness.set_sink_health("b", SinkHealth::Healthy);
        assert!(readiness.reasons(&[]).is_empty());
        readiness.set_shutting_down();
        assert_eq!(readiness.reasons(&[]), vec!["shutting down"]);
    }

    #[test]
    fn an_unreachable_coordinator_is_a_reason_until_it_answers() {
        let readiness = Readiness::new(std::iter::empty());
        readiness.set_coordinator_problem(Some("cluster coordinator unreachable: connection refused".into()));
        assert_eq!(readiness.reasons(&[]), vec!["cluster coordinator unreachable: connection refused"]);
        readiness.set_coordinator_problem(None);
        assert!(readiness.reasons(&[]).is_empty());
    }
}
