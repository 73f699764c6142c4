//! Schema inference from a stream's first records (`format.schema.infer`): each record is walked
//! once (no JSON tree kept) and its values widen an [`Inferred`] type, the least type that holds
//! every value seen so far. The encoder that holds the first records turns the result into the
//! table of the stream ([`Inferred::table`]).
//!
//! Types are Hive's, as a Glue crawler would name them: `boolean`, `bigint` (integers), `double`
//! (any number with a fraction or beyond 64 bits), `timestamp` (strings in an ISO-8601 / `yyyy-M-d
//! HH:mm:ss[.f]` shape that parse), `string`, `struct<…>` (objects), `array<…>` (arrays). Fields
//! only ever `null` (or arrays only ever empty) become `string`. Two different types of one field
//! widen to `double` (bigint and double) or else to `string`, which takes any JSON value (nested
//! values as their JSON text), so every record the inference saw fits the table it made.
//!
//! Must not: hold records or decide when to freeze (the encoder does).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::columns::{KeyOptions, parse_timestamp};
use super::schema::{ColumnType, Table};

/// The least type holding every value seen of one field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Inferred {
    /// Only `null` (or nothing) seen so far.
    #[default]
    Unknown,
    Boolean,
    BigInt,
    Double,
    Timestamp,
    String,
    /// Fields by column name (the normalized JSON key), in the order first seen.
    Struct(Vec<(String, Inferred)>),
    Array(Box<Inferred>),
}

impl Inferred {
    /// The least type holding the values of both.
    pub fn widen(self, other: Inferred) -> Inferred {
        match (self, other) {
            (Inferred::Unknown, other) | (other, Inferred::Unknown) => other,
            (Inferred::BigInt, Inferred::Double) | (Inferred::Double, Inferred::BigInt) => Inferred::Double,
            (Inferred::Struct(mut fields), Inferred::Struct(more)) => {
                for (name, value) in more {
                    match fields.iter_mut().find(|(known, _)| *known == name) {
                        Some((_, known)) => *known = std::mem::take(known).widen(value),
                        None => fields.push((name, value)),
                    }
                }
                Inferred::Struct(fields)
            }
            (Inferred::Array(element), Inferred::Array(more)) => Inferred::Array(Box::new(element.widen(*more))),
            (same, other) if same == other => same,
            _ => Inferred::String,
        }
    }

    /// The Hive column type; never-typed fields (and objects that never had a field) are strings.
    pub fn column_type(&self) -> ColumnType {
        match self {
            Inferred::Unknown | Inferred::String => ColumnType::String,
            Inferred::Boolean => ColumnType::Boolean,
            Inferred::BigInt => ColumnType::BigInt,
            Inferred::Double => ColumnType::Double,
            Inferred::Timestamp => ColumnType::Timestamp(arrow::datatypes::TimeUnit::Microsecond),
            Inferred::Struct(fields) if fields.is_empty() => ColumnType::String,
            Inferred::Struct(fields) => {
                ColumnType::Struct(fields.iter().map(|(name, value)| (name.clone(), value.column_type())).collect())
            }
            Inferred::Array(element) => ColumnType::Array(Box::new(element.column_type())),
        }
    }

    /// The table of a top-level record type; `None` when no record had a field.
    pub fn table(&self) -> Option<Table> {
        // An empty struct (or anything else) is a `string` column, not a table.
        match self.column_type() {
            ColumnType::Struct(columns) => Some(Table { columns }),
            _ => None,
        }
    }

    /// Widen `self` by one record (a JSON object). On error `self` may hold part of the record
    /// (types only ever widen, so the table still holds every record accepted before).
    pub fn add_record(&mut self, record: &[u8], options: &KeyOptions) -> Result<(), serde_json::Error> {
        if !matches!(self, Inferred::Struct(_)) {
            *self = Inferred::Struct(Vec::new());
        }
        let mut deserializer = serde_json::Deserializer::from_slice(record);
        RecordSeed(InferSeed { inferred: self, options }).deserialize(&mut deserializer)?;
        deserializer.end()
    }

    fn widen_in_place(&mut self, other: Inferred) {
        *self = std::mem::take(self).widen(other);
    }
}

/// A string that names an instant in a shape the timestamp column reads (ISO-8601 or `yyyy-M-d
/// HH:mm:ss`): epoch numbers written as strings stay strings.
fn looks_like_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 16
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes.contains(&b':')
        && parse_timestamp(text).is_some()
}

struct InferSeed<'a> {
    inferred: &'a mut Inferred,
    options: &'a KeyOptions,
}

impl<'de> DeserializeSeed<'de> for InferSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InferSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.inferred.widen_in_place(Inferred::Boolean);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.inferred.widen_in_place(Inferred::BigInt);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        let kind = if i64::try_from(value).is_ok() { Inferred::BigInt } else { Inferred::Double };
        self.inferred.widen_in_place(kind);
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.inferred.widen_in_place(Inferred::Double);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        let kind = if looks_like_timestamp(value) { Inferred::Timestamp } else { Inferred::String };
        self.inferred.widen_in_place(kind);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.inferred.widen_in_place(Inferred::Array(Box::default()));
        let Inferred::Array(element) = self.inferred else {
            // Already widened to a string: the array is read as its JSON text.
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        while seq.next_element_seed(InferSeed { inferred: element.as_mut(), options: self.options })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.inferred.widen_in_place(Inferred::Struct(Vec::new()));
        read_fields(self.inferred, self.options, map)
    }
}

