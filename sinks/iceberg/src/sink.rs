//! `IcebergSink`: one batch, one append. A write loads the table, reads the batch's records into
//! its current schema (on a blocking thread), and then:
//! 1. looks for the batch id in the summaries of the table's snapshots: a batch committed by an
//!    attempt whose answer was lost, or just before a crash, is not appended again;
//! 2. writes one Parquet data file per partition of the table's spec (more only when a file
//!    passes the target size), named after the batch id, through iceberg-rust's writers
//!    (statistics, field ids and partition values are theirs);
//! 3. commits them as one `fast_append` whose snapshot summary carries `spillway.batch-id`,
//!    `spillway.stream`, `spillway.writer` and the WAL range the batch completes. iceberg-rust
//!    retries a commit that lost the race with another writer (the SQL catalog's conditional
//!    `UPDATE` changed no row, a REST catalog answered 409: nothing was committed) against the
//!    refreshed table. Any other failed commit may or may not have been applied (a REST
//!    catalog's 5xx, "commit state unknown", or an answer lost with the connection): the
//!    attempt fails, and the pipeline's next attempt settles it at step 1.
//!
//! The catalog (SQL or REST) is one `dyn Catalog` (see [`crate::catalog`]); nothing here
//! depends on which.
//!
//! Records that do not fit the table are reported as a partial failure (they go to the error
//! output), also when the batch was already committed, so a crash between the commit and the
//! error output loses none of them.
//!
//! Must not: retry a batch itself (the pipeline does), or create or alter tables.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use iceberg::Catalog;
use iceberg::io::StorageFactory;
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use spillway_sink_api::{Batch, ErrorOutput, RecordFailure, RequestCounts, Sink, SinkError};
use spillway_sink_s3::S3Sink;
use tokio::sync::OnceCell;

use crate::catalog::{self, Connected};
use crate::config::{CatalogConfig, table_ident};
use crate::convert::{self, Converted, KeyMatching, Misfit};
use crate::encode;
use crate::error::{self, CATALOG_ACCESS_DENIED, INTERNAL, INVALID_TABLE_NAME, TIMEOUT, UNSUPPORTED_SCHEMA};
use crate::route::TableTemplate;

/// Snapshot summary keys spillway writes (Iceberg's Kafka Connect sink keeps its offsets the
/// same way).
pub const SUMMARY_BATCH_ID: &str = "spillway.batch-id";
pub const SUMMARY_STREAM: &str = "spillway.stream";
pub const SUMMARY_WRITER: &str = "spillway.writer";
pub const SUMMARY_WAL_START: &str = "spillway.wal-start";
pub const SUMMARY_WAL_END: &str = "spillway.wal-end";

pub struct SinkParts {
    pub stream: String,
    pub catalog: CatalogConfig,
    pub storage: Arc<dyn StorageFactory>,
    pub table: TableTemplate,
    pub matching: Arc<KeyMatching>,
    pub target_file_size: Option<usize>,
    pub timeout: Duration,
    pub error_output: Arc<S3Sink>,
}

pub struct IcebergSink {
    parts: SinkParts,
    catalog: OnceCell<Connected>,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    commits: AtomicU64,
    data_files: AtomicU64,
    already_committed: AtomicU64,
    failed: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
}

impl IcebergSink {
    pub fn new(parts: SinkParts) -> Self {
        Self { parts, catalog: OnceCell::new(), counts: Counts::default() }
    }

    pub fn error_output(&self) -> Arc<dyn ErrorOutput> {
        self.parts.error_output.clone()
    }

    /// The catalog, connected at first use (a failed connection is tried again by the next
    /// attempt).
    async fn connected(&self) -> Result<&Connected, SinkError> {
        self.catalog
            .get_or_try_init(|| catalog::connect(&self.parts.catalog, self.parts.storage.clone(), self.parts.timeout))
            .await
    }

    async fn catalog(&self) -> Result<&Arc<dyn Catalog>, SinkError> {
        Ok(&self.connected().await?.catalog)
    }

    /// A refused token is forgotten, so the next attempt asks for a new one.
    async fn after_failure(&self, error: &SinkError) {
        if error.code == CATALOG_ACCESS_DENIED
            && let Some(connected) = self.catalog.get()
        {
            connected.forget_token().await;
        }
    }

