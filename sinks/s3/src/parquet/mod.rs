//! JSON → Parquet (`format: {type: parquet, …}`), as Firehose's record format conversion with
//! the OpenX JSON SerDe and the Parquet SerDe: each open batch holds typed column builders for
//! the rows of its current row group and the Parquet bytes of the row groups already written, so
//! its memory is bounded by the row-group size, not the batch. One `.parquet` object per batch.
//!
//! A record that is not JSON (`DataFormatConversion.ParseError`) or does not fit the schema
//! (`DataFormatConversion.MalformedData`) is refused; the pipeline sends it to the error output
//! under `format-conversion-failed` and the rest of the batch is delivered.
//!
//! Row groups are encoded into column chunks with arrow-rs' low-level writer and appended to the
//! file in order. With `threads: 1` records are read into the builders as pushed (a misfit is
//! refused by `push`) and a full row group is encoded inline. With more, records are staged as
//! pushed and each row group's worth of JSON is one job on the shared compression pool, which
//! reads it into its own builders and encodes it (at most `threads` jobs in flight): the JSON
//! walk, three quarters of the work, no longer stays on one core. A misfit is then refused in
//! the payload ([`Refusal`]). The first row group makes the file (it chooses which columns skip
//! the dictionary); a job that finishes reading before that happened hands its rows back to be
//! encoded when collected, so the object is the same whatever the timing.
//!
//! With `schema: {infer: …}` the first encoder holds its first records as sent, infers the table
//! from them ([`infer`]), freezes it for every encoder of the sink (`OnceLock`) and replays them.
//!
//! Module map: [`schema`] (Hive type names → Arrow), [`columns`] (the builders and the JSON walk),
//! [`infer`] (a table from records).

pub mod columns;
pub mod infer;
pub mod schema;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock, mpsc};

use arrow::array::{Array, AsArray, StructArray};
use arrow::datatypes::{DataType, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression as ParquetCodec, GzipLevel, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::Deserialize;
use serde::de::DeserializeSeed;
use spillway_sink_api::{EncodeError, Encoder, EncoderFactory, Payload, RecordPosition, Refusal};

use self::columns::{KeyOptions, RowSeed, StructColumn};
use self::infer::Inferred;
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
    /// Threads one batch's conversion uses (1-16; default 2 on a machine with 2 cores or more,
    /// else 1): with more than 1, records are staged and each row group of JSON is read and
    /// encoded on the shared pool while the next is staged (misfits are then refused in the
    /// payload). Each job in flight holds about a row group of JSON and one of builders.
    #[serde(default)]
    pub threads: Option<usize>,
}

/// `format.schema`: the columns, a Parquet file whose schema the sink writes, or `infer` (exactly
/// one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
    /// An existing Parquet file (only its footer is read) or Arrow IPC file or stream (only its
    /// schema) whose columns the sink writes.
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
    /// Infer the table from the stream's first records (see [`infer`]).
    #[serde(default)]
    pub infer: Option<InferConfig>,
}

/// `format.schema.infer`: the first batch holds up to `records` records (and at most `max_mib`
/// of them) before it freezes the table for the stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferConfig {
    /// Records the table is inferred from (1-100000, default 1000).
    #[serde(default = "default_infer_records")]
    pub records: usize,
    /// Bytes of held records that freeze the table earlier (MiB, 1-256, default 16).
    #[serde(default = "default_infer_mib")]
    pub max_mib: usize,
}

fn default_infer_records() -> usize {
    1000
}

fn default_infer_mib() -> usize {
    16
}

