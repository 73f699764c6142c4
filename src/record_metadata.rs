//! What a pull source knows about each record beyond its bytes (a Kinesis sequence number and
//! partition key; a Kafka offset and partition), as one small named object in Firehose's own words: the
//! Lambda event record carries it as is (`"kinesisRecordMetadata": {"shardId", …}`). Each source
//! owns its object's name and field names and writes the entry with a [`MetadataWriter`]; the
//! WAL keeps one entry per record of a frame, opaque to it ([`crate::wal::Frame::metadata`]);
//! the Lambda stage reads it back with [`RecordMetadata::decode`] without knowing which source
//! wrote it. Records without metadata (Direct PUT, NDJSON, files) have no entry and cost nothing.
//!
//! ```text
//! entry = version: u8 (2) | object: name | count: u8 | (name | value){count}
//! name  = index: u8 into NAMES (below)  |  0xFF | len: u8 | utf-8
//! value = 0 | len: u16 LE | utf-8          text
//!       | 1 | i64 LE                       integer
//!       | 2 | skip: u8                     the frame's shard: its source shard key from byte
//!                                          `skip` on (the source's own key prefix left out)
//! ```
//! Names Firehose's events use are one byte, and a frame's shard is not repeated per record, so an
//! entry stays close to its values' size (it is written for every record).
//!
//! Must not: know which source writes which fields, or read anything but the entry and the
//! frame's shard.

use bytes::{BufMut, Bytes, BytesMut};

const VERSION: u8 = 2;
/// Names written as their index. Append only: the index is what WAL entries hold.
const NAMES: [&str; 9] = [
    "kinesisRecordMetadata",
    "shardId",
    "partitionKey",
    "approximateArrivalTimestamp",
    "sequenceNumber",
    "subsequenceNumber",
    "mskRecordMetadata",
    "partitionId",
    "offset",
];
const LITERAL_NAME: u8 = 0xFF;
const TEXT: u8 = 0;
const INTEGER: u8 = 1;
const FRAME_SHARD: u8 = 2;

/// One field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataValue {
    Text(String),
    Integer(i64),
}

/// A record's metadata read back: the object's name and its fields, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The object's name in the Lambda event record, e.g. `kinesisRecordMetadata`.
    pub object: String,
    pub fields: Vec<(String, MetadataValue)>,
}

impl RecordMetadata {
    /// Read an entry; `frame_shard` is the shard key of the frame's source. `None` when the entry
    /// is not one this version writes. A frame-shard field of a frame without a source is left
    /// out.
    pub fn decode(entry: &[u8], frame_shard: Option<&str>) -> Option<RecordMetadata> {
        let mut cursor = Cursor(entry);
        if cursor.u8()? != VERSION {
            return None;
        }
        let object = cursor.name()?;
        let count = cursor.u8()?;
        let mut fields = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name = cursor.name()?;
            let value = match cursor.u8()? {
                TEXT => {
                    let len = u16::from_le_bytes(cursor.array()?) as usize;
                    Some(MetadataValue::Text(cursor.text(len)?))
                }
                INTEGER => Some(MetadataValue::Integer(i64::from_le_bytes(cursor.array()?))),
                FRAME_SHARD => {
                    let skip = cursor.u8()? as usize;
                    frame_shard.map(|shard| MetadataValue::Text(shard.get(skip..).unwrap_or_default().to_string()))
                }
                _ => return None,
            };
            if let Some(value) = value {
                fields.push((name, value));
            }
        }
        cursor.0.is_empty().then_some(RecordMetadata { object, fields })
    }

    pub fn get(&self, name: &str) -> Option<&MetadataValue> {
        self.fields.iter().find(|(field, _)| field == name).map(|(_, value)| value)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            MetadataValue::Text(text) => Some(text),
            MetadataValue::Integer(_) => None,
        }
    }

    pub fn integer(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            MetadataValue::Integer(integer) => Some(*integer),
            MetadataValue::Text(_) => None,
        }
    }

    /// The object as JSON, fields in the order written.
    pub fn to_json(&self) -> serde_json::Value {
        let fields = self.fields.iter().map(|(name, value)| {
            let value = match value {
                MetadataValue::Text(text) => serde_json::Value::from(text.as_str()),
                MetadataValue::Integer(integer) => serde_json::Value::from(*integer),
            };
            (name.clone(), value)
        });
        serde_json::Value::Object(fields.collect())
    }
}

