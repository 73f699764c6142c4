//! Firehose's Lambda transform protocol (`type: lambda` in `processing.transforms`): the
//! configuration (Firehose's `Lambda` processor parameters), the invocation event JSON, and the
//! reading and checking of the function's response.
//!
//! Event: `{"invocationId", "deliveryStreamArn", "region", "records": [{"recordId",
//! "approximateArrivalTimestamp", "data" (base64), <the record's source metadata>? }]}`, the last
//! being the object its source named (`"kinesisRecordMetadata": {…}`, see
//! [`crate::record_metadata`]). Response:
//! `{"records": [{"recordId", "result": "Ok" | "Dropped" | "ProcessingFailed", "data" (base64),
//! "metadata": {"partitionKeys": {k: v}, "otfMetadata": {…}}}]}`. Every record sent must come back exactly once; a
//! response that breaks that, is not JSON or has a bad result fails the whole invocation with
//! Firehose's error code.
//!
//! Must not: do I/O (the invoker in `pipeline::lambda` does the HTTP), read the clock, or know
//! about batches, partitions or sinks.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use spillway_sink_api::Secret;

use crate::record_metadata::RecordMetadata;

/// `errorCode`: the response is not JSON, or does not follow the status model (no `records`,
/// a `result` that is not `Ok` / `Dropped` / `ProcessingFailed`, data that is not base64).
pub const JSON_PROCESSING_EXCEPTION: &str = "Lambda.JsonProcessingException";
/// `errorCode`: a record sent was not returned.
pub const MISSING_RECORD_ID: &str = "Lambda.MissingRecordId";
/// `errorCode`: a record id was returned more than once.
pub const DUPLICATED_RECORD_ID: &str = "Lambda.DuplicatedRecordId";
/// `errorCode` (spillway's; Firehose's guide names none for it): every record sent came back,
/// plus records with ids that were never sent.
pub const UNKNOWN_RECORD_ID: &str = "Lambda.UnknownRecordId";
/// `errorCode` of a record the function marked `ProcessingFailed` (as Firehose writes it).
pub const PROCESSING_FAILED_STATUS: &str = "Lambda.ProcessingFailedStatus";
/// `errorMessage` of such a record.
pub const PROCESSING_FAILED_STATUS_MESSAGE: &str = "ProcessingFailed status set for record";
/// `errorCode`: the function answered with an error status (5xx, or a 4xx not listed below).
pub const FUNCTION_ERROR: &str = "Lambda.FunctionError";
/// `errorCode`: no answer within `timeout_seconds`.
pub const FUNCTION_TIMED_OUT: &str = "Lambda.FunctionTimedOut";
/// `errorCode`: HTTP 429.
pub const INVOKE_LIMIT_EXCEEDED: &str = "Lambda.InvokeLimitExceeded";
/// `errorCode`: HTTP 401 / 403.
pub const INVOKE_ACCESS_DENIED: &str = "Lambda.InvokeAccessDenied";
/// `errorCode`: HTTP 404.
pub const RESOURCE_NOT_FOUND: &str = "Lambda.ResourceNotFound";
/// `errorCode` (spillway's, as Firehose's HTTP endpoint destination names it): the function's
/// address could not be reached (connection refused or reset, DNS, TLS).
pub const CONNECTION_FAILED: &str = "Lambda.ConnectionFailed";

