//! `PostgresSink`: loads one batch in one transaction. The transaction first looks the batch up
//! in the batches table (a re-sent batch is acknowledged with its recorded outcome, without
//! loading again), then streams the batch's COPY rows (text or binary, as the table's shape
//! says) with `COPY … FROM STDIN`, then records
//! (stream, batch id, row count, row failures) and commits — rows and batch id together, so a
//! retry or a crash never loads a batch twice.
//!
//! A row the database refuses (bad value, constraint) never blocks the batch: each COPY runs
//! under a savepoint; when it fails on a row's content, the rows before the line PostgreSQL
//! names are loaded, that row is tried alone, and the rest continues (without a line number the
//! range is bisected). Refused rows come back as permanent per-record failures with the
//! message and SQLSTATE; the pipeline writes them to the error output (`backup`).
//!
//! Must not: retry (the pipeline does), or keep a connection that saw an error.

use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::SinkExt;
use serde::{Deserialize, Serialize};
use spillway_sink_api::{Batch, RecordFailure, Sink, SinkError};
use spillway_sink_s3::S3Sink;
use tokio_postgres::{Client, Transaction};

use crate::binary::{self, Tuple};
use crate::config::{CopyFormatChoice, PostgresSinkConfig};
use crate::encode::{BINARY, CopyEncoderFactory, RAW, REJECTED, SharedShape, lines, rows_from_raw, unescape};
use crate::error::{PgError, describe};
use crate::pool::Pool;
use crate::schema::{self, CopyFormat, TableShape};

/// Largest piece of COPY data sent in one message.
const COPY_PIECE_BYTES: usize = 1 << 20;

pub struct PostgresSink {
    stream: String,
    pool: Pool,
    config: PostgresSinkConfig,
    /// The table read from the catalog and the batches table created: once, at start or, if
    /// PostgreSQL was unreachable then, at the first load or healthcheck that reaches it.
    prepared: tokio::sync::OnceCell<Prepared>,
    /// The shape, for encoders (which cannot wait for the database).
    encoder_shape: SharedShape,
    backup: Arc<S3Sink>,
    timeout: Duration,
}

/// What loading needs from the database's catalog.
struct Prepared {
    shape: Arc<TableShape>,
    copy_statement: String,
    /// Quoted name of the batches table.
    batches_table: String,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("stream", &self.stream)
            .field("table", &self.config.table)
            .finish_non_exhaustive()
    }
}

/// A row failure as kept in the batches table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredFailure {
    index: usize,
    code: String,
    message: String,
}

impl From<StoredFailure> for RecordFailure {
    fn from(stored: StoredFailure) -> Self {
        RecordFailure { index: stored.index, retriable: false, code: stored.code, message: stored.message }
    }
}

impl PostgresSink {
    pub(crate) fn new(stream: &str, pool: Pool, config: PostgresSinkConfig, backup: Arc<S3Sink>) -> Self {
        Self {
            stream: stream.to_string(),
            pool,
            timeout: Duration::from_secs(config.timeout_seconds),
            config,
            prepared: tokio::sync::OnceCell::new(),
            encoder_shape: Arc::new(OnceLock::new()),
            backup,
        }
    }

    /// The encoder open batches are held in: COPY text rows for this table.
    pub fn encoder_factory(&self) -> CopyEncoderFactory {
        CopyEncoderFactory::new(self.encoder_shape.clone())
    }

    /// Where refused records go.
    pub fn error_output(&self) -> Arc<S3Sink> {
        self.backup.clone()
    }

    /// The table's shape, if it has been read.
    pub fn shape(&self) -> Option<&TableShape> {
        self.prepared.get().map(|prepared| prepared.shape.as_ref())
    }

    /// Read the table from the catalog and create the batches table, once.
    pub async fn prepare(&self) -> Result<(), PgError> {
        self.prepared().await.map(|_| ())
    }

    async fn prepared(&self) -> Result<&Prepared, PgError> {
        self.prepared
            .get_or_try_init(|| async {
                let mut pooled = self.pool.get().await?;
                let described = async {
                    let shape = schema::describe(
                        pooled.client(),
                        &self.config.table,
                        self.config.columns.as_deref(),
                        self.config.record_column.as_deref(),
                    )
                    .await?;
                    let zone: String = pooled.client().query_one("SELECT current_setting('TimeZone')", &[]).await?.get(0);
                    Ok::<_, PgError>((shape, zone))
                }
                .await;
                pooled.release(described.is_ok());
                let (mut shape, zone) = described?;
                shape.format = choose_format(&shape, self.config.copy_format, &zone)?;
                let shape = Arc::new(shape);
                let batches_table = schema::ensure_batches_table(&self.pool, &self.config.batches_table).await?;
                let copy_statement = shape.copy_statement(self.config.copy_options.as_deref());
                let _ = self.encoder_shape.set(shape.clone());
                tracing::info!(stream = %self.stream, table = %shape.table, columns = shape.columns.len(), format = shape.format.name(), "postgres table read");
                Ok(Prepared { shape, copy_statement, batches_table })
            })
            .await
    }

