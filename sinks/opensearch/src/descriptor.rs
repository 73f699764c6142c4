//! The OpenSearch sink as spillway's registry sees it ([`SinkDescriptor`]): Firehose's OpenSearch
//! ranges and defaults, and the `AmazonopensearchserviceDestinationDescription` with its backup.

use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::{Value, json};
use spillway_sink_api::{
    BuiltSink, ConfigProblem, DESTINATION_ID, DescribeContext, FirehoseLimits, Sink, SinkDescriptor, SinkError,
};

use crate::backup::FAILED_OUTPUT_TYPE;
use crate::config::{BackupMode, DocumentId, OpenSearchSinkConfig};

#[async_trait]
impl SinkDescriptor for OpenSearchSinkConfig {
    fn type_name(&self) -> &'static str {
        "opensearch"
    }

    fn limits(&self) -> FirehoseLimits {
        FirehoseLimits {
            buffer_size_mib: 1..=100,
            retry_duration_seconds: 0..=7_200,
            default_retry_duration_seconds: 300,
        }
    }

    fn validate(&self) -> Vec<ConfigProblem> {
        OpenSearchSinkConfig::validate(self)
    }

    fn destination(&self) -> String {
        // A user name and password in the url never reach a log line or the status page.
        let url = match url::Url::parse(&self.url) {
            Ok(mut url) => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string()
            }
            Err(_) => "(invalid url)".to_string(),
        };
        format!("{url} index {}", self.index)
    }

    fn local_folders(&self) -> Vec<(String, PathBuf)> {
        self.backup.local_folders()
    }

    fn has_error_output_prefix(&self) -> bool {
        self.backup.sink.error_output_prefix.is_some()
    }

    fn full_batches_in_flight(&self) -> Option<usize> {
        // A `_bulk` request is latency-bound and its body uncompressed.
        Some(4)
    }

    async fn build(&self, stream: &str, version_id: u64) -> Result<BuiltSink, SinkError> {
        let built = OpenSearchSinkConfig::build(self, stream, version_id)?;
        Ok(BuiltSink {
            sink: built.sink,
            encoders: built.encoders,
            error_output: built.backup,
            failure_output_type: FAILED_OUTPUT_TYPE,
        })
    }

    async fn check_connection(&self, stream: &str) -> Result<String, SinkError> {
        OpenSearchSinkConfig::build(self, stream, 1)?.sink.healthcheck().await?;
        Ok(format!("{} answers", self.url))
    }

    fn describe_destination(&self, context: &DescribeContext<'_>) -> Value {
        let document_id_format = match self.document_id {
            DocumentId::None => "NO_DOCUMENT_ID",
            _ => "FIREHOSE_DEFAULT",
        };
        let description = json!({
            "RoleARN": context.role_arn(),
            "ClusterEndpoint": self.url,
            "IndexName": self.index,
            "TypeName": self.type_name.clone().unwrap_or_default(),
            "IndexRotationPeriod": self.index_rotation.firehose_name(),
            "BufferingHints": {
                "IntervalInSeconds": context.buffer_interval_seconds,
                "SizeInMBs": context.buffer_size_mib,
            },
            "RetryOptions": { "DurationInSeconds": context.retry_duration_seconds },
            "S3BackupMode": match self.backup.mode {
                BackupMode::FailedOnly => "FailedDocumentsOnly",
                BackupMode::All => "AllDocuments",
            },
            "S3DestinationDescription": self.backup.sink.describe_backup(context),
            "ProcessingConfiguration": context.processing_configuration.clone(),
            "CloudWatchLoggingOptions": context.cloud_watch_logging_options(),
            "DocumentIdOptions": { "DefaultDocumentIdFormat": document_id_format },
        });
        json!({
            "DestinationId": DESTINATION_ID,
            "AmazonopensearchserviceDestinationDescription": description,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_never_shows_credentials_from_the_url() {
        let config: OpenSearchSinkConfig = serde_yaml_ng::from_str(
            "url: https://admin:secret@search.example:9200\nindex: logs\nbackup: {sink: {url: file://./b}}\n",
        )
        .expect("config");
        assert_eq!(config.destination(), "https://search.example:9200/ index logs");
    }
}