/// Lambda's synchronous invocation payload cap, for the request and the response.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// Firehose's processor buffer size hint range and default (MB; spillway counts MiB).
pub const BUFFER_SIZE_MIB_RANGE: (f64, f64) = (0.2, 3.0);
pub const DEFAULT_BUFFER_SIZE_MIB: f64 = 1.0;
/// Firehose's processor buffer interval hint range and default (seconds).
pub const BUFFER_INTERVAL_SECONDS_RANGE: (u64, u64) = (0, 900);
pub const DEFAULT_BUFFER_INTERVAL_SECONDS: u64 = 60;
/// `NumberOfRetries`: default 3; the console allows up to 300.
pub const MAX_NUMBER_OF_RETRIES: u32 = 300;
pub const DEFAULT_NUMBER_OF_RETRIES: u32 = 3;
/// A Lambda function runs at most 15 minutes; Firehose waits up to 5.
pub const TIMEOUT_SECONDS_RANGE: (u64, u64) = (1, 900);
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// `processing.transforms[] {type: lambda, …}`: Firehose's `Lambda` processor, calling any HTTP
/// function that speaks the event / response JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaConfig {
    /// Where the event is POSTed (`http://` or `https://`).
    pub url: String,
    /// Extra request headers, e.g. for auth (`Authorization: Bearer ${TOKEN}`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Firehose's `LambdaArn`: written as `lambdaArn` in `processing-failed` records (default:
    /// the url).
    #[serde(default)]
    pub function_arn: Option<String>,
    /// Firehose's `BufferSizeInMBs`: record bytes per invocation (0.2–3, default 1).
    #[serde(default = "default_buffer_size_mib")]
    pub buffer_size_mib: f64,
    /// Firehose's `BufferIntervalInSeconds`: the longest a record waits for its invocation
    /// (0–900, default 60).
    #[serde(default = "default_buffer_interval_seconds")]
    pub buffer_interval_seconds: u64,
    /// Firehose's `NumberOfRetries` for an invocation that fails (HTTP error, timeout,
    /// connection): 0–300, default 3.
    #[serde(default = "default_number_of_retries")]
    pub number_of_retries: u32,
    /// How long one attempt may take (1–900 s, default 300).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_buffer_size_mib() -> f64 {
    DEFAULT_BUFFER_SIZE_MIB
}
fn default_buffer_interval_seconds() -> u64 {
    DEFAULT_BUFFER_INTERVAL_SECONDS
}
fn default_number_of_retries() -> u32 {
    DEFAULT_NUMBER_OF_RETRIES
}
fn default_timeout_seconds() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

impl LambdaConfig {
    /// Every problem, as (field, message); pure.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => problems.push(("url", format!("must be http:// or https:// (got {}://)", url.scheme()))),
            Err(error) => problems.push(("url", format!("is not a URL: {error}"))),
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(("headers", format!("`{name}` is not a valid header name")));
            }
            if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                problems.push(("headers", format!("the value of `{name}` is not a valid header value")));
            }
        }
        let (low, high) = BUFFER_SIZE_MIB_RANGE;
        if !(low..=high).contains(&self.buffer_size_mib) {
            problems
                .push(("buffer_size_mib", format!("must be between {low} and {high} (got {})", self.buffer_size_mib)));
        }
        let (low, high) = BUFFER_INTERVAL_SECONDS_RANGE;
        if !(low..=high).contains(&self.buffer_interval_seconds) {
            problems.push((
                "buffer_interval_seconds",
                format!("must be between {low} and {high} (got {})", self.buffer_interval_seconds),
            ));
        }
        if self.number_of_retries > MAX_NUMBER_OF_RETRIES {
            problems.push((
                "number_of_retries",
                format!("must be between 0 and {MAX_NUMBER_OF_RETRIES} (got {})", self.number_of_retries),
            ));
        }
        let (low, high) = TIMEOUT_SECONDS_RANGE;
        if !(low..=high).contains(&self.timeout_seconds) {
            problems
                .push(("timeout_seconds", format!("must be between {low} and {high} (got {})", self.timeout_seconds)));
        }
        problems
    }

    /// The size hint in bytes.
    pub fn buffer_size_bytes(&self) -> usize {
        (self.buffer_size_mib * (1u64 << 20) as f64) as usize
    }

    /// `lambdaArn` of error records.
    pub fn lambda_arn(&self) -> &str {
        self.function_arn.as_deref().unwrap_or(&self.url)
    }
}

/// One record of an invocation event.
pub struct EventRecord<'a> {
    pub record_id: &'a str,
    pub approximate_arrival_timestamp: i64,
    pub data: &'a [u8],
    /// The record's source metadata as its event member ([`metadata_member`]).
    pub metadata_member: Option<&'a [u8]>,
}

