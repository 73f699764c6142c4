//! Encoders: how an open batch is held. The pipeline pushes each record into its partition's
//! encoder as it arrives and closes the encoder into a [`Payload`] when the batch closes, so an
//! open batch costs its *encoded* size in memory, never a list of raw records.
//!
//! [`RawEncoder`] is the encoder every byte-oriented sink shares (records concatenated as sent,
//! then compressed). It stages records into chunks and compresses each full chunk on a small
//! shared pool while the pipeline keeps feeding, so one busy partition still uses every core.
//! Chunks compressed apart still make one valid object:
//! - gzip is one gzip member, as pigz makes it: each chunk is raw deflate (libdeflate, level 6:
//!   about 1.4× less CPU than zlib's level 6 for slightly smaller output) ended by a sync flush
//!   (byte-aligned, so chunks concatenate into one deflate stream), then a final empty block and
//!   the trailer with the CRCs of the chunks combined — any gzip reader reads it;
//! - zip is the same deflate stream as one entry (`records`) behind a local header that defers
//!   CRC and sizes to a data descriptor (as `zip` does when writing to a pipe), then the central
//!   directory;
//! - zstd chunks are frames, and concatenated frames are one valid zstd stream (RFC 8878);
//! - snappy chunks are framing-format streams, and the format lets a stream identifier repeat;
//! - Hadoop snappy is a sequence of independent blocks (raw length, compressed length, block).
//!
//! Must not: know about partitions, sequences or destinations.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;

use bytes::Bytes;

use crate::Compression;

/// A closed batch's encoded bytes, as a list of chunks (uploaded as they are: one PUT body, or
/// the parts of a multipart upload), and the records the encoder refused after accepting them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    chunks: Vec<Bytes>,
    len: usize,
    refused: Vec<Refusal>,
}

/// A record an encoder accepted in `push` but could not encode: an encoder that converts
/// records on worker threads (Parquet with `threads` > 1) learns of a misfit only there. The
/// pipeline sends these records, read back from the WAL by position, to the error output under
/// `output_type` when it delivers the batch, in the same intent; the payload holds the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub position: RecordPosition,
    pub output_type: &'static str,
    pub code: &'static str,
    pub message: String,
}

impl Payload {
    pub fn from_chunks(chunks: Vec<Bytes>) -> Self {
        let len = chunks.iter().map(Bytes::len).sum();
        Self { chunks, len, refused: Vec::new() }
    }

    /// The payload with the records refused after `push`, in push order.
    pub fn with_refused(mut self, refused: Vec<Refusal>) -> Self {
        self.refused = refused;
        self
    }

