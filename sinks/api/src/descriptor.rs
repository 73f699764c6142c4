//! What a sink type tells spillway about itself: [`SinkDescriptor`], implemented once, in the
//! sink's crate, by its configuration type. spillway's sink registry (`src/sinks.rs`) lists the
//! types; everything else (validation, the Firehose ranges and defaults, building, the
//! `DescribeDeliveryStream` shape, the status page's destination) asks the descriptor, so a new
//! sink is its crate plus one registry line.
//!
//! Must not: know the stream's own configuration types (buffering, processing, sources). What a
//! description needs of them arrives already shaped in [`DescribeContext`].

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::{EncoderFactory, ErrorOutput, Sink, SinkError};

/// Firehose's only destination id: one destination per stream.
pub const DESTINATION_ID: &str = "destinationId-000000000001";

/// One validation problem; `field` is relative to the `sink` key (e.g. `prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_string(), message: message.into() }
    }
}

/// Where a partition key named in a prefix comes from (`!{partitionKeyFromQuery:k}` /
/// `!{partitionKeyFromLambda:k}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKeySource {
    Query,
    Lambda,
}

/// Firehose's limits for a destination type, which the stream's `buffering` and `retry` blocks
/// are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirehoseLimits {
    /// `BufferingHints.SizeInMBs`.
    pub buffer_size_mib: RangeInclusive<u64>,
    /// `RetryOptions.DurationInSeconds`.
    pub retry_duration_seconds: RangeInclusive<u64>,
    /// `retry.duration_seconds` when unset.
    pub default_retry_duration_seconds: u64,
}

/// A built sink, the encoder its open batches are held in, and where undeliverable records go.
pub struct BuiltSink {
    pub sink: Arc<dyn Sink>,
    pub encoders: Arc<dyn EncoderFactory>,
    pub error_output: Arc<dyn ErrorOutput>,
    /// `!{firehose:error-output-type}` for records this sink refused.
    pub failure_output_type: &'static str,
}

/// Who a sink is built for: the stream's name, its Firehose `VersionId` (in object names) and
/// ARN (`arn:aws:firehose:<region>:<account>:deliverystream/<name>`, which the HTTP endpoint
/// sends as `X-Amz-Firehose-Source-Arn`).
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    pub stream: &'a str,
    pub version_id: u64,
    pub stream_arn: &'a str,
}

/// What a destination description needs besides the sink's own configuration: the stream's
/// settings in Firehose's shapes and the identities the API was given (an API-created stream
/// names its role and bucket; a YAML stream names neither).
#[derive(Debug, Clone)]
pub struct DescribeContext<'a> {
    pub account_id: &'a str,
    /// `RoleARN` as received; default `arn:aws:iam::<account>:role/spillway`.
    pub role_arn: Option<&'a str>,
    /// `BucketARN` as received; default derived from the sink's url.
    pub bucket_arn: Option<&'a str>,
    /// `CloudWatchLoggingOptions` as received; default disabled (spillway logs to stderr).
    pub cloud_watch_logging_options: Option<&'a Value>,
    /// The stream's `buffering`.
    pub buffer_size_mib: u64,
    pub buffer_interval_seconds: u64,
    /// The stream's retry duration (its own or the destination's default).
    pub retry_duration_seconds: u64,
    /// Firehose's `ProcessingConfiguration` for the stream's processing.
    pub processing_configuration: Value,
    /// Firehose's `DynamicPartitioningConfiguration`, when the stream has the block.
    pub dynamic_partitioning_configuration: Option<Value>,
}

impl DescribeContext<'_> {
    /// `RoleARN`: as received, or spillway's placeholder role in the account.
    pub fn role_arn(&self) -> String {
        self.role_arn.map_or_else(|| format!("arn:aws:iam::{}:role/spillway", self.account_id), str::to_string)
    }

    /// `CloudWatchLoggingOptions`: as received, or disabled.
    pub fn cloud_watch_logging_options(&self) -> Value {
        self.cloud_watch_logging_options.cloned().unwrap_or_else(|| serde_json::json!({ "Enabled": false }))
    }

    /// `BufferingHints`.
    pub fn buffering_hints(&self) -> Value {
        serde_json::json!({ "SizeInMBs": self.buffer_size_mib, "IntervalInSeconds": self.buffer_interval_seconds })
    }
}

/// A sink type, as its configuration block describes it. Pure methods read the configuration
/// only (no disk, no network); `build` and `check_connection` may reach the destination.
#[async_trait]
pub trait SinkDescriptor: std::fmt::Debug + Send + Sync {
    /// The YAML `sink.type`.
    fn type_name(&self) -> &'static str;

    /// Firehose's ranges and defaults for this destination.
    fn limits(&self) -> FirehoseLimits;

    /// Every problem in the block, with fields relative to `sink`.
    fn validate(&self) -> Vec<ConfigProblem>;

    /// Where the sink writes, for people (start-up log, status page): bucket and prefix, folder,
    /// table, index or URL. Never a credential.
    fn destination(&self) -> String;

    /// Local folders the sink (or its S3 backup) writes to, with their paths relative to `sink`:
    /// what `spillway validate` checks can be created and written.
    fn local_folders(&self) -> Vec<(String, PathBuf)> {
        Vec::new()
    }

    /// The partition keys the sink's data prefix names, in order of appearance. An unparsable
    /// prefix is an error here too ([`SinkDescriptor::validate`] reports it with its field).
    fn partition_keys_in_prefix(&self) -> Result<Vec<(PartitionKeySource, String)>, String> {
        Ok(Vec::new())
    }

    /// The field of the sink's block that names those keys (problems with them point there).
    fn partition_keys_field(&self) -> &'static str {
        "prefix"
    }

    /// Lambda partition keys the sink reads from a batch's partition when a function returns them,
    /// although its prefix does not name them (Iceberg's `operation`): they become part of the
    /// partition when present, and a record without them is not refused.
    fn optional_lambda_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Firehose supports dynamic partitioning on S3 destinations only.
    fn supports_dynamic_partitioning(&self) -> bool {
        false
    }

    /// Whether an error output prefix is configured (Firehose requires one with dynamic
    /// partitioning).
    fn has_error_output_prefix(&self) -> bool;

    /// Full batches the destination keeps in flight at once, if its writes are latency-bound and
    /// its batches not compressed (a `_bulk` request, a COPY): the pipeline's in-flight byte
    /// bound then makes room for them. `None`: the default bound, which keeps the memory of
    /// compressed S3 batches low.
    fn full_batches_in_flight(&self) -> Option<usize> {
        None
    }

    /// Build the sink; object names (where the sink has them) carry `version_id`, the stream's
    /// Firehose `VersionId`.
    async fn build(&self, stream: &str, version_id: u64) -> Result<BuiltSink, SinkError>;

    /// [`SinkDescriptor::build`] with everything spillway knows of the stream; what the
    /// pipeline calls. A sink that needs more than the name and version (the stream's ARN)
    /// overrides this one; the others build from the name and version alone.
    async fn build_in(&self, context: &BuildContext<'_>) -> Result<BuiltSink, SinkError> {
        self.build(context.stream, context.version_id).await
    }

    /// `validate --connect`: reach the destination without writing data; says what was checked.
    async fn check_connection(&self, stream: &str) -> Result<String, SinkError>;

    /// The stream's entry in `DescribeDeliveryStream`'s `Destinations`, shaped as Firehose's
    /// service model has it: `DestinationId` plus the destination type's description(s). Values
    /// outside the model's enums go in `Spillway*` extension members, which SDKs ignore.
    fn describe_destination(&self, context: &DescribeContext<'_>) -> Value;
}
