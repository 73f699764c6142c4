//! The Lambda stage of a stream whose `processing.transforms` hold a `lambda`: between reading
//! the WAL and routing. Records read from the WAL go through the transforms before the Lambda
//! (on the blocking pool), then into the open *invocation*, which closes on the processor's
//! buffer hints (`buffer_size_mib` of record bytes, `buffer_interval_seconds` from its oldest
//! record's arrival) or before Lambda's 6 MiB payload cap would be passed. Closed invocations
//! run concurrently (the invoker bounds them); their results leave in WAL order, as
//! [`ProcessedChunk`]s covering contiguous sequence ranges, so the assembler places records into
//! open batches in WAL order and the watermark stays right.
//!
//! The live path is [`LambdaStage::run`], a task feeding a bounded channel. A batch rebuilt after
//! a crash and the records of a batch read back for a retry are processed again with
//! [`LambdaStage::process_range`]: the function is invoked again, which is exact only for a
//! deterministic function (see docs/processing.md, "Lambda transform").
//!
//! Must not: route, partition or encode records, or write intents and checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::invoker::{InvocationReport, Invoker, MAX_INVOCATIONS_IN_FLIGHT};
use super::retry::DeliveryError;
use crate::processing::Transforms;
use crate::processing::lambda::{
    EventRecord, MAX_PAYLOAD_BYTES, PROCESSING_FAILED_STATUS, PROCESSING_FAILED_STATUS_MESSAGE, RecordResult,
    encode_event, event_record_len, metadata_member,
};
use crate::record_metadata::RecordMetadata;
use crate::wal::{Frame, Wal, WalError};

/// Most record bytes read from the WAL in one blocking step.
const READ_CHUNK_BYTES: usize = 4 << 20;
/// Room kept under the payload cap for the event's envelope.
const EVENT_ENVELOPE_BYTES: usize = 1024;

/// One output of a WAL record after the Lambda stage.
#[derive(Debug, Clone)]
pub enum ProcessedOutput {
    /// What the function returned (`Ok`), with its `metadata.partitionKeys`.
    Data { data: Bytes, lambda_keys: Option<Arc<BTreeMap<String, String>>> },
    /// A record for `processing-failed`: the data as it went into the failing step.
    Failed { data: Bytes, code: String, message: String, attempts: u32, lambda_arn: Option<Arc<str>> },
}

/// A WAL record's outputs (none: dropped).
#[derive(Debug, Clone)]
pub struct ProcessedRecord {
    pub sequence: u64,
    pub arrival_ms: i64,
    pub outputs: Vec<ProcessedOutput>,
    /// The WAL record's source metadata (partition keys' `$metadata`), if its source wrote any.
    pub metadata: Option<Arc<RecordMetadata>>,
}

impl ProcessedRecord {
    pub fn metadata_ref(&self) -> crate::record_metadata::MetadataRef<'_> {
        self.metadata
            .as_deref()
            .map_or(crate::record_metadata::MetadataRef::None, crate::record_metadata::MetadataRef::Decoded)
    }
}

/// The processed records of the WAL range `[start, end)`, every sequence of it present.
#[derive(Debug, Clone)]
pub struct ProcessedChunk {
    pub start: u64,
    pub end: u64,
    pub records: Vec<ProcessedRecord>,
}

/// A WAL record after the transforms before the Lambda.
struct Prepared {
    sequence: u64,
    arrival_ms: i64,
    items: Vec<Item>,
    source_metadata: Option<Arc<RecordMetadata>>,
}

enum Item {
    /// `metadata`: the record's source metadata as its event member, shared by every output of
    /// the transforms before the Lambda.
    Send {
        data: Bytes,
        metadata: Option<Arc<[u8]>>,
    },
    Failed {
        data: Bytes,
        code: &'static str,
        message: String,
    },
}

/// An invocation being filled.
struct Invocation {
    start: u64,
    end: u64,
    records: Vec<Prepared>,
    record_bytes: usize,
    event_bytes: usize,
    /// When its oldest record arrived, on the monotonic clock.
    opened_at: Instant,
}