impl SchemaConfig {
    /// The table (`None`: inferred from the first records), or problems as (field under
    /// `format.schema`, message).
    pub fn table(&self) -> Result<Option<Table>, Vec<(String, String)>> {
        let given = usize::from(self.file.is_some())
            + usize::from(!self.columns.is_empty())
            + usize::from(self.infer.is_some());
        if given > 1 {
            let field = if self.infer.is_some() { "infer" } else { "file" };
            return Err(vec![(field.into(), "give one of `columns`, `file` or `infer`".into())]);
        }
        if let Some(infer) = &self.infer {
            let mut problems = Vec::new();
            if !(1..=100_000).contains(&infer.records) {
                problems
                    .push(("infer.records".into(), format!("must be between 1 and 100000 (got {})", infer.records)));
            }
            if !(1..=256).contains(&infer.max_mib) {
                problems.push(("infer.max_mib".into(), format!("must be between 1 and 256 (got {})", infer.max_mib)));
            }
            return if problems.is_empty() { Ok(None) } else { Err(problems) };
        }
        match &self.file {
            Some(file) => Table::from_schema_file(file).map(Some).map_err(|message| vec![("file".into(), message)]),
            None => Table::from_config(&self.columns).map(Some).map_err(|bad| {
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
        if let Some(threads) = self.threads
            && !(1..=MAX_THREADS).contains(&threads)
        {
            problems.push(("threads".into(), format!("must be between 1 and {MAX_THREADS} (got {threads})")));
        }
        if self.schema.infer.is_some() && !self.column_to_json_key_mappings.is_empty() {
            problems.push((
                "column_to_json_key_mappings".into(),
                "needs given columns: an inferred table names its columns after the JSON keys".into(),
            ));
        }
        let columns: Vec<String> = table
            .ok()
            .flatten()
            .map(|table| table.columns.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default();
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

    /// Threads one batch's conversion uses: `threads`, else 2 where the machine has 2 cores or
    /// more (one reads JSON into the builders, one encodes the previous row group), else 1.
    pub fn effective_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            cores.clamp(1, 2)
        })
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
        let (table, infer) = match (table, &self.schema.infer) {
            (Some(table), _) => (TableSource::Given(Arc::new(Frozen::new(table, None))), None),
            (None, Some(infer)) => (TableSource::Inferred(Arc::new(OnceLock::new())), Some(infer.clone())),
            (None, None) => return Err("schema: no table".into()),
        };
        Ok(ParquetEncoderFactory {
            shared: Arc::new(Shared {
                table,
                infer,
                properties: Arc::new(properties),
                row_group_bytes: (self.row_group_mib << 20) as usize,
                options: Arc::new(KeyOptions {
                    case_insensitive: self.case_insensitive,
                    dots_to_underscores: self.convert_dots_in_json_keys_to_underscores,
                }),
                renames: Arc::new(self.column_to_json_key_mappings.clone().into_iter().collect()),
                threads: self.effective_threads(),
            }),
        })
    }
}

/// Upper bound of `format.threads`.
const MAX_THREADS: usize = 16;

/// A table the encoders write: its columns and their Arrow schema.
#[derive(Debug)]
struct Frozen {
    columns: Vec<(String, schema::ColumnType)>,
    schema: Arc<Schema>,
    /// The inferred type it was made from (to widen it for records it does not hold).
    inferred: Option<Inferred>,
}

impl Frozen {
    fn new(table: Table, inferred: Option<Inferred>) -> Self {
        Self { schema: table.arrow_schema(), columns: table.columns, inferred }
    }
}

#[derive(Debug)]
enum TableSource {
    Given(Arc<Frozen>),
    /// Set once by the first encoder that has held enough records; shared by all encoders of
    /// the sink, so a stream keeps one table until spillway restarts.
    Inferred(Arc<OnceLock<Arc<Frozen>>>),
}

impl TableSource {
    fn frozen(&self) -> Option<Arc<Frozen>> {
        match self {
            TableSource::Given(frozen) => Some(frozen.clone()),
            TableSource::Inferred(lock) => lock.get().cloned(),
        }
    }
}

/// What every encoder of one sink shares.
#[derive(Debug)]
struct Shared {
    table: TableSource,
    infer: Option<InferConfig>,
    properties: Arc<WriterProperties>,
    row_group_bytes: usize,
    options: Arc<KeyOptions>,
    renames: Arc<HashMap<String, String>>,
    threads: usize,
}

pub struct ParquetEncoderFactory {
    shared: Arc<Shared>,
}

impl EncoderFactory for ParquetEncoderFactory {
    fn new_encoder(&self, _chunk_bytes: usize) -> Box<dyn Encoder> {
        let state = match self.shared.table.frozen() {
            Some(frozen) => State::Writing(Box::new(RowGroups::new(&self.shared, frozen))),
            None => State::Holding(Held::default()),
        };
        Box::new(ParquetEncoder { shared: self.shared.clone(), state, pushed: 0 })
    }
}

/// One open batch as Parquet.
pub struct ParquetEncoder {
    shared: Arc<Shared>,
    state: State,
    /// Records pushed, which number them when `push` is given no position.
    pushed: u64,
}

enum State {
    /// Inferring: the first records, held as sent until the table is frozen.
    Holding(Held),
    Writing(Box<RowGroups>),
}

#[derive(Default)]
struct Held {
    records: Vec<Vec<u8>>,
    bytes: usize,
    inferred: Inferred,
}

/// The row groups of one object: builders read inline (1 thread, and records replayed after
/// inference), staged records converted on the pool (`threads` > 1), row groups in flight, and
/// the file written so far.
struct RowGroups {
    /// Inline builders.
    rows: StructColumn,
    shared: Arc<Shared>,
    frozen: Arc<Frozen>,
    /// Created with the first row group.
    file: Option<File>,
    /// The file's column-writer factory, shared with this encoder's pool jobs once the first row
    /// group has made it (it chooses the columns written without a dictionary).
    columns: Arc<OnceLock<Arc<ArrowRowGroupWriterFactory>>>,
    /// Records waiting to be sent to the pool as one chunk (`threads` > 1).
    staged: Staged,
    /// An emptied chunk's buffers, for the next one.
    spare: Option<Staged>,
    /// A chunk sent to the pool holds the file's first row group.
    first_sent: bool,
    /// Jobs on the pool, in order, with the bytes they hold.
    pending: VecDeque<(mpsc::Receiver<Result<Converted, EncodeError>>, usize)>,
    /// Records the pool refused, in push order.
    refused: Vec<Refusal>,
}

/// Records copied as pushed, for one pool job.
#[derive(Default)]
struct Staged {
    data: Vec<u8>,
    ends: Vec<usize>,
    positions: Vec<RecordPosition>,
}

/// What a pool job gives back: row groups in order, the records it refused, the file when its
/// chunk held the first row group, and the chunk's buffers emptied for the next one (reused,
/// they are not faulted in again: that was half the page faults of a 2-thread conversion).
#[derive(Default)]
struct Converted {
    groups: Vec<Group>,
    refused: Vec<Refusal>,
    file: Option<File>,
    spare: Option<Staged>,
}

enum Group {
    Encoded(Vec<ArrowColumnChunk>),
    /// Read before the first row group had made the file: encoded when collected.
    Rows(StructArray),
}

/// What a pool job needs to read and encode a chunk: its encoder's settings, table and
/// column-writer factory.
struct ChunkJob {
    shared: Arc<Shared>,
    frozen: Arc<Frozen>,
    columns: Arc<OnceLock<Arc<ArrowRowGroupWriterFactory>>>,
    /// This chunk starts the file: its first row group makes it.
    first: bool,
}

struct File {
    writer: SerializedFileWriter<Vec<u8>>,
    columns: Arc<ArrowRowGroupWriterFactory>,
}

fn io_error(error: impl std::fmt::Display) -> EncodeError {
    EncodeError::Io(std::io::Error::other(format!("parquet: {error}")))
}

fn rejected(error: &serde_json::Error) -> EncodeError {
    let code = match error.classify() {
        serde_json::error::Category::Data => MALFORMED_DATA,
        _ => PARSE_ERROR,
    };
    EncodeError::Rejected { output_type: FORMAT_CONVERSION_FAILED, code, message: error.to_string() }
}

/// Encode one row group's columns into column chunks (on the pool, or inline with 1 thread).
fn encode_row_group(
    mut writers: Vec<ArrowColumnWriter>,
    schema: &Schema,
    rows: &StructArray,
) -> Result<Vec<ArrowColumnChunk>, ParquetError> {
    let mut next = writers.iter_mut();
    for (field, column) in schema.fields().iter().zip(rows.columns()) {
        for leaf in compute_leaves(field, column)? {
            let writer = next.next().ok_or_else(|| ParquetError::General("more leaves than column writers".into()))?;
            writer.write(&leaf)?;
        }
    }
    writers.into_iter().map(ArrowColumnWriter::close).collect()
}

/// Top-level columns a dictionary does not pay for, judged on the first row group: those whose
/// distinct values outgrow a dictionary page (the writer would hash them until the page is
/// full, then fall back to plain encoding in every row group, leaving a dictionary and its
/// indices in front of the plain pages), and those where more than half the values are
/// distinct (the dictionary holds nearly every value, and the indices come on top). Written
/// plain from the start they cost less CPU and make smaller files (unique ids, sequence
/// numbers, timestamps, addresses); repetitive columns keep the dictionary.
fn plain_columns(schema: &Schema, rows: &StructArray, limit: usize) -> Vec<String> {
    /// Whether the values are mostly distinct or their distinct bytes exceed `limit`; stops as
    /// soon as either is certain.
    fn dictionary_loses<T: std::hash::Hash + Eq>(
        values: impl Iterator<Item = T>,
        count: usize,
        size: impl Fn(&T) -> usize,
        limit: usize,
    ) -> bool {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        // The whole first row group: a sample undercounts the distinct values of a row group
        // (sequence numbers, timestamps).
        for value in values {
            let value_size = size(&value);
            if seen.insert(value) {
                bytes += value_size;
                if bytes > limit || seen.len() > count / 2 {
                    return true;
                }
            }
        }
        false
    }
    let mut plain = Vec::new();
    for (field, column) in schema.fields().iter().zip(rows.columns()) {
        let data = column.to_data();
        let count = column.len() - column.null_count();
        let loses = match column.data_type() {
            // A plain-encoded dictionary entry of a string is its length (4 bytes) and its bytes.
            DataType::Utf8 => {
                let strings = column.as_string::<i32>();
                dictionary_loses(strings.iter().flatten(), count, |text| text.len() + 4, limit)
            }
            // Null slots hold zeros in the buffer: one more distinct value at most.
            DataType::Int64 | DataType::Float64 | DataType::Timestamp(..) => {
                dictionary_loses(data.buffer::<u64>(0).iter(), count, |_| 8, limit)
            }
            DataType::Int32 | DataType::Float32 | DataType::Date32 => {
                dictionary_loses(data.buffer::<u32>(0).iter(), count, |_| 4, limit)
            }
            _ => continue,
        };
        if loses {
            plain.push(field.name().clone());
        }
    }
    plain
}

/// Read one record into the builders, or refuse it leaving them as they were (with Firehose's
/// code, [`PARSE_ERROR`] or [`MALFORMED_DATA`], and a message). The Iceberg sink reads records
/// into a table's columns with it too.
pub fn read_row(rows: &mut StructColumn, data: &[u8]) -> Result<(), (&'static str, String)> {
    let before = rows.len();
    // sonic-rs: the same serde walk as serde_json, with SIMD string scanning (strings are most
    // of a log record's bytes).
    let mut deserializer = sonic_rs::Deserializer::from_slice(data);
    let read = RowSeed(rows).deserialize(&mut deserializer).and_then(|()| deserializer.end());
    read.map_err(|error| {
        rows.truncate(before);
        let code = match error.classify() {
            sonic_rs::error::Category::TypeUnmatched => MALFORMED_DATA,
            _ => PARSE_ERROR,
        };
        (code, error.to_string())
    })
}

/// Whether the builders hold a row group. Summing them walks every column: checked often enough
/// to keep a row group near its size, rarely enough not to cost per record.
fn row_group_full(rows: &StructColumn, row_group_bytes: usize) -> bool {
    rows.len().is_multiple_of(64) && rows.bytes() >= row_group_bytes
}

/// The file, made with its first row group, whose values choose which columns skip the
/// dictionary; its column-writer factory goes into `columns` for the encoder's pool jobs.
fn new_file(
    frozen: &Frozen,
    properties: &WriterProperties,
    columns: &OnceLock<Arc<ArrowRowGroupWriterFactory>>,
    first_rows: &StructArray,
) -> Result<File, ParquetError> {
    let mut properties = properties.clone();
    if properties.dictionary_enabled(&ColumnPath::new(Vec::new())) {
        let limit = properties.dictionary_page_size_limit();
        let plain = plain_columns(&frozen.schema, first_rows, limit);
        if !plain.is_empty() {
            let mut builder = properties.into_builder();
            for name in plain {
                builder = builder.set_column_dictionary_enabled(ColumnPath::new(vec![name]), false);
            }
            properties = builder.build();
        }
    }
    // `ArrowWriter` makes the Parquet schema and the `ARROW:schema` metadata; its low-level
    // parts let column chunks be encoded away from the file.
    let writer = ArrowWriter::try_new(Vec::new(), frozen.schema.clone(), Some(properties))?;
    let (writer, factory) = writer.into_serialized_writer()?;
    let factory = Arc::new(factory);
    let _ = columns.set(factory.clone());
    Ok(File { writer, columns: factory })
}

impl ChunkJob {
    /// Read the chunk's records into fresh builders (cutting a row group whenever they hold
    /// one) and encode each row group: the whole conversion of a chunk runs on the pool.
    fn run(self, mut chunk: Staged) -> Result<Converted, ParquetError> {
        let mut rows = StructColumn::new(&self.frozen.columns, self.shared.options.clone(), &self.shared.renames);
        let mut converted = Converted::default();
        let mut start = 0;
        for (end, position) in chunk.ends.iter().zip(&chunk.positions) {
            if let Err((code, message)) = read_row(&mut rows, &chunk.data[start..*end]) {
                converted.refused.push(Refusal {
                    position: *position,
                    output_type: FORMAT_CONVERSION_FAILED,
                    code,
                    message,
                });
            }
            start = *end;
            if row_group_full(&rows, self.shared.row_group_bytes) {
                let group = self.group(rows.finish()?, &mut converted.file)?;
                converted.groups.push(group);
            }
        }
        if !rows.is_empty() {
            let group = self.group(rows.finish()?, &mut converted.file)?;
            converted.groups.push(group);
        }
        chunk.data.clear();
        chunk.ends.clear();
        chunk.positions.clear();
        converted.spare = Some(chunk);
        Ok(converted)
    }

    fn group(&self, rows: StructArray, file: &mut Option<File>) -> Result<Group, ParquetError> {
        if self.first && self.columns.get().is_none() {
            *file = Some(new_file(&self.frozen, &self.shared.properties, &self.columns, &rows)?);
        }
        match self.columns.get() {
            // The row group index only matters to encryption, which this writer does not use.
            Some(columns) => {
                Ok(Group::Encoded(encode_row_group(columns.create_column_writers(0)?, &self.frozen.schema, &rows)?))
            }
            None => Ok(Group::Rows(rows)),
        }
    }
}

impl RowGroups {
    fn new(shared: &Arc<Shared>, frozen: Arc<Frozen>) -> Self {
        Self {
            rows: StructColumn::new(&frozen.columns, shared.options.clone(), &shared.renames),
            shared: shared.clone(),
            frozen,
            file: None,
            columns: Arc::new(OnceLock::new()),
            staged: Staged::default(),
            spare: None,
            first_sent: false,
            pending: VecDeque::new(),
            refused: Vec::new(),
        }
    }

    /// Read one record into the inline builders, refusing it at once if it does not fit.
    fn push_now(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        read_row(&mut self.rows, data).map_err(|(code, message)| EncodeError::Rejected {
            output_type: FORMAT_CONVERSION_FAILED,
            code,
            message,
        })?;
        if row_group_full(&self.rows, self.shared.row_group_bytes) {
            self.cut_row_group()?;
        }
        Ok(())
    }

    /// With 1 thread, read the record now; else stage it and send a full chunk (a row group of
    /// JSON) to the pool, which reads and encodes it while the next one is staged. A misfit is
    /// then refused in the payload (`Refusal`), since it is found on the pool.
    fn push(&mut self, position: RecordPosition, data: &[u8]) -> Result<(), EncodeError> {
        if self.shared.threads <= 1 {
            return self.push_now(data);
        }
        if !self.rows.is_empty() {
            // Records replayed inline after inference come first.
            self.cut_row_group()?;
        }
        self.staged.data.extend_from_slice(data);
        self.staged.ends.push(self.staged.data.len());
        self.staged.positions.push(position);
        if self.staged.data.len() >= self.shared.row_group_bytes {
            self.send_staged()?;
        }
        Ok(())
    }

    /// Send the staged records to the pool as one job, keeping at most `threads` in flight.
    fn send_staged(&mut self) -> Result<(), EncodeError> {
        if self.staged.ends.is_empty() {
            return Ok(());
        }
        while self.collect_oldest(false)? {}
        while self.pending.len() >= self.shared.threads {
            self.collect_oldest(true)?;
        }
        let chunk = std::mem::replace(&mut self.staged, self.spare.take().unwrap_or_default());
        let bytes = chunk.data.len();
        let job = ChunkJob {
            shared: self.shared.clone(),
            frozen: self.frozen.clone(),
            columns: self.columns.clone(),
            first: self.file.is_none() && !self.first_sent,
        };
        self.first_sent = true;
        let (sender, receiver) = mpsc::sync_channel(1);
        // A panic in a rayon job aborts the process (rayon's default): contained into an error
        // that sets the batch aside.
        rayon::spawn_fifo(move || {
            let converted =
                spillway_sink_api::catch_panic(|| job.run(chunk).map_err(io_error)).unwrap_or_else(|panic| {
                    Err(EncodeError::Internal(format!("parquet: converting records panicked: {panic}")))
                });
            let _ = sender.send(converted);
        });
        self.pending.push_back((receiver, bytes));
        Ok(())
    }

    /// The file, made here if no row group made it yet.
    fn file(&mut self, first_rows: &StructArray) -> Result<&mut File, EncodeError> {
        if self.file.is_none() {
            self.file =
                Some(new_file(&self.frozen, &self.shared.properties, &self.columns, first_rows).map_err(io_error)?);
        }
        self.file.as_mut().ok_or_else(|| io_error("no file writer"))
    }

    /// Close the inline builders' rows into a row group: encoded here with 1 thread, else on
    /// the pool (at most `threads - 1` row groups in flight).
    fn cut_row_group(&mut self) -> Result<(), EncodeError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let builder_bytes = self.rows.bytes();
        let rows = self.rows.finish().map_err(io_error)?;
        let schema = self.frozen.schema.clone();
        let threads = self.shared.threads;
        let writers = self.file(&rows)?.columns.create_column_writers(0).map_err(io_error)?;
        if threads <= 1 {
            let chunks = encode_row_group(writers, &schema, &rows).map_err(io_error)?;
            return self.append(chunks);
        }
        while self.pending.len() >= threads - 1 {
            self.collect_oldest(true)?;
        }
        let (sender, receiver) = mpsc::sync_channel(1);
        rayon::spawn_fifo(move || {
            let encoded =
                spillway_sink_api::catch_panic(|| encode_row_group(writers, &schema, &rows).map_err(io_error))
                    .unwrap_or_else(|panic| {
                        Err(EncodeError::Internal(format!("parquet: encoding a row group panicked: {panic}")))
                    });
            let _ = sender
                .send(encoded.map(|chunks| Converted { groups: vec![Group::Encoded(chunks)], ..Default::default() }));
        });
        self.pending.push_back((receiver, builder_bytes));
        Ok(())
    }

    fn append(&mut self, chunks: Vec<ArrowColumnChunk>) -> Result<(), EncodeError> {
        let file = self.file.as_mut().ok_or_else(|| io_error("a row group before the file"))?;
        let mut row_group = file.writer.next_row_group().map_err(io_error)?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group).map_err(io_error)?;
        }
        row_group.close().map_err(io_error)?;
        Ok(())
    }

    /// Take the oldest job's row groups into the file (waiting for it if `wait`); false when
    /// there is none, or it is not done and `wait` is false.
    fn collect_oldest(&mut self, wait: bool) -> Result<bool, EncodeError> {
        let Some((receiver, _)) = self.pending.front() else { return Ok(false) };
        let converted = if wait {
            receiver.recv().map_err(|_| EncodeError::WorkerLost)?
        } else {
            match receiver.try_recv() {
                Ok(converted) => converted,
                Err(mpsc::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::TryRecvError::Disconnected) => return Err(EncodeError::WorkerLost),
            }
        };
        self.pending.pop_front();
        let converted = converted?;
        if let Some(file) = converted.file {
            self.file = Some(file);
        }
        if converted.spare.is_some() {
            self.spare = converted.spare;
        }
        self.refused.extend(converted.refused);
        for group in converted.groups {
            let chunks = match group {
                Group::Encoded(chunks) => chunks,
                Group::Rows(rows) => {
                    let writers = self.file(&rows)?.columns.create_column_writers(0).map_err(io_error)?;
                    encode_row_group(writers, &self.frozen.schema, &rows).map_err(io_error)?
                }
            };
            self.append(chunks)?;
        }
        Ok(true)
    }

    fn held_bytes(&self) -> usize {
        let pending: usize = self.pending.iter().map(|(_, bytes)| bytes).sum();
        let written = self.file.as_ref().map_or(0, |file| file.writer.inner().len());
        let spare = self.spare.as_ref().map_or(0, |spare| spare.data.capacity());
        self.rows.bytes() + self.staged.data.len() + spare + pending + written
    }

    fn finish(mut self) -> Result<Payload, EncodeError> {
        self.cut_row_group()?;
        self.send_staged()?;
        while self.collect_oldest(true)? {}
        let refused = std::mem::take(&mut self.refused);
        let Some(file) = self.file.take() else { return Ok(Payload::default().with_refused(refused)) };
        let bytes = file.writer.into_inner().map_err(io_error)?;
        Ok(Payload::from_chunks(vec![Bytes::from(bytes)]).with_refused(refused))
    }
}

