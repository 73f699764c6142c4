//! The sink registry: the one place that maps a YAML `sink.type` to a sink crate. Adding a sink is
//! a new crate under `sinks/` plus one variant here. An unknown type is a parse error that lists
//! the valid ones.

use std::ops::RangeInclusive;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use spillway_sink_api::{EncoderFactory, ErrorOutput, Sink, SinkError};
use spillway_sink_opensearch::OpenSearchSinkConfig;
use spillway_sink_postgres::{Mode as PostgresMode, PostgresSinkConfig};
pub use spillway_sink_s3::key::PartitionKeySource;
use spillway_sink_s3::{PrefixError, PrefixKind, PrefixTemplate, S3SinkConfig};

use crate::config::{Problem, RecordDelimiter, StreamConfig};
use crate::processing::{SubRecordType, TransformConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Objects in a local folder (`file://`) or an S3-compatible bucket (`s3://`).
    S3(S3SinkConfig),
    /// Rows in a PostgreSQL table, loaded with COPY (records that fail go to `s3_backup`).
    Postgres(PostgresSinkConfig),
    /// Documents into OpenSearch / Elasticsearch through `_bulk`, failed ones to an S3 backup.
    Opensearch(OpenSearchSinkConfig),
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
    /// Local folders the sink (or its S3 backup) writes to, with their paths relative to `sink`.
    pub fn local_folders(&self) -> Vec<(String, std::path::PathBuf)> {
        let (prefix, s3) = match self {
            SinkConfig::S3(s3) => ("", Some(s3)),
            SinkConfig::Postgres(postgres) => ("s3_backup.", postgres.s3_backup.as_deref()),
            SinkConfig::Opensearch(opensearch) => ("backup.sink.", Some(opensearch.backup.sink.as_ref())),
        };
        s3.map(|s3| s3.local_folders().into_iter().map(|(field, path)| (format!("{prefix}{field}"), path)).collect())
            .unwrap_or_default()
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::S3(_) => "s3",
            SinkConfig::Postgres(_) => "postgres",
            SinkConfig::Opensearch(_) => "opensearch",
        }
    }

    /// Firehose's `BufferingHints.SizeInMBs` range for this destination.
    pub fn buffer_size_range_mib(&self) -> RangeInclusive<u64> {
        match self {
            SinkConfig::S3(_) => 1..=128,
            // Firehose's Redshift range.
            SinkConfig::Postgres(_) => 1..=128,
            SinkConfig::Opensearch(_) => 1..=100,
        }
    }

    /// Allowed `retry.duration_seconds`: Firehose retries S3 for up to 24 hours.
    pub fn retry_duration_range_seconds(&self) -> RangeInclusive<u64> {
        match self {
            SinkConfig::S3(_) => 0..=86_400,
            // Redshift (s3_manifest): Firehose's range, 0-7200.
            SinkConfig::Postgres(config) if config.mode == PostgresMode::S3Manifest => 0..=7_200,
            // PostgreSQL (stdin): rows wait in the WAL meanwhile, so spillway keeps the S3 default
            // (24 hours) and its range: an outage should not empty into the error output.
            SinkConfig::Postgres(_) => 0..=86_400,
            SinkConfig::Opensearch(_) => 0..=7_200,
        }
    }

    /// `retry.duration_seconds` when unset: Firehose's default for the destination.
    pub fn default_retry_duration_seconds(&self) -> u64 {
        match self {
            // Firehose's Redshift default (RetryOptions.DurationInSeconds): 1 hour.
            SinkConfig::Postgres(config) if config.mode == PostgresMode::S3Manifest => 3_600,
            SinkConfig::S3(_) | SinkConfig::Postgres(_) => 86_400,
            SinkConfig::Opensearch(_) => 300,
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
            SinkConfig::Postgres(config) => config
                .validate()
                .into_iter()
                .map(|problem| Problem { path: problem.field, message: problem.message })
                .collect(),
            SinkConfig::Opensearch(config) => config
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
            SinkConfig::Postgres(_) | SinkConfig::Opensearch(_) => Ok(Vec::new()),
        }
    }

    /// Whether an error output prefix is configured (Firehose requires one with dynamic
    /// partitioning).
    pub fn has_error_output_prefix(&self) -> bool {
        match self {
            SinkConfig::S3(config) => config.error_output_prefix.is_some(),
            SinkConfig::Postgres(config) => config
                .s3_backup
                .as_ref()
                .or(config.s3_staging.as_ref())
                .is_some_and(|backup| backup.error_output_prefix.is_some()),
            SinkConfig::Opensearch(config) => config.backup.sink.error_output_prefix.is_some(),
        }
    }

    /// Full batches the destination keeps in flight at once, if its writes are latency-bound
    /// and its batches not compressed (a `_bulk` request, a COPY): the pipeline's in-flight byte
    /// bound then makes room for them ([`crate::pipeline::in_flight_bytes_cap`]). `None`: the
    /// default bound, which keeps the memory of compressed S3 batches low.
    pub fn full_batches_in_flight(&self) -> Option<usize> {
        match self {
            SinkConfig::Opensearch(_) | SinkConfig::Postgres(_) => Some(4),
            SinkConfig::S3(_) => None,
        }
    }

    /// Firehose supports dynamic partitioning on S3 destinations only.
    pub fn supports_dynamic_partitioning(&self) -> bool {
        match self {
            SinkConfig::S3(_) => true,
            SinkConfig::Postgres(_) | SinkConfig::Opensearch(_) => false,
        }
    }

    /// Build the sink; object names (where the sink has them) carry `version_id`, the stream's
    /// Firehose `VersionId`.
    pub async fn build(&self, stream: &str, version_id: u64) -> Result<BuiltSink, SinkError> {
        match self {
            SinkConfig::S3(config) => {
                let sink = Arc::new(config.build_versioned(stream, version_id)?);
                Ok(BuiltSink {
                    encoders: sink.encoder_factory(),
                    sink: sink.clone(),
                    error_output: sink,
                    failure_output_type: "s3-failed",
                })
            }
            SinkConfig::Postgres(config) => {
                let built = config.build_sink(stream, version_id).await?;
                Ok(BuiltSink {
                    sink: built.sink,
                    encoders: built.encoders,
                    error_output: built.error_output,
                    failure_output_type: built.failure_output_type,
                })
            }
            SinkConfig::Opensearch(config) => {
                let built = config.build(stream, version_id)?;
                Ok(BuiltSink {
                    sink: built.sink,
                    encoders: built.encoders,
                    error_output: built.backup,
                    failure_output_type: spillway_sink_opensearch::FAILED_OUTPUT_TYPE,
                })
            }
        }
    }
}

