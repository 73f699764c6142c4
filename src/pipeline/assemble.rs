//! The CPU side of delivery: read committed frames from the WAL, decode them into records, route
//! each record (partition keys, or the error output when its keys cannot be evaluated), and feed
//! it into its route's open batch. It runs on the blocking pool, one step at a time; the delivery
//! loop owns it between steps. A stream with a Lambda transform reads the WAL in its Lambda stage
//! instead ([`super::lambda_stage`]); the assembler then places the stage's processed chunks, in
//! WAL order ([`Assembler::feed_chunk`]).
//!
//! Must not: write intents or checkpoints, or talk to a sink.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spillway_sink_api::{EncodeError, PartitionKeys, Record, RecordPosition};
use tokio::time::Instant;

use super::lambda_stage::{LambdaStage, ProcessedChunk, ProcessedOutput, ProcessedRecord};
use super::open_batch::{ClosedBatch, EarlyClose, OpenBatches, Route};
use crate::config::RecordDelimiter;
use crate::processing::transform::Outcome;
use crate::processing::{PROCESSING_FAILED_OUTPUT_TYPE, Transforms};
use crate::record_metadata::MetadataRef;
use crate::wal::{Frame, WalError, WalReader};

/// Why a record's partition keys could not be evaluated; the record goes to the error output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFailure {
    /// Firehose-style error code, e.g. `DynamicPartitioning.MetadataExtractionFailed`.
    pub code: String,
    pub message: String,
}

/// Computes a record's dynamic partition. Must be deterministic: a batch is rebuilt from the WAL
/// after a crash by routing its range again.
pub trait Partitioner: Send + Sync + 'static {
    /// `metadata`: what the record's source knows about it (jq keys read it as `$metadata`).
    fn partition(&self, record: &[u8], metadata: MetadataRef<'_>) -> Result<Arc<PartitionKeys>, PartitionFailure>;
}

/// Partition keys from jq expressions (`processing.dynamic_partitioning.keys`). The map of each
/// distinct partition is built once and shared, so routing a record allocates no map.
pub struct JqPartitioner {
    keys: crate::processing::PartitionKeys,
    maps: std::sync::Mutex<std::collections::HashMap<crate::processing::PartitionValues, Arc<PartitionKeys>>>,
}

/// Distinct partitions whose maps are kept; past it the cache starts afresh (partitions are
/// bounded by `max_active_partitions` anyway).
const MAX_CACHED_PARTITIONS: usize = 16_384;

impl JqPartitioner {
    pub fn new(keys: crate::processing::PartitionKeys) -> Self {
        Self { keys, maps: std::sync::Mutex::default() }
    }
}

impl Partitioner for JqPartitioner {
    fn partition(&self, record: &[u8], metadata: MetadataRef<'_>) -> Result<Arc<PartitionKeys>, PartitionFailure> {
        let values = self
            .keys
            .evaluate(record, metadata)
            .map_err(|error| PartitionFailure { code: error.code.to_string(), message: error.message })?;
        let mut maps = self.maps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(map) = maps.get(&values) {
            return Ok(map.clone());
        }
        if maps.len() >= MAX_CACHED_PARTITIONS {
            maps.clear();
        }
        let map = Arc::new(values.as_map());
        maps.insert(values, map.clone());
        Ok(map)
    }
}

/// A stream's Lambda transform, as routing sees it.
#[derive(Clone)]
pub struct LambdaRouting {
    /// Invokes the function (the transforms before it run there too).
    pub stage: Arc<LambdaStage>,
    /// The transforms after the Lambda, on what the function returns.
    pub after: Option<Arc<Transforms>>,
    /// The keys the sink prefix names as `!{partitionKeyFromLambda:k}`: every record the
    /// function returns must carry each in `metadata.partitionKeys`.
    pub keys: Arc<[String]>,
    /// Keys the sink reads when the function returns them (`SinkDescriptor::optional_lambda_keys`).
    pub optional_keys: Arc<[String]>,
}

