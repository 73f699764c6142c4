//! Segment files: naming (`<first sequence, 20 digits>.wal`), listing, and reading frames one by
//! one from a byte offset, telling a clean end, an unacknowledged torn tail and damage in
//! acknowledged data apart.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::frame::{self, DecodeError, Frame, HEADER_LEN};

const EXTENSION: &str = "wal";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_sequence: u64,
    pub path: PathBuf,
}

pub fn segment_path(dir: &Path, first_sequence: u64) -> PathBuf {
    dir.join(format!("{first_sequence:020}.{EXTENSION}"))
}

/// Segments in the directory, oldest first. Other files are ignored.
pub fn list(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|ext| ext.to_str()) != Some(EXTENSION) {
            continue;
        }
        let Some(first_sequence) = path.file_stem().and_then(|stem| stem.to_str()).and_then(|stem| stem.parse().ok())
        else {
            continue;
        };
        segments.push(SegmentFile { first_sequence, path });
    }
    segments.sort_by_key(|segment| segment.first_sequence);
    Ok(segments)
}

/// What reading at an offset found.
#[derive(Debug)]
pub enum ReadOutcome {
    Frame {
        frame: Frame,
        next_offset: u64,
    },
    /// The file ends exactly at the offset.
    End,
    /// The bytes at the offset are not a valid frame. Whether that is a torn tail or damage in
    /// acknowledged data depends on where the segment stands and what follows: see [`scan`].
    Damaged {
        reason: String,
        /// Where the bad frame claims to end, capped at the end of the file (a header cut short
        /// or a length running past the end give the file's length).
        frame_end: u64,
    },
}

/// Read the frame at `offset` of `file`, whose length is `file_len`.
pub fn read_frame(file: &mut File, offset: u64, file_len: u64) -> io::Result<ReadOutcome> {
    if offset == file_len {
        return Ok(ReadOutcome::End);
    }
    if file_len - offset < HEADER_LEN as u64 {
        return Ok(ReadOutcome::Damaged { reason: "file ends inside a frame header".into(), frame_end: file_len });
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header)?;
    let (payload_len, checksum) = frame::parse_header(&header);
    let frame_end = offset + HEADER_LEN as u64 + payload_len as u64;
    if payload_len == 0 {
        // crc32c of an empty payload is 0, so an all-zero header would otherwise verify.
        return Ok(ReadOutcome::Damaged { reason: "zero-length frame".into(), frame_end });
    }
    if frame_end > file_len {
        return Ok(ReadOutcome::Damaged {
            reason: format!("frame of {payload_len} bytes runs past the end of the file"),
            frame_end: file_len,
        });
    }
    let mut payload = BytesMut::zeroed(payload_len);
    file.read_exact(&mut payload)?;
    let payload: Bytes = payload.freeze();
    match frame::decode(payload, checksum) {
        Ok(frame) => Ok(ReadOutcome::Frame { frame, next_offset: frame_end }),
        Err(error) => {
            let reason = match error {
                DecodeError::Checksum => "checksum mismatch".to_string(),
                DecodeError::Malformed(what) => what.to_string(),
            };
            Ok(ReadOutcome::Damaged { reason, frame_end })
        }
    }
}

/// How a scan treats bad bytes after the last good frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailPolicy {
    /// The segment the writer appended to last: a crash may have left an unacknowledged torn
    /// write at its end (a partial frame, or a zero-filled extension after a power loss).
    LastSegment,
    /// A segment closed by rotation (synced before the next one was created): any bad byte is
    /// damage in acknowledged data.
    ClosedSegment,
}

/// Where a segment's good frames end, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentStatus {
    Ok,
    /// An unacknowledged torn write at the end of the last segment; opening the WAL cuts it.
    TornTail {
        offset: u64,
        reason: String,
    },
    /// Damage in acknowledged data.
    Damaged {
        offset: u64,
        reason: String,
    },
}

/// The result of scanning a whole segment.
#[derive(Debug)]
pub struct Scan {
    /// End of the last good frame.
    pub valid_len: u64,
    /// The file's length when scanned.
    pub file_len: u64,
    /// Sequence after the last good frame (the segment's first sequence when it holds none).
    pub end_sequence: u64,
    /// Good frames and the records in them.
    pub frames: u64,
    pub records: u64,
    pub status: SegmentStatus,
}

/// Scan a segment from the start, checksumming every frame.
pub fn scan(segment: &SegmentFile, policy: TailPolicy) -> Result<Scan, ScanError> {
    let io_error = |source| ScanError::Io { path: segment.path.clone(), source };
    let mut file = File::open(&segment.path).map_err(io_error)?;
    let file_len = file.metadata().map_err(io_error)?.len();
    let mut offset = 0;
    let mut end_sequence = segment.first_sequence;
    let (mut frames, mut records) = (0, 0);
    let status = loop {
        match read_frame(&mut file, offset, file_len).map_err(io_error)? {
            ReadOutcome::Frame { frame, next_offset } => {
                end_sequence = frame.end_sequence();
                frames += 1;
                records += frame.records.len() as u64;
                offset = next_offset;
            }
            ReadOutcome::End => break SegmentStatus::Ok,
            ReadOutcome::Damaged { reason, frame_end } => {
                let damage = Damage { offset, frame_end, file_len, expected_sequence: end_sequence, reason };
                break classify_damage(&mut file, damage, policy).map_err(io_error)?;
            }
        }
    };
    Ok(Scan { valid_len: offset, file_len, end_sequence, frames, records, status })
}

