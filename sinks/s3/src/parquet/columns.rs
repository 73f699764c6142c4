//! Typed column builders fed straight from a record's JSON bytes: a `serde` walk over the record
//! appends each value to its column as it is read, with no JSON tree in between. A record that
//! does not fit is rolled back (every column truncated to the rows before it), so one bad record
//! never leaves half a row behind. A finished row group becomes Arrow arrays without copying the
//! values again.
//!
//! Values are read as the OpenX JSON SerDe reads them (Firehose's default deserializer):
//! missing keys and `null` are null, unknown keys are ignored, keys match case-insensitively
//! (optional), numbers may come as strings, timestamps as ISO-8601 / `yyyy-M-d HH:mm:ss[.f]`
//! strings or epoch seconds / milliseconds, and a string column takes any JSON value (nested
//! values as their JSON text).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int8Array, Int16Array,
    Int32Array, Int64Array, ListArray, MapArray, StringArray, StructArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{Field, Fields, TimeUnit};
use arrow::error::ArrowError;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use spillway_sink_api::civil::{days_from_civil, days_in_month};

use super::schema::{ColumnType, map_entries, struct_fields};

/// How JSON keys are matched to column names (OpenX JSON SerDe options).
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    /// `CaseInsensitive`: keys and column names compare lowercased.
    pub case_insensitive: bool,
    /// `ConvertDotsInJsonKeysToUnderscores`: `a.b` in JSON matches column `a_b`.
    pub dots_to_underscores: bool,
}

impl KeyOptions {
    pub(super) fn normalize<'k>(&self, key: &'k str) -> std::borrow::Cow<'k, str> {
        let lower = self.case_insensitive && key.bytes().any(|byte| byte.is_ascii_uppercase());
        let dots = self.dots_to_underscores && key.contains('.');
        if !lower && !dots {
            return std::borrow::Cow::Borrowed(key);
        }
        let mut owned = if lower { key.to_ascii_lowercase() } else { key.to_string() };
        if dots {
            owned = owned.replace('.', "_");
        }
        std::borrow::Cow::Owned(owned)
    }
}

/// Values and validity of a fixed-width column.
#[derive(Debug, Default)]
pub struct Values<T> {
    values: Vec<T>,
    valid: Vec<bool>,
}

impl<T: Default + Copy> Values<T> {
    fn push(&mut self, value: T) {
        self.values.push(value);
        self.valid.push(true);
    }
    fn push_null(&mut self) {
        self.values.push(T::default());
        self.valid.push(false);
    }
    fn truncate(&mut self, rows: usize) {
        self.values.truncate(rows);
        self.valid.truncate(rows);
    }
    fn take(&mut self) -> (ScalarBuffer<T>, Option<NullBuffer>)
    where
        T: arrow::datatypes::ArrowNativeType,
    {
        let values = std::mem::take(&mut self.values);
        let valid = std::mem::take(&mut self.valid);
        (ScalarBuffer::from(values), nulls(valid))
    }
    fn bytes(&self) -> usize {
        self.values.len() * std::mem::size_of::<T>() + self.valid.len()
    }
}

fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|valid| *valid) { None } else { Some(NullBuffer::from(valid)) }
}

/// One column being built.
#[derive(Debug)]
pub enum Column {
    Bool(Values<bool>),
    I8(Values<i8>),
    I16(Values<i16>),
    I32(Values<i32>),
    I64(Values<i64>),
    F32(Values<f32>),
    F64(Values<f64>),
    Decimal { values: Values<i128>, precision: u8, scale: i8 },
    Date(Values<i32>),
    Timestamp { values: Values<i64>, unit: TimeUnit },
    Utf8 { offsets: Vec<i32>, bytes: Vec<u8>, valid: Vec<bool> },
    Struct(StructColumn),
    List { offsets: Vec<i32>, element: Box<Column>, valid: Vec<bool>, field: Arc<Field> },
    Map { offsets: Vec<i32>, keys: Box<Column>, values: Box<Column>, valid: Vec<bool>, entries: Arc<Field> },
}

