//! Dynamic partitioning keys, as Firehose's `MetadataExtraction` processor (`JsonParsingEngine`
//! `JQ-1.6`) computes them: one jq expression per key name, compiled once per stream with jaq,
//! evaluated per record into [`PartitionValues`], the map key of the record's open batch.
//!
//! Owns: compiling the expressions, evaluating them on a record's bytes, and deciding whether a
//! value can become part of an object key. Must not: know about batches, prefixes or sinks, do
//! I/O, or read the clock (a replayed record must get the same partition).
//!
//! Two evaluation paths that must agree (a test runs both on the same inputs):
//! - fast: when every expression is a plain field path (`.a`, `.a.b`, `."a-b"`), one pass of
//!   `serde_json` over the record picks out only the wanted fields; nothing else is built;
//! - jaq: anything else parses the record into a jaq value and runs the compiled filters.
//!
//! Values follow jq 1.6 text: strings give their text, booleans `true`/`false`, numbers their
//! value as a double (integral values below 1e17 print without a fraction: `1.0` → `1`; other
//! values print in shortest round-trip form, where jq 1.6 may use an exponent).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::jq::{JqFilter, compile_jq_with_globals, jq_error_text};
use crate::record_metadata::MetadataRef;
use jaq_core::{Ctx, Vars, data, unwrap_valr};
use jaq_json::{Num, Val};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Firehose's error code for a record whose partition keys cannot be extracted. Not in the AWS
/// guide's tables; observed in error output records and quoted by users, e.g. in the public
/// repositories govuk-one-login (txma event tests, `errorCode =
/// 'DynamicPartitioning.MetadataExtractionFailed'`) and several Terraform Firehose modules.
pub const METADATA_EXTRACTION_FAILED: &str = "DynamicPartitioning.MetadataExtractionFailed";

/// `!{firehose:error-output-type}` for such records: Firehose files them under
/// `metadata-extraction-failed` (observed in the same sources: error objects under
/// `<error prefix>metadata-extraction-failed/…`; AWS's `s3-prefixes` page lists only the older
/// types).
pub const METADATA_EXTRACTION_OUTPUT_TYPE: &str = "metadata-extraction-failed";

/// Longest value accepted: Firehose caps the whole evaluated prefix at 512 characters
/// (firehose.md §6), so a longer single value can never make a valid key.
const MAX_VALUE_LEN: usize = 512;

/// A record's partition: key name → value, in key-name order. Cheap to clone and hash, since it
/// is the map key of open batches. No keys (dynamic partitioning off) is [`PartitionValues::none`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PartitionValues(Arc<[(String, String)]>);

impl PartitionValues {
    /// The single partition of a stream without partition keys.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(name, value)` pairs in key-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// The shape prefix rendering takes (`RenderContext::partition_keys`).
    pub fn as_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

/// Why a record has no partition; the record goes to the error output under
/// [`METADATA_EXTRACTION_OUTPUT_TYPE`] with `code` as its `errorCode`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeyError {
    pub code: &'static str,
    pub message: String,
}

impl KeyError {
    fn new(message: impl Into<String>) -> Self {
        Self { code: METADATA_EXTRACTION_FAILED, message: message.into() }
    }

    fn for_key(key: &str, reason: impl fmt::Display) -> Self {
        Self::new(format!("partition key `{key}`: {reason}"))
    }
}

/// A key whose expression does not compile, with jaq's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partition key `{key}`: {message}")]
pub struct KeyCompileError {
    pub key: String,
    pub message: String,
}

struct CompiledKey {
    name: String,
    filter: JqFilter,
    /// The expression names [`METADATA_VARIABLE`].
    reads_metadata: bool,
}

/// The variable a key expression reads a record's source metadata from: the object the Lambda
/// event record carries (`mskRecordMetadata`: `topic`, `partitionId`, `offset`, `key`,
/// `headers`, …; `kinesisRecordMetadata`: `shardId`, `partitionKey`, …), `null` for records
/// without (Direct PUT, NDJSON, files). E.g. `topic: $metadata.topic`.
pub const METADATA_VARIABLE: &str = "$metadata";

/// A stream's partition keys, compiled once and shared by its delivery tasks.
pub struct PartitionKeys {
    /// In key-name order, so values come out in that order too.
    keys: Vec<CompiledKey>,
    /// Present when every expression is a plain field path.
    fast: Option<FieldTree>,
    /// Some expression names [`METADATA_VARIABLE`]: only then is a record's entry decoded.
    reads_metadata: bool,
}

