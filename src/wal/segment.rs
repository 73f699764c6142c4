//! Segment files: naming (`<first sequence, 20 digits>.wal`), listing, and reading frames one by
//! one from a byte offset, telling a clean end, an unacknowledged torn tail and damage in
//! acknowledged data apart.
//!
//! How the last segment's bad bytes are classified (closed segments were synced whole before
//! the next one was created, so any bad byte there is damage). Frames are appended in order and
//! a group is acknowledged only after its `fdatasync` returned; the WAL never pre-allocates, so
//! the file's length is where the writer stopped. A write whose sync never completed can leave:
//!
//! - after a process crash (the kernel's page cache survives): an exact prefix of what was
//!   written, so the file ends inside the last frame;
//! - after a power loss or kernel crash: also blocks that were never written back, which read as
//!   zeros (the file may have been extended before its data reached the disk).
//!
//! Anything else is damage in acknowledged data: bytes below the committed mark (see
//! `committed`: the synced length, recorded at most once a second and at shutdown), a file
//! shorter than that mark, non-zero bytes or a verifying frame after the bad frame, a frame that
//! lies wholly in the file with a bad checksum and no zero-filled block, or a length field that
//! runs past the end of the file while a shorter frame of the same bytes verifies. Only a bad
//! frame at the end of the file that is cut short, or reads partly as zeros, and lies above the
//! mark is a torn tail, cut at open with a warning.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::committed::CommittedMark;
use super::frame::{self, DecodeError, Frame, FrameHead, HEADER_LEN};

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

/// What reading at an offset found: a decoded [`Frame`], or with [`read_frame_stored`] the
/// [`FrameHead`] of a frame copied as stored.
#[derive(Debug)]
pub enum ReadOutcome<F = Frame> {
    Frame {
        frame: F,
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
        /// The file ends inside the frame (its header, or before the end its length gives).
        cut_short: bool,
        /// The checksum its header holds (when the header is whole).
        checksum: u32,
    },
}

/// Read the frame at `offset` of `file`, whose length is `file_len`.
pub fn read_frame(file: &mut File, offset: u64, file_len: u64) -> io::Result<ReadOutcome> {
    let mut stored = Vec::new();
    let (checksum, frame_end) = match read_stored(file, offset, file_len, &mut stored)? {
        Ok(read) => read,
        Err(outcome) => return Ok(outcome),
    };
    let payload = Bytes::from(stored).slice(HEADER_LEN..);
    Ok(match frame::decode(payload, checksum) {
        Ok(frame) => ReadOutcome::Frame { frame, next_offset: frame_end },
        Err(error) => damaged(error, frame_end, checksum),
    })
}

/// Append the frame at `offset` to `out` as it is stored (header and payload), its checksum
/// verified but its records not decoded; `out` is left as it was unless a frame is returned.
pub fn read_frame_stored(
    file: &mut File,
    offset: u64,
    file_len: u64,
    out: &mut Vec<u8>,
) -> io::Result<ReadOutcome<FrameHead>> {
    let start = out.len();
    let (checksum, frame_end) = match read_stored(file, offset, file_len, out)? {
        Ok(read) => read,
        Err(outcome) => return Ok(outcome),
    };
    Ok(match frame::verify(&out[start + HEADER_LEN..], checksum) {
        Ok(head) => ReadOutcome::Frame { frame: head, next_offset: frame_end },
        Err(error) => {
            out.truncate(start);
            damaged(error, frame_end, checksum)
        }
    })
}

