//! The live status page: `GET /` serves one HTML file embedded in the binary (no build toolchain,
//! no assets to ship) whose script polls `/metrics` and `GET /api/status` every two seconds and
//! draws, per stream, source, sink and where it writes, records/s and bytes/s in and out with a
//! five-minute chart, data freshness, WAL backlog, open partitions, retries, error-output records,
//! a sink's own requests by outcome (the HTTP endpoint's), a windowed sql transform's open
//! windows, rows and late records, and the last error with its time,
//! wrapped on a row of its own. It fits a 1,280 px wide
//! window. `POST /` stays the Firehose API.
//!
//! Must not: compute rates on the server; the page derives them from two scrapes, as
//! `spillway status` does, so the server keeps no history.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::metrics::LastError;
use crate::sources::Ingest;

const PAGE: &str = include_str!("status_page.html");

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// What the page shows besides metrics.
#[derive(Debug, Serialize)]
pub struct Status {
    pub ready: bool,
    pub reasons: Vec<String>,
    /// Cluster mode: this node's `cluster.node_id` (absent in single-node mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Cluster mode: the leases this node holds (`<kind>:<stream>:<shard>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases: Option<Vec<String>>,
    pub streams: Vec<StreamStatus>,
}

#[derive(Debug, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub source: &'static str,
    pub sink: &'static str,
    /// Where the sink writes (folder or bucket and prefix, table, index).
    pub destination: String,
    /// Whether the stream runs a windowed sql transform (the page then shows its windows).
    pub windowed: bool,
    pub last_error: Option<LastError>,
}

pub async fn status(State(ingest): State<Arc<Ingest>>) -> Response {
    let reasons = ingest.readiness.reasons(&ingest.stopped_streams());
    let streams = ingest
        .stream_names()
        .into_iter()
        .filter_map(|name| Some((ingest.stream(&name)?, name)))
        .map(|(stream, name)| StreamStatus {
            name,
            source: stream.config.source.descriptor().type_name(),
            sink: stream.config.sink.descriptor().type_name(),
            destination: stream.config.sink.descriptor().destination(),
            windowed: stream.config.processing.transforms.first().is_some_and(|first| first.runs_in_reader()),
            last_error: stream.metrics.last_error(),
        })
        .collect();
    let node_id = ingest.readiness.cluster_node();
    let leases = node_id.as_ref().map(|_| ingest.readiness.cluster_leases());
    Json(Status { ready: reasons.is_empty(), reasons, node_id, leases, streams }).into_response()
}