impl ParquetEncoder {
    /// Freeze the table (the one another encoder froze first, else the one these records make)
    /// and replay the held records into its builders.
    fn freeze(&mut self) -> Result<(), EncodeError> {
        let State::Holding(held) = &mut self.state else { return Ok(()) };
        let held = std::mem::take(held);
        let TableSource::Inferred(lock) = &self.shared.table else { return Err(io_error("no table to infer")) };
        let frozen = match lock.get() {
            Some(frozen) => frozen.clone(),
            None => match held.inferred.table() {
                Some(table) => {
                    let made = Arc::new(Frozen::new(table, Some(held.inferred.clone())));
                    lock.get_or_init(|| made).clone()
                }
                // Nothing held (records without fields are refused): infer from the next batch.
                None => {
                    self.state = State::Holding(Held::default());
                    return Ok(());
                }
            },
        };
        let mut rows = RowGroups::new(&self.shared, frozen.clone());
        if held.records.iter().try_for_each(|record| rows.push_now(record)).is_err() {
            // Another batch froze the table first and these records do not fit it: they were
            // accepted already, so this one object gets the table widened to hold them.
            let widened = frozen.inferred.clone().unwrap_or_default().widen(held.inferred.clone());
            let table = widened.table().ok_or_else(|| io_error("the widened table has no column"))?;
            tracing::warn!(columns = ?table.columns, "parquet: records held for inference do not fit the stream's inferred table; this object gets a widened table");
            rows = RowGroups::new(&self.shared, Arc::new(Frozen::new(table, Some(widened))));
            for record in &held.records {
                rows.push_now(record)?;
            }
        }
        self.state = State::Writing(Box::new(rows));
        Ok(())
    }
}