/// A struct column (also the table itself): fields by normalized JSON key.
#[derive(Debug)]
pub struct StructColumn {
    fields: Fields,
    lookup: KeyLookup,
    children: Vec<Column>,
    valid: Vec<bool>,
    /// Which fields the record being read had (scratch).
    seen: Vec<bool>,
}

impl StructColumn {
    /// `renames`: column name → JSON key (`ColumnToJsonKeyMappings`, top level only).
    pub fn new(fields: &[(String, ColumnType)], options: Arc<KeyOptions>, renames: &HashMap<String, String>) -> Self {
        let keys = fields
            .iter()
            .map(|(name, _)| options.normalize(renames.get(name).map_or(name.as_str(), String::as_str)).into_owned())
            .collect();
        let lookup = KeyLookup::new(keys, options.clone());
        let children = fields.iter().map(|(_, column_type)| Column::new(column_type, options.clone())).collect();
        Self { fields: struct_fields(fields), lookup, children, valid: Vec::new(), seen: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.valid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.valid.is_empty()
    }

    pub fn truncate(&mut self, rows: usize) {
        self.valid.truncate(rows);
        for child in &mut self.children {
            child.truncate(rows);
        }
    }

    fn push_null(&mut self) {
        self.valid.push(false);
        for child in &mut self.children {
            child.push_null();
        }
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.valid.len() + self.children.iter().map(Column::bytes).sum::<usize>()
    }

    /// The rows so far as an Arrow struct array; the column is empty afterwards.
    pub fn finish(&mut self) -> Result<StructArray, ArrowError> {
        let children = self.children.iter_mut().map(Column::finish).collect::<Result<Vec<_>, _>>()?;
        let valid = std::mem::take(&mut self.valid);
        StructArray::try_new(self.fields.clone(), children, nulls(valid))
    }

    /// Read one JSON object into a new row (a top-level record or a nested struct value).
    fn read_object<'de, A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        // Reused from row to row: no allocation per record.
        let mut seen = std::mem::take(&mut self.seen);
        seen.clear();
        seen.resize(self.children.len(), false);
        let read = self.read_fields(&mut map, &mut seen);
        if read.is_ok() {
            for (child, seen) in self.children.iter_mut().zip(&seen) {
                if !seen {
                    child.push_null();
                }
            }
            self.valid.push(true);
        }
        self.seen = seen;
        read
    }

