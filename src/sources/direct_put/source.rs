//! The `direct_put` source as the registry sees it: records pushed with the Firehose API or as
//! NDJSON; no readers (the HTTP router appends through [`crate::sources::Ingest`]).

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

use crate::sources::descriptor::{ReaderContext, SourceDescribeContext, SourceDescriptor};

/// The `source:` block of a Direct PUT stream (the default): it has no options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectPutSourceConfig {}

impl SourceDescriptor for DirectPutSourceConfig {
    fn type_name(&self) -> &'static str {
        "direct_put"
    }

    fn origin(&self) -> String {
        "Firehose API and NDJSON".to_string()
    }

    fn accepts_puts(&self) -> bool {
        true
    }

    fn spawn_readers(&self, _context: ReaderContext<'_>) -> Vec<JoinHandle<()>> {
        Vec::new()
    }

    fn describe_source(&self, _context: &SourceDescribeContext<'_>) -> Map<String, Value> {
        Map::new()
    }
}
