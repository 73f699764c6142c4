//! Firehose's S3 destination shapes (`ExtendedS3DestinationConfiguration`,
//! `S3DestinationConfiguration` and their `…Update` forms) turned into a spillway `StreamConfig`,
//! so an API-created stream runs through exactly the code a YAML stream does. What spillway cannot
//! do is refused with `InvalidArgumentException` naming it, never silently ignored.
//!
//! The destination is kept as the JSON object received (updates merged member by member, as
//! Firehose does for the same destination type) and converted again at every start, so the
//! `api_defaults` block in force applies.
//!
//! Must not: persist anything or start streams.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use spillway_sink_api::Compression;

use base64::Engine as _;

use crate::config::{
    BufferingConfig, Config, DynamicPartitioningConfig, ProcessingConfig, RecordDelimiter, RetryConfig, SourceConfig,
    StreamConfig,
};
use crate::processing::{DecompressFormat, SubRecordType, TransformConfig};
use crate::sinks::SinkConfig;
use crate::sources::direct_put::validation::Violations;
use crate::sources::direct_put::wire::ApiError;

/// Firehose's `CompressionFormat` enum.
const COMPRESSION_FORMATS: &[&str] = &["UNCOMPRESSED", "GZIP", "ZIP", "Snappy", "HADOOP_SNAPPY"];
const PROCESSOR_TYPES: &[&str] = &[
    "RecordDeAggregation",
    "Decompression",
    "CloudWatchLogProcessing",
    "Lambda",
    "MetadataExtraction",
    "AppendDelimiterToRecord",
];
/// Firehose's default active-partition quota.
const DEFAULT_MAX_ACTIVE_PARTITIONS: u32 = 500;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct S3DestinationIn {
    #[serde(rename = "RoleARN")]
    role_arn: Option<String>,
    #[serde(rename = "BucketARN")]
    bucket_arn: Option<String>,
    prefix: Option<String>,
    error_output_prefix: Option<String>,
    buffering_hints: Option<BufferingHintsIn>,
    compression_format: Option<String>,
    encryption_configuration: Option<Value>,
    #[serde(rename = "CloudWatchLoggingOptions")]
    _cloud_watch_logging_options: Option<Value>,
    processing_configuration: Option<ProcessingIn>,
    #[serde(rename = "S3BackupMode")]
    s3_backup_mode: Option<String>,
    data_format_conversion_configuration: Option<Value>,
    dynamic_partitioning_configuration: Option<DynamicPartitioningIn>,
    file_extension: Option<String>,
    custom_time_zone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BufferingHintsIn {
    #[serde(rename = "SizeInMBs")]
    size_in_mbs: Option<i64>,
    interval_in_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProcessingIn {
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) processors: Vec<ProcessorIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProcessorIn {
    #[serde(rename = "Type")]
    pub(super) kind: String,
    #[serde(default)]
    parameters: Vec<ParameterIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ParameterIn {
    parameter_name: String,
    parameter_value: String,
}

impl ProcessorIn {
    fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.iter().find(|parameter| parameter.parameter_name == name).map(|p| p.parameter_value.as_str())
    }
}

/// The record transforms Firehose's processors ask for, in the order Firehose applies them:
/// `Decompression` (with `CloudWatchLogProcessing`: one `cloudwatch_logs` transform), then
/// `RecordDeAggregation`, then `Lambda`.
pub(super) fn record_transforms(processors: &[ProcessorIn], config: &Config) -> Result<Vec<TransformConfig>, ApiError> {
    let find = |kind: &str| processors.iter().find(|processor| processor.kind == kind);
    let invalid = |message: String| ApiError::invalid_argument(message);
    let mut transforms = Vec::new();
    let cloudwatch = find("CloudWatchLogProcessing");
    match (find("Decompression"), cloudwatch) {
        (Some(decompression), _) if decompression.parameter("CompressionFormat").is_some_and(|f| f != "GZIP") => {
            return Err(invalid("Decompression supports CompressionFormat GZIP only".into()));
        }
        (Some(_), Some(cloudwatch)) => {
            let data_message_extraction = match cloudwatch.parameter("DataMessageExtraction") {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(invalid(format!("DataMessageExtraction must be true or false, not {other}")));
                }
            };
            transforms.push(TransformConfig::CloudwatchLogs { data_message_extraction });
        }
        (Some(_), None) => transforms.push(TransformConfig::Decompress { format: DecompressFormat::Gzip }),
        (None, Some(_)) => return Err(invalid("CloudWatchLogProcessing needs a Decompression processor".into())),
        (None, None) => {}
    }
    if let Some(deaggregation) = find("RecordDeAggregation") {
        let (sub_record_type, delimiter) = match deaggregation.parameter("SubRecordType") {
            Some("JSON") | None => (SubRecordType::Json, None),
            Some("DELIMITED") => {
                let encoded = deaggregation
                    .parameter("Delimiter")
                    .ok_or_else(|| invalid("RecordDeAggregation of DELIMITED sub-records needs a Delimiter".into()))?;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| invalid(format!("Delimiter {encoded} is not base64 of UTF-8 text")))?;
                (SubRecordType::Delimited, Some(decoded))
            }
            Some(other) => return Err(invalid(format!("SubRecordType must be JSON or DELIMITED, not {other}"))),
        };
        transforms.push(TransformConfig::RecordDeaggregation { sub_record_type, delimiter });
    }
    if let Some(lambda) = find("Lambda") {
        let arn = lambda.parameter("LambdaArn").ok_or_else(|| invalid("Lambda needs a LambdaArn parameter".into()))?;
        let Some(defaults) = &config.api_defaults.lambda else {
            return Err(invalid(format!(
                "the Lambda processor ({arn}) needs api_defaults.lambda.url in spillway's configuration (the HTTP endpoint a LambdaArn is invoked at)"
            )));
        };
        let url = defaults.url_for(arn).ok_or_else(|| {
            invalid(format!(
                "LambdaArn {arn} is not a function ARN (arn:aws:lambda:<region>:<account>:function:<name>)"
            ))
        })?;
        let number = |name: &str| -> Result<Option<f64>, ApiError> {
            lambda
                .parameter(name)
                .map(|value| value.parse::<f64>().map_err(|_| invalid(format!("{name} must be a number, not {value}"))))
                .transpose()
        };
        let mut function = serde_json::json!({ "type": "lambda", "url": url, "function_arn": arn });
        for (parameter, field) in [
            ("NumberOfRetries", "number_of_retries"),
            ("BufferSizeInMBs", "buffer_size_mib"),
            ("BufferIntervalInSeconds", "buffer_interval_seconds"),
        ] {
            if let Some(value) = number(parameter)? {
                function[field] = if field == "buffer_size_mib" { value.into() } else { (value as u64).into() };
            }
        }
        let mut transform: TransformConfig = serde_json::from_value(function)
            .map_err(|error| invalid(format!("cannot make a lambda transform for {arn}: {error}")))?;
        if let TransformConfig::Lambda(lambda) = &mut transform {
            lambda.headers = defaults.headers.clone();
        }
        transforms.push(transform);
    }
    Ok(transforms)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DynamicPartitioningIn {
    enabled: Option<bool>,
    retry_options: Option<RetryOptionsIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetryOptionsIn {
    duration_in_seconds: Option<i64>,
}

/// The bucket name of an S3 bucket ARN (`arn:<partition>:s3:::<bucket>`), when it follows S3's
/// naming rules. The name may become a folder (`api_defaults.s3.url: file://./buckets/{bucket}`),
/// so anything else (`..`, `%2e`, a slash) is refused.
pub fn bucket_of_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (scheme, _partition, service, region, account, resource) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_bucket_arn = scheme == "arn" && service == "s3" && region.is_empty() && account.is_empty();
    (is_bucket_arn && is_valid_bucket_name(resource)).then_some(resource)
}

/// S3's bucket naming rules: 3-63 characters of lowercase letters, digits, dots and hyphens,
/// beginning and ending with a letter or digit, no two adjacent dots.
fn is_valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|byte| edge(byte) || matches!(byte, b'.' | b'-'))
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && !name.contains("..")
}

