//! spillway's PostgreSQL sink: JSON records become COPY rows (binary where every column type
//! allows, else text) as they arrive (mapped to
//! columns by name, or the whole record into one `jsonb` column), and each batch is loaded with
//! `COPY … FROM STDIN` in one transaction together with its batch id, so a re-sent batch is never
//! loaded twice. Rows PostgreSQL refuses are split out and go to the S3 error output.
//! For Redshift (`mode: s3_manifest`) each batch is staged in S3 instead and loaded with
//! `COPY … FROM '<manifest>' MANIFEST`, with the same batch id transaction.
//! Depends only on `spillway-sink-api`, `spillway-sink-s3` (the error output, Redshift's staging)
//! and `tokio-postgres`.
//!
//! Module map:
//! - [`config`]: `PostgresSinkConfig` (the YAML `sink:` block), pure `validate`, `build`, `check`.
//! - [`descriptor`]: the sink as the registry sees it (`SinkDescriptor`): ranges, description.
//! - [`schema`]: the target table's columns and types from the catalog; the batches table.
//! - [`encode`]: the COPY encoder (text lines or binary tuples, one per record, rejected records
//!   kept in place).
//! - [`binary`]: JSON values to PostgreSQL's binary wire forms, exactly or refused with a SQLSTATE.
//! - [`sink`]: `PostgresSink`, the transaction, idempotency and bad-row splitting.
//! - [`error`]: SQLSTATE classification into `SinkError`.
//! - [`pool`]: connections (one per batch in flight), TLS through rustls.
//! - [`redshift`]: Redshift manifests, their keys and `COPY … MANIFEST` statements (pure).
//! - [`redshift_sink`]: `RedshiftSink` (`mode: s3_manifest`): stage through the S3 sink, write
//!   the manifest, COPY and the batch id in one transaction; failed manifests to `errors/`.

pub mod binary;
pub mod config;
pub mod descriptor;
pub mod encode;
pub mod error;
pub mod pool;
pub mod redshift;
pub mod redshift_sink;
pub mod schema;
pub mod sink;

pub use config::{CopyFormatChoice, Mode, POSTGRES_FAILED_OUTPUT_TYPE, PostgresSinkConfig};
pub use redshift_sink::{CopyExecutor, ManifestCopy, REDSHIFT_FAILED_OUTPUT_TYPE, RedshiftCopy};
pub use schema::{CopyFormat, TableShape};
pub use sink::PostgresSink;
