//! The HTTP endpoint sink: one attempt per call. Each request of the batch is POSTed as the
//! protocol says (headers, `{"requestId","timestamp","records"}` body, gzip when configured) and
//! its response read as the contract says. A request refused with 413 is split in two at a record
//! boundary and sent again at once, down to one record, which is then the record's own fault.
//!
//! **Request ids.** A request's id is derived from the batch id and its first record's position
//! and count (a split half's from its parent's id), so it is the same on every retry and after a
//! restart, when the batch is rebuilt from the WAL with the same records: a receiver that
//! deduplicates by `X-Amz-Firehose-Request-Id`, as the contract suggests, sees each record once.
//! When some requests of a batch were taken and others must be retried, the pipeline re-sends
//! only the failed records, re-encoded; the sink remembers (in memory, per batch id) how they
//! were grouped and under which ids, and sends them grouped the same way again, so two failed
//! requests are never merged into one with a new id.
//!
//! Must not: retry with backoff, or hold records (the pipeline owns both).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use spillway_sink_api::{Batch, RecordFailure, RequestCounts, Sink, SinkError};
use spillway_sink_s3::S3Sink;
use uuid::Uuid;

use crate::config::{ContentEncoding, HttpEndpointSinkConfig};
use crate::encode::{Manifest, RequestEntry, join_records, record_data, records_of, split_payload};
use crate::error::{RequestError, retry_after};
use crate::stats::RequestStats;

/// Requests of one batch in flight at once (a batch of more than one request).
const MAX_CONCURRENT_REQUESTS: usize = 4;
/// Firehose reads at most 1 MiB of a response.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Batches whose retried requests' grouping is remembered; past it the oldest is forgotten (its
/// records are then grouped afresh, under new ids: never lost, at worst seen twice).
const MAX_REMEMBERED_BATCHES: usize = 1024;

pub const REQUEST_ID_HEADER: &str = "x-amz-firehose-request-id";

/// One request: its id, its record array, and where its records sit in the batch.
#[derive(Debug, Clone)]
struct Request {
    id: Uuid,
    array: Bytes,
    first_index: usize,
    count: usize,
}

impl Request {
    /// Each of the request's records failed with `error` (retriable as the error is).
    fn failures<'a>(&self, error: &'a SinkError) -> impl Iterator<Item = RecordFailure> + 'a {
        (self.first_index..self.first_index + self.count).map(|index| RecordFailure {
            index,
            retriable: error.is_retriable(),
            code: error.code.clone(),
            message: error.message.clone(),
        })
    }
}

/// A request to send again, remembered by id and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    id: Uuid,
    count: usize,
}

#[derive(Default)]
struct Plans {
    by_batch: HashMap<Uuid, Vec<Planned>>,
    order: VecDeque<Uuid>,
}

impl Plans {
    fn remember(&mut self, batch: Uuid, plan: Vec<Planned>) {
        if self.by_batch.insert(batch, plan).is_none() {
            self.order.push_back(batch);
        }
        while self.order.len() > MAX_REMEMBERED_BATCHES {
            if let Some(oldest) = self.order.pop_front() {
                self.by_batch.remove(&oldest);
            }
        }
    }

    fn forget(&mut self, batch: Uuid) {
        if self.by_batch.remove(&batch).is_some() {
            self.order.retain(|remembered| *remembered != batch);
        }
    }
}

/// What the requests of one write came to.
#[derive(Default)]
struct Outcome {
    accepted: usize,
    /// Requests that failed retriably, with the error.
    retriable: Vec<(Request, SinkError)>,
    /// Records refused for good (a one-record request answered 413).
    permanent: Vec<RecordFailure>,
}

/// The contract's response body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseBody {
    request_id: Option<String>,
    timestamp: Option<i64>,
    error_message: Option<String>,
}

pub struct HttpEndpointSink {
    client: reqwest::Client,
    url: String,
    /// Every request's headers but its id.
    headers: HeaderMap,
    gzip: bool,
    /// `backup.mode: all` (Firehose's `AllData`): every batch's records also go to the backup,
    /// one object per batch, before the requests.
    all_records: Option<Arc<S3Sink>>,
    plans: Mutex<Plans>,
    pub stats: Arc<RequestStats>,
}

impl std::fmt::Debug for HttpEndpointSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEndpointSink").field("url", &self.url).finish()
    }
}

