//! What a source type tells spillway about itself: [`SourceDescriptor`], implemented once, in
//! the source's module, by its configuration block. The registry ([`super::SourceConfig`]) lists
//! the types; streams, the control plane and validation ask the descriptor, so a new source is a
//! module plus one registry line.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::StreamMetrics;
use crate::sources::shards::SharedShardSource;
use crate::wal::{Wal, WalDirectory};

/// What a source description needs besides the source's own block.
#[derive(Debug, Clone)]
pub struct SourceDescribeContext<'a> {
    pub account_id: &'a str,
    /// The server's region, for ARNs the block does not give.
    pub region: &'a str,
    /// `RoleARN` an API-created stream was given; default `arn:aws:iam::<account>:role/spillway`.
    pub role_arn: Option<&'a str>,
    /// When the stream started reading (its first start), in milliseconds.
    pub delivery_start_ms: i64,
}

/// A pull source's readers, started for one stream. They append to `wal` with their positions
/// and stop when `stop` turns true.
pub struct ReaderContext<'a> {
    pub stream: &'a str,
    pub wal: &'a Wal,
    /// The running streams' WALs, for a source that reads another stream.
    pub wals: &'a Arc<WalDirectory>,
    /// The stream's `processing.transforms`, for a source that runs the first of them while it
    /// reads (a windowed `sql`, in a stream reading another stream).
    pub transforms: &'a [crate::processing::TransformConfig],
    pub metrics: &'a Arc<StreamMetrics>,
    pub stop: watch::Receiver<bool>,
}

pub trait SourceDescriptor: std::fmt::Debug + Send + Sync {
    /// The YAML `source.type`.
    fn type_name(&self) -> &'static str;

    /// Where records come from, for people (start-up log, status page). Never a credential.
    fn origin(&self) -> String;

    /// Problems as (field under `source`, message). Pure.
    fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Whether `processing.record_delimiter` defaults to `newline` rather than Firehose's `none`:
    /// true for a source whose records are lines cut without their newline, which back to back
    /// would run together.
    fn newline_by_default(&self) -> bool {
        false
    }

    /// Whether clients may push records into the stream (Firehose: only `DirectPut` streams
    /// accept `PutRecord`); a stream that does not is read by [`SourceDescriptor::spawn_readers`]
    /// and its frames carry positions.
    fn accepts_puts(&self) -> bool {
        false
    }

    /// The stream whose WAL this source reads, for a source that reads another stream of the
    /// same process: configuration checks that it exists and that no stream reads itself.
    fn reads_stream(&self) -> Option<&str> {
        None
    }

    /// Start the stream's pull readers, if it has any.
    fn spawn_readers(&self, context: ReaderContext<'_>) -> Vec<JoinHandle<()>>;

    /// For a shard source whose shards nodes share in cluster mode (one lease per shard): its
    /// shard adapter and reading settings. `None`: the source cannot be shared.
    fn shard_source(&self, _stream: &str) -> Option<BoxFuture<'static, SharedShardSource>> {
        None
    }

    /// Firehose's `DeliveryStreamType`. A source with no Firehose equivalent is reported as
    /// `DirectPut` (strict SDKs refuse enum values they do not know), with itself in
    /// [`SourceDescriptor::describe_source`].
    fn delivery_stream_type(&self) -> &'static str {
        "DirectPut"
    }

    /// The members `DescribeDeliveryStream` adds for this source (`Source`, or the spillway
    /// extension member `SpillwaySourceDescription`, which SDKs ignore).
    fn describe_source(&self, context: &SourceDescribeContext<'_>) -> Map<String, Value>;
}

/// The members of a source Firehose has no type for: the spillway extension member
/// `SpillwaySourceDescription` (SDKs ignore members they do not know).
pub fn spillway_source_description(description: Value) -> Map<String, Value> {
    Map::from_iter([("SpillwaySourceDescription".to_string(), description)])
}
