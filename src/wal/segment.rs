//! Segment files: naming (`<first sequence, 20 digits>.wal`), listing, and reading frames one by
//! one from a byte offset, telling a clean end, a torn tail and corruption apart.

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
    /// The file ends inside a frame, or the last frame's checksum fails with nothing after it:
    /// a crash during a write.
    TornTail {
        reason: String,
    },
    /// A bad frame with data after it: not a crash artefact.
    Corrupt {
        reason: String,
    },
}

/// Read the frame at `offset` of `file`, whose length is `file_len`.
pub fn read_frame(file: &mut File, offset: u64, file_len: u64) -> io::Result<ReadOutcome> {
    if offset == file_len {
        return Ok(ReadOutcome::End);
    }
    if file_len - offset < HEADER_LEN as u64 {
        return Ok(ReadOutcome::TornTail { reason: "file ends inside a frame header".into() });
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header)?;
    let (payload_len, checksum) = frame::parse_header(&header);
    let frame_end = offset + HEADER_LEN as u64 + payload_len as u64;
    if frame_end > file_len {
        return Ok(ReadOutcome::TornTail {
            reason: format!("frame of {payload_len} bytes runs past the end of the file"),
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
            if frame_end == file_len {
                Ok(ReadOutcome::TornTail { reason })
            } else {
                Ok(ReadOutcome::Corrupt { reason })
            }
        }
    }
}

/// The result of scanning a whole segment.
#[derive(Debug)]
pub struct Scan {
    /// End of the last good frame.
    pub valid_len: u64,
    /// Sequence after the last good frame (the segment's first sequence when it holds none).
    pub end_sequence: u64,
    /// Set when the segment ends in a torn frame (bytes after `valid_len`).
    pub torn: Option<String>,
}

/// Scan a segment from the start; corruption before the tail is an error naming the offset.
pub fn scan(segment: &SegmentFile) -> Result<Scan, ScanError> {
    let io_error = |source| ScanError::Io { path: segment.path.clone(), source };
    let mut file = File::open(&segment.path).map_err(io_error)?;
    let file_len = file.metadata().map_err(io_error)?.len();
    let mut offset = 0;
    let mut end_sequence = segment.first_sequence;
    loop {
        match read_frame(&mut file, offset, file_len).map_err(io_error)? {
            ReadOutcome::Frame { frame, next_offset } => {
                end_sequence = frame.end_sequence();
                offset = next_offset;
            }
            ReadOutcome::End => return Ok(Scan { valid_len: offset, end_sequence, torn: None }),
            ReadOutcome::TornTail { reason } => {
                return Ok(Scan { valid_len: offset, end_sequence, torn: Some(reason) });
            }
            ReadOutcome::Corrupt { reason } => {
                return Err(ScanError::Corrupt { path: segment.path.clone(), offset, reason });
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read wal segment {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("wal segment {path} is corrupt at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
}
