//! iceberg-rust's errors classified into `SinkError`: everything about the catalog, the table or
//! the warehouse is retriable (the records wait in the WAL; a missing table is the operator's to
//! create, and a commit that failed or whose answer was lost is settled by the next attempt,
//! which reads the table's snapshots first). Only a payload this crate did not make is permanent.

use spillway_sink_api::SinkError;

pub const INVALID_CONFIGURATION: &str = "Iceberg.InvalidConfiguration";
pub const INVALID_TABLE_NAME: &str = "Iceberg.InvalidTableName";
pub const TABLE_NOT_FOUND: &str = "Iceberg.TableNotFound";
pub const CATALOG_UNAVAILABLE: &str = "Iceberg.CatalogUnavailable";
pub const UNSUPPORTED_SCHEMA: &str = "Iceberg.UnsupportedSchema";
pub const WRITE_FAILED: &str = "Iceberg.DataFileWriteFailed";
pub const COMMIT_FAILED: &str = "Iceberg.CommitFailed";
pub const COMMIT_CONFLICT: &str = "Iceberg.CommitConflict";
pub const TIMEOUT: &str = "Iceberg.Timeout";
pub const INTERNAL: &str = "Iceberg.InternalError";

/// Loading the table: a missing table or namespace says so; anything else is the catalog.
pub fn load_failed(table: &str, error: iceberg::Error) -> SinkError {
    match error.kind() {
        iceberg::ErrorKind::TableNotFound | iceberg::ErrorKind::NamespaceNotFound => SinkError::retriable(
            TABLE_NOT_FOUND,
            format!("table {table} does not exist in the catalog (spillway appends to existing tables only)"),
        )
        .with_source(error),
        _ => SinkError::retriable(CATALOG_UNAVAILABLE, format!("cannot load table {table}")).with_source(error),
    }
}

pub fn write_failed(table: &str, error: iceberg::Error) -> SinkError {
    SinkError::retriable(WRITE_FAILED, format!("cannot write data files of table {table}")).with_source(error)
}

pub fn commit_failed(table: &str, error: iceberg::Error) -> SinkError {
    let code = match error.kind() {
        iceberg::ErrorKind::CatalogCommitConflicts => COMMIT_CONFLICT,
        _ => COMMIT_FAILED,
    };
    SinkError::retriable(code, format!("cannot commit to table {table}")).with_source(error)
}