/// A record's source metadata as a member of its event record, `"kinesisRecordMetadata":{…}`:
/// rendered once per record, then copied into each invocation that sends it.
pub fn metadata_member(metadata: &RecordMetadata) -> Vec<u8> {
    let mut member = Vec::with_capacity(64);
    write_json(&mut member, &metadata.object);
    member.push(b':');
    write_json(&mut member, &metadata.to_json());
    member
}

/// The invocation event's JSON body, written straight into one buffer sized for it: each
/// record's base64 goes in place, with no `String` per record and no escape scan (the base64
/// alphabet needs none). Ids, names and metadata go through serde_json's escaping.
pub fn encode_event(
    invocation_id: &str,
    delivery_stream_arn: &str,
    region: &str,
    records: &[EventRecord<'_>],
) -> Vec<u8> {
    let capacity = 128
        + invocation_id.len()
        + delivery_stream_arn.len()
        + region.len()
        + records
            .iter()
            .map(|record| event_record_len(record.data.len(), record.metadata_member.map_or(0, <[u8]>::len)))
            .sum::<usize>();
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(b"{\"invocationId\":");
    write_json(&mut out, &invocation_id);
    out.extend_from_slice(b",\"deliveryStreamArn\":");
    write_json(&mut out, &delivery_stream_arn);
    out.extend_from_slice(b",\"region\":");
    write_json(&mut out, &region);
    out.extend_from_slice(b",\"records\":[");
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"recordId\":");
        write_json(&mut out, &record.record_id);
        out.extend_from_slice(b",\"approximateArrivalTimestamp\":");
        write_json(&mut out, &record.approximate_arrival_timestamp);
        // Firehose names an MSK record's bytes `kafkaRecordValue` (in the answer too).
        let msk = record.metadata_member.is_some_and(|member| member.starts_with(MSK_MEMBER));
        out.extend_from_slice(if msk { b",\"kafkaRecordValue\":\"" } else { b",\"data\":\"" });
        base64_simd::STANDARD.encode_append(record.data, &mut out);
        out.push(b'"');
        if let Some(member) = record.metadata_member {
            out.push(b',');
            out.extend_from_slice(member);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// The start of an MSK record's metadata member (see [`metadata_member`]).
const MSK_MEMBER: &[u8] = b"\"mskRecordMetadata\":";

/// `value` as JSON (serde_json's escaping) at the end of `out`.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Strings, numbers and JSON values into a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// The event size of one record beyond its data's base64, for the payload cap: its id, its
/// timestamp and the JSON punctuation, generously.
pub const EVENT_RECORD_OVERHEAD: usize = 160;
/// The bytes a record of `data_len` bytes, with a metadata member of `metadata_len` bytes (0:
/// none), takes in the event.
pub fn event_record_len(data_len: usize, metadata_len: usize) -> usize {
    data_len.div_ceil(3) * 4 + EVENT_RECORD_OVERHEAD + metadata_len
}

/// What the function decided for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordResult {
    Ok {
        data: Vec<u8>,
        /// `metadata.partitionKeys` (values as text).
        partition_keys: Option<BTreeMap<String, String>>,
    },
    Dropped,
    ProcessingFailed,
}

/// Why an invocation failed as a whole; every record it carried goes to the error output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct InvocationFailure {
    pub code: &'static str,
    pub message: String,
}

impl InvocationFailure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// The answer, borrowing from the body where it can: ids and base64 data have no escapes, so
/// neither is copied before the data is decoded.
#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    records: Vec<ResponseRecord<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseRecord<'a> {
    #[serde(borrow)]
    record_id: Cow<'a, str>,
    result: ResultValue,
    /// `kafkaRecordValue` in an answer about MSK records.
    #[serde(default, borrow, alias = "kafkaRecordValue")]
    data: Option<Cow<'a, str>>,
    #[serde(default)]
    metadata: Option<ResponseMetadata>,
}

