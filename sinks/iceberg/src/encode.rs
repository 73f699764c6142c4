//! The Iceberg sink's open batch: records kept as sent, each behind its length (u32, little
//! endian), so the sink reads them back one by one at write time and converts them with the
//! table's schema *as it is then* (a table created or altered after spillway started is
//! honoured, and a missing table only delays delivery). The JSON nesting bound is checked here,
//! so a record too deep for any parser is refused at once.
//!
//! Must not: parse records (conversion needs the table, which only the sink loads).

use bytes::Bytes;
use spillway_sink_api::{EncodeError, Encoder, EncoderFactory, Payload};
use spillway_sink_s3::parquet::{FORMAT_CONVERSION_FAILED, PARSE_ERROR};

/// Makes [`LengthPrefixedEncoder`]s.
pub struct LengthPrefixedEncoderFactory;

impl EncoderFactory for LengthPrefixedEncoderFactory {
    fn new_encoder(&self, _chunk_bytes: usize) -> Box<dyn Encoder> {
        Box::new(LengthPrefixedEncoder { buffer: Vec::new() })
    }
}

pub struct LengthPrefixedEncoder {
    buffer: Vec<u8>,
}

impl Encoder for LengthPrefixedEncoder {
    fn push(&mut self, data: &[u8], _delimiter: &[u8]) -> Result<(), EncodeError> {
        spillway_sink_api::check_json_depth(data).map_err(|too_deep| EncodeError::Rejected {
            output_type: FORMAT_CONVERSION_FAILED,
            code: PARSE_ERROR,
            message: format!("the record cannot be read: {too_deep}"),
        })?;
        let Ok(length) = u32::try_from(data.len()) else {
            return Err(EncodeError::Rejected {
                output_type: FORMAT_CONVERSION_FAILED,
                code: PARSE_ERROR,
                message: format!("the record is {} bytes, more than a batch can hold", data.len()),
            });
        };
        self.buffer.extend_from_slice(&length.to_le_bytes());
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    fn held_bytes(&self) -> usize {
        self.buffer.capacity()
    }

    fn finish(self: Box<Self>) -> Result<Payload, EncodeError> {
        Ok(Payload::from_chunks(vec![Bytes::from(self.buffer)]))
    }
}

/// The records of a payload, in push order; `Err` if the payload is not one this encoder made.
pub fn records(payload: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut records = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err("a record length is cut short".to_string());
        };
        let length = u32::from_le_bytes(*length) as usize;
        if tail.len() < length {
            return Err(format!("a record of {length} bytes is cut short"));
        }
        let (record, tail) = tail.split_at(length);
        records.push(record);
        rest = tail;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_deep_ones_are_refused() {
        let mut encoder = LengthPrefixedEncoderFactory.new_encoder(0);
        encoder.push(br#"{"a":1}"#, b"").expect("push");
        encoder.push(b"", b"").expect("empty");
        encoder.push(br#"{"b":"x"}"#, b"\n").expect("push");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(encoder.push(deep.as_bytes(), b""), Err(EncodeError::Rejected { code: PARSE_ERROR, .. })));
        let payload = encoder.finish().expect("finish").to_bytes();
        let read = records(&payload).expect("records");
        assert_eq!(read, vec![&br#"{"a":1}"#[..], b"", br#"{"b":"x"}"#]);
        assert!(records(&payload[..payload.len() - 1]).is_err());
    }
}
