//! A Kafka record's metadata as kept in its WAL frame: Firehose's `mskRecordMetadata` (the Lambda
//! event record's member for an MSK source: `offset`, `partitionId`, `approximateArrivalTimestamp`,
//! the first two as strings as Firehose sends them), plus what Firehose leaves out and a Kafka user
//! asks for: `topic`, `key` (base64; absent for a null key) and `headers` (a JSON array of
//! `{"<name>": "<base64 value>"}` objects in the record's order, the shape Lambda's own Kafka
//! events use; a null value is `null`; absent when the record has none).
//!
//! Must not: grow beyond what the event needs (it is written for every record).

use base64::Engine;
use bytes::Bytes;

use crate::record_metadata::{MetadataWriter, RecordMetadata};

/// The Lambda event record's member holding the fields below.
pub const OBJECT: &str = "mskRecordMetadata";

/// One record's Kafka metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KafkaMetadata {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (create or log-append time), epoch ms; 0 when it has none.
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    /// Name and value; a header may repeat and may have no value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl KafkaMetadata {
    /// What a consumed record says about itself.
    pub fn of(message: &impl rdkafka::message::Message) -> KafkaMetadata {
        use rdkafka::message::Headers;
        let headers = message
            .headers()
            .map(|headers| {
                headers.iter().map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec))).collect()
            })
            .unwrap_or_default();
        KafkaMetadata {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
            key: message.key().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The frame entry.
    pub fn encode(&self) -> Bytes {
        let base64 = base64::engine::general_purpose::STANDARD;
        let mut writer = MetadataWriter::new(OBJECT)
            .text("offset", &self.offset.to_string())
            .text("partitionId", &self.partition.to_string())
            .integer("approximateArrivalTimestamp", self.timestamp_ms)
            .text("topic", &self.topic);
        if let Some(key) = &self.key {
            writer = writer.text("key", &base64.encode(key));
        }
        if !self.headers.is_empty() {
            let headers: Vec<serde_json::Value> = self
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = value.as_ref().map_or(serde_json::Value::Null, |value| base64.encode(value).into());
                    serde_json::json!({ name.as_str(): value })
                })
                .collect();
            writer = writer.text("headers", &serde_json::Value::Array(headers).to_string());
        }
        writer.finish()
    }

    /// Read an entry this source wrote back; `None` for anything else.
    pub fn decode(entry: &[u8]) -> Option<KafkaMetadata> {
        let metadata = RecordMetadata::decode(entry, None)?;
        if metadata.object != OBJECT {
            return None;
        }
        let base64 = base64::engine::general_purpose::STANDARD;
        let key = match metadata.text("key") {
            Some(key) => Some(base64.decode(key).ok()?),
            None => None,
        };
        let headers = match metadata.text("headers") {
            None => Vec::new(),
            Some(text) => {
                let parsed: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(text).ok()?;
                let mut headers = Vec::new();
                for header in parsed {
                    for (name, value) in header {
                        let value = match value {
                            serde_json::Value::String(value) => Some(base64.decode(value).ok()?),
                            _ => None,
                        };
                        headers.push((name, value));
                    }
                }
                headers
            }
        };
        Some(KafkaMetadata {
            topic: metadata.text("topic")?.to_string(),
            partition: metadata.text("partitionId")?.parse().ok()?,
            offset: metadata.text("offset")?.parse().ok()?,
            timestamp_ms: metadata.integer("approximateArrivalTimestamp")?,
            key,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> KafkaMetadata {
        KafkaMetadata {
            topic: "orders".into(),
            partition: 3,
            offset: 17,
            timestamp_ms: 1_764_115_200_123,
            key: Some(b"user-42".to_vec()),
            headers: vec![("trace".into(), Some(b"abc".to_vec())), ("empty".into(), None)],
        }
    }

    #[test]
    fn round_trips_and_refuses_what_it_did_not_write() {
        let metadata = metadata();
        assert_eq!(KafkaMetadata::decode(&metadata.encode()), Some(metadata.clone()));
        let bare = KafkaMetadata { key: None, headers: Vec::new(), ..metadata };
        assert_eq!(KafkaMetadata::decode(&bare.encode()), Some(bare));
        let other = MetadataWriter::new("kinesisRecordMetadata").text("offset", "1").finish();
        assert_eq!(KafkaMetadata::decode(&other), None);
    }

    /// What the Lambda stage puts in the event: Firehose's three fields first, then spillway's.
    #[test]
    fn the_entry_reads_back_as_firehose_s_msk_record_metadata() {
        let generic = RecordMetadata::decode(&metadata().encode(), Some("kafka:orders:3")).unwrap();
        assert_eq!(generic.object, "mskRecordMetadata");
        assert_eq!(
            generic.to_json(),
            serde_json::json!({
                "offset": "17",
                "partitionId": "3",
                "approximateArrivalTimestamp": 1_764_115_200_123_i64,
                "topic": "orders",
                "key": "dXNlci00Mg==",
                "headers": r#"[{"trace":"YWJj"},{"empty":null}]"#,
            })
        );
    }
}
