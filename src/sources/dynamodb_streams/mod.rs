//! The `dynamodb_streams` source: reads a DynamoDB table's stream with `aws-sdk-dynamodbstreams`
//! (the table's latest stream found with `aws-sdk-dynamodb` `DescribeTable` when configured by
//! `table_name`) and appends each stream record, as one JSON record ([`record`]), to the delivery
//! stream's WAL. This module is the thin DynamoDB Streams adapter ([`ShardApi`]) over the shared
//! shard-reader core ([`crate::sources::shards`]), which owns discovery, lineage (a child shard
//! after its `ParentShardId` is finished), positions (`dynamodb_streams:<shard id>` in the WAL),
//! expired iterators, trimmed data, throttling and back-pressure.
//!
//! DynamoDB Streams has no `AT_TIMESTAMP` iterator: a shard started at `LATEST` records its start
//! time; a restart before its first record reads the shard from `TRIM_HORIZON` and skips records
//! created before that second ([`TimestampStarts::FromTrimHorizon`]).
//!
//! Must not: decide lineage or positions (the core's), or buffer beyond one response per shard.

pub mod record;
mod source;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::watch;

use super::shards::{
    self, Fetched, Initial, ReadError, ReadingOptions, Settings, ShardApi, ShardInfo, SourceRecord, Start,
    TimestampStarts, UserRecord, classify,
};
use crate::metrics::{ShardMetrics, StreamMetrics};
use crate::wal::Wal;

/// The `source:` block of a stream whose `type` is `dynamodb_streams`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamodbStreamsSourceConfig {
    /// The table whose latest stream is read (or `stream_arn`; exactly one of the two).
    pub table_name: Option<String>,
    /// The stream, by ARN (`arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>`).
    pub stream_arn: Option<String>,
    /// Endpoint override for both DynamoDB and DynamoDB Streams calls (DynamoDB Local, LocalStack,
    /// moto); default: the region's endpoints.
    pub endpoint: Option<String>,
    /// Region; default: from `stream_arn`, else the standard AWS chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Where a shard is read from when the WAL holds no position for it (first start).
    #[serde(default)]
    pub starting_position: StartingPosition,
    /// Write attribute values as plain JSON (`{"S":"x"}` → `"x"`) instead of DynamoDB's typed form.
    #[serde(default)]
    pub unmarshal: bool,
    /// Pause between `GetRecords` calls on a shard that is caught up (Lambda polls 4 times a
    /// second). A shard behind is read again after 200 ms (DynamoDB Streams allows 5 calls/s).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// `Limit` of one `GetRecords` call (DynamoDB Streams: at most 1,000, and 1 MB).
    #[serde(default = "default_max_records_per_call")]
    pub max_records_per_call: i32,
    /// How often `DescribeStream` looks for new shards (DynamoDB rolls shards over every few hours).
    #[serde(default = "default_shard_discovery_interval_ms")]
    pub shard_discovery_interval_ms: u64,
    /// `GetRecords` responses held at once across the stream's shards, from the call until the WAL
    /// holds them: the source's memory bound is about this × 1 MB (the largest response) × the JSON
    /// growth of a record.
    #[serde(default = "default_max_concurrent_reads")]
    pub max_concurrent_reads: usize,
}

/// `starting_position`, with DynamoDB Streams' own names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartingPosition {
    /// The oldest record the stream retains (24 hours).
    TrimHorizon,
    /// Only records written after the reader first starts.
    #[default]
    Latest,
}

fn default_poll_interval_ms() -> u64 {
    250
}
fn default_max_records_per_call() -> i32 {
    1_000
}
fn default_shard_discovery_interval_ms() -> u64 {
    10_000
}
fn default_max_concurrent_reads() -> usize {
    8
}

impl DynamodbStreamsSourceConfig {
    /// Problems as (field under `source`, message). Pure.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| problems.push((field.to_string(), message));
        match (&self.table_name, &self.stream_arn) {
            (None, None) => problem("table_name", "set table_name or stream_arn".into()),
            (Some(_), Some(_)) => problem("stream_arn", "set only one of table_name and stream_arn".into()),
            (Some(name), None)
                if !(3..=255).contains(&name.len())
                    || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_-.".contains(&byte)) =>
            {
                problem("table_name", format!("not a DynamoDB table name (3-255 of a-z A-Z 0-9 _ - .): {name:?}"))
            }
            (None, Some(arn)) if !is_stream_arn(arn) => problem(
                "stream_arn",
                format!(
                    "not a DynamoDB stream ARN (arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>): {arn:?}"
                ),
            ),
            _ => {}
        }
        ReadingOptions {
            endpoint: self.endpoint.as_deref(),
            poll_interval_ms: self.poll_interval_ms,
            max_records_per_call: self.max_records_per_call,
            max_records_limit: 1_000,
            max_concurrent_reads: self.max_concurrent_reads,
            shard_discovery_interval_ms: self.shard_discovery_interval_ms,
        }
        .validate(&mut problems);
        problems
    }

    /// The region: configured, else the ARN's (`arn:aws:dynamodb:<region>:…`).
    fn region(&self) -> Option<String> {
        self.region.clone().or_else(|| {
            let arn = self.stream_arn.as_ref()?;
            arn.split(':').nth(3).filter(|region| !region.is_empty()).map(str::to_string)
        })
    }

    /// The table or stream as logs name it.
    fn display_name(&self) -> &str {
        self.table_name.as_deref().or(self.stream_arn.as_deref()).unwrap_or("")
    }

    fn settings(&self) -> Settings {
        Settings {
            initial: match self.starting_position {
                StartingPosition::TrimHorizon => Initial::TrimHorizon,
                StartingPosition::Latest => Initial::Latest,
            },
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            max_records_per_call: self.max_records_per_call,
            discovery_interval: Duration::from_millis(self.shard_discovery_interval_ms),
            max_concurrent_reads: self.max_concurrent_reads,
        }
    }
}

