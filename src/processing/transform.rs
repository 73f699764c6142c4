//! Record transforms (`processing.transforms`), applied in order to every record between reading
//! the WAL and computing its partition: each maps one record to zero (filtered out), one or
//! several records, or fails it with a reason (the record then goes to the error output under
//! `processing-failed`, as Firehose files records its Lambda could not process).
//!
//! Transforms must be deterministic: a batch is rebuilt from the WAL after a crash by running
//! them again, and the rebuilt batch must hold the same records.
//!
//! An `sql` entry is a [`BatchTransform`]: it reads records in micro-batches (the records the
//! assembler reads at once) for speed, and gives each record exactly the outputs it would give
//! that record alone, so the batching never shows in what is delivered.
//!
//! A `lambda` entry is not a [`Transform`]: it does HTTP I/O, so the delivery loop runs it as an
//! async stage (`pipeline::lambda`). [`Chain`] splits the list around it: the transforms before
//! it run on each record as it is read, those after it on the function's outputs.
//!
//! Must not: do I/O, read the clock, or know about batches, partitions or sinks.

use jaq_core::{Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde::Deserialize;

use super::jq::{JqFilter, compile_jq, jq_error_text};
use super::lambda::LambdaConfig;
use super::sql::SqlConfig;

/// `!{firehose:error-output-type}` of records a transform failed (Firehose's folder for records
/// its processing Lambda failed).
pub const PROCESSING_FAILED_OUTPUT_TYPE: &str = "processing-failed";

/// `errorCode` of a record a jq transform cannot read as JSON.
pub const JQ_NON_JSON_RECORD: &str = "Jq.NonJsonRecord";
/// `errorCode` of a record on which the jq filter raised an error.
pub const JQ_FILTER_ERROR: &str = "Jq.FilterError";
/// `errorCode` of a record nested deeper than [`spillway_sink_api::MAX_JSON_DEPTH`]: jq never
/// reads it (its reader and filters recurse once per level; see `spillway_sink_api::json_depth`).
pub const JQ_RECORD_TOO_DEEP: &str = "Jq.RecordTooDeep";

/// `errorCode` of a record on which a transform panicked (a bug, contained to that record).
pub const INTERNAL_ERROR: &str = "Spillway.InternalError";

/// `errorCode` of a record the `decompress` transform cannot gunzip.
pub const DECOMPRESSION_FAILED: &str = "Decompression.Failed";
/// `errorCode` of a record that is not a CloudWatch Logs subscription payload.
pub const CLOUDWATCH_LOGS_INVALID: &str = "CloudWatchLogs.InvalidPayload";

/// `errorCode` of a record the `record_deaggregation` transform cannot split into JSON values.
pub const DEAGGREGATION_NON_JSON: &str = "RecordDeAggregation.NonJsonRecord";

/// Largest record a decompression may produce: a 1,000 KiB record that inflates past this is
/// refused rather than allowed to take memory without bound.
const MAX_DECOMPRESSED_BYTES: u64 = 64 << 20;

/// One entry of `processing.transforms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformConfig {
    /// A jq filter (jaq, jq 1.7's language) run on each record, a JSON value: every output
    /// becomes a record (`select(..)` drops, `.[]` splits), written as compact JSON.
    Jq {
        expr: String,
        /// As `jq -r`: string outputs are written as their text, without quotes or escapes
        /// (to turn JSON into plain log lines); other values are still written as JSON.
        #[serde(default)]
        raw_output: bool,
    },
    /// Firehose's `Decompression` processor: gunzip each record (for producers that gzip every
    /// record, such as Fluent Bit's `compression gzip`, which would otherwise land as gzip
    /// inside gzip).
    Decompress {
        #[serde(default)]
        format: DecompressFormat,
    },
    /// Firehose's `Decompression` + `CloudWatchLogProcessing` for CloudWatch Logs subscription
    /// payloads (gzip as CloudWatch Logs sends them, or already decompressed): `CONTROL_MESSAGE`s
    /// are dropped; with `data_message_extraction` (default true) each log event's `message`
    /// becomes one record, otherwise each data message is passed on as its JSON.
    CloudwatchLogs {
        #[serde(default = "default_true")]
        data_message_extraction: bool,
    },
    /// Firehose's `RecordDeAggregation` processor: one record holding several sub-records becomes
    /// one record per sub-record: `json` splits concatenated JSON values (`{..}{..}`, or one per
    /// line), each passed on byte for byte; `delimited` splits at `delimiter`. Empty sub-records
    /// (two delimiters in a row, a trailing one, whitespace between JSON values) give nothing.
    RecordDeaggregation {
        sub_record_type: SubRecordType,
        /// The bytes between sub-records, for `delimited` (text; Firehose's API takes it base64).
        #[serde(default)]
        delimiter: Option<String>,
    },
    /// Firehose's `Lambda` processor: records are sent, in invocations, to an HTTP function
    /// speaking Firehose's event / response JSON (see `processing::lambda`).
    Lambda(LambdaConfig),
    /// A stateless SQL query over the table `records` (see `processing::sql`).
    Sql(SqlConfig),
}

