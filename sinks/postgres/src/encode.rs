//! The COPY encoder: each JSON record becomes one row of PostgreSQL's COPY *text* format as it
//! arrives (fields split by tab, `\N` for NULL, backslash escapes), so a closed batch is the
//! COPY body itself. Every control byte is escaped, so one line is one record: the sink can
//! find any record by its index (to split out bad rows) without parsing the payload again.
//!
//! When the table's shape is not known yet (PostgreSQL was unreachable at start), an encoder
//! keeps records as they came instead (`\x02`, then length-prefixed records) and the sink turns
//! them into rows once it has read the table ([`rows_from_raw`]).
//!
//! A record that cannot become a row (not JSON, not an object) is kept in its place as a
//! *rejected line*: `\x01` then the reason. The sink never sends it to the database and reports
//! it as that record's failure, so the rest of the batch loads and nothing is lost.
//!
//! When every column's type is one spillway converts exactly (see [`crate::binary`]), rows are
//! PostgreSQL's *binary* COPY tuples instead (the payload starts with [`BINARY`]): the server
//! then skips its text input functions, which is most of its COPY work on ~1 KiB records
//! (docs/benchmarks.md). A record refused in binary keeps its place as a refused tuple with the
//! SQLSTATE PostgreSQL would have answered. Text COPY stays for every other table (arrays,
//! ranges, `uuid`, …) and on request (`copy_format: text`).
//!
//! Must not: talk to the database.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::value::RawValue;
use spillway_sink_api::{EncodeError, Encoder, EncoderFactory, Payload};

use crate::binary::{self, BinaryType};
use crate::schema::{ColumnKind, CopyFormat, TableShape};

/// First byte of a rejected line; never the first byte of a row (control bytes are escaped).
pub const REJECTED: u8 = 0x01;
/// First byte of a payload of raw records (shape unknown when encoded); never a row's.
pub const RAW: u8 = 0x02;
/// First byte of a payload of binary COPY tuples (no header, no trailer: the sink adds them to
/// each COPY); never a text row's.
pub const BINARY: u8 = 0x03;

/// The table's shape, once known; shared by the sink (which reads it) and its encoders.
pub type SharedShape = Arc<OnceLock<Arc<TableShape>>>;

pub struct CopyEncoderFactory {
    shape: SharedShape,
}

impl CopyEncoderFactory {
    pub fn new(shape: SharedShape) -> Self {
        Self { shape }
    }
}

impl EncoderFactory for CopyEncoderFactory {
    fn new_encoder(&self, chunk_bytes: usize) -> Box<dyn Encoder> {
        Box::new(CopyEncoder { shape: self.shape.get().cloned(), out: Vec::with_capacity(chunk_bytes.min(1 << 20)) })
    }
}

pub struct CopyEncoder {
    /// `None`: keep raw records (see the module header).
    shape: Option<Arc<TableShape>>,
    out: Vec<u8>,
}

impl Encoder for CopyEncoder {
    fn push(&mut self, data: &[u8], _delimiter: &[u8]) -> Result<(), EncodeError> {
        let Some(shape) = &self.shape else {
            let length = u32::try_from(data.len()).map_err(|_| EncodeError::Record("record over 4 GiB".into()))?;
            if self.out.is_empty() {
                self.out.push(RAW);
            }
            self.out.extend_from_slice(&length.to_le_bytes());
            self.out.extend_from_slice(data);
            return Ok(());
        };
        if shape.format == CopyFormat::Binary {
            if self.out.is_empty() {
                self.out.push(BINARY);
            }
            let mark = self.out.len();
            if let Err(refused) = encode_binary_row(shape, data, &mut self.out) {
                self.out.truncate(mark);
                binary::push_refused(&refused.code, &refused.message, &mut self.out);
            }
            return Ok(());
        }
        let mark = self.out.len();
        if let Err(reason) = encode_row(shape, data, &mut self.out) {
            self.out.truncate(mark);
            self.out.push(REJECTED);
            escape_into(reason.as_bytes(), &mut self.out);
        }
        self.out.push(b'\n');
        Ok(())
    }

    fn held_bytes(&self) -> usize {
        self.out.capacity()
    }

    fn finish(self: Box<Self>) -> Result<Payload, EncodeError> {
        if self.out.is_empty() {
            return Ok(Payload::default());
        }
        Ok(Payload::from_chunks(vec![Bytes::from(self.out)]))
    }
}

