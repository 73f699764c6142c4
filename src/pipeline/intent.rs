//! Delivery intents: before a batch leaves, its identity (id, sequence range) is written to
//! `intents/<start>.json`. After a crash the same batch is re-sent under the same id, so sinks
//! overwrite instead of duplicating (effectively-once). An intent is removed once the checkpoint
//! has moved past it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkpoint::write_atomically;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: Uuid,
    /// First sequence of the batch.
    pub start: u64,
    /// Sequence after the batch's last record.
    pub end: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    #[error("intent i/o error in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("intent file {path} is unreadable: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

pub struct IntentLog {
    dir: PathBuf,
}

impl IntentLog {
    pub fn open(stream_dir: &Path) -> Result<Self, IntentError> {
        let dir = stream_dir.join("intents");
        std::fs::create_dir_all(&dir).map_err(|source| IntentError::Io { path: dir.clone(), source })?;
        Ok(Self { dir })
    }

    pub fn record(&self, intent: &Intent) -> Result<(), IntentError> {
        let path = self.path(intent.start);
        let bytes = serde_json::to_vec(intent).unwrap_or_default();
        write_atomically(&path, &bytes).map_err(|source| IntentError::Io { path, source })
    }

    pub fn remove(&self, intent: &Intent) -> Result<(), IntentError> {
        let path = self.path(intent.start);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(IntentError::Io { path, source }),
        }
    }

    /// Intents left by an earlier run, in sequence order.
    pub fn pending(&self) -> Result<Vec<Intent>, IntentError> {
        let io_error = |source| IntentError::Io { path: self.dir.clone(), source };
        let mut intents = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error)? {
            let path = entry.map_err(io_error)?.path();
            if path.extension().and_then(|ext| ext.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| IntentError::Io { path: path.clone(), source })?;
            let intent = serde_json::from_slice(&bytes).map_err(|source| IntentError::Parse { path, source })?;
            intents.push(intent);
        }
        intents.sort_by_key(|intent: &Intent| intent.start);
        Ok(intents)
    }

    fn path(&self, start: u64) -> PathBuf {
        self.dir.join(format!("{start:020}.json"))
    }
}
