//! What leaves a buffer: records of one stream (and one dynamic partition) with a stable identity.
//! A batch's `id` is derived from its recorded intent, so a batch re-sent after a crash carries the
//! same id and a sink can make the retry idempotent (same object key, same document ids).

use bytes::Bytes;
use uuid::Uuid;

/// One record as delivered: its bytes after processing, when it arrived, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub data: Bytes,
    /// Arrival time at spillway (or the source's approximate arrival time), epoch milliseconds.
    pub arrival_ms: i64,
    /// Position of the record in its source partition.
    pub sequence: u64,
}

/// A contiguous, non-empty run of records that a sink writes as one unit.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Delivery stream name (`streams[].name`).
    pub stream: String,
    /// Stable identity: the same batch re-sent after a restart has the same id.
    pub id: Uuid,
    pub records: Vec<Record>,
}

impl Batch {
    /// Sum of the records' sizes in bytes (before compression), as Firehose counts buffer size.
    pub fn byte_len(&self) -> usize {
        self.records.iter().map(|record| record.data.len()).sum()
    }

    /// Arrival time of the oldest record; Firehose names objects and evaluates `!{timestamp:..}`
    /// with it. `None` for an empty batch.
    pub fn oldest_arrival_ms(&self) -> Option<i64> {
        self.records.iter().map(|record| record.arrival_ms).min()
    }
}