    fn read_fields<'de, A: MapAccess<'de>>(&mut self, map: &mut A, seen: &mut [bool]) -> Result<(), A::Error> {
        let mut hint = 0;
        while let Some(index) = map.next_key_seed(KeySeed { lookup: &self.lookup, hint })? {
            match index {
                Some(index) if !seen[index] => {
                    seen[index] = true;
                    hint = index + 1;
                    let name = self.fields[index].name();
                    map.next_value_seed(ColumnSeed(&mut self.children[index]))
                        .map_err(|error| de::Error::custom(format!("column `{name}`: {error}")))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl Column {
    pub fn new(column_type: &ColumnType, options: Arc<KeyOptions>) -> Self {
        match column_type {
            ColumnType::String => Column::Utf8 { offsets: vec![0], bytes: Vec::new(), valid: Vec::new() },
            ColumnType::Boolean => Column::Bool(Values::default()),
            ColumnType::TinyInt => Column::I8(Values::default()),
            ColumnType::SmallInt => Column::I16(Values::default()),
            ColumnType::Int => Column::I32(Values::default()),
            ColumnType::BigInt => Column::I64(Values::default()),
            ColumnType::Float => Column::F32(Values::default()),
            ColumnType::Double => Column::F64(Values::default()),
            ColumnType::Decimal { precision, scale } => {
                Column::Decimal { values: Values::default(), precision: *precision, scale: *scale }
            }
            ColumnType::Date => Column::Date(Values::default()),
            ColumnType::Timestamp(unit) => Column::Timestamp { values: Values::default(), unit: *unit },
            ColumnType::Struct(fields) => Column::Struct(StructColumn::new(fields, options, &HashMap::new())),
            ColumnType::Array(element) => Column::List {
                offsets: vec![0],
                element: Box::new(Column::new(element, options)),
                valid: Vec::new(),
                field: Arc::new(Field::new("element", element.data_type(), true)),
            },
            ColumnType::Map(value) => Column::Map {
                offsets: vec![0],
                keys: Box::new(Column::new(&ColumnType::String, options.clone())),
                values: Box::new(Column::new(value, options)),
                valid: Vec::new(),
                entries: map_entries(value),
            },
        }
    }

    fn push_null(&mut self) {
        match self {
            Column::Bool(values) => values.push_null(),
            Column::I8(values) => values.push_null(),
            Column::I16(values) => values.push_null(),
            Column::I32(values) | Column::Date(values) => values.push_null(),
            Column::I64(values) | Column::Timestamp { values, .. } => values.push_null(),
            Column::F32(values) => values.push_null(),
            Column::F64(values) => values.push_null(),
            Column::Decimal { values, .. } => values.push_null(),
            Column::Utf8 { offsets, bytes, valid } => {
                offsets.push(bytes.len() as i32);
                valid.push(false);
            }
            Column::Struct(column) => column.push_null(),
            Column::List { offsets, valid, .. } | Column::Map { offsets, valid, .. } => {
                offsets.push(offsets.last().copied().unwrap_or(0));
                valid.push(false);
            }
        }
    }

    fn truncate(&mut self, rows: usize) {
        match self {
            Column::Bool(values) => values.truncate(rows),
            Column::I8(values) => values.truncate(rows),
            Column::I16(values) => values.truncate(rows),
            Column::I32(values) | Column::Date(values) => values.truncate(rows),
            Column::I64(values) | Column::Timestamp { values, .. } => values.truncate(rows),
            Column::F32(values) => values.truncate(rows),
            Column::F64(values) => values.truncate(rows),
            Column::Decimal { values, .. } => values.truncate(rows),
            Column::Utf8 { offsets, bytes, valid } => {
                offsets.truncate(rows + 1);
                bytes.truncate(offsets.last().copied().unwrap_or(0) as usize);
                valid.truncate(rows);
            }
            Column::Struct(column) => column.truncate(rows),
            Column::List { offsets, element, valid, .. } => {
                offsets.truncate(rows + 1);
                element.truncate(offsets.last().copied().unwrap_or(0) as usize);
                valid.truncate(rows);
            }
            Column::Map { offsets, keys, values, valid, .. } => {
                offsets.truncate(rows + 1);
                let entries = offsets.last().copied().unwrap_or(0) as usize;
                keys.truncate(entries);
                values.truncate(entries);
                valid.truncate(rows);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::Bool(values) => values.valid.len(),
            Column::I8(values) => values.valid.len(),
            Column::I16(values) => values.valid.len(),
            Column::I32(values) | Column::Date(values) => values.valid.len(),
            Column::I64(values) | Column::Timestamp { values, .. } => values.valid.len(),
            Column::F32(values) => values.valid.len(),
            Column::F64(values) => values.valid.len(),
            Column::Decimal { values, .. } => values.valid.len(),
            Column::Utf8 { valid, .. } | Column::List { valid, .. } | Column::Map { valid, .. } => valid.len(),
            Column::Struct(column) => column.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Column::Bool(values) => values.bytes(),
            Column::I8(values) => values.bytes(),
            Column::I16(values) => values.bytes(),
            Column::I32(values) | Column::Date(values) => values.bytes(),
            Column::I64(values) | Column::Timestamp { values, .. } => values.bytes(),
            Column::F32(values) => values.bytes(),
            Column::F64(values) => values.bytes(),
            Column::Decimal { values, .. } => values.bytes(),
            Column::Utf8 { offsets, bytes, valid } => offsets.len() * 4 + bytes.len() + valid.len(),
            Column::Struct(column) => column.bytes(),
            Column::List { offsets, element, valid, .. } => offsets.len() * 4 + valid.len() + element.bytes(),
            Column::Map { offsets, keys, values, valid, .. } => {
                offsets.len() * 4 + valid.len() + keys.bytes() + values.bytes()
            }
        }
    }

    fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Column::Bool(values) => {
                let (buffer, nulls) = (std::mem::take(&mut values.values), std::mem::take(&mut values.valid));
                Arc::new(BooleanArray::new(buffer.into(), self::nulls(nulls)))
            }
            Column::I8(values) => {
                let (values, nulls) = values.take();
                Arc::new(Int8Array::new(values, nulls))
            }
            Column::I16(values) => {
                let (values, nulls) = values.take();
                Arc::new(Int16Array::new(values, nulls))
            }
            Column::I32(values) => {
                let (values, nulls) = values.take();
                Arc::new(Int32Array::new(values, nulls))
            }
            Column::I64(values) => {
                let (values, nulls) = values.take();
                Arc::new(Int64Array::new(values, nulls))
            }
            Column::F32(values) => {
                let (values, nulls) = values.take();
                Arc::new(Float32Array::new(values, nulls))
            }
            Column::F64(values) => {
                let (values, nulls) = values.take();
                Arc::new(Float64Array::new(values, nulls))
            }
            Column::Decimal { values, precision, scale } => {
                let (values, nulls) = values.take();
                Arc::new(Decimal128Array::new(values, nulls).with_precision_and_scale(*precision, *scale)?)
            }
            Column::Date(values) => {
                let (values, nulls) = values.take();
                Arc::new(Date32Array::new(values, nulls))
            }
            Column::Timestamp { values, unit } => {
                let (values, nulls) = values.take();
                match unit {
                    TimeUnit::Second => Arc::new(TimestampSecondArray::new(values, nulls).with_timezone("UTC")),
                    TimeUnit::Millisecond => {
                        Arc::new(TimestampMillisecondArray::new(values, nulls).with_timezone("UTC"))
                    }
                    TimeUnit::Microsecond => {
                        Arc::new(TimestampMicrosecondArray::new(values, nulls).with_timezone("UTC"))
                    }
                    TimeUnit::Nanosecond => Arc::new(TimestampNanosecondArray::new(values, nulls).with_timezone("UTC")),
                }
            }
            Column::Utf8 { offsets, bytes, valid } => {
                let offsets = std::mem::replace(offsets, vec![0]);
                let bytes = std::mem::take(bytes);
                let valid = std::mem::take(valid);
                Arc::new(StringArray::try_new(
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    Buffer::from_vec(bytes),
                    nulls(valid),
                )?)
            }
            Column::Struct(column) => Arc::new(column.finish()?),
            Column::List { offsets, element, valid, field } => {
                let offsets = std::mem::replace(offsets, vec![0]);
                let valid = std::mem::take(valid);
                Arc::new(ListArray::try_new(
                    field.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    element.finish()?,
                    nulls(valid),
                )?)
            }
            Column::Map { offsets, keys, values, valid, entries } => {
                let offsets = std::mem::replace(offsets, vec![0]);
                let valid = std::mem::take(valid);
                let Some(entry_fields) = (match entries.data_type() {
                    arrow::datatypes::DataType::Struct(fields) => Some(fields.clone()),
                    _ => None,
                }) else {
                    return Err(ArrowError::SchemaError("map entries must be a struct".into()));
                };
                let entry_array = StructArray::try_new(entry_fields, vec![keys.finish()?, values.finish()?], None)?;
                Arc::new(MapArray::try_new(
                    entries.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    entry_array,
                    nulls(valid),
                    false,
                )?)
            }
        })
    }

    fn type_name(&self) -> &'static str {
        match self {
            Column::Bool(_) => "boolean",
            Column::I8(_) => "tinyint",
            Column::I16(_) => "smallint",
            Column::I32(_) => "int",
            Column::I64(_) => "bigint",
            Column::F32(_) => "float",
            Column::F64(_) => "double",
            Column::Decimal { .. } => "decimal",
            Column::Date(_) => "date",
            Column::Timestamp { .. } => "timestamp",
            Column::Utf8 { .. } => "string",
            Column::Struct(_) => "struct (a JSON object)",
            Column::List { .. } => "array (a JSON array)",
            Column::Map { .. } => "map (a JSON object)",
        }
    }

    fn push_str(&mut self, text: &str) -> Result<(), String> {
        match self {
            Column::Utf8 { offsets, bytes, valid } => {
                bytes.extend_from_slice(text.as_bytes());
                let end = i32::try_from(bytes.len()).map_err(|_| "a row group's strings exceed 2 GiB".to_string())?;
                offsets.push(end);
                valid.push(true);
                Ok(())
            }
            Column::Bool(values) => {
                let value = match text.trim() {
                    "true" | "TRUE" | "True" => true,
                    "false" | "FALSE" | "False" => false,
                    _ => return Err(format!("expected boolean, got the string {text:?}")),
                };
                values.push(value);
                Ok(())
            }
            Column::I8(_) | Column::I16(_) | Column::I32(_) | Column::I64(_) => match text.trim().parse::<i64>() {
                Ok(value) => self.push_i64(value),
                Err(_) => Err(format!("expected {}, got the string {text:?}", self.type_name())),
            },
            Column::F32(values) => {
                text.trim().parse().map(|value| values.push(value)).map_err(|_| format!("expected float, got {text:?}"))
            }
            Column::F64(values) => text
                .trim()
                .parse()
                .map(|value| values.push(value))
                .map_err(|_| format!("expected double, got {text:?}")),
            Column::Decimal { values, precision, scale } => {
                let value = parse_decimal(text.trim(), *precision, *scale)?;
                values.push(value);
                Ok(())
            }
            Column::Date(values) => {
                let date = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                    .map_err(|_| format!("expected a date (yyyy-MM-dd), got {text:?}"))?;
                values.push((date - chrono::NaiveDate::default()).num_days() as i32);
                Ok(())
            }
            Column::Timestamp { values, unit } => {
                let nanos = parse_timestamp(text.trim()).ok_or_else(|| {
                    format!(
                        "expected a timestamp (yyyy-MM-ddTHH:mm:ss[.f]Z, yyyy-M-d HH:mm:ss[.f] or epoch), got {text:?}"
                    )
                })?;
                values.push(from_nanos(nanos, *unit)?);
                Ok(())
            }
            other => Err(format!("expected {}, got the string {text:?}", other.type_name())),
        }
    }

    fn push_i64(&mut self, value: i64) -> Result<(), String> {
        let out_of_range = |name: &str| format!("{value} is out of range for {name}");
        match self {
            Column::I8(values) => values.push(i8::try_from(value).map_err(|_| out_of_range("tinyint"))?),
            Column::I16(values) => values.push(i16::try_from(value).map_err(|_| out_of_range("smallint"))?),
            Column::I32(values) => values.push(i32::try_from(value).map_err(|_| out_of_range("int"))?),
            Column::I64(values) => values.push(value),
            Column::F32(values) => values.push(value as f32),
            Column::F64(values) => values.push(value as f64),
            Column::Decimal { values, precision, scale } => {
                let scaled = i128::from(value)
                    .checked_mul(10i128.pow(*scale as u32))
                    .filter(|scaled| fits_precision(*scaled, *precision))
                    .ok_or_else(|| out_of_range("the decimal's precision"))?;
                values.push(scaled);
            }
            Column::Date(values) => values.push(i32::try_from(value).map_err(|_| out_of_range("date"))?),
            Column::Timestamp { values, unit } => values.push(from_nanos(epoch_nanos(value), *unit)?),
            Column::Utf8 { .. } => return self.push_str(&value.to_string()),
            other => return Err(format!("expected {}, got the number {value}", other.type_name())),
        }
        Ok(())
    }

    fn push_f64(&mut self, value: f64) -> Result<(), String> {
        match self {
            Column::F32(values) => values.push(value as f32),
            Column::F64(values) => values.push(value),
            Column::I8(_) | Column::I16(_) | Column::I32(_) | Column::I64(_) | Column::Date(_) => {
                if value.fract() != 0.0 || !value.is_finite() || value.abs() > 9.0e18 {
                    return Err(format!("expected {}, got the number {value}", self.type_name()));
                }
                return self.push_i64(value as i64);
            }
            // Shortest round-trip text: `12.34` stays 12.34, not 12.339999….
            Column::Decimal { .. } | Column::Utf8 { .. } => return self.push_str(&value.to_string()),
            Column::Timestamp { values, unit } => {
                // Fractional epoch seconds.
                let nanos = (value * 1e9).round();
                if !nanos.is_finite() || nanos.abs() > 9.2e18 {
                    return Err(format!("timestamp {value} is out of range"));
                }
                values.push(from_nanos(nanos as i128, *unit)?);
            }
            other => return Err(format!("expected {}, got the number {value}", other.type_name())),
        }
        Ok(())
    }
}

/// Epoch seconds or milliseconds, as the OpenX SerDe accepts both: values of 10^11 and more
/// (year 5138 in seconds) are milliseconds.
fn epoch_nanos(value: i64) -> i128 {
    if value.unsigned_abs() >= 100_000_000_000 {
        i128::from(value) * 1_000_000
    } else {
        i128::from(value) * 1_000_000_000
    }
}

fn from_nanos(nanos: i128, unit: TimeUnit) -> Result<i64, String> {
    let value = match unit {
        TimeUnit::Second => nanos.div_euclid(1_000_000_000),
        TimeUnit::Millisecond => nanos.div_euclid(1_000_000),
        TimeUnit::Microsecond => nanos.div_euclid(1_000),
        TimeUnit::Nanosecond => nanos,
    };
    i64::try_from(value).map_err(|_| "the timestamp is out of range for its unit".to_string())
}

/// Nanoseconds since the epoch of an ISO-8601 instant (`Z` or an offset), a zone-less
/// `yyyy-M-d[ T]HH:mm:ss[.f]` (UTC), or epoch seconds / milliseconds as text.
pub(super) fn parse_timestamp(text: &str) -> Option<i128> {
    if let Some(nanos) = parse_iso_fast(text.as_bytes()) {
        return Some(nanos);
    }
    if let Ok(instant) = chrono::DateTime::parse_from_rfc3339(text) {
        return instant.timestamp_nanos_opt().map(i128::from);
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return naive.and_utc().timestamp_nanos_opt().map(i128::from);
        }
    }
    if let Ok(seconds) = text.parse::<i64>() {
        return Some(epoch_nanos(seconds));
    }
    text.parse::<f64>().ok().filter(|seconds| seconds.is_finite()).map(|seconds| (seconds * 1e9).round() as i128)
}

/// The common shape `yyyy-MM-ddTHH:mm:ss[.f]` (`T` or a space; `Z`, `±HH:MM` or no zone: UTC),
/// read without chrono's general parser (a third of a row's cost on log records); anything else,
/// or an impossible date, is left to the general path.
fn parse_iso_fast(text: &[u8]) -> Option<i128> {
    fn digits(bytes: &[u8]) -> Option<i64> {
        bytes.iter().try_fold(0i64, |value, byte| byte.is_ascii_digit().then(|| value * 10 + i64::from(byte - b'0')))
    }
    if text.len() < 19 || text[4] != b'-' || text[7] != b'-' || !matches!(text[10], b'T' | b' ') {
        return None;
    }
    if text[13] != b':' || text[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(&text[0..4])?, digits(&text[5..7])?, digits(&text[8..10])?);
    let (hour, minute, second) = (digits(&text[11..13])?, digits(&text[14..16])?, digits(&text[17..19])?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let length = fraction.iter().take_while(|byte| byte.is_ascii_digit()).count();
        if length == 0 || length > 9 {
            return None;
        }
        nanos = digits(&fraction[..length])? * 10i64.pow(9 - length as u32);
        rest = &fraction[length..];
    }
    let offset_seconds = match rest {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(&[*h1, *h2])?;
            let minutes = digits(&[*m1, *m2])?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    // The general path answers `None` outside i64 nanoseconds too.
    i64::try_from(total).ok().map(i128::from)
}

fn fits_precision(value: i128, precision: u8) -> bool {
    value.unsigned_abs() < 10u128.pow(u32::from(precision))
}

/// A decimal text (`-12.345`) as an integer with `scale` fraction digits, rounded half away from
/// zero.
fn parse_decimal(text: &str, precision: u8, scale: i8) -> Result<i128, String> {
    let invalid = || format!("expected decimal({precision},{scale}), got {text:?}");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().all(|byte| byte.is_ascii_digit())
        || !fraction.bytes().all(|byte| byte.is_ascii_digit())
    {
        return Err(invalid());
    }
    let scale = scale.max(0) as usize;
    let mut value: i128 = 0;
    for byte in whole.bytes().chain(fraction.bytes().chain(std::iter::repeat(b'0')).take(scale)) {
        value =
            value.checked_mul(10).and_then(|value| value.checked_add(i128::from(byte - b'0'))).ok_or_else(invalid)?;
    }
    if fraction.len() > scale && fraction.as_bytes()[scale] >= b'5' {
        value += 1;
    }
    if !fits_precision(value, precision) {
        return Err(format!("{text} does not fit decimal({precision},{scale})"));
    }
    Ok(if negative { -value } else { value })
}

/// Finds the field a JSON key names without allocating or hashing: records of one stream
/// mostly list their keys in the same order, so the field after the previous match is tried
/// first, then every field (a handful to a few dozen) compared byte by byte.
#[derive(Debug)]
struct KeyLookup {
    /// Normalized (lowercased when case-insensitive) key of each field, by field index.
    keys: Vec<Box<[u8]>>,
    options: Arc<KeyOptions>,
}

impl KeyLookup {
    fn new(keys: Vec<String>, options: Arc<KeyOptions>) -> Self {
        Self { keys: keys.into_iter().map(|key| key.into_bytes().into_boxed_slice()).collect(), options }
    }

    fn find(&self, key: &str, hint: usize) -> Option<usize> {
        let key = key.as_bytes();
        if self.keys.get(hint).is_some_and(|wanted| self.matches(wanted, key)) {
            return Some(hint);
        }
        self.keys.iter().position(|wanted| self.matches(wanted, key))
    }

    fn matches(&self, wanted: &[u8], key: &[u8]) -> bool {
        if wanted.len() != key.len() {
            return false;
        }
        // Keys mostly come as the column is named: one memcmp before the folding compare.
        if wanted == key {
            return true;
        }
        let (lower, dots) = (self.options.case_insensitive, self.options.dots_to_underscores);
        if !lower && !dots {
            return false;
        }
        wanted.iter().zip(key).all(|(&wanted, &byte)| {
            let byte = if dots && byte == b'.' { b'_' } else { byte };
            wanted == if lower { byte.to_ascii_lowercase() } else { byte }
        })
    }
}

/// Reads one JSON key and answers which field it names (`None`: not a column).
struct KeySeed<'a> {
    lookup: &'a KeyLookup,
    hint: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.lookup.find(key, self.hint))
    }
}