/// A bad frame found by a scan.
struct Damage {
    offset: u64,
    frame_end: u64,
    file_len: u64,
    /// The sequence the bad frame should have started at.
    expected_sequence: u64,
    reason: String,
}

/// Torn tail or damage? Only the last segment can have a torn tail, and only when nothing
/// written after the bad frame survived: the bad frame runs past or up to the end of the file,
/// or only zero bytes follow it (a power loss after the file was extended but before its data
/// reached the disk). With `fsync: always` nothing is acknowledged before every byte before it
/// is synced, so that is the signature of an unacknowledged write. Non-zero bytes after the bad
/// frame, or any frame after it that verifies (a bad length can make a frame "run past the
/// end"), mean acknowledged data follows: damage, never cut.
fn classify_damage(file: &mut File, damage: Damage, policy: TailPolicy) -> io::Result<SegmentStatus> {
    let Damage { offset, frame_end, file_len, expected_sequence, reason } = damage;
    if policy == TailPolicy::ClosedSegment {
        return Ok(SegmentStatus::Damaged { offset, reason });
    }
    let nothing_written_after = is_all_zero(file, frame_end, file_len)?;
    if nothing_written_after && find_verifiable_frame(file, offset + 1, file_len, expected_sequence)?.is_none() {
        let reason = match file_len - frame_end {
            0 => reason,
            zeros => format!("{reason}; only {zeros} zero bytes follow"),
        };
        return Ok(SegmentStatus::TornTail { offset, reason });
    }
    Ok(SegmentStatus::Damaged { offset, reason: format!("{reason}, with more data after it") })
}

fn is_all_zero(file: &mut File, from: u64, file_len: u64) -> io::Result<bool> {
    file.seek(SeekFrom::Start(from))?;
    let mut remaining = file_len - from;
    let mut chunk = vec![0u8; 64 << 10];
    while remaining > 0 {
        let want = remaining.min(chunk.len() as u64) as usize;
        file.read_exact(&mut chunk[..want])?;
        if chunk[..want].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        remaining -= want as u64;
    }
    Ok(true)
}

/// The first offset at or after `from` holding a frame that verifies and whose first sequence
/// could follow `expected_sequence` (records are contiguous in a segment and each takes at least
/// 4 bytes, so it is at most `(offset - from) / 4` above it). Reads the file in windows, so
/// memory stays small whatever the segment size; only damage makes anyone call this.
pub fn find_verifiable_frame(
    file: &mut File,
    from: u64,
    file_len: u64,
    expected_sequence: u64,
) -> io::Result<Option<(u64, Frame)>> {
    use std::os::unix::fs::FileExt;

    const WINDOW_BYTES: usize = 1 << 20;
    // A candidate needs its header and the first sequence at the start of its payload.
    const PROBE_LEN: usize = HEADER_LEN + 8;
    let mut window = vec![0u8; WINDOW_BYTES + PROBE_LEN];
    let mut window_start = from;
    while window_start + PROBE_LEN as u64 <= file_len {
        let window_len = (file_len - window_start).min(window.len() as u64) as usize;
        file.read_exact_at(&mut window[..window_len], window_start)?;
        let probes = window_len - PROBE_LEN + 1;
        for start in 0..probes.min(WINDOW_BYTES) {
            let offset = window_start + start as u64;
            let Ok(header) = <[u8; HEADER_LEN]>::try_from(&window[start..start + HEADER_LEN]) else { break };
            let (payload_len, checksum) = frame::parse_header(&header);
            let frame_end = offset + HEADER_LEN as u64 + payload_len as u64;
            if payload_len < frame::PAYLOAD_FIXED_LEN || frame_end > file_len {
                continue;
            }
            let sequence_bytes = &window[start + HEADER_LEN..start + PROBE_LEN];
            let first_sequence = u64::from_le_bytes(sequence_bytes.try_into().unwrap_or_default());
            let skipped_bytes = offset + 1 - from;
            let highest_plausible = expected_sequence.saturating_add(skipped_bytes / frame::MIN_RECORD_LEN as u64 + 1);
            if first_sequence < expected_sequence || first_sequence > highest_plausible {
                continue;
            }
            let mut payload = BytesMut::zeroed(payload_len);
            file.read_exact_at(&mut payload, offset + HEADER_LEN as u64)?;
            if let Ok(found) = frame::decode(payload.freeze(), checksum) {
                return Ok(Some((offset, found)));
            }
        }
        window_start += WINDOW_BYTES as u64;
    }
    Ok(None)
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read wal segment {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("wal segment {path} is corrupt at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
}
