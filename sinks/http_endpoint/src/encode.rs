//! The requests an open batch is held in. Each record becomes `{"data":"<base64>"}` in its
//! request's `records` array; a request is closed at 10,000 records or when the next record would
//! take its body past `max_body_mib`, so a batch is one or more requests, each a whole request
//! body but for its `requestId` and `timestamp` (added when it is sent: the id is derived from
//! the batch id, which the encoder does not know). Requests are planned as records arrive (from
//! their encoded sizes) and encoded when the batch is finished.
//!
//! Payload layout: chunk 0 is [`Manifest`] (JSON), chunks 1.. are the requests' record arrays
//! without their brackets (`{"data":"…"},{"data":"…"}`). Base64 has no `}` nor `,`, so `},{`
//! marks every boundary between two records: a request can be cut at a record boundary without
//! any other index.
//!
//! Must not: talk HTTP, or decide retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spillway_sink_api::{EncodeError, Encoder, EncoderFactory, Payload, RecordPosition};

use crate::FAILED_OUTPUT_TYPE;

/// Firehose's most records per request.
pub const MAX_RECORDS_PER_REQUEST: usize = 10_000;

/// `{"requestId":"<36>","timestamp":<13+>,"records":[` … `]}`: room kept in every body for them.
pub const ENVELOPE_BYTES: usize = 96;

const RECORD_OPEN: &[u8] = br#"{"data":""#;
/// What a record is counted as when reserving room for record ends (most are far larger).
const MIN_RAW_RECORD_BYTES: usize = 64;
const RECORD_CLOSE: &[u8] = br#""}"#;

/// One request of a payload: how many records it holds and where its first record sits in the
/// stream (its request id is derived from the batch id and these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEntry {
    pub count: usize,
    pub first_sequence: u64,
    pub first_output: u32,
}

/// Chunk 0 of a payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub requests: Vec<RequestEntry>,
}

impl Manifest {
    pub fn records(&self) -> usize {
        self.requests.iter().map(|request| request.count).sum()
    }
}

/// A payload made by [`RequestEncoder`] back into its manifest and record arrays.
pub fn split_payload(payload: &Payload) -> Result<(Manifest, Vec<Bytes>), serde_json::Error> {
    let Some((first, arrays)) = payload.chunks().split_first() else {
        return Ok((Manifest::default(), Vec::new()));
    };
    let manifest: Manifest = serde_json::from_slice(first)?;
    Ok((manifest, arrays.to_vec()))
}

/// The records of a record array, each `{"data":"…"}`, in order.
pub fn records_of(array: &Bytes) -> Vec<Bytes> {
    let mut records = Vec::new();
    let mut start = 0;
    for boundary in memchr::memmem::find_iter(array, b"},{") {
        records.push(array.slice(start..boundary + 1));
        start = boundary + 2;
    }
    if start < array.len() {
        records.push(array.slice(start..));
    }
    records
}

/// The record array of `records` (each `{"data":"…"}`).
pub fn join_records(records: &[Bytes]) -> Bytes {
    let mut array = Vec::with_capacity(records.iter().map(|record| record.len() + 1).sum());
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            array.push(b',');
        }
        array.extend_from_slice(record);
    }
    Bytes::from(array)
}

/// A record's bytes, decoded from its `{"data":"…"}`.
pub fn record_data(record: &[u8]) -> Option<Vec<u8>> {
    let encoded = record.strip_prefix(RECORD_OPEN)?.strip_suffix(RECORD_CLOSE)?;
    base64::engine::general_purpose::STANDARD.decode(encoded).ok()
}

pub struct RequestEncoderFactory {
    /// Largest request body before compression (`max_body_mib`).
    max_body_bytes: usize,
    last_batch: Arc<LastBatch>,
}

impl RequestEncoderFactory {
    pub fn new(max_body_bytes: usize) -> Self {
        Self { max_body_bytes, last_batch: Arc::default() }
    }
}

impl EncoderFactory for RequestEncoderFactory {
    fn new_encoder(&self, chunk_bytes: usize) -> Box<dyn Encoder> {
        Box::new(RequestEncoder::with_room(self.max_body_bytes, &self.last_batch, chunk_bytes))
    }
}

/// How big the stream's last finished batch was. A new batch reserves that much at once:
/// growing the record copy by doubling copied a batch about once more and faulted in twice its
/// pages, on the one thread that routes every record of the stream (about a quarter of the
/// drain's time).
#[derive(Default)]
struct LastBatch {
    raw_bytes: AtomicUsize,
    records: AtomicUsize,
}

/// A new batch reserves at most this many staging chunks' worth (`chunk_bytes` is lowered when
/// many partitions are open, so many small batches do not each reserve a big one).
const MAX_RESERVED_CHUNKS: usize = 16;

