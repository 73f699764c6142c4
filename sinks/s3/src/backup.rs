//! The one `backup:` block every sink that is not S3 has (OpenSearch, PostgreSQL,
//! HTTP endpoint): Firehose's `S3BackupMode` and `S3Configuration`, as
//! `backup: { mode: failed_only | all, sink: { url, prefix, error_output_prefix, … } }`, so a
//! user learns one shape. A sink decides what `all` means for it (or refuses it in `validate`).
//!
//! Must not: build anything; the sink that owns the block builds `sink` as its error output.

use serde::Deserialize;
use spillway_sink_api::ConfigProblem;

use crate::S3SinkConfig;

/// Firehose's `S3BackupMode`: `failed_only` (default; `FailedDocumentsOnly`, `FailedDataOnly`)
/// or `all` (`AllDocuments`, `AllData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupMode {
    #[default]
    FailedOnly,
    All,
}

/// `backup: { mode, sink }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    #[serde(default)]
    pub mode: BackupMode,
    /// An `s3` sink block (without `type`): url, prefix, error_output_prefix, credentials, ….
    pub sink: Box<S3SinkConfig>,
}

impl BackupConfig {
    /// The backup sink's problems, with fields under `backup.sink.`.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        self.sink
            .validate()
            .into_iter()
            .map(|problem| ConfigProblem { field: format!("backup.sink.{}", problem.field), message: problem.message })
            .collect()
    }

    /// The backup sink's local folders, with fields under `backup.sink.`.
    pub fn local_folders(&self) -> Vec<(String, std::path::PathBuf)> {
        self.sink.local_folders().into_iter().map(|(field, path)| (format!("backup.sink.{field}"), path)).collect()
    }
}
