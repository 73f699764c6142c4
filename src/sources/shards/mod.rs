//! The shard-reader core every shard-based pull source shares (`kinesis`, `dynamodb_streams`):
//! discovery, lineage, positions, the per-shard read loop, backoff and back-pressure. A source is
//! a thin adapter implementing [`ShardApi`] (list shards, get an iterator, get records) over its
//! own SDK; everything that decides *what* is read and *when a position moves* lives here, once.
//!
//! - **Discovery**: [`ShardApi::list_shards`] at start and every `discovery_interval` (resharding,
//!   DynamoDB's shard roll-over).
//! - **Lineage**: a shard is read only once its parents are finished, i.e. read to the end of the
//!   closed shard (no next iterator); a parent no longer listed (expired) counts as finished. So
//!   per key, the WAL holds records in the order they were written, across splits and merges.
//! - **Positions** (the WAL's shard → position map, key `<kind>:<shard id>`): `seq:<n>` after a
//!   record (resume `AFTER_SEQUENCE_NUMBER`), `at:<epoch ms>` when a shard was started at `LATEST`
//!   and nothing was read yet (resume at that time, so a restart does not skip what arrived while
//!   down), `closed:<n>` once a closed shard is read to its end. A position moves only with a
//!   durable frame, so a restart neither skips nor repeats.
//!
//! The per-shard loop lives in [`reader`].
//!
//! Must not: know any one service's API (that is the adapter's), buffer more than one response per
//! shard, or move a position before the WAL append that carries it.

pub(crate) mod reader;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::{ShardMetrics, StreamMetrics};
use crate::wal::Wal;

#[cfg(any(feature = "source-kinesis", feature = "source-dynamodb-streams"))]
pub use reader::classify;
pub use reader::{Backoff, ReadError};

/// A shard's cursor as the WAL keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Position {
    /// After this record: resume `AFTER_SEQUENCE_NUMBER`.
    After(String),
    /// Started at `LATEST` at this time (epoch ms), nothing read yet: resume at that time.
    StartedAt(i64),
    /// A closed shard read to its end (its last record's sequence number, or empty).
    Closed(String),
}

impl Position {
    pub(crate) fn parse(text: &str) -> Option<Position> {
        let (kind, value) = text.split_once(':')?;
        match kind {
            "seq" if !value.is_empty() => Some(Position::After(value.to_string())),
            "at" => value.parse().ok().map(Position::StartedAt),
            "closed" => Some(Position::Closed(value.to_string())),
            _ => None,
        }
    }

    pub(crate) fn render(&self) -> String {
        match self {
            Position::After(sequence) => format!("seq:{sequence}"),
            Position::StartedAt(ms) => format!("at:{ms}"),
            Position::Closed(sequence) => format!("closed:{sequence}"),
        }
    }
}

/// Where a shard reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    TrimHorizon,
    /// `LATEST`, recorded in the WAL as started at this time before the first read.
    Latest,
    /// Records that arrived at or after this time (epoch ms).
    AtTimestamp(i64),
    After(String),
}

/// How a source serves [`Start::AtTimestamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampStarts {
    /// The service has an `AT_TIMESTAMP` iterator (Kinesis).
    Native,
    /// It has none (DynamoDB Streams): the adapter starts at `TRIM_HORIZON` and the reader skips
    /// records created before the time, compared at this granularity (DynamoDB rounds a record's
    /// `ApproximateCreationDateTime` down to the second, so the time is rounded down too: records
    /// of the start's own second are kept rather than risk skipping one).
    FromTrimHorizon { granularity_ms: i64 },
}

/// `starting_position`, for a shard the WAL holds no position for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    TrimHorizon,
    Latest,
    AtTimestamp(i64),
}

/// One shard as the source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// `ParentShardId` and (Kinesis merges) `AdjacentParentShardId`.
    pub parents: Vec<String>,
    /// The shard has an ending sequence number: no records will be added.
    pub closed: bool,
}

/// One user record: what goes into the WAL, with optional per-record metadata
/// ([`crate::wal::Frame::metadata`]); a source gives metadata for every record or for none.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub data: Bytes,
    pub metadata: Option<Bytes>,
}

