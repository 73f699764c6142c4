//! NDJSON over HTTP for curl users: `POST /streams/{name}/records` with one JSON document per
//! line. Every line must be valid JSON and within Firehose's record limit; the request is appended
//! all or nothing. Blank lines are skipped; the newline is not part of the record (set
//! `processing.record_delimiter: newline` to keep lines apart in objects). A request holds at
//! most [`MAX_NDJSON_RECORDS`] lines: each record costs memory beyond its bytes, so a body of tiny
//! lines must not turn into millions of them (see docs/benchmarks.md for the measurement).
//!
//! With `server.auth` a put must be SigV4-signed for service `firehose` (curl's `--aws-sigv4`),
//! covering `host`, `x-amz-date` and `content-type`; refusals are 403 with AWS's error type.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::{Ingest, IngestError, MAX_RECORD_BYTES, MAX_REQUEST_BODY_BYTES, declared_body_len, decode_off_runtime};
use crate::sigv4;

/// Most records (non-blank lines) in one request. Firehose caps a call at 500 records; NDJSON
/// senders (curl, log shippers) batch more small lines, so the cap is higher, but bounded: a 6 MiB
/// body of `1\n` lines would otherwise be ~3 million records (measured in docs/benchmarks.md).
pub const MAX_NDJSON_RECORDS: usize = 10_000;
/// NDJSON bodies up to this size are split on the runtime thread; every line is checked as JSON
/// by serde_json, several times slower per byte than the Firehose path's decoder.
const DECODE_INLINE_MAX_BYTES: usize = 64 * 1024;

pub(crate) fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({ "error": code, "message": message }))).into_response()
}

/// The answer to a body over [`MAX_REQUEST_BODY_BYTES`], from the handler or the router's limit.
pub(crate) fn body_too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "InvalidArgumentException",
        format!("request body over {MAX_REQUEST_BODY_BYTES} bytes; split it into several requests"),
    )
}

/// The answer to a request not completed within `server.request_timeout_seconds`.
pub(crate) fn request_timeout(seconds: u64) -> Response {
    error(
        StatusCode::REQUEST_TIMEOUT,
        "RequestTimeoutException",
        format!("request not completed within {seconds} seconds"),
    )
}

/// The answer to a request refused by `server.auth`: 403 with AWS's error type and message.
pub(crate) fn auth_error(failure: crate::sigv4::AuthError) -> Response {
    tracing::debug!(code = failure.code(), error = %failure, "request refused by server.auth");
    error(StatusCode::FORBIDDEN, failure.code(), failure.to_string())
}

pub async fn handle(
    State(ingest): State<Arc<Ingest>>,
    Path(stream): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let timeout_seconds = ingest.config.server.request_timeout_seconds;
    // Covers waiting for body memory and reading the body; not the append (see direct_put).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_seconds);
    // With `server.auth`: everything the headers allow is checked before any body memory is
    // reserved, the signature itself once the body is read.
    let signature = match &ingest.config.server.auth {
        Some(auth) => {
            match sigv4::precheck(auth, "POST", &uri, &headers, sigv4::NDJSON_SIGNED_HEADERS, SystemTime::now()) {
                Ok(signature) => Some(signature),
                Err(failure) => return auth_error(failure),
            }
        }
        None => None,
    };
    // Without auth an unknown stream costs no body memory; with it, only a signed request
    // learns whether a stream exists.
    if signature.is_none() && ingest.stream(&stream).is_none() {
        return unknown_stream(&stream);
    }
    let declared_len = declared_body_len(&headers).unwrap_or(MAX_REQUEST_BODY_BYTES);
    let read = async {
        // Held until the records are appended: the body and the records sliced from it live that long.
        let memory = ingest.reserve_body(declared_len.min(MAX_REQUEST_BODY_BYTES)).await.map_err(ingest_error)?;
        let body = axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES).await.map_err(|_| body_too_large())?;
        Ok::<_, Response>((memory, body))
    };
    let (_memory, body) = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(answer)) => return answer,
        Err(_elapsed) => return request_timeout(timeout_seconds),
    };
    if let Some(signature) = &signature {
        if let Err(failure) = signature.verify_body(&body) {
            return auth_error(failure);
        }
        if ingest.stream(&stream).is_none() {
            return unknown_stream(&stream);
        }
    }
    let records = match decode_off_runtime(body, DECODE_INLINE_MAX_BYTES, |body| split_lines(&body)).await {
        Ok(Ok(records)) => records,
        Ok(Err(message)) => return error(StatusCode::BAD_REQUEST, "InvalidArgumentException", message),
        Err(other) => return ingest_error(other),
    };
    if records.is_empty() {
        return error(StatusCode::BAD_REQUEST, "InvalidArgumentException", "no records in the body".into());
    }
    let count = records.len();
    match ingest.append(&stream, records).await {
        Ok(range) => Json(json!({ "accepted": count, "firstSequence": range.start })).into_response(),
        Err(other) => ingest_error(other),
    }
}

