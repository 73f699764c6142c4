//! The Firehose API over AWS JSON 1.1: `POST /` with `X-Amz-Target: Firehose_20150804.<Operation>`.
//! This module owns the wire protocol ([`wire`]: error shapes, parsing, `x-amzn-RequestId` on
//! every response; [`validation`]: the service model's constraints, AWS-worded), the dispatch on
//! the target, and the data plane: `PutRecord` and `PutRecordBatch` append to the WAL. Control
//! operations (create, describe, update, delete, tags, encryption) are handed to the control
//! plane, [`crate::control`], which answers in the same wire protocol. Request limits, response
//! shapes and `__type` error names follow Firehose so AWS SDKs, the AWS CLI, Terraform and Fluent
//! Bit work unchanged. Requests are SigV4-verified only with `server.auth`
//! ([`crate::sigv4`]); without it, bind to loopback or a trusted network.
//!
//! Must not: create, change or delete streams (the control plane does).

pub mod source;
pub mod validation;
pub mod wire;

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::wal::{FramedRecords, Records};

pub use wire::{ApiError, with_request_id};
use wire::{CONTENT_TYPE, TARGET_PREFIX, ok_json, parse};

use super::{Ingest, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_BYTES, MAX_REQUEST_BODY_BYTES, decode_off_runtime};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordRequest<'a> {
    #[serde(borrow)]
    delivery_stream_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    record: Option<RecordIn<'a>>,
}

/// Members are optional here so that a missing one is a `ValidationException` naming it (as
/// AWS answers), not a parse error.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordBatchRequest<'a> {
    #[serde(borrow)]
    delivery_stream_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    records: Option<Vec<RecordIn<'a>>>,
}

/// The model's constraints on a put's stream name (required, pattern, length).
fn check_stream_name(violations: &mut validation::Violations, name: Option<&str>) {
    violations.required(name, "deliveryStreamName");
    if let Some(name) = name {
        violations.stream_name(name, "deliveryStreamName");
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordIn<'a> {
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

impl RecordIn<'_> {
    fn data(&self) -> &str {
        self.data.as_deref().unwrap_or_default()
    }
}

/// The endpoint's operations that are not puts (create, describe, update, delete, tags,
/// encryption): the control plane answers them in this module's wire protocol. A port, so that
/// the data plane does not depend on the control plane built above it (the app wires them).
#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync {
    /// Whether `operation` (the `X-Amz-Target` suffix) is one of the control plane's.
    fn answers(&self, operation: &str) -> bool;

    async fn call(&self, ingest: &Arc<Ingest>, operation: &str, body: &[u8]) -> Result<Response, ApiError>;
}