impl Encoder for ParquetEncoder {
    /// Without a position (tools and tests), records are numbered in push order from 0.
    fn push(&mut self, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        let position = RecordPosition { sequence: self.pushed, output: 0, arrival_ms: 0 };
        self.push_at(position, data, delimiter)
    }

    fn push_at(&mut self, position: RecordPosition, data: &[u8], _delimiter: &[u8]) -> Result<(), EncodeError> {
        self.pushed += 1;
        // Before any parser sees it (inference, the builders, a pool job): sonic-rs skips an
        // unknown field by recursing once per level, without a bound.
        spillway_sink_api::check_json_depth(data).map_err(|too_deep| EncodeError::Rejected {
            output_type: FORMAT_CONVERSION_FAILED,
            code: PARSE_ERROR,
            message: format!("the record cannot be read: {too_deep}"),
        })?;
        if let State::Holding(_) = self.state
            && self.shared.table.frozen().is_some()
        {
            self.freeze()?;
        }
        match &mut self.state {
            State::Writing(rows) => rows.push(position, data),
            State::Holding(held) => {
                let mut inferred = held.inferred.clone();
                inferred.add_record(data, &self.shared.options).map_err(|error| rejected(&error))?;
                if inferred.table().is_none() {
                    // No column known yet: there is no row to write it as (a later `{}` is a row
                    // of nulls).
                    return Err(EncodeError::Rejected {
                        output_type: FORMAT_CONVERSION_FAILED,
                        code: MALFORMED_DATA,
                        message: "the record has no field to infer the table from".into(),
                    });
                }
                held.inferred = inferred;
                held.bytes += data.len();
                held.records.push(data.to_vec());
                let limits = self.shared.infer.as_ref().map_or((1, 0), |infer| (infer.records, infer.max_mib << 20));
                if held.records.len() >= limits.0 || held.bytes >= limits.1 {
                    self.freeze()?;
                }
                Ok(())
            }
        }
    }

