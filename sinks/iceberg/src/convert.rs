//! Records into a table's columns: the table's current schema becomes the S3 sink's Parquet
//! column types ([`ColumnType`]), records are read into its column builders with the same
//! OpenX-style rules as `format: parquet` (key matching, number and timestamp forms), and the
//! rows become one Arrow batch in the table's own Arrow schema (field ids included, through
//! [`crate::bridge`]). A record that is not JSON, does not fit a column's type or leaves a
//! required column empty is refused with Firehose's `DataFormatConversion.*` code.
//!
//! Must not: do I/O; it runs on a blocking thread.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, StructArray};
use arrow::datatypes::TimeUnit;
use iceberg::spec::{PrimitiveType, Schema, Type};
use spillway_sink_s3::parquet::columns::{KeyOptions, StructColumn};
use spillway_sink_s3::parquet::schema::ColumnType;
use spillway_sink_s3::parquet::{MALFORMED_DATA, read_row};

use crate::bridge;

/// A record that was refused: its index in the batch, Firehose's code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

/// How JSON keys meet column names (the Parquet encoder's OpenX options).
#[derive(Debug, Clone, Default)]
pub struct KeyMatching {
    pub case_insensitive: bool,
    pub dots_to_underscores: bool,
    /// Column name → the JSON key it is read from (top level).
    pub renames: HashMap<String, String>,
}

/// The rows of a batch that fit, in the table's Arrow schema (arrow 58, iceberg's), and the
/// records that did not.
pub struct Converted {
    pub rows: arrow_array_58::RecordBatch,
    pub misfits: Vec<Misfit>,
}

/// The column types of `schema`, or which column spillway cannot fill from JSON.
pub fn columns_of(schema: &Schema) -> Result<Vec<(String, ColumnType)>, String> {
    schema
        .as_struct()
        .fields()
        .iter()
        .map(|field| Ok((field.name.clone(), column_type(&field.name, &field.field_type)?)))
        .collect()
}

fn column_type(path: &str, field_type: &Type) -> Result<ColumnType, String> {
    Ok(match field_type {
        Type::Primitive(primitive) => match primitive {
            PrimitiveType::Boolean => ColumnType::Boolean,
            PrimitiveType::Int => ColumnType::Int,
            PrimitiveType::Long => ColumnType::BigInt,
            PrimitiveType::Float => ColumnType::Float,
            PrimitiveType::Double => ColumnType::Double,
            PrimitiveType::Decimal { precision, scale } => {
                let narrow_precision = u8::try_from(*precision).ok().filter(|precision| (1..=38).contains(precision));
                let narrow_scale = i8::try_from(*scale).ok();
                match (narrow_precision, narrow_scale) {
                    (Some(precision), Some(scale)) => ColumnType::Decimal { precision, scale },
                    _ => return Err(format!("column `{path}`: decimal({precision}, {scale}) is out of range")),
                }
            }
            PrimitiveType::Date => ColumnType::Date,
            PrimitiveType::Timestamp | PrimitiveType::Timestamptz => ColumnType::Timestamp(TimeUnit::Microsecond),
            PrimitiveType::TimestampNs | PrimitiveType::TimestamptzNs => ColumnType::Timestamp(TimeUnit::Nanosecond),
            PrimitiveType::String => ColumnType::String,
            PrimitiveType::Time | PrimitiveType::Uuid | PrimitiveType::Fixed(_) | PrimitiveType::Binary => {
                return Err(format!("column `{path}` has type {primitive}, which spillway does not convert JSON into"));
            }
        },
        Type::Struct(fields) => ColumnType::Struct(
            fields
                .fields()
                .iter()
                .map(|field| {
                    let nested = format!("{path}.{}", field.name);
                    Ok((field.name.clone(), column_type(&nested, &field.field_type)?))
                })
                .collect::<Result<_, String>>()?,
        ),
        Type::List(list) => {
            ColumnType::Array(Box::new(column_type(&format!("{path}.element"), &list.element_field.field_type)?))
        }
        Type::Map(map) => {
            if *map.key_field.field_type != Type::Primitive(PrimitiveType::String) {
                return Err(format!("column `{path}`: only maps with string keys are filled from JSON objects"));
            }
            ColumnType::Map(Box::new(column_type(&format!("{path}.value"), &map.value_field.field_type)?))
        }
    })
}

