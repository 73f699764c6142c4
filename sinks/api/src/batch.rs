//! What the pipeline hands a sink: a [`Batch`] is one closed open batch of one dynamic partition,
//! already encoded by the sink's own encoder, with enough identity to be reproduced from the WAL
//! (stream, partition, `[start, end)`) and to map per-record outcomes back to sequences.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::Bytes;
use uuid::Uuid;

use crate::encode::Payload;

/// One record: its bytes as the sink should write them, when it arrived, and its position in the
/// stream's WAL. Used where records are needed one by one (error output, per-record sinks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub data: Bytes,
    /// Arrival time at spillway (epoch milliseconds, UTC), Firehose's `approximateArrivalTimestamp`.
    pub arrival_ms: i64,
    /// Position in the stream's WAL.
    pub sequence: u64,
    /// Which output of its WAL record this is when a transform made several of it (0 otherwise):
    /// with `sequence`, unique per stream.
    pub output: u32,
}

/// A dynamic partition's key values (`!{partitionKeyFromQuery:k}` → value); empty without
/// dynamic partitioning. Keys a Lambda transform returned (`metadata.partitionKeys`) sit apart
/// from the jq keys, under [`lambda_partition_key`]`(k)`.
pub type PartitionKeys = BTreeMap<String, String>;

/// Where [`PartitionKeys`] holds the value of `!{partitionKeyFromLambda:k}`.
pub const LAMBDA_PARTITION_KEY_PREFIX: &str = "partitionKeyFromLambda:";

/// The [`PartitionKeys`] entry name of the Lambda key `name`.
pub fn lambda_partition_key(name: &str) -> String {
    format!("{LAMBDA_PARTITION_KEY_PREFIX}{name}")
}

/// The sequences a batch holds, as sorted runs: one run for a stream without partitions, about
/// one per record when many partitions interleave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceSet {
    runs: Vec<Range<u64>>,
    len: usize,
}

impl SequenceSet {
    /// Add a sequence greater than every one already added.
    pub fn push(&mut self, sequence: u64) {
        self.len += 1;
        if let Some(last) = self.runs.last_mut()
            && last.end == sequence
        {
            last.end += 1;
            return;
        }
        self.runs.push(sequence..sequence + 1);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn runs(&self) -> &[Range<u64>] {
        &self.runs
    }

    pub fn contains(&self, sequence: u64) -> bool {
        let index = self.runs.partition_point(|run| run.end <= sequence);
        self.runs.get(index).is_some_and(|run| run.contains(&sequence))
    }

    /// The `index`-th sequence (0-based), as per-record outcomes name records by index.
    pub fn nth(&self, mut index: usize) -> Option<u64> {
        for run in &self.runs {
            let run_len = (run.end - run.start) as usize;
            if index < run_len {
                return Some(run.start + index as u64);
            }
            index -= run_len;
        }
        None
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|run| run.clone())
    }

    /// Bytes this set keeps in memory.
    pub fn held_bytes(&self) -> usize {
        self.runs.capacity() * std::mem::size_of::<Range<u64>>()
    }
}

/// A closed batch, encoded.
#[derive(Debug, Clone)]
pub struct Batch {
    pub stream: String,
    /// Stable identity: the same batch re-sent after a restart has the same id (derived from
    /// instance, stream, partition and `start`).
    pub id: Uuid,
    pub partition: PartitionKeys,
    /// WAL range from the batch's first record to after its last; its records are exactly the
    /// records in this range that map to `partition`.
    pub start: u64,
    pub end: u64,
    /// The sequences of its records, in the order the payload holds them.
    pub sequences: SequenceSet,
    /// Sum of the records' sizes before encoding (Firehose counts buffer size this way).
    pub record_bytes: usize,
    /// Arrival time of the oldest record; Firehose names objects and evaluates `!{timestamp:..}`
    /// with it.
    pub oldest_arrival_ms: i64,
    /// The records as the sink's encoder wrote them.
    pub payload: Payload,
}

impl Batch {
    pub fn record_count(&self) -> usize {
        self.sequences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_sets_keep_runs_and_answer_by_index() {
        let mut set = SequenceSet::default();
        for sequence in [3, 4, 5, 9, 10, 20] {
            set.push(sequence);
        }
        assert_eq!(set.runs(), &[3..6, 9..11, 20..21]);
        assert_eq!(set.len(), 6);
        assert_eq!(set.nth(0), Some(3));
        assert_eq!(set.nth(3), Some(9));
        assert_eq!(set.nth(5), Some(20));
        assert_eq!(set.nth(6), None);
        assert!(set.contains(10) && !set.contains(11) && !set.contains(2));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![3, 4, 5, 9, 10, 20]);
    }
}
