//! Source positions of pulled shards: shard → the cursor after the newest record the WAL holds
//! durably. Frames carry them; this small file (`positions.json`, rewritten atomically about once
//! a second and before segments are deleted) says which WAL sequence it is valid at, so opening
//! the WAL reads only the frames after that instead of the whole backlog, and positions of
//! trimmed segments survive: a fully delivered (empty) WAL still knows where every shard stands.
//!
//! Must not: interpret positions (they are the source's own strings).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::segment::ReadOutcome;
use super::{SourcePosition, WalError};
use crate::atomic_file::write_atomically;

const FILE_NAME: &str = "positions.json";

/// Shard → position; shared by the writer (which moves it after durable appends) and readers.
pub type SharedPositions = Arc<Mutex<BTreeMap<String, String>>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// Every frame below this sequence is reflected in `positions`.
    valid_at: u64,
    positions: BTreeMap<String, String>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The positions the WAL in `dir` holds: the saved file, then every frame after where it is
/// valid, in the order written. Called at open, after a torn tail is cut, so every frame on disk
/// is whole. Frames without records count too: they carry markers (a `LATEST` start time, a
/// closed shard, a forgotten file) that must survive a crash before the file is next saved.
pub fn recover(dir: &Path) -> Result<(BTreeMap<String, String>, u64), WalError> {
    let file = path(dir);
    let stored = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice::<Stored>(&bytes).map_err(|error| WalError::Io {
            path: file.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Stored::default(),
        Err(source) => return Err(WalError::Io { path: file, source }),
    };
    let mut positions = stored.positions;
    let from = stored.valid_at;
    let segments = super::segment::list(dir).map_err(|source| WalError::Io { path: dir.to_path_buf(), source })?;
    // From the segment holding `from` (or the oldest left, when older ones were trimmed).
    let first = segments.iter().rposition(|segment| segment.first_sequence <= from).unwrap_or(0);
    let mut frames_read = 0u64;
    for segment in &segments[first..] {
        let io_error = |source| WalError::Io { path: segment.path.clone(), source };
        let mut file = std::fs::File::open(&segment.path).map_err(io_error)?;
        let file_len = file.metadata().map_err(io_error)?.len();
        let mut offset = 0;
        loop {
            match super::segment::read_frame(&mut file, offset, file_len).map_err(io_error)? {
                ReadOutcome::Frame { frame, next_offset } => {
                    offset = next_offset;
                    // Frames wholly below `from` are in the saved file already.
                    let after_saved = frame.end_sequence() > from || frame.first_sequence >= from;
                    if after_saved && let Some(source) = frame.source {
                        frames_read += 1;
                        apply(&mut positions, source);
                    }
                }
                ReadOutcome::End => break,
                ReadOutcome::Damaged { reason, .. } => {
                    return Err(WalError::Corrupt { path: segment.path.clone(), offset, reason });
                }
            }
        }
    }
    Ok((positions, frames_read))
}

/// Move a shard's position; an empty position forgets the shard (a source whose shard is gone
/// for good, such as a deleted log file, so that the map does not grow without bound).
pub fn apply(positions: &mut BTreeMap<String, String>, source: SourcePosition) {
    if source.position.is_empty() {
        positions.remove(&source.shard);
    } else {
        positions.insert(source.shard, source.position);
    }
}

/// Save the positions valid at `valid_at` (blocking: write, fsync, rename, fsync the directory).
pub fn save(dir: &Path, valid_at: u64, positions: &BTreeMap<String, String>) -> std::io::Result<()> {
    let stored = Stored { valid_at, positions: positions.clone() };
    let bytes = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
    write_atomically(&path(dir), &bytes)
}
