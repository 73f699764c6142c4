//! The WALs of the streams running in this process, by stream name: how a stream that reads
//! another stream (`source: { type: stream }`) finds that stream's WAL, which may start after it,
//! be removed, or come back.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Wal;

#[derive(Default)]
pub struct WalDirectory {
    wals: Mutex<BTreeMap<String, Wal>>,
}

impl WalDirectory {
    fn wals(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Wal>> {
        self.wals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn insert(&self, stream: &str, wal: Wal) {
        self.wals().insert(stream.to_string(), wal);
    }

    pub fn remove(&self, stream: &str) -> Option<Wal> {
        self.wals().remove(stream)
    }

    pub fn get(&self, stream: &str) -> Option<Wal> {
        self.wals().get(stream).cloned()
    }

    /// Every WAL with the stream it belongs to.
    pub fn all(&self) -> Vec<(String, Wal)> {
        self.wals().iter().map(|(name, wal)| (name.clone(), wal.clone())).collect()
    }
}
