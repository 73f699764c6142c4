//! The `file` source as the registry sees it: one reader tails the stream's paths; described
//! with the spillway extension member `SpillwaySourceDescription` (Firehose has no file source).

use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use super::FileSourceConfig;
use crate::sources::descriptor::{ReaderContext, SourceDescribeContext, SourceDescriptor, spillway_source_description};

impl SourceDescriptor for FileSourceConfig {
    fn type_name(&self) -> &'static str {
        "file"
    }

    fn origin(&self) -> String {
        format!("files {}", self.paths.join(", "))
    }

    fn validate(&self) -> Vec<(String, String)> {
        FileSourceConfig::validate(self)
    }

    /// A line is read without its newline; objects keep one line per line unless told otherwise.
    fn newline_by_default(&self) -> bool {
        true
    }

    fn spawn_readers(&self, context: ReaderContext<'_>) -> Vec<JoinHandle<()>> {
        let ReaderContext { stream, wal, metrics, stop, .. } = context;
        vec![tokio::spawn(super::run(stream.to_string(), self.clone(), wal.clone(), metrics.clone(), stop))]
    }

    fn describe_source(&self, _context: &SourceDescribeContext<'_>) -> Map<String, Value> {
        spillway_source_description(json!({ "Type": "file", "Paths": self.paths, "Exclude": self.exclude }))
    }
}