impl HttpEndpointSink {
    pub(crate) fn new(
        config: &HttpEndpointSinkConfig,
        stream_arn: &str,
        all_records: Option<Arc<S3Sink>>,
    ) -> Result<Self, SinkError> {
        let invalid = |message: String| SinkError::permanent("HttpEndpoint.InvalidConfig", message);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.request_timeout_seconds))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(MAX_CONCURRENT_REQUESTS * 2)
            // 3xx is an answer, not a place to go (the contract): retried, then error output.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| invalid(format!("cannot build the http client: {error}")))?;
        let mut headers = HeaderMap::new();
        let value = |text: &str, what: &str| {
            HeaderValue::from_str(text).map_err(|_| invalid(format!("{what} is not a valid header value")))
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("x-amz-firehose-protocol-version", HeaderValue::from_static("1.0"));
        headers.insert("x-amz-firehose-source-arn", value(stream_arn, "the stream's arn")?);
        headers.insert(
            "x-amz-firehose-common-attributes",
            value(&config.common_attributes_header(), "common_attributes")?,
        );
        if let Some(key) = config.access_key.as_ref().filter(|key| !key.expose().is_empty()) {
            let mut key = value(key.expose(), "access_key")?;
            key.set_sensitive(true);
            headers.insert("x-amz-firehose-access-key", key);
        }
        if config.content_encoding == ContentEncoding::Gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, text) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid(format!("header {name:?}")))?;
            headers.insert(name, value(text, "a header")?);
        }
        Ok(Self {
            client,
            url: config.url.clone(),
            headers,
            gzip: config.content_encoding == ContentEncoding::Gzip,
            all_records,
            plans: Mutex::new(Plans::default()),
            stats: Arc::new(RequestStats::default()),
        })
    }

    /// The batch's requests: as the encoder grouped them, or, for the records of failed requests
    /// sent again, as those requests were (same groups, same ids).
    fn requests(&self, batch: &Batch, manifest: &Manifest, arrays: Vec<Bytes>) -> Vec<Request> {
        let plan = self.plans.lock().ok().and_then(|plans| plans.by_batch.get(&batch.id).cloned());
        if let Some(plan) = plan.filter(|plan| plan.iter().map(|p| p.count).sum::<usize>() == batch.record_count()) {
            let records: Vec<Bytes> = arrays.iter().flat_map(records_of).collect();
            if records.len() == batch.record_count() {
                let mut requests = Vec::with_capacity(plan.len());
                let mut first_index = 0;
                for planned in plan {
                    let group = &records[first_index..first_index + planned.count];
                    requests.push(Request {
                        id: planned.id,
                        array: join_records(group),
                        first_index,
                        count: planned.count,
                    });
                    first_index += planned.count;
                }
                return requests;
            }
        }
        let mut first_index = 0;
        manifest
            .requests
            .iter()
            .zip(arrays)
            .map(|(entry, array)| {
                let request = Request { id: request_id(batch.id, entry), array, first_index, count: entry.count };
                first_index += entry.count;
                request
            })
            .collect()
    }

    /// The request's body: the contract's envelope around its record array, gzipped if
    /// configured. Uncompressed, the record array is not copied: the body is the envelope's head,
    /// the array and its tail, written one after the other.
    async fn body(&self, request: &Request, timestamp: i64) -> Result<RequestBody, RequestError> {
        let id = request.id.hyphenated().to_string();
        let head = Bytes::from(format!(r#"{{"requestId":"{id}","timestamp":{timestamp},"records":["#));
        let parts = [head, request.array.clone(), Bytes::from_static(b"]}")];
        if !self.gzip {
            return Ok(RequestBody::new(parts));
        }
        // Up to 64 MiB to compress: off the async runtime.
        let compressed = tokio::task::spawn_blocking(move || gzip(&parts))
            .await
            .map_err(|error| RequestError::Compression(error.to_string()))??;
        Ok(RequestBody::new([compressed]))
    }

    /// One POST, its response read as the contract says.
    async fn post(&self, request: &Request) -> Result<(), RequestError> {
        let timestamp = chrono::Utc::now().timestamp_millis();
        let body = self.body(request, timestamp).await?;
        let sent_bytes = body.len() as usize;
        let id = request.id.hyphenated().to_string();
        let result = self.exchange(&id, body).await;
        let outcome = match &result {
            Ok(()) => "200",
            Err(error) => error.outcome(),
        };
        self.stats.request(outcome, request.count, sent_bytes);
        result
    }

    async fn exchange(&self, id: &str, body: RequestBody) -> Result<(), RequestError> {
        let mut response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(REQUEST_ID_HEADER, id)
            .body(reqwest::Body::wrap(body))
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let wait = retry_after(response.headers());
        let mut read = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if read.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(RequestError::ResponseTooLarge);
            }
            read.extend_from_slice(&chunk);
        }
        let parsed = serde_json::from_slice::<ResponseBody>(&read).ok();
        if status == 200 {
            let Some(parsed) = parsed else {
                return Err(RequestError::InvalidResponse(format!(
                    "200 with a body that is not JSON: {}",
                    excerpt(&read)
                )));
            };
            if parsed.request_id.as_deref() != Some(id) {
                return Err(RequestError::InvalidResponse(format!(
                    "200 for request {id} names requestId {:?}",
                    parsed.request_id.unwrap_or_default()
                )));
            }
            if parsed.timestamp.is_none() {
                return Err(RequestError::InvalidResponse("200 without a timestamp".into()));
            }
            return Ok(());
        }
        Err(RequestError::Status {
            status,
            error_message: parsed.and_then(|parsed| parsed.error_message),
            body: excerpt(&read),
            retry_after: wait,
        })
    }

    /// Send one request, splitting it in two on 413 until it is taken or down to one record.
    async fn send(&self, request: Request) -> Outcome {
        let mut outcome = Outcome::default();
        let mut pending = vec![request];
        while let Some(request) = pending.pop() {
            match self.post(&request).await {
                Ok(()) => outcome.accepted += request.count,
                Err(error) if error.status() == Some(413) && request.count > 1 => {
                    let records = records_of(&request.array);
                    if records.len() != request.count {
                        // Never with this crate's encoder; the records go to the backup, not lost.
                        let error = invalid_payload("a request's records cannot be told apart");
                        outcome.permanent.extend(request.failures(&error));
                        continue;
                    }
                    self.stats.split();
                    let half = request.count / 2;
                    tracing::warn!(records = request.count, request_id = %request.id, "the endpoint refused a request as too large (413), splitting it");
                    pending.push(Request {
                        id: Uuid::new_v5(&request.id, b"split 1"),
                        array: join_records(&records[half..]),
                        first_index: request.first_index + half,
                        count: request.count - half,
                    });
                    pending.push(Request {
                        id: Uuid::new_v5(&request.id, b"split 0"),
                        array: join_records(&records[..half]),
                        first_index: request.first_index,
                        count: half,
                    });
                }
                Err(error) => {
                    let error = error.into_sink_error();
                    if error.is_retriable() {
                        outcome.retriable.push((request, error));
                    } else {
                        outcome.permanent.extend(request.failures(&error));
                    }
                }
            }
        }
        outcome
    }
}