#[derive(Deserialize)]
enum ResultValue {
    Ok,
    Dropped,
    ProcessingFailed,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseMetadata {
    #[serde(default)]
    partition_keys: Option<BTreeMap<String, serde_json::Value>>,
    /// Firehose's routing of a record to an Apache Iceberg table and its operation.
    #[serde(default)]
    otf_metadata: Option<BTreeMap<String, serde_json::Value>>,
}

/// The fields of a response record's `metadata.otfMetadata` (Firehose's Iceberg routing). A
/// function that returns them gives the record these partition keys, under the same names, as
/// if it had returned them in `partitionKeys` (which win where both name one): the `iceberg`
/// sink's `table` reads the first two as `!{partitionKeyFromLambda:…}`, and it reads `operation`
/// (insert, update, delete) without naming it (`SinkDescriptor::optional_lambda_keys`).
pub const OTF_METADATA_KEYS: [&str; 3] = ["destinationDatabaseName", "destinationTableName", "operation"];

/// Read the response body against the ids sent (in order); the results come back in the order
/// sent. Checked in Firehose's order: parse (and the status model), duplicated ids, missing ids;
/// then ids that were never sent.
///
/// An answer nested deeper than [`spillway_sink_api::MAX_JSON_DEPTH`] is refused before it is
/// parsed, as every JSON text spillway reads is (serde_json would stop at 127 levels, but skips an
/// unknown field at any depth). The records the function returns are not parsed here: each
/// stage after it that reads JSON (jq, partition keys, a format) checks them in turn.
pub fn parse_response(body: &[u8], sent_ids: &[&str]) -> Result<Vec<RecordResult>, InvocationFailure> {
    spillway_sink_api::check_json_depth(body).map_err(|too_deep| {
        InvocationFailure::new(
            JSON_PROCESSING_EXCEPTION,
            format!("there was an error parsing returned records from the Lambda function: {too_deep}"),
        )
    })?;
    let response: Response = serde_json::from_slice(body).map_err(|error| {
        InvocationFailure::new(
            JSON_PROCESSING_EXCEPTION,
            format!("there was an error parsing returned records from the Lambda function: {error}"),
        )
    })?;
    let mut returned: HashMap<&str, &ResponseRecord> = HashMap::with_capacity(response.records.len());
    for record in &response.records {
        if returned.insert(&record.record_id, record).is_some() {
            return Err(InvocationFailure::new(
                DUPLICATED_RECORD_ID,
                format!("multiple records were returned with the same record id `{}`", record.record_id),
            ));
        }
    }
    let mut results = Vec::with_capacity(sent_ids.len());
    for id in sent_ids {
        let Some(record) = returned.get(id) else {
            return Err(InvocationFailure::new(
                MISSING_RECORD_ID,
                format!("one or more record ids were not returned (first missing: `{id}`)"),
            ));
        };
        results.push(read_result(record)?);
    }
    if response.records.len() > sent_ids.len() {
        let sent: std::collections::HashSet<&str> = sent_ids.iter().copied().collect();
        let unknown = response.records.iter().find(|record| !sent.contains(&*record.record_id));
        let id = unknown.map_or("", |record| &*record.record_id);
        return Err(InvocationFailure::new(UNKNOWN_RECORD_ID, format!("record id `{id}` was returned but never sent")));
    }
    Ok(results)
}

fn read_result(record: &ResponseRecord) -> Result<RecordResult, InvocationFailure> {
    let malformed = |what: String| {
        InvocationFailure::new(JSON_PROCESSING_EXCEPTION, format!("record `{}`: {what}", record.record_id))
    };
    match record.result {
        ResultValue::Dropped => Ok(RecordResult::Dropped),
        ResultValue::ProcessingFailed => Ok(RecordResult::ProcessingFailed),
        ResultValue::Ok => {
            let encoded = record.data.as_deref().ok_or_else(|| malformed("result Ok without data".into()))?;
            let data = base64_simd::STANDARD
                .decode_to_vec(encoded)
                .map_err(|error| malformed(format!("data is not base64: {error}")))?;
            let metadata = record.metadata.as_ref();
            let keys = metadata.and_then(|metadata| metadata.partition_keys.as_ref());
            let otf = metadata.and_then(|metadata| metadata.otf_metadata.as_ref());
            if keys.is_none() && otf.is_none() {
                return Ok(RecordResult::Ok { data, partition_keys: None });
            }
            let mut texts = BTreeMap::new();
            for (name, value) in keys.into_iter().flatten() {
                let text =
                    key_text(value).ok_or_else(|| malformed(format!("partition key `{name}` is not a string")))?;
                texts.insert(name.clone(), text);
            }
            for (name, value) in otf.into_iter().flatten() {
                if !OTF_METADATA_KEYS.contains(&name.as_str()) || texts.contains_key(name) || value.is_null() {
                    continue;
                }
                let text = key_text(value).ok_or_else(|| malformed(format!("otfMetadata `{name}` is not a string")))?;
                texts.insert(name.clone(), text);
            }
            Ok(RecordResult::Ok { data, partition_keys: Some(texts) })
        }
    }
}

/// A partition key's value as text: strings, numbers and booleans.
fn key_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        serde_json::Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn b64(data: impl AsRef<[u8]>) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn the_event_has_firehose_s_fields() {
        let records = [EventRecord {
            record_id: "7-0",
            approximate_arrival_timestamp: 1_764_115_200_123,
            data: b"hello",
            metadata_member: None,
        }];
        let body = encode_event("inv", "arn:aws:firehose:us-east-1:1:deliverystream/s", "us-east-1", &records);
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(event["invocationId"], "inv");
        assert_eq!(event["deliveryStreamArn"], "arn:aws:firehose:us-east-1:1:deliverystream/s");
        assert_eq!(event["region"], "us-east-1");
        assert_eq!(event["records"][0]["recordId"], "7-0");
        assert_eq!(event["records"][0]["approximateArrivalTimestamp"], 1_764_115_200_123i64);
        assert_eq!(event["records"][0]["data"], b64("hello"));
        assert!(event["records"][0].get("kinesisRecordMetadata").is_none());
        assert!(event_record_len(5, 0) >= body.len() - 120);
    }

