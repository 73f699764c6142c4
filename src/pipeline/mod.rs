//! Delivery of one stream: read committed records back from the WAL, route each into its
//! partition's open batch (held encoded), close batches on size / interval / stop / partition cap /
//! memory budget, record each batch's intent, hand it to the sink (retries and error output in
//! [`retry`]), and move the **watermark** — the lowest sequence not yet delivered by any batch —
//! which is the checkpoint and the WAL's trim point. Batches of different partitions complete in
//! any order; a slow partition holds the watermark back but not the others' deliveries.
//!
//! CPU work (reading frames, routing, encoding) runs in [`assemble`] on the blocking pool; file
//! work (intents, checkpoint) too. This task only orchestrates. A stream with a Lambda transform
//! reads the WAL through its [`lambda_stage`] task instead, which hands back processed chunks in
//! WAL order (invocations run concurrently through the [`invoker`]).
//!
//! Must not: parse records beyond routing, or know a sink's protocol.

pub mod assemble;
pub mod intent;
pub mod invoker;
pub mod lambda_stage;
pub mod open_batch;
pub mod retry;
pub mod state;

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use spillway_sink_api::{Batch, EncodeError, EncoderFactory, Payload, RawEncoderFactory, Sink, SinkError};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::checkpoint::CheckpointError;
use crate::wal::{Wal, WalError};
pub use assemble::{
    AssembleError, Assembler, Claimed, JqPartitioner, LambdaRouting, PartitionFailure, Partitioner, Router,
};
pub use intent::{Intent, IntentError, IntentLog, IntentState};
pub use lambda_stage::{LambdaStage, StageError};
pub use open_batch::{ClosedBatch, MemoryBudget, OpenBatches, Route};
pub use retry::{Delivery, DeliveryError};
pub use state::{DeliveryState, FileState};

/// Batches written concurrently per stream (S3 PUTs are latency-bound; many partitions close at
/// once when their intervals pass).
pub const MAX_IN_FLIGHT: usize = 8;
/// Encoded bytes being written at once per stream (beyond the first batch), at least. Without a
/// bound, a large backlog with big buffers puts 8 closed batches of e.g. 10 MiB compressed each
/// in memory.
pub const MAX_IN_FLIGHT_BYTES: usize = 24 << 20;

/// The bound on encoded bytes in flight for batches of `size_bytes` when the sink wants
/// `full_batches` in flight: room for that many (with an eighth for an encoding that is larger
/// than its records, as a `_bulk` body is), and never less than [`MAX_IN_FLIGHT_BYTES`]. A sink
/// whose batches are not compressed (OpenSearch with 10 MiB batches) then keeps 4 requests in
/// flight, as a plain `_bulk` loader does; compressed S3 batches keep the default bound (the
/// memory figure of 5 GiB through 64 MiB buffers rests on it).
pub fn in_flight_bytes_cap(size_bytes: usize, full_batches: Option<usize>) -> usize {
    let wanted = full_batches
        .map_or(0, |batches| size_bytes.saturating_mul(batches).saturating_add(size_bytes.saturating_mul(batches) / 8));
    MAX_IN_FLIGHT_BYTES.max(wanted)
}
/// Most record bytes read from the WAL in one blocking step.
const READ_CHUNK_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Intent(#[from] IntentError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("lambda stage: {0}")]
    Lambda(#[from] StageError),
    #[error("the lambda stage stopped")]
    LambdaStopped,
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("setting aside the records of batch {batch} failed inside: {reason}")]
    SetAsideFailed { batch: Uuid, reason: String },
    /// The coordinator's copy of the checkpoint and intents (a shared shard in cluster mode)
    /// could not be written or read; `fenced` when another node owns the shard now.
    #[error("delivery state: {reason}")]
    State { reason: String, fenced: bool },
}

/// How a stream's batches are shaped.
#[derive(Clone)]
pub struct BatchingOptions {
    pub size_bytes: usize,
    pub interval: Duration,
    pub max_partitions: usize,
    /// The sink's [`crate::sinks::SinkConfig::full_batches_in_flight`].
    pub full_batches_in_flight: Option<usize>,
}