impl Invocation {
    fn new(start: u64, opened_at: Instant) -> Self {
        Self { start, end: start, records: Vec::new(), record_bytes: 0, event_bytes: EVENT_ENVELOPE_BYTES, opened_at }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<StageError> for DeliveryError {
    fn from(error: StageError) -> Self {
        match error {
            StageError::Wal(error) => DeliveryError::Wal(error),
            StageError::Join(error) => DeliveryError::Join(error),
        }
    }
}

pub struct LambdaStage {
    pub invoker: Arc<Invoker>,
    /// The transforms before the Lambda in `processing.transforms`.
    pub before: Option<Arc<Transforms>>,
    pub size_bytes: usize,
    pub interval: Duration,
}

impl LambdaStage {
    /// The live path: read the WAL from `from`, invoke, and send each processed chunk, in WAL
    /// order, to `out`. Once `stop` turns true, the open invocation leaves as soon as the
    /// reader has caught up. Returns when `out` is closed.
    pub async fn run(
        self: Arc<Self>,
        wal: Wal,
        from: u64,
        out: mpsc::Sender<ProcessedChunk>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), StageError> {
        let mut reader = Some(wal.delivery_reader(from));
        let mut committed_rx = wal.committed();
        let mut position = from;
        let mut open: Option<Invocation> = None;
        let mut closed: std::collections::VecDeque<Invocation> = Default::default();
        let mut in_flight: FuturesOrdered<BoxFuture<'static, ProcessedChunk>> = FuturesOrdered::new();
        let mut stopping = *stop.borrow();
        loop {
            let committed = *committed_rx.borrow_and_update();
            let caught_up = position >= committed;
            while in_flight.len() < MAX_INVOCATIONS_IN_FLIGHT
                && let Some(invocation) = closed.pop_front()
            {
                in_flight.push_back(self.clone().process(invocation, false));
            }
            if !caught_up && closed.is_empty() && in_flight.len() < MAX_INVOCATIONS_IN_FLIGHT {
                let mut taken = reader.take().ok_or(WalError::Closed)?;
                let stage = self.clone();
                let (returned, prepared) = tokio::task::spawn_blocking(move || {
                    let prepared = taken.read(committed, READ_CHUNK_BYTES).map(|frames| stage.prepare(&frames));
                    (taken, prepared)
                })
                .await?;
                position = returned.position();
                reader = Some(returned);
                for record in prepared? {
                    self.add(&mut open, &mut closed, record);
                }
                if self.interval.is_zero()
                    && let Some(invocation) = open.take()
                {
                    closed.push_back(invocation);
                }
                continue;
            }
            if stopping
                && caught_up
                && let Some(invocation) = open.take()
            {
                closed.push_back(invocation);
                continue;
            }
            let deadline = open.as_ref().map(|invocation| invocation.opened_at + self.interval);
            tokio::select! {
                Some(chunk) = in_flight.next(), if !in_flight.is_empty() => {
                    if out.send(chunk).await.is_err() {
                        return Ok(());
                    }
                }
                changed = committed_rx.changed(), if caught_up && !stopping => {
                    if changed.is_err() {
                        stopping = true;
                    }
                }
                () = sleep_until_option(deadline), if deadline.is_some() && closed.is_empty() => {
                    closed.extend(open.take());
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                }
                () = out.closed() => return Ok(()),
            }
        }
    }

    /// Process `[start, end)` of the WAL again (a rebuilt batch, a batch read back): the same
    /// grouping by size, no waiting on the interval. With `until_answered`, a call that keeps
    /// failing retriably is retried until the function answers: the batch's records were
    /// answered the first time (they are in a sink batch), and turning them into
    /// `processing-failed` records now would lose them, as a fresh batch skips records of a
    /// recorded one.
    pub async fn process_range(
        self: &Arc<Self>,
        wal: &Wal,
        start: u64,
        end: u64,
        until_answered: bool,
    ) -> Result<Vec<ProcessedChunk>, StageError> {
        let mut reader = wal.reader(start);
        let stage = self.clone();
        let invocations = tokio::task::spawn_blocking(move || -> Result<Vec<Invocation>, WalError> {
            let mut open = None;
            let mut closed = std::collections::VecDeque::new();
            while reader.position() < end {
                let mut frames = reader.read(end, READ_CHUNK_BYTES)?;
                if frames.is_empty() {
                    break;
                }
                for frame in &mut frames {
                    let keep = (end.saturating_sub(frame.first_sequence) as usize).min(frame.records.len());
                    frame.records.truncate(keep);
                    if !frame.metadata.is_empty() {
                        frame.metadata.truncate(keep);
                    }
                }
                for record in stage.prepare(&frames) {
                    stage.add(&mut open, &mut closed, record);
                }
            }
            closed.extend(open);
            Ok(closed.into())
        })
        .await??;
        let chunks = futures::stream::iter(
            invocations.into_iter().map(|invocation| self.clone().process(invocation, until_answered)),
        )
        .buffered(MAX_INVOCATIONS_IN_FLIGHT)
        .collect()
        .await;
        Ok(chunks)
    }

    /// The transforms before the Lambda, on each record of `frames` (blocking).
    fn prepare(&self, frames: &[Frame]) -> Vec<Prepared> {
        let mut prepared = Vec::new();
        let mut outputs = Vec::new();
        for frame in frames {
            let frame_shard = frame.source.as_ref().map(|source| source.shard.as_str());
            for (offset, data) in frame.records.iter().enumerate() {
                let sequence = frame.first_sequence + offset as u64;
                if let Some((code, message)) =
                    frame.metadata.get(offset).and_then(|entry| crate::record_metadata::source_failure(entry))
                {
                    let items = vec![Item::Failed { data: data.clone(), code, message }];
                    prepared.push(Prepared { sequence, arrival_ms: frame.arrival_ms, items, source_metadata: None });
                    continue;
                }
                // Records of a push source have no entry: nothing is decoded or allocated.
                let source_metadata = frame
                    .metadata
                    .get(offset)
                    .and_then(|entry| RecordMetadata::decode(entry, frame_shard))
                    .map(Arc::new);
                let metadata = source_metadata.as_deref().map(|metadata| Arc::<[u8]>::from(metadata_member(metadata)));
                let items = match &self.before {
                    None => vec![Item::Send { data: data.clone(), metadata }],
                    Some(before) => match before.apply(data, &mut outputs) {
                        Ok(()) => outputs
                            .drain(..)
                            .map(|output| Item::Send { data: Bytes::from(output), metadata: metadata.clone() })
                            .collect(),
                        Err(failure) => {
                            vec![Item::Failed { data: data.clone(), code: failure.code, message: failure.message }]
                        }
                    },
                };
                prepared.push(Prepared { sequence, arrival_ms: frame.arrival_ms, items, source_metadata });
            }
        }
        prepared
    }

    /// Put a record into the open invocation, closing it first when the record would pass the
    /// payload cap, and after when the size hint is reached.
    fn add(
        &self,
        open: &mut Option<Invocation>,
        closed: &mut std::collections::VecDeque<Invocation>,
        record: Prepared,
    ) {
        let (record_bytes, event_bytes) = record.items.iter().fold((0, 0), |(bytes, event), item| match item {
            Item::Send { data, metadata } => (
                bytes + data.len(),
                event + event_record_len(data.len(), metadata.as_ref().map_or(0, |member| member.len())),
            ),
            Item::Failed { .. } => (bytes, event),
        });
        if let Some(current) = open.as_ref()
            && !current.records.is_empty()
            && current.event_bytes + event_bytes > MAX_PAYLOAD_BYTES
        {
            closed.extend(open.take());
        }
        let invocation = open.get_or_insert_with(|| Invocation::new(record.sequence, arrived_at(record.arrival_ms)));
        invocation.end = record.sequence + 1;
        invocation.record_bytes += record_bytes;
        invocation.event_bytes += event_bytes;
        invocation.records.push(record);
        if invocation.record_bytes >= self.size_bytes || invocation.event_bytes >= MAX_PAYLOAD_BYTES {
            closed.extend(open.take());
        }
    }

    /// Invoke the function for one invocation's records (none to send: no call) and apply the
    /// answer to each.
    fn process(self: Arc<Self>, invocation: Invocation, until_answered: bool) -> BoxFuture<'static, ProcessedChunk> {
        Box::pin(async move {
            let mut ids = Vec::new();
            let mut sent = Vec::new();
            for record in &invocation.records {
                for (index, item) in record.items.iter().enumerate() {
                    if let Item::Send { data, metadata } = item {
                        ids.push(format!("{}-{index}", record.sequence));
                        sent.push((record.arrival_ms, data.clone(), metadata.clone()));
                    }
                }
            }
            let report = if sent.is_empty() {
                InvocationReport { attempts: 0, outcome: Ok(Vec::new()), retriable: false }
            } else {
                let ids = Arc::new(ids);
                let event = {
                    let (ids, invoker) = (ids.clone(), self.invoker.clone());
                    // JSON and base64 of up to 6 MiB: off the runtime.
                    tokio::task::spawn_blocking(move || {
                        let records: Vec<EventRecord<'_>> = sent
                            .iter()
                            .zip(ids.iter())
                            .map(|((arrival_ms, data, metadata), id)| EventRecord {
                                record_id: id,
                                approximate_arrival_timestamp: *arrival_ms,
                                data,
                                metadata_member: metadata.as_deref(),
                            })
                            .collect();
                        let invocation_id = Uuid::new_v4().to_string();
                        encode_event(&invocation_id, &invoker.stream_arn, &invoker.region, &records)
                    })
                    .await
                };
                match event {
                    Ok(event) if until_answered => self.invoker.invoke_until_answered(Bytes::from(event), ids).await,
                    Ok(event) => self.invoker.invoke(Bytes::from(event), ids).await,
                    Err(join) => InvocationReport {
                        retriable: false,
                        attempts: 0,
                        outcome: Err(crate::processing::lambda::InvocationFailure {
                            code: crate::processing::lambda::FUNCTION_ERROR,
                            message: format!("building the event failed: {join}"),
                        }),
                    },
                }
            };
            self.apply(invocation, report)
        })
    }

    /// Each record's outputs from the function's answer.
    fn apply(&self, invocation: Invocation, report: InvocationReport) -> ProcessedChunk {
        let lambda_arn = self.invoker.lambda_arn.clone();
        let attempts = report.attempts;
        let mut results = match report.outcome {
            Ok(results) => Ok(results.into_iter()),
            Err(failure) => Err(failure),
        };
        let mut records = Vec::with_capacity(invocation.records.len());
        for record in invocation.records {
            let mut outputs = Vec::with_capacity(record.items.len());
            for item in record.items {
                match item {
                    Item::Failed { data, code, message } => outputs.push(ProcessedOutput::Failed {
                        data,
                        code: code.to_string(),
                        message,
                        attempts: 1,
                        lambda_arn: None,
                    }),
                    Item::Send { data, .. } => {
                        let failed = |code: &str, message: &str| ProcessedOutput::Failed {
                            data: data.clone(),
                            code: code.to_string(),
                            message: message.to_string(),
                            attempts,
                            lambda_arn: Some(lambda_arn.clone()),
                        };
                        match &mut results {
                            Err(failure) => outputs.push(failed(failure.code, &failure.message)),
                            Ok(results) => match results.next() {
                                Some(RecordResult::Ok { data, partition_keys }) => {
                                    outputs.push(ProcessedOutput::Data {
                                        data: Bytes::from(data),
                                        lambda_keys: partition_keys.map(Arc::new),
                                    })
                                }
                                Some(RecordResult::Dropped) => {}
                                Some(RecordResult::ProcessingFailed) => {
                                    outputs.push(failed(PROCESSING_FAILED_STATUS, PROCESSING_FAILED_STATUS_MESSAGE))
                                }
                                // `parse_response` returns one result per record sent.
                                None => outputs.push(failed(
                                    crate::processing::lambda::MISSING_RECORD_ID,
                                    "one or more record ids were not returned",
                                )),
                            },
                        }
                    }
                }
            }
            records.push(ProcessedRecord {
                sequence: record.sequence,
                arrival_ms: record.arrival_ms,
                outputs,
                metadata: record.source_metadata.clone(),
            });
        }
        ProcessedChunk { start: invocation.start, end: invocation.end, records }
    }
}

/// A record's arrival on the monotonic clock: records recovered after a restart that are already
/// older than the interval close their invocation at once.
fn arrived_at(arrival_ms: i64) -> Instant {
    let now = Instant::now();
    let age = Duration::from_millis(chrono::Utc::now().timestamp_millis().saturating_sub(arrival_ms).max(0) as u64);
    now.checked_sub(age).unwrap_or(now)
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processing::lambda::LambdaConfig;
    use crate::record_metadata::MetadataWriter;
    use crate::wal::SourcePosition;

    fn stage() -> Arc<LambdaStage> {
        let config: LambdaConfig = serde_json::from_str(r#"{"url": "http://127.0.0.1:9/invoke"}"#).unwrap();
        let invoker = Invoker::new(
            &config,
            "arn:aws:firehose:us-east-1:1:deliverystream/s".into(),
            "us-east-1".into(),
            Default::default(),
        )
        .unwrap();
        Arc::new(LambdaStage {
            invoker: Arc::new(invoker),
            before: None,
            size_bytes: 1 << 20,
            interval: Duration::ZERO,
        })
    }

    /// A record as `process` sends it: id, data, metadata member.
    type Sent = (String, Bytes, Option<Arc<[u8]>>);

    /// The event records of `frame`, as the stage would send them.
    fn event_records(frame: Frame) -> Vec<serde_json::Value> {
        let prepared = stage().prepare(&[frame]);
        let sent: Vec<Sent> = prepared
            .iter()
            .flat_map(|record| record.items.iter().map(move |item| (record.sequence, item)))
            .map(|(sequence, item)| match item {
                Item::Send { data, metadata } => (format!("{sequence}-0"), data.clone(), metadata.clone()),
                Item::Failed { .. } => panic!("no transform before the lambda"),
            })
            .collect();
        let records: Vec<EventRecord<'_>> = sent
            .iter()
            .map(|(id, data, metadata)| EventRecord {
                record_id: id,
                approximate_arrival_timestamp: 7,
                data,
                metadata_member: metadata.as_deref(),
            })
            .collect();
        let event: serde_json::Value = serde_json::from_slice(&encode_event("i", "a", "r", &records)).unwrap();
        event["records"].as_array().unwrap().clone()
    }

    /// A record's metadata becomes the object its source named, whatever the source: the
    /// frame's shard filled in, fields as written; a record without metadata has no member.
    #[test]
    fn each_record_s_source_metadata_becomes_its_event_member() {
        let kinesis_like = MetadataWriter::new("kinesisRecordMetadata")
            .frame_shard("shardId", "kinesis:".len())
            .text("partitionKey", "pk-1")
            .integer("approximateArrivalTimestamp", 1_764_115_200_123)
            .text("sequenceNumber", "4959")
            .integer("subsequenceNumber", 0)
            .finish();
        let kafka_like =
            MetadataWriter::new("mskRecordMetadata").text("offset", "17").text("partitionId", "3").finish();
        let frame = Frame {
            first_sequence: 40,
            arrival_ms: 7,
            records: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            source: Some(SourcePosition { shard: "kinesis:shardId-000000000002".into(), position: "seq:4959".into() }),
            metadata: vec![kinesis_like, kafka_like],
        };
        let records = event_records(frame);
        assert_eq!(
            records[0]["kinesisRecordMetadata"],
            serde_json::json!({
                "shardId": "shardId-000000000002",
                "partitionKey": "pk-1",
                "approximateArrivalTimestamp": 1_764_115_200_123_i64,
                "sequenceNumber": "4959",
                "subsequenceNumber": 0,
            })
        );
        assert_eq!(records[1]["mskRecordMetadata"], serde_json::json!({ "offset": "17", "partitionId": "3" }));
        assert!(records[1].get("kinesisRecordMetadata").is_none());

        let pushed = Frame {
            first_sequence: 0,
            arrival_ms: 7,
            records: vec![Bytes::from_static(b"c")],
            source: None,
            metadata: Vec::new(),
        };
        let records = event_records(pushed);
        let members: Vec<&String> = records[0].as_object().unwrap().keys().collect();
        assert_eq!(members.len(), 3, "recordId, approximateArrivalTimestamp, data only: {members:?}");
    }
}