/// One record of the service (a Kinesis record, a DynamoDB stream record): the unit positions
/// are kept in. A KPL aggregate holds several user records; frames never split one.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub sequence_number: String,
    /// When the service says it was created/arrived (epoch ms), for
    /// [`TimestampStarts::FromTrimHorizon`].
    pub created_ms: Option<i64>,
    pub users: Vec<UserRecord>,
}

/// One `GetRecords` response, converted.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<SourceRecord>,
    /// Absent on a closed shard read to its end.
    pub next_iterator: Option<String>,
    /// How far behind the tip the shard is (Kinesis `MillisBehindLatest`, or the age of the last
    /// record where the service reports none); `Some(0)` also tells the reader it is caught up.
    pub millis_behind_latest: Option<i64>,
}

/// What a shard-based service must offer the core: the thin adapter of one source type.
#[async_trait::async_trait]
pub trait ShardApi: Send + Sync + 'static {
    /// The source type (`kinesis`, `dynamodb_streams`): logs, and the WAL position key prefix.
    fn kind(&self) -> &'static str;
    /// The stream read, as logs name it.
    fn display_name(&self) -> String;
    fn timestamp_starts(&self) -> TimestampStarts;
    /// Every shard of the stream (open and closed), by id.
    async fn list_shards(&self) -> Result<BTreeMap<String, ShardInfo>, ReadError>;
    /// A new iterator at `start`; `None` when the shard has nothing left to be read. With
    /// [`TimestampStarts::FromTrimHorizon`], `AtTimestamp` is asked for as `TRIM_HORIZON`.
    async fn shard_iterator(&self, shard_id: &str, start: &Start) -> Result<Option<String>, ReadError>;
    /// One `GetRecords` call of at most `limit` records.
    async fn get_records(
        &self,
        shard_id: &str,
        iterator: &str,
        limit: i32,
        metrics: &ShardMetrics,
    ) -> Result<Fetched, ReadError>;
    /// Cluster mode: every record of the shard up to and including `sequence` is delivered. A
    /// source that reports progress to its service (Kafka's `commit_offsets_to_group`) does it
    /// here, without blocking; the WAL and the coordinator stay the truth.
    fn delivered(&self, _shard_id: &str, _sequence: &str) {}
}

/// The reading options every shard source has, as its config holds them.
pub struct ReadingOptions<'a> {
    pub endpoint: Option<&'a str>,
    pub poll_interval_ms: u64,
    pub max_records_per_call: i32,
    /// The API's own per-call maximum (`GetRecords`' `Limit`).
    pub max_records_limit: i32,
    pub max_concurrent_reads: usize,
    pub shard_discovery_interval_ms: u64,
}

impl ReadingOptions<'_> {
    /// Problems as (field under `source`, message). Pure.
    pub fn validate(&self, problems: &mut Vec<(String, String)>) {
        let mut problem = |field: &str, message: String| problems.push((field.to_string(), message));
        if let Some(endpoint) = self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problem("endpoint", format!("must be an http:// or https:// URL (got {endpoint:?})"));
        }
        if !(200..=60_000).contains(&self.poll_interval_ms) {
            problem("poll_interval_ms", format!("must be 200-60000 (got {})", self.poll_interval_ms));
        }
        if !(1..=self.max_records_limit).contains(&self.max_records_per_call) {
            problem(
                "max_records_per_call",
                format!("must be 1-{} (got {})", self.max_records_limit, self.max_records_per_call),
            );
        }
        if !(1..=1024).contains(&self.max_concurrent_reads) {
            problem("max_concurrent_reads", format!("must be 1-1024 (got {})", self.max_concurrent_reads));
        }
        if !(100..=3_600_000).contains(&self.shard_discovery_interval_ms) {
            problem(
                "shard_discovery_interval_ms",
                format!("must be 100-3600000 (got {})", self.shard_discovery_interval_ms),
            );
        }
    }
}

/// The reading settings every shard source has (from its YAML block).
#[derive(Debug, Clone)]
pub struct Settings {
    pub initial: Initial,
    /// Pause between calls on a shard that is caught up.
    pub poll_interval: Duration,
    /// `Limit` of one `GetRecords` call.
    pub max_records_per_call: i32,
    pub discovery_interval: Duration,
    /// `GetRecords` responses held at once across the stream's shards (the memory bound).
    pub max_concurrent_reads: usize,
}

