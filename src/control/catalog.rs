//! The stream catalog: what the control plane knows about each stream beyond its delivery
//! configuration — where its definition comes from (YAML or the API), its Firehose status,
//! `VersionId`, creation and update times, tags and the recorded encryption status — and where
//! that is kept: behind the [`Catalog`] trait, so the app picks the store (a folder under
//! `data_dir`, [`FolderCatalog`]; PostgreSQL in cluster mode, `crate::cluster::catalog`, which
//! every node reads so that each runs every API-created stream).
//!
//! [`FolderCatalog`] keeps:
//! - API-created streams: `data_dir/api-streams/<name>.json`, the whole record including the
//!   destination as the API received it (`ExtendedS3DestinationConfiguration`), so the stream is
//!   rebuilt from it at start-up.
//! - YAML streams: `data_dir/streams/<name>/stream.json`, only the creation time, the version and a
//!   fingerprint of the configuration; a changed fingerprint at start-up bumps the version.
//!
//! Every write replaces the file atomically ([`write_atomically`]); the file I/O runs on the
//! blocking pool, never on the async runtime.
//!
//! Must not: build streams or talk HTTP.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::checkpoint::write_atomically;
pub use crate::stream_record::{EncryptionRecord, StreamOrigin, StreamRecord, StreamStatus};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("stream catalog i/o error in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("stream catalog file {path} is unreadable: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("a stream catalog task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the shared stream catalog: {0}")]
    Coordinator(String),
    #[error("the shared stream catalog refused the record: {0}")]
    Rejected(String),
}

/// Where stream records are kept. Records of API-created streams are the streams' definitions
/// (loaded at start-up, saved on every change, removed with the stream); a YAML stream's record
/// only counts its versions.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// A YAML stream's record: created on first start, its version bumped when `fingerprint` (of
    /// the stream's configuration) differs from the one stored.
    async fn load_yaml_record(&self, name: &str, fingerprint: &str, now_ms: i64) -> Result<StreamRecord, CatalogError>;
    /// Every API-created stream's record, in name order.
    async fn load_api_records(&self) -> Result<Vec<StreamRecord>, CatalogError>;
    /// Store a new API-created stream's record; `false` (nothing written) when a record of that
    /// name exists already (in cluster mode, another node may have created it a moment ago).
    async fn insert_api_record(&self, record: &StreamRecord) -> Result<bool, CatalogError>;
    /// Store an API-created stream's record, replacing the one it had.
    async fn save_api_record(&self, record: &StreamRecord) -> Result<(), CatalogError>;
    /// Replace an API-created stream's record only if the stored one is still `current`; `false`
    /// (nothing written) when it changed meanwhile (another node's change, in cluster mode).
    async fn replace_api_record(&self, current: &StreamRecord, new: &StreamRecord) -> Result<bool, CatalogError>;
    /// Whether other processes change this catalog too (cluster mode): the control plane then
    /// catches up with it before each change.
    fn shared(&self) -> bool {
        false
    }
    /// Forget an API-created stream — this incarnation of it (same creation time), never a
    /// stream created again under the name meanwhile; a record missing is not an error.
    async fn remove_api_record(&self, record: &StreamRecord) -> Result<(), CatalogError>;
}

/// The catalog in files under `data_dir` (see the module header for the layout).
#[derive(Debug, Clone)]
pub struct FolderCatalog {
    data_dir: PathBuf,
}

impl FolderCatalog {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self { data_dir: data_dir.into() }
    }

    /// A YAML stream's record file, in the stream's own folder (`crate::streams::stream_dir`).
    fn yaml_record_path(&self, name: &str) -> PathBuf {
        self.data_dir.join("streams").join(name).join("stream.json")
    }

    fn api_record_path(&self, name: &str) -> PathBuf {
        api_streams_dir(&self.data_dir).join(format!("{name}.json"))
    }

    /// Run blocking file I/O on the blocking pool.
    async fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T, CatalogError> + Send + 'static,
    ) -> Result<T, CatalogError> {
        tokio::task::spawn_blocking(work).await?
    }
}

#[async_trait]
impl Catalog for FolderCatalog {
    async fn load_yaml_record(&self, name: &str, fingerprint: &str, now_ms: i64) -> Result<StreamRecord, CatalogError> {
        let (path, name, fingerprint) = (self.yaml_record_path(name), name.to_string(), fingerprint.to_string());
        Self::blocking(move || load_yaml_record(&path, &name, &fingerprint, now_ms)).await
    }

    async fn load_api_records(&self) -> Result<Vec<StreamRecord>, CatalogError> {
        let dir = api_streams_dir(&self.data_dir);
        Self::blocking(move || load_api_records(&dir)).await
    }

    async fn save_api_record(&self, record: &StreamRecord) -> Result<(), CatalogError> {
        let (path, record) = (self.api_record_path(&record.name), record.clone());
        Self::blocking(move || write_record(&path, &record)).await
    }

