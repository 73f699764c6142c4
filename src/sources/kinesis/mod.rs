//! The `kinesis` source: reads a Kinesis data stream's shards with `aws-sdk-kinesis` and appends
//! their records to the delivery stream's WAL, each frame carrying its shard's position.
//!
//! - **Discovery**: `ListShards` at start and every `shard_discovery_interval_ms` (resharding).
//! - **Lineage**: a shard is read only once its parents (`ParentShardId`, `AdjacentParentShardId`)
//!   are finished, i.e. read to the end of the closed shard (`NextShardIterator` absent); a parent
//!   no longer listed (expired) counts as finished. So per partition key, the WAL holds records in
//!   the order they were written, across splits and merges.
//! - **Positions** (the WAL's shard → position map, key `kinesis:<shard id>`): `seq:<n>` after a
//!   record (resume `AFTER_SEQUENCE_NUMBER`), `at:<epoch ms>` when a shard was started at `LATEST`
//!   and nothing was read yet (resume `AT_TIMESTAMP`, so a restart does not skip what arrived while
//!   down), `closed:<n>` once a closed shard is read to its end. A position moves only with a
//!   durable frame, so a restart neither skips nor repeats.
//! - **Several delivery streams** may read one Kinesis stream: each has its own WAL, so its own
//!   positions.
//!
//! - **Record metadata**: every user record's sequence number, subsequence number, partition key
//!   and approximate arrival time go into its frame ([`metadata`]), for the Lambda event's
//!   `kinesisRecordMetadata` and error records.
//!
//! The shard reader lives in [`reader`]; KPL de-aggregation in [`kpl`].
//!
//! Must not: buffer more than one `GetRecords` response per shard, or move a position before the
//! WAL append that carries it.

pub mod kpl;
pub mod metadata;
mod reader;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::StreamMetrics;
use crate::wal::Wal;

/// The `source:` block of a stream whose `type` is `kinesis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisSourceConfig {
    /// The Kinesis data stream, by name (or by `stream_arn`; exactly one of the two).
    pub stream_name: Option<String>,
    pub stream_arn: Option<String>,
    /// Endpoint override (kinesalite, LocalStack, a VPC endpoint); default: the region's.
    pub endpoint: Option<String>,
    /// Region; default: from `stream_arn`, else the standard AWS chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Where a shard is read from when the WAL holds no position for it (first start).
    #[serde(default)]
    pub starting_position: StartingPosition,
    /// For `AT_TIMESTAMP`: RFC 3339 (`2026-11-25T10:00:00Z`).
    pub timestamp: Option<String>,
    /// Pause between `GetRecords` calls on a shard that is caught up (Firehose: once a second).
    /// A shard behind the tip is read again after 200 ms (Kinesis allows 5 calls/s per shard).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// `Limit` of one `GetRecords` call (Kinesis: at most 10,000).
    #[serde(default = "default_max_records_per_call")]
    pub max_records_per_call: i32,
    /// How often `ListShards` looks for new shards (resharding).
    #[serde(default = "default_shard_discovery_interval_ms")]
    pub shard_discovery_interval_ms: u64,
    /// Split KPL-aggregated records into their user records (Firehose always does).
    #[serde(default = "default_true")]
    pub deaggregate: bool,
    /// `GetRecords` responses held at once across the stream's shards, from the call until the
    /// WAL holds them: the source's memory bound is about this × 10 MiB (the largest response).
    #[serde(default = "default_max_concurrent_reads")]
    pub max_concurrent_reads: usize,
}

/// `starting_position`, with Kinesis's own names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartingPosition {
    /// The oldest record the stream retains.
    TrimHorizon,
    /// Only records written after the reader starts (Firehose's choice for Kinesis sources).
    #[default]
    Latest,
    /// Records that arrived at or after `timestamp`.
    AtTimestamp,
}

fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_max_records_per_call() -> i32 {
    10_000
}
fn default_shard_discovery_interval_ms() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
}
fn default_max_concurrent_reads() -> usize {
    8
}

