//! The CPU side of delivery: read committed frames from the WAL, decode them into records, route
//! each record (partition keys, or the error output when its keys cannot be evaluated), and feed
//! it into its route's open batch. It runs on the blocking pool, one step at a time; the delivery
//! loop owns it between steps.
//!
//! Must not: write intents or checkpoints, or talk to a sink.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spillway_sink_api::{EncodeError, PartitionKeys, Record};
use tokio::time::Instant;

use super::open_batch::{ClosedBatch, EarlyClose, OpenBatches, Route};
use super::retry::error_record_line;
use crate::config::RecordDelimiter;
use crate::processing::{PROCESSING_FAILED_OUTPUT_TYPE, Transforms};
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
    fn partition(&self, record: &[u8]) -> Result<Arc<PartitionKeys>, PartitionFailure>;
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
    fn partition(&self, record: &[u8]) -> Result<Arc<PartitionKeys>, PartitionFailure> {
        let values = self
            .keys
            .evaluate(record)
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

/// Routing shared by the live path, the rebuilding of recorded batches and the reading back of
/// a batch's records: transforms, then partition keys.
#[derive(Clone)]
pub struct Router {
    pub partitioner: Option<Arc<dyn Partitioner>>,
    /// `processing.transforms`; `None` when there are none (records pass through uncopied).
    pub transforms: Option<Arc<Transforms>>,
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
        }
    }

    /// The route of one (transformed) record: its partition, or the error output when its keys
    /// cannot be evaluated.
    fn route<'a>(&self, data: &'a [u8], sequence: u64, arrival_ms: i64) -> Routed<'a> {
        let Some(partitioner) = &self.partitioner else {
            return Routed::Sink { route: Route::sink(self.no_partition.clone()), data };
        };
        match partitioner.partition(data) {
            Ok(keys) => Routed::Sink { route: Route::sink(keys), data },
            Err(failure) => Routed::Failed {
                route: Route::error_output(self.partition_failure_type),
                line: failure_line(data, sequence, arrival_ms, &failure.code, &failure.message),
            },
        }
    }

    /// Feed one frame's records into `open`, skipping claimed ones (and, when rebuilding one
    /// batch, records of other routes).
    fn feed(
        &self,
        frame: &Frame,
        open: &mut OpenBatches,
        claimed: &Claimed,
        only: Option<&Route>,
        arrived_at: Instant,
        closed: &mut Vec<ClosedBatch>,
    ) -> Result<(), EncodeError> {
        let skip =
            |route: &Route, sequence: u64| claimed.holds(route, sequence) || only.is_some_and(|only| only != route);
        let mut touched: Vec<Route> = Vec::new();
        let Some(transforms) = &self.transforms else {
            for (offset, data) in frame.records.iter().enumerate() {
                let sequence = frame.first_sequence + offset as u64;
                touched.clear();
                self.place(open, data, sequence, frame.arrival_ms, arrived_at, &skip, &mut touched)?;
                closed.extend(open.settle(&touched)?);
            }
            return Ok(());
        };
        let mut outputs = Vec::new();
        for (offset, data) in frame.records.iter().enumerate() {
            let sequence = frame.first_sequence + offset as u64;
            touched.clear();
            if let Err(failure) = transforms.apply(data, &mut outputs) {
                // Firehose's processing-failed records carry the record as it arrived.
                let route = Route::error_output(PROCESSING_FAILED_OUTPUT_TYPE);
                if !skip(&route, sequence) {
                    let line = failure_line(data, sequence, frame.arrival_ms, failure.code, &failure.message);
                    closed.extend(open.push(&route, sequence, &line, b"", frame.arrival_ms, arrived_at)?);
                }
                continue;
            }
            for output in &outputs {
                self.place(open, output, sequence, frame.arrival_ms, arrived_at, &skip, &mut touched)?;
            }
            closed.extend(open.settle(&touched)?);
        }
        Ok(())
    }

    /// Append one (transformed) record to its route's open batch, or, when its partition keys
    /// fail or the sink's encoder refuses it, a Firehose error record to the error output's;
    /// note the route in `touched`.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        open: &mut OpenBatches,
        data: &[u8],
        sequence: u64,
        arrival_ms: i64,
        arrived_at: Instant,
        skip: &dyn Fn(&Route, u64) -> bool,
        touched: &mut Vec<Route>,
    ) -> Result<(), EncodeError> {
        let (route, data, suffix) = match self.route(data, sequence, arrival_ms) {
            Routed::Sink { route, data } => (route, Cow::Borrowed(data), self.delimiter.suffix_for(data)),
            Routed::Failed { route, line } => (route, Cow::Owned(line), &b""[..]),
        };
        if skip(&route, sequence) {
            return Ok(());
        }
        let route = match open.append(&route, sequence, &data, suffix, arrival_ms, arrived_at) {
            Ok(()) => route,
            Err(EncodeError::Rejected { output_type, code, message }) => {
                let route = Route::error_output(output_type);
                if skip(&route, sequence) {
                    return Ok(());
                }
                let line = failure_line(&data, sequence, arrival_ms, code, &message);
                open.append(&route, sequence, &line, b"", arrival_ms, arrived_at)?;
                route
            }
            Err(error) => return Err(error),
        };
        if !touched.contains(&route) {
            touched.push(route);
        }
        Ok(())
    }

    /// What a sink batch of `partition` holds of one WAL record: the record itself without
    /// transforms, else those of its outputs whose partition is `partition`, in order.
    pub fn sink_records(&self, data: &Bytes, partition: &PartitionKeys, out: &mut Vec<Bytes>) {
        let Some(transforms) = &self.transforms else {
            out.push(data.clone());
            return;
        };
        let mut outputs = Vec::new();
        if transforms.apply(data, &mut outputs).is_err() {
            return;
        }
        for output in outputs {
            let in_partition = match &self.partitioner {
                None => partition.is_empty(),
                Some(partitioner) => partitioner.partition(&output).is_ok_and(|keys| *keys == *partition),
            };
            if in_partition {
                out.push(Bytes::from(output));
            }
        }
    }
}