/// A request body made of parts sent one after the other, with its exact length (so the request
/// carries `Content-Length`, as Firehose's do, rather than chunked encoding).
struct RequestBody {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl RequestBody {
    fn new(parts: impl IntoIterator<Item = Bytes>) -> Self {
        let parts: VecDeque<Bytes> = parts.into_iter().filter(|part| !part.is_empty()).collect();
        let remaining = parts.iter().map(|part| part.len() as u64).sum();
        Self { parts, remaining }
    }

    fn len(&self) -> u64 {
        self.remaining
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.parts.pop_front();
        if let Some(part) = &next {
            self.remaining -= part.len() as u64;
        }
        std::task::Poll::Ready(next.map(|part| Ok(http_body::Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// A request's id: the batch id, where its first record sits in the stream, and its size.
pub fn request_id(batch: Uuid, entry: &RequestEntry) -> Uuid {
    let name = format!("request {}.{} {}", entry.first_sequence, entry.first_output, entry.count);
    Uuid::new_v5(&batch, name.as_bytes())
}

fn transport_error(error: reqwest::Error) -> RequestError {
    if error.is_timeout() {
        RequestError::Timeout(error)
    } else if error.is_connect() {
        RequestError::Connection(error)
    } else {
        RequestError::ConnectionReset(error)
    }
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(1000)]).into_owned()
}

fn invalid_payload(message: &str) -> SinkError {
    SinkError::permanent("HttpEndpoint.InvalidPayload", message.to_string())
}

fn gzip(parts: &[Bytes]) -> Result<Bytes, RequestError> {
    let mut encoder = spillway_sink_api::RawEncoder::new(spillway_sink_api::Compression::Gzip, 1 << 20);
    use spillway_sink_api::Encoder;
    for part in parts {
        encoder.push(part, b"").map_err(|error| RequestError::Compression(error.to_string()))?;
    }
    let payload = Box::new(encoder).finish().map_err(|error| RequestError::Compression(error.to_string()))?;
    Ok(payload.to_bytes())
}

/// Write the batch's records (decoded from its requests) to the backup sink, in its compression.
/// Only the batch's first, whole write is kept: a partial retry re-sends a subset under the same
/// id and so the same key.
async fn backup_all_records(backup: &S3Sink, batch: &Batch, requests: &[Request]) -> Result<(), SinkError> {
    let arrays: Vec<Bytes> = requests.iter().map(|request| request.array.clone()).collect();
    let encoders = backup.encoder_factory();
    let payload = tokio::task::spawn_blocking(move || -> Result<_, SinkError> {
        let mut encoder = encoders.new_encoder(spillway_sink_api::encode::DEFAULT_CHUNK_BYTES);
        let failed = |error: spillway_sink_api::EncodeError| {
            SinkError::permanent("HttpEndpoint.BackupEncoding", "cannot encode the backup of all records")
                .with_source(error)
        };
        for array in &arrays {
            for record in records_of(array) {
                let data =
                    record_data(&record).ok_or_else(|| invalid_payload("a record of the batch is not base64"))?;
                encoder.push(&data, b"").map_err(failed)?;
            }
        }
        encoder.finish().map_err(failed)
    })
    .await
    .map_err(|error| {
        SinkError::retriable("HttpEndpoint.BackupEncoding", "encoding the backup failed").with_source(error)
    })??;
    backup.write_once(&Batch { payload, ..batch.clone() }).await
}

#[async_trait]
impl Sink for HttpEndpointSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() || batch.payload.is_empty() {
            return Ok(());
        }
        let (manifest, arrays) = split_payload(&batch.payload).map_err(|error| {
            SinkError::permanent("HttpEndpoint.InvalidPayload", "the batch is not a request payload").with_source(error)
        })?;
        if manifest.requests.len() != arrays.len() || manifest.records() != batch.record_count() {
            // Never report records as written that no request carries.
            return Err(invalid_payload(&format!(
                "the payload lists {} records in {} requests for a batch of {} records in {} arrays",
                manifest.records(),
                manifest.requests.len(),
                batch.record_count(),
                arrays.len()
            )));
        }
        let requests = self.requests(batch, &manifest, arrays);
        if let Some(backup) = &self.all_records {
            backup_all_records(backup, batch, &requests).await?;
        }
        let mut sent = futures::stream::iter(requests.into_iter().map(|request| self.send(request)))
            .buffer_unordered(MAX_CONCURRENT_REQUESTS);
        let mut outcome = Outcome::default();
        while let Some(request_outcome) = sent.next().await {
            outcome.accepted += request_outcome.accepted;
            outcome.retriable.extend(request_outcome.retriable);
            outcome.permanent.extend(request_outcome.permanent);
        }
        drop(sent);
        outcome.retriable.sort_by_key(|(request, _)| request.first_index);
        if outcome.retriable.is_empty() {
            if let Ok(mut plans) = self.plans.lock() {
                plans.forget(batch.id);
            }
            if outcome.permanent.is_empty() {
                return Ok(());
            }
            outcome.permanent.sort_by_key(|failure| failure.index);
            return Err(SinkError::partial(outcome.permanent));
        }
        let retry_after = outcome.retriable.iter().filter_map(|(_, error)| error.retry_after).max();
        if outcome.accepted == 0 && outcome.permanent.is_empty() {
            // Nothing was taken: the same payload comes back whole and makes the same requests.
            let (_, mut error) = outcome.retriable.swap_remove(0);
            error.retry_after = retry_after;
            return Err(error);
        }
        // Some taken, some not: only the failed records come back; remember how they were grouped.
        let plan =
            outcome.retriable.iter().map(|(request, _)| Planned { id: request.id, count: request.count }).collect();
        if let Ok(mut plans) = self.plans.lock() {
            plans.remember(batch.id, plan);
        }
        let mut failures = outcome.permanent;
        for (request, error) in &outcome.retriable {
            failures.extend(request.failures(error));
        }
        failures.sort_by_key(|failure| failure.index);
        let mut error = SinkError::partial(failures);
        error.retry_after = retry_after;
        Err(error)
    }

    /// The endpoint answers at all (any status: the contract has no health request, and a POST
    /// would have to carry records). Nothing is sent but a `GET` without the access key.
    async fn healthcheck(&self) -> Result<(), SinkError> {
        match self.client.get(&self.url).timeout(Duration::from_secs(10)).send().await {
            Ok(_) => Ok(()),
            Err(error) => Err(transport_error(error).into_sink_error()),
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }

    fn request_counts(&self) -> Option<RequestCounts> {
        let stats = self.stats.snapshot();
        Some(RequestCounts {
            by_outcome: stats.by_outcome.into_iter().collect(),
            records: stats.records_sent,
            bytes: stats.bytes_sent,
        })
    }
}
