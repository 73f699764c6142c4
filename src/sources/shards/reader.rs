//! One shard's reader: get an iterator, then `GetRecords` in a loop, each response appended to
//! the WAL (as one or more frames, split only between source records) before the next call. The
//! position in each frame is the sequence number of its last source record, so a restart resumes
//! `AFTER_SEQUENCE_NUMBER` of it; a KPL aggregate's user records never straddle two frames.
//!
//! Limits kept: at most one call per 200 ms per shard (Kinesis and DynamoDB Streams allow 5/s),
//! `poll_interval` between calls once caught up, `Limit` as configured; one response is the most
//! a reader holds. Expired iterators are renewed from the last appended position; throttling and
//! transient errors back off exponentially with full jitter; trimmed data (DynamoDB
//! `TrimmedDataAccessException`: the position is older than the retention) is reported and read
//! on from the trim horizon; a full WAL makes the reader wait (back-pressure, nothing dropped).
//!
//! Must not: move on past records before their frame is durable; know one service's API.

use std::time::Duration;

// The SDKs share these types (aws-smithy re-exports): one classifier serves every AWS adapter.
#[cfg(any(feature = "source-kinesis", feature = "source-dynamodb-streams"))]
use aws_sdk_kinesis::config::http::HttpResponse;
#[cfg(any(feature = "source-kinesis", feature = "source-dynamodb-streams"))]
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use bytes::Bytes;
use rand::Rng;
use tokio::sync::watch;

use super::{Context, Fetched, Position, SourceRecord, Start, TimestampStarts};
use crate::metrics::ShardMetrics;
use crate::wal::{SourcePosition, WalError};

/// Kinesis and DynamoDB Streams allow 5 `GetRecords` per second per shard.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);
/// A frame is cut after this many user records or bytes (at a source record boundary).
const FRAME_MAX_RECORDS: usize = 5_000;
/// With a source record of at most 1 MiB on top, a frame stays under 4 MiB: the largest append
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

/// A shard service call's failure, classified at the protocol edge.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `ProvisionedThroughputExceededException`, `LimitExceededException`, KMS throttling.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The shard iterator is too old (Kinesis and DynamoDB: 15 minutes / 5 minutes unused) or
    /// otherwise refused; get a new one.
    #[error("shard iterator expired or refused: {0}")]
    Iterator(String),
    /// The position asked for is beyond the retention (DynamoDB `TrimmedDataAccessException`):
    /// what lay between it and the trim horizon is gone; read on from the trim horizon.
    #[error("records trimmed before they were read: {0}")]
    Trimmed(String),
    /// The stream, table or shard does not exist (deleted, wrong name): retried, logged as an error.
    #[error("not found: {0}")]
    NotFound(String),
    /// Connection loss, timeouts, 5xx: retried.
    #[error("{0}")]
    Transient(String),
    /// Access denied, KMS, invalid requests, a table without a stream: an operator must act;
    /// retried and logged as errors.
    #[error("{0}")]
    NeedsOperator(String),
}

/// Classify any Kinesis or DynamoDB (Streams) call's error by its code (the SDK's typed variants
/// differ per operation).
#[cfg(any(feature = "source-kinesis", feature = "source-dynamodb-streams"))]
pub fn classify<E>(error: SdkError<E, HttpResponse>) -> ReadError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let SdkError::ServiceError(context) = &error else {
        return ReadError::Transient(spillway_sink_api::error_chain(&error));
    };
    let service = context.err();
    let text = format!("{}: {}", service.code().unwrap_or("unknown"), service.message().unwrap_or(""));
    match service.code().unwrap_or("") {
        "ProvisionedThroughputExceededException"
        | "LimitExceededException"
        | "KMSThrottlingException"
        | "ThrottlingException"
        | "RequestLimitExceeded" => ReadError::Throttled(text),
        "ExpiredIteratorException" => ReadError::Iterator(text),
        "InvalidArgumentException" | "ValidationException" if text.contains("ShardIterator") => {
            ReadError::Iterator(text)
        }
        "TrimmedDataAccessException" => ReadError::Trimmed(text),
        "ResourceNotFoundException" => ReadError::NotFound(text),
        "InternalFailureException" | "InternalServerError" | "ServiceUnavailable" | "ServiceUnavailableException" => {
            ReadError::Transient(text)
        }
        // A 5xx without a known code (an HTML error page from a proxy or an emulator) is the
        // server's trouble, not a refusal.
        _ if context.raw().status().is_server_error() => ReadError::Transient(text),
        _ => ReadError::NeedsOperator(text),
    }
}