pub struct DeliveryLoop {
    pub stream: String,
    pub wal: Wal,
    /// The checkpoint and the intents (files, or the coordinator for a shared shard).
    pub state: Arc<dyn DeliveryState>,
    pub delivery: Arc<Delivery>,
    /// Seeds batch ids: the same (instance, stream, route, first sequence) gives the same id.
    pub instance_id: Uuid,
    pub router: Router,
    pub encoders: Arc<dyn EncoderFactory>,
    pub batching: BatchingOptions,
    pub budget: Arc<MemoryBudget>,
}

/// A batch handed to the sink, and what the loop needs when it comes back.
struct Completed {
    intent: Intent,
    result: Result<(), PipelineError>,
    /// The batch's encoded size, released from the in-flight bytes.
    payload_bytes: usize,
    /// The bytes of its records, which stop counting against the WAL limit once it left.
    record_bytes: u64,
}

/// The loop's bookkeeping of batches between "closed" and "watermark passed".
#[derive(Default)]
struct Ledger {
    /// Starts of batches recorded but not yet delivered (a multiset), with the oldest arrival
    /// time (Unix ms) among the batches of that start, for the data freshness metric.
    in_flight_starts: BTreeMap<u64, (usize, i64)>,
    /// Done intents above the watermark, removed once it passes their end.
    done: Vec<Intent>,
    /// Ends and record bytes of the batches that left above the watermark in this run: what
    /// the WAL limit no longer counts ([`Wal::delivered_ahead`]).
    delivered_ahead: Vec<(u64, u64)>,
    /// The checkpoint as stored.
    stored: u64,
}

impl Ledger {
    fn delivered_ahead_bytes(&self) -> u64 {
        self.delivered_ahead.iter().map(|(_, bytes)| bytes).sum()
    }

    fn add_in_flight(&mut self, start: u64, oldest_arrival_ms: i64) {
        let (count, oldest) = self.in_flight_starts.entry(start).or_insert((0, oldest_arrival_ms));
        *count += 1;
        *oldest = (*oldest).min(oldest_arrival_ms);
    }

    fn remove_in_flight(&mut self, start: u64) {
        if let Some((count, _)) = self.in_flight_starts.get_mut(&start) {
            *count -= 1;
            if *count == 0 {
                self.in_flight_starts.remove(&start);
            }
        }
    }

    fn oldest_in_flight_arrival_ms(&self) -> Option<i64> {
        self.in_flight_starts.values().map(|(_, oldest)| *oldest).min()
    }

    fn lowest_in_flight(&self) -> Option<u64> {
        self.in_flight_starts.keys().next().copied()
    }
}

impl DeliveryLoop {
    /// Run until `stop` turns true and every committed record is delivered.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), PipelineError> {
        let (stored, recorded) = self.state.load().await?;

        let mut ledger = Ledger { stored, ..Ledger::default() };
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Completed>> = FuturesUnordered::new();
        let mut in_flight_bytes: usize = 0;
        let mut stale = Vec::new();
        let mut claimed = Vec::new();
        for intent in recorded {
            if intent.end <= stored {
                stale.push(intent);
                continue;
            }
            claimed.push((intent.route(), intent.start..intent.end));
            match intent.state {
                IntentState::Done => ledger.done.push(intent),
                IntentState::Pending => {
                    // A shared shard's next owner (cluster mode) starts with an empty WAL that
                    // its reader fills again: the batch is rebuilt once its records are back.
                    if !self.wait_committed(intent.end, &mut stop).await {
                        return Ok(());
                    }
                    let closed = self.rebuild(&intent).await?;
                    tracing::info!(stream = %self.stream, batch = %intent.id, start = intent.start, end = intent.end, records = closed.sequences.len(), "re-sending a batch recorded before a restart");
                    ledger.add_in_flight(intent.start, closed.oldest_arrival_ms);
                    in_flight_bytes += closed.held_bytes;
                    in_flight.push(self.send(intent, closed));
                }
            }
        }
        self.state.forget(stale).await?;

