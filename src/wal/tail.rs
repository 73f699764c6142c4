//! The newest frames, as the writer wrote them, for the stream's delivery reader. Delivery
//! usually runs a few milliseconds behind the writer, so reading those frames back from the file
//! copied every record out of the page cache and checksummed bytes that never left memory. The
//! tail hands the reader the writer's own records instead (the request's buffers, no copy), with
//! where the frame ends in its segment, so the reader goes on from the file whenever the tail no
//! longer holds what it needs (the reader fell behind, a restart, another reader took it).
//!
//! Bounded: past [`TAIL_MAX_BYTES`] of memory held the oldest frames are dropped (they are still
//! in the file). Frames enter only after their write succeeded, so the tail never holds a frame
//! the file does not; a reader still takes only frames below `committed`.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

use super::Frame;

/// Most memory the tail holds, records and bookkeeping together; what delivery has not yet read
/// beyond this is read from the file. Delivery that keeps up reads well under 1 MiB at a time; one
/// that has fallen behind gains nothing from a deeper tail, which would only hold request buffers
/// that the page cache holds anyway (5 GiB through 64 MiB buffers peaked 20 MiB higher with 16 MiB).
pub const TAIL_MAX_BYTES: usize = 4 << 20;
/// What a frame costs beyond its records' bytes: its bookkeeping, and per record (or metadata
/// entry) a `Bytes` handle. Counted so that many tiny records cannot hold far more than the bound.
const FRAME_OVERHEAD_BYTES: usize = 256;
const ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<Bytes>();

/// A frame and where it ends in its segment.
pub struct TailFrame {
    pub frame: Frame,
    /// The first sequence of the segment that holds it (which names the file).
    pub segment_first_sequence: u64,
    pub next_offset: u64,
}

#[derive(Default)]
pub struct Tail {
    inner: Mutex<TailInner>,
}

#[derive(Default)]
struct TailInner {
    /// Frames, oldest first, each with the memory it holds (counted once, on the way in).
    frames: VecDeque<(TailFrame, usize)>,
    bytes: usize,
}

impl TailInner {
    fn pop_front(&mut self) -> Option<TailFrame> {
        let (frame, held) = self.frames.pop_front()?;
        self.bytes -= held;
        Some(frame)
    }

    fn front(&self) -> Option<&Frame> {
        self.frames.front().map(|(first, _)| &first.frame)
    }
}

/// Memory a frame holds in the tail.
fn held_bytes(frame: &Frame) -> usize {
    let entries = frame.records.iter().chain(&frame.metadata);
    let source = frame.source.as_ref().map_or(0, |source| source.shard.len() + source.position.len());
    FRAME_OVERHEAD_BYTES + source + entries.map(|entry| entry.len() + ENTRY_OVERHEAD_BYTES).sum::<usize>()
}

impl Tail {
    /// Add frames just written (consecutive, in sequence order), dropping the oldest past the bound.
    pub fn push(&self, frames: impl IntoIterator<Item = TailFrame>) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for frame in frames {
            let held = held_bytes(&frame.frame);
            inner.bytes += held;
            inner.frames.push_back((frame, held));
        }
        while inner.bytes > TAIL_MAX_BYTES && inner.pop_front().is_some() {}
    }

    /// Take the frame holding `sequence`, dropping every frame before it (the reader has passed
    /// them). None when the tail does not hold it: read the file.
    pub fn take(&self, sequence: u64) -> Option<TailFrame> {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while inner.front()?.first_sequence <= sequence {
            let first = inner.pop_front()?;
            if first.frame.end_sequence() > sequence {
                return Some(first);
            }
        }
        None
    }

    /// Drop frames whose records are all below `delivered`.
    pub fn trim(&self, delivered: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while inner.front().is_some_and(|first| first.end_sequence() <= delivered) {
            inner.pop_front();
        }
    }
}
