//! `S3Sink`: writes one batch as one object (compressed on a blocking thread, uploaded with a
//! single PUT or, above the threshold, a multipart upload) and error records as newline JSON
//! objects under the error output prefix. One attempt per call: retries belong to the pipeline.
//! A batch's key depends only on the batch, so a replayed batch overwrites its own object.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use spillway_sink_api::{Batch, Compression, EncoderFactory, ErrorOutput, Payload, Sink, SinkError};
use uuid::Uuid;

use crate::error::{Operation, classify};
use crate::key::{PrefixTemplate, RenderContext, RenderError, batch_time, object_name};
use crate::local::{LocalWriter, available_bytes};
use crate::timestamp::Zone;

/// Content type Firehose gives delivered objects.
const CONTENT_TYPE: &str = "application/octet-stream";

/// Below this many free bytes, a local output folder's healthcheck fails (`/ready` answers 503).
const MIN_FREE_BYTES: u64 = 1 << 20;

/// Parts of a multipart upload in flight at once.
const MAX_CONCURRENT_PARTS: usize = 4;

/// Which object store is behind the sink; the local filesystem rejects object attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    Local,
    S3,
}

/// Everything `S3SinkConfig::build` resolved.
pub(crate) struct SinkParts {
    pub stream: String,
    /// Firehose's `VersionId`, in object names.
    pub version_id: u64,
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    /// Where error records go: `store`, or the store of `error_output_url`.
    pub error_store: Arc<dyn ObjectStore>,
    pub kind: StoreKind,
    /// The output folder of a local sink (absolute).
    pub local_root: Option<std::path::PathBuf>,
    /// Writes into `local_root`, staged outside the keys readers list.
    pub local: Option<LocalWriter>,
    /// The same for the error output's folder, when it is local.
    pub error_local: Option<LocalWriter>,
    pub prefix: PrefixTemplate,
    pub error_prefix: PrefixTemplate,
    /// `custom_time_zone`: prefixes and object names are rendered in it.
    pub zone: Zone,
    pub compression: Compression,
    /// How open batches are held: raw + compression, or Parquet.
    pub encoders: Arc<dyn EncoderFactory>,
    pub extension: String,
    pub multipart_threshold: u64,
    pub part_size: u64,
}

/// The object-store sink: a local folder or an S3 / MinIO bucket.
pub struct S3Sink {
    parts: SinkParts,
}

impl std::fmt::Debug for S3Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Sink")
            .field("stream", &self.parts.stream)
            .field("url", &self.parts.url)
            .field("compression", &self.parts.compression)
            .finish_non_exhaustive()
    }
}

impl S3Sink {
    pub(crate) fn new(parts: SinkParts) -> Self {
        Self { parts }
    }

    /// The encoder open batches of this sink are held in: records as sent then the configured
    /// compression, or Parquet row groups (`format`).
    pub fn encoder_factory(&self) -> Arc<dyn EncoderFactory> {
        self.parts.encoders.clone()
    }

    /// The stream this sink was built for.
    pub fn stream(&self) -> &str {
        &self.parts.stream
    }

    /// The object key `write` uses for this batch: the prefix rendered with the batch's oldest
    /// arrival time and partition keys, then Firehose's object name.
    pub fn object_key(&self, batch: &Batch) -> Result<String, SinkError> {
        let time = batch_time(Some(batch.oldest_arrival_ms), &self.parts.zone).map_err(render_failed)?;
        let context = RenderContext {
            time: &time,
            zone: &self.parts.zone,
            batch_id: batch.id,
            error_output_type: None,
            partition_keys: &batch.partition,
        };
        let prefix = self.parts.prefix.render(&context).map_err(render_failed)?;
        let name = object_name(&batch.stream, self.parts.version_id, &time, batch.id, &self.parts.extension);
        Ok(format!("{prefix}{name}"))
    }

