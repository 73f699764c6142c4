//! KPL de-aggregation: a Kinesis record written by the Kinesis Producer Library may hold many user
//! records. Format (awslabs/amazon-kinesis-producer `aggregation-format.md`):
//!
//! ```text
//! record = magic F3 89 9A C2 | protobuf AggregatedRecord | md5(protobuf) (16 bytes)
//! AggregatedRecord { repeated string partition_key_table = 1;
//!                    repeated string explicit_hash_key_table = 2;
//!                    repeated Record records = 3; }
//! Record           { required uint64 partition_key_index = 1;
//!                    optional uint64 explicit_hash_key_index = 2;
//!                    required bytes data = 3;
//!                    repeated Tag tags = 4; }
//! ```
//!
//! Sub-records share their Kinesis record's sequence number and are told apart by their index
//! (the subsequence number). A record with the magic bytes whose checksum or protobuf is wrong is
//! [`Deaggregated::Malformed`]: the caller passes it through whole (as Firehose does) and counts it.
//!
//! Must not: allocate per sub-record beyond its partition key (data are zero-copy slices).

use bytes::Bytes;
use md5::{Digest, Md5};

/// The four bytes every KPL aggregate starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const MD5_LEN: usize = 16;

/// One user record of an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRecord {
    pub partition_key: String,
    pub data: Bytes,
}

/// What a Kinesis record's data turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Deaggregated {
    /// Not an aggregate (no magic bytes): one user record, the data itself.
    Plain,
    /// A valid aggregate and its user records in order.
    Records(Vec<SubRecord>),
    /// The magic bytes, but a wrong checksum or protobuf: why.
    Malformed(&'static str),
}

/// Split `data` into its user records when it is a KPL aggregate.
pub fn deaggregate(data: &Bytes) -> Deaggregated {
    if data.len() < MAGIC.len() || data[..MAGIC.len()] != MAGIC {
        return Deaggregated::Plain;
    }
    if data.len() < MAGIC.len() + MD5_LEN {
        return Deaggregated::Malformed("shorter than the magic bytes and the md5 checksum");
    }
    let protobuf = data.slice(MAGIC.len()..data.len() - MD5_LEN);
    let checksum = &data[data.len() - MD5_LEN..];
    if Md5::digest(&protobuf).as_slice() != checksum {
        return Deaggregated::Malformed("md5 checksum mismatch");
    }
    match parse_aggregate(&protobuf) {
        Ok(records) => Deaggregated::Records(records),
        Err(reason) => Deaggregated::Malformed(reason),
    }
}

/// Protobuf wire types used by the aggregate.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;
const FIXED32: u64 = 5;

struct Wire<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl<'a> Wire<'a> {
    fn new(bytes: &'a Bytes) -> Self {
        Self { bytes, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else { return Err("truncated varint") };
            self.at += 1;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes")
    }

    fn length_delimited(&mut self) -> Result<Bytes, &'static str> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length does not fit in memory")?;
        let end = self.at.checked_add(len).filter(|&end| end <= self.bytes.len()).ok_or("field past the end")?;
        let field = self.bytes.slice(self.at..end);
        self.at = end;
        Ok(field)
    }

    /// Skip a field of a type this parser does not need.
    fn skip(&mut self, wire_type: u64) -> Result<(), &'static str> {
        let len = match wire_type {
            VARINT => return self.varint().map(|_| ()),
            FIXED64 => 8,
            LENGTH_DELIMITED => return self.length_delimited().map(|_| ()),
            FIXED32 => 4,
            _ => return Err("unknown protobuf wire type"),
        };
        self.at = self.at.checked_add(len).filter(|&end| end <= self.bytes.len()).ok_or("field past the end")?;
        Ok(())
    }

    /// (field number, wire type)
    fn key(&mut self) -> Result<(u64, u64), &'static str> {
        let key = self.varint()?;
        Ok((key >> 3, key & 7))
    }
}

