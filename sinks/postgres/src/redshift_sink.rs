//! `RedshiftSink` (`mode: s3_manifest`): each batch is written through the S3 sink to the
//! staging bucket (`s3_staging`, Firehose's `S3Configuration`), a manifest listing that object is
//! written beside it (`<prefix>manifests/…`), then one transaction on the database looks the
//! batch id up (a re-sent batch is acknowledged without loading again), runs
//! `COPY <table> (<columns>) FROM '<manifest>' CREDENTIALS '…' MANIFEST <copy_options>` and
//! records the batch id — the rows and the id are committed together, as in stdin mode.
//!
//! When the COPY keeps failing until the stream's `retry.duration_seconds` (3600 by default, as
//! Firehose), the pipeline routes the batch to the error output; [`RedshiftErrorOutput`] then
//! writes the batch's manifest under `<prefix>errors/manifests/…` (Firehose's layout) for a
//! manual `COPY … MANIFEST`, the data staying where it was staged.
//!
//! The COPY itself goes through [`CopyExecutor`]: [`RedshiftCopy`] sends the statement as is;
//! tests substitute an executor that observes the statement (PostgreSQL cannot read S3).
//!
//! Statements are sent with the simple query protocol and quoted literals, which Redshift and
//! PostgreSQL both accept (the batches table may be PostgreSQL's `uuid` / `jsonb` one or the
//! portable one this module creates).
//!
//! Must not: retry (the pipeline does), or keep a connection that saw an error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use spillway_sink_api::{Batch, ErrorOutput, Sink, SinkError};
use spillway_sink_s3::S3Sink;
use tokio_postgres::{SimpleQueryMessage, Transaction};

use crate::error::PgError;
use crate::pool::Pool;
use crate::redshift::{self, CopyCredentials, literal};
use crate::schema::quote_identifier;

/// `!{firehose:error-output-type}` of batches whose COPY failed until the retry duration.
pub const REDSHIFT_FAILED_OUTPUT_TYPE: &str = "redshift-failed";

/// One `COPY … MANIFEST` to run inside the batch's transaction.
#[derive(Debug, Clone)]
pub struct ManifestCopy {
    /// The whole statement, credentials included (never logged).
    pub statement: String,
    /// `s3://bucket/<prefix>manifests/…`.
    pub manifest_url: String,
    /// The objects the manifest lists (`s3://bucket/key`).
    pub object_urls: Vec<String>,
}

/// Runs the COPY of one batch inside its transaction; returns the rows the database loaded.
#[async_trait]
pub trait CopyExecutor: Send + Sync + 'static {
    async fn copy(&self, transaction: &Transaction<'_>, copy: &ManifestCopy) -> Result<u64, PgError>;
}

/// Sends the statement to the database (Redshift reads the manifest and its objects itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct RedshiftCopy;

#[async_trait]
impl CopyExecutor for RedshiftCopy {
    async fn copy(&self, transaction: &Transaction<'_>, copy: &ManifestCopy) -> Result<u64, PgError> {
        let messages = transaction.simple_query(&copy.statement).await?;
        Ok(command_count(&messages))
    }
}

fn command_count(messages: &[SimpleQueryMessage]) -> u64 {
    messages
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::CommandComplete(count) => Some(*count),
            _ => None,
        })
        .sum()
}

/// Where a stream's batches are staged, and how the database reads them.
pub(crate) struct Staging {
    pub sink: Arc<S3Sink>,
    pub bucket: String,
    /// The staging block's literal prefix (Firehose allows no expressions here).
    pub prefix: String,
}

impl Staging {
    /// The staged object's key, its manifest's key, and the key of the manifest once failed.
    fn keys(&self, batch: &Batch) -> Result<StagedKeys, SinkError> {
        let object = self.sink.object_key(batch)?;
        let manifest = redshift::manifest_key(&self.prefix, &object);
        let error_manifest = redshift::error_manifest_key(&self.prefix, &object);
        Ok(StagedKeys { object, manifest, error_manifest })
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

struct StagedKeys {
    object: String,
    manifest: String,
    error_manifest: String,
}

pub struct RedshiftSink {
    stream: String,
    pool: Pool,
    staging: Arc<Staging>,
    table: String,
    columns: Option<Vec<String>>,
    credentials: CopyCredentials,
    copy_options: Option<String>,
    batches_table: String,
    executor: Arc<dyn CopyExecutor>,
    timeout: Duration,
    /// The batches table created, once.
    prepared: tokio::sync::OnceCell<String>,
}

impl std::fmt::Debug for RedshiftSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedshiftSink")
            .field("stream", &self.stream)
            .field("table", &self.table)
            .field("bucket", &self.staging.bucket)
            .finish_non_exhaustive()
    }
}