/// How to start `shard`, which has no WAL position, or `None` when it is to be skipped (a closed
/// shard when starting at `LATEST`). With `LATEST`, a shard whose parent was read (in this run or
/// before, as its position shows) is a reshard's child created after reading began: it is read
/// from its start, so nothing is skipped. With `AT_TIMESTAMP` every shard, children included,
/// starts at the timestamp (a child created before it holds nothing older that is wanted).
pub(crate) fn start_without_position(
    initial: Initial,
    info: &ShardInfo,
    positions: &BTreeMap<String, Position>,
    started: &BTreeSet<String>,
) -> Option<Start> {
    match initial {
        Initial::TrimHorizon => Some(Start::TrimHorizon),
        Initial::AtTimestamp(ms) => Some(Start::AtTimestamp(ms)),
        Initial::Latest => {
            let parent_was_read =
                info.parents.iter().any(|parent| started.contains(parent) || positions.contains_key(parent.as_str()));
            if parent_was_read {
                Some(Start::TrimHorizon)
            } else if info.closed {
                None
            } else {
                Some(Start::Latest)
            }
        }
    }
}

/// The shards to start now: not finished, not started, parents finished (or no longer listed).
/// Shards that are to be skipped (closed, at `LATEST`) are added to `finished`.
pub(crate) fn shards_to_start(
    initial: Initial,
    shards: &BTreeMap<String, ShardInfo>,
    positions: &BTreeMap<String, Position>,
    started: &BTreeSet<String>,
    finished: &mut BTreeSet<String>,
) -> Vec<(String, Start)> {
    let mut starts = Vec::new();
    for (shard_id, info) in shards {
        if finished.contains(shard_id) || started.contains(shard_id) {
            continue;
        }
        if let Some(Position::Closed(_)) = positions.get(shard_id) {
            finished.insert(shard_id.clone());
            continue;
        }
        let parents_done = info.parents.iter().all(|parent| finished.contains(parent) || !shards.contains_key(parent));
        if !parents_done {
            continue;
        }
        let start = match positions.get(shard_id) {
            Some(Position::After(sequence)) => Start::After(sequence.clone()),
            Some(Position::StartedAt(ms)) => Start::AtTimestamp(*ms),
            Some(Position::Closed(_)) => continue,
            None => match start_without_position(initial, info, positions, started) {
                Some(start) => start,
                None => {
                    finished.insert(shard_id.clone());
                    continue;
                }
            },
        };
        starts.push((shard_id.clone(), start));
    }
    starts
}

/// The shared parts every shard reader of one source uses.
pub(crate) struct Context {
    pub stream: String,
    pub api: Arc<dyn ShardApi>,
    pub settings: Settings,
    pub wal: Wal,
    pub metrics: Arc<StreamMetrics>,
    /// Permits for `GetRecords` responses in memory (`max_concurrent_reads`).
    pub reads: Arc<tokio::sync::Semaphore>,
    /// Cluster mode: where each durable frame ends and the shard position after it.
    pub boundaries: Option<Arc<Boundaries>>,
}

/// A shard source nodes share in cluster mode: its adapter and reading settings
/// (see [`crate::sources::SourceDescriptor::shard_source`]).
pub struct SharedShardSource {
    pub api: Arc<dyn ShardApi>,
    pub settings: Settings,
}

/// The frame boundaries of one shard's WAL not yet below the checkpoint: (sequence after the
/// frame, the shard's position after it). A shared shard's resume point is the highest one at or
/// below the checkpoint: re-reading from that position gives the records the same sequences.
#[derive(Debug, Default)]
pub struct Boundaries {
    entries: std::sync::Mutex<std::collections::VecDeque<(u64, String)>>,
}

impl Boundaries {
    fn push(&self, end: u64, position: String) {
        self.lock().push_back((end, position));
    }

