//! `DeliveryStreamType: MSKAsSource`: an `MSKSourceConfiguration` becomes a `kafka` source. The
//! request names the cluster only by ARN, so `api_defaults.msk.<ARN>` says how to reach it
//! (`bootstrap_servers`, `auth`, `tls`); `TopicName` is the one topic read, `ReadFromTimestamp`
//! the start (the epoch: `earliest`; absent: `latest`, from when the stream became active, as
//! Firehose does). The IAM role in `AuthenticationConfiguration` is kept for Describe, not assumed.
//!
//! Must not: reach the cluster (the source's reader does), or accept a cluster it has no route to.

use serde_json::{Value, json};

use crate::config::Config;
use crate::sources::SourceConfig;
use crate::sources::direct_put::validation::Violations;
use crate::sources::direct_put::wire::ApiError;

/// The `kafka` source for an `MSKSourceConfiguration`.
pub fn source_config(config: &Config, msk: &Value) -> Result<SourceConfig, ApiError> {
    let member = "mSKSourceConfiguration";
    let cluster_arn = msk.get("MSKClusterARN").and_then(Value::as_str);
    let topic = msk.get("TopicName").and_then(Value::as_str);
    let authentication = msk.get("AuthenticationConfiguration");
    let mut violations = Violations::new();
    violations.required(cluster_arn, &format!("{member}.mSKClusterARN"));
    violations.required(topic, &format!("{member}.topicName"));
    violations.required(authentication.map(|_| ""), &format!("{member}.authenticationConfiguration"));
    if let Some(authentication) = authentication {
        let role = authentication.get("RoleARN").and_then(Value::as_str);
        let connectivity = authentication.get("Connectivity").and_then(Value::as_str);
        violations.required(role, &format!("{member}.authenticationConfiguration.roleARN"));
        violations.required(connectivity, &format!("{member}.authenticationConfiguration.connectivity"));
        if let Some(connectivity) = connectivity {
            violations.one_of(
                connectivity,
                &format!("{member}.authenticationConfiguration.connectivity"),
                &["PUBLIC", "PRIVATE"],
            );
        }
    }
    violations.finish()?;
    let (cluster_arn, topic) = (cluster_arn.unwrap_or_default(), topic.unwrap_or_default());
    if !cluster_arn.starts_with("arn:") || !cluster_arn.contains(":kafka:") {
        return Err(ApiError::invalid_argument(format!(
            "MSKClusterARN {cluster_arn} is not an MSK cluster ARN (arn:aws:kafka:<region>:<account>:cluster/<name>/<uuid>)"
        )));
    }
    let Some(cluster) = config.api_defaults.msk.get(cluster_arn) else {
        return Err(ApiError::invalid_argument(format!(
            "MSKClusterARN {cluster_arn} is unknown to this spillway: add it under api_defaults.msk with its bootstrap_servers"
        )));
    };
    let start = match msk.get("ReadFromTimestamp").and_then(Value::as_f64) {
        None => json!("latest"),
        Some(seconds) if seconds <= 0.0 => json!("earliest"),
        Some(seconds) => {
            let time = chrono::DateTime::from_timestamp_millis((seconds * 1000.0) as i64)
                .ok_or_else(|| ApiError::invalid_argument(format!("ReadFromTimestamp {seconds} is out of range")))?;
            json!({ "at_timestamp": time.to_rfc3339() })
        }
    };
    let mut source = json!({
        "type": "kafka",
        "bootstrap_servers": cluster.bootstrap_servers,
        "topics": [topic],
        "start": start,
        "cluster_arn": cluster_arn,
    });
    if let Some(object) = source.as_object_mut() {
        for (key, value) in
            [("auth", &cluster.auth), ("tls", &cluster.tls), ("librdkafka_options", &cluster.librdkafka_options)]
        {
            if let Some(value) = value {
                object.insert(key.to_string(), value.clone());
            }
        }
    }
    let source: SourceConfig = serde_json::from_value(source)
        .map_err(|error| ApiError::invalid_argument(format!("cannot read {member} with api_defaults.msk: {error}")))?;
    if let Some((field, message)) = source.descriptor().validate().first() {
        return Err(ApiError::invalid_argument(format!("{member}: {field}: {message}")));
    }
    Ok(source)
}
