//! The PostgreSQL / Redshift sink as spillway's registry sees it ([`SinkDescriptor`]): Firehose's
//! Redshift ranges, and a description that is a spillway extension (Firehose has no PostgreSQL
//! destination; SDKs ignore the member).

use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::{Value, json};
use spillway_sink_api::{
    BuiltSink, ConfigProblem, DESTINATION_ID, DescribeContext, FirehoseLimits, SinkDescriptor, SinkError,
};

use crate::config::{Mode, PostgresSinkConfig};

#[async_trait]
impl SinkDescriptor for PostgresSinkConfig {
    fn type_name(&self) -> &'static str {
        "postgres"
    }

    fn limits(&self) -> FirehoseLimits {
        match self.mode {
            // Firehose's Redshift ranges; its default retry (RetryOptions.DurationInSeconds) is 1 hour.
            Mode::S3Manifest => FirehoseLimits {
                buffer_size_mib: 1..=128,
                retry_duration_seconds: 0..=7_200,
                default_retry_duration_seconds: 3_600,
            },
            // PostgreSQL (stdin): rows wait in the WAL meanwhile, so spillway keeps the S3 default
            // (24 hours) and its range: an outage should not empty into the error output.
            Mode::Stdin => FirehoseLimits {
                buffer_size_mib: 1..=128,
                retry_duration_seconds: 0..=86_400,
                default_retry_duration_seconds: 86_400,
            },
        }
    }

    fn validate(&self) -> Vec<ConfigProblem> {
        PostgresSinkConfig::validate(self)
    }

    fn destination(&self) -> String {
        // The url may hold a password: only the table is shown.
        match self.mode {
            Mode::Stdin => format!("PostgreSQL table {}", self.table),
            Mode::S3Manifest => format!("Redshift table {}", self.table),
        }
    }

    fn local_folders(&self) -> Vec<(String, PathBuf)> {
        let backup = self.backup.iter().map(|backup| ("backup.sink", &backup.sink));
        let staging = self.s3_staging.iter().map(|s3| ("s3_staging", s3));
        backup
            .chain(staging)
            .flat_map(|(block, s3)| {
                s3.local_folders().into_iter().map(move |(field, path)| (format!("{block}.{field}"), path))
            })
            .collect()
    }

    fn has_error_output_prefix(&self) -> bool {
        self.backup
            .as_ref()
            .map(|backup| &backup.sink)
            .or(self.s3_staging.as_ref())
            .is_some_and(|backup| backup.error_output_prefix.is_some())
    }

    fn full_batches_in_flight(&self) -> Option<usize> {
        // A COPY is latency-bound and its batch uncompressed.
        Some(4)
    }

    async fn build(&self, stream: &str, version_id: u64) -> Result<BuiltSink, SinkError> {
        self.build_sink(stream, version_id).await
    }

    async fn check_connection(&self, _stream: &str) -> Result<String, SinkError> {
        PostgresSinkConfig::check_connection(self).await
    }

    fn describe_destination(&self, context: &DescribeContext<'_>) -> Value {
        // The url is left out (it may hold a password).
        json!({
            "DestinationId": DESTINATION_ID,
            "SpillwayPostgresDestinationDescription": {
                "DataTableName": self.table,
                "DataTableColumns": self.columns.as_ref().map(|columns| columns.join(",")),
                "BufferingHints": context.buffering_hints(),
            },
        })
    }
}
