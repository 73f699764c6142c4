//! The `kafka` source as the registry sees it: one reader task for the stream's topics; described
//! as AWS describes an `MSKAsSource` stream (`Source.MSKSourceDescription`).

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use super::{AuthConfig, KafkaSourceConfig, StartFrom};
use crate::sources::descriptor::{ReaderContext, SourceDescribeContext, SourceDescriptor};
use crate::sources::shards::SharedShardSource;

impl SourceDescriptor for KafkaSourceConfig {
    fn type_name(&self) -> &'static str {
        "kafka"
    }

    fn origin(&self) -> String {
        format!("Kafka {} at {}", self.display_topics(), self.bootstrap_servers)
    }

    fn validate(&self) -> Vec<(String, String)> {
        KafkaSourceConfig::validate(self)
    }

    fn spawn_readers(&self, context: ReaderContext<'_>) -> Vec<JoinHandle<()>> {
        let ReaderContext { stream, wal, metrics, stop, .. } = context;
        vec![tokio::spawn(super::run(stream.to_string(), self.clone(), wal.clone(), metrics.clone(), stop))]
    }

    /// Offsets are committed to a group by the single-node reader only.
    /// Cluster mode: each partition is a shard nodes lease (see `super::shards`).
    fn shard_source(&self, stream: &str) -> Option<BoxFuture<'static, SharedShardSource>> {
        let source = super::shards::shared_source(stream.to_string(), self.clone());
        Some(Box::pin(async move { source }))
    }

    fn delivery_stream_type(&self) -> &'static str {
        "MSKAsSource"
    }

    /// `Source.MSKSourceDescription` (`MSKClusterARN`, `TopicName`, `AuthenticationConfiguration`,
    /// `DeliveryStartTimestamp`, `ReadFromTimestamp`). A cluster spillway knows only by its
    /// brokers gets an ARN naming them; a pattern or several topics are listed comma-separated.
    fn describe_source(&self, context: &SourceDescribeContext<'_>) -> Map<String, Value> {
        let cluster_arn = self.cluster_arn.clone().unwrap_or_else(|| {
            format!(
                "arn:aws:kafka:{}:{}:cluster/spillway/{}",
                context.region, context.account_id, self.bootstrap_servers
            )
        });
        let topic = match (&self.topics, &self.topic_pattern) {
            (_, Some(pattern)) => pattern.clone(),
            (Some(topics), None) => topics.join(","),
            (None, None) => String::new(),
        };
        let role_arn = context
            .role_arn
            .map_or_else(|| format!("arn:aws:iam::{}:role/spillway", context.account_id), str::to_string);
        let connectivity =
            if matches!(self.auth, AuthConfig::None) && self.tls.is_none() { "PUBLIC" } else { "PRIVATE" };
        let mut description = json!({
            "MSKClusterARN": cluster_arn,
            "TopicName": topic,
            "AuthenticationConfiguration": { "RoleARN": role_arn, "Connectivity": connectivity },
            "DeliveryStartTimestamp": context.delivery_start_ms as f64 / 1000.0,
        });
        let read_from = match &self.start {
            StartFrom::Earliest => Some(0.0),
            StartFrom::Latest => None,
            StartFrom::AtTimestamp(text) => super::parse_timestamp(text).map(|ms| ms as f64 / 1000.0),
        };
        if let (Some(seconds), Some(object)) = (read_from, description.as_object_mut()) {
            object.insert("ReadFromTimestamp".into(), json!(seconds));
        }
        let mut members = Map::new();
        members.insert("Source".into(), json!({ "MSKSourceDescription": description }));
        members
    }
}
