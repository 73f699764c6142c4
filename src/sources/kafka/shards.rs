//! The Kafka adapter of the shard-reader core, for cluster mode: every partition is a shard
//! (`<topic>:<partition>`) that nodes lease one by one (`crate::cluster::sharing`), read from an
//! offset by a consumer of its own that `assign`s just that partition. The "iterator" is the next
//! offset to read, a record's sequence number its offset: reading from a position gives the same
//! records in the same order on every node, which is what lets a partition move between nodes
//! with every record delivered once. Single-node mode keeps its one consumer for all partitions
//! ([`super::reader`]).
//!
//! Must not: join a consumer group, or block the runtime (every librdkafka call runs on the
//! blocking pool, and so does every poll, which may serve an `msk_iam` token request).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::metadata::KafkaMetadata;
use super::msk_iam::MskIamAuth;
use super::reader::{KafkaConsumer, LOOKUP_TIMEOUT, Partition, create_consumer, list_partitions, serve_events};
use super::{KIND, KafkaSourceConfig, StartFrom, TopicFilter, parse_timestamp};
use crate::metrics::ShardMetrics;
use crate::sources::shards::{
    Fetched, Initial, ReadError, Settings, ShardApi, ShardInfo, SharedShardSource, SourceRecord, Start,
    TimestampStarts, UserRecord,
};

/// How long one fetch waits for records before it answers with what it has (or nothing).
const FETCH_WAIT: Duration = Duration::from_millis(200);
/// `GetRecords`' `Limit` equivalent: records per fetch at most.
const MAX_RECORDS_PER_FETCH: i32 = 10_000;

/// The adapter and the reading settings of a `kafka` source in cluster mode.
pub(crate) fn shared_source(stream: String, config: KafkaSourceConfig) -> SharedShardSource {
    let initial = match &config.start {
        StartFrom::Earliest => Initial::TrimHorizon,
        StartFrom::Latest => Initial::Latest,
        StartFrom::AtTimestamp(text) => Initial::AtTimestamp(parse_timestamp(text).unwrap_or(0)),
    };
    let settings = Settings {
        initial,
        poll_interval: Duration::from_millis(200),
        max_records_per_call: MAX_RECORDS_PER_FETCH,
        discovery_interval: Duration::from_millis(config.metadata_refresh_interval_ms),
        max_concurrent_reads: 64,
    };
    let filter = config.topic_filter();
    let msk_iam = config.msk_iam();
    let api = KafkaPartitions {
        stream,
        config,
        filter,
        msk_iam,
        lookup: Mutex::new(None),
        readers: Mutex::new(BTreeMap::new()),
    };
    SharedShardSource { api: Arc::new(api), settings }
}

struct KafkaPartitions {
    stream: String,
    config: KafkaSourceConfig,
    filter: TopicFilter,
    /// `msk_iam`'s token maker, shared by every consumer of the stream.
    msk_iam: Option<Arc<MskIamAuth>>,
    /// Metadata, watermark and timestamp lookups (made on first use; never assigned anything, so
    /// polling it before a lookup only serves librdkafka's events, a token request among them).
    lookup: Mutex<Option<Arc<KafkaConsumer>>>,
    /// One consumer per partition read here, by shard id.
    readers: Mutex<BTreeMap<String, Arc<PartitionReader>>>,
}

/// A consumer assigned one partition, and the offset it will hand out next.
struct PartitionReader {
    consumer: KafkaConsumer,
    next: Mutex<Option<i64>>,
}

fn shard_id(partition: &Partition) -> String {
    format!("{}:{}", partition.0, partition.1)
}

fn partition_of(shard_id: &str) -> Result<Partition, ReadError> {
    let (topic, number) =
        shard_id.rsplit_once(':').ok_or_else(|| ReadError::NeedsOperator(format!("not a partition: {shard_id}")))?;
    let number = number.parse().map_err(|_| ReadError::NeedsOperator(format!("not a partition: {shard_id}")))?;
    Ok((topic.to_string(), number))
}

impl KafkaPartitions {
    fn lookup(&self) -> Result<Arc<KafkaConsumer>, ReadError> {
        let mut lookup = self.lookup.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(consumer) = lookup.as_ref() {
            return Ok(consumer.clone());
        }
        let consumer = Arc::new(
            create_consumer(&self.stream, &self.config, self.msk_iam.clone())
                .map_err(|error| ReadError::NeedsOperator(format!("cannot create the kafka consumer: {error}")))?,
        );
        *lookup = Some(consumer.clone());
        Ok(consumer)
    }

    fn reader(&self, shard_id: &str) -> Result<Arc<PartitionReader>, ReadError> {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reader) = readers.get(shard_id) {
            return Ok(reader.clone());
        }
        let consumer = create_consumer(&self.stream, &self.config, self.msk_iam.clone())
            .map_err(|error| ReadError::NeedsOperator(format!("cannot create the kafka consumer: {error}")))?;
        let reader = Arc::new(PartitionReader { consumer, next: Mutex::new(None) });
        readers.insert(shard_id.to_string(), reader.clone());
        Ok(reader)
    }
}

/// A librdkafka failure: the cluster's trouble, retried by the reader with backoff.
fn transient(error: impl std::fmt::Display) -> ReadError {
    ReadError::Transient(error.to_string())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ReadError> + Send + 'static,
) -> Result<T, ReadError> {
    tokio::task::spawn_blocking(work).await.map_err(transient)?
}

#[async_trait::async_trait]
impl ShardApi for KafkaPartitions {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn display_name(&self) -> String {
        format!("{} at {}", self.config.display_topics(), self.config.bootstrap_servers)
    }