/// A Firehose error record (one JSON line) for a record that failed before reaching a batch.
fn failure_line(data: &[u8], sequence: u64, arrival_ms: i64, code: &str, message: &str) -> Vec<u8> {
    let record = Record { data: Bytes::copy_from_slice(data), arrival_ms, sequence };
    let ending_ms = chrono::Utc::now().timestamp_millis();
    error_record_line(&record, code, message, 1, ending_ms)
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
}

impl Assembler {
    pub fn new(reader: WalReader, open: OpenBatches, router: Router, claimed: Claimed) -> Self {
        Self { reader, open, router, claimed }
    }

    /// Read about `max_bytes` of committed records and feed them in; returns the batches that
    /// closed on the way (size hint, partition cap, memory budget).
    pub fn fill(&mut self, committed: u64, max_bytes: usize) -> Result<Vec<ClosedBatch>, AssembleError> {
        let frames = self.reader.read(committed, max_bytes)?;
        let (now, now_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis());
        let mut closed = Vec::new();
        for frame in &frames {
            // The interval counts from arrival: records recovered after a restart that are already
            // older than the interval close their batch at once.
            let age = Duration::from_millis(now_ms.saturating_sub(frame.arrival_ms).max(0) as u64);
            let arrived_at = now.checked_sub(age).unwrap_or(now);
            self.router.feed(frame, &mut self.open, &self.claimed, None, arrived_at, &mut closed)?;
        }
        Ok(closed)
    }

    pub fn close_due(&mut self, now: Instant, all: bool) -> Result<Vec<ClosedBatch>, AssembleError> {
        Ok(self.open.close_due(now, all)?)
    }

    /// The sequence of the next record to read.
    pub fn position(&self) -> u64 {
        self.reader.position()
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
        for mut frame in frames {
            let keep = (end.saturating_sub(frame.first_sequence) as usize).min(frame.records.len());
            frame.records.truncate(keep);
            router.feed(&frame, &mut open, &nothing_claimed, Some(route), now, &mut closed)?;
        }
    }
    closed.extend(open.close_due(now, true)?);
    Ok(closed.into_iter().find(|batch| &batch.route == route))
}