/// Rows from a payload of raw records, now that the shape is known.
pub fn rows_from_raw(shape: Arc<TableShape>, raw: &[u8]) -> Result<Bytes, EncodeError> {
    let mut encoder: Box<dyn Encoder> =
        Box::new(CopyEncoder { shape: Some(shape), out: Vec::with_capacity(raw.len()) });
    let mut rest = raw.strip_prefix(&[RAW]).unwrap_or(raw);
    while !rest.is_empty() {
        let (length, tail) = rest.split_at_checked(4).ok_or(EncodeError::Record("truncated raw payload".into()))?;
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
        let (record, tail) =
            tail.split_at_checked(length).ok_or(EncodeError::Record("truncated raw payload".into()))?;
        encoder.push(record, b"")?;
        rest = tail;
    }
    Ok(encoder.finish()?.to_bytes())
}

/// One record as one COPY text row (without the newline), or why it cannot be one.
pub fn encode_row(shape: &TableShape, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|error| format!("the record is not UTF-8: {error}"))?;
    spillway_sink_api::check_json_depth(data).map_err(|too_deep| too_deep_reason(&too_deep))?;
    if shape.whole_record {
        let value: &RawValue =
            serde_json::from_str(text).map_err(|error| format!("the record is not JSON: {error}"))?;
        escape_into(value.get().as_bytes(), out);
        return Ok(());
    }
    let fields: HashMap<&str, &RawValue> = serde_json::from_str(text).map_err(|error| {
        if error.is_data() {
            "the record is not a JSON object".to_string()
        } else {
            format!("the record is not JSON: {error}")
        }
    })?;
    for (index, column) in shape.columns.iter().enumerate() {
        if index > 0 {
            out.push(b'\t');
        }
        match fields.get(column.name.as_str()) {
            None => out.extend_from_slice(b"\\N"),
            Some(value) => encode_value(column.kind, value, out)
                .map_err(|reason| format!("field {:?} ({}): {reason}", column.name, column.type_name))?,
        }
    }
    Ok(())
}

/// Why a record nested too deep becomes no row: checked before serde_json reads it and before
/// PostgreSQL would parse a `json` / `jsonb` value of it (which fails the whole COPY).
fn too_deep_reason(too_deep: &spillway_sink_api::TooDeep) -> String {
    format!("the record cannot be a row: {too_deep}")
}

/// Why a record cannot become a binary row: the error output's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: String,
    pub message: String,
}

impl Refused {
    fn invalid(message: String) -> Self {
        Self { code: "Postgres.InvalidRecord".into(), message }
    }
}

/// One record as one binary COPY tuple (field count, then each field), or why it cannot be one.
/// Only for a shape whose columns all have a [`BinaryType`].
pub fn encode_binary_row(shape: &TableShape, data: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
    let text =
        std::str::from_utf8(data).map_err(|error| Refused::invalid(format!("the record is not UTF-8: {error}")))?;
    spillway_sink_api::check_json_depth(data).map_err(|too_deep| Refused::invalid(too_deep_reason(&too_deep)))?;
    let count =
        i16::try_from(shape.columns.len()).map_err(|_| Refused::invalid("more than 32767 columns".to_string()))?;
    out.extend_from_slice(&count.to_be_bytes());
    if shape.whole_record {
        let value: &RawValue =
            serde_json::from_str(text).map_err(|error| Refused::invalid(format!("the record is not JSON: {error}")))?;
        // The record's JSON text as it is (a `null` record is JSON null, not SQL NULL).
        let jsonb = shape.columns.first().and_then(|column| column.binary) == Some(BinaryType::Jsonb);
        let length = value.get().len() + usize::from(jsonb);
        let length = i32::try_from(length).map_err(|_| Refused::invalid("the record is over 1 GiB".to_string()))?;
        out.extend_from_slice(&length.to_be_bytes());
        if jsonb {
            out.push(1);
        }
        out.extend_from_slice(value.get().as_bytes());
        return Ok(());
    }
    let fields: HashMap<&str, &RawValue> = serde_json::from_str(text).map_err(|error| {
        Refused::invalid(if error.is_data() {
            "the record is not a JSON object".to_string()
        } else {
            format!("the record is not JSON: {error}")
        })
    })?;
    for column in &shape.columns {
        let kind = column.binary.ok_or_else(|| {
            Refused::invalid(format!("column {} ({}) has no binary encoding", column.name, column.type_name))
        })?;
        binary::encode_field(kind, fields.get(column.name.as_str()).copied(), out).map_err(|refusal| {
            match refusal.sqlstate {
                // What the text encoder refuses too, in its words.
                "InvalidRecord" => {
                    Refused::invalid(format!("field {:?} ({}): {}", column.name, column.type_name, refusal.message))
                }
                // What PostgreSQL would have answered, as its errors read in the error output.
                sqlstate => Refused {
                    code: format!("Postgres.{sqlstate}"),
                    message: format!("{} (SQLSTATE {sqlstate}); column {}", refusal.message, column.name),
                },
            }
        })?;
    }
    Ok(())
}

