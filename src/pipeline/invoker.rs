//! Calling a stream's Lambda transform over HTTP: POST the event, read the answer (at most
//! Lambda's 6 MiB), check it against the records sent. HTTP errors, timeouts and connection
//! failures are retried `number_of_retries` times with exponential backoff and full jitter; a
//! response that breaks the protocol (not JSON, missing / duplicated / unknown ids, a bad result)
//! is not retried. At most [`MAX_INVOCATIONS_IN_FLIGHT`] attempts run at once per stream,
//! whatever asks (the live stage, a rebuilt batch, a batch read back).
//!
//! Must not: know about batches, partitions or the WAL; parse the protocol itself (that is
//! `processing::lambda`).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use super::retry::backoff;
use crate::metrics::ProcessingMetrics;
use crate::processing::lambda::{
    self, CONNECTION_FAILED, FUNCTION_ERROR, FUNCTION_TIMED_OUT, INVOKE_ACCESS_DENIED, INVOKE_LIMIT_EXCEEDED,
    InvocationFailure, LambdaConfig, MAX_PAYLOAD_BYTES, RESOURCE_NOT_FOUND, RecordResult,
};

/// Invocations (attempts) in flight per stream: Firehose runs up to 5 per shard.
pub const MAX_INVOCATIONS_IN_FLIGHT: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum InvokerError {
    #[error("lambda transform: {0}")]
    Config(String),
    #[error("lambda transform: cannot build the http client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What became of one invocation.
#[derive(Debug)]
pub struct InvocationReport {
    /// Attempts made (Firehose's `attemptsMade`).
    pub attempts: u32,
    /// Per record, in the order sent; or why the whole invocation failed.
    pub outcome: Result<Vec<RecordResult>, InvocationFailure>,
    /// Whether the last failure was one another attempt may cure (HTTP error, timeout,
    /// connection), as opposed to an answer that breaks the protocol.
    pub retriable: bool,
}

pub struct Invoker {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    retries: u32,
    timeout: Duration,
    /// `lambdaArn` of error records.
    pub lambda_arn: Arc<str>,
    /// The event's `deliveryStreamArn` and `region`.
    pub stream_arn: String,
    pub region: String,
    slots: Arc<Semaphore>,
    metrics: ProcessingMetrics,
}

/// An attempt's failure, and whether another attempt may help.
struct AttemptError {
    failure: InvocationFailure,
    retriable: bool,
}

impl Invoker {
    pub fn new(
        config: &LambdaConfig,
        stream_arn: String,
        region: String,
        metrics: ProcessingMetrics,
    ) -> Result<Self, InvokerError> {
        let url = reqwest::Url::parse(&config.url).map_err(|error| InvokerError::Config(format!("url: {error}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| InvokerError::Config(format!("`{name}` is not a header name")))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| InvokerError::Config(format!("the value of `{name}` is not a header value")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(MAX_INVOCATIONS_IN_FLIGHT)
            .build()?;
        Ok(Self {
            client,
            url,
            headers,
            retries: config.number_of_retries,
            timeout: Duration::from_secs(config.timeout_seconds),
            lambda_arn: Arc::from(config.lambda_arn()),
            stream_arn,
            region,
            slots: Arc::new(Semaphore::new(MAX_INVOCATIONS_IN_FLIGHT)),
            metrics,
        })
    }

    /// Send `event` (its JSON body) holding records `ids`, retrying as configured.
    pub async fn invoke(&self, event: bytes::Bytes, ids: Arc<Vec<String>>) -> InvocationReport {
        let started = std::time::Instant::now();
        let report = self.invoke_with_retries(event, ids).await;
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        match &report.outcome {
            Ok(results) => {
                self.metrics.invocations_succeeded.inc();
                for result in results {
                    match result {
                        RecordResult::Ok { .. } => self.metrics.records_ok.inc(),
                        RecordResult::Dropped => self.metrics.records_dropped.inc(),
                        RecordResult::ProcessingFailed => self.metrics.records_failed.inc(),
                    };
                }
            }
            Err(_) => {
                self.metrics.invocations_failed.inc();
            }
        }
        report
    }

    async fn invoke_with_retries(&self, event: bytes::Bytes, ids: Arc<Vec<String>>) -> InvocationReport {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self.attempt(event.clone(), ids.clone()).await {
                Ok(results) => return InvocationReport { attempts, outcome: Ok(results), retriable: false },
                Err(error) => error,
            };
            if !error.retriable || attempts > self.retries {
                tracing::warn!(url = %self.url, attempts, code = error.failure.code, message = %error.failure.message, "lambda invocation failed");
                return InvocationReport { attempts, outcome: Err(error.failure), retriable: error.retriable };
            }
            let wait = backoff(attempts, None);
            tracing::warn!(url = %self.url, attempts, code = error.failure.code, message = %error.failure.message, wait_ms = wait.as_millis() as u64, "lambda invocation failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// As [`Invoker::invoke`], but a call that keeps failing retriably is retried until the
    /// function answers (backoff capped at 30 s): for records whose first invocation is known to
    /// have been answered (a batch rebuilt or read back), giving up would lose them.
    pub async fn invoke_until_answered(&self, event: bytes::Bytes, ids: Arc<Vec<String>>) -> InvocationReport {
        let mut rounds: u32 = 0;
        loop {
            let report = self.invoke(event.clone(), ids.clone()).await;
            if report.outcome.is_ok() || !report.retriable {
                return report;
            }
            rounds += 1;
            let wait = backoff(rounds + 2, None).max(Duration::from_secs(1));
            tracing::warn!(url = %self.url, rounds, wait_ms = wait.as_millis() as u64, "the lambda must answer again for records it answered before; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, event: bytes::Bytes, ids: Arc<Vec<String>>) -> Result<Vec<RecordResult>, AttemptError> {
        let body = {
            // The semaphore is never closed.
            let _slot =
                self.slots.acquire().await.map_err(|_| retriable(CONNECTION_FAILED, "invoker closed".into()))?;
            self.post(event).await?
        };
        // Base64 decoding of up to 6 MiB: off the runtime.
        let parsed = tokio::task::spawn_blocking(move || {
            let sent: Vec<&str> = ids.iter().map(String::as_str).collect();
            lambda::parse_response(&body, &sent)
        })
        .await
        .map_err(|join| permanent(FUNCTION_ERROR, format!("reading the response failed: {join}")))?;
        parsed.map_err(|failure| AttemptError { failure, retriable: false })
    }

    /// One POST; the body of a 2xx answer.
    async fn post(&self, event: bytes::Bytes) -> Result<Vec<u8>, AttemptError> {
        let sent = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout)
            .body(event)
            .send()
            .await;
        let mut response = sent.map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let snippet: String = text.chars().take(512).collect();
            let code = match status.as_u16() {
                429 => INVOKE_LIMIT_EXCEEDED,
                401 | 403 => INVOKE_ACCESS_DENIED,
                404 => RESOURCE_NOT_FOUND,
                _ => FUNCTION_ERROR,
            };
            return Err(retriable(code, format!("the function answered http {status}: {snippet}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| self.transport_error(&error))? {
            if body.len() + chunk.len() > MAX_PAYLOAD_BYTES {
                return Err(permanent(
                    FUNCTION_ERROR,
                    format!("the response is larger than lambda's {} MiB payload limit", MAX_PAYLOAD_BYTES >> 20),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, error: &reqwest::Error) -> AttemptError {
        if error.is_timeout() {
            return retriable(
                FUNCTION_TIMED_OUT,
                format!("the function did not answer within {} s (timeout_seconds)", self.timeout.as_secs()),
            );
        }
        retriable(CONNECTION_FAILED, format!("cannot reach {}: {}", self.url, spillway_sink_api::error_chain(error)))
    }
}

fn retriable(code: &'static str, message: String) -> AttemptError {
    AttemptError { failure: InvocationFailure { code, message }, retriable: true }
}

fn permanent(code: &'static str, message: String) -> AttemptError {
    AttemptError { failure: InvocationFailure { code, message }, retriable: false }
}
