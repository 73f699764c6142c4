//! Sequential reader over a stream's WAL from a given sequence, used for delivery and recovery
//! alike. It reads only below the committed sequence, so it never sees a half-written frame; a
//! bad checksum there is corruption and stops the stream with the segment and offset named.
//! Where an operator set a damaged range aside (`spillway wal quarantine`), the reader skips
//! that range with a warning naming it; any other missing range is `WalError::Gap`.
//! The stream's delivery reader also takes the newest frames from the writer's [`Tail`] when it
//! holds them (no copy, no checksum of bytes that never left memory), and goes on from the file
//! where the tail's frame ended when it does not.
//! Blocking file I/O: call it from `spawn_blocking`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::frame;
use super::segment::{self, ReadOutcome, SegmentFile};
use super::tail::Tail;
use super::{Frame, WalError, quarantine};

pub struct WalReader {
    dir: PathBuf,
    next_sequence: u64,
    open: Option<OpenSegment>,
    tail: Option<Arc<Tail>>,
    /// Where the last frame taken from the tail ended (segment's first sequence, offset): the
    /// file read goes on from there.
    resume: Option<(u64, u64)>,
}

struct OpenSegment {
    segment: SegmentFile,
    file: File,
    offset: u64,
}

impl WalReader {
    pub fn new(dir: PathBuf, from: u64) -> Self {
        Self { dir, next_sequence: from, open: None, tail: None, resume: None }
    }

    /// A reader that also takes frames from the writer's tail (the stream's one delivery reader:
    /// taking a frame removes it from the tail).
    pub(super) fn with_tail(dir: PathBuf, from: u64, tail: Arc<Tail>) -> Self {
        Self { tail: Some(tail), ..Self::new(dir, from) }
    }