/// `arn:<partition>:dynamodb:<region>:<account>:table/<table>/stream/<label>`.
fn is_stream_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, _partition, service, _region, _account, resource] = parts.as_slice() else { return false };
    if *prefix != "arn" || *service != "dynamodb" {
        return false;
    }
    let resource: Vec<&str> = resource.splitn(4, '/').collect();
    matches!(resource.as_slice(), ["table", table, "stream", label] if !table.is_empty() && !label.is_empty())
}

/// Read the table's stream until `stop`, appending to `wal`. Errors (an unknown table, a table
/// without a stream) are logged as errors and retried, so an operator can fix them without a
/// restart; the task ends only when asked to, after its shard readers.
pub async fn run(
    stream: String,
    config: DynamodbStreamsSourceConfig,
    wal: Wal,
    metrics: Arc<StreamMetrics>,
    stop: watch::Receiver<bool>,
) {
    let source = shared_source(config).await;
    shards::run(stream, source.api, source.settings, wal, metrics, stop).await;
}

/// The adapter and settings, also for shards shared in cluster mode.
pub(crate) async fn shared_source(config: DynamodbStreamsSourceConfig) -> shards::SharedShardSource {
    let shared = super::aws::shared_config(config.region()).await;
    let mut streams = aws_sdk_dynamodbstreams::config::Builder::from(&shared).timeout_config(super::aws::timeouts());
    let mut tables = aws_sdk_dynamodb::config::Builder::from(&shared).timeout_config(super::aws::timeouts());
    if let Some(endpoint) = &config.endpoint {
        streams = streams.endpoint_url(endpoint);
        tables = tables.endpoint_url(endpoint);
    }
    let settings = config.settings();
    let api = Arc::new(DynamodbStreams {
        resolved_arn: Mutex::new(config.stream_arn.clone()),
        config,
        streams: aws_sdk_dynamodbstreams::Client::from_conf(streams.build()),
        tables: aws_sdk_dynamodb::Client::from_conf(tables.build()),
    });
    shards::SharedShardSource { api, settings }
}

/// The DynamoDB Streams adapter of the shard-reader core.
struct DynamodbStreams {
    config: DynamodbStreamsSourceConfig,
    streams: aws_sdk_dynamodbstreams::Client,
    tables: aws_sdk_dynamodb::Client,
    /// The stream read: `stream_arn`, or the table's `LatestStreamArn` once `DescribeTable` found
    /// it (kept for the process's life: a stream re-enabled under a new ARN is read after a restart).
    resolved_arn: Mutex<Option<String>>,
}

impl DynamodbStreams {
    fn known_arn(&self) -> Option<String> {
        self.resolved_arn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The stream's ARN, asking `DescribeTable` for the table's latest stream the first time.
    async fn stream_arn(&self) -> Result<String, ReadError> {
        if let Some(arn) = self.known_arn() {
            return Ok(arn);
        }
        let table = self.config.table_name.as_deref().unwrap_or_default();
        let described =
            self.tables.describe_table().table_name(table).send().await.map_err(|error| match classify(error) {
                ReadError::NotFound(reason) => {
                    ReadError::NotFound(format!("table {table:?} does not exist in this account and region ({reason})"))
                }
                other => other,
            })?;
        let description = described.table();
        let arn = description.and_then(|table| table.latest_stream_arn()).filter(|arn| !arn.is_empty());
        let enabled = description
            .and_then(|table| table.stream_specification())
            .map(|specification| specification.stream_enabled());
        let Some(arn) = arn.filter(|_| enabled != Some(false)) else {
            return Err(ReadError::NeedsOperator(format!(
                "table {table:?} has no stream enabled: turn on DynamoDB Streams for it \
                 (StreamSpecification: StreamEnabled true and a StreamViewType) or set stream_arn"
            )));
        };
        let arn = arn.to_string();
        tracing::info!(table, stream_arn = %arn, "dynamodb table's stream found");
        *self.resolved_arn.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(arn.clone());
        Ok(arn)
    }
}

#[async_trait::async_trait]
impl ShardApi for DynamodbStreams {
    fn kind(&self) -> &'static str {
        "dynamodb_streams"
    }