// The pipeline shares one `PartitionKeys` between tasks.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PartitionKeys>();
};

impl fmt::Debug for PartitionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionKeys")
            .field("keys", &self.keys.iter().map(|key| key.name.as_str()).collect::<Vec<_>>())
            .field("fast_path", &self.fast.is_some())
            .field("reads_metadata", &self.reads_metadata)
            .finish()
    }
}

impl PartitionKeys {
    /// Compile every expression; on failure, every bad expression with its key name.
    pub fn compile(keys: &BTreeMap<String, String>) -> Result<Self, Vec<KeyCompileError>> {
        let mut compiled = Vec::with_capacity(keys.len());
        let mut errors = Vec::new();
        let mut paths = Vec::with_capacity(keys.len());
        for (name, expression) in keys {
            match compile_jq_with_globals(expression, &[METADATA_VARIABLE]) {
                Ok(filter) => {
                    paths.push(field_path(expression));
                    let reads_metadata = expression.contains(METADATA_VARIABLE);
                    compiled.push(CompiledKey { name: name.clone(), filter, reads_metadata });
                }
                Err(message) => errors.push(KeyCompileError { key: name.clone(), message }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let fast = paths.into_iter().collect::<Option<Vec<_>>>().map(|paths| FieldTree::build(&paths));
        // Textual, so a string that merely contains the name costs a decode, never a wrong value.
        let reads_metadata = compiled.iter().any(|key| key.reads_metadata);
        Ok(Self { keys: compiled, fast, reads_metadata })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.name.as_str())
    }

    /// The record's partition, or why it has none. `metadata`: the record's source metadata, read
    /// only when an expression names `$metadata`.
    pub fn evaluate(&self, record: &[u8], metadata: MetadataRef<'_>) -> Result<PartitionValues, KeyError> {
        if self.keys.is_empty() {
            return Ok(PartitionValues::none());
        }
        // On both paths, so they agree: jaq's reader recurses once per level without a bound.
        spillway_sink_api::check_json_depth(record)
            .map_err(|too_deep| KeyError::new(format!("the record cannot be read: {too_deep}")))?;
        match &self.fast {
            Some(tree) => self.evaluate_fast(tree, record),
            None => self.evaluate_jq(record, metadata),
        }
    }

    fn evaluate_fast(&self, tree: &FieldTree, record: &[u8]) -> Result<PartitionValues, KeyError> {
        let text = json_object_text(record)?;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; self.keys.len()];
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let walked = LevelSeed { tree, outcomes: &mut outcomes }
            .deserialize(&mut deserializer)
            .and_then(|()| deserializer.end());
        walked.map_err(|error| KeyError::new(format!("non JSON record provided: {error}")))?;
        let mut values = Vec::with_capacity(self.keys.len());
        for (key, outcome) in self.keys.iter().zip(outcomes) {
            let value = match outcome {
                Some(Outcome::Value(value)) => value,
                Some(Outcome::Failed(reason)) => return Err(KeyError::for_key(&key.name, reason)),
                None => return Err(KeyError::for_key(&key.name, Reason::Null)),
            };
            check_value(&key.name, &value)?;
            values.push((key.name.clone(), value));
        }
        Ok(PartitionValues(values.into()))
    }

    fn evaluate_jq(&self, record: &[u8], metadata: MetadataRef<'_>) -> Result<PartitionValues, KeyError> {
        // A record that is no JSON object fails every key that reads it; with `$metadata` the
        // keys still run (on `null`), so a text record can be partitioned by its topic.
        let (input, not_json) = match read_json_object(record) {
            Ok(input) => (input, None),
            Err(not_json) if !self.reads_metadata => return Err(not_json),
            Err(not_json) => (Val::Null, Some(not_json)),
        };
        let metadata = match metadata.to_json().filter(|_| self.reads_metadata) {
            None => None,
            // Our own JSON: it reads back.
            Some(json) => jaq_json::read::parse_single(json.to_string().as_bytes()).ok(),
        };
        let without_metadata = metadata.is_none();
        let metadata = metadata.unwrap_or(Val::Null);
        let mut values = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            let failed = |reason| match &not_json {
                // Which of the two made the key fail is not known: say both.
                Some(not_json) => KeyError::for_key(
                    &key.name,
                    format!("{reason} (the record was read as null: {})", not_json.message),
                ),
                None if key.reads_metadata && without_metadata && reason == Reason::Null => KeyError::for_key(
                    &key.name,
                    "value is null or missing: this record has no source metadata ($metadata is null; the \
                     kafka and kinesis sources give it)",
                ),
                None => KeyError::for_key(&key.name, reason),
            };
            let value = run_jq(&key.filter, input.clone(), metadata.clone()).map_err(failed)?;
            check_value(&key.name, &value)?;
            values.push((key.name.clone(), value));
        }
        Ok(PartitionValues(values.into()))
    }
}

