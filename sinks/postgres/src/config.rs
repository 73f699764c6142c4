//! `PostgresSinkConfig`: the YAML `sink:` block of `type: postgres`, its pure validation, and
//! `build` (which connects: the table's columns and types decide how records are encoded).
//!
//! Must not: touch the network in `validate`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use spillway_sink_api::{Secret, SinkError};
use spillway_sink_s3::S3SinkConfig;

use crate::error::PgError;
use crate::pool::Pool;
use crate::schema::{self, TableShape};
use crate::sink::PostgresSink;

/// How batches reach the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `COPY … FROM STDIN` over the connection (PostgreSQL).
    #[default]
    Stdin,
    /// Stage each batch in S3 and `COPY … FROM 's3://…' MANIFEST` (Redshift). Not implemented yet:
    /// refused by `validate`.
    S3Manifest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// `postgres://user@host:port/database?sslmode=require`; a password is better given in
    /// `password` from `${ENV}`.
    pub url: Secret,
    /// Overrides the url's password; use `${PGPASSWORD}`-style interpolation.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Target table, optionally schema-qualified (`public.events`); unquoted names are folded to
    /// lower case as in SQL.
    pub table: String,
    /// Record fields loaded into the columns of the same name (Firehose `DataTableColumns`).
    /// Default: every column of the table that has no default value and is not generated.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Load the whole record into this one `jsonb` / `json` / `text` column instead of mapping
    /// fields to columns.
    #[serde(default)]
    pub record_column: Option<String>,
    /// Extra options inside `COPY … WITH (…)` (stdin mode), e.g. `FREEZE false`; for s3_manifest
    /// mode, the Redshift COPY options.
    #[serde(default)]
    pub copy_options: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Table recording loaded batches (stream, batch id), committed with the rows; created if
    /// missing.
    #[serde(default = "default_batches_table")]
    pub batches_table: String,
    /// Connections at most (one per batch in flight).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// PEM file of the CA that signed the server's certificate (with `sslmode=require`);
    /// default: the system's trust store.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Longest one batch's load may take (connect, COPY, commit) before it is abandoned and
    /// retried; a retry never loads a batch twice.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Where records the database refused are written (Firehose error JSON under
    /// `error_output_prefix`): an S3 sink block (`url: file://…` or `s3://…`).
    pub s3_backup: Box<S3SinkConfig>,
}

fn default_batches_table() -> String {
    "spillway_batches".to_string()
}

fn default_max_connections() -> usize {
    8
}

fn default_timeout_seconds() -> u64 {
    300
}

/// One validation problem; `field` is relative to the `sink` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: String,
    pub message: String,
}

impl ConfigProblem {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_string(), message: message.into() }
    }
}

