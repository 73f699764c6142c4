//! Delivery intents: before a batch leaves, its identity (id, route, `[start, end)`) is written to
//! `intents/<id>.json` as *pending*; once the sink (or the error output) has it, it becomes
//! *done*. An intent is removed when the watermark passes its end. After a crash, pending intents
//! are re-sent under the same id (sinks overwrite instead of duplicating) and the records of done
//! ones above the watermark are skipped, so a batch of another partition that already left is
//! not delivered twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use spillway_sink_api::PartitionKeys;
use uuid::Uuid;

use super::open_batch::Route;
use crate::atomic_file::write_atomically;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentState {
    /// Recorded; the sink may or may not have it.
    #[default]
    Pending,
    /// The sink (or the error output) has it durably.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: Uuid,
    /// First sequence of the batch.
    pub start: u64,
    /// Sequence after the batch's last record.
    pub end: u64,
    #[serde(default, skip_serializing_if = "PartitionKeys::is_empty")]
    pub partition: PartitionKeys,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_output_type: Option<String>,
    #[serde(default)]
    pub state: IntentState,
    /// The batch's oldest arrival time (Unix ms) as first closed: its object key's time. A
    /// re-send uses it, so the batch lands on the same key whoever rebuilds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_arrival_ms: Option<i64>,
}

impl Intent {
    /// A batch's identity: the id depends only on (instance, stream, route, start), so the same
    /// batch rebuilt after a restart gets the same id (and the same object key).
    pub fn new(instance_id: &Uuid, stream: &str, route: &Route, start: u64, end: u64) -> Self {
        let mut name = format!("{stream}/{start}");
        if !route.partition.is_empty() {
            let partition = serde_json::to_string(route.partition.as_ref()).unwrap_or_default();
            name = format!("{stream}/{partition}/{start}");
        }
        if let Some(error_output_type) = &route.error_output_type {
            name = format!("{name}/{error_output_type}");
        }
        Self {
            id: Uuid::new_v5(instance_id, name.as_bytes()),
            start,
            end,
            partition: route.partition.as_ref().clone(),
            error_output_type: route.error_output_type.clone(),
            state: IntentState::Pending,
            oldest_arrival_ms: None,
        }
    }

    pub fn route(&self) -> Route {
        Route { partition: Arc::new(self.partition.clone()), error_output_type: self.error_output_type.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    #[error("intent i/o error in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("intent file {path} is unreadable: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// The intent files of one stream. Blocking file I/O: call from the blocking pool.
#[derive(Debug, Clone)]
pub struct IntentLog {
    dir: PathBuf,
}

impl IntentLog {
    pub fn open(stream_dir: &Path) -> Result<Self, IntentError> {
        let dir = stream_dir.join("intents");
        std::fs::create_dir_all(&dir).map_err(|source| IntentError::Io { path: dir.clone(), source })?;
        Ok(Self { dir })
    }

    /// Write (or overwrite, e.g. to mark it done) an intent durably.
    pub fn record(&self, intent: &Intent) -> Result<(), IntentError> {
        let path = self.path(intent);
        let bytes = serde_json::to_vec(intent).map_err(|source| IntentError::Parse { path: path.clone(), source })?;
        write_atomically(&path, &bytes).map_err(|source| IntentError::Io { path, source })
    }

    pub fn remove(&self, intent: &Intent) -> Result<(), IntentError> {
        let path = self.path(intent);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(IntentError::Io { path, source }),
        }
    }

    /// Intents left by an earlier run, in sequence order.
    pub fn load(&self) -> Result<Vec<Intent>, IntentError> {
        let io_error = |source| IntentError::Io { path: self.dir.clone(), source };
        let mut intents = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error)? {
            let path = entry.map_err(io_error)?.path();
            if path.extension().and_then(|ext| ext.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| IntentError::Io { path: path.clone(), source })?;
            let intent: Intent =
                serde_json::from_slice(&bytes).map_err(|source| IntentError::Parse { path, source })?;
            intents.push(intent);
        }
        intents.sort_by_key(|intent| (intent.start, intent.id));
        Ok(intents)
    }

    /// Files are named by batch id; earlier versions named them by start sequence, which a
    /// rewrite (marking done) would not find, so both names are tried on removal.
    fn path(&self, intent: &Intent) -> PathBuf {
        let by_id = self.dir.join(format!("{}.json", intent.id));
        let legacy = self.dir.join(format!("{:020}.json", intent.start));
        if !by_id.exists() && legacy.exists() { legacy } else { by_id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_round_trip_and_ids_depend_only_on_route_and_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = IntentLog::open(dir.path()).unwrap();
        let instance = Uuid::from_u128(1);
        let route = Route::sink(Arc::new(PartitionKeys::from([("service".into(), "api".into())])));
        let mut intent = Intent::new(&instance, "s", &route, 10, 20);
        assert_eq!(intent.id, Intent::new(&instance, "s", &route, 10, 99).id);
        assert_ne!(intent.id, Intent::new(&instance, "s", &Route::sink(Arc::default()), 10, 20).id);
        log.record(&intent).unwrap();
        intent.state = IntentState::Done;
        log.record(&intent).unwrap();
        assert_eq!(log.load().unwrap(), vec![intent.clone()]);
        assert_eq!(log.load().unwrap()[0].route(), route);
        log.remove(&intent).unwrap();
        assert!(log.load().unwrap().is_empty());
    }

    #[test]
    fn an_intent_written_by_the_previous_version_is_read_as_pending() {
        let dir = tempfile::tempdir().unwrap();
        let log = IntentLog::open(dir.path()).unwrap();
        let id = Intent::new(&Uuid::from_u128(1), "s", &Route::sink(Arc::default()), 5, 9).id;
        std::fs::write(
            dir.path().join("intents/00000000000000000005.json"),
            format!(r#"{{"id":"{id}","start":5,"end":9}}"#),
        )
        .unwrap();
        let loaded = log.load().unwrap();
        assert_eq!((loaded[0].state, loaded[0].start, loaded[0].id), (IntentState::Pending, 5, id));
        log.remove(&loaded[0]).unwrap();
        assert!(log.load().unwrap().is_empty());
    }
}