    /// The key `write_error_records` uses for this batch and error output type. Error objects are
    /// newline JSON and never compressed, so they carry no extension.
    pub fn error_object_key(&self, batch: &Batch, error_output_type: &str) -> Result<String, SinkError> {
        let partition_keys = BTreeMap::new();
        let time = batch_time(Some(batch.oldest_arrival_ms), &self.parts.zone).map_err(render_failed)?;
        let context = RenderContext {
            time: &time,
            zone: &self.parts.zone,
            batch_id: batch.id,
            error_output_type: Some(error_output_type),
            partition_keys: &partition_keys,
        };
        let prefix = self.parts.error_prefix.render(&context).map_err(render_failed)?;
        // A prefix without the error output type would give every type of one batch the same
        // key; derive a per-type id so they do not overwrite each other (still stable on replay).
        let id = if self.parts.error_prefix.has_error_output_type() {
            batch.id
        } else {
            Uuid::new_v5(&batch.id, error_output_type.as_bytes())
        };
        let name = object_name(&batch.stream, self.parts.version_id, &time, id, "");
        Ok(format!("{prefix}{name}"))
    }

    async fn put(&self, location: &Path, payload: &Payload) -> object_store::Result<()> {
        if let Some(local) = &self.parts.local {
            return local.write(location.as_ref(), payload.chunks().to_vec()).await;
        }
        let options = PutOptions { attributes: self.attributes(), ..PutOptions::default() };
        let body: PutPayload = payload.chunks().iter().cloned().collect();
        self.parts.store.put_opts(location, body, options).await?;
        Ok(())
    }

    /// Upload the payload's chunks as parts (`WriteMultipart` regroups them into `part_size`
    /// parts), never joining the whole object in memory.
    async fn put_multipart(&self, location: &Path, payload: &Payload) -> object_store::Result<()> {
        let options = PutMultipartOptions { attributes: self.attributes(), ..PutMultipartOptions::default() };
        let upload = self.parts.store.put_multipart_opts(location, options).await?;
        let part_size = usize::try_from(self.parts.part_size).unwrap_or(usize::MAX);
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
        for chunk in payload.chunks() {
            if let Err(error) = writer.wait_for_capacity(MAX_CONCURRENT_PARTS).await {
                abort(writer, location).await;
                return Err(error);
            }
            writer.put(chunk.clone());
        }
        // `finish` aborts the upload itself when a part or the completion fails.
        writer.finish().await?;
        Ok(())
    }

    fn attributes(&self) -> Attributes {
        match self.parts.kind {
            StoreKind::Local => Attributes::new(),
            StoreKind::S3 => Attributes::from_iter([(Attribute::ContentType, CONTENT_TYPE)]),
        }
    }
}

async fn abort(writer: WriteMultipart, location: &Path) {
    if let Err(error) = writer.abort().await {
        tracing::warn!(key = %location, error = %error, "aborting a failed multipart upload failed");
    }
}

fn parse_location(key: &str) -> Result<Path, SinkError> {
    Path::parse(key).map_err(|error| {
        SinkError::permanent("S3.InvalidKey", format!("`{key}` is not a valid object key")).with_source(error)
    })
}

/// A key that cannot be rendered for this batch (missing partition key, empty batch, a prefix
/// evaluated past 512 characters): the batch itself is at fault, so retrying cannot help; its
/// records go to the error output.
fn render_failed(error: RenderError) -> SinkError {
    SinkError::permanent("S3.InvalidKey", format!("cannot build the object key: {error}")).with_source(error)
}