/// Widen a struct (or the record) by one JSON object; a key seen twice counts once (the first,
/// as the column reader takes it).
fn read_fields<'de, A: MapAccess<'de>>(
    inferred: &mut Inferred,
    options: &KeyOptions,
    mut map: A,
) -> Result<(), A::Error> {
    let Inferred::Struct(fields) = inferred else {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        return Ok(());
    };
    let mut seen: Vec<usize> = Vec::new();
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        let name = options.normalize(&key).into_owned();
        if name.is_empty() {
            map.next_value::<IgnoredAny>()?;
            continue;
        }
        let index = match fields.iter().position(|(known, _)| *known == name) {
            Some(index) => index,
            None => {
                fields.push((name, Inferred::Unknown));
                fields.len() - 1
            }
        };
        if seen.contains(&index) {
            map.next_value::<IgnoredAny>()?;
            continue;
        }
        seen.push(index);
        map.next_value_seed(InferSeed { inferred: &mut fields[index].1, options })?;
    }
    Ok(())
}

/// One record: a JSON object.
struct RecordSeed<'a>(InferSeed<'a>);

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();
    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object (one record is one row)")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        read_fields(self.0.inferred, self.0.options, map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(records: &[&str], options: &KeyOptions) -> Inferred {
        let mut inferred = Inferred::Unknown;
        for record in records {
            inferred.add_record(record.as_bytes(), options).unwrap();
        }
        inferred
    }

    fn types(inferred: &Inferred) -> Vec<(String, String)> {
        let table = inferred.table().unwrap();
        table.columns.iter().map(|(name, column_type)| (name.clone(), format!("{column_type:?}"))).collect()
    }

    #[test]
    fn types_widen_across_records_in_first_seen_order() {
        let options = KeyOptions { case_insensitive: true, dots_to_underscores: false };
        let inferred = infer(
            &[
                r#"{"id":1,"price":2,"ok":true,"ts":"2026-11-25T17:20:09.404Z","Name":"a","none":null,"tags":[]}"#,
                r#"{"id":2,"price":2.5,"ok":false,"ts":"2026-11-25 17:20:09","name":"b","tags":["x"],"geo":{"lat":1.5}}"#,
                r#"{"id":3,"mixed":1,"epoch":"1764072000","geo":{"lat":2,"city":"x"},"empty":[]}"#,
                r#"{"mixed":"one","id":4,"ID":"dup ignored"}"#,
            ],
            &options,
        );
        let columns = types(&inferred);
        let expected: Vec<(&str, &str)> = vec![
            ("id", "BigInt"),
            ("price", "Double"),
            ("ok", "Boolean"),
            ("ts", "Timestamp(Microsecond)"),
            ("name", "String"),
            ("none", "String"),
            ("tags", "Array(String)"),
            ("geo", r#"Struct([("lat", Double), ("city", String)])"#),
            ("mixed", "String"),
            ("epoch", "String"),
            ("empty", "Array(String)"),
        ];
        let expected: Vec<(String, String)> =
            expected.into_iter().map(|(name, type_name)| (name.to_string(), type_name.to_string())).collect();
        assert_eq!(columns, expected);
    }

    #[test]
    fn conflicting_shapes_become_strings_and_big_numbers_doubles() {
        let options = KeyOptions::default();
        let inferred = infer(
            &[
                r#"{"a":{"x":1},"b":[1,2],"c":18446744073709551615,"d":"2026-11-25T17:20:09Z"}"#,
                r#"{"a":5,"b":[1.5,"x"],"c":1,"d":"later"}"#,
                r#"{"a":[1],"b":{"k":1}}"#,
            ],
            &options,
        );
        let columns = types(&inferred);
        assert_eq!(columns[0], ("a".into(), "String".into()));
        assert_eq!(columns[1], ("b".into(), "String".into()));
        assert_eq!(columns[2], ("c".into(), "Double".into()));
        assert_eq!(columns[3], ("d".into(), "String".into()));
    }

    #[test]
    fn keys_follow_the_openx_options_and_non_objects_are_refused() {
        let options = KeyOptions { case_insensitive: false, dots_to_underscores: true };
        let inferred = infer(&[r#"{"a.b":1,"A":true,"":3}"#], &options);
        assert_eq!(types(&inferred), vec![("a_b".into(), "BigInt".into()), ("A".into(), "Boolean".into())]);
        let mut other = Inferred::Unknown;
        assert!(other.add_record(b"[1,2]", &options).is_err());
        assert!(other.add_record(b"not json", &options).is_err());
        assert!(other.add_record(b"{}", &options).is_ok());
        assert_eq!(other.table(), None, "no field: no table");
    }

    #[test]
    fn widening_is_the_least_common_type() {
        assert_eq!(Inferred::Unknown.widen(Inferred::BigInt), Inferred::BigInt);
        assert_eq!(Inferred::Double.widen(Inferred::BigInt), Inferred::Double);
        assert_eq!(Inferred::Timestamp.widen(Inferred::Timestamp), Inferred::Timestamp);
        assert_eq!(Inferred::Timestamp.widen(Inferred::Boolean), Inferred::String);
        assert_eq!(
            Inferred::Array(Box::new(Inferred::BigInt)).widen(Inferred::Array(Box::new(Inferred::Unknown))),
            Inferred::Array(Box::new(Inferred::BigInt))
        );
    }
}
