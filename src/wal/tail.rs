//! The newest frames the writer appended, kept in memory for a little while. Delivery reads right
//! behind the writer, so it usually takes the frame from here: no `read` from the page cache, no
//! payload buffer to allocate and fault in, no checksum pass, no decoding. A frame leaves when a
//! reader takes it, when a reader passes it, or when the cache is over its byte bound (a reader
//! that falls behind then reads the file, as before). Readers of older ranges (a retried batch,
//! a rebuild after a restart) always read the file.
//!
//! Must not: hold a frame before its write succeeded (and, with `fsync: always`, was synced):
//! the writer pushes it only then, just before publishing the committed sequence.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::frame::Frame;

/// Record bytes held per WAL. Enough for several reads of the delivery loop behind the writer;
/// small beside the open batches' budget, and the whole cost of a lagging reader.
pub const TAIL_CACHE_BYTES: usize = 8 << 20;

/// A frame as written, with where it ends on disk so a reader can go on from the file after it.
#[derive(Debug)]
pub struct CachedFrame {
    pub frame: Frame,
    /// The first sequence of the segment holding the frame (its file name).
    pub segment_first_sequence: u64,
    /// The byte offset just past the frame in that segment.
    pub next_offset: u64,
}

#[derive(Debug)]
pub struct TailCache {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    frames: VecDeque<(CachedFrame, usize)>,
    bytes: usize,
    limit: usize,
}

impl TailCache {
    pub fn new(limit: usize) -> Self {
        Self { inner: Mutex::new(Inner { frames: VecDeque::new(), bytes: 0, limit }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep a frame the writer just made durable; frames come in sequence order. Frames without
    /// records (source positions only) are not kept: readers skip them anyway.
    pub fn push(&self, cached: CachedFrame) {
        if cached.frame.records.is_empty() {
            return;
        }
        let bytes: usize = cached.frame.records.iter().map(|record| record.len()).sum();
        let mut inner = self.lock();
        inner.bytes += bytes;
        inner.frames.push_back((cached, bytes));
        while inner.bytes > inner.limit {
            let Some((_, evicted)) = inner.frames.pop_front() else { break };
            inner.bytes -= evicted;
        }
    }

    /// Take the frame holding `sequence`, dropping the older ones on the way (a reader at
    /// `sequence` has passed them). None when `sequence` is older than every kept frame, or
    /// newer than all of them.
    pub fn take(&self, sequence: u64) -> Option<CachedFrame> {
        let mut inner = self.lock();
        loop {
            let (front, _) = inner.frames.front()?;
            if front.frame.first_sequence > sequence {
                return None;
            }
            let (cached, bytes) = inner.frames.pop_front()?;
            inner.bytes -= bytes;
            if cached.frame.end_sequence() > sequence {
                return Some(cached);
            }
        }
    }

    /// Drop everything (the writer is gone, or the WAL restarts from elsewhere).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.frames.clear();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn frame(first_sequence: u64, records: usize, next_offset: u64) -> CachedFrame {
        CachedFrame {
            frame: Frame {
                first_sequence,
                arrival_ms: 0,
                records: vec![Bytes::from_static(b"0123456789"); records],
                source: None,
                metadata: Vec::new(),
            },
            segment_first_sequence: 0,
            next_offset,
        }
    }

    #[test]
    fn a_reader_takes_the_frame_holding_its_position_and_passes_older_ones() {
        let cache = TailCache::new(1 << 20);
        cache.push(frame(0, 3, 100));
        cache.push(frame(3, 2, 200));
        cache.push(frame(5, 4, 300));
        // A reader at 4 is inside the second frame: the first is dropped, the second returned.
        let taken = cache.take(4).expect("the frame holding 4");
        assert_eq!((taken.frame.first_sequence, taken.next_offset), (3, 200));
        assert!(cache.take(0).is_none(), "passed frames are gone: an older reader reads the file");
        assert_eq!(cache.take(5).map(|cached| cached.frame.first_sequence), Some(5));
        assert!(cache.take(9).is_none(), "nothing past the newest frame");
    }

    #[test]
    fn frames_without_records_are_not_kept_and_the_bound_evicts_the_oldest() {
        let cache = TailCache::new(45);
        cache.push(frame(0, 0, 10));
        cache.push(frame(0, 2, 20)); // 20 bytes
        cache.push(frame(2, 2, 30)); // 40
        cache.push(frame(4, 1, 40)); // 50 > 45: the first goes
        assert!(cache.take(0).is_none(), "evicted: read from the file");
        assert_eq!(cache.take(2).map(|cached| cached.next_offset), Some(30));
        cache.clear();
        assert!(cache.take(4).is_none());
    }
}