        let open = OpenBatches::new(
            self.encoders.clone(),
            Arc::new(RawEncoderFactory { compression: spillway_sink_api::Compression::None }),
            self.batching.size_bytes,
            self.batching.interval,
            self.batching.max_partitions,
            self.budget.clone(),
        );
        // The assembler reads the WAL itself unless a Lambda stage does (then that one is the
        // stream's delivery reader).
        let reader =
            if self.router.lambda.is_some() { self.wal.reader(stored) } else { self.wal.delivery_reader(stored) };
        let mut assembler = Some(Assembler::new(reader, open, self.router.clone(), Claimed::new(claimed)));
        // With a Lambda transform, its stage reads the WAL and hands processed chunks back in order.
        let mut lambda_stage = match &self.router.lambda {
            Some(lambda) => {
                let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel(2);
                let task = tokio::spawn(lambda.stage.clone().run(self.wal.clone(), stored, chunks_tx, stop.clone()));
                Some((chunks_rx, AbortOnDrop(task)))
            }
            None => None,
        };
        let mut committed_rx = self.wal.committed();
        let mut closed_queue: VecDeque<ClosedBatch> = VecDeque::new();
        let mut stopping = *stop.borrow();
        let recovery_started = Instant::now();
        let mut backlog_end = Some(*committed_rx.borrow()).filter(|&end| end > stored);