/// What [`RedshiftSink::new`] needs from the configuration.
pub(crate) struct RedshiftParts {
    pub stream: String,
    pub pool: Pool,
    pub staging: Arc<Staging>,
    pub table: String,
    pub columns: Option<Vec<String>>,
    pub credentials: CopyCredentials,
    pub copy_options: Option<String>,
    pub batches_table: String,
    pub executor: Arc<dyn CopyExecutor>,
    pub timeout: Duration,
}

impl RedshiftSink {
    pub(crate) fn new(parts: RedshiftParts) -> Self {
        Self {
            stream: parts.stream,
            pool: parts.pool,
            staging: parts.staging,
            table: parts.table,
            columns: parts.columns,
            credentials: parts.credentials,
            copy_options: parts.copy_options,
            batches_table: parts.batches_table,
            executor: parts.executor,
            timeout: parts.timeout,
            prepared: tokio::sync::OnceCell::new(),
        }
    }

    /// The COPY statement for a manifest (credentials included).
    pub fn copy_statement(&self, manifest_url: &str) -> String {
        redshift::copy_statement(
            &self.table,
            self.columns.as_deref(),
            manifest_url,
            &self.credentials,
            self.copy_options.as_deref(),
        )
    }

    /// Create the batches table if missing (portable DDL), once; returns its quoted name.
    async fn batches_table(&self) -> Result<&str, PgError> {
        self.prepared
            .get_or_try_init(|| async {
                let quoted = self.batches_table.split('.').map(quote_identifier).collect::<Vec<_>>().join(".");
                let statement = format!(
                    "CREATE TABLE IF NOT EXISTS {quoted} (
                        stream varchar(256) NOT NULL,
                        batch_id varchar(36) NOT NULL,
                        target varchar(512) NOT NULL,
                        row_count bigint NOT NULL,
                        failures varchar(65535) NOT NULL DEFAULT '[]',
                        PRIMARY KEY (stream, batch_id))"
                );
                let mut pooled = self.pool.get().await?;
                let result = pooled.client().batch_execute(&statement).await;
                pooled.release(result.is_ok());
                match result {
                    Ok(()) => Ok(quoted),
                    Err(error)
                        if error.as_db_error().is_some_and(|db| matches!(db.code().code(), "23505" | "42P07")) =>
                    {
                        Ok(quoted)
                    }
                    Err(error) => Err(error.into()),
                }
            })
            .await
            .map(String::as_str)
    }

    fn lookup_statement(&self, batches_table: &str, batch: &Batch) -> String {
        format!(
            "SELECT 1 FROM {batches_table} WHERE stream = {} AND batch_id = {}",
            literal(&self.stream),
            literal(&batch.id.to_string())
        )
    }

    async fn already_loaded(&self, batches_table: &str, batch: &Batch) -> Result<bool, PgError> {
        let mut pooled = self.pool.get().await?;
        let result = pooled.client().simple_query(&self.lookup_statement(batches_table, batch)).await;
        pooled.release(result.is_ok());
        Ok(has_row(&result?))
    }

    async fn load(&self, batch: &Batch) -> Result<(), SinkError> {
        let batches_table = self.batches_table().await?;
        if self.already_loaded(batches_table, batch).await? {
            tracing::info!(stream = %self.stream, batch = %batch.id, "batch already loaded; acknowledged without loading again");
            return Ok(());
        }
        let keys = self.staging.keys(batch)?;
        // The same batch id gives the same keys: a retry overwrites its own object and manifest.
        self.staging.sink.write(batch).await?;
        let object_urls = vec![self.staging.url(&keys.object)];
        let manifest = redshift::manifest(&object_urls);
        self.staging.sink.write_object(&keys.manifest, Bytes::from(manifest)).await?;
        let manifest_url = self.staging.url(&keys.manifest);
        let copy = ManifestCopy { statement: self.copy_statement(&manifest_url), manifest_url, object_urls };

        let mut pooled = self.pool.get().await?;
        let result = self.load_in_transaction(pooled.client(), batches_table, batch, &copy).await;
        pooled.release(result.is_ok());
        let rows = result?;
        match rows {
            Some(rows) => {
                tracing::debug!(stream = %self.stream, batch = %batch.id, rows, manifest = %copy.manifest_url, "batch loaded from its manifest")
            }
            None => {
                tracing::info!(stream = %self.stream, batch = %batch.id, "batch already loaded; acknowledged without loading again")
            }
        }
        Ok(())
    }

    /// `None`: the batch id was already recorded (nothing loaded).
    async fn load_in_transaction(
        &self,
        client: &mut tokio_postgres::Client,
        batches_table: &str,
        batch: &Batch,
        copy: &ManifestCopy,
    ) -> Result<Option<u64>, PgError> {
        let transaction = client.transaction().await?;
        if has_row(&transaction.simple_query(&self.lookup_statement(batches_table, batch)).await?) {
            transaction.rollback().await?;
            return Ok(None);
        }
        let rows = self.executor.copy(&transaction, copy).await?;
        let record = format!(
            "INSERT INTO {batches_table} (stream, batch_id, target, row_count, failures) VALUES ({}, {}, {}, {rows}, '[]')",
            literal(&self.stream),
            literal(&batch.id.to_string()),
            literal(&self.table),
        );
        transaction.batch_execute(&record).await?;
        transaction.commit().await?;
        Ok(Some(rows))
    }

    /// The table and the listed columns exist and can be read (`SELECT … LIMIT 0`, which
    /// Redshift and PostgreSQL both answer); says what was checked.
    pub(crate) async fn check_table(pool: &Pool, table: &str, columns: Option<&[String]>) -> Result<String, PgError> {
        let selected = match columns {
            Some(columns) if !columns.is_empty() => {
                columns.iter().map(|column| quote_identifier(column)).collect::<Vec<_>>().join(", ")
            }
            _ => "*".to_string(),
        };
        let mut pooled = pool.get().await?;
        let result = pooled.client().simple_query(&format!("SELECT {selected} FROM {table} LIMIT 0")).await;
        pooled.release(result.is_ok());
        match result {
            Ok(_) => Ok(format!("table {table} loads columns ({selected}) from s3 manifests")),
            Err(error) => {
                let error = PgError::from(error);
                match error.sqlstate() {
                    Some("42P01") => Err(PgError::MissingTable(table.to_string())),
                    Some("42703") => Err(PgError::Config(format!("table {table}: {}", crate::error::describe(&error)))),
                    _ => Err(error),
                }
            }
        }
    }
}