/// The record as a jaq value, if it is a JSON object.
fn read_json_object(record: &[u8]) -> Result<Val, KeyError> {
    // serde_json decides what counts as JSON on both paths (jaq also accepts `#` comments).
    let text = json_object_text(record)?;
    serde_json::from_str::<IgnoredAny>(text)
        .map_err(|error| KeyError::new(format!("non JSON record provided: {error}")))?;
    jaq_json::read::parse_single(text.as_bytes())
        .map_err(|error| KeyError::new(format!("non JSON record provided: {error}")))
}

/// Why a key has no value for a record.
#[derive(Debug, Clone, PartialEq)]
enum Reason {
    Null,
    Array,
    Object,
    ByteString,
    NotFinite,
    CannotIndex(&'static str),
    NoOutput,
    SeveralOutputs,
    Jq(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Null => f.write_str("value is null or missing (partition key values must not be null or empty)"),
            Reason::Array => f.write_str("value is an array; a partition key needs a string, number or boolean"),
            Reason::Object => f.write_str("value is an object; a partition key needs a string, number or boolean"),
            Reason::ByteString => f.write_str("value is a byte string; a partition key needs text"),
            Reason::NotFinite => f.write_str("value is not a finite number"),
            Reason::CannotIndex(kind) => write!(f, "cannot index {kind} with a field name"),
            Reason::NoOutput => f.write_str("expression produced no value"),
            Reason::SeveralOutputs => f.write_str("expression produced more than one value"),
            Reason::Jq(message) => write!(f, "jq error: {message}"),
        }
    }
}

/// The record as text if it can be a JSON object at all (UTF-8, starts with `{`).
fn json_object_text(record: &[u8]) -> Result<&str, KeyError> {
    let text = std::str::from_utf8(record)
        .map_err(|error| KeyError::new(format!("non JSON record provided: not UTF-8 ({error})")))?;
    if !text.trim_start().starts_with('{') {
        return Err(KeyError::new("non JSON record provided: a record must be a JSON object"));
    }
    Ok(text)
}

/// Firehose puts values into object keys; refuse what cannot be one: empty values (Firehose:
/// "partitionKeys values must not be null or empty"), values longer than an evaluated prefix may
/// be, control characters, and `/`-separated pieces that are empty, `.` or `..` (object stores
/// refuse such paths). A value may contain `/` to make several levels (`2026/11/25`).
pub fn check_value(key: &str, value: &str) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::for_key(key, "value is empty (partition key values must not be null or empty)"));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(KeyError::for_key(
            key,
            format!("value is {} bytes long; at most {MAX_VALUE_LEN} fit in an object key prefix", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(KeyError::for_key(key, "value contains control characters, which cannot be in an object key"));
    }
    if value.split('/').any(|piece| piece.is_empty() || piece == "." || piece == "..") {
        return Err(KeyError::for_key(
            key,
            format!("value {value:?} has an empty, `.` or `..` path segment, which cannot be in an object key"),
        ));
    }
    Ok(())
}

/// jq 1.6 holds numbers as doubles; print them as it does for the common cases.
fn number_text(number: f64) -> Result<String, Reason> {
    if !number.is_finite() {
        return Err(Reason::NotFinite);
    }
    if number.fract() == 0.0 && number.abs() < 1e17 {
        // Exact: an integral double below 1e17 fits in i64.
        return Ok(format!("{}", number as i64));
    }
    Ok(format!("{number}"))
}

// ---------------------------------------------------------------------------------------------
// jaq path

fn run_jq(filter: &JqFilter, input: Val, metadata: Val) -> Result<String, Reason> {
    let context = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([metadata]));
    let mut outputs = filter.id.run((context, input)).map(unwrap_valr);
    let first = match outputs.next() {
        None => return Err(Reason::NoOutput),
        Some(Err(error)) => return Err(Reason::Jq(jq_error_text(error))),
        Some(Ok(value)) => value,
    };
    if outputs.next().is_some() {
        return Err(Reason::SeveralOutputs);
    }
    match first {
        Val::Null => Err(Reason::Null),
        Val::Bool(flag) => Ok(flag.to_string()),
        Val::Num(number) => number_text(num_as_f64(&number)),
        Val::TStr(text) => Ok(String::from_utf8_lossy(&text).into_owned()),
        Val::BStr(_) => Err(Reason::ByteString),
        Val::Arr(_) => Err(Reason::Array),
        Val::Obj(_) => Err(Reason::Object),
    }
}