impl SinkConfig {
    /// `validate --connect`: reach the destination without writing data; says what was checked.
    pub async fn check_connection(&self, stream: &str) -> Result<String, SinkError> {
        match self {
            SinkConfig::S3(config) => {
                config.build(stream)?.healthcheck().await?;
                Ok(format!("{} is reachable", config.url))
            }
            SinkConfig::Postgres(config) => config.check_connection().await,
            SinkConfig::Opensearch(config) => {
                config.build(stream, 1)?.sink.healthcheck().await?;
                Ok(format!("{} answers", config.url))
            }
        }
    }
}

/// What a destination description needs besides the stream's configuration: the identities the
/// API was given (an API-created stream names its role and bucket; a YAML stream names neither).
#[derive(Debug, Clone, Default)]
pub struct DescribeContext<'a> {
    pub account_id: &'a str,
    /// `RoleARN` as received; default `arn:aws:iam::<account>:role/spillway`.
    pub role_arn: Option<&'a str>,
    /// `BucketARN` as received; default derived from the sink's url.
    pub bucket_arn: Option<&'a str>,
    /// `CloudWatchLoggingOptions` as received; default disabled (spillway logs to stderr).
    pub cloud_watch_logging_options: Option<&'a Value>,
}

impl SinkConfig {
    /// The stream's entry in `DescribeDeliveryStream`'s `Destinations`, shaped as Firehose's
    /// service model has it (botocore `firehose/2015-08-04/service-2.json`): `DestinationId` plus
    /// the destination type's description(s). Values outside the model's enums (zstd) are
    /// reported in `Spillway*` extension members, which SDKs ignore.
    pub fn describe_destination(&self, stream: &StreamConfig, context: &DescribeContext<'_>) -> Value {
        match self {
            SinkConfig::S3(s3) => describe_s3(s3, stream, context),
            SinkConfig::Postgres(postgres) => describe_postgres(postgres, stream),
            SinkConfig::Opensearch(opensearch) => describe_opensearch(opensearch, stream, context),
        }
    }
}

