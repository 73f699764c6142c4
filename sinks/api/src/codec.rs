//! Compressions shared by every byte-oriented sink, named as Firehose names them. The encoding
//! itself is in [`crate::encode`].

use serde::Deserialize;

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
}