fn encode_value(kind: ColumnKind, value: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
    let raw = value.get();
    let first = raw.as_bytes().first().copied().unwrap_or(b'n');
    if first == b'n' {
        out.extend_from_slice(b"\\N");
        return Ok(());
    }
    match (kind, first) {
        (ColumnKind::Json, _) => escape_into(raw.as_bytes(), out),
        (_, b'"') => {
            let text: std::borrow::Cow<'_, str> = serde_json::from_str(raw).map_err(|error| error.to_string())?;
            escape_into(text.as_bytes(), out);
        }
        (ColumnKind::Array, b'[') => {
            let array: serde_json::Value = serde_json::from_str(raw).map_err(|error| error.to_string())?;
            let mut literal = String::new();
            array_literal(&array, &mut literal);
            escape_into(literal.as_bytes(), out);
        }
        (ColumnKind::Timestamp | ColumnKind::Date, b'-' | b'0'..=b'9') => {
            let micros = binary::epoch_micros(raw).map_err(|refusal| refusal.message)?;
            out.extend_from_slice(epoch_text(micros, kind == ColumnKind::Date)?.as_bytes());
        }
        // Numbers and booleans as written; objects and arrays as JSON text.
        _ => escape_into(raw.as_bytes(), out),
    }
    Ok(())
}

/// Unix microseconds (from epoch seconds or milliseconds, [`binary::epoch_micros`]) as an ISO
/// timestamp in UTC, or its day.
fn epoch_text(micros: i64, date_only: bool) -> Result<String, String> {
    let time = chrono::DateTime::from_timestamp_micros(micros).ok_or("epoch time out of range")?;
    Ok(if date_only {
        time.format("%Y-%m-%d").to_string()
    } else {
        time.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
    })
}

/// A PostgreSQL array literal: `{1,2,NULL}`, `{"a b","c\"d"}`, nested arrays nested.
fn array_literal(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Array(items) => {
            out.push('{');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                array_literal(item, out);
            }
            out.push('}');
        }
        serde_json::Value::Null => out.push_str("NULL"),
        serde_json::Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        serde_json::Value::Number(number) => out.push_str(&number.to_string()),
        serde_json::Value::String(text) => quote_element(text, out),
        serde_json::Value::Object(_) => quote_element(&value.to_string(), out),
    }
}

fn quote_element(text: &str, out: &mut String) {
    out.push('"');
    for character in text.chars() {
        if character == '"' || character == '\\' {
            out.push('\\');
        }
        out.push(character);
    }
    out.push('"');
}

/// COPY text escaping: backslash, and every control byte (so a row never spans lines and never
/// starts with [`REJECTED`]).
pub fn escape_into(bytes: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if byte >= 0x20 && byte != b'\\' && byte != 0x7f {
            continue;
        }
        out.extend_from_slice(&bytes[start..index]);
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            other => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'x', HEX[(other >> 4) as usize], HEX[(other & 15) as usize]]);
            }
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The lines of a payload: `(offset, length)` of each row without its newline, in record order.
pub fn lines(body: &[u8]) -> Vec<(usize, usize)> {
    let mut lines = Vec::new();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body) {
        lines.push((start, end - start));
        start = end + 1;
    }
    if start < body.len() {
        lines.push((start, body.len() - start));
    }
    lines
}

