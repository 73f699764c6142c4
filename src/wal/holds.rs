//! Other readers of a stream's WAL (streams with `source: { type: stream }`): each holds the WAL
//! from the sequence it has not yet copied, and segments are deleted only below the lowest of the
//! stream's own delivery checkpoint and every hold. A hold is kept in `<wal>/readers/<reader>.hold`,
//! so that after a restart the WAL keeps what a reader still needs before that reader runs again:
//! the file is written only after the reader's own append of those records was durable, so it is
//! never ahead of the truth (it may lag it by up to [`PERSIST_INTERVAL`], which only keeps a few
//! more records for a while).
//!
//! Must not: know what a reader does with the records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a moving hold is written to its file.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// A hold's file is `<reader>.hold`.
const HOLD_SUFFIX: &str = ".hold";

#[derive(Debug, Default)]
struct Hold {
    position: u64,
    persisted: u64,
    persisted_at: Option<Instant>,
}

/// The holds on one WAL and the stream's own checkpoint, in memory and on disk.
#[derive(Debug)]
pub struct Holds {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The stream's own delivery checkpoint, as last passed to `Wal::trim`.
    delivered: u64,
    holds: BTreeMap<String, Hold>,
}

impl Holds {
    /// Load the holds saved in `wal_dir/readers` (an unreadable file holds from 0: it keeps
    /// everything rather than lose a reader's records, and is named in a warning).
    pub fn load(wal_dir: &Path, delivered: u64) -> std::io::Result<Holds> {
        let dir = wal_dir.join("readers");
        let mut holds = BTreeMap::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(reader) = name.to_str().and_then(|name| name.strip_suffix(HOLD_SUFFIX)) else {
                        continue;
                    };
                    let reader = reader.to_string();
                    let text = std::fs::read_to_string(entry.path())?;
                    let position = text.trim().parse::<u64>().unwrap_or_else(|error| {
                        tracing::warn!(file = %entry.path().display(), %error, "unreadable wal reader hold; keeping every record for that reader");
                        0
                    });
                    holds.insert(reader, Hold { position, persisted: position, persisted_at: None });
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        Ok(Holds { dir, state: Mutex::new(State { delivered, holds }) })
    }

    /// No holds, none loaded (a WAL that could not be opened).
    pub fn empty(wal_dir: &Path) -> Holds {
        Holds { dir: wal_dir.join("readers"), state: Mutex::new(State { delivered: 0, holds: BTreeMap::new() }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Record the stream's own checkpoint; returns the sequence the WAL may be trimmed to.
    pub fn delivered(&self, delivered: u64) -> u64 {
        let mut state = self.state();
        state.delivered = state.delivered.max(delivered);
        state.trim_point()
    }

    /// Where the reader's hold stands (None: it holds nothing).
    #[cfg(test)]
    pub fn position(&self, reader: &str) -> Option<u64> {
        self.state().holds.get(reader).map(|hold| hold.position)
    }

    /// Lowest sequence the WAL still holds for any reader: the stream's own checkpoint or a
    /// lower hold.
    pub fn trim_point(&self) -> u64 {
        self.state().trim_point()
    }

    /// The readers holding this WAL.
    pub fn readers(&self) -> Vec<String> {
        self.state().holds.keys().cloned().collect()
    }

    /// Move (or create) `reader`'s hold to `position`: everything from it on is kept. The file is
    /// written on creation, and then at most every [`PERSIST_INTERVAL`]. Blocking file I/O.
    /// Returns the sequence the WAL may be trimmed to.
    pub fn hold(&self, reader: &str, position: u64) -> std::io::Result<u64> {
        let due = {
            let mut state = self.state();
            let hold = state.holds.entry(reader.to_string()).or_default();
            hold.position = position;
            let due = hold.persisted_at.is_none_or(|at| at.elapsed() >= PERSIST_INTERVAL);
            (due && hold.persisted != position).then_some(position).or_else(|| {
                // A new hold (never written) is written at once, whatever its position.
                hold.persisted_at.is_none().then_some(position)
            })
        };
        if let Some(position) = due {
            self.write(reader, position)?;
            let mut state = self.state();
            if let Some(hold) = state.holds.get_mut(reader) {
                hold.persisted = position;
                hold.persisted_at = Some(Instant::now());
            }
        }
        Ok(self.trim_point())
    }

    /// Create `reader`'s hold at the trim point (the oldest record still kept), atomically with
    /// respect to trims. Blocking file I/O. Returns the position.
    pub fn hold_at_trim_point(&self, reader: &str) -> std::io::Result<u64> {
        let position = {
            let mut state = self.state();
            let position = state.trim_point();
            state.holds.insert(reader.to_string(), Hold { position, persisted: position, persisted_at: None });
            position
        };
        self.write(reader, position)?;
        if let Some(hold) = self.state().holds.get_mut(reader) {
            hold.persisted_at = Some(Instant::now());
        }
        Ok(position)
    }

    /// Write every hold that moved since its file was written (at shutdown). Blocking file I/O.
    pub fn persist(&self) -> std::io::Result<()> {
        let moved: Vec<(String, u64)> = self
            .state()
            .holds
            .iter()
            .filter(|(_, hold)| hold.persisted != hold.position)
            .map(|(reader, hold)| (reader.clone(), hold.position))
            .collect();
        for (reader, position) in moved {
            self.write(&reader, position)?;
            if let Some(hold) = self.state().holds.get_mut(&reader) {
                hold.persisted = position;
            }
        }
        Ok(())
    }

    fn path(&self, reader: &str) -> PathBuf {
        self.dir.join(format!("{reader}{HOLD_SUFFIX}"))
    }

    fn write(&self, reader: &str, position: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        crate::atomic_file::write_atomically(&self.path(reader), position.to_string().as_bytes())
    }

    /// Drop `reader`'s hold (it was removed): the WAL no longer keeps records for it. Blocking.
    /// Returns the sequence the WAL may be trimmed to.
    pub fn release(&self, reader: &str) -> std::io::Result<u64> {
        self.state().holds.remove(reader);
        match std::fs::remove_file(self.path(reader)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        Ok(self.trim_point())
    }
}

impl State {
    fn trim_point(&self) -> u64 {
        self.holds.values().map(|hold| hold.position).fold(self.delivered, u64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trim_point_is_the_lowest_of_the_checkpoint_and_every_hold() {
        let dir = tempfile::tempdir().unwrap();
        let holds = Holds::load(dir.path(), 10).unwrap();
        assert_eq!(holds.trim_point(), 10);
        assert_eq!(holds.hold("raw-copy", 4).unwrap(), 4);
        assert_eq!(holds.delivered(50), 4);
        assert_eq!(holds.hold("raw-copy", 70).unwrap(), 50);
        assert_eq!(holds.hold("counts", 20).unwrap(), 20);
        assert_eq!(holds.release("counts").unwrap(), 50);
        assert_eq!(holds.readers(), ["raw-copy"]);
    }

    #[test]
    fn holds_survive_a_restart_and_a_released_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("readers")).unwrap();
        let holds = Holds::load(dir.path(), 0).unwrap();
        holds.hold("a", 5).unwrap();
        holds.hold("b", 7).unwrap();
        // Moved within the persist interval: written at shutdown.
        holds.hold("a", 9).unwrap();
        holds.persist().unwrap();
        holds.release("b").unwrap();
        let again = Holds::load(dir.path(), 3).unwrap();
        assert_eq!(again.position("a"), Some(9));
        assert_eq!(again.position("b"), None);
        assert_eq!(again.trim_point(), 3);
    }
}
