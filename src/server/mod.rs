//! The HTTP front: routes for the Direct PUT API (`POST /`), NDJSON ingest, `/health`, `/ready`
//! ([`health`]), `/metrics`, the status page (`GET /`, `/api/status`: [`status_page`]), and
//! the request limits in front of the ingest routes: a body-size limit and a whole-request
//! deadline (`server.request_timeout_seconds`), both from `tower-http`, with their answers
//! reshaped into each route's error format. HTTPS (`server.tls`) is [`tls`]; SigV4 checks on the
//! Firehose API (`server.auth`) are [`sigv4`].
//!
//! Must not: hold records; handlers append to the WAL through `Ingest` and return.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use futures::StreamExt;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::sources::{Ingest, MAX_REQUEST_BODY_BYTES, declared_body_len, direct_put, http};

pub mod health;
pub mod sigv4;
pub mod status_page;
#[cfg(test)]
mod tests;
pub mod tls;

pub fn router(ingest: Arc<Ingest>) -> Router {
    let timeout_seconds = ingest.config.server.request_timeout_seconds;
    let firehose = with_request_limits(post(direct_put::handle), timeout_seconds).layer(middleware::from_fn(
        move |request: Request, next: Next| firehose_limit_answers(request, next, timeout_seconds),
    ));
    let ndjson = with_request_limits(post(http::handle), timeout_seconds).layer(middleware::from_fn(
        move |request: Request, next: Next| ndjson_limit_answers(request, next, timeout_seconds),
    ));
    Router::new()
        // `POST /` is the Firehose API; `GET /` the status page.
        .route("/", firehose.merge(get(status_page::page)))
        .route("/api/status", get(status_page::status))
        .route("/streams/{stream}/records", ndjson)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics))
        .with_state(ingest)
}

/// Oversized bodies up to this size are read and discarded before the refusal is sent (see
/// `firehose_limit_answers`); larger ones are refused at once and the connection closed.
const MAX_DRAINED_BODY_BYTES: usize = 4 * MAX_REQUEST_BODY_BYTES;

/// The limits every ingest route has. The deadline covers the whole request — reading the body,
/// waiting for the body budget, appending — so a client that trickles its body (one byte now and
/// then) is cut off too; `RequestBodyTimeoutLayer` would not do that, as it restarts its timer
/// on every frame. When the deadline passes, the handler is dropped with the body-budget permit
/// it holds. The size limit refuses a `Content-Length` over the limit before any budget is
/// reserved, and stops a chunked body at the limit.
fn with_request_limits(route: MethodRouter<Arc<Ingest>>, timeout_seconds: u64) -> MethodRouter<Arc<Ingest>> {
    let deadline = TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(timeout_seconds));
    route.layer::<_, Infallible>(deadline).layer::<_, Infallible>(RequestBodyLimitLayer::new(MAX_REQUEST_BODY_BYTES))
}

/// `tower-http` answers 408 and 413 with an empty or plain-text body; the route's own handler
/// never answers those without its error format, so such a response came from the limits.
fn is_bare_limit_answer(response: &Response, status: StatusCode, own_content_type: &str) -> bool {
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    response.status() == status && content_type.is_none_or(|value| !value.starts_with(own_content_type))
}

/// Firehose clients parse `__type` from every error: give the limits' answers that shape.
/// Every answer, the limits' too, carries `x-amzn-RequestId`.
async fn firehose_limit_answers(request: Request, next: Next, timeout_seconds: u64) -> Response {
    let declared = declared_body_len(request.headers());
    if declared.is_some_and(|len| len > MAX_REQUEST_BODY_BYTES && len <= MAX_DRAINED_BODY_BYTES) {
        // Answering before the client has sent its body makes the connection close under it:
        // the SDK then reports a broken pipe instead of the error. Read it (bounded by the
        // request deadline) and throw it away, then answer as Firehose does.
        let drain = async {
            let mut frames = request.into_body().into_data_stream();
            while let Some(Ok(_)) = frames.next().await {}
        };
        let answer = match tokio::time::timeout(Duration::from_secs(timeout_seconds), drain).await {
            Ok(()) => direct_put::ApiError::body_too_large(declared),
            Err(_) => direct_put::ApiError::request_timeout(timeout_seconds),
        };
        let mut response = answer.into_response();
        direct_put::with_request_id(&mut response);
        return response;
    }
    let response = next.run(request).await;
    let mut response = if is_bare_limit_answer(&response, StatusCode::REQUEST_TIMEOUT, "application/x-amz-json") {
        direct_put::ApiError::request_timeout(timeout_seconds).into_response()
    } else if is_bare_limit_answer(&response, StatusCode::PAYLOAD_TOO_LARGE, "application/x-amz-json") {
        // Firehose answers an oversized call 400 InvalidArgumentException, not 413.
        direct_put::ApiError::body_too_large(declared).into_response()
    } else {
        response
    };
    direct_put::with_request_id(&mut response);
    response
}

async fn ndjson_limit_answers(request: Request, next: Next, timeout_seconds: u64) -> Response {
    let response = next.run(request).await;
    if is_bare_limit_answer(&response, StatusCode::REQUEST_TIMEOUT, "application/json") {
        return http::request_timeout(timeout_seconds);
    }
    if is_bare_limit_answer(&response, StatusCode::PAYLOAD_TOO_LARGE, "application/json") {
        return http::body_too_large();
    }
    response
}

async fn metrics(State(ingest): State<Arc<Ingest>>) -> Response {
    let mut response = ingest.metrics.render().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    response
}
