//! `PostgresSinkConfig`: the YAML `sink:` block of `type: postgres`, its pure validation, and
//! `build` (which connects: the table's columns and types decide how records are encoded).
//!
//! Must not: touch the network in `validate`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use spillway_sink_api::{BuiltSink, Compression, ConfigProblem, Secret, SinkError};
use spillway_sink_s3::{BackupConfig, BackupMode, Destination, OutputFormat, S3SinkConfig};

use crate::error::PgError;
use crate::pool::Pool;
use crate::redshift::CopyCredentials;
use crate::redshift_sink::{
    CopyExecutor, REDSHIFT_FAILED_OUTPUT_TYPE, RedshiftCopy, RedshiftErrorOutput, RedshiftParts, RedshiftSink, Staging,
};
use crate::schema::{self, TableShape};
use crate::sink::PostgresSink;

/// `!{firehose:error-output-type}` of rows PostgreSQL refused (stdin mode).
pub const POSTGRES_FAILED_OUTPUT_TYPE: &str = "postgres-failed";

/// `copy_format`: which COPY format stdin mode sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFormatChoice {
    /// Binary when spillway converts every loaded column's type exactly, else text.
    #[default]
    Auto,
    /// Always text: every value goes through PostgreSQL's own input function (its date styles,
    /// `now`, array literals, …).
    Text,
    /// Binary, or fail at start naming the columns spillway cannot convert.
    Binary,
}

