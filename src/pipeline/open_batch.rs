//! Open batches: per route (a dynamic partition, or an error output type), the records waiting to
//! leave, held *encoded* by the sink's encoder as they arrive. A batch closes on its size hint
//! (record bytes before encoding, as Firehose counts), its interval (counted from its oldest
//! record's arrival), the stream stopping, the partition cap, or the memory budget (the largest
//! closes first).
//!
//! Must not: read the WAL, or know about intents and sinks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spillway_sink_api::{EncodeError, Encoder, EncoderFactory, PartitionKeys, Payload, RecordPosition, SequenceSet};
use tokio::time::Instant;

/// Where a record goes: the sink, under a partition, or an error output type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub partition: Arc<PartitionKeys>,
    /// `Some(type)` for records routed to the error output (`!{firehose:error-output-type}`).
    pub error_output_type: Option<String>,
}

impl Route {
    pub fn sink(partition: Arc<PartitionKeys>) -> Self {
        Self { partition, error_output_type: None }
    }

    pub fn error_output(error_output_type: &str) -> Self {
        Self { partition: Arc::default(), error_output_type: Some(error_output_type.to_string()) }
    }
}

/// Open-batch bytes held in memory across every stream, against `limits.max_open_batches_mib`.
#[derive(Debug)]
pub struct MemoryBudget {
    held: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { held: AtomicUsize::new(0), limit })
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn exceeded(&self) -> bool {
        self.held() > self.limit
    }

    fn update(&self, before: usize, after: usize) {
        if after >= before {
            self.held.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.held.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

/// What `/metrics` shows of the budget (`spillway_open_batch_bytes`, `_limit_bytes`).
impl crate::metrics::BudgetGauge for MemoryBudget {
    fn held(&self) -> usize {
        MemoryBudget::held(self)
    }

    fn limit(&self) -> usize {
        MemoryBudget::limit(self)
    }
}

struct OpenBatch {
    encoder: Box<dyn Encoder>,
    start: u64,
    sequences: SequenceSet,
    record_bytes: usize,
    oldest_arrival_ms: i64,
    /// The oldest record's arrival on the monotonic clock; the interval counts from here.
    opened_at: Instant,
    /// What this batch last reported to the budget.
    held: usize,
    /// Why the encoder cannot be trusted any more (it panicked, contained): the batch is closed
    /// at the next settle, and its records are set aside in the error output with this reason
    /// instead of being encoded.
    poisoned: Option<String>,
}

/// A closed batch's identity and bookkeeping: what its intent records and its sink needs.
pub struct ClosedParts {
    pub route: Route,
    pub start: u64,
    pub end: u64,
    pub sequences: SequenceSet,
    pub record_bytes: usize,
    pub oldest_arrival_ms: i64,
}

/// A closed batch. Its encoder is not finished yet: finishing waits for the last chunk's
/// compression, which the delivery task does, so closing a batch never stalls the reading of the
/// next one.
pub struct ClosedBatch {
    pub parts: ClosedParts,
    /// In a mutex only so a queue of closed batches can be borrowed across an `.await` (encoders
    /// are `Send`, not `Sync`); nothing locks it but `finish`.
    pub encoder: std::sync::Mutex<Box<dyn Encoder>>,
    /// What the encoder held when the batch closed (≈ its payload size).
    pub held_bytes: usize,
    /// Why the batch's encoder cannot be trusted (see [`OpenBatches::append`]).
    pub poisoned: Option<String>,
}

impl ClosedBatch {
    /// Finish the encoder into the payload (blocking: call from the blocking pool). A panic of
    /// the encoder is contained into [`EncodeError::Internal`], and so is a batch whose encoder
    /// panicked earlier (it is not finished, only dropped): the parts come back either way, so
    /// the batch's records can be set aside.
    pub fn finish(self) -> (ClosedParts, Result<Payload, EncodeError>) {
        let encoder = self.encoder.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(reason) = self.poisoned {
            // Dropping a half-changed encoder may panic too.
            let _ = spillway_sink_api::catch_panic(move || drop(encoder));
            return (self.parts, Err(EncodeError::Internal(reason)));
        }
        let finished = spillway_sink_api::catch_panic(move || encoder.finish()).unwrap_or_else(|panic| {
            Err(EncodeError::Internal(format!("the encoder panicked finishing the batch: {panic}")))
        });
        (self.parts, finished)
    }
}

impl std::ops::Deref for ClosedBatch {
    type Target = ClosedParts;

    fn deref(&self) -> &ClosedParts {
        &self.parts
    }
}

/// Why a batch closed before its hints, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyClose {
    PartitionCap,
    MemoryBudget,
}

/// Routes are looked up once or twice per record: foldhash (seeded per process) instead of
/// SipHash, which was most of the lookup's cost.
type RouteMap<V> = HashMap<Route, V, foldhash::fast::RandomState>;

pub struct OpenBatches {
    batches: RouteMap<OpenBatch>,
    /// Open batches of sink partitions (not error outputs), against `max_partitions`.
    sink_partitions: usize,
    sink_encoders: Arc<dyn EncoderFactory>,
    error_encoders: Arc<dyn EncoderFactory>,
    size_bytes: usize,
    interval: Duration,
    max_partitions: usize,
    budget: Arc<MemoryBudget>,
    /// Batches closed early since the last `take_early_closes`.
    early_closes: Vec<EarlyClose>,
    /// Open batches whose encoder panicked, closed at the next settle.
    poisoned: Vec<Route>,
    /// A sink encoder that is never finished, to learn whether it refuses a record that is not
    /// encoded for real ([`OpenBatches::probe`]).
    scratch: Option<Box<dyn Encoder>>,
}

/// Most bytes the scratch encoder may hold before it is replaced by a fresh one.
const MAX_SCRATCH_BYTES: usize = 4 << 20;

/// Bounds of the staging chunk an encoder may hold before it compresses.
const MIN_CHUNK_BYTES: usize = 64 * 1024;
const MAX_CHUNK_BYTES: usize = 1 << 20;

impl OpenBatches {
    pub fn new(
        sink_encoders: Arc<dyn EncoderFactory>,
        error_encoders: Arc<dyn EncoderFactory>,
        size_bytes: usize,
        interval: Duration,
        max_partitions: usize,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        Self {
            batches: RouteMap::default(),
            sink_partitions: 0,
            sink_encoders,
            error_encoders,
            size_bytes: size_bytes.max(1),
            interval,
            max_partitions: max_partitions.max(1),
            budget,
            early_closes: Vec::new(),
            poisoned: Vec::new(),
            scratch: None,
        }
    }

    /// Add a record (and its delimiter, `suffix`) to its route's open batch, opening one if needed. Returns the batches this
    /// closed: the record's own when it reached the size hint, or others closed to respect the
    /// partition cap or the memory budget.
    pub fn push(
        &mut self,
        route: &Route,
        sequence: u64,
        data: &[u8],
        suffix: &[u8],
        arrival_ms: i64,
        arrived_at: Instant,
    ) -> Result<Vec<ClosedBatch>, EncodeError> {
        self.append(route, RecordPosition { sequence, output: 0, arrival_ms }, data, suffix, arrived_at)?;
        self.settle(std::slice::from_ref(route))
    }

    /// Append one record to its route's open batch (opening one) without closing anything: the
    /// outputs of one WAL record (a transform may make several, for several routes) must all
    /// land before any of their batches closes, or a batch would hold part of a sequence's
    /// outputs and a rebuild from the WAL could not tell which part. [`OpenBatches::settle`]
    /// follows.
    ///
    /// An encoder that panics (or reports [`EncodeError::Internal`]) poisons its batch: the
    /// record counts as the batch's, the encoder is not fed again, and the next settle closes
    /// the batch, whose records then go to the error output with the reason instead of to the
    /// sink (the process, the stream and the other batches go on). A rebuild after a crash
    /// meets the same panic on the same record, so the same records are set aside again.
    pub fn append(
        &mut self,
        route: &Route,
        position: RecordPosition,
        data: &[u8],
        suffix: &[u8],
        arrived_at: Instant,
    ) -> Result<(), EncodeError> {
        let RecordPosition { sequence, arrival_ms, .. } = position;
        let batch = match self.batches.get_mut(route) {
            Some(batch) => batch,
            None => {
                let chunk_bytes = self.chunk_bytes_hint();
                let factory =
                    if route.error_output_type.is_some() { &self.error_encoders } else { &self.sink_encoders };
                let batch = OpenBatch {
                    encoder: factory.new_encoder(chunk_bytes),
                    start: sequence,
                    sequences: SequenceSet::default(),
                    record_bytes: 0,
                    oldest_arrival_ms: arrival_ms,
                    opened_at: arrived_at,
                    held: 0,
                    poisoned: None,
                };
                if route.error_output_type.is_none() {
                    self.sink_partitions += 1;
                }
                self.batches.entry(route.clone()).or_insert(batch)
            }
        };
        let pushed = match &batch.poisoned {
            Some(_) => Ok(()),
            None => spillway_sink_api::catch_panic(|| batch.encoder.push_at(position, data, suffix)).unwrap_or_else(
                |panic| {
                    Err(EncodeError::Internal(format!(
                        "the encoder panicked on record {sequence} (output {}): {panic}",
                        position.output
                    )))
                },
            ),
        };
        match pushed {
            Ok(()) => {}
            Err(EncodeError::Internal(reason)) => {
                tracing::error!(sequence, output = position.output, %reason, "an encoder failed inside; its batch's records go to the error output");
                batch.poisoned = Some(reason);
                self.poisoned.push(route.clone());
            }
            Err(error) => {
                // A batch opened for a record its encoder refused holds nothing: drop it, so it
                // neither holds the watermark nor becomes an empty object.
                if batch.sequences.is_empty() {
                    let held = batch.held;
                    self.remove(route);
                    self.budget.update(held, 0);
                }
                return Err(error);
            }
        }
        batch.sequences.push(sequence);
        batch.record_bytes += data.len() + suffix.len();
        batch.oldest_arrival_ms = batch.oldest_arrival_ms.min(arrival_ms);
        batch.opened_at = batch.opened_at.min(arrived_at);
        let held = match &batch.poisoned {
            // Its encoder is not asked again: what it held stays counted until the batch closes.
            Some(_) => batch.held,
            None => batch.encoder.held_bytes() + batch.sequences.held_bytes(),
        };
        self.budget.update(batch.held, held);
        batch.held = held;
        Ok(())
    }

    /// Whether the sink's encoder refuses the record, and how ([`EncodeError::Rejected`]'s
    /// output type, code and message), without encoding it into any batch: for a record that is
    /// skipped (its batch left before a crash, or another batch is being rebuilt) but may have
    /// gone to an error route. Encoders refuse deterministically and a refusal leaves them as
    /// they were, so one scratch encoder serves, replaced when it has grown.
    pub fn probe(
        &mut self,
        position: RecordPosition,
        data: &[u8],
        suffix: &[u8],
    ) -> Option<(&'static str, &'static str, String)> {
        let factory = &self.sink_encoders;
        let scratch = self.scratch.get_or_insert_with(|| factory.new_encoder(MIN_CHUNK_BYTES));
        match spillway_sink_api::catch_panic(|| scratch.push_at(position, data, suffix)) {
            Ok(Err(EncodeError::Rejected { output_type, code, message })) => Some((output_type, code, message)),
            Ok(Ok(())) if scratch.held_bytes() <= MAX_SCRATCH_BYTES => None,
            // Grown, failed otherwise or panicked (the batch's encoder would have been poisoned
            // and the record set aside with its batch): start afresh next time.
            _ => {
                self.scratch = None;
                None
            }
        }
    }

    /// After a WAL record's outputs are appended to `touched`: close the batches that reached
    /// the size hint, then the oldest partitions past the partition cap (they leave early:
    /// memory stays bounded and nothing goes to the error output, where Firehose would send the
    /// record), then the largest batches while the memory budget is exceeded.
    pub fn settle(&mut self, touched: &[Route]) -> Result<Vec<ClosedBatch>, EncodeError> {
        let mut closed = Vec::new();
        for route in std::mem::take(&mut self.poisoned) {
            if self.batches.contains_key(&route) {
                closed.push(self.close(&route)?);
            }
        }
        for route in touched {
            if self.batches.get(route).is_some_and(|batch| batch.record_bytes >= self.size_bytes) {
                closed.push(self.close(route)?);
            }
        }
        for _ in self.max_partitions..self.sink_partitions {
            let Some(oldest) = self.oldest_sink_route(touched) else { break };
            closed.push(self.close(&oldest)?);
            self.early_closes.push(EarlyClose::PartitionCap);
        }
        while self.budget.exceeded() {
            let Some(largest) = self.largest_route() else { break };
            closed.push(self.close(&largest)?);
            self.early_closes.push(EarlyClose::MemoryBudget);
        }
        Ok(closed)
    }

    /// Close every batch whose interval has passed (or all of them).
    pub fn close_due(&mut self, now: Instant, all: bool) -> Result<Vec<ClosedBatch>, EncodeError> {
        let due: Vec<Route> = self
            .batches
            .iter()
            .filter(|(_, batch)| all || now >= batch.opened_at + self.interval)
            .map(|(route, _)| route.clone())
            .collect();
        due.iter().map(|route| self.close(route)).collect()
    }

    /// When the next batch's interval passes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.batches.values().map(|batch| batch.opened_at + self.interval).min()
    }

    /// The lowest sequence held by an open batch: the watermark cannot pass it.
    pub fn lowest_start(&self) -> Option<u64> {
        self.batches.values().map(|batch| batch.start).min()
    }

    /// Arrival time (Unix ms) of the oldest record held by an open batch.
    pub fn oldest_arrival_ms(&self) -> Option<i64> {
        self.batches.values().map(|batch| batch.oldest_arrival_ms).min()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn partition_count(&self) -> usize {
        self.batches.len()
    }

    pub fn take_early_closes(&mut self) -> Vec<EarlyClose> {
        std::mem::take(&mut self.early_closes)
    }

    fn close(&mut self, route: &Route) -> Result<ClosedBatch, EncodeError> {
        let Some(batch) = self.remove(route) else {
            return Err(EncodeError::Record(format!("no open batch for {route:?}")));
        };
        self.budget.update(batch.held, 0);
        let end = batch.sequences.runs().last().map_or(batch.start, |run| run.end);
        Ok(ClosedBatch {
            parts: ClosedParts {
                route: route.clone(),
                start: batch.start,
                end,
                sequences: batch.sequences,
                record_bytes: batch.record_bytes,
                oldest_arrival_ms: batch.oldest_arrival_ms,
            },
            held_bytes: if batch.poisoned.is_some() { batch.held } else { batch.encoder.held_bytes() },
            encoder: std::sync::Mutex::new(batch.encoder),
            poisoned: batch.poisoned,
        })
    }

    fn remove(&mut self, route: &Route) -> Option<OpenBatch> {
        let batch = self.batches.remove(route)?;
        if route.error_output_type.is_none() {
            self.sink_partitions -= 1;
        }
        Some(batch)
    }

    /// The sink partition opened first, other than those just written to (a partition that
    /// just opened must not be the one closed to make room for it).
    fn oldest_sink_route(&self, spare: &[Route]) -> Option<Route> {
        self.batches
            .iter()
            .filter(|(route, _)| route.error_output_type.is_none() && !spare.contains(route))
            .min_by_key(|(_, batch)| batch.opened_at)
            .map(|(route, _)| route.clone())
    }

    fn largest_route(&self) -> Option<Route> {
        self.batches.iter().max_by_key(|(_, batch)| batch.held).map(|(route, _)| route.clone())
    }

    /// Many open batches stage less each, so the staging they hold together stays a small part
    /// of the budget.
    fn chunk_bytes_hint(&self) -> usize {
        let share = self.budget.limit() / 4 / (self.batches.len() + 1);
        share.clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
    }
}

impl Drop for OpenBatches {
    fn drop(&mut self) {
        let held: usize = self.batches.values().map(|batch| batch.held).sum();
        self.budget.update(held, 0);
    }
}

#[cfg(test)]
mod tests {
    use spillway_sink_api::testkit::MemoryEncoderFactory;

    use super::*;

    fn batches(size_bytes: usize, max_partitions: usize, budget: usize) -> OpenBatches {
        OpenBatches::new(
            Arc::new(MemoryEncoderFactory),
            Arc::new(MemoryEncoderFactory),
            size_bytes,
            Duration::from_secs(60),
            max_partitions,
            MemoryBudget::new(budget),
        )
    }

    fn route(value: &str) -> Route {
        Route::sink(Arc::new(PartitionKeys::from([("k".to_string(), value.to_string())])))
    }

    #[test]
    fn a_batch_closes_at_its_size_and_keeps_its_sequences() {
        let mut open = batches(10, 10, 1 << 30);
        let now = Instant::now();
        assert!(open.push(&route("a"), 3, b"12345", b"", 100, now).unwrap().is_empty());
        assert!(open.push(&route("b"), 4, b"x", b"", 90, now).unwrap().is_empty());
        let closed = open.push(&route("a"), 5, b"67890", b"", 80, now).unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].start, closed[0].end, closed[0].record_bytes), (3, 6, 10));
        assert_eq!(closed[0].sequences.iter().collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(closed[0].oldest_arrival_ms, 80);
        assert_eq!(open.lowest_start(), Some(4));
    }

    #[test]
    fn the_partition_cap_closes_the_oldest_batch_first() {
        let mut open = batches(1 << 20, 2, 1 << 30);
        let now = Instant::now();
        open.push(&route("a"), 0, b"a", b"", 0, now).unwrap();
        open.push(&route("b"), 1, b"b", b"", 0, now + Duration::from_secs(1)).unwrap();
        let closed = open.push(&route("c"), 2, b"c", b"", 0, now + Duration::from_secs(2)).unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].route, route("a"));
        assert_eq!(open.partition_count(), 2);
        assert_eq!(open.take_early_closes(), vec![EarlyClose::PartitionCap]);
    }

    #[test]
    fn the_memory_budget_closes_the_largest_batch() {
        let budget = MemoryBudget::new(4096);
        let mut open = OpenBatches::new(
            Arc::new(MemoryEncoderFactory),
            Arc::new(MemoryEncoderFactory),
            1 << 30,
            Duration::from_secs(60),
            100,
            budget.clone(),
        );
        let now = Instant::now();
        open.push(&route("small"), 0, b"s", b"", 0, now).unwrap();
        let mut closed = Vec::new();
        for sequence in 1..100 {
            closed.extend(open.push(&route("big"), sequence, &[b'x'; 100], b"", 0, now).unwrap());
        }
        assert!(!closed.is_empty() && closed.iter().all(|batch| batch.route == route("big")));
        assert!(budget.held() <= 4096 + 1024);
        drop(open);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn intervals_close_idle_batches() {
        let mut open = batches(1 << 20, 10, 1 << 30);
        let now = Instant::now();
        open.push(&route("a"), 0, b"a", b"", 0, now).unwrap();
        open.push(&route("b"), 1, b"b", b"", 0, now + Duration::from_secs(30)).unwrap();
        assert_eq!(open.next_deadline(), Some(now + Duration::from_secs(60)));
        let closed = open.close_due(now + Duration::from_secs(61), false).unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].route, route("a"));
        assert_eq!(open.close_due(now, true).unwrap().len(), 1);
        assert!(open.is_empty());
    }
}
