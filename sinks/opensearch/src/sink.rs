//! The OpenSearch sink: one attempt per call. Each request body of the batch is POSTed to
//! `_bulk`; the per-item response is read and every failed item becomes a [`RecordFailure`]
//! (429 / 5xx retriable, other 4xx permanent), so the pipeline re-sends only those and sends the
//! permanent ones to the S3 backup. A request refused with 413 is split in two at a record
//! boundary and retried at once; a request failing as a whole (connection, timeout, 5xx) fails
//! its records retriably.
//!
//! Must not: retry with backoff, or hold records (the pipeline owns both).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use spillway_sink_api::{Batch, RecordFailure, Sink, SinkError};
use spillway_sink_s3::S3Sink;

use crate::bulk::{BulkSettings, split_payload};
use crate::config::AuthConfig;
use crate::config::DocumentId;
use crate::error::{RequestError, is_retriable_status, retry_after, status_code};
use crate::sigv4::SigV4Signer;
use futures::StreamExt;

/// `_bulk` requests of one batch in flight at once (a batch larger than `bulk_max_mib`).
const MAX_CONCURRENT_REQUESTS: usize = 4;

pub struct OpenSearchSink {
    pub(crate) client: reqwest::Client,
    /// `<url>/_bulk?filter_path=…`: only what outcomes need comes back.
    pub(crate) bulk_url: String,
    pub(crate) root_url: String,
    pub(crate) auth: AuthConfig,
    pub(crate) settings: Arc<BulkSettings>,
    pub(crate) signer: Option<SigV4Signer>,
    /// `backup.mode: all` (Firehose's `AllDocuments`): every batch's documents also go to the
    /// backup sink, one object per batch, before `_bulk`.
    pub(crate) all_documents: Option<Arc<S3Sink>>,
}

impl std::fmt::Debug for OpenSearchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSearchSink").field("url", &self.root_url).field("index", &self.settings.index).finish()
    }
}

/// What one `_bulk` request came to.
#[derive(Default)]
struct Outcome {
    failures: Vec<RecordFailure>,
    /// Requests that failed as a whole, retriably (their records are in `failures` too).
    whole: Vec<SinkError>,
}

