//! One shard's reader: `GetShardIterator`, then `GetRecords` in a loop, each response appended to
//! the WAL (as one or more frames, split only between Kinesis records) before the next call. The
//! position in each frame is the sequence number of its last Kinesis record, so a restart resumes
//! `AFTER_SEQUENCE_NUMBER` of it; an aggregate's user records never straddle two frames.
//!
//! Limits kept: at most one call per 200 ms per shard (Kinesis allows 5/s), `poll_interval_ms`
//! between calls once caught up, `Limit` ≤ 10,000 records; a response (≤ 10 MiB) is the most a
//! reader holds. Expired iterators are renewed from the last appended position; throttling
//! (`ProvisionedThroughputExceededException`) and transient errors back off exponentially with
//! full jitter; a full WAL makes the reader wait (back-pressure, nothing dropped).
//!
//! Must not: move on past records before their frame is durable.

use std::time::Duration;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use rand::Rng;
use tokio::sync::watch;

use super::kpl::{self, Deaggregated};
use super::metadata::RecordMetadata;
use super::{Context, Position, Start, position_key};
use crate::metrics::ShardMetrics;
use crate::wal::{SourcePosition, WalError};

/// Kinesis allows 5 `GetRecords` per second per shard.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);
/// A frame is cut after this many user records or bytes (at a Kinesis record boundary).
const FRAME_MAX_RECORDS: usize = 5_000;
/// With a Kinesis record of at most 1 MiB on top, a frame stays under 4 MiB: the largest append
/// `limits.max_wal_mib` is sized for.
const FRAME_MAX_BYTES: usize = 3 << 20;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// How a reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The shard is closed and read to its end; its children may start.
    Finished,
    /// Asked to stop.
    Stopped,
}

/// A Kinesis call's failure, classified at the protocol edge.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `ProvisionedThroughputExceededException`, `LimitExceededException`, KMS throttling.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The shard iterator is older than 5 minutes (or otherwise refused); get a new one.
    #[error("shard iterator expired or refused: {0}")]
    Iterator(String),
    /// The stream or shard does not exist (deleted, wrong name): retried, and logged as an error.
    #[error("not found: {0}")]
    NotFound(String),
    /// Connection loss, timeouts, 5xx: retried.
    #[error("{0}")]
    Transient(String),
    /// Access denied, KMS, invalid requests: an operator must act; retried and logged as errors.
    #[error("{0}")]
    NeedsOperator(String),
}

/// Classify any Kinesis call's error by its code (the SDK's typed variants differ per operation).
pub fn classify<E, R>(error: SdkError<E, R>) -> ReadError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let SdkError::ServiceError(context) = &error else {
        return ReadError::Transient(aws_smithy_error_text(&error));
    };
    let service = context.err();
    let text = format!("{}: {}", service.code().unwrap_or("unknown"), service.message().unwrap_or(""));
    match service.code().unwrap_or("") {
        "ProvisionedThroughputExceededException" | "LimitExceededException" | "KMSThrottlingException" => {
            ReadError::Throttled(text)
        }
        "ExpiredIteratorException" => ReadError::Iterator(text),
        "InvalidArgumentException" if text.contains("ShardIterator") => ReadError::Iterator(text),
        "ResourceNotFoundException" => ReadError::NotFound(text),
        "InternalFailureException" | "ServiceUnavailable" | "ServiceUnavailableException" => ReadError::Transient(text),
        _ => ReadError::NeedsOperator(text),
    }
}

/// The error with its sources, for a non-service failure (dispatch, timeout, bad response).
fn aws_smithy_error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Exponential backoff with full jitter.
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = BACKOFF_BASE.saturating_mul(1 << self.attempt.min(10)).min(BACKOFF_CAP);
        self.attempt = self.attempt.saturating_add(1);
        let millis = rand::rng().random_range(ceiling.as_millis() as u64 / 4..=ceiling.as_millis() as u64);
        Duration::from_millis(millis)
    }
}