    fn timestamp_starts(&self) -> TimestampStarts {
        TimestampStarts::Native
    }

    async fn list_shards(&self) -> Result<BTreeMap<String, ShardInfo>, ReadError> {
        let consumer = self.lookup()?;
        let (filter, stream, servers) =
            (self.filter.clone(), self.stream.clone(), self.config.bootstrap_servers.clone());
        let partitions = blocking(move || {
            serve_events(&consumer);
            list_partitions(&consumer, &filter, &stream, &servers).map_err(ReadError::NotFound)
        })
        .await?;
        Ok(partitions
            .iter()
            .map(|partition| (shard_id(partition), ShardInfo { parents: Vec::new(), closed: false }))
            .collect())
    }

    async fn shard_iterator(&self, shard_id: &str, start: &Start) -> Result<Option<String>, ReadError> {
        let (topic, id) = partition_of(shard_id)?;
        if let Start::After(offset) = start {
            let offset: i64 =
                offset.parse().map_err(|_| ReadError::NeedsOperator(format!("not an offset: {offset}")))?;
            return Ok(Some((offset + 1).to_string()));
        }
        let consumer = self.lookup()?;
        let start = start.clone();
        let offset = blocking(move || {
            serve_events(&consumer);
            let watermarks = || consumer.fetch_watermarks(&topic, id, LOOKUP_TIMEOUT).map_err(transient);
            match start {
                Start::TrimHorizon => Ok(watermarks()?.0),
                Start::Latest => Ok(watermarks()?.1),
                Start::AtTimestamp(at_ms) => {
                    let mut list = TopicPartitionList::new();
                    list.add_partition_offset(&topic, id, Offset::Offset(at_ms)).map_err(transient)?;
                    let found = consumer.offsets_for_times(list, LOOKUP_TIMEOUT).map_err(transient)?;
                    match found.find_partition(&topic, id).map(|element| element.offset()) {
                        Some(Offset::Offset(offset)) => Ok(offset),
                        // No record at or after the time yet: from the end.
                        _ => Ok(watermarks()?.1),
                    }
                }
                Start::After(_) => unreachable!("handled above"),
            }
        })
        .await?;
        Ok(Some(offset.to_string()))
    }

    async fn get_records(
        &self,
        shard_id: &str,
        iterator: &str,
        limit: i32,
        _metrics: &ShardMetrics,
    ) -> Result<Fetched, ReadError> {
        let partition = partition_of(shard_id)?;
        let offset: i64 = iterator.parse().map_err(|_| ReadError::Iterator(format!("not an offset: {iterator}")))?;
        let reader = self.reader(shard_id)?;
        let limit = usize::try_from(limit).unwrap_or(1).max(1);
        blocking(move || reader.fetch(&partition, offset, limit)).await
    }

    /// `commit_offsets_to_group`: the partition's next offset after what is delivered, committed
    /// asynchronously by whichever node owns the partition now (outside any group membership:
    /// spillway assigns partitions itself). Informational, as in single-node mode.
    fn delivered(&self, shard_id: &str, sequence: &str) {
        if self.config.commit_offsets_to_group.is_none() {
            return;
        }
        let (Ok((topic, id)), Ok(offset)) = (partition_of(shard_id), sequence.parse::<i64>()) else { return };
        let consumer = match self.lookup() {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(stream = %self.stream, %error, "cannot commit delivered offsets to the consumer group");
                return;
            }
        };
        let mut list = TopicPartitionList::new();
        let committed = list
            .add_partition_offset(&topic, id, Offset::Offset(offset + 1))
            .and_then(|()| consumer.commit(&list, rdkafka::consumer::CommitMode::Async));
        if let Err(error) = committed {
            tracing::warn!(stream = %self.stream, partition = %shard_id, %error, "cannot commit delivered offsets to the consumer group");
        }
    }
}

impl PartitionReader {
    /// Up to `limit` records from `offset` on, waiting at most [`FETCH_WAIT`] for them.
    fn fetch(&self, partition: &Partition, offset: i64, limit: usize) -> Result<Fetched, ReadError> {
        let (topic, id) = (partition.0.as_str(), partition.1);
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        if *next != Some(offset) {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, id, Offset::Offset(offset)).map_err(transient)?;
            self.consumer.assign(&list).map_err(transient)?;
            *next = Some(offset);
        }
        let mut records = Vec::new();
        let mut next_offset = offset;
        let deadline = Instant::now() + FETCH_WAIT;
        while records.len() < limit {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            match self.consumer.poll(wait) {
                Some(Ok(message)) => {
                    // A record from before the asked offset (an assignment still settling) is
                    // not this fetch's.
                    if message.offset() < next_offset {
                        continue;
                    }
                    let metadata = KafkaMetadata::of(&message);
                    records.push(SourceRecord {
                        sequence_number: message.offset().to_string(),
                        created_ms: Some(metadata.timestamp_ms),
                        users: vec![UserRecord {
                            data: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                            metadata: Some(metadata.encode()),
                        }],
                    });
                    next_offset = message.offset() + 1;
                }
                Some(Err(error)) if records.is_empty() => {
                    *next = None;
                    return Err(transient(error));
                }
                Some(Err(_)) | None => break,
            }
        }
        *next = Some(next_offset);
        let caught_up = records.is_empty();
        Ok(Fetched {
            records,
            next_iterator: Some(next_offset.to_string()),
            millis_behind_latest: caught_up.then_some(0),
        })
    }
}
