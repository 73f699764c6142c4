//! Setting damaged WAL bytes aside, for `spillway wal quarantine`, and the set-aside records the
//! reader honours; plus the checked survey of a WAL folder that `spillway wal inspect` shows.
//!
//! Owns: the `wal-quarantine/` folder next to a stream's `wal/` folder and the JSON record of each
//! set-aside range in it.
//! Must not: run while spillway runs on the same data_dir (it reads and rewrites the files
//! directly), delete any segment bytes (damaged segments are moved, never removed), hand out
//! sequences (it only makes sure the writer's next sequence is above anything set aside), or read
//! what lies above the WAL (checkpoints, intents: the operator tool in `crate::operate` does).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::WalError;
use super::committed::{self, CommittedMark};
use super::segment::{self, Scan, SegmentFile, SegmentStatus, TailPolicy};
use crate::atomic_file::write_atomically;

pub const QUARANTINE_DIR: &str = "wal-quarantine";

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("i/o error in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Scan(#[from] segment::ScanError),
    #[error("set-aside record {path} is unreadable: {source}")]
    Record { path: PathBuf, source: serde_json::Error },
    #[error("{path} already exists in the quarantine folder; move it away first")]
    AlreadyQuarantined { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> QuarantineError + '_ {
    move |source| QuarantineError::Io { path: path.to_path_buf(), source }
}

/// The quarantine folder of the WAL in `wal_dir`: its sibling.
pub fn quarantine_dir(wal_dir: &Path) -> PathBuf {
    wal_dir.parent().unwrap_or(wal_dir).join(QUARANTINE_DIR)
}

/// A range of sequences an operator set aside: records in `[start, end)` are not delivered;
/// the bytes that held them are kept in `quarantined_segment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAside {
    pub start: u64,
    pub end: u64,
    /// Where the segment was in the WAL, and where its original bytes are now.
    pub original_segment: PathBuf,
    pub quarantined_segment: PathBuf,
    pub damaged_offset: u64,
    pub reason: String,
    /// Bytes of good frames before the damage, kept in the WAL under the original name.
    pub kept_bytes: u64,
}

impl SetAside {
    pub fn contains(&self, sequence: u64) -> bool {
        (self.start..self.end).contains(&sequence)
    }
}

/// The set-aside ranges recorded next to the WAL in `wal_dir`, by start. No quarantine folder
/// means none.
pub fn set_aside_ranges(wal_dir: &Path) -> Result<Vec<SetAside>, WalError> {
    let quarantine_dir = quarantine_dir(wal_dir);
    read_set_aside_records(&quarantine_dir).map_err(|error| WalError::Io {
        path: quarantine_dir.clone(),
        source: std::io::Error::other(error.to_string()),
    })
}

fn read_set_aside_records(quarantine_dir: &Path) -> Result<Vec<SetAside>, QuarantineError> {
    let entries = match std::fs::read_dir(quarantine_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(QuarantineError::Io { path: quarantine_dir.to_path_buf(), source }),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error(quarantine_dir))?.path();
        if path.extension().and_then(|ext| ext.to_str()) != Some("json") {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        let record = serde_json::from_slice(&bytes).map_err(|source| QuarantineError::Record { path, source })?;
        records.push(record);
    }
    records.sort_by_key(|record: &SetAside| record.start);
    Ok(records)
}

/// One segment with its full scan.
#[derive(Debug)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub first_sequence: u64,
    pub scan: Scan,
}

/// What a WAL folder holds, checked: every segment checksummed, the committed mark, and the
/// set-aside ranges recorded next to it.
#[derive(Debug)]
pub struct Survey {
    pub segments: Vec<SegmentReport>,
    /// How far the last segment was recorded as synced (see `committed`).
    pub committed_mark: Option<CommittedMark>,
    pub set_aside: Vec<SetAside>,
}

/// Checksum every segment of the WAL in `wal_dir` and list its set-aside ranges. A missing folder
/// holds nothing.
pub fn survey(wal_dir: &Path) -> Result<Survey, QuarantineError> {
    let committed_mark = load_mark(wal_dir)?;
    let mut segments = Vec::new();
    for (segment, scan) in scan_all(wal_dir, committed_mark)? {
        segments.push(SegmentReport { path: segment.path, first_sequence: segment.first_sequence, scan });
    }
    let set_aside = read_set_aside_records(&quarantine_dir(wal_dir))?;
    Ok(Survey { segments, committed_mark, set_aside })
}

fn load_mark(wal_dir: &Path) -> Result<Option<CommittedMark>, QuarantineError> {
    committed::load(wal_dir).map_err(io_error(&committed::path(wal_dir)))
}

/// Every segment with its full scan; the last one may have a torn tail above the committed mark,
/// the others may not.
fn scan_all(wal_dir: &Path, mark: Option<CommittedMark>) -> Result<Vec<(SegmentFile, Scan)>, QuarantineError> {
    let segments = match segment::list(wal_dir) {
        Ok(segments) => segments,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(QuarantineError::Io { path: wal_dir.to_path_buf(), source }),
    };
    let last_index = segments.len().saturating_sub(1);
    let mut scanned = Vec::with_capacity(segments.len());
    for (index, segment) in segments.into_iter().enumerate() {
        let policy = if index == last_index { TailPolicy::LastSegment { mark } } else { TailPolicy::ClosedSegment };
        let scan = segment::scan(&segment, policy)?;
        scanned.push((segment, scan));
    }
    Ok(scanned)
}

