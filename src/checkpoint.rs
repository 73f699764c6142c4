//! Per-stream checkpoint: the sequence below which every record is delivered or written to the
//! error output. Stored locally as a small file replaced atomically (write, fsync, rename, fsync
//! the directory), so a crash leaves either the old or the new value.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

// Kept here too for the callers that import it from the checkpoint (`app`, `control::catalog`).
pub use crate::atomic_file::write_atomically;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint i/o error in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint file {path} is unreadable: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    delivered: u64,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
}

impl Checkpoint {
    pub fn new(stream_dir: &Path) -> Self {
        Self { path: stream_dir.join("checkpoint.json") }
    }

    /// The stored checkpoint, 0 when none was stored yet.
    pub fn load(&self) -> Result<u64, CheckpointError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<Stored>(&bytes)
                .map(|stored| stored.delivered)
                .map_err(|source| CheckpointError::Parse { path: self.path.clone(), source }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(CheckpointError::Io { path: self.path.clone(), source }),
        }
    }

    pub fn store(&self, delivered: u64) -> Result<(), CheckpointError> {
        let bytes = serde_json::to_vec(&Stored { delivered }).unwrap_or_default();
        write_atomically(&self.path, &bytes).map_err(|source| CheckpointError::Io { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint::new(dir.path());
        assert_eq!(checkpoint.load().unwrap(), 0);
        checkpoint.store(1234).unwrap();
        checkpoint.store(5678).unwrap();
        assert_eq!(Checkpoint::new(dir.path()).load().unwrap(), 5678);
    }
}
