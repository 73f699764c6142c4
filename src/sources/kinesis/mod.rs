//! The `kinesis` source: reads a Kinesis data stream's shards with `aws-sdk-kinesis` and appends
//! their records to the delivery stream's WAL, each frame carrying its shard's position. This
//! module is the thin Kinesis adapter ([`ShardApi`]) over the shared shard-reader core
//! ([`crate::sources::shards`]), which owns discovery, lineage, positions and the read loop.
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
//!   and approximate arrival time go into its frame ([`metadata`], the generic
//!   [`crate::record_metadata`] entry), for the Lambda event's `kinesisRecordMetadata`.
//!
//! KPL de-aggregation lives in [`kpl`], the per-record metadata in [`metadata`].
//!
//! Must not: decide lineage or positions (the core's), or buffer beyond one response per shard.

pub mod kpl;
pub mod metadata;
mod source;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::watch;

use self::kpl::Deaggregated;
use self::metadata::KinesisMetadata;
use super::shards::{
    self, Fetched, Initial, ReadError, ReadingOptions, Settings, ShardApi, ShardInfo, SourceRecord, Start,
    TimestampStarts, UserRecord, classify,
};
use crate::metrics::{ShardMetrics, StreamMetrics};
use crate::wal::Wal;

/// The source type: the shard core keys a shard's WAL position `kinesis:<shard id>`.
pub(crate) const KIND: &str = "kinesis";

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
        ReadingOptions {
            endpoint: self.endpoint.as_deref(),
            poll_interval_ms: self.poll_interval_ms,
            max_records_per_call: self.max_records_per_call,
            max_records_limit: 10_000,
            max_concurrent_reads: self.max_concurrent_reads,
            shard_discovery_interval_ms: self.shard_discovery_interval_ms,
        }
        .validate(&mut problems);
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

impl KinesisSourceConfig {
    /// The core's reading settings.
    fn settings(&self) -> Settings {
        let initial = match self.starting_position {
            StartingPosition::TrimHorizon => Initial::TrimHorizon,
            StartingPosition::Latest => Initial::Latest,
            StartingPosition::AtTimestamp => {
                Initial::AtTimestamp(self.timestamp.as_deref().and_then(parse_timestamp).unwrap_or(0))
            }
        };
        Settings {
            initial,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            max_records_per_call: self.max_records_per_call,
            discovery_interval: Duration::from_millis(self.shard_discovery_interval_ms),
            max_concurrent_reads: self.max_concurrent_reads,
        }
    }
}

/// Build the client: the standard AWS credential chain, the configured region and endpoint.
async fn build_client(config: &KinesisSourceConfig) -> aws_sdk_kinesis::Client {
    let shared = super::aws::shared_config(config.region()).await;
    let mut builder = aws_sdk_kinesis::config::Builder::from(&shared).timeout_config(super::aws::timeouts());
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
    stop: watch::Receiver<bool>,
) {
    let source = shared_source(stream.clone(), config).await;
    shards::run(stream, source.api, source.settings, wal, metrics, stop).await;
}

/// The adapter and settings, also for shards shared in cluster mode.
pub(crate) async fn shared_source(stream: String, config: KinesisSourceConfig) -> shards::SharedShardSource {
    let client = build_client(&config).await;
    let settings = config.settings();
    shards::SharedShardSource { api: Arc::new(Kinesis { config, client, stream }), settings }
}

/// The Kinesis adapter of the shard-reader core.
struct Kinesis {
    config: KinesisSourceConfig,
    client: aws_sdk_kinesis::Client,
    /// The delivery stream, for logs.
    stream: String,
}

#[async_trait::async_trait]
impl ShardApi for Kinesis {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn display_name(&self) -> String {
        self.config.display_name().to_string()
    }

    fn timestamp_starts(&self) -> TimestampStarts {
        TimestampStarts::Native
    }

    async fn list_shards(&self) -> Result<BTreeMap<String, ShardInfo>, ReadError> {
        let mut shards = BTreeMap::new();
        let mut next_token: Option<String> = None;
        loop {
            let mut request = self.client.list_shards();
            request = match &next_token {
                Some(token) => request.next_token(token),
                None => match (&self.config.stream_name, &self.config.stream_arn) {
                    (Some(name), _) => request.stream_name(name),
                    (None, Some(arn)) => request.stream_arn(arn),
                    (None, None) => request,
                },
            };
            let page = request.send().await.map_err(classify)?;
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

    async fn shard_iterator(&self, shard_id: &str, start: &Start) -> Result<Option<String>, ReadError> {
        let mut request = self.client.get_shard_iterator().shard_id(shard_id);
        request = match (&self.config.stream_name, &self.config.stream_arn) {
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

    async fn get_records(
        &self,
        shard_id: &str,
        iterator: &str,
        limit: i32,
        metrics: &ShardMetrics,
    ) -> Result<Fetched, ReadError> {
        let output = self.client.get_records().shard_iterator(iterator).limit(limit).send().await.map_err(classify)?;
        let records = output.records.into_iter().map(|record| self.user_records(shard_id, record, metrics)).collect();
        Ok(Fetched {
            records,
            next_iterator: output.next_shard_iterator,
            millis_behind_latest: output.millis_behind_latest,
        })
    }
}

impl Kinesis {
    /// One Kinesis record as user records (de-aggregated when enabled), each with its metadata.
    fn user_records(
        &self,
        shard_id: &str,
        record: aws_sdk_kinesis::types::Record,
        metrics: &ShardMetrics,
    ) -> SourceRecord {
        let aws_sdk_kinesis::types::Record {
            sequence_number, data, partition_key, approximate_arrival_timestamp, ..
        } = record;
        let partition_key = partition_key.unwrap_or_default();
        let approximate_arrival_ms = approximate_arrival_timestamp.and_then(|time| time.to_millis().ok()).unwrap_or(0);
        let plain = |data: Bytes| {
            let metadata = KinesisMetadata {
                sequence_number: sequence_number.clone(),
                subsequence_number: 0,
                partition_key: partition_key.clone(),
                approximate_arrival_ms,
            };
            vec![UserRecord { data, metadata: Some(metadata.encode()) }]
        };
        let data = Bytes::from(data.into_inner());
        let deaggregated = if self.config.deaggregate { kpl::deaggregate(&data) } else { Deaggregated::Plain };
        let users = match deaggregated {
            Deaggregated::Plain => plain(data),
            Deaggregated::Records(sub_records) => sub_records
                .into_iter()
                .enumerate()
                .map(|(index, sub_record)| {
                    let metadata = KinesisMetadata {
                        sequence_number: sequence_number.clone(),
                        subsequence_number: index as u32,
                        partition_key: sub_record.partition_key,
                        approximate_arrival_ms,
                    };
                    UserRecord { data: sub_record.data, metadata: Some(metadata.encode()) }
                })
                .collect(),
            Deaggregated::Malformed(reason) => {
                metrics.malformed_aggregates.inc();
                tracing::warn!(
                    stream = %self.stream,
                    shard = shard_id,
                    sequence_number = %sequence_number,
                    reason,
                    "malformed KPL aggregate passed through as one record"
                );
                plain(data)
            }
        };
        SourceRecord { sequence_number, created_ms: Some(approximate_arrival_ms), users }
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
}
