//! The stream catalog: what the control plane knows about each stream beyond its delivery
//! configuration — where its definition comes from (YAML or the API), its Firehose status,
//! `VersionId`, creation and update times, tags and the recorded encryption status — and how that
//! is persisted under `data_dir`:
//!
//! - API-created streams: `data_dir/api-streams/<name>.json`, the whole record including the
//!   destination as the API received it (`ExtendedS3DestinationConfiguration`), so the stream is
//!   rebuilt from it at start-up.
//! - YAML streams: `data_dir/streams/<name>/stream.json`, only the creation time, the version and a
//!   fingerprint of the configuration; a changed fingerprint at start-up bumps the version.
//!
//! Every write replaces the file atomically ([`write_atomically`]). The functions here do blocking
//! file I/O: call them from `spawn_blocking` (or at start-up, before serving).
//!
//! Must not: build streams or talk HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomically;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("stream catalog i/o error in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("stream catalog file {path} is unreadable: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

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
            source: None,
            fingerprint: None,
        }
    }
}

/// The folder of API-created streams' records.
pub fn api_streams_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("api-streams")
}

fn api_record_path(data_dir: &Path, name: &str) -> PathBuf {
    api_streams_dir(data_dir).join(format!("{name}.json"))
}

fn read_record(path: &Path) -> Result<Option<StreamRecord>, CatalogError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CatalogError::Parse { path: path.to_path_buf(), source }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CatalogError::Io { path: path.to_path_buf(), source }),
    }
}

fn write_record(path: &Path, record: &StreamRecord) -> Result<(), CatalogError> {
    let io = |source| CatalogError::Io { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let bytes = serde_json::to_vec_pretty(record).map_err(|error| io(std::io::Error::other(error)))?;
    write_atomically(path, &bytes).map_err(io)
}

/// Every API-created stream's record, in name order.
pub fn load_api_records(data_dir: &Path) -> Result<Vec<StreamRecord>, CatalogError> {
    let dir = api_streams_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CatalogError::Io { path: dir, source }),
    };
    let mut records = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CatalogError::Io { path: dir.clone(), source })?;
        let path = entry.path();
        // Leftover temporary files of an interrupted atomic write are not records.
        if path.extension().is_none_or(|extension| extension != "json") {
            continue;
        }
        if let Some(record) = read_record(&path)? {
            records.push(record);
        }
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

pub fn save_api_record(data_dir: &Path, record: &StreamRecord) -> Result<(), CatalogError> {
    write_record(&api_record_path(data_dir, &record.name), record)
}

pub fn remove_api_record(data_dir: &Path, name: &str) -> Result<(), CatalogError> {
    let path = api_record_path(data_dir, name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CatalogError::Io { path, source }),
    }
}

/// A YAML stream's record: created on first start, its version bumped when `fingerprint` (of
/// the stream's configuration) differs from the one stored.
pub fn load_yaml_record(
    stream_dir: &Path,
    name: &str,
    fingerprint: &str,
    now_ms: i64,
) -> Result<StreamRecord, CatalogError> {
    let path = stream_dir.join("stream.json");
    let record = match read_record(&path)? {
        Some(stored) if stored.fingerprint.as_deref() == Some(fingerprint) => return Ok(stored),
        Some(stored) => StreamRecord {
            version_id: stored.version_id + 1,
            last_update_timestamp_ms: now_ms,
            fingerprint: Some(fingerprint.to_string()),
            ..stored
        },
        None => StreamRecord {
            fingerprint: Some(fingerprint.to_string()),
            ..StreamRecord::new(name, StreamOrigin::Yaml, now_ms)
        },
    };
    write_record(&path, &record)?;
    Ok(record)
}

/// A stable fingerprint of a configuration's debug rendering (secrets are hashed, never stored).
pub fn fingerprint(config: &impl std::fmt::Debug) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{config:?}").as_bytes()).simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_record_keeps_its_creation_time_and_counts_config_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_yaml_record(dir.path(), "s", "a", 1_000).expect("created");
        assert_eq!((first.version_id, first.create_timestamp_ms), (1, 1_000));
        let same = load_yaml_record(dir.path(), "s", "a", 2_000).expect("loaded");
        assert_eq!(same, first, "unchanged config: same record");
        let changed = load_yaml_record(dir.path(), "s", "b", 3_000).expect("bumped");
        assert_eq!(
            (changed.version_id, changed.create_timestamp_ms, changed.last_update_timestamp_ms),
            (2, 1_000, 3_000)
        );
    }

    #[test]
    fn api_records_round_trip_and_are_listed_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b", "a"] {
            let mut record = StreamRecord::new(name, StreamOrigin::Api, 5);
            record.tags.insert("team".into(), "data".into());
            record.destination = Some(serde_json::json!({ "BucketARN": "arn:aws:s3:::x" }));
            save_api_record(dir.path(), &record).expect("saved");
        }
        let loaded = load_api_records(dir.path()).expect("loaded");
        assert_eq!(loaded.iter().map(|record| record.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(loaded[0].tags.get("team").map(String::as_str), Some("data"));
        remove_api_record(dir.path(), "a").expect("removed");
        assert_eq!(load_api_records(dir.path()).expect("loaded").len(), 1);
    }
}
