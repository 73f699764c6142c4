//! The HTTP front: routes for the Direct PUT API (`POST /`), NDJSON ingest, `/health`, `/ready`
//! ([`health`]), `/metrics`, the status page (`GET /`, `/api/status`: [`status_page`]), and
//! what stands in front of them: with `server.auth`, a signature check ([`sigv4`]) on every
//! route but `/health` and `/ready` (and the read-only groups listed in
//! `server.auth.open_routes`); on the ingest routes a body-size limit from `tower-http`, with its
//! answers reshaped into each route's error format. The ingest handlers keep their own deadline
//! (`server.request_timeout_seconds`) over reading the body. Connections, their timers and the
//! connection cap are [`serve`]; HTTPS (`server.tls`) is [`tls`].
//!
//! On an ingest route the signature is checked twice: its header before anything else (no body
//! read, no body memory reserved: anonymous and unknown-key requests cost nothing), and the
//! whole signature once the handler has read the body inside its budget.
//!
//! Must not: hold records; handlers append to the WAL through `Ingest` and return.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use futures::StreamExt;
use tower_http::limit::RequestBodyLimitLayer;

use crate::config::OpenRoute;
use crate::sigv4;
use crate::sources::{Ingest, MAX_REQUEST_BODY_BYTES, declared_body_len, direct_put, http};

pub mod health;
pub mod serve;
pub mod status_page;
#[cfg(test)]
mod tests;
pub mod tls;

pub fn router(ingest: Arc<Ingest>) -> Router {
    let timeout_seconds = ingest.config.server.request_timeout_seconds;
    let firehose = with_body_limit(post(direct_put::handle))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            firehose_limit_answers(request, next, timeout_seconds)
        }))
        .layer(middleware::from_fn_with_state(ingest.clone(), firehose_signature));
    let ndjson = with_body_limit(post(http::handle))
        .layer(middleware::from_fn(ndjson_limit_answers))
        .layer(middleware::from_fn_with_state(ingest.clone(), ndjson_signature));
    let status_page = get(status_page::page).layer(middleware::from_fn_with_state(ingest.clone(), status_signature));
    let status_api = get(status_page::status).layer(middleware::from_fn_with_state(ingest.clone(), status_signature));
    let metrics_route = get(metrics).layer(middleware::from_fn_with_state(ingest.clone(), metrics_signature));
    Router::new()
        // `POST /` is the Firehose API; `GET /` the status page.
        .route("/", firehose.merge(status_page))
        .route("/api/status", status_api)
        .route("/streams/{stream}/records", ndjson)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", metrics_route)
        .with_state(ingest)
}

/// With `server.auth`, refuse a Firehose API call whose signature header is missing or cannot be
/// right (unknown key, scope, date, required headers unsigned) before its body is touched: the
/// oversized-body drain and the body budget come after this.
async fn firehose_signature(State(ingest): State<Arc<Ingest>>, request: Request, next: Next) -> Response {
    if let Err(error) = precheck(&ingest, &request, sigv4::FIREHOSE_API_SIGNED_HEADERS) {
        let mut response = direct_put::ApiError::from_auth(error).into_response();
        direct_put::with_request_id(&mut response);
        return response;
    }
    next.run(request).await
}

/// [`firehose_signature`] for NDJSON puts (no `x-amz-target` to sign there).
async fn ndjson_signature(State(ingest): State<Arc<Ingest>>, request: Request, next: Next) -> Response {
    if let Err(error) = precheck(&ingest, &request, sigv4::NDJSON_SIGNED_HEADERS) {
        return http::auth_error(error);
    }
    next.run(request).await
}

/// The body-free part of the signature check, when `server.auth` is on.
fn precheck(ingest: &Ingest, request: &Request, required: &[&str]) -> Result<(), sigv4::AuthError> {
    let Some(auth) = &ingest.config.server.auth else { return Ok(()) };
    sigv4::precheck(auth, request.method().as_str(), request.uri(), request.headers(), required, SystemTime::now())
        .map(|_| ())
}

async fn status_signature(State(ingest): State<Arc<Ingest>>, request: Request, next: Next) -> Response {
    read_signature(&ingest, OpenRoute::Status, request, next).await
}

async fn metrics_signature(State(ingest): State<Arc<Ingest>>, request: Request, next: Next) -> Response {
    read_signature(&ingest, OpenRoute::Metrics, request, next).await
}

/// A read-only route: with `server.auth`, served only to a fully signed `GET` (of an empty
/// body: its body is never read), unless `server.auth.open_routes` lists it.
async fn read_signature(ingest: &Ingest, route: OpenRoute, request: Request, next: Next) -> Response {
    if let Some(auth) = ingest.config.server.auth.as_ref().filter(|auth| !auth.is_open(route)) {
        let verified = sigv4::verify(
            auth,
            request.method().as_str(),
            request.uri(),
            request.headers(),
            sigv4::READ_SIGNED_HEADERS,
            b"",
            SystemTime::now(),
        );
        if let Err(error) = verified {
            return http::auth_error(error);
        }
    }
    next.run(request).await
}

/// Oversized bodies up to this size are read and discarded before the refusal is sent (see
/// `firehose_limit_answers`); larger ones are refused at once and the connection closed.
const MAX_DRAINED_BODY_BYTES: usize = 4 * MAX_REQUEST_BODY_BYTES;

/// The size limit every ingest route has: it refuses a `Content-Length` over the limit before
/// any budget is reserved, and stops a chunked body at the limit. The deadline over reading the
/// body is the handlers' own: it must not cut an append short (a put is answered with what
/// happened to it, never with a 408 while its records are being written).
fn with_body_limit(route: MethodRouter<Arc<Ingest>>) -> MethodRouter<Arc<Ingest>> {
    route.layer(RequestBodyLimitLayer::new(MAX_REQUEST_BODY_BYTES))
}

/// `tower-http` answers 413 with an empty or plain-text body; the route's own handler
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
    let mut response = if is_bare_limit_answer(&response, StatusCode::PAYLOAD_TOO_LARGE, "application/x-amz-json") {
        // Firehose answers an oversized call 400 InvalidArgumentException, not 413.
        direct_put::ApiError::body_too_large(declared).into_response()
    } else {
        response
    };
    direct_put::with_request_id(&mut response);
    response
}

async fn ndjson_limit_answers(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
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
