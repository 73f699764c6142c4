//! JSON → Parquet (`format: {type: parquet, …}`), as Firehose's record format conversion with
//! the OpenX JSON SerDe and the Parquet SerDe: each open batch holds typed column builders for
//! the rows of its current row group and the Parquet bytes of the row groups already written, so
//! its memory is bounded by the row-group size, not the batch. One `.parquet` object per batch.
//!
//! A record that is not JSON (`DataFormatConversion.ParseError`) or does not fit the schema
//! (`DataFormatConversion.MalformedData`) is refused; the pipeline sends it to the error output
//! under `format-conversion-failed` and the rest of the batch is delivered.
//!
//! Module map: [`schema`] (Hive type names → Arrow), [`columns`] (the builders and the JSON walk).

pub mod columns;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCodec, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Deserialize;
use serde::de::DeserializeSeed;
use spillway_sink_api::{EncodeError, Encoder, EncoderFactory, Payload};

use self::columns::{KeyOptions, RowSeed, StructColumn};
use self::schema::{ColumnConfig, Table};

/// `!{firehose:error-output-type}` of records that cannot be converted.
pub const FORMAT_CONVERSION_FAILED: &str = "format-conversion-failed";
/// Firehose's code for a record that is not JSON.
pub const PARSE_ERROR: &str = "DataFormatConversion.ParseError";
/// Firehose's code for a record whose values do not fit the schema.
pub const MALFORMED_DATA: &str = "DataFormatConversion.MalformedData";

/// `format: {type: parquet, …}` of an S3 sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    pub schema: SchemaConfig,
    /// Parquet page compression (Firehose's `ParquetSerDe.Compression`, default snappy).
    #[serde(default)]
    pub compression: ParquetCompression,
    /// Rows are written as a row group when their column builders hold this much (MiB, 1-512,
    /// default 32): the memory bound of an open Parquet batch.
    #[serde(default = "default_row_group_mib")]
    pub row_group_mib: u64,
    /// Target page size (KiB, 64-65536, default 1024 as Firehose's `PageSizeBytes`).
    #[serde(default = "default_page_size_kib")]
    pub page_size_kib: u64,
    /// Dictionary encoding (Firehose's `EnableDictionaryCompression`, default true).
    #[serde(default = "default_true")]
    pub dictionary: bool,
    /// OpenX `CaseInsensitive` (default true): JSON keys match column names ignoring case.
    #[serde(default = "default_true")]
    pub case_insensitive: bool,
    /// OpenX `ColumnToJsonKeyMappings`: column name → the JSON key it is read from.
    #[serde(default)]
    pub column_to_json_key_mappings: BTreeMap<String, String>,
    /// OpenX `ConvertDotsInJsonKeysToUnderscores` (default false).
    #[serde(default)]
    pub convert_dots_in_json_keys_to_underscores: bool,
}

/// `format.schema`: the columns, or a Parquet file whose schema the sink writes (exactly one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
    /// An existing Parquet file (only its footer is read) whose columns the sink writes.
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
}