/// Plans a batch's requests as records arrive and encodes them in [`Encoder::finish`]: pushing a
/// record only copies its bytes (the pipeline's one reader thread routes every record of a
/// stream, so work done here is not spread over cores), while `finish` runs on the blocking pool
/// per batch, several at once, and writes each array at its exact size.
pub struct RequestEncoder {
    max_body_bytes: usize,
    /// The requests closed so far.
    manifest: Manifest,
    /// Every record's bytes (its delimiter included), back to back, and where each one ends.
    raw: Vec<u8>,
    ends: Vec<usize>,
    /// The open request (`count` 0: none open) and its record array's length once encoded.
    entry: RequestEntry,
    current_len: usize,
    /// The closed requests' record arrays' length once encoded.
    held: usize,
    /// Where this batch's size is left for the next one.
    last_batch: Option<Arc<LastBatch>>,
}

impl RequestEncoder {
    pub fn new(max_body_bytes: usize) -> Self {
        Self {
            max_body_bytes,
            manifest: Manifest::default(),
            raw: Vec::new(),
            ends: Vec::new(),
            entry: RequestEntry { count: 0, first_sequence: 0, first_output: 0 },
            current_len: 0,
            held: 0,
            last_batch: None,
        }
    }

    /// An encoder with room for a batch as big as the last one (capped by `chunk_bytes`).
    fn with_room(max_body_bytes: usize, last_batch: &Arc<LastBatch>, chunk_bytes: usize) -> Self {
        let cap = chunk_bytes.max(1) * MAX_RESERVED_CHUNKS;
        let raw_bytes = last_batch.raw_bytes.load(Ordering::Relaxed).min(cap);
        let records = last_batch.records.load(Ordering::Relaxed).min(cap / MIN_RAW_RECORD_BYTES);
        Self {
            raw: Vec::with_capacity(raw_bytes),
            ends: Vec::with_capacity(records),
            last_batch: Some(last_batch.clone()),
            ..Self::new(max_body_bytes)
        }
    }

    fn close_request(&mut self) {
        if self.entry.count == 0 {
            return;
        }
        self.held += self.current_len;
        self.manifest.requests.push(self.entry);
        self.entry.count = 0;
        self.current_len = 0;
    }
}

/// Bytes `{"data":"<base64 of len bytes>"}` takes, with its separating comma.
fn encoded_record_len(len: usize) -> usize {
    RECORD_OPEN.len() + len.div_ceil(3) * 4 + RECORD_CLOSE.len() + 1
}

impl Encoder for RequestEncoder {
    fn push(&mut self, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        // Without a position no request id can be derived: only the pipeline's `push_at` is valid.
        let _ = (data, delimiter);
        Err(EncodeError::Record("the http endpoint encoder needs each record's position (push_at)".into()))
    }

    fn push_at(&mut self, position: RecordPosition, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        let raw_len = data.len() + delimiter.len();
        let record_len = encoded_record_len(raw_len);
        if record_len + ENVELOPE_BYTES > self.max_body_bytes {
            return Err(EncodeError::Rejected {
                output_type: FAILED_OUTPUT_TYPE,
                code: "HttpEndpoint.RecordTooLarge",
                message: format!(
                    "the record ({raw_len} bytes, {record_len} in base64) does not fit a request body of max_body_mib"
                ),
            });
        }
        let full = self.entry.count >= MAX_RECORDS_PER_REQUEST
            || self.current_len + record_len + ENVELOPE_BYTES > self.max_body_bytes;
        if self.entry.count > 0 && full {
            self.close_request();
        }
        if self.entry.count == 0 {
            self.entry = RequestEntry { count: 0, first_sequence: position.sequence, first_output: position.output };
            // The first record has no comma before it.
            self.current_len = record_len - 1;
        } else {
            self.current_len += record_len;
        }
        // Record and delimiter are one base64 run (padding only at the very end).
        self.raw.extend_from_slice(data);
        self.raw.extend_from_slice(delimiter);
        self.ends.push(self.raw.len());
        self.entry.count += 1;
        Ok(())
    }

    fn held_bytes(&self) -> usize {
        self.held + self.current_len
    }