/// What `quarantine` did.
#[derive(Debug)]
pub enum QuarantineOutcome {
    /// Nothing was changed, and why.
    NothingToDo(String),
    SetAside(SetAside),
}

/// Move a damaged segment of the WAL in `wal_dir` (the first damaged one, or the one named by file
/// name or path) into `wal-quarantine/`, keep its good frames before the damage in the WAL under
/// the same name, and record the set-aside range so the reader skips it knowingly.
///
/// Crash-safe order: the record first, then a hard link of the original into the quarantine
/// folder, then the segment where the WAL continues (frames that verify after the damage, or an
/// empty segment above the set-aside range when the damaged one was the last), then the good
/// prefix replaces the original by rename. Running it again after a crash finds the same damage
/// and sets the same range aside.
pub fn quarantine(wal_dir: &Path, named: Option<&Path>) -> Result<QuarantineOutcome, QuarantineError> {
    let quarantine_dir = quarantine_dir(wal_dir);
    let mark = load_mark(wal_dir)?;
    let scanned = scan_all(wal_dir, mark)?;
    if scanned.is_empty() {
        return Ok(QuarantineOutcome::NothingToDo(format!("no wal segments in {}", wal_dir.display())));
    }
    let target_index = match named {
        Some(named) => {
            let wanted = named.file_name().unwrap_or(named.as_os_str());
            match scanned.iter().position(|(segment, _)| segment.path.file_name() == Some(wanted)) {
                Some(index) => index,
                None => {
                    return Ok(QuarantineOutcome::NothingToDo(format!(
                        "no segment named {} in {}",
                        named.display(),
                        wal_dir.display()
                    )));
                }
            }
        }
        None => match scanned.iter().position(|(_, scan)| matches!(scan.status, SegmentStatus::Damaged { .. })) {
            Some(index) => index,
            None => {
                return Ok(QuarantineOutcome::NothingToDo(format!("no damaged segment in {}", wal_dir.display())));
            }
        },
    };
    let (segment, scan) = &scanned[target_index];
    let (damaged_offset, reason) = match &scan.status {
        SegmentStatus::Damaged { offset, reason } => (*offset, reason.clone()),
        SegmentStatus::Ok => {
            return Ok(QuarantineOutcome::NothingToDo(format!("segment {} has no damage", segment.path.display())));
        }
        SegmentStatus::TornTail { offset, .. } => {
            return Ok(QuarantineOutcome::NothingToDo(format!(
                "segment {} only has a torn tail at offset {offset}, which the next start cuts",
                segment.path.display()
            )));
        }
    };
    let next_segment = scanned.get(target_index + 1).map(|(next, _)| next.first_sequence);
    let good_end = scan.end_sequence;
    // Frames after the damage that verify and run cleanly to the end of the file (and meet the
    // next segment, if any) are saved into a segment of their own, so only the damaged frames
    // are set aside.
    let salvage = resynced_frames_after_damage(segment, scan, damaged_offset)?
        .filter(|chain| chain.first_sequence > good_end && next_segment.is_none_or(|next| chain.end_sequence == next));
    let set_aside_end = match (&salvage, next_segment) {
        (Some(chain), _) => chain.first_sequence,
        // Sequences continue in the next segment: everything between is what the damage held.
        (None, Some(next_first_sequence)) => next_first_sequence,
        // The last segment and nothing after the damage verifies: records are contiguous and
        // each takes at least 4 bytes, so the damaged bytes (as many as the file or the committed
        // mark holds, if a cut file is shorter) hold at most `damaged_bytes / 4` records, and the
        // mark names the sequence its bytes end at. Sequences continue above both, so none that
        // was recorded is ever reused.
        (None, None) => {
            let mark = mark.filter(|mark| mark.segment_first_sequence == segment.first_sequence);
            let damaged_end = scan.file_len.max(mark.map_or(0, |mark| mark.len));
            let bound = good_end + (damaged_end - damaged_offset) / super::frame::MIN_RECORD_LEN as u64 + 1;
            bound.max(mark.map_or(0, |mark| mark.end_sequence))
        }
    };
    let file_name = segment.path.file_name().unwrap_or(segment.path.as_os_str()).to_owned();
    let quarantined_segment = quarantine_dir.join(&file_name);
    let record = SetAside {
        start: good_end,
        end: set_aside_end,
        original_segment: segment.path.clone(),
        quarantined_segment: quarantined_segment.clone(),
        damaged_offset,
        reason,
        kept_bytes: scan.valid_len,
    };

    std::fs::create_dir_all(&quarantine_dir).map_err(io_error(&quarantine_dir))?;
    let mut record_name = file_name.clone();
    record_name.push(".json");
    let record_path = quarantine_dir.join(record_name);
    let record_json = serde_json::to_vec_pretty(&record).unwrap_or_default();
    write_atomically(&record_path, &record_json).map_err(io_error(&record_path))?;

    link_into_quarantine(&segment.path, &quarantined_segment)?;
    sync_dir(&quarantine_dir)?;

    match &salvage {
        Some(chain) => {
            let salvaged = segment::segment_path(wal_dir, chain.first_sequence);
            let temporary = salvaged.with_extension("salvage");
            copy_range(&segment.path, &temporary, chain.offset, scan.file_len - chain.offset)?;
            std::fs::rename(&temporary, &salvaged).map_err(io_error(&salvaged))?;
            sync_dir(wal_dir)?;
        }
        None if next_segment.is_none() => {
            // The damaged segment was the last one: the writer continues from the last
            // segment's end, so start an empty segment at the end of the set-aside range.
            let continuation = segment::segment_path(wal_dir, set_aside_end);
            File::options().create(true).append(true).open(&continuation).map_err(io_error(&continuation))?;
            sync_dir(wal_dir)?;
        }
        None => {}
    }

    let mut temporary_name = file_name;
    temporary_name.push(".rewrite");
    let temporary = wal_dir.join(temporary_name);
    copy_range(&segment.path, &temporary, 0, scan.valid_len)?;
    std::fs::rename(&temporary, &segment.path).map_err(io_error(&segment.path))?;
    sync_dir(wal_dir)?;
    Ok(QuarantineOutcome::SetAside(record))
}