impl KinesisSourceConfig {
    /// Problems as (field under `source`, message). Pure.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| problems.push((field.to_string(), message));
        match (&self.stream_name, &self.stream_arn) {
            (None, None) => problem("stream_name", "set stream_name or stream_arn".into()),
            (Some(_), Some(_)) => problem("stream_arn", "set only one of stream_name and stream_arn".into()),
            (Some(name), None) if name.is_empty() || name.len() > 128 => {
                problem("stream_name", format!("must be 1-128 characters (got {})", name.len()))
            }
            (None, Some(arn)) if !arn.starts_with("arn:") || arn.split(':').count() < 6 => {
                problem("stream_arn", format!("not a stream ARN: {arn:?}"))
            }
            _ => {}
        }
        match (self.starting_position, &self.timestamp) {
            (StartingPosition::AtTimestamp, None) => problem("timestamp", "AT_TIMESTAMP needs a timestamp".into()),
            (StartingPosition::AtTimestamp, Some(timestamp)) => {
                if parse_timestamp(timestamp).is_none() {
                    problem("timestamp", format!("not an RFC 3339 time: {timestamp:?}"));
                }
            }
            (_, Some(_)) => problem("timestamp", "only used with starting_position AT_TIMESTAMP".into()),
            (_, None) => {}
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problem("endpoint", format!("must be an http:// or https:// URL (got {endpoint:?})"));
        }
        if !(200..=60_000).contains(&self.poll_interval_ms) {
            problem("poll_interval_ms", format!("must be 200-60000 (got {})", self.poll_interval_ms));
        }
        if !(1..=10_000).contains(&self.max_records_per_call) {
            problem("max_records_per_call", format!("must be 1-10000 (got {})", self.max_records_per_call));
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
        problems
    }

    /// The region: configured, else the ARN's (`arn:aws:kinesis:<region>:…`).
    fn region(&self) -> Option<String> {
        self.region.clone().or_else(|| {
            let arn = self.stream_arn.as_ref()?;
            arn.split(':').nth(3).filter(|region| !region.is_empty()).map(str::to_string)
        })
    }

    /// The stream as logs name it.
    fn display_name(&self) -> &str {
        self.stream_name.as_deref().or(self.stream_arn.as_deref()).unwrap_or("")
    }
}

/// Epoch milliseconds of an RFC 3339 time.
fn parse_timestamp(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp_millis())
}

/// The WAL position key of a shard.
fn position_key(shard_id: &str) -> String {
    format!("kinesis:{shard_id}")
}

/// The Kinesis shard id of a frame's source, when the frame came from a Kinesis shard.
pub fn shard_id_of(source_shard: &str) -> Option<&str> {
    source_shard.strip_prefix("kinesis:")
}

/// A shard's cursor as the WAL keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Position {
    /// After this record: resume `AFTER_SEQUENCE_NUMBER`.
    After(String),
    /// Started at `LATEST` at this time (epoch ms), nothing read yet: resume `AT_TIMESTAMP`.
    StartedAt(i64),
    /// A closed shard read to its end (its last record's sequence number, or empty).
    Closed(String),
}

impl Position {
    fn parse(text: &str) -> Option<Position> {
        let (kind, value) = text.split_once(':')?;
        match kind {
            "seq" if !value.is_empty() => Some(Position::After(value.to_string())),
            "at" => value.parse().ok().map(Position::StartedAt),
            "closed" => Some(Position::Closed(value.to_string())),
            _ => None,
        }
    }

    fn render(&self) -> String {
        match self {
            Position::After(sequence) => format!("seq:{sequence}"),
            Position::StartedAt(ms) => format!("at:{ms}"),
            Position::Closed(sequence) => format!("closed:{sequence}"),
        }
    }
}

/// Where a shard reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    TrimHorizon,
    /// `LATEST`, recorded in the WAL as started at this time before the first read.
    Latest,
    AtTimestamp(i64),
    After(String),
}

/// One shard as `ListShards` reports it.
#[derive(Debug, Clone)]
struct ShardInfo {
    parents: Vec<String>,
    closed: bool,
}

