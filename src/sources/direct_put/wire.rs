//! The AWS JSON 1.1 wire protocol both Firehose planes answer in: [`ApiError`] (HTTP status,
//! `__type`, message, as Firehose names its errors), the success body, request parsing with a
//! nesting bound, and `x-amzn-RequestId` on every response. Shared by the data plane (this
//! module's parent) and the control plane ([`crate::control`]).
//!
//! Must not: dispatch operations, append records or change streams.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::sources::{Ingest, IngestError, MAX_BATCH_BYTES, MAX_REQUEST_BODY_BYTES};

pub(super) const TARGET_PREFIX: &str = "Firehose_20150804.";
pub(super) const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A Firehose error response: HTTP status, `__type`, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn unknown_target(target: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("missing or unknown X-Amz-Target {target:?}; expected {TARGET_PREFIX}<Operation>"),
        )
    }

    /// SigV4 refusals: 400 with AWS's type and message, logged without the signature.
    pub(crate) fn from_auth(error: crate::sigv4::AuthError) -> ApiError {
        tracing::debug!(code = error.code(), %error, "request refused by server.auth");
        ApiError { status: StatusCode::BAD_REQUEST, code: error.code(), message: error.to_string() }
    }

    pub(crate) fn code(&self) -> &'static str {
        self.code
    }
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
    /// A model-constraint violation, worded as AWS words it (see [`super::validation`]).
    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }
    pub(crate) fn resource_in_use(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ResourceInUseException", message)
    }
    pub(crate) fn concurrent_modification(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ConcurrentModificationException", message)
    }
    pub(crate) fn limit_exceeded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "LimitExceededException", message)
    }
    /// An outage the client should retry (SDKs retry `ServiceUnavailableException`).
    pub(crate) fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableException", message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", message)
    }
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgumentException", message)
    }
    pub(crate) fn serialization(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "SerializationException", message)
    }
    pub(crate) fn not_found(stream: &str, ingest: &Ingest) -> Self {
        let message = format!("Firehose {stream} under account {} not found.", ingest.config.server.account_id);
        Self::new(StatusCode::BAD_REQUEST, "ResourceNotFoundException", message)
    }
    /// The answer to a body over [`MAX_REQUEST_BODY_BYTES`] (refused by the router's body limit
    /// before the handler runs); `declared` is the request's `Content-Length`, when it had one.
    pub(crate) fn body_too_large(declared: Option<usize>) -> Self {
        let size = declared.map_or_else(|| "over the limit".to_string(), |bytes| format!("of {bytes} bytes"));
        Self::invalid_argument(format!(
            "request body {size} exceeds the {} MiB request limit (the records of one call may total at most {} MiB)",
            MAX_REQUEST_BODY_BYTES >> 20,
            MAX_BATCH_BYTES >> 20
        ))
    }
    /// The answer to a request not completed within `server.request_timeout_seconds` (a body
    /// that trickles in). AWS SDKs retry `RequestTimeoutException` as a transient error.
    pub(crate) fn request_timeout(seconds: u64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutException",
            format!("request not completed within {seconds} seconds"),
        )
    }
    pub(super) fn from_ingest(error: IngestError, stream: &str, ingest: &Ingest) -> Self {
        match error {
            IngestError::UnknownStream => Self::not_found(stream, ingest),
            IngestError::Throttled => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableException", "Slow down.")
            }
            // SDKs retry ServiceUnavailableException; a full disk is an outage, not a bad request.
            disk_full @ (IngestError::DiskFull | IngestError::NotReplicated(_)) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableException", disk_full.to_string())
            }
            error @ IngestError::NotPushable { .. } => Self::invalid_argument(error.to_string()),
            IngestError::NotActive(status) => Self::resource_in_use(format!(
                "Firehose {stream} under account {} is in the {} state and takes no records.",
                ingest.config.server.account_id,
                status.as_str()
            )),
            IngestError::Internal(message) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "__type": self.code, "message": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert("x-amzn-errortype", HeaderValue::from_static(self.code));
        response
    }
}

pub(crate) fn ok_json(value: Value) -> Response {
    let mut response = (StatusCode::OK, value.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Parse a request body. sonic-rs (SIMD) rather than serde_json: parsing the base64 text of a
/// `PutRecordBatch` was the largest per-byte cost of ingest after compression. The nesting bound
/// is checked first: sonic-rs skips an unknown field by recursing once per level, without a bound,
/// so a body nested 100,000 deep would overflow the stack and abort the process.
pub(crate) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    spillway_sink_api::check_json_depth(body)
        .map_err(|too_deep| ApiError::serialization(format!("malformed request body: {too_deep}")))?;
    sonic_rs::from_slice(body).map_err(|error| ApiError::serialization(format!("malformed request body: {error}")))
}

/// Every AWS response names its request: `x-amzn-RequestId` (SDKs put it in their errors and
/// debug logs). Responses made outside the handler (limits) get one too, through the router.
pub fn with_request_id(response: &mut Response) {
    if response.headers().contains_key(REQUEST_ID_HEADER) {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
}

pub const REQUEST_ID_HEADER: &str = "x-amzn-requestid";