/// `POST /`: dispatch on `X-Amz-Target`.
pub async fn handle(State(ingest): State<Arc<Ingest>>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let mut response = match dispatch(&ingest, &uri, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    with_request_id(&mut response);
    response
}

async fn dispatch(ingest: &Arc<Ingest>, uri: &Uri, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let timeout_seconds = ingest.config.server.request_timeout_seconds;
    // The whole-request deadline covers reading the body (and waiting for its memory) and a
    // control operation; a put's append, once begun, runs to its end (bounded by the WAL's
    // `limits.full_wait_ms`) so that its answer says what happened to its records.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout_seconds);
    let target = headers.get("x-amz-target").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let operation = target.strip_prefix(TARGET_PREFIX);
    // As AWS does, the signature is checked before anything else about the call: all of it that
    // needs no body now, before any body memory is reserved (the router refused most failures
    // already; this is the same check, here to hold the result), the rest once the body is read.
    let signature = match &ingest.config.server.auth {
        Some(auth) => Some(
            crate::sigv4::precheck(
                auth,
                "POST",
                uri,
                headers,
                crate::sigv4::FIREHOSE_API_SIGNED_HEADERS,
                std::time::SystemTime::now(),
            )
            .map_err(ApiError::from_auth)?,
        ),
        None => None,
    };
    // Without `server.auth`, an unknown operation is refused before the body is read.
    if operation.is_none() && signature.is_none() {
        return Err(ApiError::unknown_target(target));
    }
    // A declared length over the limit never gets here: the router's body limit refuses it. A
    // body without one (chunked) may be up to the limit, so it reserves that much.
    let declared_len = super::declared_body_len(headers).unwrap_or(MAX_REQUEST_BODY_BYTES);
    let read = async {
        let memory = ingest
            .reserve_body(declared_len.min(MAX_REQUEST_BODY_BYTES))
            .await
            .map_err(|error| ApiError::from_ingest(error, "", ingest))?;
        let body = axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES)
            .await
            .map_err(|error| ApiError::invalid_argument(format!("cannot read the request body: {error}")))?;
        Ok::<_, ApiError>((memory, body))
    };
    let (_memory, body) =
        tokio::time::timeout_at(deadline, read).await.map_err(|_| ApiError::request_timeout(timeout_seconds))??;
    if let Some(signature) = &signature {
        signature.verify_body(&body).map_err(ApiError::from_auth)?;
    }
    let Some(operation) = operation else {
        return Err(ApiError::unknown_target(target));
    };
    match operation {
        "PutRecord" => put_record(ingest, body).await,
        "PutRecordBatch" => put_record_batch(ingest, body).await,
        other if ingest.control.as_ref().is_some_and(|control| control.answers(other)) => {
            let control = ingest.control.as_ref().ok_or_else(|| ApiError::internal("no control plane"))?;
            tokio::time::timeout_at(deadline, control.call(ingest, other, &body))
                .await
                .map_err(|_| ApiError::request_timeout(timeout_seconds))?
        }
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("operation {other} is not supported by spillway"),
        )),
    }
}

/// Decode records' base64 data into one buffer laid out as the WAL frame holds it (one
/// allocation per request, not per record, and no copy when the WAL writes it), and check
/// Firehose's per-record limit; `member` names a record in errors (`records.3.member`).
fn decode_records<'a>(
    data: impl ExactSizeIterator<Item = &'a str> + Clone,
    member: impl Fn(usize) -> String,
) -> Result<Records, ApiError> {
    let codec = base64_simd::STANDARD;
    let capacity: usize = data.clone().map(|text| text.len() / 4 * 3).sum();
    let mut records = FramedRecords::with_capacity(capacity, data.len());
    for (index, text) in data.enumerate() {
        let invalid = |error: base64_simd::Error| {
            ApiError::serialization(format!("'{}.data' is not valid base64: {error}", member(index)))
        };
        let most = codec.estimated_decoded_length(text.len());
        let decoded_len = records.push_with(most, |out| {
            codec
                .decode(text.as_bytes(), base64_simd::Out::from_slice(out))
                .map(|decoded| decoded.len())
                .map_err(invalid)
        })?;
        if decoded_len > MAX_RECORD_BYTES {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value at '{}.data' failed to satisfy constraint: \
                 Member must have length less than or equal to {MAX_RECORD_BYTES}",
                member(index)
            )));
        }
    }
    Ok(records.finish())
}

/// Put bodies up to this size are decoded on the runtime thread: a `PutRecordBatch` of 500 log
/// lines (~190 KiB) takes about 60 µs with sonic-rs and SIMD base64, less than the blocking pool's
/// round trip costs in wake-ups (6 % less server CPU, 10 % faster drain than at 64 KiB).
const DECODE_INLINE_MAX_BYTES: usize = 256 * 1024;

/// Decode a put body (JSON, then base64), off the runtime when it is large.
async fn decode_put(body: Bytes, decode: fn(&[u8]) -> Result<DecodedPut, ApiError>) -> Result<DecodedPut, ApiError> {
    decode_off_runtime(body, DECODE_INLINE_MAX_BYTES, move |body| decode(&body))
        .await
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", error.to_string()))?
}

/// A decoded put: the stream name and the records' raw bytes.
struct DecodedPut {
    stream: String,
    records: Records,
}