    async fn load(&self, batch: &Batch) -> Result<Vec<StoredFailure>, PgError> {
        let prepared = self.prepared().await?;
        let mut body = batch.payload.to_bytes();
        if body.first() == Some(&RAW) {
            // Encoded before the table was known: rows now.
            let (shape, raw) = (prepared.shape.clone(), body.clone());
            body = tokio::task::spawn_blocking(move || rows_from_raw(shape, &raw))
                .await?
                .map_err(|error| PgError::Protocol(error.to_string()))?;
        }
        let split_body = body.clone();
        let rows = tokio::task::spawn_blocking(move || split_rows(&split_body)).await??;
        if rows.spans.len() != batch.record_count() {
            return Err(PgError::Protocol(format!(
                "the batch holds {} records but its payload {} rows",
                batch.record_count(),
                rows.spans.len()
            )));
        }
        let mut pooled = self.pool.get().await?;
        let result = self.load_rows(pooled.client(), prepared, batch, &body, &rows).await;
        pooled.release(result.is_ok());
        result
    }

    async fn load_rows(
        &self,
        client: &mut Client,
        prepared: &Prepared,
        batch: &Batch,
        body: &Bytes,
        rows: &Rows,
    ) -> Result<Vec<StoredFailure>, PgError> {
        let batch_id = batch.id.to_string();
        let mut transaction = client.transaction().await?;
        let lookup = format!(
            "SELECT failures::text FROM {} WHERE stream = $1 AND batch_id = $2::text::uuid",
            prepared.batches_table
        );
        if let Some(row) = transaction.query_opt(&lookup, &[&self.stream, &batch_id]).await? {
            let stored: String = row.get(0);
            transaction.rollback().await?;
            let failures: Vec<StoredFailure> = serde_json::from_str(&stored)
                .map_err(|error| PgError::Protocol(format!("unreadable failures of batch {batch_id}: {error}")))?;
            tracing::info!(stream = %self.stream, batch = %batch_id, failures = failures.len(), "batch already loaded; acknowledged without loading again");
            return Ok(failures);
        }

        let mut failures = Vec::new();
        // Ranges of row indices still to load, the next one last.
        let mut pending: Vec<Range<usize>> = Vec::new();
        let mut run_start = 0;
        for failure in &rows.refused {
            pending.push(run_start..failure.index);
            run_start = failure.index + 1;
            failures.push(failure.clone());
        }
        pending.push(run_start..rows.spans.len());
        pending.reverse();

        let mut loaded: u64 = 0;
        let mut copies: u32 = 0;
        while let Some(range) = pending.pop() {
            if range.is_empty() {
                continue;
            }
            copies += 1;
            let savepoint = transaction.savepoint("spillway_rows").await?;
            match copy_rows(&savepoint, &prepared.copy_statement, body, rows, range.clone()).await {
                Ok(count) => {
                    savepoint.commit().await?;
                    loaded += count;
                }
                Err(error) if error.is_row_fault() => {
                    savepoint.rollback().await?;
                    if range.len() == 1 {
                        failures.push(row_failure(range.start, &error));
                        continue;
                    }
                    // COPY stops at the first bad row and names its line: the rows before it were
                    // fine, so load them, try that row alone, then go on. Else bisect.
                    match failed_line(&error).map(|line| range.start + line - 1).filter(|bad| range.contains(bad)) {
                        // The first row itself: nothing before it could have caused it.
                        Some(bad) if bad == range.start => {
                            failures.push(row_failure(bad, &error));
                            pending.push(bad + 1..range.end);
                        }
                        Some(bad) => {
                            pending.push(bad + 1..range.end);
                            pending.push(bad..bad + 1);
                            pending.push(range.start..bad);
                        }
                        None => {
                            let middle = range.start + range.len() / 2;
                            pending.push(middle..range.end);
                            pending.push(range.start..middle);
                        }
                    }
                }
                Err(error) => return Err(error),
            }
        }

        failures.sort_by_key(|failure| failure.index);
        let failures_json = serde_json::to_string(&failures)
            .map_err(|error| PgError::Protocol(format!("cannot encode failures: {error}")))?;
        let record = format!(
            "INSERT INTO {} (stream, batch_id, target, row_count, failures) VALUES ($1, $2::text::uuid, $3, $4, $5::text::jsonb)",
            prepared.batches_table
        );
        let row_count = loaded as i64;
        transaction
            .execute(&record, &[&self.stream, &batch_id, &prepared.shape.table, &row_count, &failures_json])
            .await?;
        transaction.commit().await?;
        tracing::debug!(stream = %self.stream, batch = %batch_id, rows = loaded, refused = failures.len(), copies, "batch loaded");
        Ok(failures)
    }
}

