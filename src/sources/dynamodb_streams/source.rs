//! The `dynamodb_streams` source as the registry sees it: one reader task for the table stream's
//! shards; described with the spillway extension member `SpillwaySourceDescription` (Firehose
//! has no DynamoDB source).

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use super::DynamodbStreamsSourceConfig;
use crate::sources::descriptor::{ReaderContext, SourceDescribeContext, SourceDescriptor, spillway_source_description};
use crate::sources::shards::SharedShardSource;

impl SourceDescriptor for DynamodbStreamsSourceConfig {
    fn type_name(&self) -> &'static str {
        "dynamodb_streams"
    }

    fn origin(&self) -> String {
        match (&self.stream_arn, &self.table_name) {
            (Some(arn), _) => format!("DynamoDB stream {arn}"),
            (None, Some(table)) => format!("DynamoDB table {table}'s stream"),
            (None, None) => "DynamoDB stream (unnamed)".to_string(),
        }
    }

    fn validate(&self) -> Vec<(String, String)> {
        DynamodbStreamsSourceConfig::validate(self)
    }

    fn spawn_readers(&self, context: ReaderContext<'_>) -> Vec<JoinHandle<()>> {
        let ReaderContext { stream, wal, metrics, stop, .. } = context;
        vec![tokio::spawn(super::run(stream.to_string(), self.clone(), wal.clone(), metrics.clone(), stop))]
    }

    fn shard_source(&self, stream: &str) -> Option<BoxFuture<'static, SharedShardSource>> {
        let _ = stream;
        let config = self.clone();
        Some(Box::pin(async move { super::shared_source(config).await }))
    }

    fn describe_source(&self, _context: &SourceDescribeContext<'_>) -> Map<String, Value> {
        spillway_source_description(json!({
            "Type": "dynamodb_streams",
            "TableName": self.table_name,
            "StreamARN": self.stream_arn,
        }))
    }
}
