//! The Kafka reader of one delivery stream: a consumer thread (librdkafka's calls block) that
//! assigns partitions and polls, and an async appender that writes what it hands over to the WAL
//! in order, one frame per partition batch, each frame carrying `next:<offset>` for its partition.
//!
//! - The thread cuts a partition's frame at [`FRAME_MAX_RECORDS`] / [`FRAME_MAX_BYTES`], or when
//!   polling goes idle or [`LINGER`] passed; it hands frames over through a bounded channel, so a
//!   full WAL stops the polling (back-pressure: librdkafka then holds at most `max_buffered_mib`).
//! - A partition seen for the first time gets its start offset resolved (`earliest`: the low
//!   watermark; `latest`: the high watermark; `at_timestamp`: `offsets_for_times`) and recorded
//!   in the WAL before its records; then the `kafka` → `started:<ms>` marker. Partitions found
//!   later (metadata refresh) start at their beginning.
//! - Cluster trouble (unreachable brokers, failed authentication, a missing topic) is logged as an
//!   error naming the cause, and shown as the stream's last error (status page, `/api/status`),
//!   with backoff (1 s doubling to 60 s), never in a hot loop; librdkafka reconnects by itself,
//!   and the reader resumes from the WAL's positions.
//! - `commit_offsets_to_group`: the appender remembers each frame's end sequence and commits a
//!   partition's `next` offset once the WAL's checkpoint passes it (delivered or error output).
//! - `msk_iam`: librdkafka asks the client context for an OAUTHBEARER token on the thread that
//!   polls; the consumer thread serves that request before its first metadata read, so the first
//!   connection already authenticates.
//!
//! Must not: hold more than one frame per partition besides librdkafka's bounded queue, let a
//! position move before its frame is durable, or poll a consumer on an async worker (an
//! `msk_iam` token refresh waits for the credential chain there).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::ClientContext;
use rdkafka::client::OAuthToken;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::{mpsc, watch};

use super::metadata::KafkaMetadata;
use super::msk_iam::MskIamAuth;
use super::{KIND, KafkaSourceConfig, StartFrom, TopicFilter, parse_timestamp};
use crate::metrics::{ShardMetrics, StreamMetrics};
use crate::wal::{SourcePosition, Wal, WalError};

/// A frame is cut after this many records or bytes.
const FRAME_MAX_RECORDS: usize = 5_000;
/// With one record of up to librdkafka's fetch size on top, a frame stays a few MiB.
const FRAME_MAX_BYTES: usize = 3 << 20;
/// The longest a read record waits in a pending frame while others keep arriving.
const LINGER: Duration = Duration::from_millis(200);
/// One `poll` call's wait for a record.
const POLL: Duration = Duration::from_millis(100);
/// Metadata, watermark and timestamp lookups: a broker that does not answer within this is
/// reported and asked again at the next refresh.
pub(super) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed metadata read (unreachable cluster, refused credentials, missing topic) is reported
/// and tried again after this, doubling up to [`REPORT_BACKOFF_MAX`]: never a hot loop.
const REPORT_BACKOFF_MIN: Duration = Duration::from_secs(1);
const REPORT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Frames handed over and not yet appended: the channel's bound.
const HANDOVER_FRAMES: usize = 4;
/// The key of the `started:<ms>` marker.
const STARTED_KEY: &str = KIND;

/// A partition: topic and number.
pub(super) type Partition = (String, i32);

/// The WAL position key of a partition: `kafka:<topic>:<partition>` (topic names have no `:`).
fn position_key(topic: &str, partition: i32) -> String {
    format!("{KIND}:{topic}:{partition}")
}

/// `next:<offset>`.
fn render_position(next_offset: i64) -> String {
    format!("next:{next_offset}")
}