fn default_true() -> bool {
    true
}

/// `record_deaggregation.sub_record_type`, Firehose's `SubRecordType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubRecordType {
    Json,
    Delimited,
}

/// `decompress.format`: Firehose's Decompression processor knows gzip only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecompressFormat {
    #[default]
    Gzip,
}

impl TransformConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            TransformConfig::Jq { .. } => "jq",
            TransformConfig::Decompress { .. } => "decompress",
            TransformConfig::CloudwatchLogs { .. } => "cloudwatch_logs",
            TransformConfig::RecordDeaggregation { .. } => "record_deaggregation",
            TransformConfig::Lambda(_) => "lambda",
            TransformConfig::Sql(_) => "sql",
        }
    }

    /// Whether the entry runs in the stream's reader rather than in its delivery: a windowed
    /// `sql` (see `sources::stream`).
    pub fn runs_in_reader(&self) -> bool {
        matches!(self, TransformConfig::Sql(config) if config.window.is_some())
    }

    /// Compile; the error names what is wrong with the expression.
    pub fn build(&self) -> Result<Stage, String> {
        if let TransformConfig::Sql(config) = self {
            return build_sql(config);
        }
        self.build_record_transform().map(Stage::Record)
    }

    fn build_record_transform(&self) -> Result<Box<dyn Transform>, String> {
        match self {
            TransformConfig::Jq { expr, raw_output } => {
                Ok(Box::new(JqTransform { filter: compile_jq(expr)?, raw_output: *raw_output }))
            }
            TransformConfig::Decompress { format: DecompressFormat::Gzip } => Ok(Box::new(Gunzip)),
            TransformConfig::CloudwatchLogs { data_message_extraction } => {
                Ok(Box::new(CloudWatchLogs { extract_messages: *data_message_extraction }))
            }
            TransformConfig::RecordDeaggregation { sub_record_type: SubRecordType::Json, delimiter: None } => {
                Ok(Box::new(JsonSubRecords))
            }
            TransformConfig::RecordDeaggregation { sub_record_type: SubRecordType::Json, delimiter: Some(_) } => {
                Err("`delimiter` is for sub_record_type: delimited; json sub-records need none".into())
            }
            TransformConfig::RecordDeaggregation { sub_record_type: SubRecordType::Delimited, delimiter } => {
                match delimiter.as_deref() {
                    Some(delimiter) if !delimiter.is_empty() => {
                        Ok(Box::new(DelimitedSubRecords { delimiter: delimiter.as_bytes().to_vec() }))
                    }
                    _ => Err("sub_record_type: delimited needs a non-empty `delimiter`".into()),
                }
            }
            TransformConfig::Lambda(_) => {
                Err("a lambda transform is not a record-by-record transform (see processing::transform::Chain)".into())
            }
            TransformConfig::Sql(_) => Err("an sql transform is a batch transform".into()),
        }
    }
}

#[cfg(feature = "transform-sql")]
fn build_sql(config: &SqlConfig) -> Result<Stage, String> {
    let transform = super::sql::engine::SqlTransform::build(config)?;
    Ok(Stage::Batch(Box::new(transform)))
}

#[cfg(not(feature = "transform-sql"))]
fn build_sql(_config: &SqlConfig) -> Result<Stage, String> {
    Err(super::sql::FEATURE_MISSING.into())
}