/// Undo [`escape_into`] for a rejected line's reason.
pub fn unescape(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' && index + 1 < bytes.len() {
            match bytes[index + 1] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'x' if index + 3 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[index + 2..index + 4]).unwrap_or("3f");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    index += 4;
                    continue;
                }
                other => out.push(other),
            }
            index += 2;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;

    fn shape(columns: &[(&str, ColumnKind)]) -> TableShape {
        TableShape {
            table: "t".into(),
            columns: columns
                .iter()
                .map(|(name, kind)| Column { name: name.to_string(), type_name: "x".into(), kind: *kind, binary: None })
                .collect(),
            whole_record: false,
            format: CopyFormat::Text,
        }
    }

    fn row(shape: &TableShape, json: &str) -> Result<String, String> {
        let mut out = Vec::new();
        encode_row(shape, json.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn values_become_copy_text_by_column_kind() {
        let table = shape(&[
            ("s", ColumnKind::Scalar),
            ("n", ColumnKind::Scalar),
            ("b", ColumnKind::Scalar),
            ("j", ColumnKind::Json),
            ("a", ColumnKind::Array),
            ("ts", ColumnKind::Timestamp),
            ("d", ColumnKind::Date),
            ("missing", ColumnKind::Scalar),
        ]);
        let encoded = row(
            &table,
            r#"{"s":"tab\there \\ é","n":12345678901234567890.5,"b":true,"j":{"k":"v"},"a":[1,null,"x\"y"],"ts":1700000000.25,"d":86400,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            encoded,
            "tab\\there \\\\ é\t12345678901234567890.5\ttrue\t{\"k\":\"v\"}\t{1,NULL,\"x\\\\\"y\"}\t2023-11-14 22:13:20.250000+00\t1970-01-02\t\\N"
        );
        // A JSON string into jsonb keeps its quotes; null is SQL NULL everywhere.
        let table = shape(&[("j", ColumnKind::Json), ("s", ColumnKind::Scalar)]);
        assert_eq!(row(&table, r#"{"j":"text","s":null}"#).unwrap(), "\"text\"\t\\N");
    }

    #[test]
    fn records_that_cannot_be_rows_say_why() {
        let table = shape(&[("s", ColumnKind::Scalar)]);
        assert!(row(&table, "not json").unwrap_err().contains("not JSON"));
        assert!(row(&table, "[1,2]").unwrap_err().contains("not a JSON object"));
        let table = shape(&[("ts", ColumnKind::Timestamp)]);
        assert!(row(&table, r#"{"ts":1e300}"#).unwrap_err().contains("out of range"));
    }

    #[test]
    fn one_line_per_record_and_rejected_lines_keep_their_place() {
        let table = Arc::new(shape(&[("s", ColumnKind::Scalar)]));
        let mut encoder: Box<dyn Encoder> = CopyEncoderFactory::new(Arc::new(OnceLock::from(table))).new_encoder(1024);
        encoder.push(b"{\"s\":\"a\\nb\\u0001\"}\n", b"\n").unwrap();
        encoder.push(b"{oops", b"\n").unwrap();
        encoder.push(b"{\"s\":\"c\"}", b"").unwrap();
        let body = encoder.finish().unwrap().to_bytes();
        let found = lines(&body);
        assert_eq!(found.len(), 3);
        let line = |index: usize| &body[found[index].0..found[index].0 + found[index].1];
        assert_eq!(line(0), b"a\\nb\\x01");
        assert_eq!(line(1)[0], REJECTED);
        assert!(unescape(&line(1)[1..]).contains("not JSON"));
        assert_eq!(line(2), b"c");
    }

    #[test]
    fn records_encoded_before_the_shape_is_known_become_the_same_rows_later() {
        let cell: SharedShape = Arc::new(OnceLock::new());
        let factory = CopyEncoderFactory::new(cell.clone());
        let records: [&[u8]; 3] = [b"{\"s\":\"a\"}", b"oops", b"{\"s\":\"tab\\there\"}\n"];
        let mut early = factory.new_encoder(1024);
        for record in records {
            early.push(record, b"\n").unwrap();
        }
        let raw = early.finish().unwrap().to_bytes();
        assert_eq!(raw[0], RAW);
        cell.set(Arc::new(shape(&[("s", ColumnKind::Scalar)]))).unwrap();
        let mut late = factory.new_encoder(1024);
        for record in records {
            late.push(record, b"\n").unwrap();
        }
        let rows = late.finish().unwrap().to_bytes();
        assert_eq!(rows_from_raw(cell.get().unwrap().clone(), &raw).unwrap(), rows);
        assert_eq!(lines(&rows).len(), 3);
    }

    #[test]
    fn a_record_nested_past_the_bound_is_refused_in_text_and_in_binary() {
        let deep = format!(r#"{{"s":"a","x":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        let reason =
            "the record cannot be a row: JSON nested deeper than 100 levels (the bracket at byte 112 opens level 101)";
        let mut table = shape(&[("s", ColumnKind::Scalar)]);
        assert_eq!(row(&table, &deep).unwrap_err(), reason);
        // Whole records into jsonb: PostgreSQL would fail the whole COPY on it.
        table.whole_record = true;
        table.columns[0].binary = Some(BinaryType::Jsonb);
        let mut out = Vec::new();
        assert_eq!(
            encode_binary_row(&table, deep.as_bytes(), &mut out).unwrap_err(),
            Refused { code: "Postgres.InvalidRecord".into(), message: reason.into() }
        );
        let at_bound = format!(r#"{{"x":{}1{}}}"#, "[".repeat(99), "]".repeat(99));
        assert!(encode_binary_row(&table, at_bound.as_bytes(), &mut out).is_ok());
    }

    #[test]
    fn whole_records_go_into_one_column() {
        let mut table = shape(&[("doc", ColumnKind::Json)]);
        table.whole_record = true;
        assert_eq!(row(&table, "{\"a\":\"x\\ty\"}").unwrap(), "{\"a\":\"x\\\\ty\"}");
        assert!(row(&table, "{").is_err());
    }
}