    fn display_name(&self) -> String {
        self.config.display_name().to_string()
    }

    fn timestamp_starts(&self) -> TimestampStarts {
        // `ApproximateCreationDateTime` is rounded down to the second.
        TimestampStarts::FromTrimHorizon { granularity_ms: 1_000 }
    }

    async fn list_shards(&self) -> Result<BTreeMap<String, ShardInfo>, ReadError> {
        let arn = self.stream_arn().await?;
        let mut shards = BTreeMap::new();
        let mut exclusive_start: Option<String> = None;
        loop {
            let page = self
                .streams
                .describe_stream()
                .stream_arn(&arn)
                .set_exclusive_start_shard_id(exclusive_start.clone())
                .send()
                .await
                .map_err(classify)?;
            let Some(description) = page.stream_description() else { return Ok(shards) };
            for shard in description.shards() {
                let Some(id) = shard.shard_id() else { continue };
                let parents = shard.parent_shard_id().map(str::to_string).into_iter().collect();
                let closed = shard.sequence_number_range().and_then(|range| range.ending_sequence_number()).is_some();
                shards.insert(id.to_string(), ShardInfo { parents, closed });
            }
            match description.last_evaluated_shard_id() {
                Some(last) if !last.is_empty() && exclusive_start.as_deref() != Some(last) => {
                    exclusive_start = Some(last.to_string())
                }
                _ => return Ok(shards),
            }
        }
    }

    async fn shard_iterator(&self, shard_id: &str, start: &Start) -> Result<Option<String>, ReadError> {
        let arn = self.stream_arn().await?;
        let request = self.streams.get_shard_iterator().stream_arn(arn).shard_id(shard_id);
        let request = match start {
            // No AT_TIMESTAMP here: the core skips records older than the time.
            Start::TrimHorizon | Start::AtTimestamp(_) => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Start::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            Start::After(sequence) => {
                request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).sequence_number(sequence)
            }
        };
        let output = request.send().await.map_err(classify)?;
        Ok(output.shard_iterator().map(str::to_string))
    }

    async fn get_records(
        &self,
        _shard_id: &str,
        iterator: &str,
        limit: i32,
        _metrics: &ShardMetrics,
    ) -> Result<Fetched, ReadError> {
        let arn = self.stream_arn().await?;
        let output = self.streams.get_records().shard_iterator(iterator).limit(limit).send().await.map_err(classify)?;
        let unmarshal = self.config.unmarshal;
        let mut newest_ms = None;
        let records: Vec<SourceRecord> = output
            .records
            .unwrap_or_default()
            .iter()
            .map(|stream_record| {
                let dynamodb = stream_record.dynamodb();
                let sequence_number = dynamodb.and_then(|record| record.sequence_number()).unwrap_or_default();
                let created_ms = dynamodb
                    .and_then(|record| record.approximate_creation_date_time())
                    .and_then(|time| time.to_millis().ok());
                newest_ms = created_ms.or(newest_ms);
                let data = Bytes::from(record::render(stream_record, &arn, unmarshal));
                SourceRecord {
                    sequence_number: sequence_number.to_string(),
                    created_ms,
                    users: vec![UserRecord { data, metadata: None }],
                }
            })
            .collect();
        // DynamoDB Streams reports no MillisBehindLatest: the iterator age is the newest record's
        // age; an empty response means caught up.
        let millis_behind_latest = match newest_ms {
            Some(created) => Some((chrono::Utc::now().timestamp_millis() - created).max(0)),
            None => Some(0),
        };
        Ok(Fetched { records, next_iterator: output.next_shard_iterator, millis_behind_latest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> DynamodbStreamsSourceConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn validation_names_every_problem() {
        let fields = |yaml: &str| config(yaml).validate().into_iter().map(|(field, _)| field).collect::<Vec<_>>();
        assert_eq!(
            fields("{ poll_interval_ms: 5, max_records_per_call: 1001, endpoint: 'localhost:1' }"),
            ["table_name", "endpoint", "poll_interval_ms", "max_records_per_call"]
        );
        assert!(fields("{ table_name: orders }").is_empty());
        assert_eq!(fields("{ table_name: 'a b' }"), ["table_name"]);
        let arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/orders/stream/2026-11-25T10:00:00.000";
        assert!(
            fields(&format!("{{ stream_arn: '{arn}', unmarshal: true, starting_position: TRIM_HORIZON }}")).is_empty()
        );
        assert_eq!(fields(&format!("{{ stream_arn: '{arn}', table_name: orders }}")), ["stream_arn"]);
        assert_eq!(fields("{ stream_arn: 'arn:aws:kinesis:eu-west-1:1:stream/s' }"), ["stream_arn"]);
        assert_eq!(config(&format!("{{ stream_arn: '{arn}' }}")).region().as_deref(), Some("eu-west-1"));
        assert!(
            serde_yaml_ng::from_str::<DynamodbStreamsSourceConfig>(
                "{ table_name: t, starting_position: AT_TIMESTAMP }"
            )
            .is_err()
        );
    }
}
