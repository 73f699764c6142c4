//! The Firehose Direct PUT API over AWS JSON 1.1: `POST /` with
//! `X-Amz-Target: Firehose_20150804.<Operation>`. `PutRecord` and `PutRecordBatch` append to the
//! WAL; `ListDeliveryStreams` and `DescribeDeliveryStream` answer from the YAML. Request limits,
//! response shapes and `__type` error names follow Firehose so AWS SDKs, the AWS CLI and Fluent
//! Bit work unchanged. Requests are not SigV4-verified: bind to loopback or a trusted network.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Ingest, IngestError, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_BYTES, MAX_REQUEST_BODY_BYTES,
    decode_off_runtime,
};

const TARGET_PREFIX: &str = "Firehose_20150804.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A Firehose error response: HTTP status, `__type`, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgumentException", message)
    }
    fn serialization(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "SerializationException", message)
    }
    fn not_found(stream: &str, ingest: &Ingest) -> Self {
        let message = format!("Firehose {stream} under account {} not found.", ingest.config.server.account_id);
        Self::new(StatusCode::BAD_REQUEST, "ResourceNotFoundException", message)
    }
    /// The answer to a body over [`MAX_REQUEST_BODY_BYTES`] (refused by the router's body limit
    /// before the handler runs); `declared` is the request's `Content-Length`, when it had one.
    pub(crate) fn body_too_large(declared: Option<usize>) -> Self {
        let size = declared.map_or_else(|| "over the limit".to_string(), |bytes| format!("of {bytes} bytes"));
        Self::invalid_argument(format!("request body {size} exceeds the {MAX_BATCH_BYTES}-byte batch limit"))
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
    fn from_ingest(error: IngestError, stream: &str, ingest: &Ingest) -> Self {
        match error {
            IngestError::UnknownStream => Self::not_found(stream, ingest),
            IngestError::Throttled => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableException", "Slow down.")
            }
            error @ IngestError::NotPushable { .. } => Self::invalid_argument(error.to_string()),
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

fn ok_json(value: Value) -> Response {
    let mut response = (StatusCode::OK, value.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordRequest<'a> {
    #[serde(borrow)]
    delivery_stream_name: Cow<'a, str>,
    #[serde(borrow)]
    record: RecordIn<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordBatchRequest<'a> {
    #[serde(borrow)]
    delivery_stream_name: Cow<'a, str>,
    #[serde(borrow)]
    records: Vec<RecordIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordIn<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ListRequest {
    limit: Option<usize>,
    delivery_stream_type: Option<String>,
    exclusive_start_delivery_stream_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeRequest {
    delivery_stream_name: String,
}

/// `POST /`: dispatch on `X-Amz-Target`.
pub async fn handle(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    match dispatch(&ingest, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn dispatch(ingest: &Ingest, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let target = headers.get("x-amz-target").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let Some(operation) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("missing or unknown X-Amz-Target {target:?}; expected {TARGET_PREFIX}<Operation>"),
        ));
    };
    // A declared length over the limit never gets here: the router's body limit refuses it. A
    // body without one (chunked) may be up to the limit, so it reserves that much.
    let declared_len = super::declared_body_len(headers).unwrap_or(MAX_REQUEST_BODY_BYTES);
    let _memory = ingest
        .reserve_body(declared_len.min(MAX_REQUEST_BODY_BYTES))
        .await
        .map_err(|error| ApiError::from_ingest(error, "", ingest))?;
    let body = axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES)
        .await
        .map_err(|error| ApiError::invalid_argument(format!("cannot read the request body: {error}")))?;
    match operation {
        "PutRecord" => put_record(ingest, body).await,
        "PutRecordBatch" => put_record_batch(ingest, body).await,
        "ListDeliveryStreams" => list_delivery_streams(ingest, &body),
        "DescribeDeliveryStream" => describe_delivery_stream(ingest, &body),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("operation {other} is not supported by spillway"),
        )),
    }
}

/// Parse a request body. sonic-rs (SIMD) rather than serde_json: parsing the base64 text of a
/// `PutRecordBatch` was the largest per-byte cost of ingest after compression.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    sonic_rs::from_slice(body).map_err(|error| ApiError::serialization(format!("malformed request body: {error}")))
}

/// Decode records' base64 data into one buffer (one allocation per request, not per record)
/// and check Firehose's per-record limit; `member` names a record in errors (`records.3.member`).
fn decode_records<'a>(
    data: impl ExactSizeIterator<Item = &'a str> + Clone,
    member: impl Fn(usize) -> String,
) -> Result<Vec<Bytes>, ApiError> {
    let codec = base64_simd::STANDARD;
    let capacity: usize = data.clone().map(|text| text.len() / 4 * 3).sum();
    let mut buffer = Vec::with_capacity(capacity);
    let mut ends = Vec::with_capacity(data.len());
    for (index, text) in data.enumerate() {
        let invalid = |error: base64_simd::Error| {
            ApiError::serialization(format!("'{}.data' is not valid base64: {error}", member(index)))
        };
        let start = buffer.len();
        let most = codec.estimated_decoded_length(text.len());
        buffer.resize(start + most, 0);
        let decoded_len =
            codec.decode(text.as_bytes(), base64_simd::Out::from_slice(&mut buffer[start..])).map_err(invalid)?.len();
        buffer.truncate(start + decoded_len);
        if decoded_len > MAX_RECORD_BYTES {
            return Err(ApiError::invalid_argument(format!(
                "1 validation error detected: Value at '{}.data' failed to satisfy constraint: \
                 Member must have length less than or equal to {MAX_RECORD_BYTES}",
                member(index)
            )));
        }
        ends.push(buffer.len());
    }
    let buffer = Bytes::from(buffer);
    let mut start = 0;
    Ok(ends
        .into_iter()
        .map(|end| {
            let record = buffer.slice(start..end);
            start = end;
            record
        })
        .collect())
}