        loop {
            let committed = *committed_rx.borrow_and_update();
            let (position, has_open, deadline) = match assembler.as_ref() {
                Some(current) => (current.position(), current.has_open_batches(), current.next_deadline()),
                None => return Err(WalError::Closed.into()),
            };
            let caught_up = position >= committed;

            // Hand closed batches to the sink while there is room in flight.
            if self.dispatch(&mut closed_queue, &mut in_flight, &mut in_flight_bytes, &mut ledger).await? {
                continue;
            }

            // Read on while nothing waits for a slot (back-pressure: closed batches hold memory).
            if lambda_stage.is_none() && !caught_up && closed_queue.is_empty() {
                let mut taken = assembler.take().ok_or(WalError::Closed)?;
                let (returned, closed) = tokio::task::spawn_blocking(move || {
                    let closed = taken.fill(committed, READ_CHUNK_BYTES);
                    (taken, closed)
                })
                .await?;
                let returned = assembler.insert(returned);
                closed_queue.extend(closed?);
                self.note_early_closes(returned);
                self.advance_watermark(&mut ledger, returned, &closed_queue).await?;
                continue;
            }

            if stopping && caught_up && has_open {
                let closed = self.close_due(&mut assembler, Instant::now(), true).await?;
                closed_queue.extend(closed);
                continue;
            }
            if stopping && caught_up && !has_open && closed_queue.is_empty() && in_flight.is_empty() {
                return Ok(());
            }

            tokio::select! {
                chunk = next_chunk(&mut lambda_stage), if lambda_stage.is_some() && closed_queue.is_empty() => {
                    let Some(chunk) = chunk else {
                        return Err(lambda_stage_end(lambda_stage.take()).await);
                    };
                    let mut taken = assembler.take().ok_or(WalError::Closed)?;
                    let (returned, closed) = tokio::task::spawn_blocking(move || {
                        let closed = taken.feed_chunk(&chunk);
                        (taken, closed)
                    })
                    .await?;
                    let returned = assembler.insert(returned);
                    closed_queue.extend(closed?);
                    self.note_early_closes(returned);
                    self.advance_watermark(&mut ledger, returned, &closed_queue).await?;
                }
                Some(completed) = in_flight.next(), if !in_flight.is_empty() => {
                    completed.result?;
                    in_flight_bytes = in_flight_bytes.saturating_sub(completed.payload_bytes);
                    let intent = completed.intent;
                    ledger.remove_in_flight(intent.start);
                    ledger.delivered_ahead.push((intent.end, completed.record_bytes));
                    // The next batch goes first: the sink (a database connection) would otherwise
                    // idle through the checkpoint's and intents' fsyncs below.
                    self.dispatch(&mut closed_queue, &mut in_flight, &mut in_flight_bytes, &mut ledger).await?;
                    let current = assembler.as_mut().ok_or(WalError::Closed)?;
                    self.finish(&mut ledger, current, &closed_queue, intent).await?;
                    // The watermark passing the backlog's end means all of it left, whichever
                    // batch completed last.
                    if backlog_end.is_some_and(|backlog| ledger.stored >= backlog) {
                        backlog_end = None;
                        tracing::info!(stream = %self.stream, recovery_ms = recovery_started.elapsed().as_millis() as u64, "records left in the wal by the last run are delivered");
                    }
                }
                changed = committed_rx.changed(), if caught_up && !stopping => {
                    if changed.is_err() {
                        stopping = true;
                    }
                }
                () = sleep_until_option(deadline), if deadline.is_some() && closed_queue.is_empty() => {
                    let closed = self.close_due(&mut assembler, Instant::now(), false).await?;
                    closed_queue.extend(closed);
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                }
            }
        }
    }

    /// Wait until the WAL holds every sequence below `end`; false when asked to stop first (or
    /// the WAL closed).
    async fn wait_committed(&self, end: u64, stop: &mut watch::Receiver<bool>) -> bool {
        let mut committed = self.wal.committed();
        loop {
            if *committed.borrow_and_update() >= end {
                return true;
            }
            if *stop.borrow() {
                return false;
            }
            tokio::select! {
                changed = committed.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                _ = stop.changed() => return false,
            }
        }
    }

    /// Hand queued closed batches to the sink while there is room in flight (count and bytes;
    /// the first batch always goes, however large), each after its intent is recorded. Returns
    /// whether any batch was sent.
    async fn dispatch(
        &self,
        queue: &mut VecDeque<ClosedBatch>,
        in_flight: &mut FuturesUnordered<BoxFuture<'static, Completed>>,
        in_flight_bytes: &mut usize,
        ledger: &mut Ledger,
    ) -> Result<bool, PipelineError> {
        let cap = in_flight_bytes_cap(self.batching.size_bytes, self.batching.full_batches_in_flight);
        let mut ready = Vec::new();
        let mut ready_bytes = *in_flight_bytes;
        while in_flight.len() + ready.len() < MAX_IN_FLIGHT
            && let Some(next) = queue.front()
            && (in_flight.is_empty() && ready.is_empty() || ready_bytes + next.held_bytes <= cap)
        {
            ready_bytes += next.held_bytes;
            ready.extend(queue.pop_front());
        }
        if ready.is_empty() {
            return Ok(false);
        }
        *in_flight_bytes = ready_bytes;
        for (intent, closed) in self.record_intents(ready).await? {
            ledger.add_in_flight(intent.start, closed.oldest_arrival_ms);
            in_flight.push(self.send(intent, closed));
        }
        Ok(true)
    }

    async fn close_due(
        &self,
        assembler: &mut Option<Assembler>,
        now: Instant,
        all: bool,
    ) -> Result<Vec<ClosedBatch>, PipelineError> {
        let mut taken = assembler.take().ok_or(WalError::Closed)?;
        let (returned, closed) = tokio::task::spawn_blocking(move || {
            let closed = taken.close_due(now, all);
            (taken, closed)
        })
        .await?;
        *assembler = Some(returned);
        Ok(closed?)
    }

    /// Record the intents of closed batches (one blocking call for all: a burst of partitions
    /// closing together shares the fsyncs' latency).
    async fn record_intents(&self, ready: Vec<ClosedBatch>) -> Result<Vec<(Intent, ClosedBatch)>, PipelineError> {
        let prepared: Vec<(Intent, ClosedBatch)> = ready
            .into_iter()
            .map(|closed| {
                let mut intent = Intent::new(&self.instance_id, &self.stream, &closed.route, closed.start, closed.end);
                intent.oldest_arrival_ms = Some(closed.oldest_arrival_ms).filter(|&arrival_ms| arrival_ms > 0);
                (intent, closed)
            })
            .collect();
        self.state.record(prepared.iter().map(|(intent, _)| intent.clone()).collect()).await?;
        Ok(prepared)
    }

    /// Finish the batch's encoder (on the blocking pool), then deliver it under its intent's id.
    ///
    /// The last line against a bug: a batch whose encoder failed or panicked, or whose delivery
    /// panicked, is not retried and does not stop the stream; its records are set aside in the
    /// error output with the reason ("internal error: …", [`INTERNAL_ERROR`]), as a batch the
    /// sink refused for good is. A rebuild after a crash fails the same way and sets the same
    /// records aside again.
    ///
    /// The delivery runs as a task of its own: a request moves on (its response read, the next
    /// request of the batch sent) while this loop waits on the WAL or on an fsync, instead of
    /// only when the loop polls it. Dropping the returned future (the loop stopping) aborts it.
    fn send(&self, intent: Intent, closed: ClosedBatch) -> BoxFuture<'static, Completed> {
        let delivery = self.delivery.clone();
        let stream = self.stream.clone();
        let payload_bytes = closed.held_bytes;
        let task = AbortOnDrop(tokio::spawn(Self::deliver_closed(delivery, stream, intent.clone(), closed)));
        Box::pin(async move {
            match task.join().await {
                Ok(completed) => completed,
                // Only a panic outside `deliver`'s own guard (or a runtime shutting down) lands here.
                Err(join) => {
                    Completed { intent, result: Err(PipelineError::Join(join)), payload_bytes, record_bytes: 0 }
                }
            }
        })
    }

    async fn deliver_closed(delivery: Arc<Delivery>, stream: String, intent: Intent, closed: ClosedBatch) -> Completed {
        let payload_bytes = closed.held_bytes;
        let mut record_bytes = 0;
        let result = async {
            let (parts, finished) = tokio::task::spawn_blocking(move || closed.finish()).await?;
            record_bytes = parts.record_bytes as u64;
            let mut batch = Batch {
                stream,
                id: intent.id,
                partition: parts.route.partition.as_ref().clone(),
                start: parts.start,
                end: parts.end,
                sequences: parts.sequences,
                record_bytes: parts.record_bytes,
                // The recorded time: a batch re-read by another node (cluster mode) has its
                // records' arrival on that node's clock, but keeps its object key.
                oldest_arrival_ms: intent.oldest_arrival_ms.unwrap_or(parts.oldest_arrival_ms),
                payload: Payload::default(),
            };
            let error_output_type = intent.error_output_type.as_deref();
            let reason = match finished {
                Ok(payload) => {
                    batch.payload = payload;
                    let delivered = AssertUnwindSafe(delivery.deliver(&batch, error_output_type)).catch_unwind().await;
                    match delivered {
                        Ok(result) => return result.map_err(PipelineError::from),
                        Err(panic) => format!(
                            "internal error: delivering the batch panicked: {}",
                            spillway_sink_api::panic::panic_message(panic.as_ref())
                        ),
                    }
                }
                Err(EncodeError::Internal(reason)) => format!("internal error: {reason}"),
                Err(error) => format!("internal error: cannot encode the batch: {error}"),
            };
            batch.payload = Payload::default();
            set_aside(&delivery, &batch, error_output_type, reason).await
        }
        .await;
        Completed { intent, result, payload_bytes, record_bytes }
    }

    /// Rebuild a pending intent's batch from the WAL, under its recorded id. With a Lambda
    /// transform, the range's records are sent to the function again.
    async fn rebuild(&self, intent: &Intent) -> Result<ClosedBatch, PipelineError> {
        let chunks = match &self.router.lambda {
            Some(lambda) => {
                // A sink batch's records were answered by the function: wait for an answer again.
                let until_answered =
                    intent.error_output_type.as_deref() != Some(crate::processing::PROCESSING_FAILED_OUTPUT_TYPE);
                Some(lambda.stage.process_range(&self.wal, intent.start, intent.end, until_answered).await?)
            }
            None => None,
        };
        let reader = self.wal.reader(intent.start);
        let router = self.router.clone();
        let route = intent.route();
        let end = intent.end;
        // No size hint, cap or budget: the rebuilt batch is exactly the recorded range.
        let open = OpenBatches::new(
            self.encoders.clone(),
            Arc::new(RawEncoderFactory { compression: spillway_sink_api::Compression::None }),
            usize::MAX,
            Duration::from_secs(u64::MAX / 4),
            usize::MAX,
            MemoryBudget::new(usize::MAX),
        );
        let closed = tokio::task::spawn_blocking(move || match chunks {
            Some(chunks) => assemble::rebuild_processed(&chunks, &router, open, &route),
            None => assemble::rebuild(reader, &router, open, &route, end),
        })
        .await??;
        // No record of the range maps to the route any more (cannot happen with deterministic
        // routing): an empty batch, which sinks write as nothing.
        Ok(closed.unwrap_or_else(|| ClosedBatch {
            parts: open_batch::ClosedParts {
                route: intent.route(),
                start: intent.start,
                end: intent.end,
                sequences: Default::default(),
                record_bytes: 0,
                oldest_arrival_ms: 0,
            },
            encoder: std::sync::Mutex::new(self.encoders.new_encoder(spillway_sink_api::encode::DEFAULT_CHUNK_BYTES)),
            held_bytes: 0,
            poisoned: None,
        }))
    }

    /// A batch left: mark its intent done (or drop it when the watermark passes it at once),
    /// then move the watermark.
    async fn finish(
        &self,
        ledger: &mut Ledger,
        assembler: &mut Assembler,
        queue: &VecDeque<ClosedBatch>,
        mut intent: Intent,
    ) -> Result<(), PipelineError> {
        let watermark = self.watermark(ledger, assembler, queue);
        if watermark < intent.end {
            // Records of other batches below it are still on their way: remember that this one
            // left, so a restart skips its records instead of sending them again.
            intent.state = IntentState::Done;
            self.state.record(vec![intent.clone()]).await?;
        }
        ledger.done.push(intent);
        if !self.advance_watermark(ledger, assembler, queue).await? {
            // What left above the watermark stops counting against the WAL limit at once, while
            // the watermark (the trim point) waits for an older batch.
            self.wal.delivered_ahead(ledger.delivered_ahead_bytes());
        }
        Ok(())
    }

    /// The lowest sequence not yet delivered: nothing below it is unread, open, queued or in flight.
    fn watermark(&self, ledger: &Ledger, assembler: &Assembler, queue: &VecDeque<ClosedBatch>) -> u64 {
        let mut watermark = assembler.position();
        for candidate in
            [assembler.lowest_open_start(), ledger.lowest_in_flight(), queue.iter().map(|closed| closed.start).min()]
                .into_iter()
                .flatten()
        {
            watermark = watermark.min(candidate);
        }
        watermark
    }

    /// Store the watermark as the checkpoint when it moved, drop intents below it, trim the WAL;
    /// whether it moved.
    async fn advance_watermark(
        &self,
        ledger: &mut Ledger,
        assembler: &mut Assembler,
        queue: &VecDeque<ClosedBatch>,
    ) -> Result<bool, PipelineError> {
        self.note_freshness(ledger, assembler, queue);
        let watermark = self.watermark(ledger, assembler, queue);
        if watermark <= ledger.stored {
            return Ok(false);
        }
        let passed: Vec<Intent> = {
            let (passed, kept) =
                std::mem::take(&mut ledger.done).into_iter().partition(|intent| intent.end <= watermark);
            ledger.done = kept;
            passed
        };
        self.state.advance(watermark, passed).await?;
        ledger.stored = watermark;
        assembler.release_claims_below(watermark);
        // The smaller figure before the trim, so the WAL never counts less than is undelivered.
        ledger.delivered_ahead.retain(|(end, _)| *end > watermark);
        self.wal.delivered_ahead(ledger.delivered_ahead_bytes());
        self.wal.trim(watermark);
        Ok(true)
    }

    /// Update the data freshness and open partition gauges: the oldest arrival among the
    /// records held open, queued or in flight (records still unread in the WAL arrived later,
    /// as the WAL is in arrival order). Called where the watermark may move: after reading and
    /// after a delivery.
    fn note_freshness(&self, ledger: &Ledger, assembler: &Assembler, queue: &VecDeque<ClosedBatch>) {
        let oldest = [
            assembler.oldest_open_arrival_ms(),
            queue.iter().map(|closed| closed.oldest_arrival_ms).min(),
            ledger.oldest_in_flight_arrival_ms(),
        ]
        .into_iter()
        .flatten()
        // A rebuilt batch whose records are all gone carries 0.
        .filter(|&arrival_ms| arrival_ms > 0)
        .min();
        let metrics = &self.delivery.metrics;
        metrics.set_oldest_undelivered(oldest);
        metrics.open_partitions.set(assembler.partition_count() as i64);
    }

    fn note_early_closes(&self, assembler: &mut Assembler) {
        for reason in assembler.take_early_closes() {
            tracing::debug!(stream = %self.stream, ?reason, partitions = assembler.partition_count(), "closed a batch early");
            if reason == open_batch::EarlyClose::PartitionCap {
                self.delivery.metrics.partition_count_exceeded.inc();
            }
        }
    }
}

