//! `wal.replication`: where a cluster node stores its WAL segments, and how it groups puts.

use std::sync::Arc;

use object_store::ObjectStore;
use serde::Deserialize;
use spillway_sink_api::Secret;
use spillway_sink_s3::{Destination, S3Connection, S3SinkConfig};

/// `wal.replication` (cluster mode only): segment objects in an object store, indexed in the
/// coordinator. The connection fields are the S3 sink's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// `s3://bucket/prefix` (the prefix is optional), or `file:///shared/folder` (a folder every
    /// node mounts; for tests and NFS).
    pub url: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: Option<bool>,
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// Group commit: a segment is cut at most this long after its first frame was written, or
    /// earlier when it reaches `max_segment_mib`, or — while fewer than `uploads_in_flight`
    /// segments are being stored — as soon as it holds `min_segment_kib` (big puts do not wait
    /// for the delay; small ones are grouped). See `docs/cluster.md` for the trade-off.
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
    #[serde(default = "default_min_segment_kib")]
    pub min_segment_kib: u64,
    #[serde(default = "default_max_segment_mib")]
    pub max_segment_mib: u64,
    /// Segments being stored at once per stream (acknowledged in order).
    #[serde(default = "default_uploads_in_flight")]
    pub uploads_in_flight: usize,
    /// How long a put waits for its segment before it is answered `ServiceUnavailableException`.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// An object under a finished slot, or one written but never indexed (its puts were never
    /// acknowledged), is deleted once it is this old.
    #[serde(default = "default_orphan_grace_seconds")]
    pub orphan_grace_seconds: u64,
}

fn default_max_delay_ms() -> u64 {
    50
}
fn default_min_segment_kib() -> u64 {
    1024
}
fn default_max_segment_mib() -> u64 {
    8
}
fn default_uploads_in_flight() -> usize {
    4
}
fn default_ack_timeout_ms() -> u64 {
    10_000
}
fn default_orphan_grace_seconds() -> u64 {
    3_600
}

impl ReplicationConfig {
    /// Every problem with its field (under `wal.replication.`); pure.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems: Vec<(String, String)> = Vec::new();
        if let Err(message) = self.split_url() {
            problems.push(("url".into(), message));
        }
        // The S3 sink's checks of the same fields (endpoint, credentials given together).
        problems.extend(self.connection().validate().into_iter().map(|problem| (problem.field, problem.message)));
        let mut range = |field: &'static str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                problems.push((field.into(), format!("must be between {min} and {max} (got {value})")));
            }
        };
        range("max_delay_ms", self.max_delay_ms, 0, 10_000);
        range("max_segment_mib", self.max_segment_mib, 1, 256);
        range("min_segment_kib", self.min_segment_kib, 1, self.max_segment_mib.clamp(1, 256) * 1024);
        range("uploads_in_flight", self.uploads_in_flight as u64, 1, 64);
        range("ack_timeout_ms", self.ack_timeout_ms, 100, 600_000);
        range("orphan_grace_seconds", self.orphan_grace_seconds, 60, 30 * 86_400);
        problems
    }

    /// The store's own url (`s3://bucket` or the folder) and the key prefix (`""` or ending `/`).
    fn split_url(&self) -> Result<(String, String), String> {
        if self.url.starts_with("file://") {
            return Ok((self.url.clone(), String::new()));
        }
        let Some(rest) = self.url.strip_prefix("s3://") else {
            return Err(format!("`{}` must be s3://bucket/prefix or file:///folder", self.url));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == "." || part == "..") {
            return Err(format!("`{}`: the prefix may not hold `.` or `..`", self.url));
        }
        let url = format!("s3://{bucket}");
        spillway_sink_s3::Destination::parse(&url)?;
        Ok((url, if prefix.is_empty() { String::new() } else { format!("{prefix}/") }))
    }

    /// The S3 connection options of this block, as the S3 sink reads them.
    fn connection(&self) -> S3Connection {
        S3Connection {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            allow_http: self.allow_http,
        }
    }

    /// The object store and the key prefix every segment key starts with. No request is sent.
    pub fn open(&self) -> Result<(Arc<dyn ObjectStore>, String), String> {
        let (url, prefix) = self.split_url()?;
        let store: Arc<dyn ObjectStore> = match Destination::parse(&url)? {
            // Segment bodies go unsigned (`UNSIGNED-PAYLOAD`, as botocore sends to S3 over
            // HTTPS): every frame carries its own CRC32C, checked when a segment is read back,
            // so hashing each body with SHA-256 on both ends bought nothing but CPU.
            Destination::S3 { bucket } => {
                let connection = self.connection();
                let builder = connection.builder(&bucket).with_unsigned_payload(true);
                Arc::new(S3Connection::finish(&bucket, builder).map_err(|error| error.to_string())?)
            }
            Destination::LocalDir(_) => {
                S3SinkConfig::for_url(&url).object_store().map_err(|error| error.to_string())?
            }
        };
        Ok((store, prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(yaml: &str) -> ReplicationConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn splits_bucket_and_prefix_and_names_each_problem() {
        let config = block("url: s3://spillway-wal/cluster-a/");
        assert!(config.validate().is_empty());
        assert_eq!(config.split_url().unwrap(), ("s3://spillway-wal".to_string(), "cluster-a/".to_string()));
        assert_eq!(block("url: s3://spillway-wal").split_url().unwrap().1, "");
        let bad = block("{ url: 'http://x', max_segment_mib: 0, ack_timeout_ms: 5 }");
        let fields: Vec<String> = bad.validate().into_iter().map(|(field, _)| field).collect();
        assert_eq!(fields, ["url", "max_segment_mib", "ack_timeout_ms"]);
        assert!(block("url: s3://b/../x").validate()[0].1.contains("`..`"));
        let keys = block("{ url: 's3://spillway-wal', access_key_id: k }").validate();
        assert_eq!(keys[0].0, "secret_access_key", "{keys:?}");
    }
}
