//! Firehose's HTTP endpoint destination shapes (`HttpEndpointDestinationConfiguration` and
//! `HttpEndpointDestinationUpdate`) turned into a spillway `StreamConfig` with an
//! `http_endpoint` sink, so an API-created stream runs through exactly the code a YAML stream
//! does. Members follow botocore's Firehose model (`EndpointConfiguration` Url / Name /
//! AccessKey, `RequestConfiguration` ContentEncoding + CommonAttributes, `BufferingHints` 1–64 MB
//! and 0–900 s, `RetryOptions` 0–7200 s, `S3BackupMode` FailedDataOnly | AllData,
//! `S3Configuration` for the backup); what spillway cannot do is refused by name.
//!
//! The destination is kept as received, AccessKey included (as Firehose keeps it, to send it);
//! `DescribeDeliveryStream` describes the sink, which never shows the key.
//!
//! Must not: persist anything or start streams.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use spillway_sink_api::Compression;

use super::s3_destination::{ProcessingIn, bucket_of_arn, check_like_yaml, record_transforms};
use crate::config::{
    BufferingConfig, Config, ProcessingConfig, RecordDelimiter, RetryConfig, SourceConfig, StreamConfig,
};
use crate::sinks::SinkConfig;
use crate::sources::direct_put::validation::Violations;
use crate::sources::direct_put::wire::ApiError;

const CONTENT_ENCODINGS: &[&str] = &["NONE", "GZIP"];
const BACKUP_MODES: &[&str] = &["FailedDataOnly", "AllData"];
const COMPRESSION_FORMATS: &[&str] = &["UNCOMPRESSED", "GZIP", "ZIP", "Snappy", "HADOOP_SNAPPY"];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HttpEndpointIn {
    endpoint_configuration: Option<EndpointIn>,
    buffering_hints: Option<HintsIn>,
    #[serde(rename = "CloudWatchLoggingOptions")]
    _cloud_watch_logging_options: Option<Value>,
    request_configuration: Option<RequestIn>,
    processing_configuration: Option<ProcessingIn>,
    #[serde(rename = "RoleARN")]
    _role_arn: Option<String>,
    retry_options: Option<RetryIn>,
    #[serde(rename = "S3BackupMode")]
    s3_backup_mode: Option<String>,
    #[serde(rename = "S3Configuration")]
    s3_configuration: Option<S3In>,
    secrets_manager_configuration: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointIn {
    url: Option<String>,
    name: Option<String>,
    access_key: Option<String>,
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
struct RequestIn {
    content_encoding: Option<String>,
    #[serde(default)]
    common_attributes: Vec<AttributeIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttributeIn {
    attribute_name: String,
    attribute_value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetryIn {
    duration_in_seconds: Option<i64>,
}

/// `S3Configuration`: the backup bucket (`S3DestinationConfiguration`'s members).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct S3In {
    #[serde(rename = "RoleARN")]
    pub(super) role_arn: Option<String>,
    #[serde(rename = "BucketARN")]
    pub(super) bucket_arn: Option<String>,
    prefix: Option<String>,
    error_output_prefix: Option<String>,
    #[serde(rename = "BufferingHints")]
    _buffering_hints: Option<Value>,
    compression_format: Option<String>,
    encryption_configuration: Option<Value>,
    #[serde(rename = "CloudWatchLoggingOptions")]
    _cloud_watch_logging_options: Option<Value>,
}

/// The stream configuration for an API-created stream named `name` whose destination is
/// `destination` (an `HttpEndpointDestinationConfiguration` object, updates merged in), under
/// `config`'s defaults. `member` names the destination in validation messages.
pub fn stream_config(
    config: &Config,
    name: &str,
    destination: &Value,
    member: &str,
    source: SourceConfig,
) -> Result<StreamConfig, ApiError> {
    let parsed: HttpEndpointIn = serde_json::from_value(destination.clone())
        .map_err(|error| ApiError::serialization(format!("malformed {member}: {error}")))?;
    let endpoint = parsed.endpoint_configuration.unwrap_or_default();
    let s3 = parsed.s3_configuration;
    let hints = parsed.buffering_hints.unwrap_or_default();
    let request = parsed.request_configuration.unwrap_or_default();
    let retry = parsed.retry_options.unwrap_or_default();

    let mut violations = Violations::new();
    let endpoint_member = format!("{member}.endpointConfiguration");
    violations.required(endpoint.url.as_ref(), &format!("{endpoint_member}.url"));
    violations.required(s3.as_ref(), &format!("{member}.s3Configuration"));
    if let Some(url) = &endpoint.url {
        violations.length(url, &format!("{endpoint_member}.url"), 1, 1000);
    }
    if let Some(endpoint_name) = &endpoint.name {
        violations.length(endpoint_name, &format!("{endpoint_member}.name"), 1, 256);
    }
    if let Some(key) = &endpoint.access_key {
        violations.length(key, &format!("{endpoint_member}.accessKey"), 0, 4096);
    }
    if let Some(size) = hints.size_in_mbs {
        violations.range(size, &format!("{member}.bufferingHints.sizeInMBs"), 1, 64);
    }
    if let Some(interval) = hints.interval_in_seconds {
        violations.range(interval, &format!("{member}.bufferingHints.intervalInSeconds"), 0, 900);
    }
    if let Some(encoding) = &request.content_encoding {
        violations.one_of(encoding, &format!("{member}.requestConfiguration.contentEncoding"), CONTENT_ENCODINGS);
    }
    if let Some(duration) = retry.duration_in_seconds {
        violations.range(duration, &format!("{member}.retryOptions.durationInSeconds"), 0, 7200);
    }
    if let Some(mode) = &parsed.s3_backup_mode {
        violations.one_of(mode, &format!("{member}.s3BackupMode"), BACKUP_MODES);
    }
    if let Some(s3) = &s3 {
        violations.required(s3.role_arn.as_ref(), &format!("{member}.s3Configuration.roleARN"));
        violations.required(s3.bucket_arn.as_ref(), &format!("{member}.s3Configuration.bucketARN"));
        if let Some(format) = &s3.compression_format {
            violations.one_of(format, &format!("{member}.s3Configuration.compressionFormat"), COMPRESSION_FORMATS);
        }
    }
    violations.finish()?;
    let invalid = |message: String| ApiError::invalid_argument(message);
    let attributes = &request.common_attributes;
    if attributes.len() > 50 {
        return Err(invalid(format!("CommonAttributes has {} entries; at most 50", attributes.len())));
    }
    let mut common_attributes = Map::new();
    for attribute in attributes {
        if common_attributes.insert(attribute.attribute_name.clone(), json!(attribute.attribute_value)).is_some() {
            return Err(invalid(format!("CommonAttributes names {} twice", attribute.attribute_name)));
        }
    }
    if parsed
        .secrets_manager_configuration
        .as_ref()
        .is_some_and(|secrets| secrets.get("Enabled").and_then(Value::as_bool).unwrap_or(true))
    {
        return Err(invalid(
            "SecretsManagerConfiguration is not supported by spillway (give EndpointConfiguration.AccessKey)".into(),
        ));
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
                "the {} processor is for S3 destinations; an HttpEndpoint destination does not take it",
                processor.kind
            )));
        }
        transforms = record_transforms(&processing.processors, config)?;
    }

    let mut sink = Map::new();
    sink.insert("type".into(), "http_endpoint".into());
    sink.insert("url".into(), endpoint.url.clone().unwrap_or_default().into());
    if let Some(endpoint_name) = &endpoint.name {
        sink.insert("name".into(), endpoint_name.clone().into());
    }
    if let Some(key) = endpoint.access_key.as_ref().filter(|key| !key.is_empty()) {
        sink.insert("access_key".into(), key.clone().into());
    }
    sink.insert("common_attributes".into(), Value::Object(common_attributes));
    let encoding = match request.content_encoding.as_deref() {
        Some("GZIP") => "gzip",
        _ => "none",
    };
    sink.insert("content_encoding".into(), encoding.into());
    let mode = match parsed.s3_backup_mode.as_deref() {
        Some("AllData") => "all",
        _ => "failed_only",
    };
    let backup_sink = backup_sink(config, s3.as_ref(), member)?;
    sink.insert("backup".into(), json!({ "mode": mode, "sink": backup_sink }));
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
            size_mib: hints.size_in_mbs.map_or(5, |size| size as u64),
            interval_seconds: hints.interval_in_seconds.map_or(300, |interval| interval as u64),
        },
        sink,
        retry: RetryConfig {
            duration_seconds: Some(retry.duration_in_seconds.map_or(300, |duration| duration as u64)),
        },
    };
    check_like_yaml(config, &stream)?;
    Ok(stream)
}