/// Frames that verify after the damage and follow each other to the end of the file.
struct ResyncedFrames {
    offset: u64,
    first_sequence: u64,
    end_sequence: u64,
}

/// Scan forward from the damage for a frame whose checksum verifies (with a plausible first
/// sequence), then follow the frames after it; None unless they run cleanly to the end.
fn resynced_frames_after_damage(
    segment: &SegmentFile,
    scan: &Scan,
    damaged_offset: u64,
) -> Result<Option<ResyncedFrames>, QuarantineError> {
    let mut file = File::open(&segment.path).map_err(io_error(&segment.path))?;
    let resynced = segment::find_verifiable_frame(&mut file, damaged_offset + 1, scan.file_len, scan.end_sequence)
        .map_err(io_error(&segment.path))?;
    let Some((resync_offset, first_frame)) = resynced else { return Ok(None) };
    let mut offset = resync_offset;
    let mut end_sequence = first_frame.first_sequence;
    loop {
        match segment::read_frame(&mut file, offset, scan.file_len).map_err(io_error(&segment.path))? {
            segment::ReadOutcome::Frame { frame, next_offset } if frame.first_sequence == end_sequence => {
                end_sequence = frame.end_sequence();
                offset = next_offset;
            }
            segment::ReadOutcome::End => {
                let first_sequence = first_frame.first_sequence;
                return Ok(Some(ResyncedFrames { offset: resync_offset, first_sequence, end_sequence }));
            }
            _ => return Ok(None),
        }
    }
}

fn link_into_quarantine(original: &Path, quarantined: &Path) -> Result<(), QuarantineError> {
    if let Ok(existing) = std::fs::metadata(quarantined) {
        let original_metadata = std::fs::metadata(original).map_err(io_error(original))?;
        if same_file(&existing, &original_metadata) {
            return Ok(()); // an earlier, interrupted run linked it already
        }
        return Err(QuarantineError::AlreadyQuarantined { path: quarantined.to_path_buf() });
    }
    if std::fs::hard_link(original, quarantined).is_ok() {
        return Ok(());
    }
    // No hard links on this filesystem: copy and sync instead.
    std::fs::copy(original, quarantined).map_err(io_error(quarantined))?;
    File::open(quarantined).and_then(|file| file.sync_all()).map_err(io_error(quarantined))
}

#[cfg(unix)]
fn same_file(left: &std::fs::Metadata, right: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    left.dev() == right.dev() && left.ino() == right.ino()
}

#[cfg(not(unix))]
fn same_file(_left: &std::fs::Metadata, _right: &std::fs::Metadata) -> bool {
    false
}

/// Write `len` bytes of `source` from `offset` to a new file `destination`, synced.
fn copy_range(source: &Path, destination: &Path, offset: u64, len: u64) -> Result<(), QuarantineError> {
    let mut input = File::open(source).map_err(io_error(source))?;
    std::io::Seek::seek(&mut input, std::io::SeekFrom::Start(offset)).map_err(io_error(source))?;
    let mut output = File::create(destination).map_err(io_error(destination))?;
    let copied =
        std::io::copy(&mut std::io::Read::take(&mut input, len), &mut output).map_err(io_error(destination))?;
    if copied != len {
        let short = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("copied {copied} of {len} bytes"));
        return Err(QuarantineError::Io { path: source.to_path_buf(), source: short });
    }
    output.flush().map_err(io_error(destination))?;
    output.sync_all().map_err(io_error(destination))
}

fn sync_dir(dir: &Path) -> Result<(), QuarantineError> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_error(dir))
}
