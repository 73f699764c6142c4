//! Test kit shared by every sink: an in-memory sink (with its own encoder) for pipeline tests, a
//! helper that builds encoded batches the way the pipeline does, and the conformance checks each
//! real sink runs in its service-backed tests (write, read back, idempotent replay, empty batch,
//! partition keys, error output, healthcheck).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

use crate::{
    Batch, EncodeError, Encoder, EncoderFactory, ErrorOutput, PartitionKeys, Payload, Record, SequenceSet, Sink,
    SinkError,
};

/// Encodes records length-prefixed, so the in-memory sink can split a payload back into records.
pub struct MemoryEncoderFactory;

struct MemoryEncoder {
    bytes: Vec<u8>,
}

impl EncoderFactory for MemoryEncoderFactory {
    fn new_encoder(&self, _chunk_bytes: usize) -> Box<dyn Encoder> {
        Box::new(MemoryEncoder { bytes: Vec::new() })
    }
}

impl Encoder for MemoryEncoder {
    fn push(&mut self, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        let len =
            u32::try_from(data.len() + delimiter.len()).map_err(|_| EncodeError::Record("record over 4 GiB".into()))?;
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(data);
        self.bytes.extend_from_slice(delimiter);
        Ok(())
    }

    fn held_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    fn finish(self: Box<Self>) -> Result<Payload, EncodeError> {
        Ok(Payload::from_chunks(vec![Bytes::from(self.bytes)]))
    }
}

/// Split a [`MemoryEncoder`] payload back into record bytes.
pub fn split_memory_payload(payload: &Payload) -> Vec<Bytes> {
    let mut bytes = payload.to_bytes();
    let mut records = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let _ = bytes.split_to(4);
        records.push(bytes.split_to(len.min(bytes.len())));
    }
    records
}

/// Keeps written batches in memory, keyed by batch id (so a replay overwrites, as S3 does), and
/// error records by (batch id, error output type). `fail_next` makes the next writes fail with
/// the given errors, to exercise retries; `fail_next_error_write` does the same for writes to the
/// error output.
#[derive(Default)]
pub struct MemorySink {
    written: Mutex<BTreeMap<Uuid, Batch>>,
    errors: Mutex<BTreeMap<(Uuid, String), Vec<u8>>>,
    failures: Mutex<Vec<SinkError>>,
    error_write_failures: Mutex<Vec<SinkError>>,
}

impl MemorySink {
    pub fn fail_next(&self, error: SinkError) {
        lock(&self.failures).push(error);
    }

    pub fn fail_next_error_write(&self, error: SinkError) {
        lock(&self.error_write_failures).push(error);
    }

    pub fn batches(&self) -> Vec<Batch> {
        lock(&self.written).values().cloned().collect()
    }

    /// Every record delivered, ordered by sequence (arrival time: the batch's oldest).
    pub fn records(&self) -> Vec<Record> {
        let mut records: Vec<Record> = lock(&self.written)
            .values()
            .flat_map(|batch| {
                split_memory_payload(&batch.payload)
                    .into_iter()
                    .zip(batch.sequences.iter())
                    .map(|(data, sequence)| Record { data, arrival_ms: batch.oldest_arrival_ms, sequence, output: 0 })
            })
            .collect();
        records.sort_by_key(|record| record.sequence);
        records
    }

