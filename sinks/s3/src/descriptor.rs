//! The S3 / local folder sink as spillway's registry sees it ([`SinkDescriptor`]): Firehose's S3
//! ranges and defaults, and the `ExtendedS3DestinationDescription` a stream is described with.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use spillway_sink_api::{
    BuiltSink, ConfigProblem, DESTINATION_ID, DescribeContext, FirehoseLimits, PartitionKeySource, Sink,
    SinkDescriptor, SinkError,
};

use crate::config::{Destination, S3SinkConfig};
use crate::key::{PrefixKind, PrefixTemplate};

/// `!{firehose:error-output-type}` of records the bucket refused.
pub const FAILED_OUTPUT_TYPE: &str = "s3-failed";

#[async_trait]
impl SinkDescriptor for S3SinkConfig {
    fn type_name(&self) -> &'static str {
        "s3"
    }

    fn limits(&self) -> FirehoseLimits {
        // Firehose retries S3 for up to 24 hours.
        FirehoseLimits {
            buffer_size_mib: 1..=128,
            retry_duration_seconds: 0..=86_400,
            default_retry_duration_seconds: 86_400,
        }
    }

    fn validate(&self) -> Vec<ConfigProblem> {
        S3SinkConfig::validate(self)
    }

    fn destination(&self) -> String {
        match &self.prefix {
            Some(prefix) => format!("{} (prefix {prefix})", self.url),
            None => self.url.clone(),
        }
    }

    fn local_folders(&self) -> Vec<(String, PathBuf)> {
        S3SinkConfig::local_folders(self).into_iter().map(|(field, path)| (field.to_string(), path)).collect()
    }

    fn partition_keys_in_prefix(&self) -> Result<Vec<(PartitionKeySource, String)>, String> {
        let template =
            PrefixTemplate::parse(self.prefix.as_deref(), PrefixKind::Data).map_err(|error| error.to_string())?;
        Ok(template.partition_keys().map(|(source, name)| (source, name.to_string())).collect())
    }

    fn supports_dynamic_partitioning(&self) -> bool {
        true
    }

    fn has_error_output_prefix(&self) -> bool {
        self.error_output_prefix.is_some()
    }

    async fn build(&self, stream: &str, version_id: u64) -> Result<BuiltSink, SinkError> {
        let sink = Arc::new(self.build_versioned(stream, version_id)?);
        Ok(BuiltSink {
            encoders: sink.encoder_factory(),
            sink: sink.clone(),
            error_output: sink,
            failure_output_type: FAILED_OUTPUT_TYPE,
        })
    }

    async fn check_connection(&self, stream: &str) -> Result<String, SinkError> {
        S3SinkConfig::build(self, stream)?.healthcheck().await?;
        Ok(format!("{} is reachable", self.url))
    }

    fn describe_destination(&self, context: &DescribeContext<'_>) -> Value {
        let bucket_arn = context.bucket_arn.map_or_else(|| bucket_arn_for_url(&self.url), str::to_string);
        // zstd is not in the model's CompressionFormat enum (SDKs could not parse it): it is
        // reported as a spillway extension beside UNCOMPRESSED.
        let (compression_format, spillway_compression) = match self.compression.firehose_format() {
            Some(format) => (format, None),
            None => ("UNCOMPRESSED", Some("ZSTD")),
        };
        let mut base = json!({
            "RoleARN": context.role_arn(),
            "BucketARN": bucket_arn,
            "BufferingHints": context.buffering_hints(),
            "CompressionFormat": compression_format,
            "EncryptionConfiguration": { "NoEncryptionConfig": "NoEncryption" },
            "CloudWatchLoggingOptions": context.cloud_watch_logging_options(),
        });
        if let Some(prefix) = &self.prefix {
            base["Prefix"] = json!(prefix);
        }
        if let Some(error_prefix) = &self.error_output_prefix {
            base["ErrorOutputPrefix"] = json!(error_prefix);
        }
        let mut extended = base.clone();
        extended["ProcessingConfiguration"] = context.processing_configuration.clone();
        extended["S3BackupMode"] = json!("Disabled");
        // Prefixes and object names are rendered in this zone.
        extended["CustomTimeZone"] = json!(self.custom_time_zone.as_deref().unwrap_or("UTC"));
        if let Some(extension) = &self.file_extension {
            extended["FileExtension"] = json!(extension);
        }
        if let Some(dynamic) = &context.dynamic_partitioning_configuration {
            extended["DynamicPartitioningConfiguration"] = dynamic.clone();
        }
        if let Some(compression) = spillway_compression {
            extended["SpillwayCompressionFormat"] = json!(compression);
        }
        if context.bucket_arn.is_none() && self.url.starts_with("file://") {
            extended["SpillwayDestinationUrl"] = json!(self.url);
        }
        json!({
            "DestinationId": DESTINATION_ID,
            "S3DestinationDescription": base,
            "ExtendedS3DestinationDescription": extended,
        })
    }
}

impl S3SinkConfig {
    /// This block as the `S3DestinationDescription` of a backup (OpenSearch's, Redshift's
    /// staging): Firehose's fixed backup buffering, the url's bucket.
    pub fn describe_backup(&self, context: &DescribeContext<'_>) -> Value {
        let mut s3 = json!({
            "RoleARN": context.role_arn(),
            "BucketARN": bucket_arn_for_url(&self.url),
            "BufferingHints": { "SizeInMBs": 5, "IntervalInSeconds": 300 },
            "CompressionFormat": self.compression.firehose_format().unwrap_or("UNCOMPRESSED"),
            "EncryptionConfiguration": { "NoEncryptionConfig": "NoEncryption" },
            "CloudWatchLoggingOptions": context.cloud_watch_logging_options(),
        });
        if let Some(prefix) = &self.prefix {
            s3["Prefix"] = json!(prefix);
        }
        if let Some(error_prefix) = &self.error_output_prefix {
            s3["ErrorOutputPrefix"] = json!(error_prefix);
        }
        s3
    }
}

/// The `BucketARN` reported for a sink url. A local folder has no bucket: it gets a valid
/// pseudo-bucket `spillway-local-<folder name>` (the url itself is in `SpillwayDestinationUrl`).
pub fn bucket_arn_for_url(url: &str) -> String {
    match Destination::parse(url) {
        Ok(Destination::S3 { bucket }) => format!("arn:aws:s3:::{bucket}"),
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
