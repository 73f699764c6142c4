//! iceberg-rust's `Storage` over the S3 sink's `object_store` client: how the sink reads table
//! metadata and manifests and writes data files, manifests and metadata in an `s3://` warehouse
//! (MinIO, AWS), with the same endpoint, addressing and credentials options as the S3 sink.
//! iceberg 0.10 ships only local and in-memory storage; its S3 storage lives in a separate
//! OpenDAL-based crate, which would bring a second S3 client into the binary.
//!
//! Must not: retry (object_store's own short retry aside; the pipeline retries batches), or
//! reach outside its one bucket.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig, StorageFactory};
use iceberg::{Error, ErrorKind, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

/// Makes [`BucketStorage`] for one bucket. Serializable only because iceberg's factories are
/// (`typetag`); a deserialized copy has no client and refuses every operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketStorageFactory {
    bucket: String,
    #[serde(skip)]
    store: Option<Arc<dyn ObjectStore>>,
}

impl BucketStorageFactory {
    pub fn new(bucket: String, store: Arc<dyn ObjectStore>) -> Self {
        Self { bucket, store: Some(store) }
    }
}

#[typetag::serde]
impl StorageFactory for BucketStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(BucketStorage { bucket: self.bucket.clone(), store: self.store.clone() }))
    }
}

/// `s3://<bucket>/<key>` (also `s3a://`, `s3n://`) paths in one bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketStorage {
    bucket: String,
    #[serde(skip)]
    store: Option<Arc<dyn ObjectStore>>,
}

impl BucketStorage {
    fn store(&self) -> Result<&Arc<dyn ObjectStore>> {
        self.store.as_ref().ok_or_else(|| Error::new(ErrorKind::Unexpected, "storage has no s3 client"))
    }

    /// The object key of `path`, which must name this storage's bucket.
    fn key(&self, path: &str) -> Result<Path> {
        let rest = ["s3://", "s3a://", "s3n://"]
            .iter()
            .find_map(|scheme| path.strip_prefix(scheme))
            .ok_or_else(|| Error::new(ErrorKind::DataInvalid, format!("`{path}` is not an s3:// path")))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket != self.bucket {
            let message = format!("`{path}` is outside the warehouse bucket `{}`", self.bucket);
            return Err(Error::new(ErrorKind::DataInvalid, message));
        }
        Path::parse(key).map_err(|error| Error::new(ErrorKind::DataInvalid, format!("`{path}`: {error}")))
    }
}

fn io_error(error: object_store::Error) -> Error {
    let kind = match &error {
        object_store::Error::NotFound { .. } => ErrorKind::DataInvalid,
        _ => ErrorKind::Unexpected,
    };
    // Not `retryable`: iceberg would retry a whole commit on it; the pipeline retries the batch.
    Error::new(kind, "object store request failed").with_source(error)
}

#[async_trait]
#[typetag::serde]
impl Storage for BucketStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        match self.store()?.head(&self.key(path)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(io_error(error)),
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        let meta = self.store()?.head(&self.key(path)?).await.map_err(io_error)?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        let got = self.store()?.get(&self.key(path)?).await.map_err(io_error)?;
        got.bytes().await.map_err(io_error)
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        Ok(Box::new(BucketRead { store: self.store()?.clone(), key: self.key(path)? }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        self.store()?.put(&self.key(path)?, PutPayload::from_bytes(bs)).await.map_err(io_error)?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        Ok(Box::new(BucketWrite {
            store: self.store()?.clone(),
            key: self.key(path)?,
            chunks: Vec::new(),
            closed: false,
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        match self.store()?.delete(&self.key(path)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(io_error(error)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let store = self.store()?.clone();
        let prefix = self.key(path)?;
        let locations = store.list(Some(&prefix)).map(|meta| meta.map(|meta| meta.location)).boxed();
        let mut deleted = store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            result.map_err(io_error)?;
        }
        Ok(())
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> Result<()> {
        let mut paths = paths;
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

struct BucketRead {
    store: Arc<dyn ObjectStore>,
    key: Path,
}

#[async_trait]
impl FileRead for BucketRead {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        self.store.get_range(&self.key, range).await.map_err(io_error)
    }
}

/// Collects a file's bytes and puts the object on `close`: data files are at most a batch's
/// size, and S3 has no appends anyway. A file never closed is never written.
struct BucketWrite {
    store: Arc<dyn ObjectStore>,
    key: Path,
    chunks: Vec<Bytes>,
    closed: bool,
}

#[async_trait]
impl FileWrite for BucketWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        self.chunks.push(bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Err(Error::new(ErrorKind::Unexpected, "file already closed"));
        }
        self.closed = true;
        let payload = PutPayload::from_iter(std::mem::take(&mut self.chunks));
        self.store.put(&self.key, payload).await.map_err(io_error)?;
        Ok(())
    }
}