/// Send every record of `batch` to the error output with `reason` under the sink's failure
/// output type, instead of to the sink: the delivery path a batch the sink refused for good
/// takes (records read back from the WAL, the error objects keyed by the batch's id, so a
/// replay writes the same ones), with a sink that refuses every write.
async fn set_aside(
    delivery: &Delivery,
    batch: &Batch,
    error_output_type: Option<&str>,
    reason: String,
) -> Result<(), PipelineError> {
    tracing::error!(stream = %batch.stream, batch = %batch.id, start = batch.start, end = batch.end, records = batch.record_count(), %reason, "a batch failed inside; its records go to the error output");
    if error_output_type.is_some() {
        // A batch of error records has no records of the sink to set aside: they stay in the WAL.
        return Err(PipelineError::SetAsideFailed { batch: batch.id, reason });
    }
    let refusing = Delivery {
        sink: Arc::new(RefuseAll { message: reason.clone() }),
        error_output: delivery.error_output.clone(),
        failure_output_type: delivery.failure_output_type,
        recovery: delivery.recovery.clone(),
        retry_duration: delivery.retry_duration,
        metrics: delivery.metrics.clone(),
        wal: delivery.wal.clone(),
        encoders: delivery.encoders.clone(),
        router: delivery.router.clone(),
    };
    match AssertUnwindSafe(refusing.deliver(batch, None)).catch_unwind().await {
        Ok(result) => Ok(result?),
        Err(panic) => Err(PipelineError::SetAsideFailed {
            batch: batch.id,
            reason: format!("{reason}; then: {}", spillway_sink_api::panic::panic_message(panic.as_ref())),
        }),
    }
}

