//! The Iceberg sink as spillway's registry sees it ([`SinkDescriptor`]): Firehose's Iceberg
//! buffer range (1-128 MiB); for retries spillway keeps the S3 sink's range and default (a
//! day: records wait in the WAL while a table is missing) rather than Firehose's 0-7200 s; and
//! its `IcebergDestinationDescription`.

use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::{Value, json};
use spillway_sink_api::{
    BuiltSink, ConfigProblem, DESTINATION_ID, DescribeContext, FirehoseLimits, PartitionKeySource, SinkDescriptor,
    SinkError,
};

use crate::config::{CatalogConfig, IcebergSinkConfig};
use crate::route::TableTemplate;

#[async_trait]
impl SinkDescriptor for IcebergSinkConfig {
    fn type_name(&self) -> &'static str {
        "iceberg"
    }

    fn limits(&self) -> FirehoseLimits {
        FirehoseLimits {
            buffer_size_mib: 1..=128,
            retry_duration_seconds: 0..=86_400,
            default_retry_duration_seconds: 86_400,
        }
    }

    fn validate(&self) -> Vec<ConfigProblem> {
        IcebergSinkConfig::validate(self)
    }

    fn destination(&self) -> String {
        // A SQL catalog's uri may hold a password: only the table and warehouse are shown; a
        // REST catalog's uri holds none (validation refuses one).
        match &self.catalog {
            CatalogConfig::Sql { warehouse, .. } => format!("Iceberg table {} (warehouse {warehouse})", self.table),
            CatalogConfig::Rest { .. } => format!("Iceberg table {} ({})", self.table, self.catalog.label()),
        }
    }

    fn local_folders(&self) -> Vec<(String, PathBuf)> {
        self.backup.iter().flat_map(|backup| backup.local_folders()).collect()
    }

    fn partition_keys_field(&self) -> &'static str {
        "table"
    }

    fn optional_lambda_keys(&self) -> &'static [&'static str] {
        &[crate::sink::OPERATION_KEY]
    }

    fn partition_keys_in_prefix(&self) -> Result<Vec<(PartitionKeySource, String)>, String> {
        Ok(TableTemplate::parse(&self.table)?.keys())
    }

    /// Dynamic partition keys route batches to tables (`table: db.!{partitionKeyFromQuery:t}`).
    fn supports_dynamic_partitioning(&self) -> bool {
        true
    }

    fn has_error_output_prefix(&self) -> bool {
        self.backup.as_ref().is_some_and(|backup| backup.sink.error_output_prefix.is_some())
    }

    fn full_batches_in_flight(&self) -> Option<usize> {
        // A commit is latency-bound; batches of one table commit one after another anyway.
        Some(2)
    }

    async fn build(&self, stream: &str, version_id: u64) -> Result<BuiltSink, SinkError> {
        self.build_sink(stream, version_id)
    }

    async fn check_connection(&self, stream: &str) -> Result<String, SinkError> {
        self.build(stream, 1)?.check().await
    }

    fn describe_destination(&self, context: &DescribeContext<'_>) -> Value {
        let mut catalog = json!({
            "CatalogARN": self.catalog_arn.clone().unwrap_or_else(|| format!("arn:aws:glue:us-east-1:{}:catalog", context.account_id)),
            "WarehouseLocation": self.catalog.warehouse(),
        });
        match &self.catalog {
            CatalogConfig::Sql { name, .. } => catalog["SpillwayCatalogName"] = json!(name),
            CatalogConfig::Rest { uri, .. } => catalog["SpillwayCatalogUri"] = json!(uri),
        }
        let (database, table) = self.table.rsplit_once('.').unwrap_or(("", self.table.as_str()));
        json!({
            "DestinationId": DESTINATION_ID,
            "IcebergDestinationDescription": {
                "DestinationTableConfigurationList": [{
                    "DestinationDatabaseName": database,
                    "DestinationTableName": table,
                    "S3ErrorOutputPrefix": self.backup.as_ref().and_then(|backup| backup.sink.error_output_prefix.clone()),
                }],
                "S3BackupMode": "FailedDataOnly",
                "RetryOptions": { "DurationInSeconds": context.retry_duration_seconds },
                "RoleARN": context.role_arn(),
                "AppendOnly": true,
                "CatalogConfiguration": catalog,
                "S3DestinationDescription": self.backup.as_ref().map(|backup| backup.sink.describe_backup(context)),
                "BufferingHints": context.buffering_hints(),
                "CloudWatchLoggingOptions": context.cloud_watch_logging_options(),
                "ProcessingConfiguration": context.processing_configuration,
            },
        })
    }
}