fn decode_put_record(body: &[u8]) -> Result<DecodedPut, ApiError> {
    let request: PutRecordRequest = parse(body)?;
    let mut violations = validation::Violations::new();
    check_stream_name(&mut violations, request.delivery_stream_name.as_deref());
    violations.required(request.record.as_ref(), "record");
    if let Some(record) = &request.record {
        violations.required(record.data.as_ref(), "record.data");
    }
    violations.finish()?;
    let (Some(stream), Some(record)) = (request.delivery_stream_name, request.record) else {
        return Err(ApiError::validation("1 validation error detected: a required member is missing"));
    };
    let records = decode_records(std::iter::once(record.data()), |_| "record".to_string())?;
    Ok(DecodedPut { stream: stream.into_owned(), records })
}

fn decode_put_record_batch(body: &[u8]) -> Result<DecodedPut, ApiError> {
    let request: PutRecordBatchRequest = parse(body)?;
    let mut violations = validation::Violations::new();
    check_stream_name(&mut violations, request.delivery_stream_name.as_deref());
    violations.required(request.records.as_ref(), "records");
    if let Some(records) = &request.records {
        violations.list_length(records.len(), "records", 1, MAX_BATCH_RECORDS);
        for (index, record) in records.iter().enumerate() {
            violations.required(record.data.as_ref(), &format!("records.{}.member.data", index + 1));
        }
    }
    violations.finish()?;
    let (Some(stream), Some(records_in)) = (request.delivery_stream_name, request.records) else {
        return Err(ApiError::validation("1 validation error detected: a required member is missing"));
    };
    let records =
        decode_records(records_in.iter().map(RecordIn::data), |index| format!("records.{}.member", index + 1))?;
    let total = records.byte_len();
    if total > MAX_BATCH_BYTES {
        // Firehose's own words for it (an InvalidArgumentException, not a model constraint).
        return Err(ApiError::invalid_argument(format!(
            "Records size exceeds 4 MB limit (got {total} bytes, limit {MAX_BATCH_BYTES})"
        )));
    }
    Ok(DecodedPut { stream: stream.into_owned(), records })
}

/// What an appended put answers with: its sequences, the stream's record ids and whether the
/// stream reports server-side encryption (`StartDeliveryStreamEncryption`).
struct Appended {
    range: std::ops::Range<u64>,
    ids: super::RecordIds,
    encrypted: bool,
}

/// Append a decoded put to its stream's WAL.
async fn append(ingest: &Ingest, put: DecodedPut) -> Result<Appended, ApiError> {
    let Some(stream) = ingest.stream(&put.stream) else {
        return Err(ApiError::not_found(&put.stream, ingest));
    };
    let range = ingest
        .append(&put.stream, put.records)
        .await
        .map_err(|error| ApiError::from_ingest(error, &put.stream, ingest))?;
    let encrypted = stream.record.encryption.status == "ENABLED";
    Ok(Appended { range, ids: ingest.record_ids(&stream.record), encrypted })
}

async fn put_record(ingest: &Ingest, body: Bytes) -> Result<Response, ApiError> {
    let appended = append(ingest, decode_put(body, decode_put_record).await?).await?;
    let record_id = appended.ids.id(appended.range.start);
    Ok(ok_json(json!({ "RecordId": record_id, "Encrypted": appended.encrypted })))
}

async fn put_record_batch(ingest: &Ingest, body: Bytes) -> Result<Response, ApiError> {
    let Appended { range, ids, encrypted } = append(ingest, decode_put(body, decode_put_record_batch).await?).await?;
    // The batch is appended all or nothing, so no entry fails alone: FailedPutCount is 0 on success.
    // Written directly: a JSON value per record cost more than the rest of the response.
    let mut body = String::with_capacity(64 + range.clone().count() * 72);
    body.push_str(r#"{"FailedPutCount":0,"Encrypted":"#);
    body.push_str(if encrypted { "true" } else { "false" });
    body.push_str(r#","RequestResponses":["#);
    for (index, sequence) in range.enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(r#"{"RecordId":""#);
        ids.write(&mut body, sequence);
        body.push_str(r#""}"#);
    }
    body.push_str("]}");
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}