    /// The highest boundary at or below `sequence`, forgetting it and every one before it.
    pub fn take_at_or_below(&self, sequence: u64) -> Option<(u64, String)> {
        let mut entries = self.lock();
        let mut found = None;
        while entries.front().is_some_and(|(end, _)| *end <= sequence) {
            found = entries.pop_front();
        }
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, String)>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How a shard's reading ended, for a caller that reads one shard (cluster mode).
pub use reader::Outcome;

/// Where one shard read on its own (cluster mode) goes.
pub struct ShardTarget {
    pub stream: String,
    pub wal: Wal,
    pub metrics: Arc<StreamMetrics>,
    /// Told every durable frame's end and position.
    pub boundaries: Arc<Boundaries>,
}

/// Cluster mode: read one shard into the target's WAL from `start` until it is finished or `stop`.
pub(crate) async fn read_one_shard(
    source: &SharedShardSource,
    target: ShardTarget,
    shard_id: &str,
    start: Start,
    stop: watch::Receiver<bool>,
) -> Outcome {
    let context = Context {
        stream: target.stream,
        api: source.api.clone(),
        settings: source.settings.clone(),
        wal: target.wal,
        metrics: target.metrics,
        reads: Arc::new(tokio::sync::Semaphore::new(source.settings.max_concurrent_reads)),
        boundaries: Some(target.boundaries),
    };
    reader::read_shard(&context, shard_id, start, stop).await
}

impl Context {
    /// The WAL position key of a shard.
    pub(crate) fn position_key(&self, shard_id: &str) -> String {
        format!("{}:{shard_id}", self.api.kind())
    }
}

/// Read the source's shards until `stop`, appending to `wal`. Errors are logged and retried; the
/// task ends only when asked to, after its shard readers.
pub async fn run(
    stream: String,
    api: Arc<dyn ShardApi>,
    settings: Settings,
    wal: Wal,
    metrics: Arc<StreamMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let kind = api.kind();
    let source = api.display_name();
    let reads = Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent_reads));
    let discovery = settings.discovery_interval;
    let context =
        Arc::new(Context { stream: stream.clone(), api, settings, wal: wal.clone(), metrics, reads, boundaries: None });
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut readers: JoinSet<(String, reader::Outcome)> = JoinSet::new();
    // Reader task id → shard, to restart the shard of a reader that panicked.
    let mut reader_shards: BTreeMap<tokio::task::Id, String> = BTreeMap::new();
    let mut shards: BTreeMap<String, ShardInfo> = BTreeMap::new();
    let mut backoff = Backoff::new();
    let mut next_discovery = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            break;
        }
        if tokio::time::Instant::now() >= next_discovery {
            let Some(listed) = reader::unless_stopped(context.api.list_shards(), &mut stop).await else { break };
            match listed {
                Ok(listed) => {
                    backoff.reset();
                    shards = listed;
                    next_discovery = tokio::time::Instant::now() + discovery;
                    for shard_id in expired_shards(&shards, &wal_positions(&stream, kind, &wal)) {
                        // Nothing to resume there any more; a failed append is retried next round.
                        if let Err(error) = wal.forget_position(context.position_key(&shard_id)).await {
                            tracing::warn!(stream = %stream, shard = %shard_id, %error, "cannot forget an expired {kind} shard's position");
                            continue;
                        }
                        tracing::debug!(stream = %stream, shard = %shard_id, "expired {kind} shard's position forgotten");
                        finished.remove(&shard_id);
                        started.remove(&shard_id);
                    }
                }
                Err(error) => {
                    let wait = backoff.next_delay();
                    let retry_in_ms = wait.as_millis() as u64;
                    match error {
                        ReadError::NotFound(_) | ReadError::NeedsOperator(_) => {
                            tracing::error!(stream = %stream, source = %source, %error, retry_in_ms, "cannot list {kind} shards; retrying")
                        }
                        _ => {
                            tracing::warn!(stream = %stream, source = %source, %error, retry_in_ms, "cannot list {kind} shards; retrying")
                        }
                    }
                    next_discovery = tokio::time::Instant::now() + wait;
                }
            }
        }
        // What the WAL says about each shard now (a restarted reader resumes from it).
        let positions = wal_positions(&stream, kind, &wal);
        finished.extend(
            positions.iter().filter(|(_, position)| matches!(position, Position::Closed(_))).map(|(id, _)| id.clone()),
        );
        for (shard_id, start) in shards_to_start(context.settings.initial, &shards, &positions, &started, &mut finished)
        {
            tracing::info!(stream = %stream, shard = %shard_id, ?start, "reading {kind} shard");
            started.insert(shard_id.clone());
            let (context, stop) = (context.clone(), stop.clone());
            let task = readers.spawn({
                let shard_id = shard_id.clone();
                async move {
                    let outcome = reader::read_shard(&context, &shard_id, start, stop).await;
                    (shard_id, outcome)
                }
            });
            reader_shards.insert(task.id(), shard_id);
        }
        context.metrics.source.set_active_shards(readers.len() as i64);
        tokio::select! {
            () = tokio::time::sleep_until(next_discovery) => {}
            joined = readers.join_next_with_id(), if !readers.is_empty() => match joined {
                Some(Ok((task, (shard_id, reader::Outcome::Finished)))) => {
                    reader_shards.remove(&task);
                    tracing::info!(stream = %stream, shard = %shard_id, "{kind} shard read to its end");
                    finished.insert(shard_id);
                }
                Some(Ok((task, (_, reader::Outcome::Stopped)))) => {
                    reader_shards.remove(&task);
                }
                None => {}
                Some(Err(join)) => {
                    // A panicked reader: forget it was started, so the next round starts it
                    // again from the WAL's position.
                    let shard_id = reader_shards.remove(&join.id()).unwrap_or_default();
                    tracing::error!(stream = %stream, shard = %shard_id, error = %join, "{kind} shard reader failed; restarting it");
                    started.remove(&shard_id);
                }
            },
            _ = stop.changed() => {}
        }
    }
    while readers.join_next().await.is_some() {}
    context.metrics.source.set_active_shards(0);
}

