//! spillway's Apache Iceberg sink: each batch is appended to an existing Iceberg table as one
//! commit (`fast_append`) through iceberg-rust and its SQL catalog (PostgreSQL) or REST catalog
//! client, with the warehouse in S3 / MinIO (the S3 sink's `object_store` client) or, with a SQL
//! catalog, a local folder. Records are
//! converted to the table's current schema with the Parquet encoder's OpenX-style rules; those
//! that do not fit go to the error output. A batch's id is in its snapshot's summary, and every
//! attempt reads the snapshots before it commits, so a batch re-sent after a crash or a lost
//! commit answer (a REST catalog's "commit state unknown") is never appended twice.
//! Depends only on `spillway-sink-api`, `spillway-sink-s3` (column builders, S3 client, error
//! output) and iceberg-rust (which brings arrow / parquet 58 beside the workspace's 59).
//!
//! Module map:
//! - [`config`]: `IcebergSinkConfig` (the YAML `sink:` block), pure `validate`, `build`.
//! - [`catalog`]: the SQL or REST catalog as one `dyn Catalog`, the REST HTTP client.
//! - [`descriptor`]: the sink as the registry sees it (`SinkDescriptor`): ranges, description.
//! - [`encode`]: the open batch: records as sent, length-prefixed.
//! - [`convert`]: records into the table's schema (the S3 sink's column builders), misfits.
//! - [`bridge`]: arrow 59 arrays to arrow 58 through the C Data Interface (the only `unsafe`).
//! - [`route`]: the table of a batch, from `table` and the batch's dynamic partition keys.
//! - [`sink`]: `IcebergSink`: the committed-batch check, data files, the commit.
//! - [`storage`]: iceberg's `Storage` over `object_store` for `s3://` warehouses.
//! - [`error`]: iceberg-rust's errors classified into `SinkError`.

pub mod bridge;
pub mod catalog;
pub mod config;
pub mod convert;
pub mod descriptor;
pub mod encode;
pub mod error;
pub mod route;
pub mod sink;
pub mod storage;

pub use config::{CatalogConfig, IcebergSinkConfig};
pub use sink::IcebergSink;
