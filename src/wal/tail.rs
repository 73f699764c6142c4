//! The newest frames, as the writer wrote them, for the stream's delivery reader. Delivery
//! usually runs a few milliseconds behind the writer, so reading those frames back from the file
//! copied every record out of the page cache and checksummed bytes that never left memory. The
//! tail hands the reader the writer's own records instead (the request's buffers, no copy), with
//! where the frame ends in its segment, so the reader goes on from the file whenever the tail no
//! longer holds what it needs (the reader fell behind, a restart, another reader took it).
//!
//! Bounded: past [`TAIL_MAX_BYTES`] of records the oldest frames are dropped (they are still in
//! the file). Frames enter only after their write succeeded, so the tail never holds a frame the
//! file does not; a reader still takes only frames below `committed`.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::Frame;
use super::segment::SegmentFile;

/// Most record bytes the tail holds; what delivery has not yet read beyond this is read from the
/// file. Delivery that keeps up reads well under 1 MiB at a time; one that has fallen behind
/// gains nothing from a deeper tail, which would only hold request buffers in memory that the
/// page cache holds anyway (5 GiB through 64 MiB buffers peaked 20 MiB higher with 16 MiB).
pub const TAIL_MAX_BYTES: usize = 4 << 20;

/// A frame and where it ends in its segment.
pub struct TailFrame {
    pub frame: Frame,
    pub segment: SegmentFile,
    pub next_offset: u64,
}

#[derive(Default)]
pub struct Tail {
    inner: Mutex<TailInner>,
}

#[derive(Default)]
struct TailInner {
    frames: VecDeque<TailFrame>,
    bytes: usize,
}

fn record_bytes(frame: &Frame) -> usize {
    frame.records.iter().map(|record| record.len()).sum()
}

impl Tail {
    /// Add frames just written (consecutive, in sequence order), dropping the oldest past the bound.
    pub fn push(&self, frames: impl IntoIterator<Item = TailFrame>) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for frame in frames {
            inner.bytes += record_bytes(&frame.frame);
            inner.frames.push_back(frame);
        }
        while inner.bytes > TAIL_MAX_BYTES {
            let Some(dropped) = inner.frames.pop_front() else { break };
            inner.bytes -= record_bytes(&dropped.frame);
        }
    }

    /// Take the frame holding `sequence`, dropping every frame before it (the reader has passed
    /// them). None when the tail does not hold it: read the file.
    pub fn take(&self, sequence: u64) -> Option<TailFrame> {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(first) = inner.frames.front() {
            if first.frame.first_sequence > sequence {
                return None;
            }
            let first = inner.frames.pop_front()?;
            inner.bytes -= record_bytes(&first.frame);
            if first.frame.end_sequence() > sequence {
                return Some(first);
            }
        }
        None
    }

    /// Drop frames whose records are all below `delivered`.
    pub fn trim(&self, delivered: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(first) = inner.frames.front()
            && first.frame.end_sequence() <= delivered
        {
            let bytes = record_bytes(&first.frame);
            inner.frames.pop_front();
            inner.bytes -= bytes;
        }
    }
}
