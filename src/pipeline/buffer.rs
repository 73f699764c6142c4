//! The in-memory buffer of one stream (one dynamic partition, later): records read back from the
//! WAL wait here until the size or interval hint is reached, whichever first.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spillway_sink_api::Record;
use tokio::time::Instant;

use crate::config::RecordDelimiter;
use crate::wal::Frame;

pub struct Buffer {
    records: Vec<Record>,
    bytes: usize,
    /// When the oldest buffered record arrived (as an `Instant`); the interval counts from here,
    /// so records recovered from the WAL after a restart, already older than the interval, are
    /// flushed at once instead of waiting a full interval again.
    opened_at: Option<Instant>,
    delimiter: RecordDelimiter,
}

impl Buffer {
    pub fn new(delimiter: RecordDelimiter) -> Self {
        Self { records: Vec::new(), bytes: 0, opened_at: None, delimiter }
    }

    /// Add a frame's records. `now` and `now_ms` are the same moment on the monotonic and the
    /// wall clock; the frame's arrival time is placed on the monotonic clock with them.
    pub fn push_frame(&mut self, frame: Frame, now: Instant, now_ms: i64) {
        if frame.records.is_empty() {
            return;
        }
        let age = Duration::from_millis(now_ms.saturating_sub(frame.arrival_ms).max(0) as u64);
        let arrived_at = now.checked_sub(age).unwrap_or(now);
        self.opened_at = Some(self.opened_at.map_or(arrived_at, |opened| opened.min(arrived_at)));
        let records = match self.delimiter {
            RecordDelimiter::None => frame.records,
            RecordDelimiter::Newline => append_newlines(&frame.records),
        };
        for (offset, data) in records.into_iter().enumerate() {
            self.bytes += data.len();
            self.records.push(Record {
                data,
                arrival_ms: frame.arrival_ms,
                sequence: frame.first_sequence + offset as u64,
            });
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    /// Hand over every buffered record and start afresh.
    pub fn take(&mut self) -> Vec<Record> {
        self.bytes = 0;
        self.opened_at = None;
        std::mem::take(&mut self.records)
    }
}

/// Firehose's `AppendDelimiterToRecord`: one allocation per frame, records stay zero-copy slices.
fn append_newlines(records: &[Bytes]) -> Vec<Bytes> {
    let total: usize = records.iter().map(|record| record.len() + 1).sum();
    let mut joined = BytesMut::with_capacity(total);
    for record in records {
        joined.extend_from_slice(record);
        joined.extend_from_slice(b"\n");
    }
    let mut joined = joined.freeze();
    records.iter().map(|record| joined.split_to(record.len() + 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_delimiter_appends_to_every_record() {
        let mut buffer = Buffer::new(RecordDelimiter::Newline);
        let frame = Frame { first_sequence: 7, arrival_ms: 1, records: vec![Bytes::from("a"), Bytes::from("bc")] };
        buffer.push_frame(frame, Instant::now(), 1);
        assert_eq!(buffer.bytes(), 5);
        let records = buffer.take();
        assert_eq!(records[0].data, Bytes::from("a\n"));
        assert_eq!(records[1].data, Bytes::from("bc\n"));
        assert_eq!(records[1].sequence, 8);
        assert!(buffer.is_empty() && buffer.opened_at().is_none());
    }

    #[test]
    fn the_interval_counts_from_the_oldest_arrival() {
        let mut buffer = Buffer::new(RecordDelimiter::None);
        let now = Instant::now();
        let frame = |arrival_ms| Frame { first_sequence: 0, arrival_ms, records: vec![Bytes::from("x")] };
        buffer.push_frame(frame(100_000), now, 100_000);
        assert_eq!(buffer.opened_at(), Some(now));
        // A record recovered from the WAL that arrived 30 s ago makes the buffer 30 s old.
        buffer.push_frame(frame(70_000), now, 100_000);
        assert_eq!(buffer.opened_at(), now.checked_sub(Duration::from_secs(30)));
    }
}