/// How to start `shard`, which has no WAL position, or `None` when it is to be skipped (a closed
/// shard when starting at `LATEST`). With `LATEST`, a shard whose parent was read (in this run or
/// before, as its position shows) is a reshard's child created after reading began: it is read
/// from its start, so nothing is skipped. With `AT_TIMESTAMP` every shard, children included,
/// starts at the timestamp (a child created before it holds nothing older that is wanted).
fn start_without_position(
    config: &KinesisSourceConfig,
    info: &ShardInfo,
    positions: &BTreeMap<String, Position>,
    started: &BTreeSet<String>,
) -> Option<Start> {
    match config.starting_position {
        StartingPosition::TrimHorizon => Some(Start::TrimHorizon),
        StartingPosition::AtTimestamp => {
            Some(Start::AtTimestamp(config.timestamp.as_deref().and_then(parse_timestamp).unwrap_or(0)))
        }
        StartingPosition::Latest => {
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

/// The shared parts every shard reader of one source uses.
pub(crate) struct Context {
    pub stream: String,
    pub config: KinesisSourceConfig,
    pub client: aws_sdk_kinesis::Client,
    pub wal: Wal,
    pub metrics: Arc<StreamMetrics>,
    /// Permits for `GetRecords` responses in memory (`max_concurrent_reads`).
    pub reads: Arc<tokio::sync::Semaphore>,
}

/// Build the client: the standard AWS credential chain, the configured region and endpoint.
async fn build_client(config: &KinesisSourceConfig) -> aws_sdk_kinesis::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = config.region() {
        loader = loader.region(aws_config::Region::new(region));
    }
    let shared = loader.load().await;
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .build();
    let mut builder = aws_sdk_kinesis::config::Builder::from(&shared).timeout_config(timeouts);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    aws_sdk_kinesis::Client::from_conf(builder.build())
}

/// Read the Kinesis stream until `stop`, appending to `wal`. Errors are logged and retried; the
/// task ends only when asked to, after its shard readers.
pub async fn run(
    stream: String,
    config: KinesisSourceConfig,
    wal: Wal,
    metrics: Arc<StreamMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let client = build_client(&config).await;
    let discovery = Duration::from_millis(config.shard_discovery_interval_ms);
    let reads = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_reads));
    let context = Arc::new(Context { stream: stream.clone(), config, client, wal: wal.clone(), metrics, reads });
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut readers: JoinSet<(String, reader::Outcome)> = JoinSet::new();
    // Reader task id → shard, to restart the shard of a reader that panicked.
    let mut reader_shards: BTreeMap<tokio::task::Id, String> = BTreeMap::new();
    let mut shards: BTreeMap<String, ShardInfo> = BTreeMap::new();
    let mut backoff = reader::Backoff::new();
    let mut next_discovery = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            break;
        }
        if tokio::time::Instant::now() >= next_discovery {
            let Some(listed) = reader::unless_stopped(list_shards(&context), &mut stop).await else { break };
            match listed {
                Ok(listed) => {
                    backoff.reset();
                    shards = listed;
                    next_discovery = tokio::time::Instant::now() + discovery;
                }
                Err(error) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(stream = %stream, kinesis_stream = context.config.display_name(), %error, retry_in_ms = wait.as_millis() as u64, "cannot list kinesis shards; retrying");
                    next_discovery = tokio::time::Instant::now() + wait;
                }
            }
        }
        // What the WAL says about each shard now (a restarted reader resumes from it).
        let positions = wal_positions(&stream, &wal);
        finished.extend(
            positions.iter().filter(|(_, position)| matches!(position, Position::Closed(_))).map(|(id, _)| id.clone()),
        );
        // Start every shard whose parents are done.
        for (shard_id, info) in &shards {
            if finished.contains(shard_id) || started.contains(shard_id) {
                continue;
            }
            let parents_done =
                info.parents.iter().all(|parent| finished.contains(parent) || !shards.contains_key(parent));
            if !parents_done {
                continue;
            }
            let start = match positions.get(shard_id) {
                Some(Position::After(sequence)) => Start::After(sequence.clone()),
                Some(Position::StartedAt(ms)) => Start::AtTimestamp(*ms),
                Some(Position::Closed(_)) => continue,
                None => match start_without_position(&context.config, info, &positions, &started) {
                    Some(start) => start,
                    None => {
                        tracing::debug!(stream = %stream, shard = %shard_id, "closed shard skipped (starting at LATEST)");
                        finished.insert(shard_id.clone());
                        continue;
                    }
                },
            };
            tracing::info!(stream = %stream, shard = %shard_id, ?start, "reading kinesis shard");
            started.insert(shard_id.clone());
            let (context, shard_id, stop) = (context.clone(), shard_id.clone(), stop.clone());
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
                    tracing::info!(stream = %stream, shard = %shard_id, "kinesis shard read to its end");
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
                    tracing::error!(stream = %stream, shard = %shard_id, error = %join, "kinesis shard reader failed; restarting it");
                    started.remove(&shard_id);
                }
            },
            _ = stop.changed() => {}
        }
    }
    while readers.join_next().await.is_some() {}
    context.metrics.source.set_active_shards(0);
}

