//! Delivering one batch: retriable failures back off exponentially with full jitter (honouring
//! a destination's `retry_after`) until the stream's retry duration; permanent failures, partial
//! failures and exhausted retries send the affected records to the error output as Firehose
//! error JSON. Nothing is dropped: the error output itself is retried until it succeeds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use spillway_sink_api::{
    Batch, EncodeError, EncoderFactory, ErrorClass, ErrorOutput, Record, RecordFailure, RecordPosition, SequenceSet,
    Sink,
};
use tokio::time::Instant;

use super::assemble::Router;
use crate::metrics::StreamMetrics;
use crate::wal::{Wal, WalError};

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Once the destination answers again, a waiting retry goes within this (full jitter, so a
/// stream's waiting batches do not all arrive at once).
const RETRY_AFTER_RECOVERY_WITHIN: Duration = Duration::from_secs(1);

/// Tells a stream's waiting retries that its destination answers again: a write of another batch
/// succeeded, or the healthcheck passed, after a delivery failed. Without it the oldest batch
/// waits out its backoff (up to [`BACKOFF_CAP`]) while newer ones are delivered, and the WAL
/// limit, which counts from the oldest undelivered record, keeps refusing puts meanwhile.
#[derive(Debug, Clone)]
pub struct Recovery {
    answered: Arc<tokio::sync::watch::Sender<u64>>,
    failing: Arc<AtomicBool>,
}

impl Default for Recovery {
    fn default() -> Self {
        Self { answered: Arc::new(tokio::sync::watch::Sender::new(0)), failing: Arc::new(AtomicBool::new(false)) }
    }
}

impl Recovery {
    /// A delivery failed and will be retried.
    pub fn failed(&self) {
        self.failing.store(true, Ordering::Relaxed);
    }

    /// The destination took a write or passed a healthcheck: wake retries waiting since a failure.
    pub fn answered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            self.answered.send_modify(|count| *count += 1);
        }
    }

    /// Sleep `wait`, or less once the destination answers again.
    async fn wait(&self, mut answered: tokio::sync::watch::Receiver<u64>, wait: Duration) {
        let deadline = Instant::now() + wait;
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            Ok(()) = answered.changed() => {
                let soon = Duration::from_secs_f64(
                    rand::rng().random_range(0.0..=RETRY_AFTER_RECOVERY_WITHIN.as_secs_f64()),
                );
                tokio::time::sleep_until(deadline.min(Instant::now() + soon)).await;
            }
        }
    }
}