#[async_trait]
impl Sink for S3Sink {
    /// One object per batch, from the payload the pipeline encoded; a single PUT, or a
    /// multipart upload above the threshold.
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let key = self.object_key(batch)?;
        let location = parse_location(&key)?;
        let size = batch.payload.len();
        // A local folder takes any size in one staged write.
        let multipart = size as u64 > self.parts.multipart_threshold && self.parts.local.is_none();
        let written = if multipart {
            self.put_multipart(&location, &batch.payload).await
        } else {
            self.put(&location, &batch.payload).await
        };
        written.map_err(|error| classify(error, Operation::Write, &key))?;
        tracing::debug!(
            stream = %batch.stream,
            batch_id = %batch.id,
            key = %key,
            records = batch.record_count(),
            bytes = size,
            multipart,
            "wrote object"
        );
        Ok(())
    }

    /// A listing of the prefix's fixed part: proves the bucket (or folder) exists and the
    /// credentials may read it, without writing anything.
    async fn healthcheck(&self) -> Result<(), SinkError> {
        // Listing a local "folder" that is a regular file finds nothing and succeeds, yet every
        // write into it fails: check that the folder is one (a missing folder is fine, see below).
        if let Some(folder) = &self.parts.local_root {
            match tokio::fs::metadata(folder).await {
                Ok(metadata) if !metadata.is_dir() => {
                    let message = format!("output folder `{}` is not a directory", folder.display());
                    return Err(SinkError::retriable("S3.AccessDenied", message));
                }
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    let message = format!("cannot read output folder `{}`", folder.display());
                    return Err(SinkError::retriable("S3.AccessDenied", message).with_source(error));
                }
            }
            // A full disk lists fine but refuses every write: say so before a batch finds out.
            let probe = folder.clone();
            if let Ok(Ok(free)) = tokio::task::spawn_blocking(move || available_bytes(&probe)).await
                && free < MIN_FREE_BYTES
            {
                let message =
                    format!("output folder `{}` is on a full filesystem ({free} bytes free)", folder.display());
                return Err(SinkError::retriable("S3.StorageFull", message));
            }
        }
        let root = self.parts.prefix.literal_root();
        let location = if root.is_empty() { None } else { Some(parse_location(root)?) };
        match self.parts.store.list_with_delimiter(location.as_ref()).await {
            Ok(_) => Ok(()),
            // A local folder that does not exist yet is created on the first write.
            Err(object_store::Error::NotFound { .. }) if self.parts.kind == StoreKind::Local => Ok(()),
            Err(error) => Err(classify(error, Operation::Healthcheck, root)),
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[async_trait]
impl ErrorOutput for S3Sink {
    async fn write_error_records(
        &self,
        batch: &Batch,
        error_output_type: &str,
        lines: Vec<u8>,
    ) -> Result<(), SinkError> {
        let key = self.error_object_key(batch, error_output_type)?;
        let location = parse_location(&key)?;
        let size = lines.len();
        let written = match &self.parts.error_local {
            Some(local) => local.write(location.as_ref(), vec![Bytes::from(lines)]).await,
            None => {
                let options = PutOptions { attributes: self.attributes(), ..PutOptions::default() };
                self.parts
                    .error_store
                    .put_opts(&location, PutPayload::from(Bytes::from(lines)), options)
                    .await
                    .map(|_| ())
            }
        };
        written.map_err(|error| classify(error, Operation::WriteErrorRecords, &key))?;
        tracing::debug!(
            stream = %batch.stream,
            batch_id = %batch.id,
            key = %key,
            error_output_type,
            bytes = size,
            "wrote error output object"
        );
        Ok(())
    }
}

impl S3Sink {
    /// Write `body` as one object at `key` (a single PUT, the sink's content type), e.g. the
    /// Redshift manifest that lists a batch's object. Overwrites: a replay writes the same body.
    pub async fn write_object(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        let location = parse_location(key)?;
        let written = match &self.parts.local {
            Some(local) => local.write(location.as_ref(), vec![body]).await,
            None => {
                let options = PutOptions { attributes: self.attributes(), ..PutOptions::default() };
                self.parts.store.put_opts(&location, PutPayload::from(body), options).await.map(|_| ())
            }
        };
        written.map_err(|error| classify(error, Operation::Write, key))
    }

    /// Write the batch's object unless its key already holds one: for copies that must keep the
    /// first, whole write of a batch (an OpenSearch `backup.mode: all` batch is re-sent with only
    /// its failed records on a partial retry, under the same id and so the same key). One writer
    /// per batch id, so checking first is enough.
    pub async fn write_once(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let key = self.object_key(batch)?;
        let location = parse_location(&key)?;
        match self.parts.store.head(&location).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => self.write(batch).await,
            Err(error) => Err(classify(error, Operation::Write, &key)),
        }
    }
}