/// Decode a put body (JSON, then base64), off the runtime when it is large.
async fn decode_put(body: Bytes, decode: fn(&[u8]) -> Result<DecodedPut, ApiError>) -> Result<DecodedPut, ApiError> {
    decode_off_runtime(body, move |body| decode(&body))
        .await
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", error.to_string()))?
}

/// A decoded put: the stream name and the records' raw bytes.
struct DecodedPut {
    stream: String,
    records: Vec<Bytes>,
}

fn decode_put_record(body: &[u8]) -> Result<DecodedPut, ApiError> {
    let request: PutRecordRequest = parse(body)?;
    let mut decoded = decode_records(std::iter::once(request.record.data.as_ref()), |_| "record".to_string())?;
    let record = decoded.pop().unwrap_or_default();
    Ok(DecodedPut { stream: request.delivery_stream_name.into_owned(), records: vec![record] })
}

fn decode_put_record_batch(body: &[u8]) -> Result<DecodedPut, ApiError> {
    let request: PutRecordBatchRequest = parse(body)?;
    let count = request.records.len();
    if count == 0 || count > MAX_BATCH_RECORDS {
        return Err(ApiError::invalid_argument(format!(
            "1 validation error detected: Value at 'records' failed to satisfy constraint: \
             Member must have length between 1 and {MAX_BATCH_RECORDS} (got {count})"
        )));
    }
    let records = decode_records(request.records.iter().map(|record| record.data.as_ref()), |index| {
        format!("records.{}.member", index + 1)
    })?;
    let total: usize = records.iter().map(Bytes::len).sum();
    if total > MAX_BATCH_BYTES {
        return Err(ApiError::invalid_argument(format!(
            "records total {total} bytes, over the {MAX_BATCH_BYTES}-byte limit of one PutRecordBatch"
        )));
    }
    Ok(DecodedPut { stream: request.delivery_stream_name.into_owned(), records })
}

/// Append a decoded put to its stream's WAL.
async fn append(ingest: &Ingest, put: DecodedPut) -> Result<std::ops::Range<u64>, ApiError> {
    if !ingest.streams.contains_key(&put.stream) {
        return Err(ApiError::not_found(&put.stream, ingest));
    }
    ingest.append(&put.stream, put.records).await.map_err(|error| ApiError::from_ingest(error, &put.stream, ingest))
}

async fn put_record(ingest: &Ingest, body: Bytes) -> Result<Response, ApiError> {
    let range = append(ingest, decode_put(body, decode_put_record).await?).await?;
    Ok(ok_json(json!({ "RecordId": ingest.record_id(range.start), "Encrypted": false })))
}

async fn put_record_batch(ingest: &Ingest, body: Bytes) -> Result<Response, ApiError> {
    let range = append(ingest, decode_put(body, decode_put_record_batch).await?).await?;
    // The batch is appended all or nothing, so no entry fails alone: FailedPutCount is 0 on success.
    // Written directly: a JSON value per record cost more than the rest of the response.
    let mut body = String::with_capacity(64 + range.clone().count() * 72);
    body.push_str(r#"{"FailedPutCount":0,"Encrypted":false,"RequestResponses":["#);
    for (index, sequence) in range.enumerate() {
        if index > 0 {
            body.push(',');
        }
        let _ = write!(body, r#"{{"RecordId":"{}{sequence:024}"}}"#, ingest.record_id_prefix);
    }
    body.push_str("]}");
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

fn list_delivery_streams(ingest: &Ingest, body: &[u8]) -> Result<Response, ApiError> {
    let request: ListRequest = parse(body)?;
    let limit = request.limit.unwrap_or(10);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid_argument("Limit must be between 1 and 10000"));
    }
    // Every stream configured here is a DirectPut stream.
    let type_matches = request.delivery_stream_type.as_deref().is_none_or(|kind| kind == "DirectPut");
    let names: Vec<&String> = ingest
        .streams
        .keys()
        .filter(|_| type_matches)
        .filter(|name| request.exclusive_start_delivery_stream_name.as_ref().is_none_or(|start| *name > start))
        .collect();
    let has_more = names.len() > limit;
    let page: Vec<&String> = names.into_iter().take(limit).collect();
    Ok(ok_json(json!({ "DeliveryStreamNames": page, "HasMoreDeliveryStreams": has_more })))
}

fn describe_delivery_stream(ingest: &Ingest, body: &[u8]) -> Result<Response, ApiError> {
    let request: DescribeRequest = parse(body)?;
    let name = request.delivery_stream_name.as_str();
    let Some(stream) = ingest.streams.get(name) else {
        return Err(ApiError::not_found(name, ingest));
    };
    let server = &ingest.config.server;
    let config = &stream.config;
    let started = ingest.started_at_seconds();
    let destination = config.sink.describe_destination(&server.account_id, config);
    Ok(ok_json(json!({
        "DeliveryStreamDescription": {
            "DeliveryStreamName": name,
            "DeliveryStreamARN": format!("arn:aws:firehose:{}:{}:deliverystream/{name}", server.region, server.account_id),
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamType": "DirectPut",
            "VersionId": "1",
            "CreateTimestamp": started,
            "LastUpdateTimestamp": started,
            "Destinations": [destination],
            "HasMoreDestinations": false,
        }
    })))
}
