//! NDJSON over HTTP for curl users: `POST /streams/{name}/records` with one JSON document per
//! line. Every line must be valid JSON and within Firehose's record limit; the request is appended
//! all or nothing. Blank lines are skipped; the newline is not part of the record (set
//! `processing.record_delimiter: newline` to keep lines apart in objects).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::{Ingest, IngestError, MAX_RECORD_BYTES, MAX_REQUEST_BODY_BYTES};

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({ "error": code, "message": message }))).into_response()
}

pub async fn handle(
    State(ingest): State<Arc<Ingest>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !ingest.streams.contains_key(&stream) {
        return error(StatusCode::NOT_FOUND, "ResourceNotFoundException", format!("stream {stream} is not configured"));
    }
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(MAX_REQUEST_BODY_BYTES);
    let _memory = ingest.reserve_body(declared_len.min(MAX_REQUEST_BODY_BYTES)).await;
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "InvalidArgumentException",
                format!("request body over {MAX_REQUEST_BODY_BYTES} bytes; split it into several requests"),
            );
        }
    };
    let records = match split_lines(&body) {
        Ok(records) => records,
        Err(message) => return error(StatusCode::BAD_REQUEST, "InvalidArgumentException", message),
    };
    if records.is_empty() {
        return error(StatusCode::BAD_REQUEST, "InvalidArgumentException", "no records in the body".into());
    }
    let count = records.len();
    match ingest.append(&stream, records).await {
        Ok(range) => Json(json!({ "accepted": count, "firstSequence": range.start })).into_response(),
        Err(IngestError::Throttled) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableException", "Slow down.".into())
        }
        Err(other) => error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", other.to_string()),
    }
}

/// One record per non-blank line, each checked to be JSON; errors name the line.
fn split_lines(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut records = Vec::new();
    let mut start = 0;
    for (index, line) in body.split(|&byte| byte == b'\n').enumerate() {
        let end = start + line.len();
        let trimmed_end = if line.ends_with(b"\r") { end - 1 } else { end };
        let record = body.slice(start..trimmed_end);
        start = end + 1;
        if record.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if record.len() > MAX_RECORD_BYTES {
            return Err(format!("line {}: record of {} bytes exceeds {MAX_RECORD_BYTES}", index + 1, record.len()));
        }
        if let Err(parse) = serde_json::from_slice::<serde::de::IgnoredAny>(&record) {
            return Err(format!("line {}: invalid JSON: {parse}", index + 1));
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
}
