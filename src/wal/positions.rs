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

use super::{SourcePosition, WalError, WalReader};
use crate::checkpoint::write_atomically;

const FILE_NAME: &str = "positions.json";
/// Record bytes read per step while recovering positions at open.
const RECOVERY_READ_BYTES: usize = 8 << 20;

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

/// The positions the WAL in `dir` holds: the saved file, then every frame from where it is
/// valid up to `end`.
pub fn recover(dir: &Path, end: u64) -> Result<(BTreeMap<String, String>, u64), WalError> {
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
    let segments = super::segment::list(dir).map_err(|source| WalError::Io { path: dir.to_path_buf(), source })?;
    let oldest = segments.first().map_or(end, |segment| segment.first_sequence);
    let from = stored.valid_at.max(oldest);
    let mut reader = WalReader::new(dir.to_path_buf(), from);
    let mut frames_read = 0u64;
    while reader.position() < end {
        let frames = reader.read(end, RECOVERY_READ_BYTES)?;
        if frames.is_empty() {
            break;
        }
        for frame in frames {
            frames_read += 1;
            if let Some(source) = frame.source {
                apply(&mut positions, source);
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