    /// The table as the catalog has it now.
    pub async fn load_table(&self, name: &str) -> Result<Table, SinkError> {
        let ident = table_ident(name).map_err(|message| SinkError::permanent(INVALID_TABLE_NAME, message))?;
        let catalog = self.catalog().await?;
        catalog.load_table(&ident).await.map_err(|error| error::load_failed(&self.parts.catalog, name, error))
    }

    /// `validate --connect`: the catalog answers, the table exists and spillway can fill its
    /// columns (for a table named by partition keys: the catalog answers).
    pub async fn check(&self) -> Result<String, SinkError> {
        let Some(name) = self.parts.table.literal() else {
            let namespaces = self.catalog().await?.list_namespaces(None).await.map_err(|error| {
                error::catalog_failed(&self.parts.catalog, "cannot list the catalog's namespaces", error)
            })?;
            return Ok(format!(
                "iceberg {} answers ({} namespaces); tables are named per batch by partition keys",
                self.parts.catalog.label(),
                namespaces.len()
            ));
        };
        let table = self.load_table(&name).await?;
        let schema = table.metadata().current_schema();
        convert::columns_of(schema).map_err(|message| SinkError::retriable(UNSUPPORTED_SCHEMA, message))?;
        let spec = table.metadata().default_partition_spec();
        let partitioning = if spec.is_unpartitioned() {
            "unpartitioned".to_string()
        } else {
            let fields: Vec<String> =
                spec.fields().iter().map(|field| format!("{}({})", field.transform, field.name)).collect();
            format!("partitioned by {}", fields.join(", "))
        };
        Ok(format!(
            "iceberg table {name} in {}: {} columns, {partitioning}, {} snapshots",
            self.parts.catalog.label(),
            schema.as_struct().fields().len(),
            table.metadata().snapshots().count()
        ))
    }

    async fn write_once(&self, batch: &Batch, table_name: &str) -> Result<Vec<Misfit>, SinkError> {
        let table = self.load_table(table_name).await?;
        let schema = table.metadata().current_schema().clone();
        let payload = batch.payload.to_bytes();
        let matching = self.parts.matching.clone();
        let converted = tokio::task::spawn_blocking(move || -> Result<Result<Converted, String>, String> {
            let records = encode::records(&payload)?;
            Ok(convert::convert(&records, &schema, &matching))
        })
        .await
        .map_err(|error| SinkError::retriable(INTERNAL, format!("record conversion stopped: {error}")))?
        .map_err(|message| SinkError::permanent(INTERNAL, format!("the batch payload is damaged: {message}")))?
        .map_err(|message| SinkError::retriable(UNSUPPORTED_SCHEMA, message))?;

        if committed(&table, batch) {
            self.counts.already_committed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(stream = %batch.stream, batch = %batch.id, table = %table_name, "batch already committed, not appended again");
            return Ok(converted.misfits);
        }
        if converted.rows.num_rows() == 0 {
            return Ok(converted.misfits);
        }
        // Parquet encoding is CPU work: the writers run on a blocking thread, which drives their
        // uploads through the runtime's handle.
        let runtime = tokio::runtime::Handle::current();
        let (writer_table, rows, batch_id) = (table.clone(), converted.rows, batch.id);
        let target_file_size = self.parts.target_file_size;
        let files = tokio::task::spawn_blocking(move || {
            runtime.block_on(write_data_files(&writer_table, rows, batch_id, target_file_size))
        })
        .await
        .map_err(|error| SinkError::retriable(INTERNAL, format!("data file writing stopped: {error}")))?
        .map_err(|error| error::write_failed(table_name, error))?;
        let file_count = files.len() as u64;
        if let Some(delay) = test_delay(TestDelay::BeforeCommit) {
            tokio::time::sleep(delay).await;
        }
        let catalog = self.catalog().await?;
        let properties = HashMap::from([
            (SUMMARY_BATCH_ID.to_string(), batch.id.to_string()),
            (SUMMARY_STREAM.to_string(), batch.stream.clone()),
            (SUMMARY_WRITER.to_string(), format!("spillway {}", env!("CARGO_PKG_VERSION"))),
            (SUMMARY_WAL_START.to_string(), batch.start.to_string()),
            (SUMMARY_WAL_END.to_string(), batch.end.to_string()),
        ]);
        let transaction = Transaction::new(&table);
        // Duplicate files are ruled out by the batch-id check above; iceberg's own check would
        // read every manifest of the table at every commit.
        let append = transaction
            .fast_append()
            .with_check_duplicate(false)
            .set_commit_uuid(batch.id)
            .set_snapshot_properties(properties)
            .add_data_files(files);
        let transaction = append.apply(transaction).map_err(|error| error::commit_not_built(table_name, error))?;
        // A commit whose outcome is unknown fails this attempt; the next one finds the batch in
        // the snapshots if it was applied after all.
        transaction
            .commit(catalog.as_ref())
            .await
            .map_err(|error| error::commit_failed(&self.parts.catalog, table_name, error))?;
        self.counts.commits.fetch_add(1, Ordering::Relaxed);
        self.counts.data_files.fetch_add(file_count, Ordering::Relaxed);
        if let Some(delay) = test_delay(TestDelay::AfterCommit) {
            tokio::time::sleep(delay).await;
        }
        tracing::debug!(stream = %batch.stream, batch = %batch.id, table = %table_name, files = file_count, "batch committed");
        Ok(converted.misfits)
    }
}