    /// Error output documents written, one `serde_json` line each, by error output type.
    pub fn error_lines(&self) -> Vec<(String, Vec<u8>)> {
        lock(&self.errors)
            .iter()
            .flat_map(|((_, kind), lines)| {
                lines
                    .split(|&byte| byte == b'\n')
                    .filter(|line| !line.is_empty())
                    .map(|line| (kind.clone(), line.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if let Some(error) = lock(&self.failures).pop() {
            return Err(error);
        }
        if !batch.is_empty() {
            lock(&self.written).insert(batch.id, batch.clone());
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

#[async_trait]
impl ErrorOutput for MemorySink {
    async fn write_error_records(
        &self,
        batch: &Batch,
        error_output_type: &str,
        lines: Vec<u8>,
    ) -> Result<(), SinkError> {
        if let Some(error) = lock(&self.error_write_failures).pop() {
            return Err(error);
        }
        lock(&self.errors).insert((batch.id, error_output_type.to_string()), lines);
        Ok(())
    }
}

/// Encode `records` (given in sequence order) into a batch with the sink's own encoder, as the
/// pipeline does.
pub fn encode_batch(
    factory: &dyn EncoderFactory,
    stream: &str,
    id: Uuid,
    partition: PartitionKeys,
    records: &[Record],
) -> Batch {
    let mut encoder = factory.new_encoder(crate::encode::DEFAULT_CHUNK_BYTES);
    let mut sequences = SequenceSet::default();
    for record in records {
        let position = crate::RecordPosition::of(record);
        encoder.push_at(position, &record.data, b"").expect("testkit: encode a record");
        sequences.push(record.sequence);
    }
    let payload = encoder.finish().expect("testkit: finish the encoder");
    Batch {
        stream: stream.to_string(),
        id,
        partition,
        start: records.first().map_or(0, |record| record.sequence),
        end: records.last().map_or(0, |record| record.sequence + 1),
        sequences,
        record_bytes: records.iter().map(|record| record.data.len()).sum(),
        oldest_arrival_ms: records.iter().map(|record| record.arrival_ms).min().unwrap_or(0),
        payload,
    }
}

/// `count` small JSON records, for sink tests.
pub fn sample_records(count: u64) -> Vec<Record> {
    (0..count)
        .map(|sequence| Record {
            data: Bytes::from(format!("{{\"sequence\":{sequence},\"message\":\"hello spillway\"}}\n")),
            arrival_ms: 1_764_000_000_000 + sequence as i64,
            sequence,
            output: 0,
        })
        .collect()
}

/// A small encoded batch of `count` JSON records, no partition keys.
pub fn sample_batch(factory: &dyn EncoderFactory, stream: &str, id: Uuid, count: u64) -> Batch {
    encode_batch(factory, stream, id, PartitionKeys::new(), &sample_records(count))
}

/// Reads back what a sink wrote for a batch, as the raw concatenated record bytes
/// (decoded). Each sink's tests implement it with the destination's own client.
#[async_trait]
pub trait ReadBack: Send + Sync {
    /// Every object / row set / document group written for this batch id, decoded; one entry
    /// per copy found, so a duplicate write shows up as two entries.
    async fn read_back(&self, batch: &Batch) -> Vec<Vec<u8>>;

    /// Every error output object written for this batch id and type, as written.
    async fn read_error_output(&self, batch: &Batch, error_output_type: &str) -> Vec<Vec<u8>>;
}

/// The conformance checks every sink must pass. Panics with a message naming the failed check.
/// `partition` is a partition the sink's configuration renders (empty when it uses no keys).
pub async fn check_conformance(
    sink: &dyn Sink,
    error_output: &dyn ErrorOutput,
    factory: &dyn EncoderFactory,
    reader: &dyn ReadBack,
    stream: &str,
    partition: PartitionKeys,
) {
    sink.healthcheck().await.expect("conformance: healthcheck on a reachable destination");

    let records = sample_records(50);
    let batch = encode_batch(factory, stream, Uuid::new_v4(), partition.clone(), &records);
    let expected: Vec<u8> = records.iter().flat_map(|record| record.data.to_vec()).collect();
    sink.write(&batch).await.expect("conformance: write a batch");
    assert_eq!(reader.read_back(&batch).await, vec![expected.clone()], "conformance: read back what was written");

    sink.write(&batch).await.expect("conformance: replay the same batch");
    assert_eq!(reader.read_back(&batch).await, vec![expected], "conformance: a replayed batch is not duplicated");

    let empty = encode_batch(factory, stream, Uuid::new_v4(), partition, &[]);
    sink.write(&empty).await.expect("conformance: an empty batch is accepted");
    assert!(reader.read_back(&empty).await.is_empty(), "conformance: an empty batch writes nothing");

    let lines = b"{\"errorCode\":\"Test.Failure\"}\n".to_vec();
    error_output
        .write_error_records(&batch, "processing-failed", lines.clone())
        .await
        .expect("conformance: error output");
    error_output
        .write_error_records(&batch, "processing-failed", lines.clone())
        .await
        .expect("conformance: error replay");
    assert_eq!(
        reader.read_error_output(&batch, "processing-failed").await,
        vec![lines],
        "conformance: error records land once, even when written twice"
    );

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
                .map(|written| split_memory_payload(&written.payload).concat())
                .collect()
        }

        async fn read_error_output(&self, batch: &Batch, error_output_type: &str) -> Vec<Vec<u8>> {
            lock(&self.0.errors).get(&(batch.id, error_output_type.to_string())).cloned().into_iter().collect()
        }
    }

    #[tokio::test]
    async fn memory_sink_passes_conformance() {
        let sink = MemorySink::default();
        check_conformance(
            &sink,
            &sink,
            &MemoryEncoderFactory,
            &MemoryReadBack(&sink),
            "conformance",
            PartitionKeys::new(),
        )
        .await;
    }

    #[tokio::test]
    async fn memory_sink_reports_injected_failures_once() {
        let sink = MemorySink::default();
        sink.fail_next(SinkError::retriable("Test.Unavailable", "injected"));
        let batch = sample_batch(&MemoryEncoderFactory, "s", Uuid::new_v4(), 3);
        assert!(sink.write(&batch).await.unwrap_err().is_retriable());
        sink.write(&batch).await.unwrap();
        let records = sink.records();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].data, sample_records(3)[2].data);
    }
}