    fn held_bytes(&self) -> usize {
        match &self.state {
            State::Writing(rows) => rows.held_bytes(),
            State::Holding(held) => held.bytes,
        }
    }

    fn finish(mut self: Box<Self>) -> Result<Payload, EncodeError> {
        self.freeze()?;
        match self.state {
            State::Writing(rows) => rows.finish(),
            State::Holding(_) => Ok(Payload::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use arrow::record_batch::RecordBatch;
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
        let payload = encoder.finish().unwrap();
        // Refused on the pool (`threads` > 1), the same records and codes as inline.
        errors.extend(payload.refused().iter().map(|refusal| EncodeError::Rejected {
            output_type: refusal.output_type,
            code: refusal.code,
            message: refusal.message.clone(),
        }));
        let reader = ParquetRecordBatchReaderBuilder::try_new(payload.to_bytes()).unwrap().build().unwrap();
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

    fn rows_of(payload: Bytes) -> (usize, Vec<RecordBatch>) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(payload).unwrap();
        let row_groups = reader.metadata().num_row_groups();
        (row_groups, reader.build().unwrap().collect::<Result<Vec<_>, _>>().unwrap())
    }

    #[test]
    fn one_and_two_threads_write_the_same_rows_in_order() {
        let text = "y".repeat(500);
        let records: Vec<String> =
            (0..6_000).map(|id| format!(r#"{{"id":{id},"msg":"{text}{}","seq":{id}}}"#, id % 7)).collect();
        let mut outputs = Vec::new();
        for threads in [1, 2, 3] {
            let mut config = config(&[("id", "bigint"), ("msg", "string"), ("seq", "bigint")]);
            config.row_group_mib = 1;
            config.threads = Some(threads);
            let mut encoder = config.encoder_factory().unwrap().new_encoder(1 << 20);
            for record in &records {
                encoder.push(record.as_bytes(), b"").unwrap();
            }
            let misfit = encoder.push(br#"{"id":"x"}"#, b"");
            let payload = encoder.finish().unwrap();
            if threads == 1 {
                assert!(misfit.is_err(), "refused at once when read inline");
                assert!(payload.refused().is_empty());
            } else {
                // Read on the pool: refused in the payload, by position (pushed 6,000th from 0).
                misfit.unwrap();
                let refused = payload.refused();
                assert_eq!(refused.len(), 1, "{refused:?}");
                assert_eq!((refused[0].position.sequence, refused[0].code), (6_000, MALFORMED_DATA));
                assert_eq!(refused[0].output_type, FORMAT_CONVERSION_FAILED);
            }
            let (row_groups, batches) = rows_of(payload.to_bytes());
            assert!(row_groups >= 3, "{row_groups} row groups");
            let ids: Vec<i64> = batches
                .iter()
                .flat_map(|batch| batch.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect();
            assert_eq!(ids, (0..6_000).collect::<Vec<i64>>());
            outputs.push(ids);
        }
        assert_eq!(outputs[0], outputs[1]);
    }

    #[test]
    fn records_refused_on_the_pool_keep_their_positions_and_an_all_refused_batch_is_empty() {
        let mut config = config(&[("id", "bigint"), ("msg", "string")]);
        config.row_group_mib = 1;
        config.threads = Some(2);
        let factory = config.encoder_factory().unwrap();
        let mut encoder = factory.new_encoder(1 << 20);
        let text = "z".repeat(300);
        for sequence in 0..10_000u64 {
            let record = match sequence % 1000 {
                7 => "{not json".to_string(),
                8 => format!(r#"{{"id":"x{sequence}"}}"#),
                _ => format!(r#"{{"id":{sequence},"msg":"{text}"}}"#),
            };
            let position = RecordPosition { sequence, output: (sequence % 3) as u32, arrival_ms: 5 };
            encoder.push_at(position, record.as_bytes(), b"").unwrap();
        }
        let payload = encoder.finish().unwrap();
        let refused: Vec<(u64, u32, &str)> = payload
            .refused()
            .iter()
            .map(|refusal| (refusal.position.sequence, refusal.position.output, refusal.code))
            .collect();
        let expected: Vec<(u64, u32, &str)> = (0..10u64)
            .flat_map(|thousand| {
                let (bad_json, misfit) = (thousand * 1000 + 7, thousand * 1000 + 8);
                [(bad_json, (bad_json % 3) as u32, PARSE_ERROR), (misfit, (misfit % 3) as u32, MALFORMED_DATA)]
            })
            .collect();
        assert_eq!(refused, expected, "every refusal, in push order, across chunks");
        let (row_groups, batches) = rows_of(payload.to_bytes());
        assert!(row_groups >= 3, "{row_groups} row groups");
        let ids: Vec<i64> =
            batches.iter().flat_map(|batch| batch.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
        let kept: Vec<i64> = (0..10_000).filter(|id| !matches!(id % 1000, 7 | 8)).collect();
        assert_eq!(ids, kept);

        let mut encoder = factory.new_encoder(1 << 20);
        encoder.push(b"nope", b"").unwrap();
        let payload = encoder.finish().unwrap();
        assert!(payload.is_empty(), "no row: no object");
        assert_eq!(payload.refused().len(), 1);
    }

    #[test]
    fn validate_refuses_bad_threads_and_two_schema_sources() {
        let mut config = config(&[("id", "bigint")]);
        config.threads = Some(0);
        config.schema.infer = Some(InferConfig { records: 0, max_mib: 16 });
        let problems = config.validate();
        let fields: Vec<&str> = problems.iter().map(|(field, _)| field.as_str()).collect();
        assert!(fields.contains(&"threads"), "{problems:?}");
        assert!(fields.contains(&"schema.infer"), "{problems:?}");
        config.schema.columns.clear();
        let problems = config.validate();
        assert!(problems.iter().any(|(field, _)| field == "schema.infer.records"), "{problems:?}");
    }

    #[test]
    fn a_record_nested_past_the_bound_is_refused_before_inference_or_conversion() {
        let deep = format!(r#"{{"id":9,"x":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        let refused = |result: Result<(), EncodeError>| match result {
            Err(EncodeError::Rejected { output_type, code, message }) => (output_type, code, message),
            other => panic!("not refused: {other:?}"),
        };
        let reason =
            "the record cannot be read: JSON nested deeper than 100 levels (the bracket at byte 111 opens level 101)";
        // While the table is inferred, and with a given table (inline and on the pool).
        let mut inferring = infer_config(2).encoder_factory().unwrap().new_encoder(1 << 20);
        assert_eq!(
            refused(inferring.push(deep.as_bytes(), b"")),
            (FORMAT_CONVERSION_FAILED, PARSE_ERROR, reason.into())
        );
        for threads in [1, 2] {
            let mut given = config(&[("id", "bigint")]);
            given.threads = Some(threads);
            let mut encoder = given.encoder_factory().unwrap().new_encoder(1 << 20);
            encoder.push(br#"{"id":1}"#, b"").unwrap();
            assert_eq!(
                refused(encoder.push(deep.as_bytes(), b"")),
                (FORMAT_CONVERSION_FAILED, PARSE_ERROR, reason.into())
            );
            encoder.push(br#"{"id":2}"#, b"").unwrap();
            let payload = encoder.finish().unwrap();
            assert!(payload.refused().is_empty() && !payload.is_empty(), "{threads} threads");
        }
    }

    fn infer_config(records: usize) -> ParquetConfig {
        serde_json::from_value(serde_json::json!({ "schema": { "infer": { "records": records } }, "threads": 2 }))
            .unwrap()
    }

    #[test]
    fn the_first_records_make_the_table_of_every_later_batch() {
        let factory = infer_config(3).encoder_factory().unwrap();
        let mut first = factory.new_encoder(1 << 20);
        let mut second = factory.new_encoder(1 << 20);
        // Held: not JSON and not an object are refused at once, as with a given table.
        assert!(matches!(first.push(b"nope", b""), Err(EncodeError::Rejected { code: PARSE_ERROR, .. })));
        assert!(matches!(first.push(b"[1]", b""), Err(EncodeError::Rejected { code: MALFORMED_DATA, .. })));
        assert!(matches!(first.push(b"{}", b""), Err(EncodeError::Rejected { code: MALFORMED_DATA, .. })));
        first.push(br#"{"id":1,"ts":"2026-11-25T17:20:09Z","geo":{"lat":1}}"#, b"").unwrap();
        first.push(br#"{"id":2,"price":2.5,"tags":["a"]}"#, b"").unwrap();
        assert!(first.held_bytes() > 0);
        // The third record freezes the table; later fields are ignored, conflicts refused.
        first.push(br#"{"id":3,"geo":{"lat":2.5},"price":3}"#, b"").unwrap();
        first.push(br#"{"id":4,"late":"ignored"}"#, b"").unwrap();
        // Read on the pool (`threads: 2`): a conflict is refused in the payload.
        first.push(br#"{"id":"five"}"#, b"").unwrap();
        // An encoder made before the freeze writes the frozen table too.
        second.push(br#"{"id":6,"price":7}"#, b"").unwrap();
        let payload = first.finish().unwrap();
        let refused: Vec<(u64, &str)> =
            payload.refused().iter().map(|refusal| (refusal.position.sequence, refusal.code)).collect();
        assert_eq!(refused, [(7, MALFORMED_DATA)], "the 8th record pushed");
        let (_, batches) = rows_of(payload.to_bytes());
        let schema = batches[0].schema();
        let columns: Vec<(String, String)> =
            schema.fields().iter().map(|field| (field.name().clone(), field.data_type().to_string())).collect();
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["id", "ts", "geo", "price", "tags"]);
        assert_eq!(columns[0].1, "Int64");
        assert!(columns[1].1.starts_with("Timestamp(µs"), "{columns:?}");
        assert_eq!(columns[3].1, "Float64");
        let ids = batches[0].column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 3, 4]);
        let (_, later) = rows_of(second.finish().unwrap().to_bytes());
        assert_eq!(later[0].schema(), schema);
        let (_, third) = {
            let mut encoder = factory.new_encoder(1 << 20);
            encoder.push(br#"{"id":8}"#, b"").unwrap();
            rows_of(encoder.finish().unwrap().to_bytes())
        };
        assert_eq!(third[0].schema(), schema);
    }

    #[test]
    fn a_small_first_batch_freezes_on_finish_and_foreign_held_records_widen_their_object() {
        let factory = infer_config(1000).encoder_factory().unwrap();
        let mut first = factory.new_encoder(1 << 20);
        let mut second = factory.new_encoder(1 << 20);
        first.push(br#"{"a":1}"#, b"").unwrap();
        second.push(br#"{"a":"text"}"#, b"").unwrap();
        let (_, batches) = rows_of(first.finish().unwrap().to_bytes());
        assert_eq!(batches[0].schema().field(0).data_type(), &DataType::Int64);
        // Accepted while held, it cannot be refused any more: its object widens `a` to string.
        let (_, widened) = rows_of(second.finish().unwrap().to_bytes());
        assert_eq!(widened[0].schema().field(0).data_type(), &DataType::Utf8);
        assert_eq!(widened[0].column(0).as_string::<i32>().value(0), "text");
    }

    #[test]
    fn small_row_groups_keep_memory_bounded_and_every_row() {
        let mut config = config(&[("id", "bigint"), ("msg", "string")]);
        config.row_group_mib = 1;
        config.threads = Some(2);
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
        // A staged chunk and two on the pool, each about a row group; the written part is
        // compressed (dictionary: tiny).
        assert!(peak < 4 << 20, "peak {peak}");
    }
}
