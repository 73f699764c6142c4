//! The `stream` source as the registry sees it: one reader copies the upstream stream's WAL;
//! described with the spillway extension member `SpillwaySourceDescription` (Firehose has no
//! stream-to-stream source).

use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use super::{StreamSourceConfig, StreamStart};
use crate::sources::descriptor::{ReaderContext, SourceDescribeContext, SourceDescriptor, spillway_source_description};

impl SourceDescriptor for StreamSourceConfig {
    fn type_name(&self) -> &'static str {
        "stream"
    }

    fn origin(&self) -> String {
        format!("stream {}", self.stream)
    }

    fn validate(&self) -> Vec<(String, String)> {
        // That it names another stream of the file, and no cycle, is checked with all streams
        // in view (`config`), through `reads_stream`.
        if crate::config::is_valid_stream_name(&self.stream) {
            Vec::new()
        } else {
            vec![("stream".to_string(), format!("`{}` is not a valid stream name", self.stream))]
        }
    }

    fn reads_stream(&self) -> Option<&str> {
        Some(&self.stream)
    }

    fn spawn_readers(&self, context: ReaderContext<'_>) -> Vec<JoinHandle<()>> {
        let ReaderContext { stream, wal, wals, metrics, stop, transforms } = context;
        // A windowed sql first in the stream's transforms runs here: the stream's WAL gets the
        // windows' rows (and the records it refuses), not copies.
        let window = match transforms.first() {
            Some(crate::processing::TransformConfig::Sql(sql)) if sql.window.is_some() => Some(sql.clone()),
            _ => None,
        };
        vec![tokio::spawn(super::run(
            stream.to_string(),
            self.clone(),
            window,
            wal.clone(),
            wals.clone(),
            metrics.clone(),
            stop,
        ))]
    }

    fn describe_source(&self, _context: &SourceDescribeContext<'_>) -> Map<String, Value> {
        let start = match self.start {
            StreamStart::TrimHorizon => "trim_horizon",
            StreamStart::Latest => "latest",
        };
        spillway_source_description(json!({ "Type": "stream", "Stream": self.stream, "Start": start }))
    }
}
