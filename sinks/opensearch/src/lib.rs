//! spillway's OpenSearch (and Elasticsearch 7/8) sink: Firehose's OpenSearch destination, with
//! no document lost on a partial `_bulk` failure and none duplicated by a retry.
//!
//! Module map:
//! - [`config`]: the YAML block and its pure validation.
//! - [`descriptor`]: the sink as the registry sees it (`SinkDescriptor`): Firehose's ranges and
//!   the `AmazonopensearchserviceDestinationDescription`.
//! - [`index`]: index names with Firehose's rotation suffixes (hour, day, US week, month).
//! - [`bulk`]: the encoder an open batch is held in: the `_bulk` body, built as records arrive.
//! - [`sink`]: POST `_bulk`, read each item's outcome, split on 413.
//! - [`error`]: classification of request and item failures.
//! - [`sigv4`]: request signing for Amazon OpenSearch Service / Serverless.
//! - [`backup`]: the S3 backup as the error output, writing Firehose's failed-document JSON.

pub mod backup;
pub mod bulk;
pub mod config;
pub mod descriptor;
pub mod error;
pub mod index;
pub mod sigv4;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

pub use backup::{FAILED_OUTPUT_TYPE, OpenSearchBackup};
pub use bulk::{BulkEncoderFactory, BulkSettings};
pub use config::{AuthConfig, BackupMode, DocumentId, OpenSearchSinkConfig};
pub use index::IndexRotation;
pub use sink::OpenSearchSink;
use spillway_sink_api::SinkError;

/// The sink, its encoders and its backup, built for one stream.
pub struct BuiltOpenSearch {
    pub sink: Arc<OpenSearchSink>,
    pub encoders: Arc<BulkEncoderFactory>,
    pub backup: Arc<OpenSearchBackup>,
}

impl OpenSearchSinkConfig {
    /// Build the http client and the backup sink (`version_id` names backup objects as the
    /// stream's S3 objects are named). Does not contact the cluster.
    pub fn build(&self, stream: &str, version_id: u64) -> Result<BuiltOpenSearch, SinkError> {
        let problems = self.validate();
        if !problems.is_empty() {
            let listed: Vec<String> =
                problems.iter().map(|problem| format!("{}: {}", problem.field, problem.message)).collect();
            return Err(SinkError::permanent("OpenSearch.InvalidConfig", listed.join("; ")));
        }
        let settings = Arc::new(BulkSettings {
            stream: stream.to_string(),
            index: self.index.clone(),
            rotation: self.index_rotation,
            type_name: self.type_name.clone(),
            document_id: self.document_id.clone(),
            bulk_max_bytes: (self.bulk_max_mib << 20) as usize,
        });
        let mut sink = OpenSearchSink::new(
            &self.url,
            self.auth.clone(),
            settings.clone(),
            Duration::from_secs(self.request_timeout_seconds),
        )?;
        let backup = Arc::new(self.backup.sink.build_versioned(stream, version_id)?);
        if self.backup.mode == BackupMode::All {
            sink.all_documents = Some(backup.clone());
        }
        Ok(BuiltOpenSearch {
            sink: Arc::new(sink),
            encoders: Arc::new(BulkEncoderFactory { settings: settings.clone() }),
            backup: Arc::new(OpenSearchBackup { backup, settings }),
        })
    }
}