/// One data file per partition (rolling at the target size), named `<batch id>-<n>.parquet`.
async fn write_data_files(
    table: &Table,
    rows: arrow_array_58::RecordBatch,
    batch_id: uuid::Uuid,
    target_file_size: Option<usize>,
) -> iceberg::Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let properties = metadata.table_properties()?;
    let target_file_size = target_file_size.unwrap_or(properties.write_target_file_size_bytes);
    let parquet = ParquetWriterBuilder::new(writer_properties(metadata.properties()), schema.clone());
    let locations = DefaultLocationGenerator::new(metadata)?;
    let names = DefaultFileNameGenerator::new(batch_id.to_string(), None, DataFileFormat::Parquet);
    let rolling = RollingFileWriterBuilder::new(parquet, target_file_size, table.file_io().clone(), locations, names);
    let builder = DataFileWriterBuilder::new(rolling);
    let spec = metadata.default_partition_spec().clone();
    // The rolling writer checks the size between writes: rows go in slices, so a file rolls near
    // the target size even within one batch.
    if spec.is_unpartitioned() {
        let mut writer = builder.build(None).await?;
        for slice in slices(&rows) {
            writer.write(slice).await?;
        }
        return writer.close().await;
    }
    let splitter = iceberg::arrow::RecordBatchPartitionSplitter::try_new_with_computed_values(schema, spec)?;
    let mut writer = FanoutWriter::new(builder);
    for (partition, rows) in splitter.split(&rows)? {
        for slice in slices(&rows) {
            writer.write(partition.clone(), slice).await?;
        }
    }
    writer.close().await
}

/// Rows written at once (zero-copy slices of the batch).
const ROWS_PER_WRITE: usize = 16_384;

fn slices(rows: &arrow_array_58::RecordBatch) -> impl Iterator<Item = arrow_array_58::RecordBatch> + '_ {
    (0..rows.num_rows())
        .step_by(ROWS_PER_WRITE)
        .map(|offset| rows.slice(offset, ROWS_PER_WRITE.min(rows.num_rows() - offset)))
}

#[derive(Clone, Copy)]
enum TestDelay {
    BeforeCommit,
    AfterCommit,
}

/// Test hooks for crash tests: `SPILLWAY_ICEBERG_TEST_COMMIT_DELAY_MS` holds every commit back
/// this long after its data files are written, `SPILLWAY_ICEBERG_TEST_ACK_DELAY_MS` holds the
/// answer back after the commit, so a test's kills fall between the steps.
fn test_delay(which: TestDelay) -> Option<Duration> {
    static DELAYS: std::sync::OnceLock<[Option<Duration>; 2]> = std::sync::OnceLock::new();
    let read = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|millis| millis.parse().ok())
            .filter(|millis| *millis > 0)
            .map(Duration::from_millis)
    };
    let delays = DELAYS
        .get_or_init(|| [read("SPILLWAY_ICEBERG_TEST_COMMIT_DELAY_MS"), read("SPILLWAY_ICEBERG_TEST_ACK_DELAY_MS")]);
    delays[which as usize]
}

/// Whether a snapshot of the table already carries this batch.
fn committed(table: &Table, batch: &Batch) -> bool {
    let id = batch.id.to_string();
    table
        .metadata()
        .snapshots()
        .any(|snapshot| snapshot.summary().additional_properties.get(SUMMARY_BATCH_ID) == Some(&id))
}