/// Merge an `…DestinationUpdate` into the stored destination, member by member.
pub fn merge_update(stored: &Value, update: &Value) -> Value {
    let mut merged: Map<String, Value> = stored.as_object().cloned().unwrap_or_default();
    if let Some(members) = update.as_object() {
        for (key, value) in members {
            merged.insert(key.clone(), value.clone());
        }
    }
    Value::Object(merged)
}

/// The source of an API-created stream: Direct PUT, or, for `KinesisStreamAsSource`, the Kinesis
/// source reading the `KinesisStreamSourceConfiguration`'s stream from `LATEST` (as Firehose
/// does), through the standard AWS configuration (`AWS_ENDPOINT_URL_KINESIS` /
/// `AWS_ENDPOINT_URL`, the credential chain), by name in the ARN's region.
pub fn source_config(kinesis_source: Option<&Value>) -> Result<SourceConfig, ApiError> {
    let Some(kinesis_source) = kinesis_source else {
        return Ok(SourceConfig::default());
    };
    let member = "kinesisStreamSourceConfiguration";
    let stream_arn = kinesis_source.get("KinesisStreamARN").and_then(Value::as_str);
    let role_arn = kinesis_source.get("RoleARN").and_then(Value::as_str);
    let mut violations = Violations::new();
    violations.required(stream_arn, &format!("{member}.kinesisStreamARN"));
    violations.required(role_arn, &format!("{member}.roleARN"));
    violations.finish()?;
    // Read by name in the ARN's region (the credentials' account): every Kinesis API and
    // emulator (kinesalite, LocalStack) takes a name, while `StreamARN` parameters are newer.
    let stream_arn = stream_arn.unwrap_or_default();
    let parts: Vec<&str> = stream_arn.splitn(6, ':').collect();
    let (region, stream_name) = match parts.as_slice() {
        ["arn", _, "kinesis", region, _, resource] if !region.is_empty() => {
            (*region, resource.strip_prefix("stream/").unwrap_or_default())
        }
        _ => ("", ""),
    };
    if stream_name.is_empty() || stream_name.contains('/') {
        return Err(ApiError::invalid_argument(format!(
            "KinesisStreamARN {stream_arn} is not a Kinesis stream ARN (arn:aws:kinesis:<region>:<account>:stream/<name>)"
        )));
    }
    let source = serde_json::json!({ "type": "kinesis", "stream_name": stream_name, "region": region });
    let source: SourceConfig = serde_json::from_value(source)
        .map_err(|error| ApiError::invalid_argument(format!("cannot read {member}: {error}")))?;
    let problems = source.descriptor().validate();
    if let Some((field, message)) = problems.first() {
        return Err(ApiError::invalid_argument(format!("KinesisStreamARN: {field}: {message}")));
    }
    Ok(source)
}