/// A `_bulk` response read only as far as needed: `errors` and the number of items (each item
/// skipped without building anything, `IgnoredAny` is zero-sized). Only when `errors` is true is
/// the response read again as [`BulkResponse`], item by item.
#[derive(Deserialize)]
struct BulkSummary {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<std::collections::BTreeMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl OpenSearchSink {
    pub(crate) fn new(
        url: &str,
        auth: AuthConfig,
        settings: Arc<BulkSettings>,
        timeout: std::time::Duration,
    ) -> Result<Self, SinkError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(std::time::Duration::from_secs(10))
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|error| {
                SinkError::permanent("OpenSearch.InvalidConfig", "cannot build the http client").with_source(error)
            })?;
        let root_url = url.trim_end_matches('/').to_string();
        let bulk_url =
            format!("{root_url}/_bulk?filter_path=errors,items.*.status,items.*.error.type,items.*.error.reason");
        let signer = match &auth {
            AuthConfig::AwsSigv4 { region, service, access_key_id, secret_access_key, session_token } => {
                Some(match (access_key_id, secret_access_key) {
                    (Some(key), Some(secret)) => SigV4Signer::with_credentials(
                        region.clone(),
                        service.clone(),
                        aws_credential_types::Credentials::new(
                            key.expose(),
                            secret.expose(),
                            session_token.as_ref().map(|token| token.expose().to_string()),
                            None,
                            "spillway-config",
                        ),
                    ),
                    _ => SigV4Signer::new(region.clone(), service.clone()),
                })
            }
            _ => None,
        };
        Ok(Self { client, bulk_url, root_url, auth, settings, signer, all_documents: None })
    }

    /// Add the configured authentication: basic credentials, or SigV4 headers over `body`.
    async fn authenticated(
        &self,
        request: reqwest::RequestBuilder,
        method: &'static str,
        url: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<reqwest::RequestBuilder, SinkError> {
        match &self.auth {
            AuthConfig::None => Ok(request),
            AuthConfig::Basic { username, password } => Ok(request.basic_auth(username, Some(password.expose()))),
            AuthConfig::AwsSigv4 { .. } => {
                let Some(signer) = &self.signer else { return Ok(request) };
                let headers = signer.headers(method, url, content_type, body).await?;
                Ok(headers.into_iter().fold(request, |request, (name, value)| request.header(name, value)))
            }
        }
    }

    /// One POST to `_bulk`; per-item failures are named by `positions` (batch positions of the
    /// body's records, in order).
    async fn post(&self, body: Bytes, positions: &[usize]) -> Result<Vec<RecordFailure>, RequestError> {
        const NDJSON: &str = "application/x-ndjson";
        let request = self.client.post(&self.bulk_url).header(reqwest::header::CONTENT_TYPE, NDJSON).body(body.clone());
        let request = self
            .authenticated(request, "POST", &self.bulk_url, Some(NDJSON), body)
            .await
            .map_err(RequestError::Signing)?;
        let response = request.send().await.map_err(|error| {
            if error.is_timeout() { RequestError::Timeout(error) } else { RequestError::Connection(error) }
        })?;
        let status = response.status().as_u16();
        if status == 413 {
            return Err(RequestError::TooLarge);
        }
        if !response.status().is_success() {
            let retry_after = retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(1000).collect();
            return Err(RequestError::Status { status, body, retry_after });
        }
        let bytes = response.bytes().await.map_err(|error| {
            if error.is_timeout() { RequestError::Timeout(error) } else { RequestError::Connection(error) }
        })?;
        let (errors, items) = match successful_items(&bytes) {
            Some(items) => (false, items),
            None => {
                let summary: BulkSummary =
                    serde_json::from_slice(&bytes).map_err(|error| RequestError::Response(error.to_string()))?;
                (summary.errors, summary.items.len())
            }
        };
        if items != positions.len() {
            return Err(RequestError::Response(format!("{items} items for {} documents sent", positions.len())));
        }
        if !errors {
            return Ok(Vec::new());
        }
        let parsed: BulkResponse =
            serde_json::from_slice(&bytes).map_err(|error| RequestError::Response(error.to_string()))?;
        let mut failures = Vec::new();
        for (item, &index) in parsed.items.iter().zip(positions) {
            let Some(outcome) = item.values().next() else { continue };
            if (200..300).contains(&outcome.status) {
                continue;
            }
            let message = match &outcome.error {
                Some(error) => error.to_string(),
                None => format!("opensearch answered {} for this document", outcome.status),
            };
            failures.push(RecordFailure {
                index,
                retriable: is_retriable_status(outcome.status),
                code: status_code(outcome.status),
                message,
            });
        }
        Ok(failures)
    }

    /// Send one request body, splitting it in two on 413 until it fits.
    async fn send(&self, body: Bytes, positions: Vec<usize>, outcome: &mut Outcome) {
        let mut pending = vec![(body, positions)];
        while let Some((body, positions)) = pending.pop() {
            match self.post(body.clone(), &positions).await {
                Ok(failures) => outcome.failures.extend(failures),
                Err(RequestError::TooLarge) if positions.len() > 1 => {
                    let half = positions.len() / 2;
                    let cut = record_boundary(&body, half);
                    tracing::warn!(
                        records = positions.len(),
                        bytes = body.len(),
                        "opensearch refused a _bulk request as too large (413), splitting it"
                    );
                    pending.push((body.slice(cut..), positions[half..].to_vec()));
                    pending.push((body.slice(..cut), positions[..half].to_vec()));
                }
                Err(error) => {
                    let error = error.into_sink_error();
                    let retriable = error.is_retriable();
                    outcome.failures.extend(positions.iter().map(|&index| RecordFailure {
                        index,
                        retriable,
                        code: error.code.clone(),
                        message: error.message.clone(),
                    }));
                    if retriable {
                        outcome.whole.push(error);
                    }
                }
            }
        }
    }
}

