//! The S3 backup as the pipeline's error output. Records the cluster refused (or that could not
//! be delivered within `retry.duration_seconds`) arrive as Firehose error records; this adds what
//! Firehose's failed-document JSON has besides them (`esDocumentId`, `esIndexName`,
//! `esTypeName`) and writes them through the backup `s3` sink under
//! `AmazonOpenSearchService-failed/`. Other error output types pass through unchanged.
//!
//! Must not: drop a line it cannot enrich (it is written as it came).

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use spillway_sink_api::{Batch, ErrorOutput, SinkError};
use spillway_sink_s3::S3Sink;

use crate::bulk::{BulkSettings, id_from_field, single_line_document};
use crate::config::DocumentId;

/// `!{firehose:error-output-type}` of documents the cluster refused: Firehose's folder name.
pub const FAILED_OUTPUT_TYPE: &str = "AmazonOpenSearchService-failed";

pub struct OpenSearchBackup {
    pub(crate) backup: Arc<S3Sink>,
    pub(crate) settings: Arc<BulkSettings>,
}

/// The error record the pipeline writes (see `pipeline::retry`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PipelineErrorRecord {
    attempts_made: u32,
    arrival_timestamp: i64,
    error_code: String,
    error_message: String,
    attempt_ending_timestamp: i64,
    raw_data: String,
    #[serde(default)]
    sequence_number: Option<String>,
    /// Which output of its WAL record (absent: the first).
    #[serde(default)]
    sub_sequence_number: Option<u32>,
}

/// Firehose's failed-document record, in its field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedDocument<'a> {
    attempts_made: u32,
    arrival_timestamp: i64,
    error_code: &'a str,
    error_message: &'a str,
    attempt_ending_timestamp: i64,
    es_document_id: Option<String>,
    es_index_name: String,
    es_type_name: &'a str,
    raw_data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_number: Option<&'a str>,
}

impl OpenSearchBackup {
    fn failed_document_line(&self, line: &[u8]) -> Option<Vec<u8>> {
        let record: PipelineErrorRecord = serde_json::from_slice(line).ok()?;
        let sequence = record.sequence_number.as_deref().and_then(|sequence| sequence.parse::<u64>().ok());
        let document_id = match &self.settings.document_id {
            DocumentId::FirehoseDefault => sequence
                .map(|sequence| self.settings.default_document_id(sequence, record.sub_sequence_number.unwrap_or(0))),
            DocumentId::None => None,
            DocumentId::FromField(path) => {
                let raw = base64::engine::general_purpose::STANDARD.decode(&record.raw_data).ok()?;
                let mut scratch = Vec::new();
                single_line_document(&raw, &mut scratch).ok().and_then(|document| id_from_field(document, path).ok())
            }
        };
        let document = FailedDocument {
            attempts_made: record.attempts_made,
            arrival_timestamp: record.arrival_timestamp,
            error_code: &record.error_code,
            error_message: &record.error_message,
            attempt_ending_timestamp: record.attempt_ending_timestamp,
            es_document_id: document_id,
            es_index_name: self.settings.index_name(record.arrival_timestamp),
            es_type_name: self.settings.type_name.as_deref().unwrap_or(""),
            raw_data: &record.raw_data,
            sequence_number: record.sequence_number.as_deref(),
        };
        let mut out = serde_json::to_vec(&document).ok()?;
        out.push(b'\n');
        Some(out)
    }

    /// Every line enriched (a line that does not parse is kept as it is).
    pub fn failed_documents(&self, lines: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(lines.len() + lines.len() / 4);
        for line in lines.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            match self.failed_document_line(line) {
                Some(enriched) => out.extend_from_slice(&enriched),
                None => {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
            }
        }
        out
    }
}

#[async_trait]
impl ErrorOutput for OpenSearchBackup {
    async fn write_error_records(
        &self,
        batch: &Batch,
        error_output_type: &str,
        lines: Vec<u8>,
    ) -> Result<(), SinkError> {
        if error_output_type != FAILED_OUTPUT_TYPE {
            return self.backup.write_error_records(batch, error_output_type, lines).await;
        }
        // Up to a whole batch of JSON and base64: off the async runtime.
        let enricher = OpenSearchBackup { backup: self.backup.clone(), settings: self.settings.clone() };
        let lines = tokio::task::spawn_blocking(move || enricher.failed_documents(&lines)).await.map_err(|error| {
            SinkError::retriable("OpenSearch.BackupEncodingFailed", "encoding failed documents failed")
                .with_source(error)
        })?;
        self.backup.write_error_records(batch, error_output_type, lines).await
    }
}