/// The partitions' next offsets the WAL holds, and whether the first assignment was recorded.
fn wal_positions(stream: &str, wal: &Wal) -> (BTreeMap<Partition, i64>, bool) {
    let mut positions = BTreeMap::new();
    let mut started = false;
    for (key, value) in wal.positions() {
        if key == STARTED_KEY {
            started = true;
            continue;
        }
        let Some(rest) = key.strip_prefix(KIND).and_then(|rest| rest.strip_prefix(':')) else { continue };
        let parsed = rest.rsplit_once(':').and_then(|(topic, partition)| {
            let partition = partition.parse::<i32>().ok()?;
            let next = value.strip_prefix("next:")?.parse::<i64>().ok()?;
            Some(((topic.to_string(), partition), next))
        });
        match parsed {
            Some((partition, next)) => {
                positions.insert(partition, next);
            }
            None => tracing::warn!(stream, key = %key, position = %value, "unreadable kafka position; ignored"),
        }
    }
    (positions, started)
}

/// What the consumer thread hands to the appender, in order.
enum Handover {
    /// Records of one partition, ending before `next_offset`.
    Frame { partition: Partition, records: Vec<Bytes>, metadata: Vec<Bytes>, next_offset: i64, bytes: u64 },
    /// A partition's start offset, before any of its records.
    Position { partition: Partition, next_offset: i64 },
    /// The first assignment is recorded.
    Started,
    /// Partitions assigned now.
    Assigned(usize),
}

/// librdkafka's callbacks: logs through `tracing`, the latest cluster-wide error kept for the
/// reader's reports (librdkafka says *why* a broker is unreachable only here), and `msk_iam`'s
/// OAUTHBEARER tokens.
pub(super) struct ReaderContext {
    stream: String,
    last_error: Mutex<Option<String>>,
    msk_iam: Option<Arc<MskIamAuth>>,
}

impl ReaderContext {
    fn take_last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    fn note_error(&self, text: String) {
        // librdkafka names its own property; the operator writes spillway's.
        let text = text.replace("ssl.ca.location", "tls.ca_file (librdkafka's ssl.ca.location)");
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text);
    }
}

impl ClientContext for ReaderContext {
    /// librdkafka asks for a token only when `sasl.mechanism` is OAUTHBEARER (`msk_iam`).
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    /// librdkafka's own lines go to debug (it repeats a broker failure at every reconnect); the
    /// latest error or warning is kept, and the reader's rate-limited report names it as the cause.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let stream = self.stream.as_str();
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::debug!(stream, facility, "librdkafka: {message}");
                self.note_error(message.to_string());
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::trace!(stream, facility, "librdkafka: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let text = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication) => format!("authentication failed: {reason}"),
            Some(RDKafkaErrorCode::AllBrokersDown) => format!("no broker reachable: {reason}"),
            _ => format!("{error}: {reason}"),
        };
        tracing::debug!(stream = %self.stream, error = %text, "kafka client error");
        // "1/1 brokers are down" follows every broker failure; keep the failure itself.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            self.note_error(text);
        }
    }

    /// A fresh `msk_iam` token, on the polling thread (the blocking pool). A failure goes back to
    /// librdkafka, which reports it as an authentication error and asks again in 10 s.
    fn generate_oauth_token(&self, _oauthbearer_config: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
        let Some(auth) = &self.msk_iam else {
            return Err("OAUTHBEARER needs auth: { type: msk_iam }".into());
        };
        match auth.token() {
            Ok(token) => {
                tracing::debug!(stream = %self.stream, expires_ms = token.expires_ms, "new msk_iam token");
                Ok(OAuthToken {
                    token: token.token,
                    principal_name: "spillway".to_string(),
                    lifetime_ms: token.expires_ms,
                })
            }
            Err(error) => {
                tracing::debug!(stream = %self.stream, %error, "no msk_iam token");
                self.note_error(format!("authentication failed: {error}"));
                Err(error.into())
            }
        }
    }
}

impl ConsumerContext for ReaderContext {}

pub(super) type KafkaConsumer = BaseConsumer<ReaderContext>;