/// A record's source metadata as routing sees it (jq partition keys read it as `$metadata`):
/// a WAL entry still encoded, decoded only when something asks, or one already decoded (the
/// Lambda stage's). Cheap to copy; records without metadata are [`MetadataRef::None`].
#[derive(Debug, Clone, Copy, Default)]
pub enum MetadataRef<'a> {
    #[default]
    None,
    Entry {
        entry: &'a [u8],
        frame_shard: Option<&'a str>,
    },
    Decoded(&'a RecordMetadata),
}

impl<'a> MetadataRef<'a> {
    /// The entry of record `offset` of `frame`, if its source wrote one.
    pub fn of_frame(frame: &'a crate::wal::Frame, offset: usize) -> Self {
        match frame.metadata.get(offset) {
            None => MetadataRef::None,
            Some(entry) => {
                MetadataRef::Entry { entry, frame_shard: frame.source.as_ref().map(|source| source.shard.as_str()) }
            }
        }
    }

    /// The metadata object's fields as JSON (what the Lambda event's `…RecordMetadata` member
    /// holds), or `None` without metadata.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        match self {
            MetadataRef::None => None,
            MetadataRef::Entry { entry, frame_shard } => RecordMetadata::decode(entry, *frame_shard)
                .filter(|metadata| metadata.object != FAILED_RECORD)
                .map(|metadata| metadata.to_json()),
            MetadataRef::Decoded(metadata) => Some(metadata.to_json()),
        }
    }
}

/// The object a source writes for a record it refuses itself (a windowed query's late record):
/// the pipeline files the record in the error output under `processing-failed` with the entry's
/// `errorCode` and `errorMessage`, instead of delivering it.
pub const FAILED_RECORD: &str = "spillwayFailedRecord";

/// The codes a source may refuse a record with (`Item::Failed` and the error records take a
/// static code); anything else reads as `Spillway.SourceRefused`.
const FAILURE_CODES: [&str; 6] = [
    crate::processing::sql::SQL_LATE_RECORD,
    crate::processing::sql::SQL_INVALID_EVENT_TIME,
    crate::processing::sql::SQL_TOO_MANY_GROUPS,
    crate::processing::sql::SQL_QUERY_FAILED,
    crate::processing::sql::SQL_MALFORMED_DATA,
    crate::processing::sql::SQL_NON_JSON_RECORD,
];

/// A [`FAILED_RECORD`] entry.
pub fn failed_record(code: &str, message: &str) -> Bytes {
    MetadataWriter::new(FAILED_RECORD).text("errorCode", code).text("errorMessage", message).finish()
}

/// The code and message of a record its source refused, if `entry` says so.
pub fn source_failure(entry: &[u8]) -> Option<(&'static str, String)> {
    let metadata = RecordMetadata::decode(entry, None).filter(|metadata| metadata.object == FAILED_RECORD)?;
    let written = metadata.text("errorCode").unwrap_or_default();
    let code = FAILURE_CODES.iter().find(|code| **code == written).copied().unwrap_or("Spillway.SourceRefused");
    Some((code, metadata.text("errorMessage").unwrap_or_default().to_string()))
}

/// Writes one record's entry: `MetadataWriter::new("kinesisRecordMetadata").text("partitionKey",
/// key)…finish()`. Names are cut to 255 bytes and texts to 65,535 (at a character boundary); a
/// 256th field is left out.
pub struct MetadataWriter {
    out: BytesMut,
    count_at: usize,
    count: u8,
}

impl MetadataWriter {
    pub fn new(object: &str) -> Self {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(VERSION);
        put_name(&mut out, object);
        let count_at = out.len();
        out.put_u8(0);
        Self { out, count_at, count: 0 }
    }

    pub fn text(mut self, name: &str, value: &str) -> Self {
        if self.field(name) {
            let value = cut(value, u16::MAX as usize);
            self.out.put_u8(TEXT);
            self.out.put_u16_le(value.len() as u16);
            self.out.put_slice(value.as_bytes());
        }
        self
    }

    pub fn integer(mut self, name: &str, value: i64) -> Self {
        if self.field(name) {
            self.out.put_u8(INTEGER);
            self.out.put_i64_le(value);
        }
        self
    }

