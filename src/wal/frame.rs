//! The on-disk frame: one append (a whole `PutRecordBatch`, so a batch is all-or-nothing).
//!
//! ```text
//! frame   = payload_len: u32 LE | crc32c(payload): u32 LE | payload
//! payload = first_sequence: u64 LE | arrival_ms: i64 LE | count: u32 LE | (len: u32 LE | bytes){count}
//!           [ source [ metadata ] ]
//! source  = shard_len: u16 LE | shard | position_len: u16 LE | position
//! metadata = count: u32 LE (= the record count) | (len: u32 LE | bytes){count}
//! ```
//!
//! `source` is present only in frames of a pulled shard (Kinesis, DynamoDB Streams, a tailed
//! file): the shard and its own cursor after the frame's last record, so a pull source resumes
//! from what the WAL holds. Frames written before it existed simply have none. `metadata`, when
//! present, holds one opaque entry per record, written by the source (a Kinesis record's sequence
//! number, subsequence number, partition key and arrival time) for the stages that need it (the
//! Lambda event, error records); the WAL never interprets it.

use bytes::{Buf, Bytes};

pub const HEADER_LEN: usize = 8;
pub const PAYLOAD_FIXED_LEN: usize = 8 + 8 + 4;
/// Every record takes at least its 4-byte length prefix, so a payload of `n` bytes after the
/// fixed fields holds at most `n / 4` records.
pub const MIN_RECORD_LEN: usize = 4;

/// A pulled shard's cursor after a frame's last record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourcePosition {
    /// The shard: a Kinesis shard id, a tailed file's identity, ….
    pub shard: String,
    /// The shard's own cursor, opaque to the WAL (a sequence number, an inode + offset, …).
    pub position: String,
}

/// Most bytes of a shard name or a position (a u16 length).
pub const MAX_SOURCE_FIELD_LEN: usize = u16::MAX as usize;

/// A decoded frame; `records` are zero-copy slices of the payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub first_sequence: u64,
    pub arrival_ms: i64,
    pub records: Vec<Bytes>,
    pub source: Option<SourcePosition>,
    /// One entry per record when the source wrote any (see the module doc), else empty.
    pub metadata: Vec<Bytes>,
}

impl Frame {
    pub fn end_sequence(&self) -> u64 {
        self.first_sequence + self.records.len() as u64
    }
}

/// Size of the frame that `encode` writes for these records.
pub fn encoded_len(records: &[Bytes], source: Option<&SourcePosition>, metadata: &[Bytes]) -> usize {
    let source_len = source.map_or(0, |source| 4 + source.shard.len() + source.position.len());
    let metadata_len = if source.is_some() && !metadata.is_empty() {
        4 + metadata.iter().map(|entry| 4 + entry.len()).sum::<usize>()
    } else {
        0
    };
    HEADER_LEN
        + PAYLOAD_FIXED_LEN
        + records.iter().map(|record| 4 + record.len()).sum::<usize>()
        + source_len
        + metadata_len
}

/// Append one frame to `out`. A source position's fields must be at most
/// [`MAX_SOURCE_FIELD_LEN`] bytes (checked by `Wal::append_pulled`); `metadata` is written only
/// with a source, and must then be empty or hold one entry per record (checked there too).
pub fn encode(
    first_sequence: u64,
    arrival_ms: i64,
    records: &[Bytes],
    source: Option<&SourcePosition>,
    metadata: &[Bytes],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    encode_fixed(first_sequence, arrival_ms, records.len(), out);
    for record in records {
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(record);
    }
    if let Some(source) = source {
        for field in [source.shard.as_bytes(), source.position.as_bytes()] {
            let len = field.len().min(MAX_SOURCE_FIELD_LEN);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&field[..len]);
        }
        if !metadata.is_empty() {
            out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
            for entry in metadata {
                out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
                out.extend_from_slice(entry);
            }
        }
    }
    let payload = &out[start + HEADER_LEN..];
    let payload_len = payload.len();
    let checksum = crc32c::crc32c(payload);
    fill_header(&mut out[start..], payload_len, checksum);
}

/// Append the header and fixed fields of a frame whose records are `framed`, already laid out as
/// a frame holds them (`records::FramedRecords`), without a source: followed by `framed`, these
/// are the bytes [`encode`] writes for the same records.
pub fn encode_head(first_sequence: u64, arrival_ms: i64, count: usize, framed: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    encode_fixed(first_sequence, arrival_ms, count, out);
    let fixed = &out[start + HEADER_LEN..];
    let checksum = crc32c::crc32c_append(crc32c::crc32c(fixed), framed);
    let payload_len = fixed.len() + framed.len();
    fill_header(&mut out[start..], payload_len, checksum);
}

