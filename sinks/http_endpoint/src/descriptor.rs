//! The HTTP endpoint sink as spillway's registry sees it ([`SinkDescriptor`]): Firehose's ranges
//! and defaults for this destination, and the `HttpEndpointDestinationDescription` with its
//! backup. The access key is never described (Firehose does not echo it either).

use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::{Value, json};
use spillway_sink_api::{
    BuildContext, BuiltSink, ConfigProblem, DESTINATION_ID, DescribeContext, FirehoseLimits, Sink, SinkDescriptor,
    SinkError,
};

use crate::FAILED_OUTPUT_TYPE;
use crate::config::{BackupMode, HttpEndpointSinkConfig};

#[async_trait]
impl SinkDescriptor for HttpEndpointSinkConfig {
    fn type_name(&self) -> &'static str {
        "http_endpoint"
    }

    fn limits(&self) -> FirehoseLimits {
        FirehoseLimits {
            buffer_size_mib: 1..=64,
            retry_duration_seconds: 0..=7_200,
            default_retry_duration_seconds: 300,
        }
    }

    fn validate(&self) -> Vec<ConfigProblem> {
        HttpEndpointSinkConfig::validate(self)
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
        match &self.name {
            Some(name) => format!("{name} ({url})"),
            None => url,
        }
    }

    fn local_folders(&self) -> Vec<(String, PathBuf)> {
        self.backup.local_folders()
    }

    fn has_error_output_prefix(&self) -> bool {
        self.backup.sink.error_output_prefix.is_some()
    }

    fn full_batches_in_flight(&self) -> Option<usize> {
        // A request is latency-bound and its records held uncompressed (base64) until sent.
        Some(4)
    }

    async fn build(&self, stream: &str, version_id: u64) -> Result<BuiltSink, SinkError> {
        let stream_arn = format!("arn:aws:firehose:us-east-1:000000000000:deliverystream/{stream}");
        self.build_in(&BuildContext { stream, version_id, stream_arn: &stream_arn }).await
    }

    async fn build_in(&self, context: &BuildContext<'_>) -> Result<BuiltSink, SinkError> {
        let built = HttpEndpointSinkConfig::build(self, context.stream, context.version_id, context.stream_arn)?;
        Ok(BuiltSink {
            sink: built.sink,
            encoders: built.encoders,
            error_output: built.backup,
            failure_output_type: FAILED_OUTPUT_TYPE,
        })
    }

    async fn check_connection(&self, stream: &str) -> Result<String, SinkError> {
        let stream_arn = format!("arn:aws:firehose:us-east-1:000000000000:deliverystream/{stream}");
        HttpEndpointSinkConfig::build(self, stream, 1, &stream_arn)?.sink.healthcheck().await?;
        Ok(format!("{} answers", self.destination()))
    }

    fn describe_destination(&self, context: &DescribeContext<'_>) -> Value {
        let mut endpoint = json!({ "Url": self.url });
        if let Some(name) = &self.name {
            endpoint["Name"] = json!(name);
        }
        let attributes: Vec<Value> = self
            .common_attributes
            .iter()
            .map(|(name, value)| json!({ "AttributeName": name, "AttributeValue": value }))
            .collect();
        let description = json!({
            "EndpointConfiguration": endpoint,
            "BufferingHints": context.buffering_hints(),
            "CloudWatchLoggingOptions": context.cloud_watch_logging_options(),
            "RequestConfiguration": {
                "ContentEncoding": self.content_encoding.firehose_name(),
                "CommonAttributes": attributes,
            },
            "ProcessingConfiguration": context.processing_configuration.clone(),
            "RoleARN": context.role_arn(),
            "RetryOptions": { "DurationInSeconds": context.retry_duration_seconds },
            "S3BackupMode": match self.backup.mode {
                BackupMode::FailedOnly => "FailedDataOnly",
                BackupMode::All => "AllData",
            },
            "S3DestinationDescription": self.backup.sink.describe_backup(context),
        });
        json!({
            "DestinationId": DESTINATION_ID,
            "HttpEndpointDestinationDescription": description,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_never_shows_the_access_key_nor_url_credentials_in_the_destination() {
        let config: HttpEndpointSinkConfig = serde_yaml_ng::from_str(
            "url: https://user:pw@intake.example/v1\nname: intake\naccess_key: hunter2\n\
             common_attributes: { env: prod }\nbackup: { mode: all, sink: { url: 'file://./b' } }\n",
        )
        .expect("config");
        assert_eq!(config.destination(), "intake (https://intake.example/v1)");
        let context = DescribeContext {
            account_id: "123456789012",
            role_arn: None,
            bucket_arn: None,
            cloud_watch_logging_options: None,
            buffer_size_mib: 5,
            buffer_interval_seconds: 300,
            retry_duration_seconds: 300,
            processing_configuration: json!({ "Enabled": false }),
            dynamic_partitioning_configuration: None,
        };
        let described = config.describe_destination(&context);
        assert!(!described.to_string().contains("hunter2"));
        let http = &described["HttpEndpointDestinationDescription"];
        assert_eq!(http["EndpointConfiguration"]["Name"], "intake");
        assert_eq!(http["S3BackupMode"], "AllData");
        assert_eq!(http["RequestConfiguration"]["CommonAttributes"][0]["AttributeName"], "env");
    }
}