/// A stream's `processing.transforms` split around its Lambda (at most one, as Firehose has one
/// `Lambda` processor): `before` runs on each record read from the WAL, the Lambda on their
/// outputs, `after` on what the function returns. Without a Lambda, everything is in `before`.
pub struct Chain {
    pub before: Transforms,
    pub lambda: Option<LambdaConfig>,
    pub after: Transforms,
}

impl Chain {
    /// Compile every transform; on failure, `(index, reason)` of each bad one (indices in the
    /// whole list). A second Lambda is refused.
    pub fn build(configs: &[TransformConfig]) -> Result<Self, Vec<(usize, String)>> {
        // A windowed `sql` first runs where the stream reads another stream (its records are
        // already the windows' rows): the chain is what follows it.
        let skip = usize::from(configs.first().is_some_and(TransformConfig::runs_in_reader));
        Self::build_all(&configs[skip..])
            .map_err(|problems| problems.into_iter().map(|(index, reason)| (index + skip, reason)).collect())
    }

    fn build_all(configs: &[TransformConfig]) -> Result<Self, Vec<(usize, String)>> {
        let lambda_at = configs.iter().position(|config| matches!(config, TransformConfig::Lambda(_)));
        let Some(lambda_at) = lambda_at else {
            return Ok(Self { before: Transforms::build(configs)?, lambda: None, after: Transforms::empty() });
        };
        let mut problems = Vec::new();
        let (head, tail) = (&configs[..lambda_at], &configs[lambda_at + 1..]);
        for (offset, config) in tail.iter().enumerate() {
            if matches!(config, TransformConfig::Lambda(_)) {
                problems.push((lambda_at + 1 + offset, "only one lambda transform is allowed per stream".to_string()));
            }
        }
        let sync_tail: Vec<TransformConfig> =
            tail.iter().filter(|config| !matches!(config, TransformConfig::Lambda(_))).cloned().collect();
        let before = Transforms::build(head).map_err(|bad| problems.extend(bad));
        let after = Transforms::build(&sync_tail).map_err(|bad| {
            // Indices of `sync_tail` are those of `tail` as long as no second Lambda precedes
            // them; a second Lambda is already an error, so an approximate index is fine then.
            problems.extend(bad.into_iter().map(|(index, reason)| (lambda_at + 1 + index, reason)));
        });
        let lambda = match &configs[lambda_at] {
            TransformConfig::Lambda(config) => Some(config.clone()),
            _ => None,
        };
        match (before, after) {
            (Ok(before), Ok(after)) if problems.is_empty() => Ok(Self { before, lambda, after }),
            _ => Err(problems),
        }
    }
}

/// Why a transform failed a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TransformFailure {
    /// Firehose-style `errorCode`, e.g. [`JQ_FILTER_ERROR`].
    pub code: &'static str,
    pub message: String,
}

/// One transform. `apply` appends the record's outputs to `out` (nothing for a dropped record).
pub trait Transform: Send + Sync + 'static {
    fn apply(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure>;
}

/// A transform that reads records in micro-batches: one outcome per record, in order, each
/// exactly what the record alone (a batch of one) gives.
pub trait BatchTransform: Send + Sync + 'static {
    fn apply_batch(&self, records: &[&[u8]]) -> Vec<Result<Vec<Vec<u8>>, TransformFailure>>;
}

/// One compiled entry of `processing.transforms`.
pub enum Stage {
    Record(Box<dyn Transform>),
    Batch(Box<dyn BatchTransform>),
}

impl Stage {
    /// The record's outputs appended to `out` (what a batch of one gives).
    fn apply(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure> {
        match self {
            Stage::Record(transform) => transform.apply(record, out),
            Stage::Batch(transform) => {
                let outcome = transform.apply_batch(&[record]).into_iter().next().unwrap_or_else(|| Ok(Vec::new()));
                out.extend(outcome?);
                Ok(())
            }
        }
    }
}

/// What [`Transforms::apply_batch`] gives per record: its outputs, or why it failed.
pub type Outcome = Result<Vec<Vec<u8>>, TransformFailure>;

/// A stream's transforms, in order; the outputs of one are the inputs of the next.
pub struct Transforms {
    stages: Vec<Stage>,
}

impl Transforms {
    /// Compile every transform; on failure, `(index, reason)` of each bad one.
    pub fn build(configs: &[TransformConfig]) -> Result<Self, Vec<(usize, String)>> {
        let mut stages = Vec::with_capacity(configs.len());
        let mut problems = Vec::new();
        for (index, config) in configs.iter().enumerate() {
            match config.build() {
                Ok(stage) => stages.push(stage),
                Err(reason) => problems.push((index, reason)),
            }
        }
        if problems.is_empty() { Ok(Self { stages }) } else { Err(problems) }
    }