/// The stream configuration for an API-created stream named `name` whose destination is
/// `destination` (an `ExtendedS3DestinationConfiguration` object), under `config`'s defaults.
/// `member` names the destination in validation messages (`extendedS3DestinationConfiguration`).
pub fn stream_config(
    config: &Config,
    name: &str,
    destination: &Value,
    member: &str,
    source: SourceConfig,
) -> Result<StreamConfig, ApiError> {
    let parsed: S3DestinationIn = serde_json::from_value(destination.clone())
        .map_err(|error| ApiError::serialization(format!("malformed {member}: {error}")))?;

    let mut violations = Violations::new();
    violations.required(parsed.role_arn.as_ref(), &format!("{member}.roleARN"));
    violations.required(parsed.bucket_arn.as_ref(), &format!("{member}.bucketARN"));
    let hints = parsed.buffering_hints.unwrap_or_default();
    if let Some(size) = hints.size_in_mbs {
        violations.range(size, &format!("{member}.bufferingHints.sizeInMBs"), 1, 128);
    }
    if let Some(interval) = hints.interval_in_seconds {
        violations.range(interval, &format!("{member}.bufferingHints.intervalInSeconds"), 0, 900);
    }
    if let Some(format) = &parsed.compression_format {
        violations.one_of(format, &format!("{member}.compressionFormat"), COMPRESSION_FORMATS);
    }
    for (field, value) in [("prefix", &parsed.prefix), ("errorOutputPrefix", &parsed.error_output_prefix)] {
        if let Some(value) = value {
            violations.length(value, &format!("{member}.{field}"), 0, 1024);
        }
    }
    if let Some(processing) = &parsed.processing_configuration {
        for (index, processor) in processing.processors.iter().enumerate() {
            violations.one_of(
                &processor.kind,
                &format!("{member}.processingConfiguration.processors.{}.member.type", index + 1),
                PROCESSOR_TYPES,
            );
        }
    }
    violations.finish()?;

    let unsupported = |what: &str| ApiError::invalid_argument(format!("{what} is not supported by spillway"));
    let bucket_arn = parsed.bucket_arn.as_deref().unwrap_or_default();
    let Some(bucket) = bucket_of_arn(bucket_arn) else {
        return Err(ApiError::invalid_argument(format!(
            "BucketARN {bucket_arn} is not an S3 bucket ARN (arn:aws:s3:::<bucket>)"
        )));
    };
    // Every value of the enum (checked above) has a compression.
    let format = parsed.compression_format.as_deref().unwrap_or("UNCOMPRESSED");
    let compression = Compression::from_firehose_format(format)
        .ok_or_else(|| unsupported(&format!("CompressionFormat {format}")))?
        .name();
    if let Some(encryption) = &parsed.encryption_configuration
        && encryption.get("KMSEncryptionConfig").is_some()
    {
        return Err(unsupported(
            "EncryptionConfiguration.KMSEncryptionConfig (objects are written with the bucket's default encryption)",
        ));
    }
    if parsed.s3_backup_mode.as_deref().is_some_and(|mode| mode != "Disabled") {
        return Err(unsupported("S3BackupMode Enabled"));
    }
    if parsed
        .data_format_conversion_configuration
        .as_ref()
        .is_some_and(|conversion| conversion.get("Enabled").and_then(Value::as_bool).unwrap_or(true))
    {
        return Err(unsupported("DataFormatConversionConfiguration"));
    }
    let has_expressions = parsed.prefix.as_deref().is_some_and(|prefix| prefix.contains("!{"));
    if has_expressions && parsed.error_output_prefix.as_deref().is_none_or(str::is_empty) {
        // Firehose's rule (developer guide, s3-prefixes): "ErrorOutputPrefix can't be null when
        // Prefix contains expressions".
        return Err(ApiError::invalid_argument("ErrorOutputPrefix cannot be null when Prefix contains expressions"));
    }

    let mut record_delimiter = RecordDelimiter::None;
    let mut partition_keys = BTreeMap::new();
    let processing = parsed.processing_configuration.unwrap_or_default();
    let mut transforms = Vec::new();
    if processing.enabled.unwrap_or(!processing.processors.is_empty()) {
        for processor in &processing.processors {
            match processor.kind.as_str() {
                "AppendDelimiterToRecord" => record_delimiter = RecordDelimiter::Newline,
                "MetadataExtraction" => {
                    let query = processor.parameter("MetadataExtractionQuery").ok_or_else(|| {
                        ApiError::invalid_argument("MetadataExtraction needs a MetadataExtractionQuery parameter")
                    })?;
                    partition_keys = parse_metadata_query(query).map_err(ApiError::invalid_argument)?;
                }
                _ => {}
            }
        }
        transforms = record_transforms(&processing.processors, config)?;
    }
    let dynamic = parsed.dynamic_partitioning_configuration.unwrap_or_default();
    let dynamic_partitioning = if dynamic.enabled.unwrap_or(false) {
        let from_lambda = transforms.iter().any(|transform| matches!(transform, TransformConfig::Lambda(_)));
        if partition_keys.is_empty() && !from_lambda {
            return Err(ApiError::invalid_argument(
                "DynamicPartitioningConfiguration is enabled but neither a MetadataExtraction processor nor a Lambda processor gives partition keys",
            ));
        }
        let retry = dynamic.retry_options.and_then(|options| options.duration_in_seconds).unwrap_or(300);
        Some(DynamicPartitioningConfig {
            enabled: true,
            keys: partition_keys,
            max_active_partitions: DEFAULT_MAX_ACTIVE_PARTITIONS,
            retry_duration_seconds: u64::try_from(retry).unwrap_or(0),
        })
    } else {
        None
    };

    let defaults = &config.api_defaults.s3;
    let mut sink = defaults.connection_fields();
    if defaults.url_for(bucket).starts_with("file://") {
        // Connection fields apply to s3:// only; a local folder takes none of them.
        sink.clear();
    }
    sink.insert("type".into(), "s3".into());
    sink.insert("url".into(), defaults.url_for(bucket).into());
    sink.insert("compression".into(), compression.into());
    for (key, value) in [
        ("prefix", &parsed.prefix),
        ("error_output_prefix", &parsed.error_output_prefix),
        ("file_extension", &parsed.file_extension),
        ("custom_time_zone", &parsed.custom_time_zone),
    ] {
        // Firehose treats an empty prefix (or time zone) as none.
        if let Some(value) = value.as_ref().filter(|value| !value.is_empty() || key == "file_extension") {
            sink.insert(key.into(), value.clone().into());
        }
    }
    let sink: SinkConfig = serde_json::from_value(Value::Object(sink))
        .map_err(|error| ApiError::invalid_argument(format!("cannot make a sink for {bucket_arn}: {error}")))?;
    let stream = StreamConfig {
        name: name.to_string(),
        source,
        processing: ProcessingConfig { record_delimiter: Some(record_delimiter), dynamic_partitioning, transforms },
        buffering: BufferingConfig {
            size_mib: hints.size_in_mbs.map_or(5, |size| size as u64),
            interval_seconds: hints.interval_in_seconds.map_or(300, |interval| interval as u64),
        },
        sink,
        retry: RetryConfig::default(),
    };
    check_like_yaml(config, &stream)?;
    Ok(stream)
}