/// Routing shared by the live path, the rebuilding of recorded batches and the reading back of
/// a batch's records: transforms, then partition keys.
#[derive(Clone)]
pub struct Router {
    pub partitioner: Option<Arc<dyn Partitioner>>,
    /// `processing.transforms` (with a Lambda: those before it); `None` when there are none
    /// (records pass through uncopied).
    pub transforms: Option<Arc<Transforms>>,
    /// The Lambda transform, when the chain has one: records then come in processed chunks.
    pub lambda: Option<LambdaRouting>,
    pub delimiter: RecordDelimiter,
    /// `!{firehose:error-output-type}` of records whose partition keys fail.
    pub partition_failure_type: &'static str,
    /// The partition of every record when there are no keys (shared, so routing allocates nothing).
    no_partition: Arc<PartitionKeys>,
}

/// A record on its way into an open batch: its route and the bytes to encode.
enum Routed<'a> {
    Sink { route: Route, data: &'a [u8] },
    Failed { route: Route, line: Vec<u8> },
}

impl Router {
    pub fn new(
        partitioner: Option<Arc<dyn Partitioner>>,
        transforms: Option<Arc<Transforms>>,
        delimiter: RecordDelimiter,
    ) -> Self {
        Self {
            partitioner,
            transforms: transforms.filter(|transforms| !transforms.is_empty()),
            delimiter,
            partition_failure_type: crate::processing::METADATA_EXTRACTION_OUTPUT_TYPE,
            no_partition: Arc::new(PartitionKeys::new()),
            lambda: None,
        }
    }

    /// The same routing with a Lambda transform after `transforms`.
    pub fn with_lambda(mut self, lambda: LambdaRouting) -> Self {
        self.lambda = Some(lambda);
        self
    }