/// Sleep for `duration`; false when `stop` turned true first.
async fn pause(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Run `call` unless `stop` turns true first (`None` then): a slow Kinesis call never holds up a
/// shutdown, and dropping it changes nothing (positions move only with WAL appends).
pub async fn unless_stopped<T>(
    call: impl std::future::Future<Output = T>,
    stop: &mut watch::Receiver<bool>,
) -> Option<T> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        result = call => Some(result),
        _ = stop.changed() => None,
    }
}

/// Read `shard_id` from `start` until it is finished or `stop`.
pub async fn read_shard(context: &Context, shard_id: &str, start: Start, mut stop: watch::Receiver<bool>) -> Outcome {
    let metrics = context.metrics.source.shard(shard_id);
    let mut backoff = Backoff::new();
    // Where to get a new iterator from: moves with every durable frame.
    let mut resume = start;
    if resume == Start::Latest {
        // Record the start time first, so a restart before any record resumes AT_TIMESTAMP of it
        // instead of at a later LATEST (which would skip what arrived meanwhile).
        let started_at = chrono::Utc::now().timestamp_millis();
        let marker = Position::StartedAt(started_at);
        if !append(context, shard_id, Vec::new(), Vec::new(), &marker, &mut stop).await {
            return Outcome::Stopped;
        }
        tracing::info!(shard = %shard_id, started_at, "kinesis shard starts at LATEST (recorded)");
        resume = Start::AtTimestamp(started_at);
    }
    let mut last_sequence: Option<String> = match &resume {
        Start::After(sequence) => Some(sequence.clone()),
        _ => None,
    };
    let mut iterator: Option<String> = None;
    loop {
        if *stop.borrow() {
            return Outcome::Stopped;
        }
        let current = match iterator.take() {
            Some(current) => current,
            None => match unless_stopped(shard_iterator(context, shard_id, &resume), &mut stop).await {
                None => return Outcome::Stopped,
                Some(Ok(Some(fresh))) => {
                    backoff.reset();
                    fresh
                }
                Some(Ok(None)) => return finish(context, shard_id, last_sequence, &mut stop).await,
                Some(Err(error)) => {
                    if !wait_after(context, shard_id, &error, &metrics, &mut backoff, &mut stop).await {
                        return Outcome::Stopped;
                    }
                    continue;
                }
            },
        };
        // Held until this response is in the WAL: bounds the responses in memory per source.
        let Some(Ok(read_permit)) = unless_stopped(context.reads.acquire(), &mut stop).await else {
            return Outcome::Stopped;
        };
        let called_at = tokio::time::Instant::now();
        let call =
            context.client.get_records().shard_iterator(&current).limit(context.config.max_records_per_call).send();
        let Some(response) = unless_stopped(call, &mut stop).await else { return Outcome::Stopped };
        let output = match response.map_err(classify) {
            Ok(output) => output,
            Err(ReadError::Iterator(reason)) => {
                drop(read_permit);
                tracing::debug!(stream = %context.stream, shard = shard_id, %reason, "renewing the shard iterator");
                // Backs off too, so an iterator refused again and again does not spin.
                if !pause(backoff.next_delay(), &mut stop).await {
                    return Outcome::Stopped;
                }
                continue;
            }
            Err(error) => {
                drop(read_permit);
                iterator = Some(current);
                if !wait_after(context, shard_id, &error, &metrics, &mut backoff, &mut stop).await {
                    return Outcome::Stopped;
                }
                continue;
            }
        };
        backoff.reset();
        let GetRecordsOutput { records, next_shard_iterator, millis_behind_latest, .. } = output;
        if let Some(behind) = millis_behind_latest {
            metrics.millis_behind_latest.set(behind);
        }
        let record_count = records.len();
        for frame in frames(context, shard_id, records, &metrics) {
            let position = Position::After(frame.last_sequence.clone());
            let (count, bytes) = (frame.records.len() as u64, frame.bytes as u64);
            if !append(context, shard_id, frame.records, frame.metadata, &position, &mut stop).await {
                return Outcome::Stopped;
            }
            metrics.records.inc_by(count);
            metrics.bytes.inc_by(bytes);
            context.metrics.incoming_records.inc_by(count);
            context.metrics.incoming_bytes.inc_by(bytes);
            resume = Start::After(frame.last_sequence.clone());
            last_sequence = Some(frame.last_sequence);
        }
        drop(read_permit);
        let Some(next) = next_shard_iterator.filter(|next| !next.is_empty()) else {
            return finish(context, shard_id, last_sequence, &mut stop).await;
        };
        iterator = Some(next);
        // Caught up: nothing came back, or Kinesis says so and the response was not full (a full
        // one means more is waiting whatever `MillisBehindLatest` says; kinesalite always says 0).
        let full_response = record_count >= context.config.max_records_per_call as usize;
        let caught_up = record_count == 0 || (millis_behind_latest == Some(0) && !full_response);
        let spacing = if caught_up { Duration::from_millis(context.config.poll_interval_ms) } else { MIN_CALL_SPACING };
        let wait = spacing.saturating_sub(called_at.elapsed());
        if !wait.is_zero() && !pause(wait, &mut stop).await {
            return Outcome::Stopped;
        }
    }
}

