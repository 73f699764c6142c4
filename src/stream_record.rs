//! What is recorded about each stream beside its delivery configuration: where its definition
//! comes from (YAML or the API), its Firehose status, `VersionId`, times, tags and the recorded
//! encryption status, and the destination as the API received it. The stream table of the data
//! plane carries it; the control plane's catalog ([`crate::control::catalog`]) keeps it.
//!
//! Must not: read or write files (the catalog does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who owns a stream's definition: YAML streams are read-only to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamOrigin {
    Yaml,
    Api,
}

/// Firehose's `DeliveryStreamStatus` values spillway reports. A stream is built before
/// `CreateDeliveryStream` answers, so `CREATING` is only seen by a describe racing the create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamStatus {
    Creating,
    Active,
    Deleting,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Creating => "CREATING",
            StreamStatus::Active => "ACTIVE",
            StreamStatus::Deleting => "DELETING",
        }
    }
}

/// Firehose's `DeliveryStreamEncryptionConfiguration`, recorded only: spillway does not encrypt
/// its WAL (data at rest is the disk's business), so this is bookkeeping for tools that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionRecord {
    /// `ENABLED` or `DISABLED` (the transitions through `ENABLING` / `DISABLING` are immediate).
    pub status: String,
    pub key_type: Option<String>,
    pub key_arn: Option<String>,
}

impl Default for EncryptionRecord {
    fn default() -> Self {
        Self { status: "DISABLED".to_string(), key_type: None, key_arn: None }
    }
}

/// One stream's catalog entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub name: String,
    pub origin: StreamOrigin,
    pub status: StreamStatus,
    /// Firehose's `VersionId`: 1 at creation, +1 per destination change; object names carry it.
    pub version_id: u64,
    pub create_timestamp_ms: i64,
    pub last_update_timestamp_ms: i64,
    /// Tags in key order (at most 50, as Firehose allows).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub encryption: EncryptionRecord,
    /// API streams: the destination as received (`ExtendedS3DestinationConfiguration` members,
    /// updates merged in). `None` for YAML streams.
    #[serde(default)]
    pub destination: Option<serde_json::Value>,
    /// API streams: which of [`crate::control::destinations::API_DESTINATIONS`] `destination` is (`None`
    /// in records written before there was more than S3: S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_type: Option<String>,
    /// API streams created as `KinesisStreamAsSource`: the `KinesisStreamSourceConfiguration` as
    /// received (`KinesisStreamARN`, `RoleARN`). `None` for Direct PUT and YAML streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
    /// YAML streams: a fingerprint of the configuration the version was counted for.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl StreamRecord {
    /// A fresh record, version 1, created now.
    pub fn new(name: &str, origin: StreamOrigin, now_ms: i64) -> Self {
        Self {
            name: name.to_string(),
            origin,
            status: StreamStatus::Active,
            version_id: 1,
            create_timestamp_ms: now_ms,
            last_update_timestamp_ms: now_ms,
            tags: BTreeMap::new(),
            encryption: EncryptionRecord::default(),
            destination: None,
            destination_type: None,
            source: None,
            fingerprint: None,
        }
    }
}
