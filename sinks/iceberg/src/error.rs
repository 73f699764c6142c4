//! iceberg-rust's errors classified into `SinkError`: everything about the catalog, the table or
//! the warehouse is retriable (the records wait in the WAL; a missing table is the operator's to
//! create, and a commit that failed or whose answer was lost is settled by the next attempt,
//! which reads the table's snapshots first). Only a payload this crate did not make is permanent.
//! A REST catalog's refusal of spillway's credentials is `Iceberg.CatalogAccessDenied` (the
//! operator's to fix; the sink then asks for a new token), a commit answered with a 5xx
//! `Iceberg.CommitStateUnknown`.

use spillway_sink_api::SinkError;

use crate::config::CatalogConfig;

pub const INVALID_CONFIGURATION: &str = "Iceberg.InvalidConfiguration";
pub const INVALID_TABLE_NAME: &str = "Iceberg.InvalidTableName";
/// A record whose operation (partition key or Lambda `otfMetadata` `operation`) is `update` or
/// `delete`: iceberg-rust 0.10 has no row-delta commit, so spillway only appends, and refuses
/// these rather than append them as inserts.
pub const UNSUPPORTED_OPERATION: &str = "Iceberg.UnsupportedOperation";
/// An operation that is none of `insert`, `update`, `delete`.
pub const INVALID_OPERATION: &str = "Iceberg.InvalidOperation";
pub const TABLE_NOT_FOUND: &str = "Iceberg.TableNotFound";
pub const CATALOG_UNAVAILABLE: &str = "Iceberg.CatalogUnavailable";
pub const UNSUPPORTED_SCHEMA: &str = "Iceberg.UnsupportedSchema";
pub const WRITE_FAILED: &str = "Iceberg.DataFileWriteFailed";
pub const COMMIT_FAILED: &str = "Iceberg.CommitFailed";
pub const COMMIT_CONFLICT: &str = "Iceberg.CommitConflict";
pub const COMMIT_STATE_UNKNOWN: &str = "Iceberg.CommitStateUnknown";
pub const CATALOG_ACCESS_DENIED: &str = "Iceberg.CatalogAccessDenied";
pub const TIMEOUT: &str = "Iceberg.Timeout";
pub const INTERNAL: &str = "Iceberg.InternalError";

/// How a catalog request failed, as far as iceberg-rust's error tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The catalog refused spillway's credential or token (HTTP 401 / 403, or the OAuth2
    /// token endpoint refused the credential).
    AccessDenied,
    /// No connection: refused, unresolvable, connect timeout (nothing was sent).
    Unreachable,
    /// The request may have been sent but no answer came (timeout, connection lost).
    NoAnswer,
    Other,
}

/// iceberg-catalog-rest 0.10 keeps the status of an unexpected answer only in its error's
/// context (`status: 401 Unauthorized`, or an Iceberg error body's `code: 403`), and marks a
/// failed token exchange `operation: auth`; a connection failure is a reqwest error inside.
fn failure(error: &iceberg::Error) -> Failure {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(http) = cause.downcast_ref::<reqwest_012::Error>()
            && http.status().is_none()
        {
            if http.is_connect() {
                return Failure::Unreachable;
            }
            if http.is_timeout() || http.is_request() || http.is_body() {
                return Failure::NoAnswer;
            }
        }
        source = cause.source();
    }
    let text = error.to_string();
    let denied = ["status: 401", "status: 403", "code: 401", "code: 403", "operation: auth"];
    if denied.iter().any(|marker| text.contains(marker)) {
        return Failure::AccessDenied;
    }
    Failure::Other
}

/// A catalog request other than loading or committing (`validate --connect`'s namespace list).
pub fn catalog_failed(catalog: &CatalogConfig, what: &str, error: iceberg::Error) -> SinkError {
    let label = catalog.label();
    match failure(&error) {
        Failure::AccessDenied => SinkError::retriable(
            CATALOG_ACCESS_DENIED,
            format!("{what}: the {label} refused spillway's credentials (check `credential` / `token`)"),
        ),
        Failure::Unreachable => {
            SinkError::retriable(CATALOG_UNAVAILABLE, format!("{what}: the {label} cannot be reached"))
        }
        Failure::NoAnswer => SinkError::retriable(CATALOG_UNAVAILABLE, format!("{what}: the {label} did not answer")),
        Failure::Other => SinkError::retriable(CATALOG_UNAVAILABLE, format!("{what} ({label})")),
    }
    .with_source(error)
}