impl SchemaConfig {
    /// The table, or problems as (field under `format.schema`, message).
    pub fn table(&self) -> Result<Table, Vec<(String, String)>> {
        match (&self.file, self.columns.is_empty()) {
            (Some(_), false) => Err(vec![("file".into(), "give `columns` or `file`, not both".into())]),
            (Some(file), true) => Table::from_parquet_file(file).map_err(|message| vec![("file".into(), message)]),
            (None, _) => Table::from_config(&self.columns).map_err(|bad| {
                bad.into_iter().map(|(index, message)| (format!("columns[{index}]"), message)).collect()
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParquetCompression {
    #[default]
    Snappy,
    Gzip,
    Zstd,
    #[serde(alias = "uncompressed")]
    None,
}

fn default_row_group_mib() -> u64 {
    32
}

fn default_page_size_kib() -> u64 {
    1024
}

fn default_true() -> bool {
    true
}

impl ParquetConfig {
    /// Problems as (field under `format`, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let table = self.schema.table();
        if let Err(bad) = &table {
            problems.extend(bad.iter().map(|(field, message)| (format!("schema.{field}"), message.clone())));
        }
        if !(1..=512).contains(&self.row_group_mib) {
            problems.push(("row_group_mib".into(), format!("must be between 1 and 512 (got {})", self.row_group_mib)));
        }
        if !(64..=65_536).contains(&self.page_size_kib) {
            problems
                .push(("page_size_kib".into(), format!("must be between 64 and 65536 (got {})", self.page_size_kib)));
        }
        let columns: Vec<String> =
            table.map(|table| table.columns.into_iter().map(|(name, _)| name).collect()).unwrap_or_default();
        for column in self.column_to_json_key_mappings.keys() {
            // Only against a schema that could be read (its own problems are reported above).
            if !columns.is_empty() && !columns.iter().any(|defined| defined == column) {
                problems.push((
                    format!("column_to_json_key_mappings.{column}"),
                    "names no column of the schema".to_string(),
                ));
            }
        }
        problems
    }

    /// The encoder factory; fails only on a config `validate` refuses.
    pub fn encoder_factory(&self) -> Result<ParquetEncoderFactory, String> {
        let table = self.schema.table().map_err(|problems| {
            problems.iter().map(|(field, message)| format!("schema.{field}: {message}")).collect::<Vec<_>>().join("; ")
        })?;
        let codec = match self.compression {
            ParquetCompression::Snappy => ParquetCodec::SNAPPY,
            ParquetCompression::Gzip => ParquetCodec::GZIP(GzipLevel::default()),
            ParquetCompression::Zstd => ParquetCodec::ZSTD(ZstdLevel::default()),
            ParquetCompression::None => ParquetCodec::UNCOMPRESSED,
        };
        let properties = WriterProperties::builder()
            .set_compression(codec)
            .set_dictionary_enabled(self.dictionary)
            .set_data_page_size_limit((self.page_size_kib << 10) as usize)
            // Row groups are cut by this encoder (by bytes held), never by the writer.
            .set_max_row_group_row_count(None)
            .set_max_row_group_bytes(None)
            .set_created_by(format!("spillway {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(ParquetEncoderFactory {
            columns: table.columns.clone(),
            schema: table.arrow_schema(),
            properties: Arc::new(properties),
            row_group_bytes: (self.row_group_mib << 20) as usize,
            options: Arc::new(KeyOptions {
                case_insensitive: self.case_insensitive,
                dots_to_underscores: self.convert_dots_in_json_keys_to_underscores,
            }),
            renames: self.column_to_json_key_mappings.clone().into_iter().collect(),
        })
    }
}

pub struct ParquetEncoderFactory {
    columns: Vec<(String, schema::ColumnType)>,
    schema: Arc<Schema>,
    properties: Arc<WriterProperties>,
    row_group_bytes: usize,
    options: Arc<KeyOptions>,
    renames: HashMap<String, String>,
}

impl EncoderFactory for ParquetEncoderFactory {
    fn new_encoder(&self, _chunk_bytes: usize) -> Box<dyn Encoder> {
        Box::new(ParquetEncoder {
            rows: StructColumn::new(&self.columns, self.options.clone(), &self.renames),
            schema: self.schema.clone(),
            properties: self.properties.clone(),
            writer: None,
            row_group_bytes: self.row_group_bytes,
        })
    }
}

/// One open batch as Parquet: the current row group's builders and the file written so far.
pub struct ParquetEncoder {
    rows: StructColumn,
    schema: Arc<Schema>,
    properties: Arc<WriterProperties>,
    /// Created with the first row group.
    writer: Option<ArrowWriter<Vec<u8>>>,
    row_group_bytes: usize,
}

fn io_error(error: impl std::fmt::Display) -> EncodeError {
    EncodeError::Io(std::io::Error::other(format!("parquet: {error}")))
}

impl ParquetEncoder {
    /// Write the builders' rows as one row group.
    fn write_row_group(&mut self) -> Result<(), EncodeError> {
        if self.rows.is_empty() && self.writer.is_some() {
            return Ok(());
        }
        let columns = self.rows.finish().map_err(io_error)?;
        let batch = RecordBatch::from(columns);
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => self.writer.insert(
                ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some((*self.properties).clone()))
                    .map_err(io_error)?,
            ),
        };
        if batch.num_rows() > 0 {
            writer.write(&batch).map_err(io_error)?;
            writer.flush().map_err(io_error)?;
        }
        Ok(())
    }
}

impl Encoder for ParquetEncoder {
    fn push(&mut self, data: &[u8], _delimiter: &[u8]) -> Result<(), EncodeError> {
        let rows = self.rows.len();
        let mut deserializer = serde_json::Deserializer::from_slice(data);
        let read = RowSeed(&mut self.rows).deserialize(&mut deserializer).and_then(|()| deserializer.end());
        if let Err(error) = read {
            self.rows.truncate(rows);
            let code = match error.classify() {
                serde_json::error::Category::Data => MALFORMED_DATA,
                _ => PARSE_ERROR,
            };
            return Err(EncodeError::Rejected {
                output_type: FORMAT_CONVERSION_FAILED,
                code,
                message: error.to_string(),
            });
        }
        // Summing the builders walks every column: often enough to keep a row group near its
        // size, rarely enough not to cost per record.
        if self.rows.len().is_multiple_of(64) && self.rows.bytes() >= self.row_group_bytes {
            self.write_row_group()?;
        }
        Ok(())
    }

    fn held_bytes(&self) -> usize {
        let written = self.writer.as_ref().map_or(0, |writer| writer.inner().len() + writer.in_progress_size());
        self.rows.bytes() + written
    }

    fn finish(mut self: Box<Self>) -> Result<Payload, EncodeError> {
        self.write_row_group()?;
        let Some(writer) = self.writer.take() else { return Ok(Payload::default()) };
        let file = writer.into_inner().map_err(io_error)?;
        Ok(Payload::from_chunks(vec![Bytes::from(file)]))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn config(columns: &[(&str, &str)]) -> ParquetConfig {
        let columns: Vec<serde_json::Value> =
            columns.iter().map(|(name, type_name)| serde_json::json!({ "name": name, "type": type_name })).collect();
        serde_json::from_value(serde_json::json!({ "schema": { "columns": columns } })).unwrap()
    }

    fn encode(config: &ParquetConfig, records: &[&str]) -> (Vec<RecordBatch>, Vec<EncodeError>) {
        let factory = config.encoder_factory().unwrap();
        let mut encoder = factory.new_encoder(1 << 20);
        let mut errors = Vec::new();
        for record in records {
            if let Err(error) = encoder.push(record.as_bytes(), b"\n") {
                errors.push(error);
            }
        }
        let payload = encoder.finish().unwrap().to_bytes();
        let reader = ParquetRecordBatchReaderBuilder::try_new(payload).unwrap().build().unwrap();
        (reader.collect::<Result<Vec<_>, _>>().unwrap(), errors)
    }

    #[test]
    fn records_become_typed_rows_and_bad_ones_are_refused_alone() {
        let config = config(&[("id", "bigint"), ("msg", "string"), ("ts", "timestamp"), ("tags", "array<string>")]);
        let (batches, errors) = encode(
            &config,
            &[
                r#"{"id":1,"msg":"a","ts":"2025-11-25T12:00:00Z","tags":["x","y"]}"#,
                r#"{"ID":"2","Msg":{"nested":true},"extra":5}"#,
                r#"{"id":"three"}"#,
                "not json",
                r#"{"id":4,"tags":["z","w"],"ts":"not a time"}"#,
                r#"{"id":5,"ts":1764072000}"#,
            ],
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        let codes: Vec<&str> = errors
            .iter()
            .map(|error| match error {
                EncodeError::Rejected { code, .. } => *code,
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(codes, [MALFORMED_DATA, PARSE_ERROR, MALFORMED_DATA]);
        let batch = &batches[0];
        assert_eq!(batch.num_rows(), 3);
        let ids = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 5]);
        let messages = batch.column(1).as_string::<i32>();
        assert_eq!(messages.value(0), "a");
        assert_eq!(messages.value(1), r#"{"nested":true}"#);
        assert!(messages.is_null(2));
        let ts = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_764_072_000_000_000);
        assert!(ts.is_null(1));
        assert_eq!(ts.value(2), 1_764_072_000_000_000);
        let tags = batch.column(3).as_list::<i32>();
        assert_eq!(tags.value(0).as_string::<i32>().iter().flatten().collect::<Vec<_>>(), ["x", "y"]);
        assert!(tags.is_null(1));
        assert_eq!(tags.values().len(), 2, "a refused record leaves nothing behind in nested columns");
    }

    #[test]
    fn small_row_groups_keep_memory_bounded_and_every_row() {
        let mut config = config(&[("id", "bigint"), ("msg", "string")]);
        config.row_group_mib = 1;
        let factory = config.encoder_factory().unwrap();
        let mut encoder = factory.new_encoder(1 << 20);
        let text = "x".repeat(1000);
        let mut peak = 0;
        for id in 0..5_000 {
            encoder.push(format!(r#"{{"id":{id},"msg":"{text}"}}"#).as_bytes(), b"").unwrap();
            peak = peak.max(encoder.held_bytes());
        }
        let payload = encoder.finish().unwrap().to_bytes();
        let reader = ParquetRecordBatchReaderBuilder::try_new(payload).unwrap();
        assert!(reader.metadata().num_row_groups() >= 4, "{} row groups", reader.metadata().num_row_groups());
        let rows: usize = reader.build().unwrap().map(|batch| batch.unwrap().num_rows()).sum();
        assert_eq!(rows, 5_000);
        // Builders stay under a row group; the written part is compressed (dictionary: tiny).
        assert!(peak < 3 << 20, "peak {peak}");
    }
}