/// Closed shards that are gone for good: read to their end, no longer listed (their records
/// expired) and no listed shard's parent (so lineage never needs them). Their positions can be
/// forgotten; a stream whose shards roll (DynamoDB Streams' every few hours) would otherwise keep
/// every position it ever had.
pub(crate) fn expired_shards(
    listed: &BTreeMap<String, ShardInfo>,
    positions: &BTreeMap<String, Position>,
) -> Vec<String> {
    let parents: BTreeSet<&str> = listed.values().flat_map(|info| info.parents.iter().map(String::as_str)).collect();
    positions
        .iter()
        .filter(|(shard_id, position)| {
            matches!(position, Position::Closed(_))
                && !listed.contains_key(shard_id.as_str())
                && !parents.contains(shard_id.as_str())
        })
        .map(|(shard_id, _)| shard_id.clone())
        .collect()
}

/// The WAL's positions of this source type, by shard id.
fn wal_positions(stream: &str, kind: &str, wal: &Wal) -> BTreeMap<String, Position> {
    wal.positions()
        .into_iter()
        .filter_map(|(key, text)| {
            let shard = key.strip_prefix(kind)?.strip_prefix(':')?.to_string();
            let position = Position::parse(&text);
            if position.is_none() {
                tracing::warn!(stream, shard = %shard, position = %text, "unreadable {kind} position; ignored");
            }
            Some((shard, position?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        for position in
            [Position::After("4959".into()), Position::StartedAt(1_764_000_000_000), Position::Closed(String::new())]
        {
            assert_eq!(Position::parse(&position.render()), Some(position));
        }
        assert_eq!(Position::parse("seq:"), None);
        assert_eq!(Position::parse("1234"), None);
    }

    #[test]
    fn a_resharded_child_starts_at_its_horizon_and_latest_skips_closed_shards() {
        let open = ShardInfo { parents: vec!["p".into()], closed: false };
        let closed = ShardInfo { parents: vec![], closed: true };
        let none = BTreeMap::new();
        let mut started = BTreeSet::new();
        assert_eq!(start_without_position(Initial::Latest, &open, &none, &started), Some(Start::Latest));
        assert_eq!(start_without_position(Initial::Latest, &closed, &none, &started), None);
        started.insert("p".to_string());
        assert_eq!(start_without_position(Initial::Latest, &open, &none, &started), Some(Start::TrimHorizon));
        let with_parent_position = BTreeMap::from([("p".to_string(), Position::After("1".into()))]);
        assert_eq!(
            start_without_position(Initial::Latest, &open, &with_parent_position, &BTreeSet::new()),
            Some(Start::TrimHorizon)
        );
        let at = Initial::AtTimestamp(1_764_064_800_000);
        assert_eq!(
            start_without_position(at, &open, &with_parent_position, &started),
            Some(Start::AtTimestamp(1_764_064_800_000))
        );
        assert_eq!(start_without_position(at, &closed, &none, &started), Some(Start::AtTimestamp(1_764_064_800_000)));
    }

    fn shard(parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo { parents: parents.iter().map(|parent| parent.to_string()).collect(), closed }
    }

    /// DynamoDB's lineage: one parent per shard, a closed shard rolls over to one child (or splits
    /// into two). Walks the decisions the run loop makes as readers finish.
    #[test]
    fn children_start_only_after_their_parents_are_finished() {
        let shards = BTreeMap::from([
            ("a".to_string(), shard(&[], true)),
            ("b".to_string(), shard(&["a"], true)),
            ("c1".to_string(), shard(&["b"], false)),
            ("c2".to_string(), shard(&["b"], false)),
            // Its parent expired (no longer listed): counts as finished.
            ("orphan".to_string(), shard(&["gone"], false)),
        ]);
        let ids = |starts: Vec<(String, Start)>| starts.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        let none = BTreeMap::new();
        let mut started = BTreeSet::new();
        let mut finished = BTreeSet::new();
        let first = shards_to_start(Initial::TrimHorizon, &shards, &none, &started, &mut finished);
        assert_eq!(ids(first.clone()), ["a", "orphan"]);
        started.extend(ids(first));
        assert!(shards_to_start(Initial::TrimHorizon, &shards, &none, &started, &mut finished).is_empty());
        finished.insert("a".to_string());
        let second = shards_to_start(Initial::TrimHorizon, &shards, &none, &started, &mut finished);
        assert_eq!(second, [("b".to_string(), Start::TrimHorizon)]);
        started.insert("b".to_string());
        finished.insert("b".to_string());
        let third = shards_to_start(Initial::TrimHorizon, &shards, &none, &started, &mut finished);
        assert_eq!(ids(third), ["c1", "c2"]);

        // After a restart: the WAL's positions decide. A closed position finishes the shard, a
        // sequence resumes after it, a LATEST marker resumes at its time.
        let positions = BTreeMap::from([
            ("a".to_string(), Position::Closed("9".into())),
            ("b".to_string(), Position::After("17".into())),
            ("orphan".to_string(), Position::StartedAt(1_764_000_000_000)),
        ]);
        let mut finished = BTreeSet::new();
        let restarted = shards_to_start(Initial::Latest, &shards, &positions, &BTreeSet::new(), &mut finished);
        assert_eq!(
            restarted,
            [
                ("b".to_string(), Start::After("17".into())),
                ("orphan".to_string(), Start::AtTimestamp(1_764_000_000_000))
            ]
        );
        assert!(finished.contains("a"));

        // At LATEST on a first start, closed shards are skipped (finished) and their open
        // children start at LATEST.
        let mut finished = BTreeSet::new();
        let latest = shards_to_start(Initial::Latest, &shards, &none, &BTreeSet::new(), &mut finished);
        assert_eq!(
            latest,
            [
                ("c1".to_string(), Start::Latest),
                ("c2".to_string(), Start::Latest),
                ("orphan".to_string(), Start::Latest)
            ]
        );
        assert_eq!(finished, BTreeSet::from(["a".to_string(), "b".to_string()]));
    }

    #[test]
    fn only_closed_shards_gone_from_the_listing_and_from_lineage_are_forgotten() {
        let shard = |parents: &[&str], closed: bool| ShardInfo {
            parents: parents.iter().map(|parent| parent.to_string()).collect(),
            closed,
        };
        // `old` expired and no listed shard descends from it; `parent` expired but `child` still
        // names it; `listed-closed` is still listed; `gone-open` was never read to its end.
        let listed = BTreeMap::from([
            ("child".to_string(), shard(&["parent"], false)),
            ("listed-closed".to_string(), shard(&[], true)),
        ]);
        let positions = BTreeMap::from([
            ("old".to_string(), Position::Closed("5".into())),
            ("parent".to_string(), Position::Closed("9".into())),
            ("listed-closed".to_string(), Position::Closed("7".into())),
            ("gone-open".to_string(), Position::After("3".into())),
            ("child".to_string(), Position::After("12".into())),
        ]);
        assert_eq!(expired_shards(&listed, &positions), ["old"]);
    }
}