/// Record that the closed shard is read to its end, so a restart skips it and starts its children.
async fn finish(
    context: &Context,
    shard_id: &str,
    last_sequence: Option<String>,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let marker = Position::Closed(last_sequence.unwrap_or_default());
    if append(context, shard_id, Vec::new(), Vec::new(), &marker, stop).await {
        Outcome::Finished
    } else {
        Outcome::Stopped
    }
}

/// Log a failed call and wait before the next; false when stopping.
async fn wait_after(
    context: &Context,
    shard_id: &str,
    error: &ReadError,
    metrics: &ShardMetrics,
    backoff: &mut Backoff,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let wait = backoff.next_delay();
    let retry_in_ms = wait.as_millis() as u64;
    let stream = &context.stream;
    match error {
        ReadError::Throttled(_) => {
            metrics.throttled_reads.inc();
            tracing::debug!(stream = %stream, shard = shard_id, %error, retry_in_ms, "kinesis read throttled");
        }
        ReadError::Transient(_) | ReadError::Iterator(_) => {
            tracing::warn!(stream = %stream, shard = shard_id, %error, retry_in_ms, "kinesis read failed; retrying");
        }
        ReadError::NotFound(_) | ReadError::NeedsOperator(_) => {
            tracing::error!(stream = %stream, shard = shard_id, %error, retry_in_ms, "kinesis read refused; retrying");
        }
    }
    pause(wait, stop).await
}

/// A new iterator at `start`; `None` when the shard no longer exists to be read (an expired
/// closed shard), which counts as read to its end.
async fn shard_iterator(context: &Context, shard_id: &str, start: &Start) -> Result<Option<String>, ReadError> {
    let mut request = context.client.get_shard_iterator().shard_id(shard_id);
    request = match (&context.config.stream_name, &context.config.stream_arn) {
        (Some(name), _) => request.stream_name(name),
        (None, Some(arn)) => request.stream_arn(arn),
        (None, None) => request,
    };
    request = match start {
        Start::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
        Start::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
        Start::AtTimestamp(ms) => {
            request.shard_iterator_type(ShardIteratorType::AtTimestamp).timestamp(DateTime::from_millis(*ms))
        }
        Start::After(sequence) => {
            request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(sequence)
        }
    };
    let output = request.send().await.map_err(classify)?;
    Ok(output.shard_iterator().map(str::to_string))
}