    fn finish(mut self: Box<Self>) -> Result<Payload, EncodeError> {
        if let Some(last_batch) = &self.last_batch {
            last_batch.raw_bytes.store(self.raw.len(), Ordering::Relaxed);
            last_batch.records.store(self.ends.len(), Ordering::Relaxed);
        }
        self.close_request();
        if self.manifest.requests.is_empty() {
            return Ok(Payload::default());
        }
        let manifest = serde_json::to_vec(&self.manifest).map_err(|error| EncodeError::Record(error.to_string()))?;
        let mut chunks = Vec::with_capacity(self.manifest.requests.len() + 1);
        chunks.push(Bytes::from(manifest));
        let (mut record, mut start) = (0, 0);
        for request in &self.manifest.requests {
            let ends = &self.ends[record..record + request.count];
            record += request.count;
            let size =
                ends.iter().fold((start, 0), |(from, size), &end| (end, size + encoded_record_len(end - from))).1;
            let mut array = Vec::with_capacity(size);
            for &end in ends {
                if !array.is_empty() {
                    array.push(b',');
                }
                array.extend_from_slice(RECORD_OPEN);
                // base64-simd (the Direct PUT intake's decoder too): several times the scalar
                // encoder's speed on long records.
                base64_simd::STANDARD.encode_append(&self.raw[start..end], &mut array);
                array.extend_from_slice(RECORD_CLOSE);
                start = end;
            }
            chunks.push(Bytes::from(array));
        }
        Ok(Payload::from_chunks(chunks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(sequence: u64) -> RecordPosition {
        RecordPosition { sequence, output: 0, arrival_ms: 0 }
    }

    #[test]
    fn a_new_batch_reserves_room_for_one_as_big_as_the_last_capped_by_the_chunk_hint() {
        let factory = RequestEncoderFactory::new(64 << 20);
        let mut first = RequestEncoder::with_room(64 << 20, &factory.last_batch, 1 << 20);
        assert_eq!(first.raw.capacity(), 0, "nothing known yet");
        for sequence in 0..1000 {
            first.push_at(position(sequence), &[b'x'; 1000], b"\n").unwrap();
        }
        let payload = Box::new(first).finish().unwrap();
        assert_eq!(split_payload(&payload).unwrap().0.records(), 1000);
        let second = RequestEncoder::with_room(64 << 20, &factory.last_batch, 1 << 20);
        assert!(second.raw.capacity() >= 1_001_000, "{}", second.raw.capacity());
        assert!(second.ends.capacity() >= 1000);
        let many_partitions = RequestEncoder::with_room(64 << 20, &factory.last_batch, 4096);
        assert!(many_partitions.raw.capacity() <= 4096 * MAX_RESERVED_CHUNKS);
    }

    #[test]
    fn records_become_base64_entries_cut_at_the_body_limit() {
        let mut encoder = Box::new(RequestEncoder::new(ENVELOPE_BYTES + 40));
        for (sequence, data) in [(1, &b"ab"[..]), (2, b"cde"), (3, b"f")] {
            encoder.push_at(position(sequence), data, b"").unwrap();
        }
        let payload = encoder.finish().unwrap();
        let (manifest, arrays) = split_payload(&payload).unwrap();
        assert_eq!(manifest.records(), 3);
        assert_eq!(manifest.requests.iter().map(|r| r.first_sequence).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(&arrays[0][..], br#"{"data":"YWI="},{"data":"Y2Rl"}"#);
        let records = records_of(&arrays[0]);
        assert_eq!(records.len(), 2);
        assert_eq!(record_data(&records[1]).unwrap(), b"cde");
        assert_eq!(join_records(&records), arrays[0]);
        assert_eq!(records_of(&arrays[1]).len(), 1);
    }

    #[test]
    fn arrays_are_written_at_their_planned_size_with_each_delimiter_in_its_record() {
        let mut encoder = Box::new(RequestEncoder::new(ENVELOPE_BYTES + 64));
        let records: [&[u8]; 5] = [b"a", b"bc", b"", b"defg", b"hijklmnopq"];
        for (sequence, data) in (0..).zip(records) {
            encoder.push_at(position(sequence), data, b"\n").unwrap();
        }
        let held = encoder.held_bytes();
        let payload = encoder.finish().unwrap();
        let (manifest, arrays) = split_payload(&payload).unwrap();
        assert!(manifest.requests.len() > 1, "{manifest:?}");
        assert_eq!(held, arrays.iter().map(Bytes::len).sum::<usize>(), "held bytes are the arrays' size");
        let decoded: Vec<Vec<u8>> =
            arrays.iter().flat_map(records_of).map(|record| record_data(&record).unwrap()).collect();
        let expected: Vec<Vec<u8>> = records.iter().map(|data| [*data, b"\n"].concat()).collect();
        assert_eq!(decoded, expected);
        for array in &arrays {
            assert!(array.len() + ENVELOPE_BYTES <= ENVELOPE_BYTES + 64, "a body past the limit");
        }
    }

    #[test]
    fn ten_thousand_records_make_a_request_and_oversized_records_are_refused() {
        let mut encoder = Box::new(RequestEncoder::new(64 << 20));
        for sequence in 0..10_001 {
            encoder.push_at(position(sequence), b"x", b"\n").unwrap();
        }
        let payload = encoder.finish().unwrap();
        let (manifest, _) = split_payload(&payload).unwrap();
        assert_eq!(manifest.requests.iter().map(|r| r.count).collect::<Vec<_>>(), [10_000, 1]);
        let mut small = RequestEncoder::new(200);
        let refused = small.push_at(position(0), &[b'a'; 200], b"").unwrap_err();
        assert!(matches!(refused, EncodeError::Rejected { code: "HttpEndpoint.RecordTooLarge", .. }));
    }
}