/// Firehose's only destination id: one destination per stream.
pub const DESTINATION_ID: &str = "destinationId-000000000001";

fn describe_s3(s3: &S3SinkConfig, stream: &StreamConfig, context: &DescribeContext<'_>) -> Value {
    let role_arn =
        context.role_arn.map_or_else(|| format!("arn:aws:iam::{}:role/spillway", context.account_id), str::to_string);
    let bucket_arn = context.bucket_arn.map_or_else(|| bucket_arn_for_url(&s3.url), str::to_string);
    // zstd is not in the model's CompressionFormat enum (SDKs could not parse it): it is
    // reported as a spillway extension beside UNCOMPRESSED.
    let (compression_format, spillway_compression) = match s3.compression.firehose_format() {
        Some(format) => (format, None),
        None => ("UNCOMPRESSED", Some("ZSTD")),
    };
    let cloud_watch = context.cloud_watch_logging_options.cloned().unwrap_or_else(|| json!({ "Enabled": false }));
    let mut base = json!({
        "RoleARN": role_arn,
        "BucketARN": bucket_arn,
        "BufferingHints": {
            "SizeInMBs": stream.buffering.size_mib,
            "IntervalInSeconds": stream.buffering.interval_seconds,
        },
        "CompressionFormat": compression_format,
        "EncryptionConfiguration": { "NoEncryptionConfig": "NoEncryption" },
        "CloudWatchLoggingOptions": cloud_watch,
    });
    if let Some(prefix) = &s3.prefix {
        base["Prefix"] = json!(prefix);
    }
    if let Some(error_prefix) = &s3.error_output_prefix {
        base["ErrorOutputPrefix"] = json!(error_prefix);
    }
    let mut extended = base.clone();
    extended["ProcessingConfiguration"] = processing_configuration(stream);
    extended["S3BackupMode"] = json!("Disabled");
    // Prefixes and object names are rendered in this zone.
    extended["CustomTimeZone"] = json!(s3.custom_time_zone.as_deref().unwrap_or("UTC"));
    if let Some(extension) = &s3.file_extension {
        extended["FileExtension"] = json!(extension);
    }
    if let Some(dynamic) = &stream.processing.dynamic_partitioning {
        extended["DynamicPartitioningConfiguration"] = json!({
            "Enabled": dynamic.enabled,
            "RetryOptions": { "DurationInSeconds": dynamic.retry_duration_seconds },
        });
    }
    if let Some(compression) = spillway_compression {
        extended["SpillwayCompressionFormat"] = json!(compression);
    }
    if bucket_arn_is_derived_from_local(context, &s3.url) {
        extended["SpillwayDestinationUrl"] = json!(s3.url);
    }
    json!({
        "DestinationId": DESTINATION_ID,
        "S3DestinationDescription": base,
        "ExtendedS3DestinationDescription": extended,
    })
}