/// Reads one JSON value into a column.
pub struct ColumnSeed<'a>(pub &'a mut Column);

impl<'de> DeserializeSeed<'de> for ColumnSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ColumnSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        write!(formatter, "a JSON value for a {} column", self.0.type_name())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push_null();
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        match self.0 {
            Column::Bool(values) => {
                values.push(value);
                Ok(())
            }
            Column::Utf8 { .. } => self.0.push_str(if value { "true" } else { "false" }).map_err(E::custom),
            other => Err(E::custom(format!("expected {}, got {value}", other.type_name()))),
        }
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.0.push_i64(value).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        match i64::try_from(value) {
            Ok(value) => self.0.push_i64(value).map_err(E::custom),
            Err(_) => self.0.push_f64(value as f64).map_err(E::custom),
        }
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        self.0.push_f64(value).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.0.push_str(value).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match self.0 {
            Column::List { offsets, element, valid, .. } => {
                let mut index = 0usize;
                while seq
                    .next_element_seed(ColumnSeed(element))
                    .map_err(|error| de::Error::custom(format!("element {index}: {error}")))?
                    .is_some()
                {
                    index += 1;
                }
                let end = i32::try_from(element.len()).map_err(|_| de::Error::custom("too many array elements"))?;
                offsets.push(end);
                valid.push(true);
                Ok(())
            }
            Column::Utf8 { .. } => {
                let value = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                self.0.push_str(&value.to_string()).map_err(de::Error::custom)
            }
            other => Err(de::Error::custom(format!("expected {}, got an array", other.type_name()))),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.0 {
            Column::Struct(column) => column.read_object(map),
            Column::Map { offsets, keys, values, valid, .. } => {
                while let Some(key) = map.next_key::<String>()? {
                    keys.push_str(&key).map_err(de::Error::custom)?;
                    map.next_value_seed(ColumnSeed(values))
                        .map_err(|error| de::Error::custom(format!("key {key:?}: {error}")))?;
                }
                let end = i32::try_from(keys.len()).map_err(|_| de::Error::custom("too many map entries"))?;
                offsets.push(end);
                valid.push(true);
                Ok(())
            }
            Column::Utf8 { .. } => {
                let value = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                self.0.push_str(&value.to_string()).map_err(de::Error::custom)
            }
            other => Err(de::Error::custom(format!("expected {}, got an object", other.type_name()))),
        }
    }
}

