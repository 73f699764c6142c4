//! A stream's processing in Firehose's `ProcessingConfiguration` shape, for
//! `DescribeDeliveryStream` (the reverse of [`super::s3_destination`]'s reading of processors).
//!
//! Must not: know any destination; each sink's descriptor places the value in its description.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::config::{RecordDelimiter, StreamConfig};
use crate::processing::{SubRecordType, TransformConfig};

/// Firehose's `ProcessingConfiguration` for what spillway does to records: `AppendDelimiterToRecord`
/// for `record_delimiter: newline`, `MetadataExtraction` (jq) for dynamic partitioning keys.
pub fn processing_configuration(stream: &StreamConfig) -> Value {
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
    if stream.record_delimiter() != RecordDelimiter::None {
        processors.push(json!({ "Type": "AppendDelimiterToRecord", "Parameters": [] }));
    }
    processors.extend(stream.processing.transforms.iter().flat_map(firehose_processors));
    json!({ "Enabled": !processors.is_empty(), "Processors": processors })
}

/// The Firehose processors a transform is (none for `sql`, nor for `jq`, which Firehose has only as
/// `MetadataExtraction` for partition keys).
fn firehose_processors(transform: &TransformConfig) -> Vec<Value> {
    let processor = |kind: &str, parameters: &[(&str, String)]| {
        let parameters: Vec<Value> =
            parameters.iter().map(|(name, value)| json!({ "ParameterName": name, "ParameterValue": value })).collect();
        json!({ "Type": kind, "Parameters": parameters })
    };
    let gzip = || processor("Decompression", &[("CompressionFormat", "GZIP".into())]);
    match transform {
        // Firehose has no SQL processor (Kinesis Data Analytics was a separate service).
        TransformConfig::Jq { .. } | TransformConfig::Sql(_) => Vec::new(),
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