    /// The route of one (transformed) record: its partition, or the error output when its keys
    /// cannot be evaluated. `lambda_keys` are the partition keys the Lambda returned with it.
    fn route<'a>(
        &self,
        data: &'a [u8],
        sequence: u64,
        arrival_ms: i64,
        metadata: MetadataRef<'_>,
        lambda_keys: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Routed<'a> {
        let keys = match &self.partitioner {
            None => self.no_partition.clone(),
            Some(partitioner) => match partition_contained(partitioner.as_ref(), data, metadata) {
                Ok(keys) => keys,
                Err(failure) => {
                    return Routed::Failed {
                        route: Route::error_output(self.partition_failure_type),
                        line: failure_line(data, sequence, arrival_ms, &failure.code, &failure.message),
                    };
                }
            },
        };
        let returned = |name: &str| lambda_keys.and_then(|returned| returned.get(name));
        let Some(lambda) = self.lambda.as_ref().filter(|lambda| {
            !lambda.keys.is_empty() || lambda.optional_keys.iter().any(|name| returned(name).is_some())
        }) else {
            return Routed::Sink { route: Route::sink(keys), data };
        };
        let mut merged = (*keys).clone();
        let optional =
            lambda.optional_keys.iter().filter(|name| returned(name).is_some() && !lambda.keys.contains(name));
        for name in lambda.keys.iter().chain(optional) {
            let checked = match returned(name) {
                None => Err(crate::processing::KeyError {
                    code: crate::processing::METADATA_EXTRACTION_FAILED,
                    message: format!("the lambda returned no partition key `{name}` (metadata.partitionKeys)"),
                }),
                Some(value) => crate::processing::partition::check_value(name, value).map(|()| value),
            };
            match checked {
                Ok(value) => {
                    merged.insert(spillway_sink_api::lambda_partition_key(name), value.clone());
                }
                Err(error) => {
                    return Routed::Failed {
                        route: Route::error_output(self.partition_failure_type),
                        line: failure_line(data, sequence, arrival_ms, error.code, &error.message),
                    };
                }
            }
        }
        Routed::Sink { route: Route::sink(Arc::new(merged)), data }
    }

    /// With a batch transform (`sql`), the transform outcomes of every record of `frames`, in
    /// order: one micro-batch for all the records read at once. Each outcome is what the record
    /// alone gives, so how the WAL is read never changes a batch.
    fn batch_outcomes(&self, frames: &[Frame]) -> Option<std::vec::IntoIter<Outcome>> {
        let transforms = self.transforms.as_ref().filter(|transforms| transforms.has_batch_stage())?;
        let records: Vec<&[u8]> = frames.iter().flat_map(|frame| frame.records.iter().map(|data| &data[..])).collect();
        Some(transforms.apply_batch(&records).into_iter())
    }

    /// Feed one frame's records into `open`, skipping claimed ones (and, when rebuilding one
    /// batch, records of other routes). `outcomes`: the frame's records' transform outcomes from
    /// [`Router::batch_outcomes`] (consumed in order), else each record is transformed here.
    #[allow(clippy::too_many_arguments)]
    fn feed(
        &self,
        frame: &Frame,
        open: &mut OpenBatches,
        claimed: &Claimed,
        only: Option<&Route>,
        arrived_at: Instant,
        closed: &mut Vec<ClosedBatch>,
        mut outcomes: Option<&mut std::vec::IntoIter<Outcome>>,
    ) -> Result<(), EncodeError> {
        let skip =
            |route: &Route, sequence: u64| claimed.holds(route, sequence) || only.is_some_and(|only| only != route);
        // A record an encoder refused belongs to an error route; rebuilding a sink batch needs
        // no such record, everything else does (see `place`).
        let probe_skipped = only.is_none_or(|only| only.error_output_type.is_some());
        let mut touched: Vec<Route> = Vec::new();
        // A record its source refused goes to the error output as it is.
        let refused =
            |offset: usize| frame.metadata.get(offset).and_then(|entry| crate::record_metadata::source_failure(entry));
        let file_refused = |offset: usize, data: &[u8], open: &mut OpenBatches, closed: &mut Vec<ClosedBatch>| {
            let Some((code, message)) = refused(offset) else { return Ok(false) };
            let sequence = frame.first_sequence + offset as u64;
            let route = Route::error_output(PROCESSING_FAILED_OUTPUT_TYPE);
            if !skip(&route, sequence) {
                let line = failure_line(data, sequence, frame.arrival_ms, code, &message);
                closed.extend(open.push(&route, sequence, &line, b"", frame.arrival_ms, arrived_at)?);
            }
            Ok::<bool, EncodeError>(true)
        };
        let Some(transforms) = &self.transforms else {
            for (offset, data) in frame.records.iter().enumerate() {
                let sequence = frame.first_sequence + offset as u64;
                if !frame.metadata.is_empty() && file_refused(offset, data, open, closed)? {
                    continue;
                }
                touched.clear();
                let position = RecordPosition { sequence, output: 0, arrival_ms: frame.arrival_ms };
                let metadata = MetadataRef::of_frame(frame, offset);
                self.place(open, data, position, arrived_at, &skip, probe_skipped, &mut touched, metadata, None)?;
                closed.extend(open.settle(&touched)?);
            }
            return Ok(());
        };
        let mut outputs = Vec::new();
        for (offset, data) in frame.records.iter().enumerate() {
            let sequence = frame.first_sequence + offset as u64;
            if !frame.metadata.is_empty() && file_refused(offset, data, open, closed)? {
                // Its batch outcome (computed with the others) is not used.
                let _ = outcomes.as_mut().and_then(|outcomes| outcomes.next());
                continue;
            }
            touched.clear();
            let applied = match outcomes.as_mut().and_then(|outcomes| outcomes.next()) {
                Some(outcome) => outcome.map(|list| outputs = list),
                None => transforms.apply(data, &mut outputs),
            };
            if let Err(failure) = applied {
                // Firehose's processing-failed records carry the record as it arrived.
                let route = Route::error_output(PROCESSING_FAILED_OUTPUT_TYPE);
                if !skip(&route, sequence) {
                    let line = failure_line(data, sequence, frame.arrival_ms, failure.code, &failure.message);
                    closed.extend(open.push(&route, sequence, &line, b"", frame.arrival_ms, arrived_at)?);
                }
                continue;
            }
            let metadata = MetadataRef::of_frame(frame, offset);
            for (output, data) in (0u32..).zip(&outputs) {
                let position = RecordPosition { sequence, output, arrival_ms: frame.arrival_ms };
                self.place(open, data, position, arrived_at, &skip, probe_skipped, &mut touched, metadata, None)?;
            }
            closed.extend(open.settle(&touched)?);
        }
        Ok(())
    }

    /// Append one (transformed) record to its route's open batch, or, when its partition keys
    /// fail or the sink's encoder refuses it, a Firehose error record to the error output's;
    /// note the route in `touched`.
    /// `position.output` numbers the outputs of one WAL record in the order they are placed
    /// (what [`Router::sink_records`] gives back when the batch is read again).
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        open: &mut OpenBatches,
        data: &[u8],
        position: RecordPosition,
        arrived_at: Instant,
        skip: &dyn Fn(&Route, u64) -> bool,
        probe_skipped: bool,
        touched: &mut Vec<Route>,
        metadata: MetadataRef<'_>,
        lambda_keys: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<(), EncodeError> {
        let RecordPosition { sequence, arrival_ms, .. } = position;
        let (route, data, suffix) = match self.route(data, sequence, arrival_ms, metadata, lambda_keys) {
            Routed::Sink { route, data } => (route, Cow::Borrowed(data), self.delimiter.suffix_for(data)),
            Routed::Failed { route, line } => (route, Cow::Owned(line), &b""[..]),
        };
        if skip(&route, sequence) {
            // Its batch is claimed (it left before a crash) or is not the one being rebuilt. If
            // the sink's encoder refused the record, it went to an error route instead, whose
            // batch may not have left: a scratch encoder says (the batch's own never held it).
            if probe_skipped
                && route.error_output_type.is_none()
                && let Some((output_type, code, message)) = open.probe(position, &data, suffix)
            {
                let error_route = Route::error_output(output_type);
                if !skip(&error_route, sequence) {
                    let line = failure_line(&data, sequence, arrival_ms, code, &message);
                    open.append(&error_route, position, &line, b"", arrived_at)?;
                    if !touched.contains(&error_route) {
                        touched.push(error_route);
                    }
                }
            }
            return Ok(());
        }
        let route = match open.append(&route, position, &data, suffix, arrived_at) {
            Ok(()) => route,
            Err(EncodeError::Rejected { output_type, code, message }) => {
                let route = Route::error_output(output_type);
                if skip(&route, sequence) {
                    return Ok(());
                }
                let line = failure_line(&data, sequence, arrival_ms, code, &message);
                open.append(&route, position, &line, b"", arrived_at)?;
                route
            }
            Err(error) => return Err(error),
        };
        if !touched.contains(&route) {
            touched.push(route);
        }
        Ok(())
    }

    /// Feed a Lambda stage's processed chunk into `open` (as [`Router::feed`] does a frame):
    /// the function's outputs go through the transforms after it, then to their partition;
    /// failed records go to `processing-failed`.
    fn feed_processed(
        &self,
        chunk: &ProcessedChunk,
        open: &mut OpenBatches,
        claimed: &Claimed,
        only: Option<&Route>,
        closed: &mut Vec<ClosedBatch>,
    ) -> Result<(), EncodeError> {
        let skip =
            |route: &Route, sequence: u64| claimed.holds(route, sequence) || only.is_some_and(|only| only != route);
        // A record an encoder refused belongs to an error route; rebuilding a sink batch needs
        // no such record, everything else does (see `place`).
        let probe_skipped = only.is_none_or(|only| only.error_output_type.is_some());
        let after = self.lambda.as_ref().and_then(|lambda| lambda.after.as_ref());
        let failed_route = Route::error_output(PROCESSING_FAILED_OUTPUT_TYPE);
        let mut touched: Vec<Route> = Vec::new();
        let mut outputs = Vec::new();
        for record in &chunk.records {
            let (sequence, arrival_ms) = (record.sequence, record.arrival_ms);
            let metadata = record.metadata_ref();
            let arrived_at = arrived_at(arrival_ms);
            touched.clear();
            // Numbers the outputs placed, as `sink_records_processed` counts them.
            let mut placed = 0u32;
            let mut next_position = || {
                placed += 1;
                RecordPosition { sequence, output: placed - 1, arrival_ms }
            };
            for output in &record.outputs {
                let (data, lambda_keys) = match output {
                    ProcessedOutput::Failed { data, code, message, attempts, lambda_arn } => {
                        if !skip(&failed_route, sequence) {
                            let line = failure_line_from(
                                data,
                                sequence,
                                arrival_ms,
                                code,
                                message,
                                *attempts,
                                lambda_arn.as_deref(),
                            );
                            closed.extend(open.push(&failed_route, sequence, &line, b"", arrival_ms, arrived_at)?);
                        }
                        continue;
                    }
                    ProcessedOutput::Data { data, lambda_keys } => (data, lambda_keys.as_deref()),
                };
                let Some(after) = after else {
                    self.place(
                        open,
                        data,
                        next_position(),
                        arrived_at,
                        &skip,
                        probe_skipped,
                        &mut touched,
                        metadata,
                        lambda_keys,
                    )?;
                    continue;
                };
                if let Err(failure) = after.apply(data, &mut outputs) {
                    if !skip(&failed_route, sequence) {
                        let line = failure_line(data, sequence, arrival_ms, failure.code, &failure.message);
                        closed.extend(open.push(&failed_route, sequence, &line, b"", arrival_ms, arrived_at)?);
                    }
                    continue;
                }
                for transformed in &outputs {
                    self.place(
                        open,
                        transformed,
                        next_position(),
                        arrived_at,
                        &skip,
                        probe_skipped,
                        &mut touched,
                        metadata,
                        lambda_keys,
                    )?;
                }
            }
            closed.extend(open.settle(&touched)?);
        }
        Ok(())
    }

    /// What a sink batch of `partition` holds of one processed record (see [`Router::sink_records`]).
    pub fn sink_records_processed(
        &self,
        record: &ProcessedRecord,
        partition: &PartitionKeys,
        out: &mut Vec<(u32, Bytes)>,
    ) {
        let after = self.lambda.as_ref().and_then(|lambda| lambda.after.as_ref());
        let mut outputs = Vec::new();
        let mut placed = 0u32;
        for output in &record.outputs {
            let ProcessedOutput::Data { data, lambda_keys } = output else { continue };
            let transformed: Vec<Bytes> = match after {
                None => vec![data.clone()],
                Some(after) => match after.apply(data, &mut outputs) {
                    Ok(()) => outputs.drain(..).map(Bytes::from).collect(),
                    Err(_) => continue,
                },
            };
            for data in transformed {
                let output = placed;
                placed += 1;
                let routed = self.route(
                    &data,
                    record.sequence,
                    record.arrival_ms,
                    record.metadata_ref(),
                    lambda_keys.as_deref(),
                );
                let in_partition = match routed {
                    Routed::Sink { route, .. } => *route.partition == *partition,
                    Routed::Failed { .. } => false,
                };
                if in_partition {
                    out.push((output, data));
                }
            }
        }
    }

    /// What a sink batch of `partition` holds of one WAL record: the record itself without
    /// transforms, else those of its outputs whose partition is `partition`, in order.
    pub fn sink_records(
        &self,
        data: &Bytes,
        metadata: MetadataRef<'_>,
        partition: &PartitionKeys,
        out: &mut Vec<(u32, Bytes)>,
    ) {
        let Some(transforms) = &self.transforms else {
            out.push((0, data.clone()));
            return;
        };
        let mut outputs = Vec::new();
        if transforms.apply(data, &mut outputs).is_err() {
            return;
        }
        for (index, output) in (0u32..).zip(outputs) {
            let in_partition = match &self.partitioner {
                None => partition.is_empty(),
                Some(partitioner) => {
                    partition_contained(partitioner.as_ref(), &output, metadata).is_ok_and(|keys| *keys == *partition)
                }
            };
            if in_partition {
                out.push((index, Bytes::from(output)));
            }
        }
    }
}