/// `errorCode` of records set aside because a batch failed inside spillway.
pub const INTERNAL_ERROR: &str = crate::processing::transform::INTERNAL_ERROR;

/// The sink of [`set_aside`]: refuses every batch for good, with the reason.
struct RefuseAll {
    message: String,
}

#[async_trait::async_trait]
impl Sink for RefuseAll {
    async fn write(&self, _batch: &Batch) -> Result<(), SinkError> {
        Err(SinkError::permanent(INTERNAL_ERROR, self.message.clone()))
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A spawned task aborted when its owner goes away (the Lambda stage, a batch's delivery, of a
/// stopped loop; a replicated WAL's uploads).
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    pub(crate) async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type LambdaStageHandle =
    (tokio::sync::mpsc::Receiver<lambda_stage::ProcessedChunk>, AbortOnDrop<Result<(), StageError>>);

async fn next_chunk(stage: &mut Option<LambdaStageHandle>) -> Option<lambda_stage::ProcessedChunk> {
    match stage {
        Some((chunks, _)) => chunks.recv().await,
        None => std::future::pending().await,
    }
}

/// Why the Lambda stage stopped sending chunks.
async fn lambda_stage_end(stage: Option<LambdaStageHandle>) -> PipelineError {
    let Some((_, mut task)) = stage else { return PipelineError::LambdaStopped };
    match (&mut task.0).await {
        Ok(Err(error)) => PipelineError::Lambda(error),
        Ok(Ok(())) => PipelineError::LambdaStopped,
        Err(join) => PipelineError::Join(join),
    }
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