impl PostgresSinkConfig {
    /// Every problem in this block, with its field; pure (no disk, no network).
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Err(error) = self.url.expose().parse::<tokio_postgres::Config>() {
            // The parser's message never contains the password.
            problems.push(ConfigProblem::new("url", format!("is not a valid postgres:// url: {error}")));
        } else if !self.url.expose().starts_with("postgres://") && !self.url.expose().starts_with("postgresql://") {
            problems.push(ConfigProblem::new("url", "must start with postgres:// or postgresql://"));
        }
        if self.table.trim().is_empty() {
            problems.push(ConfigProblem::new("table", "must not be empty"));
        }
        if self.mode == Mode::S3Manifest {
            problems.push(ConfigProblem::new("mode", "s3_manifest (Redshift) is not implemented yet; use stdin"));
        }
        match (&self.columns, &self.record_column) {
            (Some(_), Some(_)) => {
                problems.push(ConfigProblem::new("record_column", "cannot be combined with columns; choose one"))
            }
            (Some(columns), None) => {
                if columns.is_empty() {
                    problems.push(ConfigProblem::new("columns", "must name at least one column"));
                }
                for (index, column) in columns.iter().enumerate() {
                    if column.is_empty() {
                        problems.push(ConfigProblem::new(&format!("columns[{index}]"), "must not be empty"));
                    } else if columns[..index].contains(column) {
                        problems.push(ConfigProblem::new(
                            &format!("columns[{index}]"),
                            format!("{column:?} is listed twice"),
                        ));
                    }
                }
            }
            (None, Some(column)) if column.is_empty() => {
                problems.push(ConfigProblem::new("record_column", "must not be empty"))
            }
            _ => {}
        }
        if let Some(options) = &self.copy_options {
            let lowered = options.to_ascii_lowercase();
            let words: Vec<&str> = lowered.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').collect();
            let fixed = ["format", "delimiter", "null", "header", "quote", "escape", "encoding"];
            if let Some(word) = fixed.iter().find(|word| words.contains(word)) {
                problems.push(ConfigProblem::new(
                    "copy_options",
                    format!("must not set {}: spillway writes COPY text format itself", word.to_ascii_uppercase()),
                ));
            }
        }
        if self.batches_table.trim().is_empty() {
            problems.push(ConfigProblem::new("batches_table", "must not be empty"));
        }
        if !(1..=256).contains(&self.max_connections) {
            problems.push(ConfigProblem::new("max_connections", "must be between 1 and 256"));
        }
        if self.timeout_seconds == 0 {
            problems.push(ConfigProblem::new("timeout_seconds", "must be at least 1"));
        }
        for problem in self.s3_backup.validate() {
            problems.push(ConfigProblem::new(&format!("s3_backup.{}", problem.field), problem.message));
        }
        problems
    }

    /// The connection settings: the url, with `password` (if set) in place of the url's.
    pub(crate) fn connection_config(&self) -> Result<tokio_postgres::Config, PgError> {
        let mut config: tokio_postgres::Config =
            self.url.expose().parse().map_err(|error| PgError::Config(format!("invalid url: {error}")))?;
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("spillway");
        }
        Ok(config)
    }

    /// Connect, create the batches table if missing, and read the table's shape (its columns
    /// and their types): a missing table or column is an error naming it. An unreachable server
    /// is not: records wait in the WAL and the table is read at the first load. The S3 backup is
    /// built too (no request sent).
    pub async fn build(&self, stream: &str) -> Result<PostgresSink, SinkError> {
        let problems = self.validate();
        if !problems.is_empty() {
            let listed: Vec<String> =
                problems.iter().map(|problem| format!("{}: {}", problem.field, problem.message)).collect();
            return Err(SinkError::permanent("Postgres.InvalidConfiguration", listed.join("; ")));
        }
        let backup = Arc::new(self.s3_backup.build(stream)?);
        let pool = Pool::new(self.connection_config()?, self.ca_file.as_deref(), self.max_connections)?;
        let sink = PostgresSink::new(stream, pool, self.clone(), backup);
        match tokio::time::timeout(Duration::from_secs(self.timeout_seconds), sink.prepare()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) if error.is_unreachable() => {
                tracing::warn!(stream, %error, "postgres is unreachable at start; its table is checked at the first load")
            }
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => {
                tracing::warn!(stream, "postgres did not answer at start; its table is checked at the first load")
            }
        }
        Ok(sink)
    }

    /// Check the table and columns against the database (`validate --connect`, start-up).
    pub async fn check(&self) -> Result<TableShape, SinkError> {
        let pool = Pool::new(self.connection_config()?, self.ca_file.as_deref(), 1)?;
        Ok(self.describe(&pool).await?)
    }

    async fn describe(&self, pool: &Pool) -> Result<TableShape, PgError> {
        let mut client = pool.get().await?;
        let shape =
            schema::describe(client.client(), &self.table, self.columns.as_deref(), self.record_column.as_deref())
                .await;
        client.release(shape.is_ok());
        shape
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> PostgresSinkConfig {
        serde_json::from_str(yaml).expect("valid sink block")
    }

    fn fields(config: &PostgresSinkConfig) -> Vec<String> {
        config.validate().into_iter().map(|problem| problem.field).collect()
    }

    const BACKUP: &str = r#""s3_backup": {"url": "file://./errors"}"#;

    #[test]
    fn a_minimal_block_is_valid_and_secrets_stay_hidden() {
        let config =
            parse(&format!(r#"{{"url": "postgres://app:hunter2@127.0.0.1:5432/db", "table": "events", {BACKUP}}}"#));
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.mode, Mode::Stdin);
        assert_eq!(config.batches_table, "spillway_batches");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let config = parse(
            r#"{"url": "mysql://x", "table": " ", "columns": ["a", "a", ""], "record_column": "doc",
                 "mode": "s3_manifest", "max_connections": 0, "timeout_seconds": 0,
                 "s3_backup": {"url": "ftp://nope"}}"#,
        );
        assert_eq!(
            fields(&config),
            ["url", "table", "mode", "record_column", "max_connections", "timeout_seconds", "s3_backup.url"]
        );
        let config =
            parse(&format!(r#"{{"url": "postgres://h/db", "table": "t", "columns": ["a", "a", ""], {BACKUP}}}"#));
        assert_eq!(fields(&config), ["columns[1]", "columns[2]"]);
        let config =
            parse(&format!(r#"{{"url": "postgres://h/db", "table": "t", "copy_options": "FORMAT csv", {BACKUP}}}"#));
        assert_eq!(fields(&config), ["copy_options"]);
    }

    #[test]
    fn the_password_field_overrides_the_url() {
        let config = parse(&format!(
            r#"{{"url": "postgres://app:old@db.example:6543/db?sslmode=require", "password": "new", "table": "t", {BACKUP}}}"#
        ));
        let connection = config.connection_config().unwrap();
        assert_eq!(connection.get_password(), Some(&b"new"[..]));
        assert_eq!(connection.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    }
}
