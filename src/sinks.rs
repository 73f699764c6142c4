//! The sink registry: the one place that maps a YAML `sink.type` to a sink crate. Adding a sink is
//! a new crate under `sinks/` plus one variant here. An unknown type is a parse error that lists
//! the valid ones.

use std::ops::RangeInclusive;
use std::sync::Arc;

use serde::Deserialize;
use spillway_sink_api::{EncoderFactory, ErrorOutput, Sink, SinkError};
pub use spillway_sink_s3::key::PartitionKeySource;
use spillway_sink_s3::{PrefixError, PrefixKind, PrefixTemplate, S3SinkConfig};

use crate::config::Problem;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Objects in a local folder (`file://`) or an S3-compatible bucket (`s3://`).
    S3(S3SinkConfig),
}

/// A built sink, the encoder its open batches are held in, and where undeliverable records go.
pub struct BuiltSink {
    pub sink: Arc<dyn Sink>,
    pub encoders: Arc<dyn EncoderFactory>,
    pub error_output: Arc<dyn ErrorOutput>,
    /// `!{firehose:error-output-type}` for records this sink refused.
    pub failure_output_type: &'static str,
}

impl SinkConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::S3(_) => "s3",
        }
    }

    /// Firehose's `BufferingHints.SizeInMBs` range for this destination.
    pub fn buffer_size_range_mib(&self) -> RangeInclusive<u64> {
        match self {
            SinkConfig::S3(_) => 1..=128,
        }
    }

    /// Allowed `retry.duration_seconds`: Firehose retries S3 for up to 24 hours.
    pub fn retry_duration_range_seconds(&self) -> RangeInclusive<u64> {
        match self {
            SinkConfig::S3(_) => 0..=86_400,
        }
    }

    /// Problems with paths relative to the `sink` key.
    pub fn validate(&self) -> Vec<Problem> {
        match self {
            SinkConfig::S3(config) => config
                .validate()
                .into_iter()
                .map(|problem| Problem { path: problem.field, message: problem.message })
                .collect(),
        }
    }

    /// The partition keys the sink's data prefix names (`!{partitionKeyFromQuery:k}` /
    /// `!{partitionKeyFromLambda:k}`), in order of appearance. An unparsable prefix is an error
    /// here too; [`SinkConfig::validate`] already reports it with its field.
    pub fn partition_keys_in_prefix(&self) -> Result<Vec<(PartitionKeySource, String)>, PrefixError> {
        match self {
            SinkConfig::S3(config) => {
                let template = PrefixTemplate::parse(config.prefix.as_deref(), PrefixKind::Data)?;
                Ok(template.partition_keys().map(|(source, name)| (source, name.to_string())).collect())
            }
        }
    }

    /// Whether an error output prefix is configured (Firehose requires one with dynamic
    /// partitioning).
    pub fn has_error_output_prefix(&self) -> bool {
        match self {
            SinkConfig::S3(config) => config.error_output_prefix.is_some(),
        }
    }

    /// Firehose supports dynamic partitioning on S3 destinations only.
    pub fn supports_dynamic_partitioning(&self) -> bool {
        match self {
            SinkConfig::S3(_) => true,
        }
    }

    pub async fn build(&self, stream: &str) -> Result<BuiltSink, SinkError> {
        match self {
            SinkConfig::S3(config) => {
                let sink = Arc::new(config.build(stream)?);
                Ok(BuiltSink {
                    encoders: Arc::new(sink.encoder_factory()),
                    sink: sink.clone(),
                    error_output: sink,
                    failure_output_type: "s3-failed",
                })
            }
        }
    }
}
