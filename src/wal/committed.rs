//! The committed mark: a durable record of how much of the active segment was synced, so that
//! recovery can tell damage in acknowledged data from a write that never completed.
//!
//! File `committed` in the WAL folder, 1 KiB, two slots of one record each (at offsets 0 and 512,
//! so a torn write of one sector never reaches the other):
//!
//! ```text
//! slot = magic "SWCM" | generation: u64 LE | segment_first_sequence: u64 LE | len: u64 LE
//!        | end_sequence: u64 LE | crc32c(everything before): u32 LE
//! ```
//!
//! A mark says: the segment starting at `segment_first_sequence` held `len` bytes of frames
//! (records below `end_sequence`) that were synced before the mark was written. Each write goes
//! to the slot the other one is not in (by generation) and is followed by one `fdatasync` of
//! this small file; loading takes the valid slot with the highest generation, so a write cut
//! short leaves the previous mark, which claims less, never more.
//!
//! The writer writes a mark at open, at most once per [`MARK_INTERVAL`] while the synced length
//! moves (after the group's acknowledgements, never in a group's path), and at a clean shutdown.
//!
//! Why this shape. Recording the committed length after every group would cost a second sync per
//! group commit; carrying it in the next group's frames (or chaining checksums) says nothing
//! about the newest group, which is exactly the one a crash leaves in doubt. The bytes themselves
//! settle most cases (see `segment`: a torn write only ends the file early or leaves zeros), and
//! this mark covers what they cannot, a file cut or zeroed below what was synced, for everything
//! but the last second before a crash, at one small sync a second at most. The WAL never
//! pre-allocates segments: the file's length must stay where the writer stopped.
//!
//! Must not: claim bytes that were not synced when it was written.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const FILE_NAME: &str = "committed";
/// How often, at most, the writer records the synced length while records flow.
pub const MARK_INTERVAL: Duration = Duration::from_secs(1);

const MAGIC: &[u8; 4] = b"SWCM";
const SLOT_LEN: usize = 4 + 8 * 4 + 4;
const SLOT_STRIDE: u64 = 512;

/// How far a segment is known to be synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedMark {
    pub segment_first_sequence: u64,
    /// Bytes of frames from the segment's start, all synced.
    pub len: u64,
    /// The sequence after the last record in those bytes.
    pub end_sequence: u64,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The newest mark in `dir`; None when there is no file or no slot verifies.
pub fn load(dir: &Path) -> io::Result<Option<CommittedMark>> {
    let file = match File::open(path(dir)) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    Ok(newest_slot(&file)?.map(|(_, mark)| mark))
}

/// The generation of the newest mark in `dir` (0 without one): how many marks were written.
#[cfg(test)]
pub fn newest_generation(dir: &Path) -> io::Result<u64> {
    Ok(newest_slot(&File::open(path(dir))?)?.map_or(0, |(generation, _)| generation))
}

fn newest_slot(file: &File) -> io::Result<Option<(u64, CommittedMark)>> {
    let mut newest: Option<(u64, CommittedMark)> = None;
    for slot in 0..2 {
        let mut bytes = [0u8; SLOT_LEN];
        match file.read_exact_at(&mut bytes, slot * SLOT_STRIDE) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(error) => return Err(error),
        }
        if let Some((generation, mark)) = decode(&bytes)
            && newest.is_none_or(|(newest_generation, _)| generation > newest_generation)
        {
            newest = Some((generation, mark));
        }
    }
    Ok(newest)
}

fn encode(generation: u64, mark: CommittedMark) -> [u8; SLOT_LEN] {
    let mut bytes = [0u8; SLOT_LEN];
    bytes[..4].copy_from_slice(MAGIC);
    let fields = [generation, mark.segment_first_sequence, mark.len, mark.end_sequence];
    for (index, field) in fields.iter().enumerate() {
        bytes[4 + index * 8..12 + index * 8].copy_from_slice(&field.to_le_bytes());
    }
    let checksum = crc32c::crc32c(&bytes[..SLOT_LEN - 4]);
    bytes[SLOT_LEN - 4..].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8; SLOT_LEN]) -> Option<(u64, CommittedMark)> {
    let (body, checksum) = bytes.split_at(SLOT_LEN - 4);
    if &body[..4] != MAGIC || crc32c::crc32c(body).to_le_bytes() != checksum {
        return None;
    }
    let field = |index: usize| {
        let start = 4 + index * 8;
        body.get(start..start + 8).and_then(|field| field.try_into().ok()).map(u64::from_le_bytes)
    };
    let mark = CommittedMark { segment_first_sequence: field(1)?, len: field(2)?, end_sequence: field(3)? };
    Some((field(0)?, mark))
}

/// The writer's handle on the mark file.
pub struct MarkFile {
    file: File,
    generation: u64,
    /// The mark on disk (as loaded or last written).
    current: Option<CommittedMark>,
}

impl MarkFile {
    /// Open or create the mark file in `dir` (the caller syncs the directory).
    pub fn open(dir: &Path) -> io::Result<MarkFile> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path(dir))?;
        let newest = newest_slot(&file)?;
        Ok(MarkFile {
            file,
            generation: newest.map_or(0, |(generation, _)| generation),
            current: newest.map(|(_, mark)| mark),
        })
    }

    pub fn current(&self) -> Option<CommittedMark> {
        self.current
    }

    /// Record `mark` durably: one write into the older slot and one `fdatasync`. The bytes it
    /// claims must already be synced.
    pub fn write(&mut self, mark: CommittedMark) -> io::Result<()> {
        let generation = self.generation + 1;
        let slot = generation % 2;
        self.file.write_all_at(&encode(generation, mark), slot * SLOT_STRIDE)?;
        self.file.sync_data()?;
        self.generation = generation;
        self.current = Some(mark);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(len: u64) -> CommittedMark {
        CommittedMark { segment_first_sequence: 7, len, end_sequence: 7 + len / 10 }
    }

    #[test]
    fn the_newest_mark_wins_and_a_torn_slot_leaves_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None, "no file, no mark");
        let mut file = MarkFile::open(dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None, "an empty file holds no mark");
        file.write(mark(100)).unwrap();
        file.write(mark(200)).unwrap();
        file.write(mark(300)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(mark(300)));
        let reopened = MarkFile::open(dir.path()).unwrap();
        assert_eq!((reopened.generation, reopened.current()), (3, Some(mark(300))));

        // Generation 3 went to slot 1; damage it as a torn write would.
        let bytes = std::fs::read(path(dir.path())).unwrap();
        let mut torn = bytes.clone();
        torn[SLOT_STRIDE as usize + 20] ^= 0x01;
        std::fs::write(path(dir.path()), &torn).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(mark(200)), "the older slot still verifies");
        let mut reopened = MarkFile::open(dir.path()).unwrap();
        reopened.write(mark(400)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(mark(400)), "the next write replaces the torn slot");
    }
}