/// Read `records` into `schema`'s columns. `Err` is a problem of the whole batch (a column type
/// spillway cannot fill, a conversion the table's Arrow schema refuses).
pub fn convert(records: &[&[u8]], schema: &Schema, matching: &KeyMatching) -> Result<Converted, String> {
    let columns = columns_of(schema)?;
    let options = Arc::new(KeyOptions {
        case_insensitive: matching.case_insensitive,
        dots_to_underscores: matching.dots_to_underscores,
    });
    let mut builders = StructColumn::new(&columns, options, &matching.renames);
    let mut misfits = Vec::new();
    // Which record each row came from.
    let mut row_records = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        if let Err(too_deep) = spillway_sink_api::check_json_depth(record) {
            let message = format!("the record cannot be read: {too_deep}");
            misfits.push(Misfit { index, code: spillway_sink_s3::parquet::PARSE_ERROR, message });
            continue;
        }
        match read_row(&mut builders, record) {
            Ok(()) => row_records.push(index),
            Err((code, message)) => misfits.push(Misfit { index, code, message }),
        }
    }
    let rows = builders.finish().map_err(|error| format!("cannot build the rows: {error}"))?;
    let rows = drop_rows_missing_required(rows, schema, &row_records, &mut misfits)?;
    misfits.sort_by_key(|misfit| misfit.index);
    let arrow_schema = iceberg::arrow::schema_to_arrow_schema(schema)
        .map_err(|error| format!("the table's schema has no arrow form: {error}"))?;
    let rows = bridge::into_table_batch(&rows, Arc::new(arrow_schema))?;
    Ok(Converted { rows, misfits })
}

/// Rows whose required top-level column is null are refused (`MalformedData`) and left out.
fn drop_rows_missing_required(
    rows: StructArray,
    schema: &Schema,
    row_records: &[usize],
    misfits: &mut Vec<Misfit>,
) -> Result<StructArray, String> {
    let required: Vec<(usize, &str)> = schema
        .as_struct()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, field)| field.required)
        .map(|(position, field)| (position, field.name.as_str()))
        .collect();
    if required.is_empty() {
        return Ok(rows);
    }
    let mut keep = vec![true; rows.len()];
    for (position, name) in required {
        let column = rows.column(position);
        if column.null_count() == 0 {
            continue;
        }
        for (row, kept) in keep.iter_mut().enumerate() {
            if *kept && column.is_null(row) {
                *kept = false;
                let message = format!("column `{name}` is required and the record has no value for it");
                misfits.push(Misfit { index: row_records[row], code: MALFORMED_DATA, message });
            }
        }
    }
    if keep.iter().all(|kept| *kept) {
        return Ok(rows);
    }
    let filtered = arrow::compute::filter(&rows, &BooleanArray::from(keep))
        .map_err(|error| format!("cannot leave out refused rows: {error}"))?;
    filtered.as_struct_opt().cloned().ok_or_else(|| "filtering rows did not keep them a struct".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{ListType, MapType, NestedField, StructType};

    fn schema() -> Schema {
        let string = || Type::Primitive(PrimitiveType::String);
        Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", string()).into(),
                NestedField::optional(2, "n", Type::Primitive(PrimitiveType::Int)).into(),
                NestedField::optional(3, "at", Type::Primitive(PrimitiveType::Timestamptz)).into(),
                NestedField::optional(
                    4,
                    "tags",
                    Type::List(ListType::new(NestedField::list_element(5, string(), false).into())),
                )
                .into(),
                NestedField::optional(
                    6,
                    "attrs",
                    Type::Struct(StructType::new(vec![
                        NestedField::optional(7, "k", Type::Primitive(PrimitiveType::Long)).into(),
                    ])),
                )
                .into(),
                NestedField::optional(8, "labels", Type::Map(MapType::optional(9, string(), 10, string()))).into(),
            ])
            .build()
            .expect("schema")
    }

    #[test]
    fn records_fill_the_table_and_misfits_are_named_by_index() {
        let records: Vec<&[u8]> = vec![
            br#"{"ID":"a","n":1,"at":"2026-12-07T10:00:00Z","tags":["x"],"attrs":{"k":5},"labels":{"l":"v"}}"#,
            b"not json",
            br#"{"id":"b","n":"seven"}"#,
            br#"{"n":3}"#,
            br#"{"id":"c","extra":true}"#,
        ];
        let matching = KeyMatching { case_insensitive: true, ..KeyMatching::default() };
        let converted = convert(&records, &schema(), &matching).expect("convert");
        assert_eq!(converted.rows.num_rows(), 2);
        let codes: Vec<(usize, &str)> = converted.misfits.iter().map(|misfit| (misfit.index, misfit.code)).collect();
        assert_eq!(codes, vec![(1, spillway_sink_s3::parquet::PARSE_ERROR), (2, MALFORMED_DATA), (3, MALFORMED_DATA)]);
        assert!(converted.misfits[2].message.contains("`id` is required"), "{:?}", converted.misfits[2]);
        // The batch carries the table's field ids, as iceberg's Parquet writer needs them.
        let field = converted.rows.schema().field(0).clone();
        assert_eq!(field.metadata().get("PARQUET:field_id").map(String::as_str), Some("1"));
    }

    #[test]
    fn types_spillway_cannot_fill_are_named() {
        let schema = Schema::builder()
            .with_fields(vec![NestedField::optional(1, "raw", Type::Primitive(PrimitiveType::Binary)).into()])
            .build()
            .expect("schema");
        let error = columns_of(&schema).expect_err("binary");
        assert!(error.contains("column `raw` has type binary"), "{error}");
    }
}