/// The number of items of a response that says `"errors":false` first, as the bulk URL's
/// `filter_path` shapes it (`{"errors":false,"items":[{"index":{"status":201}},…]}`), counted
/// without parsing: each item has exactly one `"status":`, and inside a JSON string its quotes
/// would be escaped. `None` for any other response, which is then parsed.
fn successful_items(response: &[u8]) -> Option<usize> {
    let rest = response.strip_prefix(br#"{"errors":false"#)?;
    Some(memchr::memmem::find_iter(rest, br#""status":"#).count())
}

/// Byte offset after the `records`-th record (two lines each: action and document).
fn record_boundary(body: &[u8], records: usize) -> usize {
    let mut newlines = 0;
    for (offset, &byte) in body.iter().enumerate() {
        if byte == b'\n' {
            newlines += 1;
            if newlines == records * 2 {
                return offset + 1;
            }
        }
    }
    body.len()
}

/// Write the documents of a batch's `_bulk` bodies (every second line: the lines after the
/// actions) to the backup sink, newline-delimited and in its compression. Only the batch's first,
/// whole write is kept: a partial retry re-sends a subset under the same key.
async fn backup_all_documents(backup: &S3Sink, batch: &Batch, bodies: &[Bytes]) -> Result<(), SinkError> {
    let encoding_failed = |error: spillway_sink_api::EncodeError| {
        SinkError::permanent("OpenSearch.BackupEncoding", "cannot encode the backup of all documents")
            .with_source(error)
    };
    let mut encoder = backup.encoder_factory().new_encoder(spillway_sink_api::encode::DEFAULT_CHUNK_BYTES);
    for body in bodies {
        for document in body.split(|&byte| byte == b'\n').skip(1).step_by(2).filter(|line| !line.is_empty()) {
            encoder.push(document, b"\n").map_err(encoding_failed)?;
        }
    }
    let payload = encoder.finish().map_err(encoding_failed)?;
    backup.write_once(&Batch { payload, ..batch.clone() }).await
}

#[async_trait]
impl Sink for OpenSearchSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() || batch.payload.is_empty() {
            return Ok(());
        }
        let (manifest, bodies) = split_payload(&batch.payload).map_err(|error| {
            SinkError::permanent("OpenSearch.InvalidPayload", "the batch is not a _bulk payload").with_source(error)
        })?;
        let positions = manifest.request_positions();
        let listed: usize = positions.iter().map(Vec::len).sum::<usize>() + manifest.refused.len();
        if positions.len() != bodies.len() || listed != batch.record_count() {
            // Never report records as written that no request carries.
            return Err(SinkError::permanent(
                "OpenSearch.InvalidPayload",
                format!(
                    "the payload lists {listed} records in {} requests for a batch of {} records in {} bodies",
                    positions.len(),
                    batch.record_count(),
                    bodies.len()
                ),
            ));
        }
        if let Some(backup) = &self.all_documents {
            backup_all_documents(backup, batch, &bodies).await?;
        }
        let mut outcome = Outcome::default();
        outcome.failures.extend(manifest.refused.iter().map(|refused| RecordFailure {
            index: refused.index,
            retriable: false,
            code: refused.code.clone(),
            message: refused.message.clone(),
        }));
        // Requests of one batch go out side by side, except with ids from a field: two records of
        // a batch may share an id there, and the later one must win, so they go in order.
        let concurrency = match self.settings.document_id {
            DocumentId::FromField(_) => 1,
            _ => MAX_CONCURRENT_REQUESTS,
        };
        let mut sent = futures::stream::iter(bodies.into_iter().zip(positions).map(|(body, positions)| async move {
            let mut request_outcome = Outcome::default();
            self.send(body, positions, &mut request_outcome).await;
            request_outcome
        }))
        .buffer_unordered(concurrency);
        while let Some(request_outcome) = sent.next().await {
            outcome.failures.extend(request_outcome.failures);
            outcome.whole.extend(request_outcome.whole);
        }
        if outcome.failures.is_empty() {
            return Ok(());
        }
        let retry_after = outcome.whole.iter().filter_map(|error| error.retry_after).max();
        let all_failed_whole =
            outcome.failures.len() == batch.record_count() && outcome.failures.iter().all(|failure| failure.retriable);
        if all_failed_whole && !outcome.whole.is_empty() {
            // Nothing got through: one retriable error for the batch, as the cluster said it.
            return Err(outcome.whole.swap_remove(0));
        }
        outcome.failures.sort_by_key(|failure| failure.index);
        let mut error = SinkError::partial(outcome.failures);
        error.retry_after = retry_after;
        Err(error)
    }

    /// `GET /`: the cluster answers and the credentials are accepted. A missing index is not a
    /// problem (`_bulk` creates it).
    async fn healthcheck(&self) -> Result<(), SinkError> {
        let url = format!("{}/", self.root_url);
        let request = self.authenticated(self.client.get(&url), "GET", &url, None, Bytes::new()).await?;
        let response = request.send().await.map_err(|error| {
            SinkError::retriable("OpenSearch.ConnectionFailed", format!("cannot reach {}", self.root_url))
                .with_source(error)
        })?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(());
        }
        let body: String = response.text().await.unwrap_or_default().chars().take(300).collect();
        Err(SinkError::retriable(status_code(status), format!("{} answered {status}: {body}", self.root_url)))
    }

    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successful_responses_are_counted_without_parsing_and_others_are_parsed() {
        let ok = br#"{"errors":false,"items":[{"index":{"status":201}},{"index":{"status":200}}]}"#;
        assert_eq!(successful_items(ok), Some(2));
        assert_eq!(successful_items(br#"{"errors":false,"items":[]}"#), Some(0));
        let failed = br#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":400,"error":{"type":"x","reason":"\"status\": no"}}}]}"#;
        assert_eq!(successful_items(failed), None);
        let summary: BulkSummary = serde_json::from_slice(failed).unwrap();
        assert!(summary.errors);
        assert_eq!(summary.items.len(), 2);
        let parsed: BulkResponse = serde_json::from_slice(failed).unwrap();
        assert_eq!(parsed.items[1]["index"].status, 400);
    }

    #[test]
    fn bodies_split_after_whole_records() {
        let body = b"{\"index\":{}}\n{\"a\":1}\n{\"index\":{}}\n{\"a\":2}\n{\"index\":{}}\n{\"a\":3}\n";
        let cut = record_boundary(body, 1);
        assert_eq!(&body[..cut], b"{\"index\":{}}\n{\"a\":1}\n");
        assert_eq!(record_boundary(body, 3), body.len());
    }
}