/// How batches reach the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `COPY … FROM STDIN` over the connection (PostgreSQL).
    #[default]
    Stdin,
    /// Stage each batch in S3 (`s3_staging`) and `COPY … FROM 's3://…' MANIFEST` (Redshift).
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
    /// mode, the Redshift COPY options after `MANIFEST` (Firehose's `CopyOptions`), e.g.
    /// `JSON 'auto' GZIP`.
    #[serde(default)]
    pub copy_options: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Stdin mode: `auto` (binary COPY where every column type allows, else text), `text` or
    /// `binary`.
    #[serde(default)]
    pub copy_format: CopyFormatChoice,
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
    /// `error_output_prefix`): `backup: { mode: failed_only, sink: { url: file://… | s3://… } }`,
    /// the block every non-S3 sink has. Required in stdin mode; in s3_manifest mode the default
    /// is `s3_staging` (its error output prefix). Only `failed_only` is supported.
    #[serde(default)]
    pub backup: Option<BackupConfig>,
    /// s3_manifest mode: where batches are staged for Redshift's COPY (Firehose's
    /// `S3Configuration`): an `s3://` S3 sink block with a literal prefix.
    #[serde(default)]
    pub s3_staging: Option<Box<S3SinkConfig>>,
    /// s3_manifest mode: the IAM role Redshift assumes to read the staged objects
    /// (`CREDENTIALS 'aws_iam_role=…'`, what Firehose uses). Without it, the staging block's
    /// `access_key_id` / `secret_access_key` (/ `session_token`) are passed instead.
    #[serde(default)]
    pub iam_role: Option<String>,
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
        match self.mode {
            Mode::Stdin => self.validate_stdin(&mut problems),
            Mode::S3Manifest => self.validate_s3_manifest(&mut problems),
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
        if let Some(options) = self.copy_options.as_ref().filter(|_| self.mode == Mode::Stdin) {
            let lowered = options.to_ascii_lowercase();
            let words: Vec<&str> = lowered.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').collect();
            let fixed = ["format", "delimiter", "null", "header", "quote", "escape", "encoding"];
            if let Some(word) = fixed.iter().find(|word| words.contains(word)) {
                problems.push(ConfigProblem::new(
                    "copy_options",
                    format!(
                        "must not set {}: spillway writes the COPY format itself (see copy_format)",
                        word.to_ascii_uppercase()
                    ),
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
        if let Some(backup) = &self.backup {
            if backup.mode == BackupMode::All {
                problems.push(ConfigProblem::new(
                    "backup.mode",
                    "must be failed_only: the postgres sink keeps no copy of delivered rows",
                ));
            }
            problems.extend(backup.validate());
        }
        problems
    }

    fn validate_stdin(&self, problems: &mut Vec<ConfigProblem>) {
        if self.backup.is_none() {
            problems.push(ConfigProblem::new(
                "backup",
                "is required: where records PostgreSQL refuses go (e.g. { sink: { url: file://./var/errors } })",
            ));
        }
        if self.s3_staging.is_some() {
            problems.push(ConfigProblem::new("s3_staging", "is only used with mode: s3_manifest"));
        }
        if self.iam_role.is_some() {
            problems.push(ConfigProblem::new("iam_role", "is only used with mode: s3_manifest"));
        }
    }

    /// Firehose's rules for a Redshift destination's intermediate bucket, and what COPY needs.
    fn validate_s3_manifest(&self, problems: &mut Vec<ConfigProblem>) {
        if self.copy_format != CopyFormatChoice::Auto {
            problems.push(ConfigProblem::new(
                "copy_format",
                "is only used with mode: stdin (Redshift's COPY reads the staged objects as copy_options say)",
            ));
        }
        if self.record_column.is_some() {
            problems.push(ConfigProblem::new(
                "record_column",
                "is not used with mode: s3_manifest (Redshift's COPY maps the staged records with copy_options, e.g. JSON 'auto')",
            ));
        }
        if self.iam_role.as_deref().is_some_and(|role| !role.starts_with("arn:")) {
            problems
                .push(ConfigProblem::new("iam_role", "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)"));
        }
        let Some(staging) = &self.s3_staging else {
            problems.push(ConfigProblem::new(
                "s3_staging",
                "is required with mode: s3_manifest: the s3:// bucket batches are staged in for Redshift's COPY",
            ));
            return;
        };
        for problem in staging.validate() {
            problems.push(ConfigProblem::new(&format!("s3_staging.{}", problem.field), problem.message));
        }
        if !matches!(Destination::parse(&staging.url), Ok(Destination::S3 { .. })) {
            problems.push(ConfigProblem::new(
                "s3_staging.url",
                "must be an s3:// bucket: Redshift's COPY reads the staged objects from S3",
            ));
        }
        if staging.prefix.as_deref().is_some_and(|prefix| prefix.contains("!{")) {
            problems.push(ConfigProblem::new(
                "s3_staging.prefix",
                "must be literal with mode: s3_manifest (Firehose allows no expressions in a Redshift destination's prefix)",
            ));
        }
        if matches!(staging.format, OutputFormat::Parquet(_)) {
            problems.push(ConfigProblem::new("s3_staging.format", "must be json with mode: s3_manifest"));
        }
        let options = self.copy_options.as_deref().unwrap_or_default().to_ascii_uppercase();
        let words: Vec<&str> = options.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').collect();
        let needed = match staging.compression {
            Compression::None => None,
            Compression::Gzip => Some("GZIP"),
            Compression::Zstd => Some("ZSTD"),
            _ => {
                problems.push(ConfigProblem::new(
                    "s3_staging.compression",
                    "must be none, gzip or zstd with mode: s3_manifest (Redshift's COPY reads neither zip nor snappy framing)",
                ));
                None
            }
        };
        if let Some(word) = needed.filter(|word| !words.contains(word)) {
            problems.push(ConfigProblem::new(
                "copy_options",
                format!("must include {word}: the staged objects are {} compressed", word.to_ascii_lowercase()),
            ));
        }
        if self.iam_role.is_none() && self.copy_credentials().is_none() {
            problems.push(ConfigProblem::new(
                "iam_role",
                "is required with mode: s3_manifest unless s3_staging has access_key_id and secret_access_key (the credentials clause of Redshift's COPY)",
            ));
        }
    }

    /// The credentials clause of Redshift's COPY: `iam_role`, else the staging block's keys.
    pub fn copy_credentials(&self) -> Option<CopyCredentials> {
        if let Some(role) = &self.iam_role {
            return Some(CopyCredentials::IamRole(role.clone()));
        }
        let staging = self.s3_staging.as_ref()?;
        Some(CopyCredentials::Keys {
            access_key_id: staging.access_key_id.clone()?,
            secret_access_key: staging.secret_access_key.clone()?,
            session_token: staging.session_token.clone(),
        })
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
        let backup_config = self
            .backup
            .as_ref()
            .ok_or_else(|| SinkError::permanent("Postgres.InvalidConfiguration", "backup is required in stdin mode"))?;
        let backup = Arc::new(backup_config.sink.build(stream)?);
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

    /// Build the sink of this block's mode, with the encoder and error output the pipeline uses;
    /// staged objects carry `version_id` (Firehose's `VersionId`) in their names.
    pub async fn build_sink(&self, stream: &str, version_id: u64) -> Result<BuiltSink, SinkError> {
        match self.mode {
            Mode::Stdin => {
                let sink = Arc::new(self.build(stream).await?);
                Ok(BuiltSink {
                    encoders: Arc::new(sink.encoder_factory()),
                    error_output: sink.error_output(),
                    sink,
                    failure_output_type: POSTGRES_FAILED_OUTPUT_TYPE,
                })
            }
            Mode::S3Manifest => self.build_redshift(stream, version_id, Arc::new(RedshiftCopy)).await,
        }
    }

    /// The s3_manifest sink with the given COPY executor (Redshift's: [`RedshiftCopy`]). No
    /// request is sent: the batches table is created at the first load.
    pub async fn build_redshift(
        &self,
        stream: &str,
        version_id: u64,
        executor: Arc<dyn CopyExecutor>,
    ) -> Result<BuiltSink, SinkError> {
        let problems = self.validate();
        if !problems.is_empty() {
            let listed: Vec<String> =
                problems.iter().map(|problem| format!("{}: {}", problem.field, problem.message)).collect();
            return Err(SinkError::permanent("Postgres.InvalidConfiguration", listed.join("; ")));
        }
        let invalid = |message: &str| SinkError::permanent("Postgres.InvalidConfiguration", message.to_string());
        let staging_config = self.s3_staging.as_ref().ok_or_else(|| invalid("s3_staging is required"))?;
        let Ok(Destination::S3 { bucket }) = Destination::parse(&staging_config.url) else {
            return Err(invalid("s3_staging.url must be an s3:// bucket"));
        };
        let credentials = self.copy_credentials().ok_or_else(|| invalid("iam_role is required"))?;
        let staging_sink = Arc::new(staging_config.build_versioned(stream, version_id)?);
        let backup = match &self.backup {
            Some(backup) => Arc::new(backup.sink.build_versioned(stream, version_id)?),
            None => staging_sink.clone(),
        };
        let staging = Arc::new(Staging {
            sink: staging_sink.clone(),
            bucket,
            prefix: staging_config.prefix.clone().unwrap_or_default(),
        });
        let pool = Pool::new(self.connection_config()?, self.ca_file.as_deref(), self.max_connections)?;
        let sink = RedshiftSink::new(RedshiftParts {
            stream: stream.to_string(),
            pool,
            staging: staging.clone(),
            table: self.table.clone(),
            columns: self.columns.clone(),
            credentials,
            copy_options: self.copy_options.clone(),
            batches_table: self.batches_table.clone(),
            executor,
            timeout: Duration::from_secs(self.timeout_seconds),
        });
        Ok(BuiltSink {
            sink: Arc::new(sink),
            encoders: staging_sink.encoder_factory(),
            error_output: Arc::new(RedshiftErrorOutput { staging, backup }),
            failure_output_type: REDSHIFT_FAILED_OUTPUT_TYPE,
        })
    }

    /// `validate --connect`: the table and columns against the database, described.
    pub async fn check_connection(&self) -> Result<String, SinkError> {
        match self.mode {
            Mode::Stdin => {
                let shape = self.check().await?;
                let columns: Vec<String> =
                    shape.columns.iter().map(|column| format!("{} {}", column.name, column.type_name)).collect();
                Ok(format!("table {} loads columns ({})", shape.table, columns.join(", ")))
            }
            Mode::S3Manifest => {
                let pool = Pool::new(self.connection_config()?, self.ca_file.as_deref(), 1)?;
                Ok(RedshiftSink::check_table(&pool, &self.table, self.columns.as_deref()).await?)
            }
        }
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

    const BACKUP: &str = r#""backup": {"sink": {"url": "file://./errors"}}"#;

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
                 "max_connections": 0, "timeout_seconds": 0, "iam_role": "arn:x",
                 "backup": {"sink": {"url": "ftp://nope"}}}"#,
        );
        assert_eq!(
            fields(&config),
            ["url", "table", "iam_role", "record_column", "max_connections", "timeout_seconds", "backup.sink.url"]
        );
        let config = parse(r#"{"url": "postgres://h/db", "table": "t"}"#);
        assert_eq!(fields(&config), ["backup"]);
        let config =
            parse(&format!(r#"{{"url": "postgres://h/db", "table": "t", "columns": ["a", "a", ""], {BACKUP}}}"#));
        assert_eq!(fields(&config), ["columns[1]", "columns[2]"]);
        let config =
            parse(&format!(r#"{{"url": "postgres://h/db", "table": "t", "copy_options": "FORMAT csv", {BACKUP}}}"#));
        assert_eq!(fields(&config), ["copy_options"]);
    }

    #[test]
    fn s3_manifest_needs_an_s3_staging_bucket_with_a_literal_prefix_and_copy_credentials() {
        let staging = r#""s3_staging": {"url": "s3://staging-bucket", "prefix": "redshift/", "compression": "gzip"}"#;
        let config = parse(&format!(
            r#"{{"url": "postgres://h:5439/dev", "table": "events", "mode": "s3_manifest",
                 "iam_role": "arn:aws:iam::123456789012:role/copy", "copy_options": "JSON 'auto' gzip", {staging}}}"#
        ));
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert_eq!(
            config.copy_credentials(),
            Some(CopyCredentials::IamRole("arn:aws:iam::123456789012:role/copy".into()))
        );
        // Keys of the staging block stand in for the role; FORMAT-like words are Redshift's to take.
        let config = parse(
            r#"{"url": "postgres://h/dev", "table": "t", "mode": "s3_manifest", "copy_options": "delimiter '|'",
                 "s3_staging": {"url": "s3://staging-bucket", "access_key_id": "AKID", "secret_access_key": "s"}}"#,
        );
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert!(matches!(config.copy_credentials(), Some(CopyCredentials::Keys { .. })));

        let config = parse(r#"{"url": "postgres://h/dev", "table": "t", "mode": "s3_manifest"}"#);
        assert_eq!(fields(&config), ["s3_staging"]);
        let config = parse(
            r#"{"url": "postgres://h/dev", "table": "t", "mode": "s3_manifest", "record_column": "doc",
                 "s3_staging": {"url": "file://./staging", "prefix": "p/!{timestamp:yyyy}/", "compression": "snappy"}}"#,
        );
        assert_eq!(
            fields(&config),
            ["record_column", "s3_staging.url", "s3_staging.prefix", "s3_staging.compression", "iam_role"]
        );
        let config = parse(
            r#"{"url": "postgres://h/dev", "table": "t", "mode": "s3_manifest", "iam_role": "arn:aws:iam::1:role/r",
                 "s3_staging": {"url": "s3://staging-bucket", "compression": "zstd"}}"#,
        );
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "copy_options");
        assert!(problems[0].message.contains("ZSTD"), "{}", problems[0].message);
        // The staging block belongs to s3_manifest mode only.
        let config = parse(&format!(
            r#"{{"url": "postgres://h/db", "table": "t", {BACKUP}, "s3_staging": {{"url": "s3://staging-bucket"}}}}"#
        ));
        assert_eq!(fields(&config), ["s3_staging"]);
    }

    #[test]
    fn copy_format_is_auto_by_default_and_belongs_to_stdin_mode() {
        let config = parse(&format!(r#"{{"url": "postgres://h/db", "table": "t", {BACKUP}}}"#));
        assert_eq!(config.copy_format, CopyFormatChoice::Auto);
        let config = parse(&format!(r#"{{"url": "postgres://h/db", "table": "t", "copy_format": "text", {BACKUP}}}"#));
        assert_eq!(config.copy_format, CopyFormatChoice::Text);
        assert!(config.validate().is_empty());
        assert!(
            serde_json::from_str::<PostgresSinkConfig>(
                r#"{"url": "postgres://h/db", "table": "t", "copy_format": "csv"}"#
            )
            .is_err()
        );
        let config = parse(
            r#"{"url": "postgres://h/dev", "table": "t", "mode": "s3_manifest", "copy_format": "binary",
                 "iam_role": "arn:aws:iam::1:role/r", "s3_staging": {"url": "s3://staging-bucket"}}"#,
        );
        assert_eq!(fields(&config), ["copy_format"]);
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