/// The record's partition; a partitioner that panics fails the record (a bug contained to it,
/// the same way on every replay, so routing and reading a batch back agree).
fn partition_contained(
    partitioner: &dyn Partitioner,
    data: &[u8],
    metadata: MetadataRef<'_>,
) -> Result<Arc<PartitionKeys>, PartitionFailure> {
    spillway_sink_api::catch_panic(|| partitioner.partition(data, metadata)).unwrap_or_else(|panic| {
        Err(PartitionFailure {
            code: crate::processing::transform::INTERNAL_ERROR.to_string(),
            message: format!("internal error: computing the partition keys panicked: {panic}"),
        })
    })
}

/// A Firehose error record (one JSON line) for a record that failed before reaching a batch.
fn failure_line(data: &[u8], sequence: u64, arrival_ms: i64, code: &str, message: &str) -> Vec<u8> {
    failure_line_from(data, sequence, arrival_ms, code, message, 1, None)
}

/// The same, with the attempts made and, for a Lambda's failures, its `lambdaArn`.
fn failure_line_from(
    data: &[u8],
    sequence: u64,
    arrival_ms: i64,
    code: &str,
    message: &str,
    attempts: u32,
    lambda_arn: Option<&str>,
) -> Vec<u8> {
    let record = Record { data: Bytes::copy_from_slice(data), arrival_ms, sequence, output: 0 };
    let ending_ms = chrono::Utc::now().timestamp_millis();
    super::retry::error_record_line_with(&record, code, message, attempts, ending_ms, lambda_arn)
}