/// Records of one frame, ending at a Kinesis record boundary.
#[derive(Default)]
struct PendingFrame {
    records: Vec<Bytes>,
    /// One encoded [`RecordMetadata`] per record.
    metadata: Vec<Bytes>,
    bytes: usize,
    last_sequence: String,
}

impl PendingFrame {
    fn push(&mut self, data: Bytes, metadata: RecordMetadata) {
        self.bytes += data.len();
        self.records.push(data);
        self.metadata.push(metadata.encode());
    }
}

/// Turn a `GetRecords` response into frames: user records (de-aggregated when enabled), cut at
/// [`FRAME_MAX_RECORDS`] / [`FRAME_MAX_BYTES`] between Kinesis records.
fn frames(
    context: &Context,
    shard_id: &str,
    records: Vec<aws_sdk_kinesis::types::Record>,
    metrics: &ShardMetrics,
) -> Vec<PendingFrame> {
    let mut frames = Vec::new();
    let mut current = PendingFrame::default();
    for record in records {
        let aws_sdk_kinesis::types::Record {
            sequence_number, data, partition_key, approximate_arrival_timestamp, ..
        } = record;
        let partition_key = partition_key.unwrap_or_default();
        let approximate_arrival_ms = approximate_arrival_timestamp.and_then(|time| time.to_millis().ok()).unwrap_or(0);
        let plain = |data: Bytes| {
            let metadata = RecordMetadata {
                sequence_number: sequence_number.clone(),
                subsequence_number: 0,
                partition_key: partition_key.clone(),
                approximate_arrival_ms,
            };
            (data, metadata)
        };
        let data = Bytes::from(data.into_inner());
        let deaggregated = if context.config.deaggregate { kpl::deaggregate(&data) } else { Deaggregated::Plain };
        match deaggregated {
            Deaggregated::Plain => {
                let (data, metadata) = plain(data);
                current.push(data, metadata);
            }
            Deaggregated::Records(sub_records) => {
                for (index, sub_record) in sub_records.into_iter().enumerate() {
                    let metadata = RecordMetadata {
                        sequence_number: sequence_number.clone(),
                        subsequence_number: index as u32,
                        partition_key: sub_record.partition_key,
                        approximate_arrival_ms,
                    };
                    current.push(sub_record.data, metadata);
                }
            }
            Deaggregated::Malformed(reason) => {
                metrics.malformed_aggregates.inc();
                tracing::warn!(
                    stream = %context.stream,
                    shard = shard_id,
                    sequence_number = %sequence_number,
                    reason,
                    "malformed KPL aggregate passed through as one record"
                );
                let (data, metadata) = plain(data);
                current.push(data, metadata);
            }
        }
        current.last_sequence = sequence_number;
        if current.records.len() >= FRAME_MAX_RECORDS || current.bytes >= FRAME_MAX_BYTES {
            frames.push(std::mem::take(&mut current));
        }
    }
    if !current.last_sequence.is_empty() {
        frames.push(current);
    }
    frames
}

/// Append until it succeeds; a full WAL means waiting, not dropping. False when stopping.
async fn append(
    context: &Context,
    shard_id: &str,
    records: Vec<Bytes>,
    metadata: Vec<Bytes>,
    position: &Position,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let source = SourcePosition { shard: position_key(shard_id), position: position.render() };
    let arrival_ms = chrono::Utc::now().timestamp_millis();
    let mut backoff = Duration::from_millis(100);
    loop {
        let appended =
            context.wal.append_pulled_with_metadata(arrival_ms, records.clone(), source.clone(), metadata.clone());
        match appended.await {
            Ok(_) => return true,
            Err(error @ WalError::Full { .. }) => {
                tracing::debug!(stream = %context.stream, shard = shard_id, %error, "wal full; the kinesis reader waits");
            }
            Err(error) => {
                tracing::error!(stream = %context.stream, shard = shard_id, %error, "cannot append kinesis records to the wal; retrying");
            }
        }
        if !pause(backoff, stop).await {
            return false;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
