//! Encoders: how an open batch is held. The pipeline pushes each record into its partition's
//! encoder as it arrives and closes the encoder into a [`Payload`] when the batch closes, so an
//! open batch costs its *encoded* size in memory, never a list of raw records.
//!
//! [`RawEncoder`] is the encoder every byte-oriented sink shares (records concatenated as sent,
//! then none / gzip / zstd). It stages records into chunks and compresses each full chunk on a
//! small shared pool while the pipeline keeps feeding, so one busy partition still uses every
//! core. gzip output is still one gzip member, as pigz makes it: each chunk is raw deflate ended
//! by a sync flush (byte-aligned, so chunks concatenate into one deflate stream), then a final
//! empty block and the trailer with the CRCs of the chunks combined — any gzip reader reads it.
//! zstd chunks are frames, and concatenated frames are one valid zstd stream (RFC 8878).
//!
//! Must not: know about partitions, sequences or destinations.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;

use bytes::Bytes;

use crate::Compression;

/// A closed batch's encoded bytes, as a list of chunks (uploaded as they are: one PUT body, or
/// the parts of a multipart upload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Payload {
    pub fn from_chunks(chunks: Vec<Bytes>) -> Self {
        let len = chunks.iter().map(Bytes::len).sum();
        Self { chunks, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The payload as one contiguous buffer (copies unless it is a single chunk).
    pub fn to_bytes(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [single] => single.clone(),
            many => {
                let mut joined = Vec::with_capacity(self.len);
                for chunk in many {
                    joined.extend_from_slice(chunk);
                }
                Bytes::from(joined)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding failed: {0}")]
    Io(#[from] io::Error),
    #[error("the record cannot be encoded: {0}")]
    Record(String),
    /// The encoder refused this one record (it does not fit the output format, e.g. a Parquet
    /// schema); nothing of it was written and the encoder takes further records. The pipeline
    /// sends the record to the error output under `output_type` with `code` and `message`.
    #[error("{code}: {message}")]
    Rejected { output_type: &'static str, code: &'static str, message: String },
    #[error("a compression worker stopped")]
    WorkerLost,
}

/// Where a record sits in its stream: its WAL sequence and its arrival time (epoch ms, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    pub sequence: u64,
    pub arrival_ms: i64,
}

/// One open batch's encoder. Called from a blocking thread: encoding is CPU work.
pub trait Encoder: Send + 'static {
    /// Append one record's bytes (after processing), followed by `delimiter` (empty unless the
    /// stream appends one, as Firehose's `AppendDelimiterToRecord`). A record that cannot be
    /// encoded is refused with [`EncodeError::Rejected`], leaving the encoder as it was.
    fn push(&mut self, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError>;

    /// [`Encoder::push`] with the record's position, for encoders that name records one by one
    /// (OpenSearch: a `_id` from stream and sequence, an index from the arrival time). The
    /// pipeline always calls this one; byte encoders need no position and keep the default.
    fn push_at(&mut self, position: RecordPosition, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        let _ = position;
        self.push(data, delimiter)
    }

    /// Bytes this encoder holds in memory now (encoded output, staging, work in progress); the
    /// pipeline's open-batch memory budget sums these.
    fn held_bytes(&self) -> usize;

    /// Close the batch into its payload.
    fn finish(self: Box<Self>) -> Result<Payload, EncodeError>;
}

/// Makes a fresh encoder for each open batch; provided by a sink alongside its [`crate::Sink`].
pub trait EncoderFactory: Send + Sync + 'static {
    /// `chunk_bytes` is a hint for how much raw input an encoder may stage before it encodes; the
    /// pipeline lowers it when many partitions are open at once.
    fn new_encoder(&self, chunk_bytes: usize) -> Box<dyn Encoder>;
}

/// Staged raw input before a chunk is compressed, when the pipeline gives no hint.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
/// Chunks being compressed at once per encoder; past it `push` waits for the oldest, so raw
/// input in flight stays bounded.
const MAX_PENDING_CHUNKS: usize = 4;

/// Records concatenated as sent, compressed chunk by chunk.
pub struct RawEncoder {
    compression: Compression,
    chunk_bytes: usize,
    staging: Vec<u8>,
    /// Finished chunks, in order.
    done: Vec<Bytes>,
    done_len: usize,
    /// Chunks being compressed on the pool, in order, with their raw size.
    pending: VecDeque<(mpsc::Receiver<io::Result<Compressed>>, usize)>,
    /// gzip only: the CRC-32 and length of everything compressed so far, for the trailer.
    crc: crc32fast::Hasher,
}

impl RawEncoder {
    pub fn new(compression: Compression, chunk_bytes: usize) -> Self {
        let chunk_bytes = chunk_bytes.max(16 * 1024);
        Self {
            compression,
            chunk_bytes,
            staging: Vec::new(),
            done: Vec::new(),
            done_len: 0,
            pending: VecDeque::new(),
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Hand the staged bytes over: kept as they are without compression, else compressed on the
    /// pool.
    fn flush_staging(&mut self) -> Result<(), EncodeError> {
        if self.staging.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.staging);
        if self.compression == Compression::None {
            self.done_len += chunk.len();
            self.done.push(Bytes::from(chunk));
            return Ok(());
        }
        while self.pending.len() >= MAX_PENDING_CHUNKS {
            self.collect_oldest()?;
        }
        let raw_len = chunk.len();
        let (sender, receiver) = mpsc::sync_channel(1);
        let compression = self.compression;
        rayon::spawn_fifo(move || {
            let _ = sender.send(compress_chunk(compression, &chunk));
        });
        self.pending.push_back((receiver, raw_len));
        self.collect_finished()
    }

    /// Move chunks whose compression has finished (in order) to `done`, without waiting.
    fn collect_finished(&mut self) -> Result<(), EncodeError> {
        while let Some((receiver, _)) = self.pending.front() {
            match receiver.try_recv() {
                Ok(result) => {
                    self.pending.pop_front();
                    self.push_done(result?);
                }
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => return Err(EncodeError::WorkerLost),
            }
        }
        Ok(())
    }

    fn collect_oldest(&mut self) -> Result<(), EncodeError> {
        if let Some((receiver, _)) = self.pending.pop_front() {
            let compressed = receiver.recv().map_err(|_| EncodeError::WorkerLost)??;
            self.push_done(compressed);
        }
        Ok(())
    }

    fn push_done(&mut self, compressed: Compressed) {
        if self.compression == Compression::Gzip && self.done.is_empty() {
            self.done.push(Bytes::from_static(&GZIP_HEADER));
            self.done_len += GZIP_HEADER.len();
        }
        if let Some(crc) = compressed.crc {
            self.crc.combine(&crc);
        }
        self.done_len += compressed.bytes.len();
        self.done.push(Bytes::from(compressed.bytes));
    }
}

impl Encoder for RawEncoder {
    fn push(&mut self, data: &[u8], delimiter: &[u8]) -> Result<(), EncodeError> {
        if self.staging.capacity() == 0 {
            self.staging.reserve(self.chunk_bytes.min(data.len().max(4096) * 4).max(data.len()));
        }
        self.staging.extend_from_slice(data);
        self.staging.extend_from_slice(delimiter);
        if self.staging.len() >= self.chunk_bytes {
            self.flush_staging()?;
        }
        Ok(())
    }

    fn held_bytes(&self) -> usize {
        let pending: usize = self.pending.iter().map(|(_, raw_len)| raw_len).sum();
        self.done_len + self.staging.capacity() + pending
    }

    fn finish(mut self: Box<Self>) -> Result<Payload, EncodeError> {
        self.flush_staging()?;
        while !self.pending.is_empty() {
            self.collect_oldest()?;
        }
        if self.compression == Compression::Gzip && !self.done.is_empty() {
            // Final empty fixed-Huffman block (BFINAL=1), then CRC-32 and ISIZE (mod 2^32).
            let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new());
            let mut trailer = vec![0x03, 0x00];
            trailer.extend_from_slice(&crc.clone().finalize().to_le_bytes());
            trailer.extend_from_slice(&(crc.total_len() as u32).to_le_bytes());
            self.done.push(Bytes::from(trailer));
        }
        Ok(Payload::from_chunks(std::mem::take(&mut self.done)))
    }
}

/// A [`RawEncoder`] factory for a given compression.
#[derive(Debug, Clone, Copy)]
pub struct RawEncoderFactory {
    pub compression: Compression,
}

impl EncoderFactory for RawEncoderFactory {
    fn new_encoder(&self, chunk_bytes: usize) -> Box<dyn Encoder> {
        Box::new(RawEncoder::new(self.compression, chunk_bytes))
    }
}

/// gzip header: magic, deflate, no flags, no mtime (reproducible: a replayed batch gives the
/// same bytes), no extra flags, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];

/// One compressed chunk, and for gzip the CRC of its raw bytes.
struct Compressed {
    bytes: Vec<u8>,
    crc: Option<crc32fast::Hasher>,
}

/// Compress one chunk, fed in one large write (a codec fed line by line runs about a third
/// slower): gzip as byte-aligned raw deflate (see the module header), zstd as a whole frame.
fn compress_chunk(compression: Compression, chunk: &[u8]) -> io::Result<Compressed> {
    match compression {
        Compression::None => Ok(Compressed { bytes: chunk.to_vec(), crc: None }),
        Compression::Gzip => {
            let mut crc = crc32fast::Hasher::new();
            crc.update(chunk);
            let out = Vec::with_capacity(chunk.len() / 6 + 64);
            let mut encoder = flate2::write::DeflateEncoder::new(out, flate2::Compression::default());
            encoder.write_all(chunk)?;
            // flate2's flush is a zlib sync flush: everything out, ending on a byte boundary.
            encoder.flush()?;
            let bytes = std::mem::take(encoder.get_mut());
            Ok(Compressed { bytes, crc: Some(crc) })
        }
        Compression::Zstd => {
            let out = Vec::with_capacity(chunk.len() / 6 + 64);
            let mut encoder = zstd::stream::write::Encoder::new(out, zstd::DEFAULT_COMPRESSION_LEVEL)?;
            encoder.include_contentsize(true)?;
            encoder.set_pledged_src_size(Some(chunk.len() as u64))?;
            encoder.write_all(chunk)?;
            Ok(Compressed { bytes: encoder.finish()?, crc: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn lines(count: usize) -> Vec<Vec<u8>> {
        (0..count).map(|n| format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(n % 50)).into_bytes()).collect()
    }

    fn encode(compression: Compression, chunk_bytes: usize, records: &[Vec<u8>]) -> Payload {
        let mut encoder: Box<dyn Encoder> = Box::new(RawEncoder::new(compression, chunk_bytes));
        for record in records {
            encoder.push(record, b"").unwrap();
        }
        encoder.finish().unwrap()
    }

    #[test]
    fn every_compression_round_trips_across_many_chunks() {
        let records = lines(20_000);
        let expected: Vec<u8> = records.concat();
        assert_eq!(encode(Compression::None, 16 * 1024, &records).to_bytes(), expected);

        let gzip = encode(Compression::Gzip, 16 * 1024, &records);
        assert!(gzip.chunks().len() > 10, "compressed in several chunks");
        // A single-member reader must see everything: the chunks form one gzip member.
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gzip.to_bytes()[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, expected);

        let zstd = encode(Compression::Zstd, 16 * 1024, &records);
        assert_eq!(zstd::decode_all(&zstd.to_bytes()[..]).unwrap(), expected);
    }

    #[test]
    fn held_bytes_follow_the_encoded_size_not_the_input() {
        let records = lines(50_000);
        let raw: usize = records.iter().map(Vec::len).sum();
        let mut encoder = RawEncoder::new(Compression::Gzip, 64 * 1024);
        for record in &records {
            encoder.push(record, b"").unwrap();
        }
        while !encoder.pending.is_empty() {
            encoder.collect_oldest().unwrap();
        }
        assert!(encoder.held_bytes() < raw / 4, "held {} of {raw} raw bytes", encoder.held_bytes());
    }

    #[test]
    fn an_empty_encoder_finishes_empty() {
        assert!(encode(Compression::Gzip, DEFAULT_CHUNK_BYTES, &[]).is_empty());
    }
}
