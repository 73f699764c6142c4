//! Firehose's Apache Iceberg destination shapes (`IcebergDestinationConfiguration` and
//! `IcebergDestinationUpdate`) turned into a spillway `StreamConfig` with an `iceberg` sink, so
//! an API-created stream runs through exactly the code a YAML stream does. Members follow
//! botocore's Firehose model: `DestinationTableConfigurationList` (one table, named by
//! `DestinationDatabaseName` + `DestinationTableName`; its `S3ErrorOutputPrefix`),
//! `CatalogConfiguration` (`CatalogARN`, `WarehouseLocation`) reached through
//! `api_defaults.iceberg_catalog` (a SQL or a REST catalog block), `BufferingHints` 1–128 MB and 0–900 s, `RetryOptions` 0–7200 s,
//! `S3BackupMode` FailedDataOnly, `S3Configuration` for the error output. What spillway cannot do
//! (`UniqueKeys` upserts, several tables in one list, table creation, schema evolution,
//! `AllData` backups) is refused by name.
//!
//! Must not: persist anything or start streams.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::http_endpoint_destination::{S3In, backup_sink};
use super::s3_destination::{ProcessingIn, check_like_yaml, record_transforms};
use crate::config::{
    BufferingConfig, Config, ProcessingConfig, RecordDelimiter, RetryConfig, SourceConfig, StreamConfig,
};
use crate::sinks::SinkConfig;
use crate::sources::direct_put::validation::Violations;
use crate::sources::direct_put::wire::ApiError;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IcebergIn {
    #[serde(default)]
    destination_table_configuration_list: Vec<TableIn>,
    schema_evolution_configuration: Option<EnabledIn>,
    table_creation_configuration: Option<EnabledIn>,
    buffering_hints: Option<HintsIn>,
    #[serde(rename = "CloudWatchLoggingOptions")]
    _cloud_watch_logging_options: Option<Value>,
    processing_configuration: Option<ProcessingIn>,
    #[serde(rename = "S3BackupMode")]
    s3_backup_mode: Option<String>,
    retry_options: Option<RetryIn>,
    #[serde(rename = "RoleARN")]
    role_arn: Option<String>,
    #[serde(rename = "AppendOnly")]
    _append_only: Option<bool>,
    catalog_configuration: Option<CatalogIn>,
    #[serde(rename = "S3Configuration")]
    s3_configuration: Option<S3In>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TableIn {
    destination_table_name: Option<String>,
    destination_database_name: Option<String>,
    #[serde(default)]
    unique_keys: Vec<String>,
    #[serde(rename = "PartitionSpec")]
    _partition_spec: Option<Value>,
    #[serde(rename = "S3ErrorOutputPrefix")]
    s3_error_output_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnabledIn {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HintsIn {
    #[serde(rename = "SizeInMBs")]
    size_in_mbs: Option<i64>,
    interval_in_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetryIn {
    duration_in_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CatalogIn {
    #[serde(rename = "CatalogARN")]
    catalog_arn: Option<String>,
    warehouse_location: Option<String>,
}

/// The stream configuration for an API-created stream named `name` whose destination is
/// `destination` (an `IcebergDestinationConfiguration` object, updates merged in), under
/// `config`'s defaults. `member` names the destination in validation messages.
pub fn stream_config(
    config: &Config,
    name: &str,
    destination: &Value,
    member: &str,
    source: SourceConfig,
) -> Result<StreamConfig, ApiError> {
    let parsed: IcebergIn = serde_json::from_value(destination.clone())
        .map_err(|error| ApiError::serialization(format!("malformed {member}: {error}")))?;
    let hints = parsed.buffering_hints.as_ref();
    let retry = parsed.retry_options.as_ref();
    let mut violations = Violations::new();
    violations.required(parsed.role_arn.as_ref(), &format!("{member}.roleARN"));
    violations.required(parsed.catalog_configuration.as_ref(), &format!("{member}.catalogConfiguration"));
    violations.required(parsed.s3_configuration.as_ref(), &format!("{member}.s3Configuration"));
    if let Some(size) = hints.and_then(|hints| hints.size_in_mbs) {
        violations.range(size, &format!("{member}.bufferingHints.sizeInMBs"), 1, 128);
    }
    if let Some(interval) = hints.and_then(|hints| hints.interval_in_seconds) {
        violations.range(interval, &format!("{member}.bufferingHints.intervalInSeconds"), 0, 900);
    }
    if let Some(duration) = retry.and_then(|retry| retry.duration_in_seconds) {
        violations.range(duration, &format!("{member}.retryOptions.durationInSeconds"), 0, 7200);
    }
    if let Some(mode) = &parsed.s3_backup_mode {
        violations.one_of(mode, &format!("{member}.s3BackupMode"), &["FailedDataOnly", "AllData"]);
    }
    if let Some(s3) = &parsed.s3_configuration {
        violations.required(s3.role_arn.as_ref(), &format!("{member}.s3Configuration.roleARN"));
        violations.required(s3.bucket_arn.as_ref(), &format!("{member}.s3Configuration.bucketARN"));
    }
    violations.finish()?;

    let invalid = |message: String| ApiError::invalid_argument(message);
    let [table] = parsed.destination_table_configuration_list.as_slice() else {
        return Err(invalid(format!(
            "{member}.DestinationTableConfigurationList must name exactly one table in spillway (route one stream to several tables with dynamic partition keys in a YAML stream)"
        )));
    };
    let (Some(database), Some(table_name)) = (&table.destination_database_name, &table.destination_table_name) else {
        return Err(invalid(format!(
            "{member}.DestinationTableConfigurationList needs DestinationDatabaseName and DestinationTableName"
        )));
    };
    if !table.unique_keys.is_empty() {
        return Err(invalid(
            "UniqueKeys (update and delete operations) are not supported by spillway: iceberg-rust has no row-delta commit, so the Iceberg sink only appends".into(),
        ));
    }
    for (enabled, what) in [
        (&parsed.table_creation_configuration, "TableCreationConfiguration"),
        (&parsed.schema_evolution_configuration, "SchemaEvolutionConfiguration"),
    ] {
        if enabled.as_ref().is_some_and(|enabled| enabled.enabled.unwrap_or(false)) {
            return Err(invalid(format!(
                "{what} is not supported by spillway: the table must exist, and spillway never alters it"
            )));
        }
    }
    if parsed.s3_backup_mode.as_deref() == Some("AllData") {
        return Err(invalid(
            "S3BackupMode AllData is not supported by spillway's Iceberg sink (FailedDataOnly)".into(),
        ));
    }
    let catalog_in = parsed.catalog_configuration.unwrap_or_default();
    let mut catalog = match &config.api_defaults.iceberg_catalog {
        Some(Value::Object(catalog)) => catalog.clone(),
        _ => {
            return Err(invalid(format!(
                "CatalogConfiguration {} cannot be reached: this spillway has no api_defaults.iceberg_catalog",
                catalog_in.catalog_arn.as_deref().unwrap_or_default()
            )));
        }
    };
    if let Some(warehouse) = catalog_in.warehouse_location.as_ref().filter(|warehouse| !warehouse.is_empty()) {
        catalog.insert("warehouse".into(), warehouse.clone().into());
    }

    let processing = parsed.processing_configuration.unwrap_or_default();
    let mut transforms = Vec::new();
    if processing.enabled.unwrap_or(!processing.processors.is_empty()) {
        if let Some(processor) = processing
            .processors
            .iter()
            .find(|processor| matches!(processor.kind.as_str(), "MetadataExtraction" | "AppendDelimiterToRecord"))
        {
            return Err(invalid(format!(
                "the {} processor is for S3 destinations; an Iceberg destination does not take it",
                processor.kind
            )));
        }
        transforms = record_transforms(&processing.processors, config)?;
    }

    let mut backup = backup_sink(config, parsed.s3_configuration.as_ref(), member)?;
    if let Some(prefix) = table.s3_error_output_prefix.as_ref().filter(|prefix| !prefix.is_empty()) {
        backup.insert("error_output_prefix".into(), prefix.clone().into());
    }
    let mut sink = Map::new();
    sink.insert("type".into(), "iceberg".into());
    sink.insert("catalog".into(), Value::Object(catalog));
    sink.insert("table".into(), format!("{database}.{table_name}").into());
    if let Some(arn) = &catalog_in.catalog_arn {
        sink.insert("catalog_arn".into(), arn.clone().into());
    }
    let connection = config.api_defaults.s3.connection_fields();
    if !connection.is_empty() {
        sink.insert("s3".into(), Value::Object(connection));
    }
    sink.insert("backup".into(), serde_json::json!({ "sink": backup }));
    let sink: SinkConfig = serde_json::from_value(Value::Object(sink))
        .map_err(|error| invalid(format!("cannot make a sink for {member}: {error}")))?;
    let stream = StreamConfig {
        name: name.to_string(),
        source,
        processing: ProcessingConfig {
            record_delimiter: Some(RecordDelimiter::None),
            dynamic_partitioning: None,
            transforms,
        },
        buffering: BufferingConfig {
            size_mib: hints.and_then(|hints| hints.size_in_mbs).map_or(128, |size| size as u64),
            interval_seconds: hints.and_then(|hints| hints.interval_in_seconds).map_or(300, |interval| interval as u64),
        },
        sink,
        retry: RetryConfig {
            duration_seconds: Some(
                retry.and_then(|retry| retry.duration_in_seconds).map_or(300, |duration| duration as u64),
            ),
        },
    };
    check_like_yaml(config, &stream)?;
    Ok(stream)
}

#[cfg(all(test, feature = "sink-iceberg"))]
mod tests {
    use super::*;

    /// `api_defaults.iceberg_catalog` may be a REST catalog: its block is the sink's, with the
    /// request's `WarehouseLocation` as `warehouse` (sent to the server), its credential kept.
    #[test]
    fn a_rest_catalog_default_makes_a_rest_sink() {
        let config = crate::config::parse_str(
            "api_defaults:\n\
             \x20 s3: { url: 'file://./buckets/{bucket}' }\n\
             \x20 iceberg_catalog: { type: rest, uri: 'https://catalog.example/api', credential: 'spillway:s3cret' }\n",
            std::path::Path::new("t.yaml"),
        )
        .expect("config");
        let destination = serde_json::json!({
            "DestinationTableConfigurationList": [{ "DestinationDatabaseName": "db", "DestinationTableName": "events" }],
            "RoleARN": "arn:aws:iam::000000000000:role/firehose",
            "CatalogConfiguration": { "CatalogARN": "arn:aws:glue:us-east-1:000000000000:catalog", "WarehouseLocation": "lake" },
            "S3Configuration": { "RoleARN": "arn:aws:iam::000000000000:role/firehose", "BucketARN": "arn:aws:s3:::backup" },
        });
        let stream =
            stream_config(&config, "s", &destination, "icebergDestinationConfiguration", SourceConfig::default())
                .expect("converts");
        let SinkConfig::Iceberg(sink) = &stream.sink else { panic!("an iceberg sink") };
        let spillway_sink_iceberg::CatalogConfig::Rest { uri, warehouse, credential, .. } = &sink.catalog else {
            panic!("a rest catalog: {:?}", sink.catalog)
        };
        assert_eq!(uri, "https://catalog.example/api");
        assert_eq!(warehouse.as_deref(), Some("lake"));
        assert_eq!(credential.as_ref().map(|credential| credential.expose()), Some("spillway:s3cret"));
        assert_eq!(sink.table, "db.events");
        assert!(!format!("{:?}", sink.catalog).contains("s3cret"));
    }
}