fn parse_aggregate(protobuf: &Bytes) -> Result<Vec<SubRecord>, &'static str> {
    let mut partition_keys = Vec::new();
    // (partition key index, data) until the key table is complete.
    let mut records = Vec::new();
    let mut wire = Wire::new(protobuf);
    while !wire.done() {
        match wire.key()? {
            (1, LENGTH_DELIMITED) => {
                let key = wire.length_delimited()?;
                partition_keys.push(String::from_utf8(key.to_vec()).map_err(|_| "partition key is not UTF-8")?);
            }
            (3, LENGTH_DELIMITED) => records.push(parse_record(&wire.length_delimited()?)?),
            (_, wire_type) => wire.skip(wire_type)?,
        }
    }
    records
        .into_iter()
        .map(|(index, data)| {
            let partition_key = usize::try_from(index)
                .ok()
                .and_then(|index| partition_keys.get(index))
                .ok_or("partition key index outside the table")?
                .clone();
            Ok(SubRecord { partition_key, data })
        })
        .collect()
}

fn parse_record(record: &Bytes) -> Result<(u64, Bytes), &'static str> {
    let mut wire = Wire::new(record);
    let mut partition_key_index = None;
    let mut data = None;
    while !wire.done() {
        match wire.key()? {
            (1, VARINT) => partition_key_index = Some(wire.varint()?),
            (3, LENGTH_DELIMITED) => data = Some(wire.length_delimited()?),
            (_, wire_type) => wire.skip(wire_type)?,
        }
    }
    match (partition_key_index, data) {
        (Some(index), Some(data)) => Ok((index, data)),
        (None, _) => Err("sub-record without partition_key_index"),
        (_, None) => Err("sub-record without data"),
    }
}

/// Build an aggregate (for tests and benchmarks): every record gets its own partition key entry.
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8 & 0x7F) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        varint(out, (number << 3) | LENGTH_DELIMITED);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let mut protobuf = Vec::new();
    for (key, _) in records {
        field(&mut protobuf, 1, key.as_bytes());
    }
    for (index, (_, data)) in records.iter().enumerate() {
        let mut record = Vec::new();
        varint(&mut record, 1 << 3);
        varint(&mut record, index as u64);
        field(&mut record, 3, data);
        field(&mut protobuf, 3, &record);
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&protobuf);
    out.extend_from_slice(Md5::digest(&protobuf).as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_records_are_left_alone() {
        assert_eq!(deaggregate(&Bytes::from_static(b"{\"a\":1}")), Deaggregated::Plain);
        assert_eq!(deaggregate(&Bytes::new()), Deaggregated::Plain);
    }

    #[test]
    fn an_aggregate_splits_into_its_records_in_order() {
        let built = Bytes::from(aggregate(&[("k1", b"one"), ("k2", b""), ("k1", b"three")]));
        let Deaggregated::Records(records) = deaggregate(&built) else { panic!("not de-aggregated") };
        let got: Vec<_> = records.iter().map(|record| (record.partition_key.as_str(), &record.data[..])).collect();
        assert_eq!(got, vec![("k1", &b"one"[..]), ("k2", &b""[..]), ("k1", &b"three"[..])]);
    }

    #[test]
    fn a_wrong_checksum_or_protobuf_is_malformed() {
        let mut built = aggregate(&[("k", b"data")]);
        let last = built.len() - 1;
        built[last] ^= 1;
        assert_eq!(deaggregate(&Bytes::from(built)), Deaggregated::Malformed("md5 checksum mismatch"));

        let mut bad_protobuf = MAGIC.to_vec();
        let garbage = [0x1A, 0x7F, 0x01];
        bad_protobuf.extend_from_slice(&garbage);
        bad_protobuf.extend_from_slice(Md5::digest(garbage).as_slice());
        assert_eq!(deaggregate(&Bytes::from(bad_protobuf)), Deaggregated::Malformed("field past the end"));

        assert!(matches!(deaggregate(&Bytes::from(MAGIC.to_vec())), Deaggregated::Malformed(_)));
    }

    #[test]
    fn a_partition_key_index_outside_the_table_is_malformed() {
        let mut protobuf = Vec::new();
        // records { partition_key_index: 3, data: "x" } with an empty key table
        protobuf.extend_from_slice(&[0x1A, 0x05, 0x08, 0x03, 0x1A, 0x01, b'x']);
        let mut record = MAGIC.to_vec();
        record.extend_from_slice(&protobuf);
        record.extend_from_slice(Md5::digest(&protobuf).as_slice());
        assert_eq!(deaggregate(&Bytes::from(record)), Deaggregated::Malformed("partition key index outside the table"));
    }
}
