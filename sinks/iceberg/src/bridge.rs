//! Arrow 59 (spillway's, the Parquet column builders') to Arrow 58 (iceberg-rust 0.10's) without
//! copying: each column is exported through the Arrow C Data Interface and imported on the
//! other side, which takes over the buffers and calls their release callback when it drops
//! them. Then each column is cast to the table's Arrow type (field ids in the field metadata,
//! `+00:00` time zones), which for matching buffers only relabels.
//!
//! This is the crate's only `unsafe`: both arrow versions define the C interface's structs
//! (`ArrowArray`, `ArrowSchema`) as `#[repr(C)]` with the standard's layout, so moving a value
//! from one version's type to the other's is moving the same C struct.

use std::sync::Arc;

use arrow::array::{Array, StructArray};

/// `rows` as a record batch of `schema`: the columns in order, cast to the schema's types.
pub fn into_table_batch(
    rows: &StructArray,
    schema: Arc<arrow_schema_58::Schema>,
) -> Result<arrow_array_58::RecordBatch, String> {
    if rows.num_columns() != schema.fields().len() {
        return Err(format!("{} columns read for a table of {}", rows.num_columns(), schema.fields().len()));
    }
    let mut columns = Vec::with_capacity(rows.num_columns());
    for (column, field) in rows.columns().iter().zip(schema.fields()) {
        let imported = to_arrow_58(column.as_ref())?;
        let cast = arrow_cast_58::cast(&imported, field.data_type())
            .map_err(|error| format!("column `{}`: cannot convert to the table's type: {error}", field.name()))?;
        columns.push(cast);
    }
    let options = arrow_array_58::RecordBatchOptions::new().with_row_count(Some(rows.len()));
    arrow_array_58::RecordBatch::try_new_with_options(schema, columns, &options)
        .map_err(|error| format!("the rows do not fit the table's schema: {error}"))
}

/// One array, handed over through the C Data Interface.
pub fn to_arrow_58(array: &dyn Array) -> Result<arrow_array_58::ArrayRef, String> {
    let (ffi_array, ffi_schema) =
        arrow::ffi::to_ffi(&array.to_data()).map_err(|error| format!("cannot export a column: {error}"))?;
    // SAFETY: `FFI_ArrowArray` and `FFI_ArrowSchema` are `#[repr(C)]` structs with the C Data
    // Interface's layout in both arrow versions (`transmute` checks the sizes agree); the value
    // moves, so its release callback runs once, when arrow 58 drops the imported data.
    let (ffi_array, ffi_schema) = unsafe {
        (
            std::mem::transmute::<arrow::ffi::FFI_ArrowArray, arrow_array_58::ffi::FFI_ArrowArray>(ffi_array),
            std::mem::transmute::<arrow::ffi::FFI_ArrowSchema, arrow_array_58::ffi::FFI_ArrowSchema>(ffi_schema),
        )
    };
    // SAFETY: both structs were just produced by arrow's own exporter and are valid.
    let data = unsafe { arrow_array_58::ffi::from_ffi(ffi_array, &ffi_schema) }
        .map_err(|error| format!("cannot import a column: {error}"))?;
    Ok(arrow_array_58::make_array(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};

    #[test]
    fn columns_cross_versions_with_their_values_and_nulls() {
        let longs: Arc<dyn Array> = Arc::new(Int64Array::from(vec![Some(1), None, Some(3)]));
        let texts: Arc<dyn Array> = Arc::new(StringArray::from(vec![Some("a"), Some("b"), None]));
        let times: Arc<dyn Array> =
            Arc::new(TimestampMicrosecondArray::from(vec![Some(5), Some(6), Some(7)]).with_timezone("UTC"));
        let fields = arrow::datatypes::Fields::from(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("name", arrow::datatypes::DataType::Utf8, true),
            arrow::datatypes::Field::new("at", times.data_type().clone(), true),
        ]);
        let rows = StructArray::new(fields, vec![longs, texts, times], None);
        let schema = Arc::new(arrow_schema_58::Schema::new(vec![
            arrow_schema_58::Field::new("id", arrow_schema_58::DataType::Int64, true),
            arrow_schema_58::Field::new("name", arrow_schema_58::DataType::Utf8, true),
            arrow_schema_58::Field::new(
                "at",
                arrow_schema_58::DataType::Timestamp(arrow_schema_58::TimeUnit::Microsecond, Some("+00:00".into())),
                false,
            ),
        ]));
        let batch = into_table_batch(&rows, schema).expect("batch");
        assert_eq!(batch.num_rows(), 3);
        let ids = batch.column(0).as_any().downcast_ref::<arrow_array_58::Int64Array>().expect("longs");
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![Some(1), None, Some(3)]);
        let names = batch.column(1).as_any().downcast_ref::<arrow_array_58::StringArray>().expect("strings");
        assert_eq!(names.iter().collect::<Vec<_>>(), vec![Some("a"), Some("b"), None]);
        let times =
            batch.column(2).as_any().downcast_ref::<arrow_array_58::TimestampMicrosecondArray>().expect("times");
        assert_eq!(times.values().to_vec(), vec![5, 6, 7]);
    }
}