fn num_as_f64(number: &Num) -> f64 {
    match number {
        Num::Float(value) => *value,
        // Integers, big integers and decimal literals all print as plain decimal text.
        other => other.to_string().parse().unwrap_or(f64::NAN),
    }
}

// ---------------------------------------------------------------------------------------------
// fast path

/// `.a`, `.a.b`, `."a-b"` → the field names; `None` for anything else (jaq evaluates it).
fn field_path(expression: &str) -> Option<Vec<String>> {
    let mut rest = expression.trim();
    let mut names = Vec::new();
    while !rest.is_empty() {
        rest = rest.strip_prefix('.')?;
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"')?;
            let name = &quoted[..end];
            // Escapes and `\(..)` interpolation are left to jaq.
            if name.contains('\\') {
                return None;
            }
            names.push(name.to_string());
            rest = &quoted[end + 1..];
        } else {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let name = &rest[..end];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            names.push(name.to_string());
            rest = &rest[end..];
        }
    }
    if names.is_empty() { None } else { Some(names) }
}

/// What one key got from the walk.
#[derive(Debug, Clone)]
enum Outcome {
    Value(String),
    Failed(Reason),
}

/// The wanted fields of one object level.
#[derive(Debug, Default)]
struct FieldTree {
    fields: Vec<FieldNode>,
}

#[derive(Debug)]
struct FieldNode {
    name: String,
    /// Keys whose path ends at this field.
    ends_here: Vec<usize>,
    below: FieldTree,
}

impl FieldTree {
    fn build(paths: &[Vec<String>]) -> Self {
        let mut root = FieldTree::default();
        for (key_index, path) in paths.iter().enumerate() {
            let mut level = &mut root;
            let mut names = path.iter().peekable();
            while let Some(name) = names.next() {
                let position = match level.fields.iter().position(|node| &node.name == name) {
                    Some(position) => position,
                    None => {
                        level.fields.push(FieldNode {
                            name: name.clone(),
                            ends_here: Vec::new(),
                            below: FieldTree::default(),
                        });
                        level.fields.len() - 1
                    }
                };
                let node = &mut level.fields[position];
                if names.peek().is_none() {
                    node.ends_here.push(key_index);
                }
                level = &mut node.below;
            }
        }
        root
    }

    fn find(&self, name: &str) -> Option<&FieldNode> {
        self.fields.iter().find(|node| node.name == name)
    }

    /// Every key at or under this level.
    fn for_each_key(&self, action: &mut impl FnMut(usize)) {
        for node in &self.fields {
            node.for_each_key(action);
        }
    }
}

impl FieldNode {
    fn for_each_key(&self, action: &mut impl FnMut(usize)) {
        self.ends_here.iter().copied().for_each(&mut *action);
        self.below.for_each_key(action);
    }
}

/// Walks one object, descending only into wanted fields.
struct LevelSeed<'t, 'o> {
    tree: &'t FieldTree,
    outcomes: &'o mut [Option<Outcome>],
}