/// The same validation a YAML stream gets, its problems listed in one `InvalidArgumentException`.
pub(super) fn check_like_yaml(config: &Config, stream: &StreamConfig) -> Result<(), ApiError> {
    let alone = Config { streams: vec![stream.clone()], ..config.clone() };
    let problems: Vec<String> = alone
        .validate()
        .into_iter()
        .filter_map(|problem| {
            let field = problem.path.strip_prefix("streams[0].")?;
            Some(format!("{field}: {}", problem.message))
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid_argument(problems.join("; ")))
}

/// Keys of a `MetadataExtractionQuery` written as a jq object of key/expression pairs,
/// `{customer_id: .customer_id, year: .ts | strftime("%Y")}`, split at top-level commas.
fn parse_metadata_query(query: &str) -> Result<BTreeMap<String, String>, String> {
    let invalid = || {
        format!(
            "MetadataExtractionQuery {query} must be a jq object of key: expression pairs, e.g. {{id:.customer_id}}"
        )
    };
    let inner = query.trim().strip_prefix('{').and_then(|rest| rest.strip_suffix('}')).ok_or_else(invalid)?;
    let mut pairs = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut start) = (0i32, false, false, 0);
    for (index, c) in inner.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                pairs.push(&inner[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    pairs.push(&inner[start..]);
    let mut keys = BTreeMap::new();
    for pair in pairs {
        let (key, expression) = pair.split_once(':').ok_or_else(invalid)?;
        let key = key.trim().trim_matches('"');
        let expression = expression.trim();
        if key.is_empty() || expression.is_empty() {
            return Err(invalid());
        }
        keys.insert(key.to_string(), expression.to_string());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_arns() {
        assert_eq!(bucket_of_arn("arn:aws:s3:::my-bucket"), Some("my-bucket"));
        assert_eq!(bucket_of_arn("arn:aws-cn:s3:::b12"), Some("b12"));
        assert_eq!(bucket_of_arn("arn:aws:s3:::b/key"), None);
        assert_eq!(bucket_of_arn("arn:aws:iam::123:role/x"), None);
        assert_eq!(bucket_of_arn("s3://b"), None);
        // a bucket may become a folder: nothing that leaves it
        for bad in ["..", ".", "...", "a..b", "%2e%2e", "UPPER", "-abc", "ab"] {
            assert_eq!(bucket_of_arn(&format!("arn:aws:s3:::{bad}")), None, "{bad}");
        }
        assert_eq!(bucket_of_arn("arn:aws:s3:::my.logs-2026"), Some("my.logs-2026"));
    }

    #[test]
    fn metadata_queries_split_at_top_level_commas() {
        let keys =
            parse_metadata_query(r#"{customer_id:.customer_id, year: .ts | strftime("%Y,%m")}"#).expect("parses");
        assert_eq!(keys.get("customer_id").map(String::as_str), Some(".customer_id"));
        assert_eq!(keys.get("year").map(String::as_str), Some(r#".ts | strftime("%Y,%m")"#));
        assert!(parse_metadata_query(".a").is_err());
    }

    fn config() -> Config {
        crate::config::parse_str(
            "api_defaults: { s3: { url: 'file://./buckets/{bucket}' } }\n",
            std::path::Path::new("t.yaml"),
        )
        .expect("config")
    }

    #[test]
    fn an_extended_s3_destination_becomes_a_local_stream() {
        let destination = serde_json::json!({
            "RoleARN": "arn:aws:iam::000000000000:role/firehose",
            "BucketARN": "arn:aws:s3:::logs",
            "Prefix": "p/",
            "BufferingHints": { "SizeInMBs": 1, "IntervalInSeconds": 60 },
            "CompressionFormat": "GZIP",
            "ProcessingConfiguration": { "Enabled": true, "Processors": [{ "Type": "AppendDelimiterToRecord" }] },
            "CloudWatchLoggingOptions": { "Enabled": false },
            "S3BackupMode": "Disabled",
        });
        let stream =
            stream_config(&config(), "s", &destination, "extendedS3DestinationConfiguration", SourceConfig::default())
                .expect("converts");
        let SinkConfig::S3(s3) = &stream.sink else { panic!("an s3 sink") };
        assert_eq!(s3.url, "file://./buckets/logs");
        assert_eq!(s3.prefix.as_deref(), Some("p/"));
        assert_eq!(stream.record_delimiter(), RecordDelimiter::Newline);
        assert_eq!((stream.buffering.size_mib, stream.buffering.interval_seconds), (1, 60));
    }

    #[test]
    fn processors_become_transforms_in_firehose_s_order() {
        let processor = |kind: &str, parameters: &[(&str, &str)]| {
            let parameters: Vec<Value> = parameters
                .iter()
                .map(|(name, value)| serde_json::json!({ "ParameterName": name, "ParameterValue": value }))
                .collect();
            serde_json::json!({ "Type": kind, "Parameters": parameters })
        };
        let with_processors = |processors: Vec<Value>| {
            serde_json::json!({
                "RoleARN": "arn:aws:iam::0:role/r", "BucketARN": "arn:aws:s3:::logs",
                "ProcessingConfiguration": { "Enabled": true, "Processors": processors },
            })
        };
        let lambda_arn = "arn:aws:lambda:us-east-1:123456789012:function:enrich:live";
        let destination = with_processors(vec![
            processor("Lambda", &[("LambdaArn", lambda_arn), ("NumberOfRetries", "5"), ("BufferSizeInMBs", "0.5")]),
            processor("RecordDeAggregation", &[("SubRecordType", "DELIMITED"), ("Delimiter", "IyMjIw==")]),
            processor("CloudWatchLogProcessing", &[("DataMessageExtraction", "false")]),
            processor("Decompression", &[("CompressionFormat", "GZIP")]),
        ]);
        let with_lambda = crate::config::parse_str(
            "api_defaults:\n  s3: { url: 'file://./buckets/{bucket}' }\n  lambda: { url: 'http://127.0.0.1:9001/fn/{function}' }\n",
            std::path::Path::new("t.yaml"),
        )
        .expect("config");
        let stream = stream_config(&with_lambda, "s", &destination, "d", SourceConfig::default()).unwrap();
        let transforms = &stream.processing.transforms;
        assert_eq!(transforms.len(), 3, "{transforms:?}");
        assert!(matches!(transforms[0], TransformConfig::CloudwatchLogs { data_message_extraction: false }));
        assert!(matches!(
            &transforms[1],
            TransformConfig::RecordDeaggregation { sub_record_type: SubRecordType::Delimited, delimiter: Some(d) } if d == "####"
        ));
        let TransformConfig::Lambda(lambda) = &transforms[2] else { panic!("{transforms:?}") };
        assert_eq!(lambda.url, "http://127.0.0.1:9001/fn/enrich:live");
        assert_eq!(lambda.function_arn.as_deref(), Some(lambda_arn));
        assert_eq!((lambda.number_of_retries, lambda.buffer_size_mib), (5, 0.5));

        // Dynamic partitioning on the Lambda's keys alone (`partitionKeyFromLambda`).
        let mut by_lambda = with_processors(vec![processor("Lambda", &[("LambdaArn", lambda_arn)])]);
        by_lambda["DynamicPartitioningConfiguration"] = serde_json::json!({ "Enabled": true });
        by_lambda["Prefix"] = "team=!{partitionKeyFromLambda:team}/".into();
        by_lambda["ErrorOutputPrefix"] = "errors/!{firehose:error-output-type}/".into();
        let stream = stream_config(&with_lambda, "s", &by_lambda, "d", SourceConfig::default()).unwrap();
        let partitioning = stream.processing.dynamic_partitioning.expect("enabled");
        assert!(partitioning.enabled && partitioning.keys.is_empty());
        by_lambda["ProcessingConfiguration"]["Processors"] = serde_json::json!([]);
        let error = stream_config(&with_lambda, "s", &by_lambda, "d", SourceConfig::default()).expect_err("no keys");
        assert!(error.message().contains("neither a MetadataExtraction processor nor a Lambda processor"));

        // Refused, each with its reason.
        let refused = |config: &Config, processors: Vec<Value>| {
            let error = stream_config(config, "s", &with_processors(processors), "d", SourceConfig::default());
            error.expect_err("refused").message().to_string()
        };
        let lambda = processor("Lambda", &[("LambdaArn", lambda_arn)]);
        assert!(refused(&config(), vec![lambda]).contains("needs api_defaults.lambda.url"));
        let not_a_function = processor("Lambda", &[("LambdaArn", "arn:aws:s3:::bucket")]);
        assert!(refused(&with_lambda, vec![not_a_function]).contains("is not a function ARN"));
        let alone = processor("CloudWatchLogProcessing", &[("DataMessageExtraction", "true")]);
        assert!(refused(&config(), vec![alone]).contains("needs a Decompression processor"));
        let bad_delimiter = processor("RecordDeAggregation", &[("SubRecordType", "DELIMITED"), ("Delimiter", "*")]);
        assert!(refused(&config(), vec![bad_delimiter]).contains("is not base64"));
    }

    #[test]
    fn unsupported_and_invalid_members_are_named() {
        let base = serde_json::json!({ "RoleARN": "arn:aws:iam::0:role/r", "BucketARN": "arn:aws:s3:::logs" });
        let with = |key: &str, value: Value| merge_update(&base, &serde_json::json!({ key: value }));
        for format in ["ZIP", "Snappy", "HADOOP_SNAPPY"] {
            let created =
                stream_config(&config(), "s", &with("CompressionFormat", format.into()), "d", SourceConfig::default());
            assert!(created.is_ok(), "{format}");
        }
        let error =
            stream_config(&config(), "s", &with("CompressionFormat", "BROTLI".into()), "d", SourceConfig::default())
                .expect_err("enum");
        assert_eq!(error.code(), "ValidationException");
        assert!(error.message().contains("at 'd.compressionFormat'"), "{}", error.message());
        let error = stream_config(&config(), "s", &serde_json::json!({ "RoleARN": "r" }), "d", SourceConfig::default())
            .expect_err("required");
        assert!(error.message().contains("Value null at 'd.bucketARN'"), "{}", error.message());
    }
}