use serde::Deserialize as _;

/// Reads one record (a JSON object) into a new row of the table.
pub struct RowSeed<'a>(pub &'a mut StructColumn);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object (one record is one row)")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.read_object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly_and_round_half_away_from_zero() {
        assert_eq!(parse_decimal("12.345", 10, 2), Ok(1235));
        assert_eq!(parse_decimal("-0.5", 3, 0), Ok(-1));
        assert_eq!(parse_decimal("7", 5, 3), Ok(7000));
        assert!(parse_decimal("123.4", 3, 1).is_err(), "precision");
        assert!(parse_decimal("1e5", 10, 0).is_err());
    }

    #[test]
    fn timestamps_parse_in_openx_formats() {
        let expected = 1_764_072_000_000_000_000i128; // 2025-11-25T12:00:00Z
        assert_eq!(parse_timestamp("2025-11-25T12:00:00Z"), Some(expected));
        assert_eq!(parse_timestamp("2025-11-25T13:00:00+01:00"), Some(expected));
        assert_eq!(parse_timestamp("2025-11-25 12:00:00"), Some(expected));
        assert_eq!(parse_timestamp("2025-11-25 12:00:00.25"), Some(expected + 250_000_000));
        assert_eq!(parse_timestamp("1764072000"), Some(expected));
        assert_eq!(parse_timestamp("1764072000000"), Some(expected));
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn the_fast_iso_path_agrees_with_chrono() {
        let samples = [
            "2025-11-25T12:00:00Z",
            "2026-11-25T17:20:09.404Z",
            "2024-02-29T23:59:59.123456789Z",
            "1969-12-31T23:59:59.5Z",
            "1900-03-01 00:00:00",
            "2025-11-25T13:00:00+01:00",
            "2025-11-25T10:30:00.25-01:30",
            "0001-01-01T00:00:00Z",
            "2262-04-11T23:47:16Z",
        ];
        for sample in samples {
            let general = chrono::DateTime::parse_from_rfc3339(sample)
                .ok()
                .and_then(|instant| instant.timestamp_nanos_opt())
                .or_else(|| {
                    chrono::NaiveDateTime::parse_from_str(sample, "%Y-%m-%d %H:%M:%S%.f")
                        .ok()
                        .and_then(|naive| naive.and_utc().timestamp_nanos_opt())
                })
                .map(i128::from);
            assert_eq!(parse_iso_fast(sample.as_bytes()), general, "{sample}");
        }
        for refused in ["2025-02-30T00:00:00Z", "2025-13-01T00:00:00Z", "2025-11-25T24:00:00Z", "2025-11-25T12:00:00.Z"]
        {
            assert_eq!(parse_iso_fast(refused.as_bytes()), None, "{refused}");
        }
    }
}