fn has_row(messages: &[SimpleQueryMessage]) -> bool {
    messages.iter().any(|message| matches!(message, SimpleQueryMessage::Row(_)))
}

#[async_trait]
impl Sink for RedshiftSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.timeout, self.load(batch)).await {
            Err(_) => Err(PgError::Timeout(self.timeout.as_secs()).into()),
            Ok(result) => result,
        }
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        self.staging.sink.healthcheck().await?;
        RedshiftSink::check_table(&self.pool, &self.table, self.columns.as_deref()).await?;
        Ok(())
    }

    async fn close(&self) -> Result<(), SinkError> {
        self.pool.clear();
        Ok(())
    }
}

/// The error output of `mode: s3_manifest`: a batch whose COPY failed until the retry duration
/// gets its manifest under `<prefix>errors/manifests/…` (its object is staged again first, in
/// case staging was what failed: same key, same bytes). Records of other error output types
/// (processing failures, …) go to `backup` as Firehose error JSON.
pub struct RedshiftErrorOutput {
    pub(crate) staging: Arc<Staging>,
    pub(crate) backup: Arc<S3Sink>,
}

#[async_trait]
impl ErrorOutput for RedshiftErrorOutput {
    async fn write_error_records(
        &self,
        batch: &Batch,
        error_output_type: &str,
        lines: Vec<u8>,
    ) -> Result<(), SinkError> {
        if error_output_type != REDSHIFT_FAILED_OUTPUT_TYPE || batch.is_empty() {
            return self.backup.write_error_records(batch, error_output_type, lines).await;
        }
        let keys = match self.staging.keys(batch) {
            Ok(keys) => keys,
            // No key for this batch (cannot happen with a literal prefix): keep the records.
            Err(_) => return self.backup.write_error_records(batch, error_output_type, lines).await,
        };
        match self.staging.sink.write(batch).await {
            Ok(()) => {}
            Err(error) if error.is_retriable() => return Err(error),
            // The staging bucket refuses this object for good: the records go to the backup.
            Err(error) => {
                tracing::warn!(stream = %batch.stream, batch = %batch.id, %error, "cannot stage the failed batch; its records go to the error output");
                return self.backup.write_error_records(batch, error_output_type, lines).await;
            }
        }
        let manifest = redshift::manifest(&[self.staging.url(&keys.object)]);
        self.staging.sink.write_object(&keys.error_manifest, Bytes::from(manifest)).await?;
        tracing::warn!(
            stream = %batch.stream,
            batch = %batch.id,
            records = batch.record_count(),
            manifest = %self.staging.url(&keys.error_manifest),
            reason = %first_error_message(&lines),
            "the batch's COPY failed until the retry duration; its manifest is under errors/manifests/ for a manual COPY"
        );
        Ok(())
    }
}

/// The `errorCode: errorMessage` of the first Firehose error record, for the log.
fn first_error_message(lines: &[u8]) -> String {
    let first = lines.split(|&byte| byte == b'\n').next().unwrap_or_default();
    match serde_json::from_slice::<serde_json::Value>(first) {
        Ok(record) => format!(
            "{}: {}",
            record["errorCode"].as_str().unwrap_or_default(),
            record["errorMessage"].as_str().unwrap_or_default()
        ),
        Err(_) => String::new(),
    }
}