impl<'de> DeserializeSeed<'de> for LevelSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LevelSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<FieldName<'de>>()? {
            match self.tree.find(&name.0) {
                Some(node) => map.next_value_seed(ValueSeed { node, outcomes: &mut *self.outcomes })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A field value: the text for keys ending here, a walk for keys below.
struct ValueSeed<'t, 'o> {
    node: &'t FieldNode,
    outcomes: &'o mut [Option<Outcome>],
}

impl ValueSeed<'_, '_> {
    /// A scalar (or null / array) ends every path here: keys ending here get `ends`, keys below
    /// get `below`.
    fn settle(self, ends: Result<String, Reason>, below: Reason) {
        // A repeated field replaces what an earlier occurrence gave (jq keeps the last one).
        self.node.below.for_each_key(&mut |key| self.outcomes[key] = Some(Outcome::Failed(below.clone())));
        for &key in &self.node.ends_here {
            self.outcomes[key] = Some(match &ends {
                Ok(value) => Outcome::Value(value.clone()),
                Err(reason) => Outcome::Failed(reason.clone()),
            });
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        self.settle(Ok(value.to_string()), Reason::CannotIndex("boolean"));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.settle(number_text(value as f64), Reason::CannotIndex("number"));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.settle(number_text(value as f64), Reason::CannotIndex("number"));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        self.settle(number_text(value), Reason::CannotIndex("number"));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.settle(Ok(value.to_string()), Reason::CannotIndex("string"));
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // jq: `null | .b` is null.
        self.settle(Err(Reason::Null), Reason::Null);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.settle(Err(Reason::Array), Reason::CannotIndex("array"));
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        // Fields missing from this occurrence are null, whatever an earlier duplicate gave.
        self.node.below.for_each_key(&mut |key| self.outcomes[key] = None);
        for &key in &self.node.ends_here {
            self.outcomes[key] = Some(Outcome::Failed(Reason::Object));
        }
        LevelSeed { tree: &self.node.below, outcomes: self.outcomes }.visit_map(map)
    }
}

/// An object key, borrowed from the record unless it has escapes.
struct FieldName<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = FieldName<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Borrowed(value)))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Owned(value.to_string())))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(name, expression)| (name.to_string(), expression.to_string())).collect()
    }

    fn compile(pairs: &[(&str, &str)]) -> PartitionKeys {
        match PartitionKeys::compile(&keys(pairs)) {
            Ok(compiled) => compiled,
            Err(errors) => panic!("compile failed: {errors:?}"),
        }
    }

    fn values(pairs: &[(&str, &str)]) -> PartitionValues {
        PartitionValues(pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect())
    }

    #[test]
    fn plain_field_paths_take_the_fast_path() {
        for expression in [".a", ".a.b", r#"."a-b""#, r#".a."b c".d"#, " .service ", "._x1"] {
            assert!(field_path(expression).is_some(), "{expression}");
        }
        for expression in [".", ".a | ascii_downcase", ".[0]", ".a[]", r#"."a\u0041""#, ".1a", "..", ".a?"] {
            assert!(field_path(expression).is_none(), "{expression}");
        }
        assert_eq!(field_path(r#".a."b-c".d"#), Some(vec!["a".into(), "b-c".into(), "d".into()]));
        assert!(compile(&[("s", ".service")]).fast.is_some());
        assert!(compile(&[("s", ".service"), ("y", ".ts | tostring")]).fast.is_none());
    }

    #[test]
    fn values_come_out_in_key_name_order_with_jq_text() {
        let partition_keys = compile(&[("service", ".service"), ("code", ".http.code"), ("ok", ".ok")]);
        let record = br#"{"service":"api","http":{"code":200.0,"path":"/x"},"ok":true,"noise":[1,{"a":2}]}"#;
        let partition = partition_keys.evaluate(record, MetadataRef::None).unwrap();
        assert_eq!(partition, values(&[("code", "200"), ("ok", "true"), ("service", "api")]));
        assert_eq!(partition.as_map().get("service").map(String::as_str), Some("api"));
        assert!(PartitionValues::none().is_empty());
    }

    /// A Kafka record's entry as the source writes it.
    fn kafka_entry() -> bytes::Bytes {
        crate::record_metadata::MetadataWriter::new("mskRecordMetadata")
            .text("offset", "42")
            .text("partitionId", "3")
            .integer("approximateArrivalTimestamp", 1_700_000_000_000)
            .text("topic", "orders")
            .text("key", "a2V5")
            .finish()
    }

    #[test]
    fn keys_read_the_record_s_source_metadata_as_metadata() {
        let entry = kafka_entry();
        let metadata = MetadataRef::Entry { entry: &entry, frame_shard: None };
        let keys = compile(&[
            ("topic", "$metadata.topic"),
            ("partition", "$metadata.partitionId"),
            ("key", "$metadata.key | @base64d"),
            ("customer", ".customer"),
        ]);
        let partition = keys.evaluate(br#"{"customer":"acme"}"#, metadata).unwrap();
        assert_eq!(
            partition.iter().collect::<Vec<_>>(),
            [("customer", "acme"), ("key", "key"), ("partition", "3"), ("topic", "orders")]
        );
        // Only the metadata is read: a record that is not JSON still gets its partition.
        let by_topic = compile(&[("topic", "$metadata.topic")]);
        assert_eq!(by_topic.evaluate(b"plain text", metadata).unwrap().as_map()["topic"], "orders");
        // A key that reads the record still needs JSON, and says so.
        let error = keys.evaluate(b"plain text", metadata).unwrap_err();
        assert_eq!(
            error.message,
            "partition key `customer`: value is null or missing (partition key values must not be null or empty) \
             (the record was read as null: non JSON record provided: a record must be a JSON object)"
        );
        // Without metadata (Direct PUT) the error says why the value is missing.
        let error = by_topic.evaluate(br#"{"a":1}"#, MetadataRef::None).unwrap_err();
        assert!(error.message.contains("no source metadata"), "{error}");
        // Keys that do not name it never decode it, and jq transforms do not know it.
        assert!(!compile(&[("a", ".a")]).reads_metadata);
        assert!(crate::processing::jq::compile_jq("$metadata").is_err());
    }

    #[test]
    fn jq_expressions_are_evaluated_by_jaq() {
        let partition_keys = compile(&[("service", ".service | ascii_downcase"), ("first", ".tags[0]")]);
        let partition = partition_keys.evaluate(br#"{"service":"API","tags":["a","b"]}"#, MetadataRef::None).unwrap();
        assert_eq!(partition, values(&[("first", "a"), ("service", "api")]));
    }

    #[test]
    fn compile_reports_every_bad_expression_with_its_key() {
        let errors = PartitionKeys::compile(&keys(&[("a", ".a |"), ("b", ".b"), ("c", "nosuchfn(1)")])).unwrap_err();
        let names: Vec<&str> = errors.iter().map(|error| error.key.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert!(errors[1].message.contains("undefined filter `nosuchfn`"), "{}", errors[1].message);
        assert!(errors[0].to_string().starts_with("partition key `a`: expected"), "{}", errors[0]);
    }

    /// The same inputs through both paths: the same partition, or an error on both with the
    /// Firehose code. Expressions are the plain paths; jaq runs them as jq would.
    #[test]
    fn fast_path_and_jaq_agree() {
        let partition_keys = compile(&[("a", ".a"), ("b", ".b.c"), ("d", r#"."d-e""#)]);
        assert!(partition_keys.fast.is_some());
        let records: &[&[u8]] = &[
            br#"{"a":"x","b":{"c":"y"},"d-e":"z"}"#,
            br#"{"a":1,"b":{"c":-0},"d-e":1.5}"#,
            br#"{"a":1e3,"b":{"c":12345678901234567890},"d-e":true}"#,
            br#"  {"a":"dup","a":"last","b":{"c":"1"},"b":{"c":"2"},"d-e":false}  "#,
            br#"{"a":"\u00e9t\u00e9","b":{"c":"k/v"},"d-e":"x"}"#,
            br#"{"a":null,"b":{"c":"y"},"d-e":"z"}"#,
            br#"{"b":{"c":"y"},"d-e":"z"}"#,
            br#"{"a":"x","b":"str","d-e":"z"}"#,
            br#"{"a":"x","b":null,"d-e":"z"}"#,
            br#"{"a":"x","b":[1],"d-e":"z"}"#,
            br#"{"a":"x","b":{"c":{"deep":1}},"d-e":"z"}"#,
            br#"{"a":"x","b":{"c":[]},"d-e":"z"}"#,
            br#"{"a":"","b":{"c":"y"},"d-e":"z"}"#,
            br#"{"a":"../x","b":{"c":"y"},"d-e":"z"}"#,
            br#"{"a":"line\nbreak","b":{"c":"y"},"d-e":"z"}"#,
            br#"{"a":"x","b":{"c":"y"},"d-e":"z"}{}"#,
            br#"[1,2]"#,
            br#""text""#,
            b"not json",
            b"{\"a\":\"\xff\"}",
            br#"{"a":"x","#,
        ];
        let tree = partition_keys.fast.as_ref().unwrap();
        for record in records {
            let fast = partition_keys.evaluate_fast(tree, record);
            let jq = partition_keys.evaluate_jq(record, MetadataRef::None);
            let shown = String::from_utf8_lossy(record);
            match (&fast, &jq) {
                (Ok(fast), Ok(jq)) => assert_eq!(fast, jq, "{shown}"),
                (Err(fast), Err(jq)) => {
                    assert_eq!(fast.code, METADATA_EXTRACTION_FAILED, "{shown}");
                    assert_eq!(jq.code, METADATA_EXTRACTION_FAILED, "{shown}");
                }
                _ => panic!("paths disagree on {shown}: fast {fast:?}, jaq {jq:?}"),
            }
        }
        const EXPECTED_OK: usize = 5;
        let expected: [PartitionValues; EXPECTED_OK] = [
            values(&[("a", "x"), ("b", "y"), ("d", "z")]),
            values(&[("a", "1"), ("b", "0"), ("d", "1.5")]),
            values(&[("a", "1000"), ("b", "12345678901234567000"), ("d", "true")]),
            values(&[("a", "last"), ("b", "2"), ("d", "false")]),
            values(&[("a", "été"), ("b", "k/v"), ("d", "x")]),
        ];
        for (record, expected) in records.iter().zip(expected) {
            assert_eq!(partition_keys.evaluate(record, MetadataRef::None).unwrap(), expected);
        }
        for record in &records[EXPECTED_OK..] {
            assert!(partition_keys.evaluate(record, MetadataRef::None).is_err(), "{}", String::from_utf8_lossy(record));
        }
    }

    #[test]
    fn errors_name_the_key_and_the_reason() {
        let partition_keys = compile(&[("service", ".service")]);
        let error = partition_keys.evaluate(br#"{"level":"info"}"#, MetadataRef::None).unwrap_err();
        assert_eq!(error.code, "DynamicPartitioning.MetadataExtractionFailed");
        assert!(error.message.contains("`service`") && error.message.contains("null or missing"), "{error}");
        let error = partition_keys.evaluate(b"plain text", MetadataRef::None).unwrap_err();
        assert!(error.message.starts_with("non JSON record provided"), "{error}");

        let jq_keys = compile(&[("many", ".xs[]"), ("none", "empty")]);
        let error = jq_keys.evaluate(br#"{"xs":[1,2]}"#, MetadataRef::None).unwrap_err();
        assert!(error.message.contains("`many`: expression produced more than one value"), "{error}");
        let error = jq_keys.evaluate(br#"{"xs":[1]}"#, MetadataRef::None).unwrap_err();
        assert!(error.message.contains("`none`: expression produced no value"), "{error}");
        let error = compile(&[("bad", ".a | error(\"boom\")")]).evaluate(br#"{"a":1}"#, MetadataRef::None).unwrap_err();
        assert!(error.message.contains("`bad`: jq error: boom"), "{error}");
        let long = format!(r#"{{"service":"{}"}}"#, "x".repeat(MAX_VALUE_LEN + 1));
        let error = partition_keys.evaluate(long.as_bytes(), MetadataRef::None).unwrap_err();
        assert!(error.message.contains("at most 512"), "{error}");
    }

    #[test]
    fn a_record_nested_past_the_bound_has_no_partition_on_either_path() {
        let deep = format!(r#"{{"service":"api","x":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        for expression in [".service", ".service | ascii_upcase"] {
            let error = compile(&[("service", expression)]).evaluate(deep.as_bytes(), MetadataRef::None).unwrap_err();
            assert_eq!(error.code, METADATA_EXTRACTION_FAILED);
            assert_eq!(
                error.message,
                "the record cannot be read: JSON nested deeper than 100 levels (the bracket at byte 120 opens level 101)",
                "{expression}"
            );
        }
        let at_bound = format!(r#"{{"service":"api","x":{}1{}}}"#, "[".repeat(99), "]".repeat(99));
        for expression in [".service", ".service | ascii_upcase"] {
            assert!(
                compile(&[("service", expression)]).evaluate(at_bound.as_bytes(), MetadataRef::None).is_ok(),
                "{expression}"
            );
        }
    }

    #[test]
    fn no_keys_means_one_partition() {
        let partition_keys = compile(&[]);
        assert_eq!(
            partition_keys.evaluate(b"anything, even not JSON", MetadataRef::None).unwrap(),
            PartitionValues::none()
        );
    }
}