pub struct Delivery {
    pub sink: Arc<dyn Sink>,
    pub error_output: Arc<dyn ErrorOutput>,
    /// `!{firehose:error-output-type}` for records the sink refused, e.g. `s3-failed`.
    pub failure_output_type: &'static str,
    /// Shared with the stream's healthcheck: cuts waiting retries short once the sink answers.
    pub recovery: Recovery,
    pub retry_duration: Duration,
    pub metrics: Arc<StreamMetrics>,
    /// Where a batch's raw records are read back from (for error records and partial retries):
    /// batches hold only their encoded payload.
    pub wal: Wal,
    /// The sink's encoder, to re-encode the records of a partial retry.
    pub encoders: Arc<dyn EncoderFactory>,
    /// The stream's routing (transforms, partition keys, delimiter): a batch's records are
    /// what its WAL records become on their way into the batch.
    pub router: Router,
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)].
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    let jittered = Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling.as_secs_f64()));
    jittered.max(retry_after.unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot read the batch's records back from the wal: {0}")]
    Wal(#[from] WalError),
    #[error("cannot encode the batch: {0}")]
    Encode(#[from] EncodeError),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the encoder refused record {sequence} (output {output}), which the wal does not give back for the batch")]
    RefusedRecordMissing { sequence: u64, output: u32 },
}

impl Delivery {
    /// Deliver the batch (to the sink, or, for a batch of error records, to the error output)
    /// or route its records to the error output; returns when one of the two has durably
    /// happened for every record. Fails only when the WAL cannot give the records back.
    ///
    /// A partial failure re-sends only the records that failed retriably (re-encoded, under the
    /// same batch id: sinks with per-record outcomes key records by sequence, not by batch) until
    /// the retry duration ends; records that failed permanently go to the error output at once.
    pub async fn deliver(&self, batch: &Batch, error_output_type: Option<&str>) -> Result<(), DeliveryError> {
        let started = Instant::now();
        self.metrics.batch_size.observe(batch.payload.len() as f64);
        let result = self.deliver_or_route(batch, error_output_type).await;
        self.metrics.delivery_latency.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn deliver_or_route(&self, batch: &Batch, error_output_type: Option<&str>) -> Result<(), DeliveryError> {
        if let Some(error_output_type) = error_output_type {
            self.write_error_output(batch, error_output_type, batch.payload.to_bytes(), batch.record_count()).await;
            return Ok(());
        }
        if !batch.payload.refused().is_empty() {
            self.route_refused(batch).await?;
            if batch.payload.is_empty() {
                // The encoder refused every record: there is no object to write.
                return Ok(());
            }
        }
        let started = Instant::now();
        let mut attempts: u32 = 0;
        // The records still to deliver: the whole batch at first, then what failed retriably,
        // kept with its records (the WAL gives back every output of a record a transform split,
        // not the subset that failed).
        let mut pending: Option<(Batch, Vec<Record>)> = None;
        loop {
            attempts += 1;
            let current = pending.as_ref().map_or(batch, |(subset, _)| subset);
            // Taken before the attempt, so an answer that comes while this one fails is not missed.
            let answered = self.recovery.answered.subscribe();
            let error = match self.sink.write(current).await {
                Ok(()) => {
                    self.recovery.answered();
                    let refused = current.payload.refused().len();
                    self.count_delivered(current.record_count().saturating_sub(refused), current.record_bytes);
                    tracing::debug!(
                        stream = %batch.stream,
                        batch = %batch.id,
                        start = batch.start,
                        end = batch.end,
                        records = current.record_count(),
                        record_bytes = current.record_bytes,
                        payload_bytes = current.payload.len(),
                        attempts,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "batch delivered"
                    );
                    return Ok(());
                }
                Err(error) => error,
            };
            let within_duration = started.elapsed() < self.retry_duration;
            match error.class {
                ErrorClass::Retriable if within_duration => {
                    self.metrics.delivery_retries.inc();
                    self.metrics.note_error(format!("delivery failed, retrying: {error}"));
                    let wait = backoff(attempts, error.retry_after);
                    tracing::warn!(stream = %batch.stream, batch = %batch.id, attempts, wait_ms = wait.as_millis() as u64, %error, "delivery failed, retrying");
                    self.recovery.failed();
                    self.recovery.wait(answered, wait).await;
                }
                ErrorClass::Partial => {
                    let records = self.records_sent(batch, &pending).await?;
                    let (retry, give_up): (Vec<&RecordFailure>, Vec<&RecordFailure>) =
                        error.failures.iter().partition(|failure| failure.retriable && within_duration);
                    let failed_indices: BTreeSet<usize> = error.failures.iter().map(|failure| failure.index).collect();
                    let written: Vec<&Record> = records
                        .iter()
                        .enumerate()
                        .filter(|(index, _)| !failed_indices.contains(index))
                        .map(|(_, record)| record)
                        .collect();
                    self.count_delivered(written.len(), written.iter().map(|record| record.data.len()).sum());
                    if !give_up.is_empty() {
                        let failed: Vec<Failed> = give_up
                            .iter()
                            .filter_map(|failure| {
                                Some(Failed {
                                    record: records.get(failure.index)?.clone(),
                                    code: failure.code.clone(),
                                    message: failure.message.clone(),
                                })
                            })
                            .collect();
                        self.route_to_error_output(
                            current,
                            self.failure_output_type,
                            failed,
                            attempts,
                            pending.is_some(),
                        )
                        .await;
                    }
                    if retry.is_empty() {
                        return Ok(());
                    }
                    let retried: Vec<Record> =
                        retry.iter().filter_map(|failure| records.get(failure.index).cloned()).collect();
                    self.metrics.delivery_retries.inc();
                    let wait = backoff(attempts, error.retry_after);
                    tracing::warn!(stream = %batch.stream, batch = %batch.id, attempts, records = retried.len(), wait_ms = wait.as_millis() as u64, "some records failed retriably, re-sending them");
                    pending = Some((self.reencode(batch, retried.clone()).await?, retried));
                    self.recovery.failed();
                    self.recovery.wait(answered, wait).await;
                }
                _ => {
                    // The source (e.g. the S3 response) says which bucket or key, and why.
                    let message = match &error.source {
                        Some(source) => format!("{}: {source}", error.message),
                        None => error.message.clone(),
                    };
                    let records = self.records_sent(batch, &pending).await?;
                    let failed = records
                        .into_iter()
                        .map(|record| Failed { record, code: error.code.clone(), message: message.clone() })
                        .collect();
                    self.route_to_error_output(current, self.failure_output_type, failed, attempts, pending.is_some())
                        .await;
                    return Ok(());
                }
            }
        }
    }

    fn count_delivered(&self, records: usize, bytes: usize) {
        self.metrics.delivered_records.inc_by(records as u64);
        self.metrics.delivered_bytes.inc_by(bytes as u64);
        self.metrics.delivered_batches.inc();
    }

    /// The records of the attempt just made: a retried subset's own (kept in memory), else the
    /// whole batch's read back from the WAL, less those its encoder refused (the payload does
    /// not hold them; they are in the error output already).
    async fn records_sent(
        &self,
        batch: &Batch,
        pending: &Option<(Batch, Vec<Record>)>,
    ) -> Result<Vec<Record>, DeliveryError> {
        match pending {
            Some((_, records)) => Ok(records.clone()),
            None => {
                let mut records = self.records_of(batch, batch.sequences.clone()).await?;
                let refused = batch.payload.refused();
                if !refused.is_empty() {
                    let positions: HashSet<(u64, u32)> =
                        refused.iter().map(|refusal| (refusal.position.sequence, refusal.position.output)).collect();
                    records.retain(|record| !positions.contains(&(record.sequence, record.output)));
                }
                Ok(records)
            }
        }
    }

    /// Send the records the batch's encoder refused after accepting them to the error output,
    /// under their output type and the batch's id (a replay writes the same objects again).
    /// Only the refused records' sequences are read back and routed, not the whole batch.
    async fn route_refused(&self, batch: &Batch) -> Result<(), DeliveryError> {
        let mut wanted = SequenceSet::default();
        for refusal in batch.payload.refused() {
            // In push order: ascending, a sequence repeated for the outputs of one record.
            if wanted.runs().last().is_none_or(|run| run.end <= refusal.position.sequence) {
                wanted.push(refusal.position.sequence);
            }
        }
        let mut records: HashMap<(u64, u32), Record> = self
            .records_of(batch, wanted)
            .await?
            .into_iter()
            .map(|record| ((record.sequence, record.output), record))
            .collect();
        let mut by_type: BTreeMap<&'static str, Vec<Failed>> = BTreeMap::new();
        for refusal in batch.payload.refused() {
            let position = (refusal.position.sequence, refusal.position.output);
            let record = records
                .remove(&position)
                .ok_or(DeliveryError::RefusedRecordMissing { sequence: position.0, output: position.1 })?;
            by_type.entry(refusal.output_type).or_default().push(Failed {
                record,
                code: refusal.code.to_string(),
                message: refusal.message.clone(),
            });
        }
        for (output_type, failed) in by_type {
            self.route_to_error_output(batch, output_type, failed, 1, false).await;
        }
        Ok(())
    }

    /// The records of `sequences` (the batch's, or some of them) as the sink got them
    /// (transformed, no delimiter, in the batch's partition), read back from the WAL in order.
    async fn records_of(&self, batch: &Batch, sequences: SequenceSet) -> Result<Vec<Record>, DeliveryError> {
        let (router, partition) = (self.router.clone(), batch.partition.clone());
        let Some(first) = sequences.nth(0) else { return Ok(Vec::new()) };
        let end = sequences.runs().last().map_or(first, |run| run.end);
        if let Some(lambda) = &self.router.lambda {
            // The function is invoked again for the batch's range (see `lambda_stage`).
            let chunks = lambda.stage.process_range(&self.wal, first, end, true).await?;
            let records = tokio::task::spawn_blocking(move || {
                let mut records = Vec::with_capacity(sequences.len());
                let mut outputs = Vec::new();
                for record in chunks.iter().flat_map(|chunk| chunk.records.iter()) {
                    if !sequences.contains(record.sequence) {
                        continue;
                    }
                    router.sink_records_processed(record, &partition, &mut outputs);
                    records.extend(outputs.drain(..).map(|(output, data)| Record {
                        data,
                        arrival_ms: record.arrival_ms,
                        sequence: record.sequence,
                        output,
                    }));
                }
                records
            })
            .await?;
            return Ok(records);
        }
        let mut reader = self.wal.reader(first);
        let records = tokio::task::spawn_blocking(move || -> Result<Vec<Record>, WalError> {
            let mut records = Vec::with_capacity(sequences.len());
            let mut outputs = Vec::new();
            while reader.position() < end {
                let frames = reader.read(end, 8 << 20)?;
                if frames.is_empty() {
                    break;
                }
                for frame in frames {
                    for (offset, data) in frame.records.iter().enumerate() {
                        let sequence = frame.first_sequence + offset as u64;
                        if sequences.contains(sequence) {
                            let metadata = crate::record_metadata::MetadataRef::of_frame(&frame, offset);
                            router.sink_records(data, metadata, &partition, &mut outputs);
                            records.extend(outputs.drain(..).map(|(output, data)| Record {
                                data,
                                arrival_ms: frame.arrival_ms,
                                sequence,
                                output,
                            }));
                        }
                    }
                }
            }
            Ok(records)
        })
        .await??;
        Ok(records)
    }

    /// A batch of some of `batch`'s records, encoded again, under the same id.
    async fn reencode(&self, batch: &Batch, records: Vec<Record>) -> Result<Batch, DeliveryError> {
        let (encoders, delimiter) = (self.encoders.clone(), self.router.delimiter);
        let (stream, id, partition) = (batch.stream.clone(), batch.id, batch.partition.clone());
        let oldest_arrival_ms = batch.oldest_arrival_ms;
        let rebuilt = tokio::task::spawn_blocking(move || -> Result<Batch, EncodeError> {
            let mut encoder = encoders.new_encoder(spillway_sink_api::encode::DEFAULT_CHUNK_BYTES);
            let mut sequences = SequenceSet::default();
            for record in &records {
                let position = RecordPosition::of(record);
                encoder.push_at(position, &record.data, delimiter.suffix_for(&record.data))?;
                sequences.push(record.sequence);
            }
            Ok(Batch {
                stream,
                id,
                partition,
                start: records.first().map_or(0, |record| record.sequence),
                end: records.last().map_or(0, |record| record.sequence + 1),
                record_bytes: records
                    .iter()
                    .map(|record| record.data.len() + delimiter.suffix_for(&record.data).len())
                    .sum(),
                // The batch's own time, not the subset's: keys derived from (id, time), such as
                // an OpenSearch `backup.mode: all` object written once per batch, stay the same.
                oldest_arrival_ms,
                sequences,
                payload: encoder.finish()?,
            })
        })
        .await??;
        Ok(rebuilt)
    }

    /// Write Firehose error records for `failed` under the error prefix, as `output_type`.
    /// Encoding (JSON and base64 of every record, up to a whole batch) runs on the blocking pool.
    async fn route_to_error_output(
        &self,
        batch: &Batch,
        output_type: &str,
        failed: Vec<Failed>,
        attempts: u32,
        retried_subset: bool,
    ) {
        // A partial retry keeps the batch's id and time, and so its error object's key: the
        // records a partial retry gives up on get an object of their own (an id derived from
        // the attempt), instead of replacing those an earlier attempt routed there.
        let per_attempt;
        let batch = if retried_subset {
            per_attempt = Batch { id: attempt_id(batch.id, attempts), ..batch.clone() };
            &per_attempt
        } else {
            batch
        };
        let count = failed.len();
        let first_code = failed.first().map(|failure| failure.code.clone()).unwrap_or_default();
        let lines = match tokio::task::spawn_blocking(move || encode_error_records(&failed, attempts)).await {
            Ok(lines) => Bytes::from(lines),
            Err(join) => {
                // Only a panic in serde_json could get here; the records stay in the WAL.
                tracing::error!(stream = %batch.stream, batch = %batch.id, error = %join, "encoding error records failed");
                return;
            }
        };
        self.metrics.note_error(format!("{count} record(s) routed to the error output: {first_code}"));
        self.write_error_output(batch, output_type, lines, count).await;
        // The records are safe in the error output: a warning, not an error of spillway's.
        tracing::warn!(stream = %batch.stream, batch = %batch.id, records = count, error_output_type = output_type, code = %first_code, "records routed to the error output");
    }

    /// Write error records, retrying until it succeeds: nothing is dropped.
    async fn write_error_output(&self, batch: &Batch, error_output_type: &str, lines: Bytes, count: usize) {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            match self.error_output.write_error_records(batch, error_output_type, lines.to_vec()).await {
                Ok(()) => {
                    self.metrics.error_output_records.inc_by(count as u64);
                    self.metrics.backup_writes_succeeded.inc();
                    return;
                }
                Err(error) => {
                    self.metrics.backup_writes_failed.inc();
                    let wait = backoff(attempt, error.retry_after);
                    tracing::error!(stream = %batch.stream, batch = %batch.id, %error, wait_ms = wait.as_millis() as u64, "cannot write the error output, retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The id of the error object for the records a batch's `attempts`-th attempt gave up on
/// (the batch's own id for the first): stable, so a replay writes the same keys again.
pub fn attempt_id(batch_id: uuid::Uuid, attempts: u32) -> uuid::Uuid {
    if attempts <= 1 {
        return batch_id;
    }
    uuid::Uuid::new_v5(&batch_id, format!("attempt-{attempts}").as_bytes())
}

/// A record that goes to the error output, and why.
struct Failed {
    record: Record,
    code: String,
    message: String,
}

/// Newline-delimited Firehose error records.
fn encode_error_records(failed: &[Failed], attempts: u32) -> Vec<u8> {
    let ending_ms = chrono::Utc::now().timestamp_millis();
    let mut lines = Vec::new();
    for failure in failed {
        lines.extend(error_record_line(&failure.record, &failure.code, &failure.message, attempts, ending_ms));
    }
    lines
}

/// One Firehose error record as a JSON line (with its newline).
pub fn error_record_line(record: &Record, code: &str, message: &str, attempts: u32, ending_ms: i64) -> Vec<u8> {
    error_record_line_with(record, code, message, attempts, ending_ms, None)
}

/// The same, with `lambdaArn` for records a Lambda transform failed.
pub fn error_record_line_with(
    record: &Record,
    code: &str,
    message: &str,
    attempts: u32,
    ending_ms: i64,
    lambda_arn: Option<&str>,
) -> Vec<u8> {
    let mut document = error_record(record, code, message, attempts, ending_ms);
    document.lambda_arn = lambda_arn;
    let mut line = serde_json::to_vec(&document).unwrap_or_default();
    line.push(b'\n');
    line
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
    /// Which output of its WAL record the record is, when a transform made several (as
    /// Firehose's `subSequenceNumber` numbers the records of one aggregate).
    #[serde(skip_serializing_if = "Option::is_none")]
    sub_sequence_number: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lambda_arn: Option<&'a str>,
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
        sub_sequence_number: (record.output > 0).then_some(record.output),
        lambda_arn: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_objects_of_later_attempts_get_ids_of_their_own() {
        let batch_id = uuid::Uuid::new_v4();
        assert_eq!(attempt_id(batch_id, 1), batch_id);
        assert_ne!(attempt_id(batch_id, 2), batch_id);
        assert_ne!(attempt_id(batch_id, 2), attempt_id(batch_id, 3));
        assert_eq!(attempt_id(batch_id, 2), attempt_id(batch_id, 2), "the same after a replay");
    }

    #[test]
    fn backoff_stays_under_its_ceiling_and_honours_retry_after() {
        for attempt in 0..40 {
            assert!(backoff(attempt, None) <= BACKOFF_CAP);
        }
        assert!(backoff(1, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
    }
}

#[cfg(test)]
mod recovery_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_answer_after_a_failure_cuts_a_long_wait_to_at_most_a_second() {
        let recovery = Recovery::default();
        let answered = recovery.answered.subscribe();
        recovery.failed();
        let waiting = {
            let recovery = recovery.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                recovery.wait(answered, Duration::from_secs(30)).await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        recovery.answered();
        let waited = waiting.await.unwrap();
        assert!(waited <= Duration::from_secs(3), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn answers_without_a_failure_since_do_not_wake_anyone() {
        let recovery = Recovery::default();
        let answered = recovery.answered.subscribe();
        // Steady state: writes succeed, nothing failed in between.
        recovery.answered();
        let started = Instant::now();
        recovery.wait(answered, Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