fn encode_fixed(first_sequence: u64, arrival_ms: i64, count: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&first_sequence.to_le_bytes());
    out.extend_from_slice(&arrival_ms.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
}

fn fill_header(header: &mut [u8], payload_len: usize, checksum: u32) {
    header[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    header[4..HEADER_LEN].copy_from_slice(&checksum.to_le_bytes());
}

/// Parse a frame header into (payload length, checksum).
pub fn parse_header(header: &[u8; HEADER_LEN]) -> (usize, u32) {
    let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let checksum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (payload_len, checksum)
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Checksum,
    Malformed(&'static str),
}

/// A stored frame's fixed fields: which records it holds, by sequence, and when they arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub first_sequence: u64,
    pub arrival_ms: i64,
    pub count: u64,
}

impl FrameHead {
    pub fn end_sequence(&self) -> u64 {
        self.first_sequence + self.count
    }
}

/// Check a payload against its checksum and read which records it holds, without decoding them
/// (what copying frames as they are stored needs: the replicated WAL's segments).
pub fn verify(payload: &[u8], checksum: u32) -> Result<FrameHead, DecodeError> {
    if crc32c::crc32c(payload) != checksum {
        return Err(DecodeError::Checksum);
    }
    let mut fixed =
        payload.get(..PAYLOAD_FIXED_LEN).ok_or(DecodeError::Malformed("payload shorter than its fixed fields"))?;
    let first_sequence = fixed.get_u64_le();
    let arrival_ms = fixed.get_i64_le();
    let count = fixed.get_u32_le() as usize;
    // `count` comes from the file: never trust (or allocate for) more than the payload can hold.
    if count > (payload.len() - PAYLOAD_FIXED_LEN) / MIN_RECORD_LEN {
        return Err(DecodeError::Malformed("record count larger than the payload can hold"));
    }
    Ok(FrameHead { first_sequence, arrival_ms, count: count as u64 })
}

/// Verify and decode a payload read after its header.
pub fn decode(payload: Bytes, checksum: u32) -> Result<Frame, DecodeError> {
    let FrameHead { first_sequence, arrival_ms, count } = verify(&payload, checksum)?;
    let count = count as usize;
    let mut cursor = payload.slice(PAYLOAD_FIXED_LEN..);
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        if cursor.remaining() < 4 {
            return Err(DecodeError::Malformed("record length past the payload"));
        }
        let len = cursor.get_u32_le() as usize;
        if cursor.remaining() < len {
            return Err(DecodeError::Malformed("record bytes past the payload"));
        }
        records.push(cursor.split_to(len));
    }
    let source = if cursor.has_remaining() { Some(decode_source(&mut cursor)?) } else { None };
    let metadata = if cursor.has_remaining() { decode_metadata(&mut cursor, count)? } else { Vec::new() };
    if cursor.has_remaining() {
        return Err(DecodeError::Malformed("trailing bytes after the record metadata"));
    }
    Ok(Frame { first_sequence, arrival_ms, records, source, metadata })
}

/// The lengths at which `bytes` (the start of a payload and what follows it) could end as a
/// frame's payload starting at `first_sequence`: after its records, after a source position,
/// after record metadata. Recovery uses them to tell a damaged length field (the payload is all
/// there and one of them verifies) from a frame cut short.
pub fn plausible_payload_lens(bytes: &[u8], first_sequence: u64) -> Vec<usize> {
    let mut lens = Vec::new();
    let read_u32 = |at: usize| bytes.get(at..at + 4).and_then(|field| field.try_into().ok()).map(u32::from_le_bytes);
    let read_u16 = |at: usize| bytes.get(at..at + 2).and_then(|field| field.try_into().ok()).map(u16::from_le_bytes);
    let starts_right = bytes.get(..8).and_then(|field| field.try_into().ok()).map(u64::from_le_bytes);
    let (Some(found_sequence), Some(count)) = (starts_right, read_u32(16)) else { return lens };
    if found_sequence != first_sequence {
        return lens;
    }
    // Past `count` fields, each a little-endian length of `width` bytes and its bytes.
    let skip = |mut at: usize, count: u32, width: usize| -> Option<usize> {
        for _ in 0..count {
            let len = if width == 2 { read_u16(at).map(usize::from) } else { read_u32(at).map(|len| len as usize) };
            at += width + len?;
            if at > bytes.len() {
                return None;
            }
        }
        Some(at)
    };
    // Records, each a u32 length and its bytes.
    let Some(at) = skip(PAYLOAD_FIXED_LEN, count, 4) else { return lens };
    lens.push(at);
    // A source position: two u16-prefixed fields.
    let Some(at) = skip(at, 2, 2) else { return lens };
    lens.push(at);
    // Record metadata: a u32 count (the record count), then u32-prefixed entries.
    if read_u32(at) != Some(count) {
        return lens;
    }
    let Some(at) = skip(at + 4, count, 4) else { return lens };
    lens.push(at);
    lens
}