/// A payload split into rows: where each row is, and the records the encoder refused.
struct Rows {
    binary: bool,
    /// `(offset, length)` of each record's row, in record order (`(0, 0)` for a refused one).
    spans: Vec<(usize, usize)>,
    /// Refused records, by index, with the encoder's reason.
    refused: Vec<StoredFailure>,
}

fn split_rows(body: &[u8]) -> Result<Rows, PgError> {
    if body.first() == Some(&BINARY) {
        let tuples = binary::tuples(body, 1).map_err(PgError::Protocol)?;
        let mut rows = Rows { binary: true, spans: Vec::with_capacity(tuples.len()), refused: Vec::new() };
        for (index, tuple) in tuples.into_iter().enumerate() {
            match tuple {
                Tuple::Row { offset, length } => rows.spans.push((offset, length)),
                Tuple::Refused { code, message } => {
                    rows.spans.push((0, 0));
                    rows.refused.push(StoredFailure { index, code, message });
                }
            }
        }
        return Ok(rows);
    }
    let spans = lines(body);
    let refused = spans
        .iter()
        .enumerate()
        .filter(|(_, (offset, length))| *length > 0 && body[*offset] == REJECTED)
        .map(|(index, &(offset, length))| StoredFailure {
            index,
            code: "Postgres.InvalidRecord".into(),
            message: unescape(&body[offset + 1..offset + length]),
        })
        .collect();
    Ok(Rows { binary: false, spans, refused })
}

/// Stream rows `range` of `body` with one COPY; returns the rows the server counted.
async fn copy_rows(
    transaction: &Transaction<'_>,
    statement: &str,
    body: &Bytes,
    rows: &Rows,
    range: Range<usize>,
) -> Result<u64, PgError> {
    let (first_offset, _) = rows.spans[range.start];
    let (last_offset, last_length) = rows.spans[range.end - 1];
    let end = match rows.binary {
        true => last_offset + last_length,
        // Through the newline ending the last row (the encoder ends every row with one).
        false => (last_offset + last_length + 1).min(body.len()),
    };
    let sink = transaction.copy_in::<_, Bytes>(statement).await?;
    futures::pin_mut!(sink);
    if rows.binary {
        sink.send(Bytes::from_static(binary::HEADER)).await?;
    }
    let mut position = first_offset;
    while position < end {
        let piece_end = (position + COPY_PIECE_BYTES).min(end);
        sink.send(body.slice(position..piece_end)).await?;
        position = piece_end;
    }
    if rows.binary {
        sink.send(Bytes::from_static(binary::TRAILER)).await?;
    }
    let count = sink.as_mut().finish().await?;
    let expected = range.len() as u64;
    if count != expected {
        return Err(PgError::Protocol(format!("COPY loaded {count} rows of {expected}")));
    }
    Ok(count)
}

/// The COPY format for `shape`: binary when asked or allowed (`auto`) and every column converts
/// exactly; `binary` with a column that does not is a configuration error naming it.
fn choose_format(shape: &TableShape, choice: CopyFormatChoice, session_zone: &str) -> Result<CopyFormat, PgError> {
    let not_binary = shape.not_binary(schema::is_utc(session_zone));
    match choice {
        CopyFormatChoice::Text => Ok(CopyFormat::Text),
        CopyFormatChoice::Auto if not_binary.is_empty() => Ok(CopyFormat::Binary),
        CopyFormatChoice::Auto => {
            tracing::info!(table = %shape.table, columns = %not_binary.join(", "), "copy text: spillway has no exact binary conversion for these columns");
            Ok(CopyFormat::Text)
        }
        CopyFormatChoice::Binary if not_binary.is_empty() => Ok(CopyFormat::Binary),
        CopyFormatChoice::Binary => Err(PgError::Config(format!(
            "copy_format: binary, but spillway has no exact binary conversion for columns {} of table {} (timestamptz needs the session TimeZone to be UTC, it is {session_zone}); use copy_format: auto or text",
            not_binary.join(", "),
            shape.table
        ))),
    }
}

/// The 1-based line of the COPY data a row error names (`COPY t, line 42, column n: …`).
fn failed_line(error: &PgError) -> Option<usize> {
    let PgError::Postgres(postgres) = error else { return None };
    let context = postgres.as_db_error()?.where_()?;
    let after = &context[context.find(", line ")? + ", line ".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&line: &usize| line >= 1)
}

