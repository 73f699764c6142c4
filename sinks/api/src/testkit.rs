//! Test kit shared by every sink: an in-memory sink for pipeline tests, and the conformance checks
//! each real sink runs in its service-backed tests (write, empty batch, idempotent replay,
//! healthcheck).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

use crate::{Batch, Record, Sink, SinkError};

/// Keeps written batches in memory, keyed by batch id (so a replay overwrites, as S3 does).
/// `fail_next` makes the next writes fail with the given errors, to exercise retries.
#[derive(Default)]
pub struct MemorySink {
    written: Mutex<BTreeMap<Uuid, Batch>>,
    failures: Mutex<Vec<SinkError>>,
}

impl MemorySink {
    pub fn fail_next(&self, error: SinkError) {
        self.lock_failures().push(error);
    }

    pub fn batches(&self) -> Vec<Batch> {
        self.lock_written().values().cloned().collect()
    }

    /// Every record delivered, ordered by sequence.
    pub fn records(&self) -> Vec<Record> {
        let mut records: Vec<Record> = self.lock_written().values().flat_map(|batch| batch.records.clone()).collect();
        records.sort_by_key(|record| record.sequence);
        records
    }

    fn lock_written(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, Batch>> {
        self.written.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, Vec<SinkError>> {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if let Some(error) = self.lock_failures().pop() {
            return Err(error);
        }
        if !batch.records.is_empty() {
            self.lock_written().insert(batch.id, batch.clone());
        }
        Ok(())
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A small batch of `count` JSON records, for sink tests.
pub fn sample_batch(stream: &str, id: Uuid, count: u64) -> Batch {
    let records = (0..count)
        .map(|sequence| Record {
            data: Bytes::from(format!("{{\"sequence\":{sequence},\"message\":\"hello spillway\"}}\n")),
            arrival_ms: 1_764_000_000_000 + sequence as i64,
            sequence,
        })
        .collect();
    Batch { stream: stream.to_string(), id, records }
}

/// Reads back what a sink wrote for a batch, as the raw concatenated record bytes
/// (decompressed). Each sink's tests implement it with the destination's own client.
#[async_trait]
pub trait ReadBack: Send + Sync {
    /// Every object / row set / document group written for this batch id, decoded; one entry
    /// per copy found, so a duplicate write shows up as two entries.
    async fn read_back(&self, batch: &Batch) -> Vec<Vec<u8>>;
}

/// The conformance checks every sink must pass. Panics with a message naming the failed check.
pub async fn check_conformance(sink: &dyn Sink, reader: &dyn ReadBack, stream: &str) {
    sink.healthcheck().await.expect("conformance: healthcheck on a reachable destination");

    let batch = sample_batch(stream, Uuid::new_v4(), 50);
    let expected: Vec<u8> = batch.records.iter().flat_map(|record| record.data.to_vec()).collect();
    sink.write(&batch).await.expect("conformance: write a batch");
    assert_eq!(reader.read_back(&batch).await, vec![expected.clone()], "conformance: read back what was written");

    sink.write(&batch).await.expect("conformance: replay the same batch");
    assert_eq!(reader.read_back(&batch).await, vec![expected], "conformance: a replayed batch is not duplicated");

    let empty = Batch { stream: stream.to_string(), id: Uuid::new_v4(), records: Vec::new() };
    sink.write(&empty).await.expect("conformance: an empty batch is accepted");
    assert!(reader.read_back(&empty).await.is_empty(), "conformance: an empty batch writes nothing");

    sink.close().await.expect("conformance: close");
}

#[cfg(test)]
mod tests {
    use super::*;

    struct MemoryReadBack<'a>(&'a MemorySink);

    #[async_trait]
    impl ReadBack for MemoryReadBack<'_> {
        async fn read_back(&self, batch: &Batch) -> Vec<Vec<u8>> {
            self.0
                .batches()
                .into_iter()
                .filter(|written| written.id == batch.id)
                .map(|written| written.records.iter().flat_map(|record| record.data.to_vec()).collect())
                .collect()
        }
    }

    #[tokio::test]
    async fn memory_sink_passes_conformance() {
        let sink = MemorySink::default();
        check_conformance(&sink, &MemoryReadBack(&sink), "conformance").await;
    }

    #[tokio::test]
    async fn memory_sink_reports_injected_failures_once() {
        let sink = MemorySink::default();
        sink.fail_next(SinkError::retriable("Test.Unavailable", "injected"));
        let batch = sample_batch("s", Uuid::new_v4(), 3);
        assert!(sink.write(&batch).await.unwrap_err().is_retriable());
        sink.write(&batch).await.unwrap();
        assert_eq!(sink.records().len(), 3);
    }
}
