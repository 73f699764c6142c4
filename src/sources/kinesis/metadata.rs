//! A Kinesis record's metadata as kept in its WAL frame (one entry per user record, see
//! [`crate::wal::Frame::metadata`]): what Firehose puts in the Lambda event's
//! `kinesisRecordMetadata` and what error records can name. The shard id is the frame's source.
//!
//! ```text
//! entry = version: u8 (1) | approximate_arrival_ms: i64 LE | subsequence_number: u32 LE
//!         | sequence_len: u8 | sequence_number | partition_key_len: u16 LE | partition_key
//! ```
//!
//! Must not: grow beyond what the event needs (it is written for every record).

use bytes::{Buf, BufMut, Bytes, BytesMut};

const VERSION: u8 = 1;

/// One user record's Kinesis metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub sequence_number: String,
    /// The user record's index in its KPL aggregate; 0 for a plain record.
    pub subsequence_number: u32,
    pub partition_key: String,
    /// Kinesis's `ApproximateArrivalTimestamp`, epoch ms (0 when Kinesis gave none).
    pub approximate_arrival_ms: i64,
}

impl RecordMetadata {
    /// The frame entry. Sequence numbers are at most 128 digits and partition keys at most 256
    /// characters in Kinesis; longer values are cut to fit the length fields.
    pub fn encode(&self) -> Bytes {
        let sequence = &self.sequence_number.as_bytes()[..self.sequence_number.len().min(u8::MAX as usize)];
        let key = &self.partition_key.as_bytes()[..self.partition_key.len().min(u16::MAX as usize)];
        let mut out = BytesMut::with_capacity(1 + 8 + 4 + 1 + sequence.len() + 2 + key.len());
        out.put_u8(VERSION);
        out.put_i64_le(self.approximate_arrival_ms);
        out.put_u32_le(self.subsequence_number);
        out.put_u8(sequence.len() as u8);
        out.put_slice(sequence);
        out.put_u16_le(key.len() as u16);
        out.put_slice(key);
        out.freeze()
    }

    /// Read an entry back; `None` when it is not one this version wrote.
    pub fn decode(mut entry: Bytes) -> Option<RecordMetadata> {
        if entry.remaining() < 1 + 8 + 4 + 1 || entry.get_u8() != VERSION {
            return None;
        }
        let approximate_arrival_ms = entry.get_i64_le();
        let subsequence_number = entry.get_u32_le();
        let sequence_len = entry.get_u8() as usize;
        if entry.remaining() < sequence_len + 2 {
            return None;
        }
        let sequence_number = String::from_utf8(entry.split_to(sequence_len).to_vec()).ok()?;
        let key_len = entry.get_u16_le() as usize;
        if entry.remaining() != key_len {
            return None;
        }
        let partition_key = String::from_utf8(entry.to_vec()).ok()?;
        Some(RecordMetadata { sequence_number, subsequence_number, partition_key, approximate_arrival_ms })
    }

    /// Firehose's `kinesisRecordMetadata` object of a Lambda transform event.
    pub fn to_lambda_json(&self, shard_id: &str) -> serde_json::Value {
        serde_json::json!({
            "shardId": shard_id,
            "partitionKey": self.partition_key,
            "approximateArrivalTimestamp": self.approximate_arrival_ms,
            "sequenceNumber": self.sequence_number,
            "subsequenceNumber": self.subsequence_number,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_it_did_not_write() {
        let metadata = RecordMetadata {
            sequence_number: "49590338271490256608559692538361571095921575989136588898".into(),
            subsequence_number: 3,
            partition_key: "user-42".into(),
            approximate_arrival_ms: 1_764_115_200_123,
        };
        assert_eq!(RecordMetadata::decode(metadata.encode()), Some(metadata.clone()));
        assert_eq!(RecordMetadata::decode(Bytes::from_static(b"\x02rest")), None);
        let encoded = metadata.encode();
        assert_eq!(RecordMetadata::decode(encoded.slice(..encoded.len() - 1)), None);
        let event = metadata.to_lambda_json("shardId-000000000001");
        assert_eq!(event["subsequenceNumber"], 3);
        assert_eq!(event["shardId"], "shardId-000000000001");
    }
}
