//! Compressions shared by every byte-oriented sink, named as Firehose names them. The encoding
//! itself is in [`crate::encode`].

use serde::Deserialize;

/// Object compression, named as in Firehose's `CompressionFormat` (lowercase) plus `zstd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    #[serde(alias = "uncompressed")]
    None,
    Gzip,
    /// A zip archive holding one deflated entry, `records`.
    Zip,
    /// Snappy's framing format (`.snappy`, as Firehose's `Snappy`).
    Snappy,
    /// Hadoop's snappy block format (Firehose's `HADOOP_SNAPPY`), which Hadoop, Spark and Hive
    /// read natively.
    HadoopSnappy,
    Zstd,
}

impl Compression {
    /// File extension Firehose appends for this compression ("" for none).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zip => ".zip",
            Compression::Snappy | Compression::HadoopSnappy => ".snappy",
            Compression::Zstd => ".zst",
        }
    }

    /// Firehose's `CompressionFormat` value; `None` for zstd, which the API model's enum has not.
    pub fn firehose_format(self) -> Option<&'static str> {
        match self {
            Compression::None => Some("UNCOMPRESSED"),
            Compression::Gzip => Some("GZIP"),
            Compression::Zip => Some("ZIP"),
            Compression::Snappy => Some("Snappy"),
            Compression::HadoopSnappy => Some("HADOOP_SNAPPY"),
            Compression::Zstd => None,
        }
    }

    /// The compression of a Firehose `CompressionFormat` value.
    pub fn from_firehose_format(format: &str) -> Option<Self> {
        [Compression::None, Compression::Gzip, Compression::Zip, Compression::Snappy, Compression::HadoopSnappy]
            .into_iter()
            .find(|compression| compression.firehose_format() == Some(format))
    }

    /// `Content-Encoding`-style name, for logs and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zip => "zip",
            Compression::Snappy => "snappy",
            Compression::HadoopSnappy => "hadoop_snappy",
            Compression::Zstd => "zstd",
        }
    }
}