/// Not a Firehose destination type: the description is a spillway extension member (SDKs
/// ignore it); the url is left out (it may hold a password).
fn describe_postgres(postgres: &PostgresSinkConfig, stream: &StreamConfig) -> Value {
    json!({
        "DestinationId": DESTINATION_ID,
        "SpillwayPostgresDestinationDescription": {
            "DataTableName": postgres.table,
            "DataTableColumns": postgres.columns.as_ref().map(|columns| columns.join(",")),
            "BufferingHints": {
                "SizeInMBs": stream.buffering.size_mib,
                "IntervalInSeconds": stream.buffering.interval_seconds,
            },
        },
    })
}

/// `AmazonopensearchserviceDestinationDescription`, with the backup's S3 description.
fn describe_opensearch(
    opensearch: &OpenSearchSinkConfig,
    stream: &StreamConfig,
    context: &DescribeContext<'_>,
) -> Value {
    let role_arn =
        context.role_arn.map_or_else(|| format!("arn:aws:iam::{}:role/spillway", context.account_id), str::to_string);
    let backup = &opensearch.backup.sink;
    let cloud_watch = context.cloud_watch_logging_options.cloned().unwrap_or_else(|| json!({ "Enabled": false }));
    let mut s3 = json!({
        "RoleARN": role_arn,
        "BucketARN": bucket_arn_for_url(&backup.url),
        "BufferingHints": { "SizeInMBs": 5, "IntervalInSeconds": 300 },
        "CompressionFormat": backup.compression.firehose_format().unwrap_or("UNCOMPRESSED"),
        "EncryptionConfiguration": { "NoEncryptionConfig": "NoEncryption" },
        "CloudWatchLoggingOptions": cloud_watch,
    });
    if let Some(prefix) = &backup.prefix {
        s3["Prefix"] = json!(prefix);
    }
    if let Some(error_prefix) = &backup.error_output_prefix {
        s3["ErrorOutputPrefix"] = json!(error_prefix);
    }
    let document_id_format = match opensearch.document_id {
        spillway_sink_opensearch::DocumentId::None => "NO_DOCUMENT_ID",
        _ => "FIREHOSE_DEFAULT",
    };
    let description = json!({
        "RoleARN": role_arn,
        "ClusterEndpoint": opensearch.url,
        "IndexName": opensearch.index,
        "TypeName": opensearch.type_name.clone().unwrap_or_default(),
        "IndexRotationPeriod": opensearch.index_rotation.firehose_name(),
        "BufferingHints": {
            "IntervalInSeconds": stream.buffering.interval_seconds,
            "SizeInMBs": stream.buffering.size_mib,
        },
        "RetryOptions": { "DurationInSeconds": stream.retry_duration_seconds() },
        "S3BackupMode": match opensearch.backup.mode {
            spillway_sink_opensearch::BackupMode::FailedOnly => "FailedDocumentsOnly",
            spillway_sink_opensearch::BackupMode::All => "AllDocuments",
        },
        "S3DestinationDescription": s3,
        "ProcessingConfiguration": processing_configuration(stream),
        "CloudWatchLoggingOptions": cloud_watch,
        "DocumentIdOptions": { "DefaultDocumentIdFormat": document_id_format },
    });
    json!({
        "DestinationId": DESTINATION_ID,
        "AmazonopensearchserviceDestinationDescription": description,
    })
}

fn bucket_arn_is_derived_from_local(context: &DescribeContext<'_>, url: &str) -> bool {
    context.bucket_arn.is_none() && url.starts_with("file://")
}

/// Firehose's `ProcessingConfiguration` for what spillway does to records: `AppendDelimiterToRecord`
/// for `record_delimiter: newline`, `MetadataExtraction` (jq) for dynamic partitioning keys.
fn processing_configuration(stream: &StreamConfig) -> Value {
    let mut processors = Vec::new();
    let keys = stream.processing.partition_keys();
    if !keys.is_empty() {
        let query = keys.iter().map(|(key, expression)| format!("{key}:{expression}")).collect::<Vec<_>>().join(",");
        processors.push(json!({
            "Type": "MetadataExtraction",
            "Parameters": [
                { "ParameterName": "MetadataExtractionQuery", "ParameterValue": format!("{{{query}}}") },
                { "ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6" },
            ],
        }));
    }
    if stream.processing.record_delimiter != RecordDelimiter::None {
        processors.push(json!({ "Type": "AppendDelimiterToRecord", "Parameters": [] }));
    }
    processors.extend(stream.processing.transforms.iter().flat_map(firehose_processors));
    json!({ "Enabled": !processors.is_empty(), "Processors": processors })
}