/// The WAL's Kinesis positions by shard id.
fn wal_positions(stream: &str, wal: &Wal) -> BTreeMap<String, Position> {
    wal.positions()
        .into_iter()
        .filter_map(|(key, text)| {
            let shard = key.strip_prefix("kinesis:")?.to_string();
            let position = Position::parse(&text);
            if position.is_none() {
                tracing::warn!(stream, shard = %shard, position = %text, "unreadable kinesis position; ignored");
            }
            Some((shard, position?))
        })
        .collect()
}

/// Every shard the stream lists (open and closed), by id.
async fn list_shards(context: &Context) -> Result<BTreeMap<String, ShardInfo>, reader::ReadError> {
    let mut shards = BTreeMap::new();
    let mut next_token: Option<String> = None;
    loop {
        let mut request = context.client.list_shards();
        request = match &next_token {
            Some(token) => request.next_token(token),
            None => match (&context.config.stream_name, &context.config.stream_arn) {
                (Some(name), _) => request.stream_name(name),
                (None, Some(arn)) => request.stream_arn(arn),
                (None, None) => request,
            },
        };
        let page = request.send().await.map_err(reader::classify)?;
        for shard in page.shards() {
            let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect();
            let closed = shard.sequence_number_range().and_then(|range| range.ending_sequence_number()).is_some();
            shards.insert(shard.shard_id().to_string(), ShardInfo { parents, closed });
        }
        match page.next_token() {
            Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
            _ => return Ok(shards),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> KinesisSourceConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn validation_names_every_problem() {
        let problems = config("{ starting_position: AT_TIMESTAMP, poll_interval_ms: 5, max_records_per_call: 0 }")
            .validate()
            .into_iter()
            .map(|(field, _)| field)
            .collect::<Vec<_>>();
        assert_eq!(problems, ["stream_name", "timestamp", "poll_interval_ms", "max_records_per_call"]);
        assert!(config("{ stream_name: s }").validate().is_empty());
        assert!(
            config("{ stream_arn: 'arn:aws:kinesis:eu-west-1:123456789012:stream/s', starting_position: AT_TIMESTAMP, timestamp: '2026-11-25T10:00:00Z' }")
                .validate()
                .is_empty()
        );
        assert_eq!(config("{ stream_name: s, timestamp: '2026-11-25T10:00:00Z' }").validate().len(), 1);
        assert_eq!(
            config("{ stream_arn: 'arn:aws:kinesis:eu-west-1:1:stream/s' }").region().as_deref(),
            Some("eu-west-1")
        );
    }

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
        let latest = config("{ stream_name: s }");
        let open = ShardInfo { parents: vec!["p".into()], closed: false };
        let closed = ShardInfo { parents: vec![], closed: true };
        let none = BTreeMap::new();
        let mut started = BTreeSet::new();
        assert_eq!(start_without_position(&latest, &open, &none, &started), Some(Start::Latest));
        assert_eq!(start_without_position(&latest, &closed, &none, &started), None);
        started.insert("p".to_string());
        assert_eq!(start_without_position(&latest, &open, &none, &started), Some(Start::TrimHorizon));
        let with_parent_position = BTreeMap::from([("p".to_string(), Position::After("1".into()))]);
        assert_eq!(
            start_without_position(&latest, &open, &with_parent_position, &BTreeSet::new()),
            Some(Start::TrimHorizon)
        );
        let at = config("{ stream_name: s, starting_position: AT_TIMESTAMP, timestamp: '2026-11-25T10:00:00Z' }");
        let at_ms = parse_timestamp("2026-11-25T10:00:00Z").unwrap();
        assert_eq!(
            start_without_position(&at, &open, &with_parent_position, &started),
            Some(Start::AtTimestamp(at_ms))
        );
        assert_eq!(start_without_position(&at, &closed, &none, &started), Some(Start::AtTimestamp(at_ms)));
    }
}