/// The backup's `s3` sink block from `S3Configuration`, through `api_defaults.s3`.
pub(super) fn backup_sink(config: &Config, s3: Option<&S3In>, member: &str) -> Result<Map<String, Value>, ApiError> {
    let invalid = |message: String| ApiError::invalid_argument(message);
    let s3 = s3.ok_or_else(|| invalid(format!("{member}.s3Configuration is required")))?;
    let bucket_arn = s3.bucket_arn.as_deref().unwrap_or_default();
    let bucket = bucket_of_arn(bucket_arn)
        .ok_or_else(|| invalid(format!("BucketARN {bucket_arn} is not an S3 bucket ARN (arn:aws:s3:::<bucket>)")))?;
    let format = s3.compression_format.as_deref().unwrap_or("UNCOMPRESSED");
    let compression = Compression::from_firehose_format(format)
        .ok_or_else(|| invalid(format!("CompressionFormat {format} is not supported by spillway")))?;
    if s3.encryption_configuration.as_ref().is_some_and(|encryption| encryption.get("KMSEncryptionConfig").is_some()) {
        return Err(invalid(
            "S3Configuration.EncryptionConfiguration.KMSEncryptionConfig is not supported by spillway (objects are written with the bucket's default encryption)".into(),
        ));
    }
    let defaults = &config.api_defaults.s3;
    let url = defaults.url_for(bucket);
    let mut sink = if url.starts_with("file://") { Map::new() } else { defaults.connection_fields() };
    sink.insert("url".into(), url.into());
    sink.insert("compression".into(), compression.name().into());
    for (key, value) in [("prefix", &s3.prefix), ("error_output_prefix", &s3.error_output_prefix)] {
        if let Some(value) = value.as_ref().filter(|value| !value.is_empty()) {
            sink.insert(key.into(), value.clone().into());
        }
    }
    Ok(sink)
}