    #[test]
    fn the_written_event_is_the_json_serde_would_write() {
        let entry = crate::record_metadata::MetadataWriter::new("kinesisRecordMetadata")
            .frame_shard("shardId", "kinesis:".len())
            .text("partitionKey", "k\"1")
            .text("sequenceNumber", "49")
            .finish();
        let member = metadata_member(&RecordMetadata::decode(&entry, Some("kinesis:shardId-000000000001")).unwrap());
        let metadata =
            serde_json::json!({ "shardId": "shardId-000000000001", "partitionKey": "k\"1", "sequenceNumber": "49" });
        let binary: Vec<u8> = (0..=255u8).collect();
        let records = [
            EventRecord {
                record_id: "a\"b\\c\u{1}é",
                approximate_arrival_timestamp: -5,
                data: &binary,
                metadata_member: None,
            },
            EventRecord { record_id: "2", approximate_arrival_timestamp: 0, data: b"", metadata_member: Some(&member) },
            EventRecord { record_id: "3", approximate_arrival_timestamp: i64::MAX, data: b"ab", metadata_member: None },
        ];
        let body = encode_event("id\n", "arn:aws:firehose:eu-west-1:1:deliverystream/s", "eu-west-1", &records);
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let expected = serde_json::json!({
            "invocationId": "id\n",
            "deliveryStreamArn": "arn:aws:firehose:eu-west-1:1:deliverystream/s",
            "region": "eu-west-1",
            "records": [
                { "recordId": "a\"b\\c\u{1}é", "approximateArrivalTimestamp": -5, "data": b64(&binary) },
                { "recordId": "2", "approximateArrivalTimestamp": 0, "data": "", "kinesisRecordMetadata": metadata },
                { "recordId": "3", "approximateArrivalTimestamp": i64::MAX, "data": b64("ab") },
            ],
        });
        assert_eq!(event, expected);
        let estimate: usize = records
            .iter()
            .map(|record| event_record_len(record.data.len(), record.metadata_member.map_or(0, <[u8]>::len)))
            .sum();
        assert!(body.len() <= estimate + 200, "the buffer is sized for the event");
        let empty = encode_event("i", "a", "r", &[]);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&empty).unwrap()["records"], serde_json::json!([]));
    }

    /// Firehose's MSK shape: an MSK record's bytes are `kafkaRecordValue`, in the event and in
    /// the answer.
    #[test]
    fn msk_records_travel_as_kafka_record_value() {
        let entry = crate::record_metadata::MetadataWriter::new("mskRecordMetadata")
            .text("offset", "17")
            .text("partitionId", "3")
            .integer("approximateArrivalTimestamp", 1_764_115_200_123)
            .finish();
        let member = metadata_member(&RecordMetadata::decode(&entry, Some("kafka:orders:3")).unwrap());
        let records = [EventRecord {
            record_id: "1",
            approximate_arrival_timestamp: 5,
            data: b"hi",
            metadata_member: Some(&member),
        }];
        let event: serde_json::Value = serde_json::from_slice(&encode_event("i", "a", "r", &records)).unwrap();
        assert_eq!(
            event["records"][0],
            serde_json::json!({
                "recordId": "1",
                "approximateArrivalTimestamp": 5,
                "kafkaRecordValue": b64("hi"),
                "mskRecordMetadata": { "offset": "17", "partitionId": "3", "approximateArrivalTimestamp": 1_764_115_200_123_i64 },
            })
        );
        let answer = format!(r#"{{"records":[{{"recordId":"1","result":"Ok","kafkaRecordValue":"{}"}}]}}"#, b64("HI"));
        assert_eq!(
            parse_response(answer.as_bytes(), &["1"]).unwrap(),
            [RecordResult::Ok { data: b"HI".to_vec(), partition_keys: None }]
        );
    }

    #[test]
    fn results_come_back_in_sent_order() {
        let body = format!(
            r#"{{"records":[{{"recordId":"b","result":"Dropped"}},{{"recordId":"c","result":"ProcessingFailed","data":""}},
            {{"recordId":"a","result":"Ok","data":"{}","metadata":{{"partitionKeys":{{"team":"core","n":3}}}}}}]}}"#,
            b64("HI")
        );
        let results = parse_response(body.as_bytes(), &["a", "b", "c"]).unwrap();
        let keys = BTreeMap::from([("n".to_string(), "3".to_string()), ("team".to_string(), "core".to_string())]);
        assert_eq!(
            results,
            [
                RecordResult::Ok { data: b"HI".to_vec(), partition_keys: Some(keys) },
                RecordResult::Dropped,
                RecordResult::ProcessingFailed
            ]
        );
    }

    #[test]
    fn otf_metadata_gives_partition_keys_which_partition_keys_override() {
        let body = format!(
            r#"{{"records":[{{"recordId":"a","result":"Ok","data":"{}","metadata":{{
                "partitionKeys":{{"destinationTableName":"from_keys"}},
                "otfMetadata":{{"destinationDatabaseName":"analytics","destinationTableName":"orders","operation":"update","other":1}}}}}}]}}"#,
            b64("HI")
        );
        let results = parse_response(body.as_bytes(), &["a"]).unwrap();
        let keys = BTreeMap::from([
            ("destinationDatabaseName".to_string(), "analytics".to_string()),
            ("destinationTableName".to_string(), "from_keys".to_string()),
            ("operation".to_string(), "update".to_string()),
        ]);
        assert_eq!(results, [RecordResult::Ok { data: b"HI".to_vec(), partition_keys: Some(keys) }]);
        let bad = format!(
            r#"{{"records":[{{"recordId":"a","result":"Ok","data":"{}","metadata":{{"otfMetadata":{{"operation":["x"]}}}}}}]}}"#,
            b64("HI")
        );
        let failure = parse_response(bad.as_bytes(), &["a"]).unwrap_err();
        assert!(failure.message.contains("otfMetadata `operation` is not a string"), "{}", failure.message);
    }

    #[test]
    fn a_broken_response_fails_with_firehose_s_code() {
        let ok = |id: &str| format!(r#"{{"recordId":"{id}","result":"Ok","data":"{}"}}"#, b64("x"));
        let code = |body: &str| parse_response(body.as_bytes(), &["a", "b"]).unwrap_err().code;
        assert_eq!(code("not json"), JSON_PROCESSING_EXCEPTION);
        assert_eq!(code(r#"{"result":[]}"#), JSON_PROCESSING_EXCEPTION);
        assert_eq!(
            code(&format!(r#"{{"records":[{},{{"recordId":"b","result":"Fine"}}]}}"#, ok("a"))),
            JSON_PROCESSING_EXCEPTION
        );
        assert_eq!(
            code(&format!(r#"{{"records":[{},{{"recordId":"b","result":"Ok"}}]}}"#, ok("a"))),
            JSON_PROCESSING_EXCEPTION
        );
        assert_eq!(
            code(&format!(r#"{{"records":[{},{{"recordId":"b","result":"Ok","data":"!!"}}]}}"#, ok("a"))),
            JSON_PROCESSING_EXCEPTION
        );
        assert_eq!(code(&format!(r#"{{"records":[{}]}}"#, ok("a"))), MISSING_RECORD_ID);
        assert_eq!(code(&format!(r#"{{"records":[{},{},{}]}}"#, ok("a"), ok("b"), ok("a"))), DUPLICATED_RECORD_ID);
        assert_eq!(code(&format!(r#"{{"records":[{},{},{}]}}"#, ok("a"), ok("b"), ok("zz"))), UNKNOWN_RECORD_ID);
        assert_eq!(code(&format!(r#"{{"records":[{},{}]}}"#, ok("a"), ok("zz"))), MISSING_RECORD_ID);
    }

    #[test]
    fn an_answer_nested_past_the_bound_is_refused_as_malformed() {
        let deep = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let ok = |id: &str| format!(r#"{{"recordId":"{id}","result":"Ok","data":"{}"}}"#, b64("x"));
        // In an unknown field, and as a partition key's value.
        for extra in [
            format!(r#"{{"records":[{}],"extra":{}}}"#, ok("a"), deep(100_000)),
            format!(
                r#"{{"records":[{{"recordId":"a","result":"Ok","data":"{}","metadata":{{"partitionKeys":{{"k":{}}}}}}}]}}"#,
                b64("x"),
                deep(10_000)
            ),
        ] {
            let failure = parse_response(extra.as_bytes(), &["a"]).unwrap_err();
            assert_eq!(failure.code, JSON_PROCESSING_EXCEPTION);
            assert!(failure.message.contains("JSON nested deeper than 100 levels"), "{failure}");
        }
        // A deep record in `data` is the record's business, not the answer's.
        let deep_data = format!(r#"{{"records":[{{"recordId":"a","result":"Ok","data":"{}"}}]}}"#, b64(deep(10_000)));
        let results = parse_response(deep_data.as_bytes(), &["a"]).unwrap();
        assert_eq!(results, [RecordResult::Ok { data: deep(10_000).into_bytes(), partition_keys: None }]);
    }

    #[test]
    fn validation_names_every_bad_field() {
        let config: LambdaConfig = serde_yaml_ng::from_str(
            "{ url: 'ftp://x', buffer_size_mib: 4, buffer_interval_seconds: 901, number_of_retries: 301, timeout_seconds: 0, headers: { 'bad name': v } }",
        )
        .unwrap();
        let fields: Vec<&str> = config.validate().into_iter().map(|(field, _)| field).collect();
        assert_eq!(
            fields,
            ["url", "headers", "buffer_size_mib", "buffer_interval_seconds", "number_of_retries", "timeout_seconds"]
        );
        let config: LambdaConfig = serde_yaml_ng::from_str("{ url: 'http://127.0.0.1:9/f' }").unwrap();
        assert!(config.validate().is_empty());
        assert_eq!(config.buffer_size_bytes(), 1 << 20);
        assert_eq!(config.buffer_interval_seconds, 60);
        assert_eq!(config.number_of_retries, 3);
        assert_eq!(config.lambda_arn(), "http://127.0.0.1:9/f");
    }
}
