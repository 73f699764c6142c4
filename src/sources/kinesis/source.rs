//! The `kinesis` source as the registry sees it: one reader task for the stream's shards;
//! described as AWS describes a `KinesisStreamAsSource` stream.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use super::KinesisSourceConfig;
use crate::sources::descriptor::{ReaderContext, SourceDescribeContext, SourceDescriptor};
use crate::sources::shards::SharedShardSource;

impl SourceDescriptor for KinesisSourceConfig {
    fn type_name(&self) -> &'static str {
        "kinesis"
    }

    fn origin(&self) -> String {
        match (&self.stream_arn, &self.stream_name) {
            (Some(arn), _) => format!("Kinesis stream {arn}"),
            (None, Some(name)) => format!("Kinesis stream {name}"),
            (None, None) => "Kinesis stream (unnamed)".to_string(),
        }
    }

    fn validate(&self) -> Vec<(String, String)> {
        KinesisSourceConfig::validate(self)
    }

    fn spawn_readers(&self, context: ReaderContext<'_>) -> Vec<JoinHandle<()>> {
        let ReaderContext { stream, wal, metrics, stop, .. } = context;
        vec![tokio::spawn(super::run(stream.to_string(), self.clone(), wal.clone(), metrics.clone(), stop))]
    }

    fn shard_source(&self, stream: &str) -> Option<BoxFuture<'static, SharedShardSource>> {
        let (config, stream) = (self.clone(), stream.to_string());
        Some(Box::pin(async move { super::shared_source(stream, config).await }))
    }

    fn delivery_stream_type(&self) -> &'static str {
        "KinesisStreamAsSource"
    }

    /// `Source.KinesisStreamSourceDescription` (`KinesisStreamARN`, `RoleARN`,
    /// `DeliveryStartTimestamp`).
    fn describe_source(&self, context: &SourceDescribeContext<'_>) -> Map<String, Value> {
        let stream_arn = self.stream_arn.clone().unwrap_or_else(|| {
            let region = self.region.as_deref().unwrap_or(context.region);
            let name = self.stream_name.as_deref().unwrap_or_default();
            format!("arn:aws:kinesis:{region}:{}:stream/{name}", context.account_id)
        });
        let role_arn = context
            .role_arn
            .map_or_else(|| format!("arn:aws:iam::{}:role/spillway", context.account_id), str::to_string);
        let mut members = Map::new();
        members.insert(
            "Source".into(),
            json!({
                "KinesisStreamSourceDescription": {
                    "KinesisStreamARN": stream_arn,
                    "RoleARN": role_arn,
                    "DeliveryStartTimestamp": context.delivery_start_ms as f64 / 1000.0,
                }
            }),
        );
        members
    }
}