fn decode_metadata(cursor: &mut Bytes, record_count: usize) -> Result<Vec<Bytes>, DecodeError> {
    if cursor.remaining() < 4 {
        return Err(DecodeError::Malformed("record metadata count past the payload"));
    }
    let count = cursor.get_u32_le() as usize;
    if count != record_count {
        return Err(DecodeError::Malformed("record metadata count differs from the record count"));
    }
    let mut metadata = Vec::with_capacity(count);
    for _ in 0..count {
        if cursor.remaining() < 4 {
            return Err(DecodeError::Malformed("record metadata length past the payload"));
        }
        let len = cursor.get_u32_le() as usize;
        if cursor.remaining() < len {
            return Err(DecodeError::Malformed("record metadata past the payload"));
        }
        metadata.push(cursor.split_to(len));
    }
    Ok(metadata)
}

fn decode_source(cursor: &mut Bytes) -> Result<SourcePosition, DecodeError> {
    let mut field = || -> Result<String, DecodeError> {
        if cursor.remaining() < 2 {
            return Err(DecodeError::Malformed("source position field length past the payload"));
        }
        let len = cursor.get_u16_le() as usize;
        if cursor.remaining() < len {
            return Err(DecodeError::Malformed("source position field past the payload"));
        }
        String::from_utf8(cursor.split_to(len).to_vec())
            .map_err(|_| DecodeError::Malformed("source position is not UTF-8"))
    };
    let shard = field()?;
    let position = field()?;
    Ok(SourcePosition { shard, position })
}