/// Append the bytes of the frame at `offset` to `out` (nothing checked but its length), and
/// return its checksum and where it ends; or what lies there instead (never a frame).
fn read_stored<F>(
    file: &mut File,
    offset: u64,
    file_len: u64,
    out: &mut Vec<u8>,
) -> io::Result<Result<(u32, u64), ReadOutcome<F>>> {
    if offset == file_len {
        return Ok(Err(ReadOutcome::End));
    }
    if file_len - offset < HEADER_LEN as u64 {
        let reason = "file ends inside a frame header".into();
        return Ok(Err(ReadOutcome::Damaged { reason, frame_end: file_len, cut_short: true, checksum: 0 }));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header)?;
    let (payload_len, checksum) = frame::parse_header(&header);
    let frame_end = offset + HEADER_LEN as u64 + payload_len as u64;
    if payload_len == 0 {
        // crc32c of an empty payload is 0, so an all-zero header would otherwise verify.
        let reason = "zero-length frame".into();
        return Ok(Err(ReadOutcome::Damaged { reason, frame_end, cut_short: false, checksum }));
    }
    if frame_end > file_len {
        return Ok(Err(ReadOutcome::Damaged {
            reason: format!("frame of {payload_len} bytes runs past the end of the file"),
            frame_end: file_len,
            cut_short: true,
            checksum,
        }));
    }
    let start = out.len();
    out.reserve(HEADER_LEN + payload_len);
    out.extend_from_slice(&header);
    // Read into the reserved room as it is (no zeroing first: frames are megabytes, and this is
    // the one thread that reads a stream's WAL back).
    match file.take(payload_len as u64).read_to_end(out) {
        Ok(read) if read == payload_len => Ok(Ok((checksum, frame_end))),
        Ok(_) => {
            out.truncate(start);
            Err(io::ErrorKind::UnexpectedEof.into())
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

fn damaged<F>(error: DecodeError, frame_end: u64, checksum: u32) -> ReadOutcome<F> {
    let reason = match error {
        DecodeError::Checksum => "checksum mismatch".to_string(),
        DecodeError::Malformed(what) => what.to_string(),
    };
    ReadOutcome::Damaged { reason, frame_end, cut_short: false, checksum }
}

/// How a scan treats bad bytes after the last good frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailPolicy {
    /// The segment the writer appended to last: a crash may have left an unacknowledged torn
    /// write at its end (a partial frame, or blocks that read as zeros after a power loss), but
    /// never below the committed mark, if it names this segment.
    LastSegment { mark: Option<CommittedMark> },
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
    let committed_len = match policy {
        TailPolicy::LastSegment { mark: Some(mark) } if mark.segment_first_sequence == segment.first_sequence => {
            mark.len
        }
        _ => 0,
    };
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
            ReadOutcome::End if offset < committed_len => {
                let missing = committed_len - offset;
                let reason = format!(
                    "the file ends {missing} bytes before its committed length {committed_len}: acknowledged frames are missing"
                );
                break SegmentStatus::Damaged { offset, reason };
            }
            ReadOutcome::End => break SegmentStatus::Ok,
            ReadOutcome::Damaged { reason, frame_end, cut_short, checksum } => {
                let damage = Damage {
                    offset,
                    frame_end,
                    file_len,
                    cut_short,
                    checksum,
                    expected_sequence: end_sequence,
                    reason,
                };
                break classify_damage(&mut file, damage, policy, committed_len).map_err(io_error)?;
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
    cut_short: bool,
    checksum: u32,
    /// The sequence the bad frame should have started at.
    expected_sequence: u64,
    reason: String,
}

/// Torn tail or damage? See the module comment: only the last segment can have a torn tail,
/// only above its committed mark, and only when nothing written after the bad frame survived
/// (zero bytes at most) and the bad frame itself looks like a write that never completed: the
/// file ends inside it, or part of it reads as zeros.
fn classify_damage(
    file: &mut File,
    damage: Damage,
    policy: TailPolicy,
    committed_len: u64,
) -> io::Result<SegmentStatus> {
    let Damage { offset, frame_end, file_len, cut_short, checksum, expected_sequence, reason } = damage;
    if policy == TailPolicy::ClosedSegment {
        return Ok(SegmentStatus::Damaged { offset, reason });
    }
    if offset < committed_len {
        let reason = format!("{reason}, below the committed length {committed_len} (acknowledged and synced)");
        return Ok(SegmentStatus::Damaged { offset, reason });
    }
    let nothing_written_after = is_all_zero(file, frame_end, file_len)?;
    if !nothing_written_after || find_verifiable_frame(file, offset + 1, file_len, expected_sequence)?.is_some() {
        return Ok(SegmentStatus::Damaged { offset, reason: format!("{reason}, with more data after it") });
    }
    let zeros_after = match file_len - frame_end {
        0 => String::new(),
        zeros => format!("; only {zeros} zero bytes follow"),
    };
    if cut_short {
        if let Some(true_len) = verifying_shorter_frame(file, offset, file_len, expected_sequence, checksum)? {
            let reason = format!(
                "{reason}, but its first {true_len} payload bytes verify against its checksum: its length field is damaged"
            );
            return Ok(SegmentStatus::Damaged { offset, reason });
        }
        return Ok(SegmentStatus::TornTail { offset, reason: format!("{reason}{zeros_after}") });
    }
    if is_all_zero(file, offset, frame_end)? {
        // Zeros from the bad frame to the end of the file: an extension whose data never arrived.
        return Ok(SegmentStatus::TornTail { offset, reason: format!("{reason}{zeros_after}") });
    }
    if let Some(block) = zero_block_in(file, offset, frame_end)? {
        let reason = format!(
            "{reason}; bytes {block:?} read as zeros, as a write lost in a power loss leaves them{zeros_after}"
        );
        return Ok(SegmentStatus::TornTail { offset, reason });
    }
    let reason = format!("{reason} in a frame wholly on disk without a zero-filled block: not a torn write");
    Ok(SegmentStatus::Damaged { offset, reason })
}

/// Blocks a lost write leaves as zeros are at least this big and aligned to it (the sector;
/// file system blocks and pages are multiples of it).
const LOST_BLOCK_LEN: u64 = 512;
/// A block cut by the frame's start or end counts only with at least this many bytes in the
/// frame: a few zero bytes (a length field's high bytes) are ordinary data, and erring this way
/// stops the stream rather than cutting acknowledged records.
const MIN_ZERO_STRETCH: u64 = 32;

/// The first stretch of `[from, to)` that is a whole [`LOST_BLOCK_LEN`]-aligned block cut to
/// that range (at least [`MIN_ZERO_STRETCH`] bytes of it) and holds only zeros: what a block
/// never written back reads as.
fn zero_block_in(file: &mut File, from: u64, to: u64) -> io::Result<Option<std::ops::Range<u64>>> {
    use std::os::unix::fs::FileExt;

    let mut block = vec![0u8; LOST_BLOCK_LEN as usize];
    let mut start = from;
    while start < to {
        let end = ((start / LOST_BLOCK_LEN + 1) * LOST_BLOCK_LEN).min(to);
        let len = (end - start) as usize;
        file.read_exact_at(&mut block[..len], start)?;
        if end - start >= MIN_ZERO_STRETCH && block[..len].iter().all(|&byte| byte == 0) {
            return Ok(Some(start..end));
        }
        start = end;
    }
    Ok(None)
}

/// For a frame whose length runs past the end of the file: the payload length, shorter than the
/// bytes left, at which the payload parses as a frame starting at `expected_sequence` and
/// matches `checksum`. Some means the bytes are all there and only the length field is wrong.
fn verifying_shorter_frame(
    file: &mut File,
    offset: u64,
    file_len: u64,
    expected_sequence: u64,
    checksum: u32,
) -> io::Result<Option<usize>> {
    use std::os::unix::fs::FileExt;

    let payload_start = offset + HEADER_LEN as u64;
    if payload_start >= file_len {
        return Ok(None);
    }
    let mut payload = vec![0u8; (file_len - payload_start) as usize];
    file.read_exact_at(&mut payload, payload_start)?;
    let found = frame::plausible_payload_lens(&payload, expected_sequence)
        .into_iter()
        .find(|&len| crc32c::crc32c(&payload[..len]) == checksum);
    Ok(found)
}

/// Whether `[from, to)` of the file holds only zero bytes.
fn is_all_zero(file: &mut File, from: u64, to: u64) -> io::Result<bool> {
    file.seek(SeekFrom::Start(from))?;
    let mut remaining = to - from;
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