/// The Firehose processors a transform is (none for `jq`, which Firehose has only as
/// `MetadataExtraction` for partition keys).
fn firehose_processors(transform: &TransformConfig) -> Vec<Value> {
    let processor = |kind: &str, parameters: &[(&str, String)]| {
        let parameters: Vec<Value> =
            parameters.iter().map(|(name, value)| json!({ "ParameterName": name, "ParameterValue": value })).collect();
        json!({ "Type": kind, "Parameters": parameters })
    };
    let gzip = || processor("Decompression", &[("CompressionFormat", "GZIP".into())]);
    match transform {
        TransformConfig::Jq { .. } => Vec::new(),
        TransformConfig::Decompress { .. } => vec![gzip()],
        TransformConfig::CloudwatchLogs { data_message_extraction } => vec![
            gzip(),
            processor("CloudWatchLogProcessing", &[("DataMessageExtraction", data_message_extraction.to_string())]),
        ],
        TransformConfig::RecordDeaggregation { sub_record_type, delimiter } => {
            let mut parameters = vec![(
                "SubRecordType",
                match sub_record_type {
                    SubRecordType::Json => "JSON".to_string(),
                    SubRecordType::Delimited => "DELIMITED".to_string(),
                },
            )];
            if let Some(delimiter) = delimiter {
                parameters.push(("Delimiter", base64::engine::general_purpose::STANDARD.encode(delimiter)));
            }
            vec![processor("RecordDeAggregation", &parameters)]
        }
        TransformConfig::Lambda(lambda) => vec![processor(
            "Lambda",
            &[
                ("LambdaArn", lambda.function_arn.clone().unwrap_or_else(|| lambda.url.clone())),
                ("NumberOfRetries", lambda.number_of_retries.to_string()),
                ("BufferSizeInMBs", lambda.buffer_size_mib.to_string()),
                ("BufferIntervalInSeconds", lambda.buffer_interval_seconds.to_string()),
            ],
        )],
    }
}

/// The `BucketARN` reported for a sink url. A local folder has no bucket: it gets a valid
/// pseudo-bucket `spillway-local-<folder name>` (the url itself is in `SpillwayDestinationUrl`).
pub fn bucket_arn_for_url(url: &str) -> String {
    match spillway_sink_s3::Destination::parse(url) {
        Ok(spillway_sink_s3::Destination::S3 { bucket }) => format!("arn:aws:s3:::{bucket}"),
        _ => {
            let folder = url.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            let cleaned: String = folder
                .chars()
                .map(|c| c.to_ascii_lowercase())
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
                .collect();
            let name = format!("spillway-local-{}", cleaned.trim_matches('-'));
            let name = name.trim_end_matches('-');
            let bounded: String = name.chars().take(63).collect();
            format!("arn:aws:s3:::{}", bounded.trim_end_matches('-'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_folders_get_valid_bucket_arns() {
        assert_eq!(bucket_arn_for_url("s3://logs-bucket"), "arn:aws:s3:::logs-bucket");
        assert_eq!(bucket_arn_for_url("file://./var/Out_Dir/"), "arn:aws:s3:::spillway-local-out-dir");
        assert_eq!(bucket_arn_for_url("file://./"), "arn:aws:s3:::spillway-local");
        let long = format!("file:///{}", "a".repeat(100));
        let arn = bucket_arn_for_url(&long);
        assert!(arn.len() - "arn:aws:s3:::".len() <= 63, "{arn}");
    }
}