fn row_failure(index: usize, error: &PgError) -> StoredFailure {
    let mut message = describe(error);
    // The column and value PostgreSQL names, without the line of a partial COPY.
    if let PgError::Postgres(postgres) = error
        && let Some(context) = postgres.as_db_error().and_then(|db| db.where_())
        && let Some(column) = context.find("column ")
    {
        message.push_str(&format!("; {}", &context[column..]));
    }
    let code = match error.sqlstate() {
        Some(sqlstate) => format!("Postgres.{sqlstate}"),
        None => "Postgres.RowRejected".to_string(),
    };
    StoredFailure { index, code, message }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let failures = match tokio::time::timeout(self.timeout, self.load(batch)).await {
            Err(_) => return Err(PgError::Timeout(self.timeout.as_secs()).into()),
            Ok(Err(error)) => {
                // Not a row's fault: the whole transaction is rolled back and will be retried.
                return Err(error.into());
            }
            Ok(Ok(failures)) => failures,
        };
        if failures.is_empty() {
            return Ok(());
        }
        Err(SinkError::partial(failures.into_iter().map(RecordFailure::from).collect()))
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        let prepared = self.prepared().await?;
        let mut pooled = self.pool.get().await?;
        let result = pooled
            .client()
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&prepared.shape.table])
            .await
            .map_err(PgError::from);
        pooled.release(result.is_ok());
        match result?.get::<_, bool>(0) {
            true => Ok(()),
            false => Err(PgError::MissingTable(prepared.shape.table.clone()).into()),
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        self.pool.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::BinaryType;
    use crate::schema::{Column, ColumnKind};

    fn shape(types: &[Option<BinaryType>]) -> TableShape {
        TableShape {
            table: "t".into(),
            columns: types
                .iter()
                .enumerate()
                .map(|(index, binary)| Column {
                    name: format!("c{index}"),
                    type_name: "x".into(),
                    kind: ColumnKind::Scalar,
                    binary: *binary,
                })
                .collect(),
            whole_record: false,
            format: CopyFormat::Text,
        }
    }

    #[test]
    fn binary_is_chosen_only_where_every_column_converts() {
        let simple = shape(&[Some(BinaryType::Int8), Some(BinaryType::Timestamptz)]);
        assert_eq!(choose_format(&simple, CopyFormatChoice::Auto, "Etc/UTC").unwrap(), CopyFormat::Binary);
        assert_eq!(choose_format(&simple, CopyFormatChoice::Text, "Etc/UTC").unwrap(), CopyFormat::Text);
        // A zone-less timestamp would mean the session's zone, which binary cannot follow.
        assert_eq!(choose_format(&simple, CopyFormatChoice::Auto, "Europe/Berlin").unwrap(), CopyFormat::Text);
        let with_array = shape(&[Some(BinaryType::Int8), None]);
        assert_eq!(choose_format(&with_array, CopyFormatChoice::Auto, "UTC").unwrap(), CopyFormat::Text);
        let refused = choose_format(&with_array, CopyFormatChoice::Binary, "UTC").unwrap_err();
        assert!(matches!(&refused, PgError::Config(message) if message.contains("c1 x")), "{refused}");
    }

    #[test]
    fn payloads_split_into_rows_and_refused_records_in_both_formats() {
        let table = {
            let mut table = shape(&[Some(BinaryType::Int4)]);
            table.format = CopyFormat::Binary;
            Arc::new(table)
        };
        for format in [CopyFormat::Binary, CopyFormat::Text] {
            let mut table = (*table).clone();
            table.format = format;
            let factory = CopyEncoderFactory::new(Arc::new(OnceLock::from(Arc::new(table))));
            let mut encoder = spillway_sink_api::EncoderFactory::new_encoder(&factory, 1024);
            for record in [r#"{"c0":1}"#, "oops", r#"{"c0":"seven"}"#, r#"{"c0":2}"#] {
                encoder.push(record.as_bytes(), b"\n").unwrap();
            }
            let body = encoder.finish().unwrap().to_bytes();
            let rows = split_rows(&body).unwrap();
            assert_eq!(rows.binary, format == CopyFormat::Binary);
            assert_eq!(rows.spans.len(), 4);
            let refused: Vec<(usize, &str)> =
                rows.refused.iter().map(|failure| (failure.index, failure.code.as_str())).collect();
            match format {
                // Binary refuses what PostgreSQL would, with its SQLSTATE; text leaves it to the server.
                CopyFormat::Binary => {
                    assert_eq!(refused, [(1, "Postgres.InvalidRecord"), (2, "Postgres.22P02")]);
                    assert!(rows.refused[1].message.contains("invalid input syntax for type integer: \"seven\""));
                    assert!(rows.refused[1].message.contains("column c0"));
                    let (offset, length) = rows.spans[3];
                    assert_eq!(&body[offset..offset + length], [0, 1, 0, 0, 0, 4, 0, 0, 0, 2]);
                }
                CopyFormat::Text => assert_eq!(refused, [(1, "Postgres.InvalidRecord")]),
            }
        }
    }
}