/// Loading the table: a missing table or namespace says so; anything else is the catalog.
pub fn load_failed(catalog: &CatalogConfig, table: &str, error: iceberg::Error) -> SinkError {
    match error.kind() {
        iceberg::ErrorKind::TableNotFound | iceberg::ErrorKind::NamespaceNotFound => SinkError::retriable(
            TABLE_NOT_FOUND,
            format!(
                "table {table} does not exist in the {} (spillway appends to existing tables only)",
                catalog.label()
            ),
        )
        .with_source(error),
        _ => catalog_failed(catalog, &format!("cannot load table {table}"), error),
    }
}

pub fn write_failed(table: &str, error: iceberg::Error) -> SinkError {
    SinkError::retriable(WRITE_FAILED, format!("cannot write data files of table {table}")).with_source(error)
}

/// The commit failed. A conflict (409, or the SQL catalog's conditional update missed) applied
/// nothing; any other failure may have been applied (a REST 5xx says "the commit state is
/// unknown"): the next attempt reads the snapshots before it commits again.
pub fn commit_failed(catalog: &CatalogConfig, table: &str, error: iceberg::Error) -> SinkError {
    if error.kind() == iceberg::ErrorKind::CatalogCommitConflicts {
        return SinkError::retriable(COMMIT_CONFLICT, format!("cannot commit to table {table}: a conflicting commit"))
            .with_source(error);
    }
    match failure(&error) {
        Failure::AccessDenied => catalog_failed(catalog, &format!("cannot commit to table {table}"), error),
        Failure::Unreachable => catalog_failed(catalog, &format!("cannot commit to table {table}"), error),
        Failure::NoAnswer => commit_state_unknown(catalog, table, "gave no answer to", error),
        Failure::Other if error.to_string().contains("commit state is unknown") => {
            commit_state_unknown(catalog, table, "failed", error)
        }
        Failure::Other => {
            SinkError::retriable(COMMIT_FAILED, format!("cannot commit to table {table}")).with_source(error)
        }
    }
}

fn commit_state_unknown(catalog: &CatalogConfig, table: &str, what: &str, error: iceberg::Error) -> SinkError {
    let message = format!(
        "the {} {what} the commit to table {table}: whether it was applied is unknown, the next attempt reads the table's snapshots before it commits again",
        catalog.label()
    );
    SinkError::retriable(COMMIT_STATE_UNKNOWN, message).with_source(error)
}

/// A transaction that could not be built (before anything is sent).
pub fn commit_not_built(table: &str, error: iceberg::Error) -> SinkError {
    SinkError::retriable(COMMIT_FAILED, format!("cannot commit to table {table}")).with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest() -> CatalogConfig {
        serde_yaml_ng::from_str("{type: rest, uri: 'http://127.0.0.1:8181'}").expect("yaml")
    }

    #[test]
    fn rest_answers_are_classified_from_iceberg_rust_errors() {
        let unauthorized =
            iceberg::Error::new(iceberg::ErrorKind::Unexpected, "Received response with unexpected status code")
                .with_context("status", "401 Unauthorized");
        assert_eq!(load_failed(&rest(), "db.t", unauthorized).code, CATALOG_ACCESS_DENIED);
        let refused_credential = iceberg::Error::new(iceberg::ErrorKind::DataInvalid, "invalid_client")
            .with_context("code", "401")
            .with_context("operation", "auth");
        let error = load_failed(&rest(), "db.t", refused_credential);
        assert_eq!(error.code, CATALOG_ACCESS_DENIED);
        assert!(error.message.contains("refused spillway's credentials"), "{}", error.message);
        let missing =
            iceberg::Error::new(iceberg::ErrorKind::TableNotFound, "Tried to load a table that does not exist");
        let error = load_failed(&rest(), "db.t", missing);
        assert_eq!(error.code, TABLE_NOT_FOUND);
        assert!(error.message.contains("table db.t does not exist in the rest catalog http://127.0.0.1:8181"));
        let unknown = iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            "An unknown server-side problem occurred; the commit state is unknown.",
        );
        assert_eq!(commit_failed(&rest(), "db.t", unknown).code, COMMIT_STATE_UNKNOWN);
        let conflict = iceberg::Error::new(iceberg::ErrorKind::CatalogCommitConflicts, "requirements failed");
        assert_eq!(commit_failed(&rest(), "db.t", conflict).code, COMMIT_CONFLICT);
    }
}