    pub fn refused(&self) -> &[Refusal] {
        &self.refused
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
    /// The encoder (or one of its pool jobs) panicked; the panic was contained (see
    /// [`crate::panic`]). Its state cannot be trusted any more: the pipeline sets aside the
    /// records it holds, with this reason, instead of finishing it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where a record sits in its stream: its WAL sequence, which output of that WAL record it is
/// (a transform may make several; 0 otherwise), and its arrival time (epoch ms, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    pub sequence: u64,
    pub output: u32,
    pub arrival_ms: i64,
}

impl RecordPosition {
    /// The position of `record`.
    pub fn of(record: &crate::Record) -> Self {
        Self { sequence: record.sequence, output: record.output, arrival_ms: record.arrival_ms }
    }
}

/// One open batch's encoder. Called from a blocking thread: encoding is CPU work.
pub trait Encoder: Send + 'static {
    /// Append one record's bytes (after processing), followed by `delimiter` (empty unless the
    /// stream appends one, as Firehose's `AppendDelimiterToRecord`). A record that cannot be
    /// encoded is refused with [`EncodeError::Rejected`], leaving the encoder as it was, or,
    /// by an encoder that converts on worker threads, later as a [`Refusal`] in the payload.
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
/// Room past a chunk's size for the record that fills it, so staging is not doubled for it.
const STAGING_SLACK: usize = 64 * 1024;

/// Staging buffers of compressed chunks, emptied, for the next chunks of any encoder: staging
/// grows from a small start (many open partitions stay small), and without reuse every chunk
/// would grow again by copying and fault in fresh pages. Shared and capped rather than kept per
/// encoder, so a hundred open partitions do not each hold a spare chunk.
static STAGING_POOL: StagingPool = StagingPool { buffers: std::sync::Mutex::new(Vec::new()) };
/// Most buffers [`STAGING_POOL`] keeps (about one chunk each).
const MAX_POOLED_STAGING: usize = 8;

struct StagingPool {
    buffers: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl StagingPool {
    /// A pooled buffer of at most `max_capacity` (a partition with small chunks must not hold
    /// a big one), or an empty one.
    fn take(&self, max_capacity: usize) -> Vec<u8> {
        let Ok(mut buffers) = self.buffers.lock() else { return Vec::new() };
        match buffers.iter().rposition(|buffer| buffer.capacity() <= max_capacity) {
            Some(index) => buffers.swap_remove(index),
            None => Vec::new(),
        }
    }

    fn give(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() == 0 {
            return;
        }
        buffer.clear();
        if let Ok(mut buffers) = self.buffers.lock()
            && buffers.len() < MAX_POOLED_STAGING
        {
            buffers.push(buffer);
        }
    }
}
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
    pending: VecDeque<(mpsc::Receiver<Result<Compressed, EncodeError>>, usize)>,
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
            // Zip is never `None`: its header is written with the first compressed chunk.
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
        // A panic in a rayon job aborts the process (rayon's default): contained into an error.
        rayon::spawn_fifo(move || {
            let compressed = crate::catch_panic(|| compress_chunk(compression, &chunk))
                .map_err(|panic| EncodeError::Internal(format!("compressing a chunk panicked: {panic}")))
                .and_then(|compressed| compressed.map_err(EncodeError::Io))
                .map(|mut compressed| {
                    compressed.staging = chunk;
                    compressed
                });
            let _ = sender.send(compressed);
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

    fn push_done(&mut self, mut compressed: Compressed) {
        STAGING_POOL.give(std::mem::take(&mut compressed.staging));
        if self.done.is_empty() {
            let header: &'static [u8] = match self.compression {
                Compression::Gzip => &GZIP_HEADER,
                Compression::Zip => &ZIP_LOCAL_HEADER,
                _ => &[],
            };
            if !header.is_empty() {
                self.done.push(Bytes::from_static(header));
                self.done_len += header.len();
            }
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
            self.staging = STAGING_POOL.take(self.chunk_bytes + STAGING_SLACK);
        }
        let needed = data.len() + delimiter.len();
        if self.staging.capacity() - self.staging.len() < needed {
            // Double from a small start (many open partitions stay small), but never past one
            // chunk and the record that ends it: a reused buffer keeps its capacity.
            let doubled = (self.staging.capacity() * 2).max(data.len().max(4096) * 4);
            let target = doubled.min(self.chunk_bytes + STAGING_SLACK).max(self.staging.len() + needed);
            self.staging.reserve_exact(target - self.staging.len());
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
        if !self.done.is_empty() {
            let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new());
            let (raw_len, crc) = (crc.total_len(), crc.finalize());
            match self.compression {
                Compression::Gzip => {
                    // Final empty fixed-Huffman block (BFINAL=1), then CRC-32 and ISIZE (mod 2^32).
                    let mut trailer = FINAL_DEFLATE_BLOCK.to_vec();
                    trailer.extend_from_slice(&crc.to_le_bytes());
                    trailer.extend_from_slice(&(raw_len as u32).to_le_bytes());
                    self.done.push(Bytes::from(trailer));
                }
                Compression::Zip => {
                    let deflated = self.done_len - ZIP_LOCAL_HEADER.len() + FINAL_DEFLATE_BLOCK.len();
                    let trailer = zip_trailer(crc, deflated as u64, raw_len);
                    self.done.push(Bytes::from(trailer));
                }
                _ => {}
            }
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

/// An empty fixed-Huffman deflate block with BFINAL set: ends a stream of sync-flushed chunks.
const FINAL_DEFLATE_BLOCK: [u8; 2] = libdeflate_sync::FINAL_BLOCK;

/// The zip entry's name.
const ZIP_ENTRY_NAME: &[u8; 7] = b"records";
/// Version needed to extract (2.0: deflate), flags (bit 3: CRC and sizes follow the data in a
/// data descriptor), method 8 (deflate), and a fixed DOS time and date (1980-01-01 00:00, so a
/// replayed batch gives the same bytes).
const ZIP_VERSION: u16 = 20;
const ZIP_FLAGS: u16 = 0x0008;
const ZIP_DEFLATE: u16 = 8;
const ZIP_DOS_TIME: u16 = 0;
const ZIP_DOS_DATE: u16 = (1 << 5) | 1;

/// The local file header of the zip entry (CRC and sizes zero: they are in the data descriptor).
const ZIP_LOCAL_HEADER: [u8; 30 + ZIP_ENTRY_NAME.len()] = {
    let mut header = [0u8; 30 + ZIP_ENTRY_NAME.len()];
    let fields: [(usize, u32, usize); 6] = [
        (0, 0x0403_4b50, 4),
        (4, ZIP_VERSION as u32, 2),
        (6, ZIP_FLAGS as u32, 2),
        (8, ZIP_DEFLATE as u32, 2),
        (12, ZIP_DOS_DATE as u32, 2),
        (26, ZIP_ENTRY_NAME.len() as u32, 2),
    ];
    let mut field = 0;
    while field < fields.len() {
        let (offset, value, width) = fields[field];
        let mut byte = 0;
        while byte < width {
            header[offset + byte] = (value >> (8 * byte)) as u8;
            byte += 1;
        }
        field += 1;
    }
    let mut index = 0;
    while index < ZIP_ENTRY_NAME.len() {
        header[30 + index] = ZIP_ENTRY_NAME[index];
        index += 1;
    }
    header
};

/// What follows the entry's deflate data: the final block, the data descriptor, the central
/// directory and its end record. Batches are far below 4 GiB, so no zip64 records are needed.
fn zip_trailer(crc: u32, deflated: u64, raw_len: u64) -> Vec<u8> {
    let (deflated, raw_len) = (deflated as u32, raw_len as u32);
    let mut out = FINAL_DEFLATE_BLOCK.to_vec();
    let u16le = |out: &mut Vec<u8>, value: u16| out.extend_from_slice(&value.to_le_bytes());
    let u32le = |out: &mut Vec<u8>, value: u32| out.extend_from_slice(&value.to_le_bytes());
    // Data descriptor.
    u32le(&mut out, 0x0807_4b50);
    u32le(&mut out, crc);
    u32le(&mut out, deflated);
    u32le(&mut out, raw_len);
    let central_offset = ZIP_LOCAL_HEADER.len() as u32 + deflated + 16;
    // Central directory: one entry.
    let central_start = out.len();
    u32le(&mut out, 0x0201_4b50);
    u16le(&mut out, ZIP_VERSION); // made by
    u16le(&mut out, ZIP_VERSION); // needed
    u16le(&mut out, ZIP_FLAGS);
    u16le(&mut out, ZIP_DEFLATE);
    u16le(&mut out, ZIP_DOS_TIME);
    u16le(&mut out, ZIP_DOS_DATE);
    u32le(&mut out, crc);
    u32le(&mut out, deflated);
    u32le(&mut out, raw_len);
    u16le(&mut out, ZIP_ENTRY_NAME.len() as u16);
    u16le(&mut out, 0); // extra
    u16le(&mut out, 0); // comment
    u16le(&mut out, 0); // disk
    u16le(&mut out, 0); // internal attributes
    u32le(&mut out, 0); // external attributes
    u32le(&mut out, 0); // local header offset
    out.extend_from_slice(ZIP_ENTRY_NAME);
    let central_len = (out.len() - central_start) as u32;
    // End of central directory.
    u32le(&mut out, 0x0605_4b50);
    u16le(&mut out, 0);
    u16le(&mut out, 0);
    u16le(&mut out, 1);
    u16le(&mut out, 1);
    u32le(&mut out, central_len);
    u32le(&mut out, central_offset);
    u16le(&mut out, 0);
    out
}

/// Hadoop's block compressor buffer size (`io.compression.codec.snappy.buffersize`, 256 KiB):
/// the raw size of one block.
const HADOOP_SNAPPY_BLOCK: usize = 256 * 1024;

/// One compressed chunk, and for gzip the CRC of its raw bytes.
struct Compressed {
    bytes: Vec<u8>,
    crc: Option<crc32fast::Hasher>,
    /// The chunk's staging buffer, handed back for reuse.
    staging: Vec<u8>,
}

thread_local! {
    /// Each compression thread's deflate compressor (level 6, zlib's default) and output
    /// scratch, kept: the match-finder tables are large and allocated once.
    static DEFLATE: std::cell::RefCell<(libdeflate_sync::Compressor, Vec<u8>)> = std::cell::RefCell::new((
        libdeflate_sync::Compressor::new(libdeflate_sync::DEFAULT_LEVEL).expect("6 is a valid deflate level"),
        Vec::new(),
    ));
}

/// Compress one chunk, fed in one large write (a codec fed line by line runs about a third
/// slower): gzip as byte-aligned raw deflate by libdeflate (see the module header), zstd as a
/// whole frame.
fn compress_chunk(compression: Compression, chunk: &[u8]) -> io::Result<Compressed> {
    match compression {
        Compression::None => Ok(Compressed { bytes: chunk.to_vec(), crc: None, staging: Vec::new() }),
        Compression::Gzip | Compression::Zip => {
            let mut crc = crc32fast::Hasher::new();
            crc.update(chunk);
            // Compressed into the thread's scratch (sized for the worst case), then copied out
            // at its size: a chunk held in a batch must not keep the worst case's capacity.
            let bytes = DEFLATE.with_borrow_mut(|(compressor, scratch)| {
                scratch.clear();
                compressor.compress_sync_flush(chunk, scratch);
                scratch.to_vec()
            });
            Ok(Compressed { bytes, crc: Some(crc), staging: Vec::new() })
        }
        Compression::Snappy => {
            let mut encoder = snap::write::FrameEncoder::new(Vec::with_capacity(chunk.len() / 2 + 64));
            encoder.write_all(chunk)?;
            let bytes = encoder.into_inner().map_err(|error| io::Error::other(error.to_string()))?;
            Ok(Compressed { bytes, crc: None, staging: Vec::new() })
        }
        Compression::HadoopSnappy => {
            let mut encoder = snap::raw::Encoder::new();
            let mut bytes = Vec::with_capacity(chunk.len() / 2 + 64);
            for block in chunk.chunks(HADOOP_SNAPPY_BLOCK) {
                let compressed = encoder.compress_vec(block).map_err(io::Error::other)?;
                bytes.extend_from_slice(&(block.len() as u32).to_be_bytes());
                bytes.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                bytes.extend_from_slice(&compressed);
            }
            Ok(Compressed { bytes, crc: None, staging: Vec::new() })
        }
        Compression::Zstd => {
            let out = Vec::with_capacity(chunk.len() / 6 + 64);
            let mut encoder = zstd::stream::write::Encoder::new(out, zstd::DEFAULT_COMPRESSION_LEVEL)?;
            encoder.include_contentsize(true)?;
            encoder.set_pledged_src_size(Some(chunk.len() as u64))?;
            encoder.write_all(chunk)?;
            Ok(Compressed { bytes: encoder.finish()?, crc: None, staging: Vec::new() })
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

        let snappy = encode(Compression::Snappy, 16 * 1024, &records).to_bytes();
        let mut decoded = Vec::new();
        snap::read::FrameDecoder::new(&snappy[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, expected);

        // Hadoop blocks: raw length, compressed length (both big-endian), raw snappy.
        let hadoop = encode(Compression::HadoopSnappy, 1 << 20, &records).to_bytes();
        let (mut decoded, mut rest) = (Vec::new(), &hadoop[..]);
        while !rest.is_empty() {
            let raw_len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let compressed_len = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
            let block = snap::raw::Decoder::new().decompress_vec(&rest[8..8 + compressed_len]).unwrap();
            assert!(raw_len == block.len() && raw_len <= HADOOP_SNAPPY_BLOCK);
            decoded.extend_from_slice(&block);
            rest = &rest[8 + compressed_len..];
        }
        assert_eq!(decoded, expected);
    }

    #[test]
    fn zip_is_one_deflated_entry_with_a_data_descriptor_and_a_central_directory() {
        let records = lines(20_000);
        let expected: Vec<u8> = records.concat();
        let zip = encode(Compression::Zip, 16 * 1024, &records).to_bytes();
        let u32_at = |offset: usize| u32::from_le_bytes(zip[offset..offset + 4].try_into().unwrap());
        assert_eq!(u32_at(0), 0x0403_4b50);
        assert_eq!(&zip[30..37], b"records");
        // End of central directory: one entry; its offset and size point at the central header.
        let end = zip.len() - 22;
        assert_eq!(u32_at(end), 0x0605_4b50);
        let (central_len, central_offset) = (u32_at(end + 12) as usize, u32_at(end + 16) as usize);
        assert_eq!(central_offset + central_len, end);
        assert_eq!(u32_at(central_offset), 0x0201_4b50);
        let (crc, deflated, raw_len) =
            (u32_at(central_offset + 16), u32_at(central_offset + 20) as usize, u32_at(central_offset + 24) as usize);
        let mut decoded = Vec::new();
        flate2::read::DeflateDecoder::new(&zip[37..37 + deflated]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, expected);
        assert_eq!((raw_len, crc), (expected.len(), crc32fast::hash(&expected)));
        // The data descriptor repeats them right after the data.
        assert_eq!((u32_at(37 + deflated), u32_at(37 + deflated + 4)), (0x0807_4b50, crc));
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
    fn staging_is_reused_and_never_doubled_past_a_chunk() {
        let mut encoder = RawEncoder::new(Compression::Gzip, 64 * 1024);
        let record = vec![b'x'; 300];
        let mut most = 0;
        for _ in 0..2_000 {
            encoder.push(&record, b"\n").unwrap();
            most = most.max(encoder.staging.capacity());
        }
        assert!(most <= 64 * 1024 + STAGING_SLACK, "staging grew to {most}");
    }

    #[test]
    fn the_staging_pool_keeps_a_few_emptied_buffers() {
        let pool = StagingPool { buffers: std::sync::Mutex::new(Vec::new()) };
        assert_eq!(pool.take(usize::MAX).capacity(), 0);
        for _ in 0..MAX_POOLED_STAGING + 3 {
            pool.give(b"staged".repeat(1000));
        }
        pool.give(Vec::new());
        assert_eq!(pool.buffers.lock().unwrap().len(), MAX_POOLED_STAGING);
        assert_eq!(pool.take(5000).capacity(), 0, "none small enough");
        let reused = pool.take(usize::MAX);
        assert!(reused.is_empty() && reused.capacity() >= 6000);
    }

    #[test]
    fn a_replayed_gzip_batch_gives_the_same_bytes() {
        // Chunks are compressed on whichever pool thread is free; a batch re-sent after a crash
        // must still be byte for byte the object written before it.
        let records = lines(20_000);
        let first = encode(Compression::Gzip, 16 * 1024, &records).to_bytes();
        let replayed = std::thread::spawn(move || encode(Compression::Gzip, 16 * 1024, &records).to_bytes());
        assert_eq!(replayed.join().unwrap(), first);
    }

    #[test]
    fn an_empty_encoder_finishes_empty() {
        assert!(encode(Compression::Gzip, DEFAULT_CHUNK_BYTES, &[]).is_empty());
    }
}
