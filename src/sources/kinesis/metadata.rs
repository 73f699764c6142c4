//! A Kinesis record's metadata as kept in its WAL frame: what Firehose puts in the Lambda event's
//! `kinesisRecordMetadata`, under Firehose's names. The entry is the generic
//! [`crate::record_metadata`] one; this source owns the object's name and its fields. The shard
//! id is not repeated per record: the entry refers to the frame's source (`kinesis:<shard id>`).
//!
//! Must not: grow beyond what the event needs (it is written for every record).

use bytes::Bytes;

use crate::record_metadata::{MetadataWriter, RecordMetadata};

/// The Lambda event record's member holding the fields below.
pub const OBJECT: &str = "kinesisRecordMetadata";
const SHARD_ID: &str = "shardId";
const PARTITION_KEY: &str = "partitionKey";
const APPROXIMATE_ARRIVAL_TIMESTAMP: &str = "approximateArrivalTimestamp";
const SEQUENCE_NUMBER: &str = "sequenceNumber";
const SUBSEQUENCE_NUMBER: &str = "subsequenceNumber";
/// The part of a frame's shard key before the shard id: `kinesis:` (see [`super::KIND`]).
const SHARD_KEY_PREFIX_LEN: usize = super::KIND.len() + 1;

/// One user record's Kinesis metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisMetadata {
    pub sequence_number: String,
    /// The user record's index in its KPL aggregate; 0 for a plain record.
    pub subsequence_number: u32,
    pub partition_key: String,
    /// Kinesis's `ApproximateArrivalTimestamp`, epoch ms (0 when Kinesis gave none).
    pub approximate_arrival_ms: i64,
}

impl KinesisMetadata {
    /// The frame entry, fields in the order the Lambda event has always listed them.
    pub fn encode(&self) -> Bytes {
        MetadataWriter::new(OBJECT)
            .frame_shard(SHARD_ID, SHARD_KEY_PREFIX_LEN)
            .text(PARTITION_KEY, &self.partition_key)
            .integer(APPROXIMATE_ARRIVAL_TIMESTAMP, self.approximate_arrival_ms)
            .text(SEQUENCE_NUMBER, &self.sequence_number)
            .integer(SUBSEQUENCE_NUMBER, i64::from(self.subsequence_number))
            .finish()
    }

    /// Read an entry this source wrote back; `None` for anything else.
    pub fn decode(entry: &[u8]) -> Option<KinesisMetadata> {
        let metadata = RecordMetadata::decode(entry, None)?;
        if metadata.object != OBJECT {
            return None;
        }
        Some(KinesisMetadata {
            sequence_number: metadata.text(SEQUENCE_NUMBER)?.to_string(),
            subsequence_number: u32::try_from(metadata.integer(SUBSEQUENCE_NUMBER)?).ok()?,
            partition_key: metadata.text(PARTITION_KEY)?.to_string(),
            approximate_arrival_ms: metadata.integer(APPROXIMATE_ARRIVAL_TIMESTAMP)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> KinesisMetadata {
        KinesisMetadata {
            sequence_number: "49590338271490256608559692538361571095921575989136588898".into(),
            subsequence_number: 3,
            partition_key: "user-42".into(),
            approximate_arrival_ms: 1_764_115_200_123,
        }
    }

    #[test]
    fn round_trips_and_refuses_what_it_did_not_write() {
        let metadata = metadata();
        assert_eq!(KinesisMetadata::decode(&metadata.encode()), Some(metadata.clone()));
        assert_eq!(KinesisMetadata::decode(b"\x02rest"), None);
        let encoded = metadata.encode();
        assert_eq!(KinesisMetadata::decode(&encoded[..encoded.len() - 1]), None);
        let other = MetadataWriter::new("mskRecordMetadata").text(SEQUENCE_NUMBER, "1").finish();
        assert_eq!(KinesisMetadata::decode(&other), None, "another source's object");
    }

    /// What the Lambda stage reads from the entry in a frame of shard `kinesis:<shard id>`:
    /// Firehose's `kinesisRecordMetadata`, exactly.
    #[test]
    fn the_entry_reads_back_as_firehose_s_kinesis_record_metadata() {
        let entry = metadata().encode();
        let generic = RecordMetadata::decode(&entry, Some("kinesis:shardId-000000000001")).unwrap();
        assert_eq!(generic.object, "kinesisRecordMetadata");
        assert_eq!(
            generic.to_json(),
            serde_json::json!({
                "shardId": "shardId-000000000001",
                "partitionKey": "user-42",
                "approximateArrivalTimestamp": 1_764_115_200_123_i64,
                "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                "subsequenceNumber": 3,
            })
        );
    }
}