/// A record's arrival on the monotonic clock (the interval counts from arrival).
fn arrived_at(arrival_ms: i64) -> Instant {
    let now = Instant::now();
    let age = Duration::from_millis(chrono::Utc::now().timestamp_millis().saturating_sub(arrival_ms).max(0) as u64);
    now.checked_sub(age).unwrap_or(now)
}

/// Ranges of recorded intents above the watermark, per route: their records are delivered (done)
/// or being re-sent (pending), so fresh batches must not take them again.
#[derive(Default)]
pub struct Claimed {
    ranges: Vec<(Route, Range<u64>)>,
}

impl Claimed {
    pub fn new(ranges: Vec<(Route, Range<u64>)>) -> Self {
        Self { ranges }
    }

    fn holds(&self, route: &Route, sequence: u64) -> bool {
        !self.ranges.is_empty()
            && self.ranges.iter().any(|(claimed, range)| range.contains(&sequence) && claimed == route)
    }

    fn release_below(&mut self, watermark: u64) {
        self.ranges.retain(|(_, range)| range.end > watermark);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// The reader and the open batches of one stream.
pub struct Assembler {
    reader: WalReader,
    open: OpenBatches,
    router: Router,
    claimed: Claimed,
    /// With a Lambda stage: the end of the last chunk fed (the reader is not used then).
    fed: Option<u64>,
}

impl Assembler {
    pub fn new(reader: WalReader, open: OpenBatches, router: Router, claimed: Claimed) -> Self {
        Self { reader, open, router, claimed, fed: None }
    }

    /// Place a Lambda stage's next processed chunk (chunks come in WAL order); returns the
    /// batches that closed on the way.
    pub fn feed_chunk(&mut self, chunk: &ProcessedChunk) -> Result<Vec<ClosedBatch>, AssembleError> {
        let mut closed = Vec::new();
        self.router.feed_processed(chunk, &mut self.open, &self.claimed, None, &mut closed)?;
        self.fed = Some(chunk.end);
        Ok(closed)
    }

    /// Read about `max_bytes` of committed records and feed them in; returns the batches that
    /// closed on the way (size hint, partition cap, memory budget).
    pub fn fill(&mut self, committed: u64, max_bytes: usize) -> Result<Vec<ClosedBatch>, AssembleError> {
        let frames = self.reader.read(committed, max_bytes)?;
        let (now, now_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis());
        let mut closed = Vec::new();
        let mut outcomes = self.router.batch_outcomes(&frames);
        for frame in &frames {
            // The interval counts from arrival: records recovered after a restart that are already
            // older than the interval close their batch at once.
            let age = Duration::from_millis(now_ms.saturating_sub(frame.arrival_ms).max(0) as u64);
            let arrived_at = now.checked_sub(age).unwrap_or(now);
            self.router.feed(frame, &mut self.open, &self.claimed, None, arrived_at, &mut closed, outcomes.as_mut())?;
        }
        Ok(closed)
    }

    pub fn close_due(&mut self, now: Instant, all: bool) -> Result<Vec<ClosedBatch>, AssembleError> {
        Ok(self.open.close_due(now, all)?)
    }

    /// The sequence of the next record to read (with a Lambda stage: to place).
    pub fn position(&self) -> u64 {
        self.fed.unwrap_or_else(|| self.reader.position())
    }

    pub fn lowest_open_start(&self) -> Option<u64> {
        self.open.lowest_start()
    }

    pub fn oldest_open_arrival_ms(&self) -> Option<i64> {
        self.open.oldest_arrival_ms()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.next_deadline()
    }

    pub fn has_open_batches(&self) -> bool {
        !self.open.is_empty()
    }

    pub fn partition_count(&self) -> usize {
        self.open.partition_count()
    }

    pub fn take_early_closes(&mut self) -> Vec<EarlyClose> {
        self.open.take_early_closes()
    }

    pub fn release_claims_below(&mut self, watermark: u64) {
        self.claimed.release_below(watermark);
    }
}

/// Rebuild a recorded batch from the WAL: route every record of `[start, end)` again and encode
/// those of `route` afresh. `open` must have no size hint, cap or budget that closes early.
/// Blocking.
pub fn rebuild(
    mut reader: WalReader,
    router: &Router,
    mut open: OpenBatches,
    route: &Route,
    end: u64,
) -> Result<Option<ClosedBatch>, AssembleError> {
    let now = Instant::now();
    let mut closed = Vec::new();
    let nothing_claimed = Claimed::default();
    while reader.position() < end {
        let frames = reader.read(end, 8 << 20)?;
        if frames.is_empty() {
            break;
        }
        let mut frames = frames;
        for frame in &mut frames {
            let keep = (end.saturating_sub(frame.first_sequence) as usize).min(frame.records.len());
            frame.records.truncate(keep);
        }
        let mut outcomes = router.batch_outcomes(&frames);
        for frame in &frames {
            router.feed(frame, &mut open, &nothing_claimed, Some(route), now, &mut closed, outcomes.as_mut())?;
        }
    }
    closed.extend(open.close_due(now, true)?);
    Ok(closed.into_iter().find(|batch| &batch.route == route))
}

/// Rebuild a recorded batch from a Lambda stage's chunks of its range (as [`rebuild`] does from
/// the WAL). Blocking.
pub fn rebuild_processed(
    chunks: &[ProcessedChunk],
    router: &Router,
    mut open: OpenBatches,
    route: &Route,
) -> Result<Option<ClosedBatch>, AssembleError> {
    let now = Instant::now();
    let mut closed = Vec::new();
    let nothing_claimed = Claimed::default();
    for chunk in chunks {
        router.feed_processed(chunk, &mut open, &nothing_claimed, Some(route), &mut closed)?;
    }
    closed.extend(open.close_due(now, true)?);
    Ok(closed.into_iter().find(|batch| &batch.route == route))
}