    /// The sequence of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next_sequence
    }

    /// Frames holding records from the reader's position up to `committed` (exclusive), stopping
    /// once about `max_bytes` of records are read. Records before the position are cut from the
    /// first frame.
    pub fn read(&mut self, committed: u64, max_bytes: usize) -> Result<Vec<Frame>, WalError> {
        let mut frames = Vec::new();
        let mut bytes = 0;
        while self.next_sequence < committed && bytes < max_bytes {
            let Some(mut frame) = self.next_frame()? else {
                // The position jumped over a set-aside range; check it against `committed` again.
                continue;
            };
            if frame.end_sequence() <= self.next_sequence {
                continue;
            }
            cut_before(&mut frame, self.next_sequence);
            self.next_sequence = frame.end_sequence();
            bytes += frame.records.iter().map(|record| record.len()).sum::<usize>();
            frames.push(frame);
        }
        Ok(frames)
    }

    /// Whole frames from the reader's position up to `committed` (exclusive), appended to `out`
    /// as they are stored (their checksums verified, their records not decoded), stopping once
    /// about `max_bytes` are appended: the replicated WAL stores exactly these bytes. For a
    /// reader without a tail, whose position is a frame boundary (it re-encodes a first frame
    /// that starts before it).
    pub fn read_stored(&mut self, committed: u64, max_bytes: usize, out: &mut Vec<u8>) -> Result<(), WalError> {
        let start = out.len();
        while self.next_sequence < committed && out.len() - start < max_bytes {
            let frame_start = out.len();
            let read = |file: &mut File, offset, file_len| segment::read_frame_stored(file, offset, file_len, out);
            let Some(head) = self.next_from_file(read)? else { continue };
            if head.end_sequence() <= self.next_sequence {
                out.truncate(frame_start);
                continue;
            }
            if head.first_sequence < self.next_sequence {
                // Not a frame boundary: keep the records from the position on, as `read` does.
                let stored = Bytes::copy_from_slice(&out[frame_start..]);
                out.truncate(frame_start);
                let mut frames = frame::decode_all(stored).map_err(|reason| WalError::Corrupt {
                    path: self.dir.clone(),
                    offset: 0,
                    reason,
                })?;
                let Some(mut frame) = frames.pop() else { continue };
                cut_before(&mut frame, self.next_sequence);
                let source = frame.source.as_ref();
                frame::encode(frame.first_sequence, frame.arrival_ms, &frame.records, source, &frame.metadata, out);
            }
            self.next_sequence = head.end_sequence();
        }
        Ok(())
    }

    /// The next whole frame, moving to the following segment at the end of one. None when the
    /// position jumped over a range set aside by `spillway wal quarantine`.
    fn next_frame(&mut self) -> Result<Option<Frame>, WalError> {
        if let Some(taken) = self.tail.as_ref().and_then(|tail| tail.take(self.next_sequence)) {
            self.open = None;
            self.resume = Some((taken.segment_first_sequence, taken.next_offset));
            return Ok(Some(taken.frame));
        }
        self.next_from_file(segment::read_frame)
    }

    /// The next frame of the segment files as `read` returns it (decoded, or copied as stored).
    fn next_from_file<F>(
        &mut self,
        mut read: impl FnMut(&mut File, u64, u64) -> std::io::Result<ReadOutcome<F>>,
    ) -> Result<Option<F>, WalError> {
        loop {
            if self.open.is_none() {
                self.open = Some(match self.resume.take() {
                    Some((first_sequence, offset)) => self.reopen(first_sequence, offset)?,
                    None => self.open_segment()?,
                });
            }
            let Some(open) = self.open.as_mut() else { continue };
            let io_error = |source| WalError::Io { path: open.segment.path.clone(), source };
            let file_len = open.file.metadata().map_err(io_error)?.len();
            match read(&mut open.file, open.offset, file_len).map_err(io_error)? {
                ReadOutcome::Frame { frame, next_offset } => {
                    open.offset = next_offset;
                    return Ok(Some(frame));
                }
                ReadOutcome::End => {
                    // Committed records lie beyond this segment: they are in the next one, or
                    // an operator set them aside.
                    let finished = open.segment.path.clone();
                    self.open = None;
                    // An empty segment starts where it ends: never "move on" to itself.
                    let next = self.find_segment_starting_at(self.next_sequence)?.filter(|next| next.path != finished);
                    match next {
                        Some(next) => self.open = Some(open_at_start(next)?),
                        None => {
                            self.skip_set_aside_range()?;
                            return Ok(None);
                        }
                    }
                }
                ReadOutcome::Damaged { reason, .. } => {
                    return Err(WalError::Corrupt { path: open.segment.path.clone(), offset: open.offset, reason });
                }
            }
        }
    }

    /// Move past the set-aside range holding the position, or fail with `WalError::Gap`.
    fn skip_set_aside_range(&mut self) -> Result<(), WalError> {
        let set_aside = quarantine::set_aside_ranges(&self.dir)?;
        let Some(range) = set_aside.iter().find(|range| range.contains(self.next_sequence)) else {
            return Err(WalError::Gap { sequence: self.next_sequence });
        };
        tracing::warn!(
            wal = %self.dir.display(),
            first_skipped = self.next_sequence,
            set_aside_start = range.start,
            set_aside_end = range.end,
            quarantined_segment = %range.quarantined_segment.display(),
            "skipping wal records an operator set aside with `spillway wal quarantine`"
        );
        self.next_sequence = range.end;
        Ok(())
    }

    /// The segment that holds `next_sequence`: the last one starting at or before it.
    fn open_segment(&self) -> Result<OpenSegment, WalError> {
        let segments = segment::list(&self.dir).map_err(|source| WalError::Io { path: self.dir.clone(), source })?;
        let holder = segments
            .into_iter()
            .rev()
            .find(|segment| segment.first_sequence <= self.next_sequence)
            .ok_or(WalError::Gap { sequence: self.next_sequence })?;
        open_at_start(holder)
    }

    /// The segment a tail frame ended in, at that offset; the usual lookup when a trim has
    /// deleted it meanwhile (everything in it was delivered).
    fn reopen(&self, first_sequence: u64, offset: u64) -> Result<OpenSegment, WalError> {
        let segment = SegmentFile { first_sequence, path: segment::segment_path(&self.dir, first_sequence) };
        match File::open(&segment.path) {
            Ok(file) => Ok(OpenSegment { segment, file, offset }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => self.open_segment(),
            Err(source) => Err(WalError::Io { path: segment.path, source }),
        }
    }

    fn find_segment_starting_at(&self, sequence: u64) -> Result<Option<SegmentFile>, WalError> {
        let segments = segment::list(&self.dir).map_err(|source| WalError::Io { path: self.dir.clone(), source })?;
        Ok(segments.into_iter().find(|segment| segment.first_sequence == sequence))
    }
}

/// Drop the records of `frame` before `sequence` (a reader's position inside it).
fn cut_before(frame: &mut Frame, sequence: u64) {
    if frame.first_sequence >= sequence {
        return;
    }
    let skip = (sequence - frame.first_sequence) as usize;
    frame.records.drain(..skip);
    if !frame.metadata.is_empty() {
        // Keep one metadata entry per record.
        frame.metadata.drain(..skip);
    }
    frame.first_sequence = sequence;
}

fn open_at_start(segment: SegmentFile) -> Result<OpenSegment, WalError> {
    let file = File::open(&segment.path).map_err(|source| WalError::Io { path: segment.path.clone(), source })?;
    Ok(OpenSegment { segment, file, offset: 0 })
}