/// Parquet settings from the table's `write.parquet.compression-codec` (Iceberg's default zstd).
fn writer_properties(table_properties: &HashMap<String, String>) -> parquet_58::file::properties::WriterProperties {
    use parquet_58::basic::{Compression, GzipLevel, ZstdLevel};
    let codec = table_properties.get("write.parquet.compression-codec").map(|codec| codec.to_ascii_lowercase());
    let compression = match codec.as_deref() {
        Some("snappy") => Compression::SNAPPY,
        Some("gzip") => Compression::GZIP(GzipLevel::default()),
        Some("uncompressed") | Some("none") => Compression::UNCOMPRESSED,
        _ => Compression::ZSTD(ZstdLevel::default()),
    };
    parquet_58::file::properties::WriterProperties::builder().set_compression(compression).build()
}

fn partial(misfits: Vec<Misfit>) -> Result<(), SinkError> {
    if misfits.is_empty() {
        return Ok(());
    }
    let failures = misfits
        .into_iter()
        .map(|misfit| RecordFailure {
            index: misfit.index,
            retriable: false,
            code: misfit.code.to_string(),
            message: misfit.message,
        })
        .collect();
    Err(SinkError::partial(failures))
}

/// The partition key that names a batch's operation, as a jq key (Firehose's JSONQuery
/// `operation`) or from a Lambda's `otfMetadata`.
pub const OPERATION_KEY: &str = "operation";

/// Firehose's operations are `insert` (the default), `update` and `delete`; only appends are
/// made, so the other two send the batch (all its records share the key) to the error output.
fn check_operation(partition: &spillway_sink_api::PartitionKeys) -> Result<(), SinkError> {
    let lambda_key = spillway_sink_api::lambda_partition_key(OPERATION_KEY);
    let Some(operation) = partition.get(OPERATION_KEY).or_else(|| partition.get(&lambda_key)) else {
        return Ok(());
    };
    match operation.to_ascii_lowercase().as_str() {
        "insert" => Ok(()),
        "update" | "delete" => Err(SinkError::permanent(
            error::UNSUPPORTED_OPERATION,
            format!(
                "operation {operation} is not supported: spillway only appends (iceberg-rust 0.10 has no \
                 row-delta commit for updates or deletes by UniqueKeys); the record is not applied"
            ),
        )),
        _ => Err(SinkError::permanent(
            error::INVALID_OPERATION,
            format!("operation {operation:?} is none of insert, update, delete"),
        )),
    }
}

#[async_trait]
impl Sink for IcebergSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        check_operation(&batch.partition)?;
        // A table named by partition keys that cannot be rendered sends the batch to the error
        // output: retrying renders the same name.
        let table_name = self
            .parts
            .table
            .render(&batch.partition)
            .map_err(|message| SinkError::permanent(INVALID_TABLE_NAME, message))?;
        let outcome = match tokio::time::timeout(self.parts.timeout, self.write_once(batch, &table_name)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(SinkError::retriable(
                TIMEOUT,
                format!("writing to table {table_name} took more than {:?}", self.parts.timeout),
            )),
        };
        match outcome {
            Ok(misfits) => {
                self.counts.records.fetch_add(batch.record_count() as u64, Ordering::Relaxed);
                self.counts.bytes.fetch_add(batch.record_bytes as u64, Ordering::Relaxed);
                partial(misfits)
            }
            Err(error) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                self.after_failure(&error).await;
                Err(error)
            }
        }
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        let outcome = self.check().await.map(|_| ());
        if let Err(error) = &outcome {
            self.after_failure(error).await;
        }
        outcome
    }

    async fn close(&self) -> Result<(), SinkError> {
        // The catalog's connection pool closes when the sink is dropped.
        Ok(())
    }

    /// Commits and data files (their ratio is the files per commit), batches found already
    /// committed, failed attempts.
    fn request_counts(&self) -> Option<RequestCounts> {
        let counts = &self.counts;
        Some(RequestCounts {
            by_outcome: vec![
                ("commit", counts.commits.load(Ordering::Relaxed)),
                ("data_file", counts.data_files.load(Ordering::Relaxed)),
                ("already_committed", counts.already_committed.load(Ordering::Relaxed)),
                ("failed", counts.failed.load(Ordering::Relaxed)),
            ],
            records: counts.records.load(Ordering::Relaxed),
            bytes: counts.bytes.load(Ordering::Relaxed),
        })
    }
}
