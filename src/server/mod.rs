//! The HTTP front: routes for the Direct PUT API, NDJSON ingest, `/health` and `/metrics`.
//!
//! Must not: hold records; handlers append to the WAL through `Ingest` and return.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::sources::{Ingest, direct_put, http};

pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/", post(direct_put::handle))
        .route("/streams/{stream}/records", post(http::handle))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(ingest)
}

/// 200 "ok" while every stream delivers; 503 naming the streams that stopped.
async fn health(State(ingest): State<Arc<Ingest>>) -> Response {
    let stopped = ingest.stopped_streams();
    if stopped.is_empty() {
        return "ok\n".into_response();
    }
    let lines: String = stopped.iter().map(|(stream, reason)| format!("stream {stream} stopped: {reason}\n")).collect();
    (StatusCode::SERVICE_UNAVAILABLE, lines).into_response()
}

async fn metrics(State(ingest): State<Arc<Ingest>>) -> Response {
    let mut response = ingest.metrics.render().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}
