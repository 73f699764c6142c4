//! Compression shared by every byte-oriented sink. Encoding is CPU work: callers run it on a
//! blocking thread (`tokio::task::spawn_blocking`), never on the async runtime.

use std::io::{self, Write};

use serde::Deserialize;

use crate::Record;

/// Object compression, named as in Firehose's `CompressionFormat` (lowercase) plus `zstd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    #[serde(alias = "uncompressed")]
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// File extension Firehose appends for this compression ("" for none).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// `Content-Encoding`-style name, for logs and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Concatenate the records' bytes (Firehose adds nothing between records) and compress them.
    pub fn encode(self, records: &[Record]) -> io::Result<Vec<u8>> {
        let raw_len: usize = records.iter().map(|record| record.data.len()).sum();
        match self {
            Compression::None => {
                let mut out = Vec::with_capacity(raw_len);
                for record in records {
                    out.extend_from_slice(&record.data);
                }
                Ok(out)
            }
            Compression::Gzip => {
                let out = Vec::with_capacity(raw_len / 8 + 64);
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
                for record in records {
                    encoder.write_all(&record.data)?;
                }
                encoder.finish()
            }
            Compression::Zstd => {
                let out = Vec::with_capacity(raw_len / 8 + 64);
                let mut encoder = zstd::stream::write::Encoder::new(out, zstd::DEFAULT_COMPRESSION_LEVEL)?;
                encoder.include_contentsize(true)?;
                encoder.set_pledged_src_size(Some(raw_len as u64))?;
                for record in records {
                    encoder.write_all(&record.data)?;
                }
                encoder.finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use bytes::Bytes;

    use super::*;

    fn records() -> Vec<Record> {
        (0..100u64)
            .map(|sequence| Record { data: Bytes::from(format!("{{\"n\":{sequence}}}\n")), arrival_ms: 0, sequence })
            .collect()
    }

    fn concatenated(records: &[Record]) -> Vec<u8> {
        records.iter().flat_map(|record| record.data.to_vec()).collect()
    }

    #[test]
    fn every_compression_round_trips_to_the_concatenated_records() {
        let records = records();
        let expected = concatenated(&records);
        assert_eq!(Compression::None.encode(&records).unwrap(), expected);

        let gzip = Compression::Gzip.encode(&records).unwrap();
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, expected);

        let zstd = Compression::Zstd.encode(&records).unwrap();
        assert_eq!(zstd::decode_all(&zstd[..]).unwrap(), expected);
    }
}