    pub fn empty() -> Self {
        Self { stages: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Whether a stage reads micro-batches (then [`Transforms::apply_batch`] is the fast path).
    pub fn has_batch_stage(&self) -> bool {
        self.stages.iter().any(|stage| matches!(stage, Stage::Batch(_)))
    }

    /// Every record's outcome after every stage, in order: for each record, exactly what
    /// [`Transforms::apply`] gives it. A panic anywhere re-runs the records one by one, so it
    /// fails only the record that causes it.
    pub fn apply_batch(&self, records: &[&[u8]]) -> Vec<Outcome> {
        spillway_sink_api::catch_panic(|| self.apply_batch_stages(records)).unwrap_or_else(|_| {
            records
                .iter()
                .map(|record| {
                    let mut out = Vec::new();
                    self.apply(record, &mut out).map(|()| out)
                })
                .collect()
        })
    }

    fn apply_batch_stages(&self, records: &[&[u8]]) -> Vec<Outcome> {
        // A batch stage first reads the records where they are (no copy of each).
        let (mut outcomes, rest): (Vec<Outcome>, &[Stage]) = match self.stages.split_first() {
            Some((Stage::Batch(transform), rest)) => (transform.apply_batch(records), rest),
            _ => (records.iter().map(|record| Ok(vec![record.to_vec()])).collect(), &self.stages[..]),
        };
        for stage in rest {
            match stage {
                Stage::Record(transform) => {
                    for outcome in outcomes.iter_mut() {
                        let Ok(items) = outcome else { continue };
                        let mut next = Vec::new();
                        let applied = items.iter().try_for_each(|item| transform.apply(item, &mut next));
                        *outcome = applied.map(|()| next);
                    }
                }
                Stage::Batch(transform) => {
                    // Every live item of every record in one batch; `owners[i]` is item i's record.
                    let mut owners = Vec::new();
                    let mut items: Vec<&[u8]> = Vec::new();
                    for (index, outcome) in outcomes.iter().enumerate() {
                        if let Ok(list) = outcome {
                            owners.extend(std::iter::repeat_n(index, list.len()));
                            items.extend(list.iter().map(Vec::as_slice));
                        }
                    }
                    let results = transform.apply_batch(&items);
                    let mut next: Vec<Outcome> = outcomes
                        .iter()
                        .map(|outcome| match outcome {
                            Ok(_) => Ok(Vec::new()),
                            Err(failure) => Err(failure.clone()),
                        })
                        .collect();
                    for (owner, result) in owners.into_iter().zip(results) {
                        // The first failing item fails the record, as one by one.
                        if let Ok(list) = &mut next[owner] {
                            match result {
                                Ok(outputs) => list.extend(outputs),
                                Err(failure) => next[owner] = Err(failure),
                            }
                        }
                    }
                    outcomes = next;
                }
            }
        }
        outcomes
    }

    /// The record's outputs after every stage, into `out` (cleared first). One failure anywhere
    /// fails the whole record: its other outputs are discarded, so a record is either
    /// transformed completely or sent to the error output as it arrived.
    ///
    /// A stage that panics fails the record as [`INTERNAL_ERROR`] ("internal error: …"): the
    /// same record panics the same way when a batch is rebuilt or read back, so it is routed to
    /// the error output every time, and the stream goes on.
    pub fn apply(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure> {
        let applied = spillway_sink_api::catch_panic(|| self.apply_stages(record, out)).unwrap_or_else(|panic| {
            Err(TransformFailure {
                code: INTERNAL_ERROR,
                message: format!("internal error: a transform panicked: {panic}"),
            })
        });
        if applied.is_err() {
            out.clear();
        }
        applied
    }

    fn apply_stages(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure> {
        out.clear();
        let Some((first, rest)) = self.stages.split_first() else {
            out.push(record.to_vec());
            return Ok(());
        };
        first.apply(record, out)?;
        let mut next = Vec::new();
        for stage in rest {
            for input in out.iter() {
                stage.apply(input, &mut next)?;
            }
            std::mem::swap(out, &mut next);
            next.clear();
        }
        Ok(())
    }
}

struct JqTransform {
    filter: JqFilter,
    raw_output: bool,
}

impl Transform for JqTransform {
    fn apply(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure> {
        // A record that ends with the producer's newline is still one JSON value.
        let record = record.trim_ascii();
        spillway_sink_api::check_json_depth(record).map_err(|too_deep| TransformFailure {
            code: JQ_RECORD_TOO_DEEP,
            message: format!("jq cannot read the record: {too_deep}"),
        })?;
        let input = jaq_json::read::parse_single(record).map_err(|error| TransformFailure {
            code: JQ_NON_JSON_RECORD,
            message: format!("non JSON record provided: {error}"),
        })?;
        let first_output = out.len();
        let context = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        for value in self.filter.id.run((context, input)).map(unwrap_valr) {
            let value = value.map_err(|error| {
                out.truncate(first_output);
                TransformFailure { code: JQ_FILTER_ERROR, message: format!("jq: error: {}", jq_error_text(error)) }
            })?;
            out.push(match value {
                Val::TStr(text) if self.raw_output => text.to_vec(),
                value => value.to_string().into_bytes(),
            });
        }
        Ok(())
    }
}

struct Gunzip;

impl Transform for Gunzip {
    fn apply(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure> {
        out.push(gunzip(record).map_err(|message| TransformFailure { code: DECOMPRESSION_FAILED, message })?);
        Ok(())
    }
}

/// Every member of a gzip record, up to [`MAX_DECOMPRESSED_BYTES`].
fn gunzip(record: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    if !record.starts_with(&[0x1f, 0x8b]) {
        return Err("the record is not gzip (no gzip magic bytes)".into());
    }
    let mut decoded = Vec::with_capacity(record.len() * 4);
    flate2::read::MultiGzDecoder::new(record)
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut decoded)
        .map_err(|error| format!("gzip: {error}"))?;
    if decoded.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(format!("the record decompresses to more than {} MiB", MAX_DECOMPRESSED_BYTES >> 20));
    }
    Ok(decoded)
}

struct CloudWatchLogs {
    extract_messages: bool,
}

/// The parts of a CloudWatch Logs subscription payload this transform reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogsPayload {
    message_type: String,
    #[serde(default)]
    log_events: Vec<LogEvent>,
}

#[derive(Deserialize)]
struct LogEvent {
    message: String,
}

impl Transform for CloudWatchLogs {
    fn apply(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure> {
        let invalid = |message: String| TransformFailure { code: CLOUDWATCH_LOGS_INVALID, message };
        let decoded = if record.starts_with(&[0x1f, 0x8b]) {
            std::borrow::Cow::Owned(gunzip(record).map_err(invalid)?)
        } else {
            std::borrow::Cow::Borrowed(record)
        };
        let payload: LogsPayload = serde_json::from_slice(&decoded)
            .map_err(|error| invalid(format!("not a CloudWatch Logs subscription payload: {error}")))?;
        match payload.message_type.as_str() {
            "CONTROL_MESSAGE" => Ok(()),
            "DATA_MESSAGE" if self.extract_messages => {
                out.extend(payload.log_events.into_iter().map(|event| event.message.into_bytes()));
                Ok(())
            }
            "DATA_MESSAGE" => {
                out.push(decoded.into_owned());
                Ok(())
            }
            other => Err(invalid(format!("unknown messageType `{other}`"))),
        }
    }
}

/// `record_deaggregation` of JSON sub-records: each JSON value, as its own bytes.
struct JsonSubRecords;

impl Transform for JsonSubRecords {
    fn apply(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure> {
        let first_output = out.len();
        let mut values = serde_json::Deserializer::from_slice(record).into_iter::<serde::de::IgnoredAny>();
        let mut start = 0;
        while let Some(value) = values.next() {
            if let Err(error) = value {
                // All or nothing: a record is split the same way on every replay, or not at all.
                out.truncate(first_output);
                return Err(TransformFailure {
                    code: DEAGGREGATION_NON_JSON,
                    message: format!("the record is not a sequence of JSON values: {error}"),
                });
            }
            let end = values.byte_offset();
            out.push(record[start..end].trim_ascii().to_vec());
            start = end;
        }
        Ok(())
    }
}

/// `record_deaggregation` of delimited sub-records.
struct DelimitedSubRecords {
    delimiter: Vec<u8>,
}

impl Transform for DelimitedSubRecords {
    fn apply(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure> {
        let mut rest = record;
        while !rest.is_empty() {
            let (sub_record, after) = match memchr::memmem::find(rest, &self.delimiter) {
                Some(at) => (&rest[..at], &rest[at + self.delimiter.len()..]),
                None => (rest, &[][..]),
            };
            if !sub_record.is_empty() {
                out.push(sub_record.to_vec());
            }
            rest = after;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(configs: &[TransformConfig], record: &str) -> Result<Vec<String>, TransformFailure> {
        let transforms = Transforms::build(configs).expect("compiles");
        let mut out = Vec::new();
        transforms.apply(record.as_bytes(), &mut out)?;
        Ok(out.into_iter().map(|output| String::from_utf8(output).unwrap()).collect())
    }

    fn jq(expr: &str) -> TransformConfig {
        TransformConfig::Jq { expr: expr.to_string(), raw_output: false }
    }

    #[test]
    fn jq_maps_filters_and_splits_records() {
        assert_eq!(
            run(&[jq("{level, msg: .message}")], r#"{"level":"info","message":"hi","x":1}"#).unwrap(),
            [r#"{"level":"info","msg":"hi"}"#]
        );
        assert!(run(&[jq(r#"select(.level != "debug")"#)], r#"{"level":"debug"}"#).unwrap().is_empty());
        assert_eq!(
            run(&[jq(".events[]")], r#"{"events":[{"a":1},{"a":2},3]}"#).unwrap(),
            [r#"{"a":1}"#, r#"{"a":2}"#, "3"]
        );
        assert_eq!(run(&[jq(".n += 1 | del(.secret)")], "{\"n\":1,\"secret\":\"s\"}\n").unwrap(), [r#"{"n":2}"#]);
    }

    #[test]
    fn stages_run_in_order_and_raw_output_writes_text() {
        let stages = [jq(".items[]"), TransformConfig::Jq { expr: r#""\(.k)=\(.v)""#.to_string(), raw_output: true }];
        assert_eq!(run(&stages, r#"{"items":[{"k":"a","v":1},{"k":"b","v":"x\"y"}]}"#).unwrap(), ["a=1", "b=x\"y"]);
        assert_eq!(
            run(&[TransformConfig::Jq { expr: ".s".into(), raw_output: false }], r#"{"s":"q\""}"#).unwrap(),
            [r#""q\"""#]
        );
    }

    /// `depth` levels of alternating objects and arrays around a number.
    fn nested_record(depth: usize) -> String {
        let (mut open, mut close) = (String::new(), String::new());
        for level in 0..depth {
            if level % 2 == 0 {
                open.push_str(r#"{"a":"#);
                close.insert(0, '}');
            } else {
                open.push('[');
                close.insert(0, ']');
            }
        }
        format!("{open}1{close}")
    }

    #[test]
    fn a_record_nested_past_the_bound_is_failed_before_jq_reads_it() {
        // 10,000 levels overflowed the stack in jaq's reader and aborted the process.
        let failure = run(&[jq(".")], &nested_record(10_000)).unwrap_err();
        assert_eq!(failure.code, JQ_RECORD_TOO_DEEP);
        assert_eq!(
            failure.message,
            "jq cannot read the record: JSON nested deeper than 100 levels (the bracket at byte 300 opens level 101)"
        );
        let at_bound = nested_record(spillway_sink_api::MAX_JSON_DEPTH);
        assert_eq!(run(&[jq(".")], &at_bound).unwrap(), std::slice::from_ref(&at_bound));
        // A stage after one that made the record deeper checks again.
        let deeper = run(&[jq("[.]"), jq(".")], &at_bound).unwrap_err();
        assert_eq!(deeper.code, JQ_RECORD_TOO_DEEP);
    }

    #[test]
    fn jq_recursion_at_the_depth_bound_needs_a_fraction_of_a_thread_stack() {
        // Tokio's and rayon's threads have 2 MiB. Measured in a debug build (frames are largest
        // there), reading, filtering, printing and dropping a record costs about 3.7 KiB of
        // stack per level for the deepest of these filters (walk + tojson: ~390 KiB at 100
        // levels), so a 2 MiB thread overflows near 540 levels: 100 leaves a margin of five.
        let record = nested_record(spillway_sink_api::MAX_JSON_DEPTH);
        let filters =
            [".", "[..] | length", "walk(.) | tojson", "[paths] | length", "del(..|.a?)", "(..|numbers) |= . + 1"];
        let outputs = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || {
                let run_one = |filter: &&str| run(&[jq(filter)], &record).map(|mut out| out.remove(0));
                filters.iter().map(run_one).collect::<Vec<_>>()
            })
            .unwrap()
            .join()
            .unwrap();
        let record = nested_record(spillway_sink_api::MAX_JSON_DEPTH);
        let expected = [
            Ok(record.clone()),
            Ok("101".to_string()),
            Ok(serde_json::to_string(&record).unwrap()),
            Ok("100".to_string()),
            Ok("{}".to_string()),
            Ok(record.replace('1', "2")),
        ];
        assert_eq!(outputs, expected);
    }

    struct PanicsOn(&'static [u8]);

    impl Transform for PanicsOn {
        fn apply(&self, record: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TransformFailure> {
            out.push(record.to_vec());
            assert_ne!(record, self.0, "a bug in a transform");
            Ok(())
        }
    }

    #[test]
    fn a_transform_that_panics_fails_only_that_record_as_an_internal_error() {
        let transforms = Transforms { stages: vec![Stage::Record(Box::new(PanicsOn(b"poison")))] };
        let mut out = vec![b"left over".to_vec()];
        let failure = transforms.apply(b"poison", &mut out).unwrap_err();
        assert_eq!(failure.code, INTERNAL_ERROR);
        assert!(failure.message.starts_with("internal error: a transform panicked: "), "{failure}");
        assert!(failure.message.contains("a bug in a transform"), "{failure}");
        assert!(out.is_empty(), "no output of a failed record is kept");
        transforms.apply(b"fine", &mut out).unwrap();
        assert_eq!(out, [b"fine".to_vec()]);
    }

    #[test]
    fn bad_records_fail_with_a_code_and_reason() {
        let failure = run(&[jq(".a")], "not json").unwrap_err();
        assert_eq!(failure.code, JQ_NON_JSON_RECORD);
        let failure = run(&[jq(r#".[] | if . == 2 then error("two is bad") else . end"#)], "[1,2,3]").unwrap_err();
        assert_eq!(failure.code, JQ_FILTER_ERROR);
        assert!(failure.message.contains("two is bad"), "{failure}");
        let failure = run(&[jq(".a.b")], r#"{"a":5}"#).unwrap_err();
        assert_eq!(failure.code, JQ_FILTER_ERROR);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn apply(config: TransformConfig, record: &[u8]) -> Result<Vec<Vec<u8>>, TransformFailure> {
        let mut out = Vec::new();
        Transforms::build(&[config]).unwrap().apply(record, &mut out)?;
        Ok(out)
    }

    #[test]
    fn decompress_gunzips_every_member_and_refuses_what_is_not_gzip() {
        let decompress = || TransformConfig::Decompress { format: DecompressFormat::Gzip };
        let mut two_members = gzip(b"hello ");
        two_members.extend(gzip(b"world\n"));
        assert_eq!(apply(decompress(), &two_members).unwrap(), [b"hello world\n".to_vec()]);
        assert_eq!(apply(decompress(), b"plain").unwrap_err().code, DECOMPRESSION_FAILED);
        let mut truncated = gzip(b"some longer text to compress");
        truncated.truncate(truncated.len() - 6);
        assert_eq!(apply(decompress(), &truncated).unwrap_err().code, DECOMPRESSION_FAILED);
    }

    fn deaggregate(sub_record_type: SubRecordType, delimiter: Option<&str>) -> TransformConfig {
        TransformConfig::RecordDeaggregation { sub_record_type, delimiter: delimiter.map(str::to_string) }
    }

    #[test]
    fn record_deaggregation_splits_json_values_byte_for_byte() {
        let json = deaggregate(SubRecordType::Json, None);
        assert_eq!(
            run(std::slice::from_ref(&json), "{\"a\":1}{\"a\": [2, {\"b\":\"}{\"}]}\n{\"a\":3}\n\n").unwrap(),
            ["{\"a\":1}", "{\"a\": [2, {\"b\":\"}{\"}]}", "{\"a\":3}"],
            "values kept as written, whitespace between them dropped"
        );
        assert_eq!(run(std::slice::from_ref(&json), "1 \"two\" [3]").unwrap(), ["1", "\"two\"", "[3]"]);
        assert!(run(std::slice::from_ref(&json), " \n").unwrap().is_empty());
        // A record that goes wrong part-way gives nothing, not its first values.
        let failure = run(std::slice::from_ref(&json), "{\"a\":1}{\"a\":").unwrap_err();
        assert_eq!(failure.code, DEAGGREGATION_NON_JSON);
        assert!(failure.message.contains("EOF"), "{failure}");
        // The sub-records go on to the next transform.
        assert_eq!(run(&[json, jq(".a")], "{\"a\":1}{\"a\":2}").unwrap(), ["1", "2"]);
    }

    #[test]
    fn record_deaggregation_splits_at_a_delimiter() {
        let hashes = deaggregate(SubRecordType::Delimited, Some("####"));
        assert_eq!(run(std::slice::from_ref(&hashes), "a####b#c########d####").unwrap(), ["a", "b#c", "d"]);
        assert_eq!(run(std::slice::from_ref(&hashes), "no delimiter").unwrap(), ["no delimiter"]);
        assert_eq!(run(&[deaggregate(SubRecordType::Delimited, Some("\n"))], "x\ny\n").unwrap(), ["x", "y"]);
    }

    #[test]
    fn record_deaggregation_options_are_checked() {
        let problems = |config: TransformConfig| Transforms::build(&[config]).err().unwrap();
        assert_eq!(
            problems(deaggregate(SubRecordType::Delimited, None)),
            [(0, "sub_record_type: delimited needs a non-empty `delimiter`".to_string())]
        );
        assert_eq!(problems(deaggregate(SubRecordType::Delimited, Some(""))).len(), 1);
        assert_eq!(
            problems(deaggregate(SubRecordType::Json, Some(","))),
            [(0, "`delimiter` is for sub_record_type: delimited; json sub-records need none".to_string())]
        );
    }

    #[test]
    fn cloudwatch_logs_payloads_become_one_record_per_event() {
        let data = br#"{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"/app","logStream":"s",
            "subscriptionFilters":["f"],"logEvents":[{"id":"1","timestamp":1,"message":"first"},
            {"id":"2","timestamp":2,"message":"{\"level\":\"info\"}"}]}"#;
        let extract = || TransformConfig::CloudwatchLogs { data_message_extraction: true };
        assert_eq!(apply(extract(), &gzip(data)).unwrap(), [b"first".to_vec(), br#"{"level":"info"}"#.to_vec()]);
        assert_eq!(apply(extract(), data).unwrap().len(), 2, "already decompressed payloads too");
        let control = br#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"",
            "subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE"}]}"#;
        assert!(apply(extract(), &gzip(control)).unwrap().is_empty(), "control messages are dropped");
        let whole = apply(TransformConfig::CloudwatchLogs { data_message_extraction: false }, &gzip(data)).unwrap();
        assert_eq!(whole, [data.to_vec()]);
        assert_eq!(apply(extract(), &gzip(b"{\"a\":1}")).unwrap_err().code, CLOUDWATCH_LOGS_INVALID);
        assert_eq!(apply(extract(), b"\x1f\x8bnot really").unwrap_err().code, CLOUDWATCH_LOGS_INVALID);
    }

    #[test]
    fn a_bad_expression_is_reported_with_its_index() {
        let problems = Transforms::build(&[jq("."), jq(".a | nosuchfn")]).err().expect("fails");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, 1);
        assert!(problems[0].1.contains("nosuchfn"), "{:?}", problems);
    }
}