    /// A field whose value is the shard of the frame the record is in: the frame source's shard
    /// key from byte `skip` on (a source keying its shards `kinesis:<shard id>` skips 8).
    pub fn frame_shard(mut self, name: &str, skip: usize) -> Self {
        if self.field(name) {
            self.out.put_u8(FRAME_SHARD);
            self.out.put_u8(skip.min(u8::MAX as usize) as u8);
        }
        self
    }

    pub fn finish(mut self) -> Bytes {
        self.out[self.count_at] = self.count;
        self.out.freeze()
    }

    /// Start a field; false when the entry is full.
    fn field(&mut self, name: &str) -> bool {
        if self.count == u8::MAX {
            return false;
        }
        self.count += 1;
        put_name(&mut self.out, name);
        true
    }
}

fn put_name(out: &mut BytesMut, name: &str) {
    if let Some(index) = NAMES.iter().position(|known| *known == name) {
        out.put_u8(index as u8);
        return;
    }
    let name = cut(name, u8::MAX as usize);
    out.put_u8(LITERAL_NAME);
    out.put_u8(name.len() as u8);
    out.put_slice(name.as_bytes());
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads an entry front to back; every read is `None` past its end.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, len: usize) -> Option<&[u8]> {
        if self.0.len() < len {
            return None;
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn text(&mut self, len: usize) -> Option<String> {
        std::str::from_utf8(self.take(len)?).ok().map(str::to_string)
    }

    fn name(&mut self) -> Option<String> {
        match self.u8()? {
            LITERAL_NAME => {
                let len = self.u8()? as usize;
                self.text(len)
            }
            index => NAMES.get(index as usize).map(|name| name.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_known_and_new_names_and_resolves_the_frame_shard() {
        let entry = MetadataWriter::new("kinesisRecordMetadata")
            .frame_shard("shardId", "kinesis:".len())
            .text("partitionKey", "user-42")
            .integer("approximateArrivalTimestamp", 1_764_115_200_123)
            .text("topic", "app-logs")
            .finish();
        let metadata = RecordMetadata::decode(&entry, Some("kinesis:shardId-000000000001")).unwrap();
        assert_eq!(metadata.object, "kinesisRecordMetadata");
        assert_eq!(metadata.text("shardId"), Some("shardId-000000000001"));
        assert_eq!(metadata.text("partitionKey"), Some("user-42"));
        assert_eq!(metadata.integer("approximateArrivalTimestamp"), Some(1_764_115_200_123));
        assert_eq!(metadata.text("topic"), Some("app-logs"), "a name outside the table is written out");
        let names: Vec<&str> = metadata.fields.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["shardId", "partitionKey", "approximateArrivalTimestamp", "topic"], "in the order written");
        assert_eq!(metadata.to_json()["shardId"], "shardId-000000000001");

        let without_frame = RecordMetadata::decode(&entry, None).unwrap();
        assert_eq!(without_frame.get("shardId"), None, "no frame source: the field is left out");
        assert_eq!(without_frame.fields.len(), 3);
    }

    #[test]
    fn known_names_take_one_byte() {
        let entry = MetadataWriter::new("kinesisRecordMetadata").integer("subsequenceNumber", 3).finish();
        assert_eq!(entry.len(), 1 + 1 + 1 + 1 + 1 + 8);
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        let entry = MetadataWriter::new("mskRecordMetadata").text("offset", "17").finish();
        assert!(RecordMetadata::decode(&entry, None).is_some());
        assert_eq!(RecordMetadata::decode(&entry[..entry.len() - 1], None), None, "cut short");
        let mut longer = entry.to_vec();
        longer.push(0);
        assert_eq!(RecordMetadata::decode(&longer, None), None, "trailing bytes");
        // Version 1 entries (Kinesis's layout before this module) are not read.
        assert_eq!(RecordMetadata::decode(b"\x01\x00\x00\x00\x00\x00\x00\x00\x00", None), None);
        assert_eq!(RecordMetadata::decode(b"", None), None);
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(40_000);
        let entry = MetadataWriter::new(&"x".repeat(300)).text("partitionKey", &long).finish();
        let metadata = RecordMetadata::decode(&entry, None).unwrap();
        assert_eq!(metadata.object.len(), 255);
        let text = metadata.text("partitionKey").unwrap();
        assert!(text.len() <= u16::MAX as usize && text.len() >= u16::MAX as usize - 1);
        assert!(text.chars().all(|c| c == 'é'));
    }
}