/// Frames laid end to end as the WAL writes them (a replicated segment object holds exactly
/// these bytes): each frame checked and decoded, in order. Fails at the first frame that is
/// cut short or does not verify, naming its offset.
pub fn decode_all(bytes: Bytes) -> Result<Vec<Frame>, String> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let Some(header) = bytes.get(offset..offset + HEADER_LEN) else {
            return Err(format!("frame header cut short at offset {offset}"));
        };
        let mut fixed = [0; HEADER_LEN];
        fixed.copy_from_slice(header);
        let (payload_len, checksum) = parse_header(&fixed);
        let start = offset + HEADER_LEN;
        let Some(end) = start.checked_add(payload_len).filter(|end| *end <= bytes.len()) else {
            return Err(format!("frame at offset {offset} is cut short"));
        };
        let frame = decode(bytes.slice(start..end), checksum)
            .map_err(|error| format!("frame at offset {offset} does not verify: {error:?}"))?;
        frames.push(frame);
        offset = end;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_a_flipped_bit() {
        let records = vec![Bytes::from_static(b"one"), Bytes::new(), Bytes::from(vec![0u8, 255, 7])];
        let mut out = Vec::new();
        encode(42, 1_700_000_000_123, &records, None, &[], &mut out);
        assert_eq!(out.len(), encoded_len(&records, None, &[]));

        let header: [u8; HEADER_LEN] = out[..HEADER_LEN].try_into().unwrap();
        let (payload_len, checksum) = parse_header(&header);
        assert_eq!(payload_len, out.len() - HEADER_LEN);
        let frame = decode(Bytes::copy_from_slice(&out[HEADER_LEN..]), checksum).unwrap();
        assert_eq!(frame.first_sequence, 42);
        assert_eq!(frame.arrival_ms, 1_700_000_000_123);
        assert_eq!(frame.records, records);
        assert_eq!(frame.end_sequence(), 45);

        let mut corrupted = out[HEADER_LEN..].to_vec();
        corrupted[10] ^= 1;
        assert_eq!(decode(Bytes::from(corrupted), checksum).unwrap_err(), DecodeError::Checksum);
    }

    #[test]
    fn a_head_before_records_laid_out_in_place_is_the_frame_encode_writes() {
        let records = vec![Bytes::from_static(b"one"), Bytes::new(), Bytes::from(vec![0u8, 255, 7])];
        let mut whole = Vec::new();
        encode(42, 7, &records, None, &[], &mut whole);
        let fixed_len = HEADER_LEN + PAYLOAD_FIXED_LEN;
        let mut head = vec![9u8; 5];
        encode_head(42, 7, records.len(), &whole[fixed_len..], &mut head);
        assert_eq!(&head[..5], &[9u8; 5], "appended after what the buffer held");
        assert_eq!(head[5..], whole[..fixed_len]);
    }

    #[test]
    fn a_pulled_frame_carries_its_source_position() {
        let records = vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")];
        let source = SourcePosition { shard: "shardId-000000000001".into(), position: "4959…0001".into() };
        let mut out = Vec::new();
        encode(7, 1, &records, Some(&source), &[], &mut out);
        assert_eq!(out.len(), encoded_len(&records, Some(&source), &[]));
        let (_, checksum) = parse_header(&out[..HEADER_LEN].try_into().unwrap());
        let frame = decode(Bytes::copy_from_slice(&out[HEADER_LEN..]), checksum).unwrap();
        assert_eq!((frame.records, frame.source, frame.metadata), (records, Some(source), vec![]));
    }

    #[test]
    fn a_pulled_frame_may_carry_one_metadata_entry_per_record() {
        let records = vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")];
        let metadata = vec![Bytes::from_static(b"meta-1"), Bytes::new()];
        let source = SourcePosition { shard: "kinesis:shardId-000000000001".into(), position: "seq:42".into() };
        let mut out = Vec::new();
        encode(7, 1, &records, Some(&source), &metadata, &mut out);
        assert_eq!(out.len(), encoded_len(&records, Some(&source), &metadata));
        let (_, checksum) = parse_header(&out[..HEADER_LEN].try_into().unwrap());
        let frame = decode(Bytes::copy_from_slice(&out[HEADER_LEN..]), checksum).unwrap();
        assert_eq!((frame.records, frame.source, frame.metadata), (records, Some(source), metadata));
    }

    #[test]
    fn plausible_payload_lens_find_the_true_end_of_every_frame_shape() {
        let records = vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")];
        let source = SourcePosition { shard: "shard-1".into(), position: "42".into() };
        let metadata = [Bytes::from_static(b"m1"), Bytes::from_static(b"m2")];
        for (source, metadata) in [(None, &[][..]), (Some(&source), &[][..]), (Some(&source), &metadata[..])] {
            let mut out = Vec::new();
            encode(7, 1, &records, source, metadata, &mut out);
            let payload_len = out.len() - HEADER_LEN;
            // What follows the frame in the file does not hide its end.
            out.extend_from_slice(&[0xAB; 64]);
            let lens = plausible_payload_lens(&out[HEADER_LEN..], 7);
            assert!(lens.contains(&payload_len), "{lens:?} misses {payload_len}");
            assert!(plausible_payload_lens(&out[HEADER_LEN..], 8).is_empty(), "another first sequence");
            assert!(lens.iter().all(|&len| len <= out.len() - HEADER_LEN));
        }
        assert!(plausible_payload_lens(&[0u8; 10], 0).is_empty(), "shorter than the fixed fields");
    }

    #[test]
    fn a_record_count_the_payload_cannot_hold_is_malformed_before_allocating() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&7u64.to_le_bytes());
        payload.extend_from_slice(&0i64.to_le_bytes());
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        payload.extend_from_slice(&[0u8; 8]);
        let checksum = crc32c::crc32c(&payload);
        assert_eq!(
            decode(Bytes::from(payload), checksum).unwrap_err(),
            DecodeError::Malformed("record count larger than the payload can hold")
        );
    }

    #[test]
    fn frames_laid_end_to_end_decode_in_order_and_damage_is_named() {
        let mut bytes = Vec::new();
        encode(7, 1, &[Bytes::from_static(b"a"), Bytes::from_static(b"bc")], None, &[], &mut bytes);
        encode(9, 2, &[Bytes::from_static(b"d")], None, &[], &mut bytes);
        let frames = decode_all(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(
            frames.iter().map(|frame| (frame.first_sequence, frame.records.len())).collect::<Vec<_>>(),
            [(7, 2), (9, 1)]
        );
        let cut = decode_all(Bytes::from(bytes[..bytes.len() - 1].to_vec())).unwrap_err();
        assert!(cut.contains("cut short"), "{cut}");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(decode_all(Bytes::from(bytes)).unwrap_err().contains("does not verify"));
    }
}