/// Exponential backoff with full jitter.
pub struct Backoff {
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
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

/// Run `call` unless `stop` turns true first (`None` then): a slow service call never holds up a
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

/// The oldest creation time (epoch ms, rounded down to the source's granularity) a record needs
/// to be kept when reading from `start`; `None` when every record is kept.
fn skip_before(timestamps: TimestampStarts, start: &Start) -> Option<i64> {
    match (timestamps, start) {
        (TimestampStarts::FromTrimHorizon { granularity_ms }, Start::AtTimestamp(ms)) => {
            let granularity = granularity_ms.max(1);
            Some(ms.div_euclid(granularity) * granularity)
        }
        _ => None,
    }
}

/// Read `shard_id` from `start` until it is finished or `stop`.
pub async fn read_shard(context: &Context, shard_id: &str, start: Start, mut stop: watch::Receiver<bool>) -> Outcome {
    let kind = context.api.kind();
    let metrics = context.metrics.source.shard(shard_id);
    let mut backoff = Backoff::new();
    // Where to get a new iterator from: moves with every durable frame.
    let mut resume = start;
    if resume == Start::Latest {
        // Record the start time first, so a restart before any record resumes at it instead of
        // at a later LATEST (which would skip what arrived meanwhile).
        let started_at = chrono::Utc::now().timestamp_millis();
        let marker = Position::StartedAt(started_at);
        if !append(context, shard_id, Vec::new(), Vec::new(), &marker, &mut stop).await {
            return Outcome::Stopped;
        }
        tracing::info!(shard = %shard_id, started_at, "{kind} shard starts at LATEST (recorded)");
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
            None => match unless_stopped(context.api.shard_iterator(shard_id, &resume), &mut stop).await {
                None => return Outcome::Stopped,
                Some(Ok(Some(fresh))) => {
                    backoff.reset();
                    fresh
                }
                Some(Ok(None)) => return finish(context, shard_id, last_sequence, &mut stop).await,
                Some(Err(ReadError::Trimmed(reason))) => {
                    resume = trimmed(context, shard_id, &resume, &reason);
                    continue;
                }
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
        let limit = context.settings.max_records_per_call;
        let call = context.api.get_records(shard_id, &current, limit, &metrics);
        let Some(response) = unless_stopped(call, &mut stop).await else { return Outcome::Stopped };
        let fetched = match response {
            Ok(fetched) => fetched,
            Err(ReadError::Iterator(reason)) => {
                drop(read_permit);
                tracing::debug!(stream = %context.stream, shard = shard_id, %reason, "renewing the shard iterator");
                // Backs off too, so an iterator refused again and again does not spin.
                if !pause(backoff.next_delay(), &mut stop).await {
                    return Outcome::Stopped;
                }
                continue;
            }
            Err(ReadError::Trimmed(reason)) => {
                drop(read_permit);
                resume = trimmed(context, shard_id, &resume, &reason);
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
        let Fetched { records, next_iterator, millis_behind_latest } = fetched;
        if let Some(behind) = millis_behind_latest {
            metrics.millis_behind_latest.set(behind);
        }
        let record_count = records.len();
        let cut = skip_before(context.api.timestamp_starts(), &resume);
        let (frames, kept_from) = frames(records, cut);
        if let Some(cut) = cut
            && record_count > 0
        {
            tracing::debug!(stream = %context.stream, shard = shard_id, response_records = record_count, before_ms = cut, first_kept = ?kept_from, "reading past records older than the start time");
        }
        for frame in frames {
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
        let Some(next) = next_iterator.filter(|next| !next.is_empty()) else {
            return finish(context, shard_id, last_sequence, &mut stop).await;
        };
        iterator = Some(next);
        // Caught up: nothing came back, or the service says so and the response was not full (a
        // full one means more is waiting whatever `MillisBehindLatest` says; kinesalite always
        // says 0).
        let full_response = record_count >= limit as usize;
        let caught_up = record_count == 0 || (millis_behind_latest == Some(0) && !full_response);
        let spacing = if caught_up { context.settings.poll_interval } else { MIN_CALL_SPACING };
        let wait = spacing.saturating_sub(called_at.elapsed());
        if !wait.is_zero() && !pause(wait, &mut stop).await {
            return Outcome::Stopped;
        }
    }
}

/// The position is older than the retention: say what was lost and read on from the trim
/// horizon (the only records left). A `LATEST` start's time still applies there.
fn trimmed(context: &Context, shard_id: &str, resume: &Start, reason: &str) -> Start {
    tracing::error!(
        stream = %context.stream,
        shard = shard_id,
        position = ?resume,
        reason,
        "records between the position and the trim horizon expired before they were read; reading on from the trim horizon"
    );
    match resume {
        Start::AtTimestamp(_) => resume.clone(),
        _ => Start::TrimHorizon,
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
    let kind = context.api.kind();
    match error {
        ReadError::Throttled(_) => {
            metrics.throttled_reads.inc();
            tracing::debug!(stream = %stream, shard = shard_id, %error, retry_in_ms, "{kind} read throttled");
        }
        ReadError::Transient(_) | ReadError::Iterator(_) | ReadError::Trimmed(_) => {
            tracing::warn!(stream = %stream, shard = shard_id, %error, retry_in_ms, "{kind} read failed; retrying");
        }
        ReadError::NotFound(_) | ReadError::NeedsOperator(_) => {
            tracing::error!(stream = %stream, shard = shard_id, %error, retry_in_ms, "{kind} read refused; retrying");
        }
    }
    pause(wait, stop).await
}

/// Records of one frame, ending at a source record boundary.
#[derive(Default)]
struct PendingFrame {
    records: Vec<Bytes>,
    /// One metadata entry per record, or none.
    metadata: Vec<Bytes>,
    bytes: usize,
    last_sequence: String,
}

/// Turn a response's records into frames, cut at [`FRAME_MAX_RECORDS`] / [`FRAME_MAX_BYTES`]
/// between source records. With `skip_before`, records created before it are left out until the
/// first one that is not (a shard's records are in creation order); returns that record's
/// sequence number, or `None` when every record was skipped.
fn frames(records: Vec<SourceRecord>, skip_before: Option<i64>) -> (Vec<PendingFrame>, Option<String>) {
    let mut frames = Vec::new();
    let mut current = PendingFrame::default();
    let mut skipping = skip_before;
    let mut kept_from = None;
    for record in records {
        if let Some(cut) = skipping {
            if record.created_ms.is_some_and(|created| created < cut) {
                continue;
            }
            skipping = None;
        }
        if kept_from.is_none() {
            kept_from = Some(record.sequence_number.clone());
        }
        for user in record.users {
            current.bytes += user.data.len();
            current.records.push(user.data);
            if let Some(metadata) = user.metadata {
                current.metadata.push(metadata);
            }
        }
        current.last_sequence = record.sequence_number;
        if current.records.len() >= FRAME_MAX_RECORDS || current.bytes >= FRAME_MAX_BYTES {
            frames.push(std::mem::take(&mut current));
        }
    }
    if !current.last_sequence.is_empty() {
        frames.push(current);
    }
    (frames, kept_from)
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
    let source = SourcePosition { shard: context.position_key(shard_id), position: position.render() };
    let arrival_ms = chrono::Utc::now().timestamp_millis();
    let kind = context.api.kind();
    let mut backoff = Duration::from_millis(100);
    loop {
        let appended =
            context.wal.append_pulled_with_metadata(arrival_ms, records.clone(), source.clone(), metadata.clone());
        match appended.await {
            Ok(sequences) => {
                if let Some(boundaries) = &context.boundaries {
                    boundaries.push(sequences.end, source.position.clone());
                }
                return true;
            }
            Err(error @ WalError::Full { .. }) => {
                tracing::debug!(stream = %context.stream, shard = shard_id, %error, "wal full; the {kind} reader waits");
            }
            Err(error) => {
                tracing::error!(stream = %context.stream, shard = shard_id, %error, "cannot append {kind} records to the wal; retrying");
            }
        }
        if !pause(backoff, stop).await {
            return false;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::shards::UserRecord;

    fn record(sequence: &str, created_ms: i64, users: usize) -> SourceRecord {
        SourceRecord {
            sequence_number: sequence.to_string(),
            created_ms: Some(created_ms),
            users: (0..users)
                .map(|index| UserRecord { data: Bytes::from(format!("{sequence}/{index}")), metadata: None })
                .collect(),
        }
    }

    #[test]
    fn frames_end_at_source_records_and_skip_what_precedes_the_start() {
        let records = vec![record("1", 1_000, 1), record("2", 2_000, 2), record("3", 2_500, 1)];
        let (all, kept_from) = frames(records.clone(), None);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].records.len(), 4);
        assert_eq!(all[0].last_sequence, "3");
        assert_eq!(kept_from.as_deref(), Some("1"));

        let timestamps = TimestampStarts::FromTrimHorizon { granularity_ms: 1_000 };
        // Started at 2.7 s: rounded down to 2 s, so records of that second are kept.
        let cut = skip_before(timestamps, &Start::AtTimestamp(2_700));
        assert_eq!(cut, Some(2_000));
        let (kept, kept_from) = frames(records.clone(), cut);
        assert_eq!(kept_from.as_deref(), Some("2"));
        assert_eq!(kept[0].records, [Bytes::from("2/0"), Bytes::from("2/1"), Bytes::from("3/0")]);
        let (none, kept_from) = frames(records, Some(10_000));
        assert!(none.is_empty() && kept_from.is_none());
        assert_eq!(skip_before(TimestampStarts::Native, &Start::AtTimestamp(2_700)), None);
        assert_eq!(skip_before(timestamps, &Start::After("1".into())), None);
    }

    #[test]
    fn a_frame_is_cut_between_records_when_full() {
        let records: Vec<SourceRecord> = (0..3).map(|n| record(&n.to_string(), 0, FRAME_MAX_RECORDS / 2 + 1)).collect();
        let (cut, _) = frames(records, None);
        assert_eq!(cut.iter().map(|frame| frame.last_sequence.as_str()).collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(cut[0].records.len(), 2 * (FRAME_MAX_RECORDS / 2 + 1));
    }
}