    async fn insert_api_record(&self, record: &StreamRecord) -> Result<bool, CatalogError> {
        let (path, record) = (self.api_record_path(&record.name), record.clone());
        Self::blocking(move || {
            if read_record(&path)?.is_some() {
                return Ok(false);
            }
            write_record(&path, &record)?;
            Ok(true)
        })
        .await
    }

    async fn replace_api_record(&self, current: &StreamRecord, new: &StreamRecord) -> Result<bool, CatalogError> {
        let (path, current, new) = (self.api_record_path(&new.name), current.clone(), new.clone());
        Self::blocking(move || {
            if read_record(&path)?.as_ref() != Some(&current) {
                return Ok(false);
            }
            write_record(&path, &new)?;
            Ok(true)
        })
        .await
    }

    async fn remove_api_record(&self, record: &StreamRecord) -> Result<(), CatalogError> {
        let (path, created) = (self.api_record_path(&record.name), record.create_timestamp_ms);
        Self::blocking(move || match read_record(&path)? {
            Some(stored) if stored.create_timestamp_ms != created => Ok(()),
            _ => remove_record(&path),
        })
        .await
    }
}

/// The folder of API-created streams' records.
fn api_streams_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("api-streams")
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

fn remove_record(path: &Path) -> Result<(), CatalogError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CatalogError::Io { path: path.to_path_buf(), source }),
    }
}

/// Blocking: every record in `dir`, in name order.
fn load_api_records(dir: &Path) -> Result<Vec<StreamRecord>, CatalogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CatalogError::Io { path: dir.to_path_buf(), source }),
    };
    let mut records = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CatalogError::Io { path: dir.to_path_buf(), source })?;
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

/// Blocking: the YAML stream's record at `path`, created or its version bumped (see
/// [`Catalog::load_yaml_record`]).
fn load_yaml_record(path: &Path, name: &str, fingerprint: &str, now_ms: i64) -> Result<StreamRecord, CatalogError> {
    let record = match read_record(path)? {
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
    write_record(path, &record)?;
    Ok(record)
}

/// A stable fingerprint of a configuration's debug rendering (secrets are hashed, never stored).
pub fn fingerprint(config: &impl std::fmt::Debug) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{config:?}").as_bytes()).simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn yaml_record_keeps_its_creation_time_and_counts_config_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = FolderCatalog::new(dir.path());
        let first = catalog.load_yaml_record("s", "a", 1_000).await.expect("created");
        assert_eq!((first.version_id, first.create_timestamp_ms), (1, 1_000));
        assert!(dir.path().join("streams/s/stream.json").is_file(), "kept in the stream's folder");
        let same = catalog.load_yaml_record("s", "a", 2_000).await.expect("loaded");
        assert_eq!(same, first, "unchanged config: same record");
        let changed = catalog.load_yaml_record("s", "b", 3_000).await.expect("bumped");
        assert_eq!(
            (changed.version_id, changed.create_timestamp_ms, changed.last_update_timestamp_ms),
            (2, 1_000, 3_000)
        );
    }

    #[tokio::test]
    async fn api_records_round_trip_and_are_listed_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = FolderCatalog::new(dir.path());
        for name in ["b", "a"] {
            let mut record = StreamRecord::new(name, StreamOrigin::Api, 5);
            record.tags.insert("team".into(), "data".into());
            record.destination = Some(serde_json::json!({ "BucketARN": "arn:aws:s3:::x" }));
            catalog.save_api_record(&record).await.expect("saved");
        }
        let loaded = catalog.load_api_records().await.expect("loaded");
        assert_eq!(loaded.iter().map(|record| record.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(loaded[0].tags.get("team").map(String::as_str), Some("data"));
        let mut tagged = loaded[0].clone();
        tagged.tags.insert("env".into(), "prod".into());
        assert!(catalog.replace_api_record(&loaded[0], &tagged).await.expect("replace"));
        assert!(!catalog.replace_api_record(&loaded[0], &tagged).await.expect("replace"), "stale: refused");
        let loaded = catalog.load_api_records().await.expect("loaded");
        assert_eq!(loaded[0], tagged);
        let newer = StreamRecord::new("a", StreamOrigin::Api, 9);
        assert!(!catalog.insert_api_record(&newer).await.expect("insert"), "a exists");
        catalog.remove_api_record(&newer).await.expect("another incarnation: nothing removed");
        assert_eq!(catalog.load_api_records().await.expect("loaded").len(), 2);
        catalog.remove_api_record(&loaded[0]).await.expect("removed");
        catalog.remove_api_record(&loaded[0]).await.expect("removing twice is fine");
        assert_eq!(catalog.load_api_records().await.expect("loaded").len(), 1);
        assert!(catalog.insert_api_record(&newer).await.expect("insert"), "a is free again");
    }
}
