//! Failures of the Postgres sink, classified where SQLSTATE is understood: a row's own fault
//! (data exceptions, constraint violations) is found row by row and sent to the error output;
//! connection loss, serialization failures, admin shutdowns and a destination the operator can
//! fix (missing table, privileges) are retried.
//!
//! Must not: decide about retries beyond the class; the pipeline owns backoff.

use spillway_sink_api::SinkError;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("tls setup failed: {0}")]
    Tls(String),
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("table {0} does not exist (or is not visible to this user)")]
    MissingTable(String),
    #[error("table {table} has no column {column:?}")]
    MissingColumn { table: String, column: String },
    #[error("column {column:?} of table {table} has type {type_name}, which cannot hold a whole record")]
    RecordColumnType { table: String, column: String, type_name: String },
    #[error("the load took longer than {0} seconds")]
    Timeout(u64),
    #[error("{0}")]
    Protocol(String),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What a database error means for the rows being copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The row's own content (bad value, constraint): that row goes to the error output.
    Row,
    /// Anything else: the whole load is retried.
    Load,
}

/// SQLSTATE classes that a single row's content causes.
pub fn fault_of(code: &str) -> Fault {
    let class = code.get(..2).unwrap_or_default();
    match class {
        // 22 data exception (bad input syntax, out of range, invalid encoding, 0x00),
        // 23 integrity constraint violation (not null, unique, check, foreign key).
        "22" | "23" => Fault::Row,
        // 54000 program_limit_exceeded (row too big), P0001 raise_exception (a trigger refused).
        _ if code == "54000" || code == "P0001" => Fault::Row,
        _ => Fault::Load,
    }
}

impl PgError {
    /// The database's SQLSTATE, if the server answered with an error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Postgres(error) => error.as_db_error().map(|db| db.code().code()),
            _ => None,
        }
    }

    /// The server could not be reached or went away (not a problem of the table or the data).
    pub fn is_unreachable(&self) -> bool {
        match self {
            PgError::Postgres(error) => match error.as_db_error() {
                None => true,
                Some(db) => matches!(db.code().code().get(..2), Some("08" | "57" | "53")),
            },
            PgError::Timeout(_) => true,
            _ => false,
        }
    }

    /// A database error caused by one row's content.
    pub fn is_row_fault(&self) -> bool {
        self.sqlstate().is_some_and(|code| fault_of(code) == Fault::Row)
    }

    /// Classified for the pipeline.
    pub fn into_sink_error(self) -> SinkError {
        let code = match &self {
            PgError::Config(_) | PgError::Tls(_) => "Postgres.InvalidConfiguration".to_string(),
            PgError::MissingTable(_) => "Postgres.TableNotFound".to_string(),
            PgError::MissingColumn { .. } | PgError::RecordColumnType { .. } => "Postgres.ColumnMismatch".to_string(),
            PgError::Timeout(_) => "Postgres.Timeout".to_string(),
            PgError::Postgres(_) => match self.sqlstate() {
                Some(sqlstate) => format!("Postgres.{sqlstate}"),
                None => "Postgres.ConnectionFailed".to_string(),
            },
            PgError::Protocol(_) | PgError::Join(_) => "Postgres.InternalError".to_string(),
        };
        let message = describe(&self);
        match &self {
            // Fixing the configuration needs a restart; the records wait either way.
            PgError::Config(_) | PgError::Tls(_) => SinkError::permanent(code, message),
            // Everything else can heal (server back, table created, grant given): retry. A row's
            // own faults never reach here; they are split out row by row.
            _ => SinkError::retriable(code, message),
        }
    }
}

/// The message with the server's detail, hint and where (COPY line), never the password.
pub fn describe(error: &PgError) -> String {
    let PgError::Postgres(postgres) = error else { return error.to_string() };
    let Some(db) = postgres.as_db_error() else {
        // Connection-level: "connection closed", "error connecting to server: …".
        return spillway_sink_api::error_chain(postgres);
    };
    let mut message = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(detail) = db.detail() {
        message.push_str(&format!("; detail: {detail}"));
    }
    if let Some(column) = db.column() {
        message.push_str(&format!("; column: {column}"));
    }
    if let Some(constraint) = db.constraint() {
        message.push_str(&format!("; constraint: {constraint}"));
    }
    message
}

impl From<PgError> for SinkError {
    fn from(error: PgError) -> Self {
        error.into_sink_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_faults_are_data_and_constraint_errors_only() {
        for code in ["22P02", "22003", "22021", "23502", "23505", "23514", "54000", "P0001"] {
            assert_eq!(fault_of(code), Fault::Row, "{code}");
        }
        // connection, serialization, deadlock, admin shutdown, missing table, privileges
        for code in ["08006", "40001", "40P01", "57P01", "42P01", "42703", "42501", "53300"] {
            assert_eq!(fault_of(code), Fault::Load, "{code}");
        }
    }

    #[test]
    fn configuration_errors_are_permanent_and_the_rest_retriable() {
        assert!(!PgError::Config("x".into()).into_sink_error().is_retriable());
        let missing = PgError::MissingTable("events".into()).into_sink_error();
        assert!(missing.is_retriable());
        assert_eq!(missing.code, "Postgres.TableNotFound");
        assert!(PgError::Timeout(5).into_sink_error().is_retriable());
    }
}