fn unknown_stream(stream: &str) -> Response {
    error(StatusCode::NOT_FOUND, "ResourceNotFoundException", format!("stream {stream} is not configured"))
}

fn ingest_error(failure: IngestError) -> Response {
    match failure {
        IngestError::Throttled => {
            error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableException", "Slow down.".into())
        }
        disk_full @ (IngestError::DiskFull | IngestError::NotReplicated(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableException", disk_full.to_string())
        }
        IngestError::UnknownStream => {
            error(StatusCode::NOT_FOUND, "ResourceNotFoundException", "stream is not configured".into())
        }
        not_pushable @ IngestError::NotPushable { .. } => {
            error(StatusCode::BAD_REQUEST, "InvalidArgumentException", not_pushable.to_string())
        }
        IngestError::NotActive(status) => error(
            StatusCode::CONFLICT,
            "ResourceInUseException",
            format!("stream is {} and takes no records", status.as_str()),
        ),
        IngestError::Internal(message) => error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", message),
    }
}

/// One record per non-blank line, each checked to be JSON; errors name the line. Stops at the
/// first line over [`MAX_NDJSON_RECORDS`], before building more records than a request may hold.
fn split_lines(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut records = Vec::new();
    let mut start = 0;
    // Line ends found with SIMD (memchr), then the text after the last one.
    let line_ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for (index, end) in line_ends.enumerate() {
        let line = &body[start..end];
        let trimmed_end = if line.ends_with(b"\r") { end - 1 } else { end };
        let record = body.slice(start..trimmed_end);
        start = end + 1;
        if record.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if records.len() == MAX_NDJSON_RECORDS {
            return Err(format!(
                "line {}: more than {MAX_NDJSON_RECORDS} records in one request (the per-request record limit); split the body into several requests",
                index + 1
            ));
        }
        if record.len() > MAX_RECORD_BYTES {
            return Err(format!("line {}: record of {} bytes exceeds {MAX_RECORD_BYTES}", index + 1, record.len()));
        }
        if let Err(parse) = serde_json::from_slice::<serde::de::IgnoredAny>(&record) {
            return Err(format!("line {}: invalid JSON: {parse}", index + 1));
        }
        // Refused here rather than acknowledged: a stage of delivery that parses it (jq,
        // partition keys, a format) could only send it to the error output.
        if let Err(too_deep) = spillway_sink_api::check_json_depth(&record) {
            return Err(format!("line {}: {too_deep}", index + 1));
        }
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_names_the_bad_one() {
        let body = Bytes::from_static(b"{\"a\":1}\r\n\n  \n{\"b\":2}");
        assert_eq!(split_lines(&body).unwrap(), vec![Bytes::from("{\"a\":1}"), Bytes::from("{\"b\":2}")]);
        let bad = Bytes::from_static(b"{\"a\":1}\nnot json\n");
        assert!(split_lines(&bad).unwrap_err().starts_with("line 2: invalid JSON"));
    }

    #[test]
    fn more_lines_than_the_record_limit_are_refused_naming_it() {
        let at_limit = Bytes::from("1\n".repeat(MAX_NDJSON_RECORDS));
        assert_eq!(split_lines(&at_limit).map(|records| records.len()), Ok(MAX_NDJSON_RECORDS));
        let over = Bytes::from("1\n".repeat(MAX_NDJSON_RECORDS + 1));
        let message = split_lines(&over).unwrap_err();
        assert!(message.contains(&format!("more than {MAX_NDJSON_RECORDS} records")), "{message}");
    }

    #[test]
    fn a_line_nested_past_the_depth_bound_is_refused_naming_it() {
        let depth = spillway_sink_api::MAX_JSON_DEPTH;
        let at_bound = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let body = Bytes::from(format!("{{\"a\":1}}\n{at_bound}\n{deep}\n"));
        let message = split_lines(&body).unwrap_err();
        assert_eq!(
            message,
            format!(
                "line 3: JSON nested deeper than {depth} levels (the bracket at byte {depth} opens level {})",
                depth + 1
            )
        );
        assert_eq!(split_lines(&Bytes::from(format!("{at_bound}\n"))).map(|records| records.len()), Ok(1));
    }
}
