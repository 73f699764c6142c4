//! Delivering one batch: retriable failures back off exponentially with full jitter (honouring
//! a destination's `retry_after`) until the stream's retry duration; permanent failures, partial
//! failures and exhausted retries send the affected records to the error output as Firehose
//! error JSON. Nothing is dropped: the error output itself is retried until it succeeds.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rand::Rng;
use serde::Serialize;
use spillway_sink_api::{Batch, ErrorClass, ErrorOutput, Record, Sink};
use tokio::time::Instant;

use crate::metrics::StreamMetrics;

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

pub struct Delivery {
    pub sink: Arc<dyn Sink>,
    pub error_output: Arc<dyn ErrorOutput>,
    /// `!{firehose:error-output-type}` for records the sink refused, e.g. `s3-failed`.
    pub failure_output_type: &'static str,
    pub retry_duration: Duration,
    pub metrics: Arc<StreamMetrics>,
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)].
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    let jittered = Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling.as_secs_f64()));
    jittered.max(retry_after.unwrap_or_default())
}

impl Delivery {
    /// Deliver the batch or route its records to the error output; returns when one of the two
    /// has durably happened.
    pub async fn deliver(&self, batch: &Batch) {
        let started = Instant::now();
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let error = match self.sink.write(batch).await {
                Ok(()) => {
                    StreamMetrics::add(&self.metrics.delivered_records, batch.records.len() as u64);
                    StreamMetrics::add(&self.metrics.delivered_bytes, batch.byte_len() as u64);
                    StreamMetrics::add(&self.metrics.delivered_batches, 1);
                    return;
                }
                Err(error) => error,
            };
            let within_duration = started.elapsed() < self.retry_duration;
            match error.class {
                ErrorClass::Retriable if within_duration => {
                    StreamMetrics::add(&self.metrics.delivery_retries, 1);
                    let wait = backoff(attempts, error.retry_after);
                    tracing::warn!(stream = %batch.stream, batch = %batch.id, attempts, wait_ms = wait.as_millis() as u64, %error, "delivery failed, retrying");
                    tokio::time::sleep(wait).await;
                }
                ErrorClass::Partial => {
                    let failed: Vec<(usize, &str, &str)> = error
                        .failures
                        .iter()
                        .map(|failure| (failure.index, failure.code.as_str(), failure.message.as_str()))
                        .collect();
                    self.route_to_error_output(batch, &failed, attempts).await;
                    return;
                }
                _ => {
                    // The source (e.g. the S3 response) says which bucket or key, and why.
                    let message = match &error.source {
                        Some(source) => format!("{}: {source}", error.message),
                        None => error.message.clone(),
                    };
                    let all: Vec<(usize, &str, &str)> =
                        (0..batch.records.len()).map(|index| (index, error.code.as_str(), message.as_str())).collect();
                    self.route_to_error_output(batch, &all, attempts).await;
                    return;
                }
            }
        }
    }

    /// Write Firehose error records for `failed` (index, code, message) under the error prefix.
    async fn route_to_error_output(&self, batch: &Batch, failed: &[(usize, &str, &str)], attempts: u32) {
        let ending_ms = chrono::Utc::now().timestamp_millis();
        let mut lines = Vec::new();
        for &(index, code, message) in failed {
            let Some(record) = batch.records.get(index) else { continue };
            let document = error_record(record, code, message, attempts, ending_ms);
            if serde_json::to_writer(&mut lines, &document).is_ok() {
                lines.push(b'\n');
            }
        }
        let count = failed.len() as u64;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            match self.error_output.write_error_records(batch, self.failure_output_type, lines.clone()).await {
                Ok(()) => {
                    StreamMetrics::add(&self.metrics.error_output_records, count);
                    tracing::error!(stream = %batch.stream, batch = %batch.id, records = count, error_output_type = self.failure_output_type, code = failed.first().map(|f| f.1).unwrap_or(""), "records routed to the error output");
                    return;
                }
                Err(error) => {
                    let wait = backoff(attempt, error.retry_after);
                    tracing::error!(stream = %batch.stream, batch = %batch.id, %error, wait_ms = wait.as_millis() as u64, "cannot write the error output, retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Firehose's error output record.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorRecord<'a> {
    attempts_made: u32,
    arrival_timestamp: i64,
    error_code: &'a str,
    error_message: &'a str,
    attempt_ending_timestamp: i64,
    raw_data: String,
    sequence_number: String,
}

fn error_record<'a>(
    record: &Record,
    code: &'a str,
    message: &'a str,
    attempts: u32,
    ending_ms: i64,
) -> ErrorRecord<'a> {
    ErrorRecord {
        attempts_made: attempts,
        arrival_timestamp: record.arrival_ms,
        error_code: code,
        error_message: message,
        attempt_ending_timestamp: ending_ms,
        raw_data: base64::engine::general_purpose::STANDARD.encode(&record.data),
        sequence_number: record.sequence.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_ceiling_and_honours_retry_after() {
        for attempt in 0..40 {
            assert!(backoff(attempt, None) <= BACKOFF_CAP);
        }
        assert!(backoff(1, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
    }
}
