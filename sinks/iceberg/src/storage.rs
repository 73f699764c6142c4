//! iceberg-rust's `Storage` over the S3 sink's `object_store` client: how the sink reads table
//! metadata and manifests and writes data files, manifests and metadata in an `s3://` warehouse
//! (MinIO, AWS), with the same endpoint, addressing and credentials options as the S3 sink.
//! iceberg 0.10 ships only local and in-memory storage; its S3 storage lives in a separate
//! OpenDAL-based crate, which would bring a second S3 client into the binary.
//! A SQL catalog's warehouse is one bucket, whose client is made with the sink; a REST catalog's
//! server decides where its tables live, so clients are made for the buckets the tables name,
//! from the same options, on first use (vended credentials in the server's answers are not
//! used).
//!
//! Must not: retry (object_store's own short retry aside; the pipeline retries batches), or
//! reach outside its one bucket (when it has one).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig, StorageFactory};
use iceberg::{Error, ErrorKind, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use spillway_sink_s3::S3Connection;

/// The S3 clients a storage reaches objects with.
#[derive(Debug)]
pub enum Stores {
    /// One bucket and its client.
    One { bucket: String, store: Arc<dyn ObjectStore> },
    /// Any bucket, each client made from `connection` when a path first names its bucket.
    AnyBucket { connection: S3Connection, made: Mutex<HashMap<String, Arc<dyn ObjectStore>>> },
}

impl Stores {
    /// The client and object key of `path` (`s3://<bucket>/<key>`, also `s3a://`, `s3n://`).
    fn locate(&self, path: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let rest = ["s3://", "s3a://", "s3n://"]
            .iter()
            .find_map(|scheme| path.strip_prefix(scheme))
            .ok_or_else(|| Error::new(ErrorKind::DataInvalid, format!("`{path}` is not an s3:// path")))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let key = Path::parse(key).map_err(|error| Error::new(ErrorKind::DataInvalid, format!("`{path}`: {error}")))?;
        match self {
            Stores::One { bucket: own, store } => {
                if bucket != own {
                    let message = format!("`{path}` is outside the warehouse bucket `{own}`");
                    return Err(Error::new(ErrorKind::DataInvalid, message));
                }
                Ok((store.clone(), key))
            }
            Stores::AnyBucket { connection, made } => {
                if bucket.is_empty() {
                    return Err(Error::new(ErrorKind::DataInvalid, format!("`{path}` names no bucket")));
                }
                let mut made =
                    made.lock().map_err(|_| Error::new(ErrorKind::Unexpected, "s3 client cache poisoned"))?;
                if let Some(store) = made.get(bucket) {
                    return Ok((store.clone(), key));
                }
                let store: Arc<dyn ObjectStore> = Arc::new(connection.build_store(bucket).map_err(|error| {
                    Error::new(ErrorKind::Unexpected, format!("cannot make an s3 client for bucket `{bucket}`"))
                        .with_source(error)
                })?);
                made.insert(bucket.to_string(), store.clone());
                Ok((store, key))
            }
        }
    }
}

/// Makes [`BucketStorage`]. Serializable only because iceberg's factories are (`typetag`); a
/// deserialized copy has no client and refuses every operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketStorageFactory {
    #[serde(skip)]
    stores: Option<Arc<Stores>>,
}

impl BucketStorageFactory {
    /// Storage in `bucket` only, through `store`.
    pub fn new(bucket: String, store: Arc<dyn ObjectStore>) -> Self {
        Self { stores: Some(Arc::new(Stores::One { bucket, store })) }
    }

    /// Storage in whichever buckets the paths name, with clients made from `connection`.
    pub fn any_bucket(connection: S3Connection) -> Self {
        Self { stores: Some(Arc::new(Stores::AnyBucket { connection, made: Mutex::new(HashMap::new()) })) }
    }
}

#[typetag::serde]
impl StorageFactory for BucketStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(BucketStorage { stores: self.stores.clone() }))
    }
}

/// `s3://<bucket>/<key>` (also `s3a://`, `s3n://`) paths.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketStorage {
    #[serde(skip)]
    stores: Option<Arc<Stores>>,
}

impl BucketStorage {
    /// The client and object key of `path`.
    fn locate(&self, path: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        self.stores.as_ref().ok_or_else(|| Error::new(ErrorKind::Unexpected, "storage has no s3 client"))?.locate(path)
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
        let (store, key) = self.locate(path)?;
        match store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(io_error(error)),
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        let (store, key) = self.locate(path)?;
        let meta = store.head(&key).await.map_err(io_error)?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        let (store, key) = self.locate(path)?;
        let got = store.get(&key).await.map_err(io_error)?;
        got.bytes().await.map_err(io_error)
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        let (store, key) = self.locate(path)?;
        Ok(Box::new(BucketRead { store, key }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let (store, key) = self.locate(path)?;
        store.put(&key, PutPayload::from_bytes(bs)).await.map_err(io_error)?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let (store, key) = self.locate(path)?;
        Ok(Box::new(BucketWrite { store, key, chunks: Vec::new(), closed: false }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (store, key) = self.locate(path)?;
        match store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(io_error(error)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let (store, prefix) = self.locate(path)?;
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