/// Read the configured topics until `stop`, appending to `wal`. A consumer that cannot even be
/// created (a bad librdkafka option) is reported and tried again with backoff; the task ends only
/// when asked to.
pub async fn run(
    stream: String,
    config: KafkaSourceConfig,
    wal: Wal,
    metrics: Arc<StreamMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    let msk_iam = config.msk_iam();
    loop {
        if *stop.borrow() {
            return;
        }
        let consumer = match create_consumer(&stream, &config, msk_iam.clone()) {
            Ok(consumer) => Arc::new(consumer),
            Err(error) => {
                tracing::error!(stream = %stream, %error, retry_in_ms = backoff.as_millis() as u64, "cannot create the kafka consumer; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        tracing::info!(stream = %stream, servers = %config.bootstrap_servers, topics = %config.display_topics(), "reading kafka");
        read(&stream, &config, &wal, &metrics, consumer, &mut stop).await;
        return;
    }
}

/// A consumer with spillway's properties; `msk_iam` (the source's shared token maker) when its
/// `auth` is `msk_iam`.
pub(super) fn create_consumer(
    stream: &str,
    config: &KafkaSourceConfig,
    msk_iam: Option<Arc<MskIamAuth>>,
) -> Result<KafkaConsumer, KafkaError> {
    let mut client_config = ClientConfig::new();
    for (key, value) in config.client_properties() {
        client_config.set(key, value);
    }
    client_config.set_log_level(RDKafkaLogLevel::Info);
    let context = ReaderContext { stream: stream.to_string(), last_error: Mutex::new(None), msk_iam };
    client_config.create_with_context(context)
}

/// Serve the events librdkafka queued for the application (logs, errors, an OAUTHBEARER token
/// request) without waiting. Only for a consumer with nothing assigned: a record polled here would
/// be lost. On the blocking pool only (a token request waits for the credential chain).
pub(super) fn serve_events(consumer: &KafkaConsumer) {
    // Each poll serves one event; a token request is queued first (librdkafka's highest priority).
    for _ in 0..64 {
        let _ = consumer.poll(Duration::ZERO);
    }
}

/// Run the consumer thread and append what it hands over until `stop`.
async fn read(
    stream: &str,
    config: &KafkaSourceConfig,
    wal: &Wal,
    metrics: &Arc<StreamMetrics>,
    consumer: Arc<KafkaConsumer>,
    stop: &mut watch::Receiver<bool>,
) {
    let (sender, mut receiver) = mpsc::channel::<Handover>(HANDOVER_FRAMES);
    let stopping = Arc::new(AtomicBool::new(false));
    let (positions, started) = wal_positions(stream, wal);
    let thread = {
        let consumer = consumer.clone();
        let stopping = stopping.clone();
        let poller = Poller {
            stream: stream.to_string(),
            filter: config.topic_filter(),
            start: config.start.clone(),
            refresh: Duration::from_millis(config.metadata_refresh_interval_ms),
            display_servers: config.bootstrap_servers.clone(),
            metrics: metrics.clone(),
            positions,
            started,
        };
        tokio::task::spawn_blocking(move || poller.run(&consumer, &sender, &stopping))
    };
    let mut appender = Appender {
        stream: stream.to_string(),
        wal: wal.clone(),
        metrics: metrics.clone(),
        partitions: BTreeMap::new(),
        commit_group: config.commit_offsets_to_group.is_some(),
        uncommitted: VecDeque::new(),
    };
    let mut delivered = wal.delivered();
    loop {
        tokio::select! {
            handover = receiver.recv() => match handover {
                Some(handover) => {
                    if !appender.append(handover, stop).await {
                        break;
                    }
                }
                // The thread ended (stopping, or it failed: logged there).
                None => break,
            },
            changed = delivered.changed(), if appender.commit_group => {
                if changed.is_ok() {
                    let checkpoint = *delivered.borrow_and_update();
                    appender.commit_delivered(&consumer, checkpoint);
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    break;
                }
            }
        }
    }
    stopping.store(true, Ordering::Relaxed);
    // Unblocks a thread waiting to hand over; nothing it held is lost (positions did not move).
    drop(receiver);
    if let Err(error) = thread.await {
        tracing::error!(stream, %error, "the kafka consumer thread failed");
    }
    metrics.source.set_active_shards(0);
}

/// The async side: appends handovers in order, counts them, remembers what to commit.
struct Appender {
    stream: String,
    wal: Wal,
    metrics: Arc<StreamMetrics>,
    partitions: BTreeMap<Partition, ShardMetrics>,
    commit_group: bool,
    /// (end sequence of a frame, partition, its next offset), in append order.
    uncommitted: VecDeque<(u64, Partition, i64)>,
}

impl Appender {
    /// Append one handover; false when stopping.
    async fn append(&mut self, handover: Handover, stop: &mut watch::Receiver<bool>) -> bool {
        match handover {
            Handover::Assigned(count) => {
                self.metrics.source.set_active_shards(count as i64);
                true
            }
            Handover::Started => {
                let source = SourcePosition {
                    shard: STARTED_KEY.to_string(),
                    position: format!("started:{}", chrono::Utc::now().timestamp_millis()),
                };
                self.append_frame(Vec::new(), Vec::new(), source, stop).await.is_some()
            }
            Handover::Position { partition, next_offset } => {
                let source = SourcePosition {
                    shard: position_key(&partition.0, partition.1),
                    position: render_position(next_offset),
                };
                self.append_frame(Vec::new(), Vec::new(), source, stop).await.is_some()
            }
            Handover::Frame { partition, records, metadata, next_offset, bytes } => {
                let count = records.len() as u64;
                let source = SourcePosition {
                    shard: position_key(&partition.0, partition.1),
                    position: render_position(next_offset),
                };
                let Some(end) = self.append_frame(records, metadata, source, stop).await else { return false };
                let shard = self
                    .partitions
                    .entry(partition.clone())
                    .or_insert_with(|| self.metrics.source.shard(&format!("{}:{}", partition.0, partition.1)));
                shard.records.inc_by(count);
                shard.bytes.inc_by(bytes);
                self.metrics.incoming_records.inc_by(count);
                self.metrics.incoming_bytes.inc_by(bytes);
                if self.commit_group {
                    self.uncommitted.push_back((end, partition, next_offset));
                }
                true
            }
        }
    }

    /// Append until it succeeds (a full WAL means waiting, not dropping): the frame's end
    /// sequence, or `None` when stopping.
    async fn append_frame(
        &self,
        records: Vec<Bytes>,
        metadata: Vec<Bytes>,
        source: SourcePosition,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<u64> {
        let arrival_ms = chrono::Utc::now().timestamp_millis();
        let mut backoff = Duration::from_millis(100);
        loop {
            let appended =
                self.wal.append_pulled_with_metadata(arrival_ms, records.clone(), source.clone(), metadata.clone());
            match appended.await {
                Ok(range) => return Some(range.end),
                Err(error @ WalError::Full { .. }) => {
                    tracing::debug!(stream = %self.stream, %error, "wal full; the kafka reader waits");
                }
                Err(error) => {
                    tracing::error!(stream = %self.stream, %error, "cannot append kafka records to the wal; retrying");
                }
            }
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return None,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Commit, per partition, the newest next offset whose frame is below the checkpoint.
    fn commit_delivered(&mut self, consumer: &KafkaConsumer, checkpoint: u64) {
        let mut newest: BTreeMap<Partition, i64> = BTreeMap::new();
        while let Some((end, _, _)) = self.uncommitted.front() {
            if *end > checkpoint {
                break;
            }
            if let Some((_, partition, next)) = self.uncommitted.pop_front() {
                newest.insert(partition, next);
            }
        }
        if newest.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &newest {
            if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::warn!(stream = %self.stream, %error, "cannot list an offset to commit");
            }
        }
        // Asynchronous: the next commit carries newer offsets anyway; failures are only logged
        // (the group's offsets are informational, the WAL holds the truth).
        if let Err(error) = consumer.commit(&list, CommitMode::Async) {
            tracing::warn!(stream = %self.stream, %error, "cannot commit delivered offsets to the consumer group");
        }
    }
}

/// The consumer thread's state.
struct Poller {
    stream: String,
    filter: TopicFilter,
    start: StartFrom,
    refresh: Duration,
    display_servers: String,
    /// The stream's last error (status page, `/api/status`) names cluster trouble too.
    metrics: Arc<StreamMetrics>,
    /// The WAL's positions at start.
    positions: BTreeMap<Partition, i64>,
    /// The first assignment was recorded before (a partition without a position is new).
    started: bool,
}

/// Records of one partition not yet handed over.
#[derive(Default)]
struct Pending {
    records: Vec<Bytes>,
    metadata: Vec<Bytes>,
    bytes: u64,
    next_offset: i64,
    since: Option<Instant>,
}

impl Poller {
    fn run(mut self, consumer: &KafkaConsumer, sender: &mpsc::Sender<Handover>, stopping: &AtomicBool) {
        let mut assigned: BTreeSet<Partition> = BTreeSet::new();
        let mut pending: BTreeMap<Partition, Pending> = BTreeMap::new();
        let mut next_refresh = Instant::now();
        let mut refresh_backoff = REPORT_BACKOFF_MIN;
        let mut consume_errors = ErrorLog::default();
        // The first token (`msk_iam`) before the first metadata read.
        serve_events(consumer);
        while !stopping.load(Ordering::Relaxed) {
            if Instant::now() >= next_refresh {
                match self.refresh(consumer, sender, &mut assigned) {
                    Ok(true) => {
                        refresh_backoff = REPORT_BACKOFF_MIN;
                        next_refresh = Instant::now() + self.refresh;
                    }
                    Ok(false) => return,
                    Err(problem) => {
                        // librdkafka says why (refused connection, failed authentication) only
                        // in events served by `poll`; with nothing assigned no record can come.
                        if assigned.is_empty() {
                            for _ in 0..1_000 {
                                if consumer.poll(Duration::ZERO).is_none() {
                                    break;
                                }
                            }
                        }
                        let problem = match consumer.context().take_last_error() {
                            Some(cause) => format!("{problem}; cause: {cause}"),
                            None => problem,
                        };
                        self.metrics.note_error(format!("cannot read the kafka cluster's metadata: {problem}"));
                        tracing::error!(
                            stream = %self.stream,
                            servers = %self.display_servers,
                            error = %problem,
                            retry_in_ms = refresh_backoff.as_millis() as u64,
                            "cannot read the kafka cluster's metadata"
                        );
                        next_refresh = Instant::now() + refresh_backoff;
                        refresh_backoff = (refresh_backoff * 2).min(REPORT_BACKOFF_MAX);
                    }
                }
            }
            if assigned.is_empty() {
                // Nothing to read yet; polling still serves librdkafka's events (its errors).
                let _ = consumer.poll(POLL.min(next_refresh.saturating_duration_since(Instant::now())));
                continue;
            }
            match consumer.poll(POLL) {
                Some(Ok(message)) => {
                    let partition = (message.topic().to_string(), message.partition());
                    let offset = message.offset();
                    let data = Bytes::copy_from_slice(message.payload().unwrap_or_default());
                    let metadata = KafkaMetadata::of(&message);
                    let entry = pending.entry(partition.clone()).or_default();
                    entry.since.get_or_insert_with(Instant::now);
                    entry.bytes += data.len() as u64;
                    entry.records.push(data);
                    entry.metadata.push(metadata.encode());
                    entry.next_offset = offset + 1;
                    if (entry.records.len() >= FRAME_MAX_RECORDS || entry.bytes as usize >= FRAME_MAX_BYTES)
                        && !hand_over(sender, &partition, &mut pending)
                    {
                        return;
                    }
                }
                Some(Err(error)) => {
                    if let Some(message) = consume_errors.due(&error) {
                        let cause = consumer.context().take_last_error().unwrap_or_default();
                        self.metrics.note_error(format!("kafka read failed: {message} {cause}"));
                        tracing::error!(stream = %self.stream, error = %message, %cause, "kafka read failed; librdkafka retries");
                    }
                    if !flush_all(sender, &mut pending) {
                        return;
                    }
                }
                None => {
                    // Idle: hand over everything read.
                    if !flush_all(sender, &mut pending) {
                        return;
                    }
                }
            }
            let lingering: Vec<Partition> = pending
                .iter()
                .filter(|(_, entry)| entry.since.is_some_and(|since| since.elapsed() >= LINGER))
                .map(|(partition, _)| partition.clone())
                .collect();
            for partition in lingering {
                if !hand_over(sender, &partition, &mut pending) {
                    return;
                }
            }
        }
    }

    /// Read the cluster's metadata and assign partitions not assigned yet. `Ok(false)` when the
    /// appender is gone (stopping); `Err` names what went wrong.
    fn refresh(
        &mut self,
        consumer: &KafkaConsumer,
        sender: &mpsc::Sender<Handover>,
        assigned: &mut BTreeSet<Partition>,
    ) -> Result<bool, String> {
        let listed = self.list_partitions(consumer)?;
        let fresh: Vec<Partition> = listed.into_iter().filter(|partition| !assigned.contains(partition)).collect();
        if fresh.is_empty() {
            return Ok(true);
        }
        let mut list = TopicPartitionList::new();
        let mut starts = Vec::new();
        for partition in &fresh {
            let offset = match self.positions.get(partition) {
                Some(next) => *next,
                None => {
                    let start = if self.started { StartFrom::Earliest } else { self.start.clone() };
                    let offset = self.resolve_start(consumer, partition, &start)?;
                    starts.push((partition.clone(), offset));
                    offset
                }
            };
            list.add_partition_offset(&partition.0, partition.1, Offset::Offset(offset))
                .map_err(|error| format!("cannot assign {}:{}: {error}", partition.0, partition.1))?;
            tracing::info!(stream = %self.stream, topic = %partition.0, partition = partition.1, offset, "reading kafka partition");
        }
        // Recorded before any record of theirs, so a restart starts them where this run did.
        for (partition, next_offset) in starts {
            self.positions.insert(partition.clone(), next_offset);
            if sender.blocking_send(Handover::Position { partition, next_offset }).is_err() {
                return Ok(false);
            }
        }
        if !self.started {
            self.started = true;
            if sender.blocking_send(Handover::Started).is_err() {
                return Ok(false);
            }
        }
        consumer.incremental_assign(&list).map_err(|error| format!("cannot assign partitions: {error}"))?;
        assigned.extend(fresh);
        if sender.blocking_send(Handover::Assigned(assigned.len())).is_err() {
            return Ok(false);
        }
        Ok(true)
    }

    fn list_partitions(&self, consumer: &KafkaConsumer) -> Result<Vec<Partition>, String> {
        list_partitions(consumer, &self.filter, &self.stream, &self.display_servers)
    }

    fn resolve_start(&self, consumer: &KafkaConsumer, partition: &Partition, start: &StartFrom) -> Result<i64, String> {
        resolve_start(consumer, partition, start)
    }
}

/// The partitions of the topics read, by the cluster's metadata. A named topic the cluster
/// does not have is reported (and the others read); none found at all is an error.
pub(super) fn list_partitions(
    consumer: &KafkaConsumer,
    filter: &TopicFilter,
    stream: &str,
    display_servers: &str,
) -> Result<Vec<Partition>, String> {
    let why = |error: KafkaError| error.to_string();
    let mut partitions = Vec::new();
    match filter {
        TopicFilter::Names(names) => {
            let mut missing = Vec::new();
            for name in names {
                let metadata = consumer.fetch_metadata(Some(name), LOOKUP_TIMEOUT).map_err(why)?;
                for topic in metadata.topics() {
                    match topic.error() {
                        None => {
                            partitions.extend(topic.partitions().iter().map(|p| (topic.name().to_string(), p.id())))
                        }
                        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => missing.push(name.clone()),
                        Some(code) => {
                            return Err(format!("topic {name}: {}", RDKafkaErrorCode::from(code)));
                        }
                    }
                }
            }
            if !missing.is_empty() {
                let problem = format!("topic(s) {} not found in the cluster", missing.join(", "));
                if partitions.is_empty() {
                    return Err(problem);
                }
                tracing::error!(stream = %stream, servers = %display_servers, "{problem}; reading the others");
            }
        }
        TopicFilter::Pattern(pattern) => {
            let metadata = consumer.fetch_metadata(None, LOOKUP_TIMEOUT).map_err(why)?;
            for topic in metadata.topics() {
                if topic.name().starts_with("__") || !pattern.is_match(topic.name()) || topic.error().is_some() {
                    continue;
                }
                partitions.extend(topic.partitions().iter().map(|p| (topic.name().to_string(), p.id())));
            }
            if partitions.is_empty() {
                tracing::warn!(stream = %stream, pattern = %pattern.as_str(), "no kafka topic matches the pattern yet");
            }
        }
    }
    Ok(partitions)
}

/// The offset a partition without a position starts at.
pub(super) fn resolve_start(consumer: &KafkaConsumer, partition: &Partition, start: &StartFrom) -> Result<i64, String> {
    let (topic, id) = (partition.0.as_str(), partition.1);
    let watermarks = || {
        consumer
            .fetch_watermarks(topic, id, LOOKUP_TIMEOUT)
            .map_err(|error| format!("cannot read the offsets of {topic}:{id}: {error}"))
    };
    match start {
        StartFrom::Earliest => Ok(watermarks()?.0),
        StartFrom::Latest => Ok(watermarks()?.1),
        StartFrom::AtTimestamp(text) => {
            let at_ms = parse_timestamp(text).unwrap_or(0);
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, id, Offset::Offset(at_ms))
                .map_err(|error| format!("cannot look up {topic}:{id} by time: {error}"))?;
            let found = consumer
                .offsets_for_times(list, LOOKUP_TIMEOUT)
                .map_err(|error| format!("cannot look up {topic}:{id} by time: {error}"))?;
            match found.find_partition(topic, id).map(|element| element.offset()) {
                Some(Offset::Offset(offset)) => Ok(offset),
                // No record at or after the time yet: from the end.
                _ => Ok(watermarks()?.1),
            }
        }
    }
}

/// Hand `partition`'s pending records over; false when the appender is gone.
fn hand_over(
    sender: &mpsc::Sender<Handover>,
    partition: &Partition,
    pending: &mut BTreeMap<Partition, Pending>,
) -> bool {
    let Some(entry) = pending.remove(partition) else { return true };
    if entry.records.is_empty() {
        return true;
    }
    let frame = Handover::Frame {
        partition: partition.clone(),
        records: entry.records,
        metadata: entry.metadata,
        next_offset: entry.next_offset,
        bytes: entry.bytes,
    };
    sender.blocking_send(frame).is_ok()
}

fn flush_all(sender: &mpsc::Sender<Handover>, pending: &mut BTreeMap<Partition, Pending>) -> bool {
    let partitions: Vec<Partition> = pending.keys().cloned().collect();
    partitions.iter().all(|partition| hand_over(sender, partition, pending))
}

/// Consume errors logged at most once per 30 s per kind, with the count in between.
#[derive(Default)]
struct ErrorLog {
    /// Per kind: when it was last logged, and how often it happened since.
    last: BTreeMap<String, (Option<Instant>, u64)>,
}

impl ErrorLog {
    fn due(&mut self, error: &KafkaError) -> Option<String> {
        let kind = error.rdkafka_error_code().map_or_else(|| "other".to_string(), |code| format!("{code:?}"));
        let now = Instant::now();
        let entry = self.last.entry(kind).or_insert((None, 0));
        entry.1 += 1;
        if entry.0.is_some_and(|logged| now.duration_since(logged) < Duration::from_secs(30)) {
            return None;
        }
        let count = std::mem::take(&mut entry.1);
        entry.0 = Some(now);
        Some(if count > 1 { format!("{error} ({count} times since the last report)") } else { error.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_keyed_by_topic_and_partition() {
        assert_eq!(position_key("orders.v1", 3), "kafka:orders.v1:3");
        assert_eq!(render_position(17), "next:17");
    }
}
