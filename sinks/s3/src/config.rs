//! `S3SinkConfig`: the `sink:` block of a stream whose `type` is `s3`, its pure validation
//! ([`S3SinkConfig::validate`], no disk or network) and [`S3SinkConfig::build`], which creates the
//! local folder or the S3 client. Field names follow Firehose's `ExtendedS3DestinationConfiguration`
//! where it has one (`prefix`, `error_output_prefix`, `compression`, `file_extension`).
//!
//! Credentials never need to sit in the YAML: when `access_key_id` is absent, the standard AWS
//! sources are used (environment, web identity, ECS / EKS container credentials, instance metadata).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use serde::Deserialize;
use spillway_sink_api::{Compression, ConfigProblem, EncoderFactory, RawEncoderFactory, Secret, SinkError};

use crate::key::{PrefixKind, PrefixTemplate};
use crate::sink::{S3Sink, StoreKind};
use crate::timestamp::Zone;

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (except the last) and largest part.
const MIN_PART_SIZE_MIB: u64 = 5;
const MAX_PART_SIZE_MIB: u64 = 5 * 1024;
/// Firehose's `FileExtension` length limit.
const MAX_FILE_EXTENSION_LEN: usize = 128;

/// The S3 sink's configuration, as written under `streams[].sink` with `type: s3`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SinkConfig {
    /// `file://./var/out` (relative to the working directory), `file:///abs/path`, or
    /// `s3://bucket`.
    pub url: String,
    /// Firehose prefix expression; default `yyyy/MM/dd/HH/` (UTC, oldest record's arrival).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Where error output goes; default `<prefix><error-output-type>/yyyy/MM/dd/HH/` when
    /// `prefix` is literal, else `<error-output-type>/yyyy/MM/dd/HH/`.
    #[serde(default)]
    pub error_output_prefix: Option<String>,
    /// Firehose's `CustomTimeZone`: the IANA zone (`Asia/Tokyo`) prefix timestamps and object
    /// names are rendered in; default UTC.
    #[serde(default)]
    pub custom_time_zone: Option<String>,
    /// A different bucket or folder for the error output (same endpoint and credentials), so
    /// records can be set aside even when the main bucket is missing or refuses writes.
    /// Default: `url`.
    #[serde(default)]
    pub error_output_url: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    /// What an object holds: records as sent (`json`, the default: Firehose writes records as
    /// they come) or Parquet converted from JSON records (`parquet`).
    #[serde(default)]
    pub format: OutputFormat,
    /// Replaces the compression's extension (`.gz`, `.zst`); `""` means none.
    #[serde(default)]
    pub file_extension: Option<String>,

    /// S3-compatible endpoint such as `http://127.0.0.1:9000` (MinIO); default:
    /// `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`); default true when `endpoint` is set.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Credentials are [`Secret`]s: `{:?}` of this config never shows them.
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Allow plain HTTP; default true when `endpoint` starts with `http://`.
    #[serde(default)]
    pub allow_http: Option<bool>,

    /// Objects larger than this (after compression) are written with a multipart upload.
    #[serde(default = "default_multipart_threshold_mib")]
    pub multipart_threshold_mib: u64,
    /// Part size of multipart uploads; at least 5 (S3's minimum).
    #[serde(default = "default_part_size_mib")]
    pub part_size_mib: u64,
}

fn default_multipart_threshold_mib() -> u64 {
    16
}

fn default_part_size_mib() -> u64 {
    8
}

/// `format` of an S3 sink.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum OutputFormat {
    /// Records as sent (after processing), concatenated, then `compression`.
    #[default]
    Json,
    /// Firehose's record format conversion: JSON records → Parquet rows of a schema.
    Parquet(crate::parquet::ParquetConfig),
}

/// A local folder's path, relative ones resolved from the working directory.
/// A local folder's staged writer (see [`crate::local`]); built after the folder is created.
fn open_local_writer(root: &std::path::Path, stream: &str) -> Result<crate::local::LocalWriter, SinkError> {
    crate::local::LocalWriter::open(root, stream).map_err(|error| {
        let message = format!("cannot prepare the staging folder under `{}`", root.display());
        SinkError::retriable("S3.AccessDenied", message).with_source(error)
    })
}

fn absolute_path(path: &std::path::Path) -> Result<PathBuf, SinkError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let working_dir = std::env::current_dir().map_err(|error| {
        SinkError::permanent("S3.InvalidConfiguration", "cannot read the working directory").with_source(error)
    })?;
    Ok(working_dir.join(path))
}

/// Where objects go, parsed from `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A folder; relative paths are resolved from the working directory at build time.
    LocalDir(PathBuf),
    S3 {
        bucket: String,
    },
}

impl S3SinkConfig {
    /// The local folders this sink writes to (`url`, `error_output_url` when `file://`), with
    /// their field names: what `spillway validate` checks can be created and written.
    pub fn local_folders(&self) -> Vec<(&'static str, PathBuf)> {
        let mut folders = Vec::new();
        for (field, url) in [("url", Some(&self.url)), ("error_output_url", self.error_output_url.as_ref())] {
            if let Some(Ok(Destination::LocalDir(path))) = url.map(|url| Destination::parse(url)) {
                folders.push((field, path));
            }
        }
        folders
    }
}

impl Destination {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err("a file:// url needs a path, e.g. file://./var/out".to_string());
            }
            return Ok(Destination::LocalDir(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let bucket = rest.strip_suffix('/').unwrap_or(rest);
            if bucket.contains('/') {
                return Err(format!(
                    "`{url}` has a path after the bucket; use `prefix` for the key prefix and `s3://<bucket>` here"
                ));
            }
            check_bucket_name(bucket)?;
            return Ok(Destination::S3 { bucket: bucket.to_string() });
        }
        Err(format!("`{url}` must start with file:// or s3://"))
    }
}

/// S3 bucket naming rules (3–63 chars of lowercase letters, digits, `.` and `-`, starting and
/// ending with a letter or digit).
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("an s3:// url needs a bucket name, e.g. s3://my-bucket".to_string());
    }
    let valid_chars = bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let valid_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !valid_chars || !valid_ends {
        return Err(format!(
            "`{bucket}` is not a valid bucket name (3-63 lowercase letters, digits, `.` or `-`, starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// Firehose's `FileExtension` rule: `^$|\.[0-9a-z!\-_.*'()]+`, at most 128 characters.
fn check_file_extension(extension: &str) -> Result<(), String> {
    if extension.is_empty() {
        return Ok(());
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "!-_.*'()".contains(c);
    let rest = extension.strip_prefix('.');
    let valid = rest.is_some_and(|rest| !rest.is_empty() && rest.chars().all(allowed));
    if !valid || extension.len() > MAX_FILE_EXTENSION_LEN {
        return Err(format!(
            "`{extension}` must be empty or a `.` followed by lowercase letters, digits or !-_.*'() (at most {MAX_FILE_EXTENSION_LEN} characters)"
        ));
    }
    Ok(())
}

impl S3SinkConfig {
    /// Every problem in this block, with its field; pure (no disk, no network).
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();

        let destination = Destination::parse(&self.url);
        if let Err(message) = &destination {
            problems.push(ConfigProblem::new("url", message.clone()));
        }
        if let Some(error_url) = &self.error_output_url {
            match (Destination::parse(error_url), &destination) {
                (Err(message), _) => problems.push(ConfigProblem::new("error_output_url", message)),
                (Ok(Destination::LocalDir(_)), Ok(Destination::S3 { .. }))
                | (Ok(Destination::S3 { .. }), Ok(Destination::LocalDir(_))) => problems.push(ConfigProblem::new(
                    "error_output_url",
                    "must use the same scheme as url (both file:// or both s3://)",
                )),
                _ => {}
            }
        }

        let zone = match self.zone() {
            Ok(zone) => zone,
            Err(message) => {
                problems.push(ConfigProblem::new("custom_time_zone", message));
                Zone::utc()
            }
        };
        let data_prefix = PrefixTemplate::parse(self.prefix.as_deref(), PrefixKind::Data)
            .and_then(|template| template.check_evaluated_len(&zone).map(|()| template));
        if let Err(error) = &data_prefix {
            problems.push(ConfigProblem::new("prefix", error.to_string()));
        }
        let error_prefix =
            PrefixTemplate::parse_error_prefix(self.error_output_prefix.as_deref(), self.prefix.as_deref())
                .and_then(|template| template.check_evaluated_len(&zone));
        if let Err(error) = error_prefix {
            let field = if self.error_output_prefix.is_some() { "error_output_prefix" } else { "prefix" };
            problems.push(ConfigProblem::new(field, error.to_string()));
        }
        // Firehose requires an explicit error prefix with dynamic partitioning; without partition
        // keys the default (`PrefixTemplate::default_error_for`) is used.
        let dynamic_partitioning = data_prefix.as_ref().is_ok_and(PrefixTemplate::has_partition_keys);
        if dynamic_partitioning && self.error_output_prefix.is_none() {
            problems.push(ConfigProblem::new(
                "error_output_prefix",
                "is required when prefix uses partition keys (!{partitionKeyFromQuery:..} / !{partitionKeyFromLambda:..})",
            ));
        }

        if let Some(extension) = &self.file_extension
            && let Err(message) = check_file_extension(extension)
        {
            problems.push(ConfigProblem::new("file_extension", message));
        }

        if let OutputFormat::Parquet(parquet) = &self.format {
            for (field, message) in parquet.validate() {
                problems.push(ConfigProblem::new(&format!("format.{field}"), message));
            }
            // Firehose: with format conversion the S3 compression must be UNCOMPRESSED; Parquet
            // compresses its own pages (`format.compression`).
            if self.compression != Compression::None {
                problems.push(ConfigProblem::new(
                    "compression",
                    "must be none with format parquet (Parquet compresses its pages: set format.compression)",
                ));
            }
        }

        if !(MIN_PART_SIZE_MIB..=MAX_PART_SIZE_MIB).contains(&self.part_size_mib) {
            problems.push(ConfigProblem::new(
                "part_size_mib",
                format!("must be between {MIN_PART_SIZE_MIB} and {MAX_PART_SIZE_MIB} (S3 part size limits)"),
            ));
        }

        if matches!(destination, Ok(Destination::LocalDir(_))) {
            problems.extend(
                self.s3_only_fields_set()
                    .into_iter()
                    .map(|field| ConfigProblem::new(field, "only applies to s3:// urls")),
            );
        }
        problems.extend(self.connection().validate());
        problems
    }

    /// `custom_time_zone` looked up, UTC when unset.
    fn zone(&self) -> Result<Zone, String> {
        match &self.custom_time_zone {
            None => Ok(Zone::utc()),
            Some(name) => Zone::named(name).map_err(|error| error.to_string()),
        }
    }

    fn s3_only_fields_set(&self) -> Vec<&'static str> {
        let fields = [
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("path_style", self.path_style.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("session_token", self.session_token.is_some()),
            ("allow_http", self.allow_http.is_some()),
        ];
        fields.into_iter().filter(|(_, set)| *set).map(|(field, _)| field).collect()
    }

    /// Create the sink for `stream` at `VersionId` 1; see [`S3SinkConfig::build_versioned`].
    pub fn build(&self, stream: &str) -> Result<S3Sink, SinkError> {
        self.build_versioned(stream, 1)
    }

    /// Create the sink for `stream`: the local folder (created if missing) or the S3 client.
    /// Object names carry `version_id` (Firehose's `VersionId`). No request is sent; call
    /// [`spillway_sink_api::Sink::healthcheck`] to check reachability.
    pub fn build_versioned(&self, stream: &str, version_id: u64) -> Result<S3Sink, SinkError> {
        let problems = self.validate();
        if !problems.is_empty() {
            let listed: Vec<String> =
                problems.iter().map(|problem| format!("{}: {}", problem.field, problem.message)).collect();
            return Err(SinkError::permanent("S3.InvalidConfiguration", listed.join("; ")));
        }
        let invalid = |message: String| SinkError::permanent("S3.InvalidConfiguration", message);
        let prefix = PrefixTemplate::parse(self.prefix.as_deref(), PrefixKind::Data)
            .map_err(|error| invalid(error.to_string()))?;
        let error_prefix =
            PrefixTemplate::parse_error_prefix(self.error_output_prefix.as_deref(), self.prefix.as_deref())
                .map_err(|error| invalid(error.to_string()))?;
        let zone = self.zone().map_err(invalid)?;
        let destination = Destination::parse(&self.url).map_err(invalid)?;

        let local_root = match &destination {
            Destination::LocalDir(path) => Some(absolute_path(path)?),
            Destination::S3 { .. } => None,
        };
        let (store, kind) = self.build_store(destination)?;
        let local = local_root.as_deref().map(|root| open_local_writer(root, stream)).transpose()?;
        let (error_store, error_local) = match &self.error_output_url {
            Some(error_url) => {
                let error_destination = Destination::parse(error_url).map_err(invalid)?;
                let error_root = match &error_destination {
                    Destination::LocalDir(path) => Some(absolute_path(path)?),
                    Destination::S3 { .. } => None,
                };
                let error_local = error_root.as_deref().map(|root| open_local_writer(root, stream)).transpose()?;
                (self.build_store(error_destination)?.0, error_local)
            }
            None => (store.clone(), local.clone()),
        };
        let (encoders, default_extension): (Arc<dyn EncoderFactory>, &str) = match &self.format {
            OutputFormat::Json => {
                (Arc::new(RawEncoderFactory { compression: self.compression }), self.compression.extension())
            }
            OutputFormat::Parquet(parquet) => (Arc::new(parquet.encoder_factory().map_err(invalid)?), ".parquet"),
        };
        let extension = self.file_extension.clone().unwrap_or_else(|| default_extension.to_string());
        Ok(S3Sink::new(crate::sink::SinkParts {
            stream: stream.to_string(),
            version_id,
            url: self.url.clone(),
            store,
            error_store,
            kind,
            local_root,
            local,
            error_local,
            prefix,
            error_prefix,
            zone,
            compression: self.compression,
            encoders,
            extension,
            multipart_threshold: self.multipart_threshold_mib.saturating_mul(MIB),
            part_size: self.part_size_mib.saturating_mul(MIB),
        }))
    }

    /// A block naming only where objects go: every other field at its default. For parts of
    /// spillway that keep objects of their own with the S3 sink's connection options (the
    /// replicated WAL's segments); set the connection fields on the result.
    pub fn for_url(url: &str) -> Self {
        Self {
            url: url.to_string(),
            prefix: None,
            error_output_prefix: None,
            custom_time_zone: None,
            error_output_url: None,
            compression: Compression::default(),
            format: OutputFormat::default(),
            file_extension: None,
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: None,
            multipart_threshold_mib: default_multipart_threshold_mib(),
            part_size_mib: default_part_size_mib(),
        }
    }

    /// The object store `url` names (a folder, created if missing, or the S3 bucket), with this
    /// block's connection options. No request is sent.
    pub fn object_store(&self) -> Result<Arc<dyn ObjectStore>, SinkError> {
        let destination = Destination::parse(&self.url)
            .map_err(|message| SinkError::permanent("S3.InvalidConfiguration", message))?;
        Ok(self.build_store(destination)?.0)
    }

    fn build_store(&self, destination: Destination) -> Result<(Arc<dyn ObjectStore>, StoreKind), SinkError> {
        Ok(match destination {
            Destination::LocalDir(path) => (Arc::new(self.build_local(&path)?), StoreKind::Local),
            Destination::S3 { bucket } => (Arc::new(self.build_s3(&bucket)?), StoreKind::S3),
        })
    }

    fn build_local(&self, path: &std::path::Path) -> Result<LocalFileSystem, SinkError> {
        let absolute = absolute_path(path)?;
        std::fs::create_dir_all(&absolute).map_err(|error| {
            let message = format!("cannot create output folder `{}`", absolute.display());
            SinkError::retriable("S3.AccessDenied", message).with_source(error)
        })?;
        let store = LocalFileSystem::new_with_prefix(&absolute).map_err(|error| {
            let message = format!("cannot open output folder `{}`", absolute.display());
            SinkError::retriable("S3.AccessDenied", message).with_source(error)
        })?;
        // A delivered batch lets the WAL below it be trimmed, so "written" must mean on disk, as
        // with S3: fsync the object and the directories its write changed (object_store does
        // both, on its blocking pool, before `put` returns).
        Ok(store.with_fsync(true))
    }

    fn build_s3(&self, bucket: &str) -> Result<object_store::aws::AmazonS3, SinkError> {
        self.connection().build_store(bucket)
    }

    /// The S3 connection options of this block (endpoint, region, addressing, credentials).
    pub fn connection(&self) -> S3Connection {
        S3Connection {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            allow_http: self.allow_http,
        }
    }
}

/// How to reach an S3-compatible store: the S3 sink's connection fields, which other sinks that
/// keep files in a bucket (Iceberg's warehouse) take under the same names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Connection {
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: Option<bool>,
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    #[serde(default)]
    pub allow_http: Option<bool>,
}

impl S3Connection {
    /// Problems in the block, with fields relative to it.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Some(endpoint) = &self.endpoint
            && let Err(message) = check_endpoint(endpoint)
        {
            problems.push(ConfigProblem::new("endpoint", message));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            let missing = if self.access_key_id.is_some() { "secret_access_key" } else { "access_key_id" };
            problems.push(ConfigProblem::new(missing, "access_key_id and secret_access_key must be set together"));
        }
        if self.session_token.is_some() && self.access_key_id.is_none() {
            problems.push(ConfigProblem::new("session_token", "needs access_key_id and secret_access_key"));
        }
        problems
    }

    /// The client for `bucket` (no request is sent).
    pub fn build_store(&self, bucket: &str) -> Result<object_store::aws::AmazonS3, SinkError> {
        Self::finish(bucket, self.builder(bucket))
    }

    /// The client for `bucket`, once its builder has taken any option of the caller's own.
    pub fn finish(bucket: &str, builder: AmazonS3Builder) -> Result<object_store::aws::AmazonS3, SinkError> {
        builder.build().map_err(|error| {
            SinkError::permanent(
                "S3.InvalidConfiguration",
                format!("cannot configure the S3 client for bucket `{bucket}`"),
            )
            .with_source(error)
        })
    }

    /// The client's builder for `bucket` with this block's options.
    pub fn builder(&self, bucket: &str) -> AmazonS3Builder {
        // The pipeline owns retries; object_store only smooths over a brief blip.
        let retry =
            RetryConfig { backoff: BackoffConfig::default(), max_retries: 2, retry_timeout: Duration::from_secs(15) };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        // `endpoint`, else the standard AWS variables (`AWS_ENDPOINT_URL_S3`, then
        // `AWS_ENDPOINT_URL`), which `from_env` also reads; an endpoint from either place means
        // path-style and, for `http://`, plain HTTP unless set otherwise.
        let endpoint = self.endpoint.clone().or_else(endpoint_from_env);
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        let path_style = self.path_style.unwrap_or(endpoint.is_some());
        if self.path_style.is_some() || endpoint.is_some() {
            builder = builder.with_virtual_hosted_style_request(!path_style);
        }
        let endpoint_is_http = endpoint.as_deref().is_some_and(|endpoint| endpoint.starts_with("http://"));
        if let Some(allow_http) = self.allow_http.or(endpoint_is_http.then_some(true)) {
            builder = builder.with_allow_http(allow_http);
        }
        if let (Some(access_key_id), Some(secret_access_key)) = (&self.access_key_id, &self.secret_access_key) {
            builder =
                builder.with_access_key_id(access_key_id.expose()).with_secret_access_key(secret_access_key.expose());
            if let Some(session_token) = &self.session_token {
                builder = builder.with_token(session_token.expose());
            }
        } else {
            builder = builder.with_credentials(Arc::new(crate::credentials::AwsChainCredentials::default()));
        }
        builder
    }
}

/// The S3 endpoint the standard AWS configuration names: `AWS_ENDPOINT_URL_S3`, then
/// `AWS_ENDPOINT_URL` (the SDKs' service-specific and global endpoint variables).
fn endpoint_from_env() -> Option<String> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.trim().is_empty()))
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let parsed = url::Url::parse(endpoint).map_err(|error| format!("`{endpoint}` is not a url: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{endpoint}` must be an http:// or https:// url"));
    }
    if parsed.host_str().is_none() {
        return Err(format!("`{endpoint}` has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> S3SinkConfig {
        S3SinkConfig::for_url(url)
    }

    fn fields(problems: &[ConfigProblem]) -> Vec<&str> {
        problems.iter().map(|problem| problem.field.as_str()).collect()
    }

    #[test]
    fn urls() {
        assert_eq!(Destination::parse("file://./var/out"), Ok(Destination::LocalDir(PathBuf::from("./var/out"))));
        assert_eq!(Destination::parse("file:///srv/out"), Ok(Destination::LocalDir(PathBuf::from("/srv/out"))));
        assert_eq!(Destination::parse("s3://my-bucket"), Ok(Destination::S3 { bucket: "my-bucket".to_string() }));
        assert_eq!(Destination::parse("s3://my-bucket/"), Ok(Destination::S3 { bucket: "my-bucket".to_string() }));
        for bad in ["http://x", "file://", "s3://", "s3://My_Bucket", "s3://b/path", "./var/out"] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(config("file://./var/out").validate(), Vec::new());
        assert_eq!(config("s3://bucket").validate(), Vec::new());
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        let parsed: S3SinkConfig =
            serde_json::from_str(r#"{"url":"s3://b-1","compression":"gzip","endpoint":"http://127.0.0.1:9000"}"#)
                .expect("config parses");
        assert_eq!(parsed.compression, Compression::Gzip);
        assert_eq!((parsed.multipart_threshold_mib, parsed.part_size_mib), (16, 8));
        assert!(parsed.validate().is_empty());

        let unknown = serde_json::from_str::<S3SinkConfig>(r#"{"url":"s3://b-1","bukcet":"x"}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn deserializes_inside_an_internally_tagged_sink_enum() {
        // The root crate's registry wraps this struct in `#[serde(tag = "type")]`.
        #[derive(Debug, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Registry {
            S3(S3SinkConfig),
        }
        let parsed: Registry = serde_json::from_str(r#"{"type":"s3","url":"file://./out","prefix":"logs/"}"#)
            .expect("tagged config parses");
        let Registry::S3(config) = parsed;
        assert_eq!(config.prefix.as_deref(), Some("logs/"));
        assert!(serde_json::from_str::<Registry>(r#"{"type":"s3","url":"file://./out","nope":1}"#).is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut bad = config("ftp://x");
        bad.prefix = Some("logs/!{time:yyyy}/".to_string());
        bad.error_output_prefix = Some("errors/!{timestamp:yyyy}/".to_string());
        bad.file_extension = Some("gz".to_string());
        bad.part_size_mib = 4;
        bad.endpoint = Some("localhost:9000".to_string());
        bad.access_key_id = Some(Secret::new("key"));
        bad.custom_time_zone = Some("Mars/Olympus_Mons".to_string());
        let problems = bad.validate();
        assert_eq!(
            fields(&problems),
            vec![
                "url",
                "custom_time_zone",
                "prefix",
                "error_output_prefix",
                "file_extension",
                "part_size_mib",
                "endpoint",
                "secret_access_key"
            ],
            "{problems:?}"
        );
        assert!(problems.iter().all(|problem| {
            let first = problem.message.chars().next().unwrap_or('a');
            !problem.message.ends_with('.') && !first.is_uppercase()
        }));
    }

    #[test]
    fn prefix_rules() {
        let mut with_error_type = config("s3://bucket");
        with_error_type.prefix = Some("!{firehose:error-output-type}/".to_string());
        assert_eq!(fields(&with_error_type.validate()), vec!["prefix"]);

        let mut dynamic = config("s3://bucket");
        dynamic.prefix = Some("service=!{partitionKeyFromQuery:service}/".to_string());
        assert_eq!(fields(&dynamic.validate()), vec!["error_output_prefix"]);
        dynamic.error_output_prefix = Some("errors/!{firehose:error-output-type}/".to_string());
        assert!(dynamic.validate().is_empty());

        let mut unterminated = config("s3://bucket");
        unterminated.prefix = Some("logs/!{timestamp:yyyy".to_string());
        assert_eq!(fields(&unterminated.validate()), vec!["prefix"]);
    }

    #[test]
    fn custom_time_zone_must_be_an_iana_name() {
        let mut tokyo = config("s3://bucket");
        tokyo.custom_time_zone = Some("Asia/Tokyo".to_string());
        assert!(tokyo.validate().is_empty());
        for bad in ["Asia/Tokio", "asia/tokyo", "JST+9", ""] {
            let mut zone = config("s3://bucket");
            zone.custom_time_zone = Some(bad.to_string());
            assert_eq!(fields(&zone.validate()), vec!["custom_time_zone"], "{bad}");
        }
    }

    #[test]
    fn a_prefix_that_always_evaluates_past_512_characters_is_refused() {
        let mut long = config("s3://bucket");
        long.prefix = Some(format!("{}/!{{timestamp:yyyy}}/", "a".repeat(510)));
        let problems = long.validate();
        assert_eq!(fields(&problems), vec!["prefix"]);
        assert!(problems[0].message.contains("512"), "{problems:?}");
        // Without an error prefix, errors go under the literal prefix: that one is checked too.
        let mut literal = config("s3://bucket");
        literal.prefix = Some("a".repeat(480));
        assert_eq!(fields(&literal.validate()), vec!["prefix"]);
    }

    #[test]
    fn file_extensions() {
        for good in ["", ".gz", ".json.gz", ".log_(1)*!'-"] {
            assert_eq!(check_file_extension(good), Ok(()), "{good}");
        }
        for bad in ["gz", ".", ".GZ", ".a b", ".a/b"] {
            assert!(check_file_extension(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s3_options_on_a_local_url_are_reported() {
        let mut local = config("file://./out");
        local.endpoint = Some("http://127.0.0.1:9000".to_string());
        local.region = Some("eu-west-1".to_string());
        assert_eq!(fields(&local.validate()), vec!["endpoint", "region"]);
    }

    #[test]
    fn build_rejects_an_invalid_config_as_permanent() {
        let error = config("ftp://x").build("s").expect_err("build fails");
        assert_eq!(error.code, "S3.InvalidConfiguration");
        assert!(!error.is_retriable());
    }

    #[test]
    fn build_creates_a_missing_local_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("nested/out");
        let url = format!("file://{}", target.display());
        config(&url).build("s").expect("build succeeds");
        assert!(target.is_dir());
    }

    #[test]
    fn the_local_store_fsyncs_its_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().display());
        let destination = Destination::parse(&url).expect("url parses");
        let (store, kind) = config(&url).build_store(destination).expect("local store builds");
        assert_eq!(kind, StoreKind::Local);
        // object_store exposes the setting only through Debug.
        assert!(format!("{store:?}").contains("fsync: true"), "{store:?}");
    }

    /// Observes the syscalls: strace attaches to this test process while the store writes an
    /// object two new directories deep, and must see an fsync of the object and of each directory
    /// whose entries changed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs strace and ptrace: cargo test -p spillway-sink-s3 -- --ignored local_objects_are_fsynced"]
    async fn local_objects_are_fsynced() {
        use object_store::ObjectStoreExt;
        use std::io::BufRead;

        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().display());
        let (store, _) = config(&url).build_store(Destination::parse(&url).expect("url")).expect("store builds");
        let trace = dir.path().join("strace.txt");
        let mut strace = std::process::Command::new("strace")
            .args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&trace)
            .args(["-p", &std::process::id().to_string()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("strace runs (apt-get install strace)");
        // strace says "Process <pid> attached" on stderr once it traces us. Its stderr is read to
        // the end on a thread: a closed pipe would kill strace with SIGPIPE at its next message.
        let stderr = strace.stderr.take().expect("strace stderr");
        let (lines, attached) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let first_line = attached.recv_timeout(std::time::Duration::from_secs(10)).expect("strace reports");
        assert!(first_line.contains("attached"), "strace did not attach: {first_line}");

        let location = object_store::path::Path::from("out/a/b/object.txt");
        store.put(&location, bytes::Bytes::from_static(b"hello").into()).await.expect("put succeeds");

        let stopped = std::process::Command::new("kill").args(["-INT", &strace.id().to_string()]).status();
        assert!(stopped.is_ok_and(|status| status.success()));
        strace.wait().expect("strace exits");
        let syscalls = std::fs::read_to_string(&trace).expect("trace written");
        let root = dir.path().display().to_string();
        for synced in [format!("{root}/out/a/b/object.txt"), format!("{root}/out/a/b>"), format!("{root}/out>")] {
            assert!(
                syscalls.lines().any(|line| line.contains("fsync(") && line.contains(synced.as_str())),
                "no fsync of {synced}:\n{syscalls}"
            );
        }
    }

    #[test]
    fn build_s3_with_static_credentials_and_endpoint() {
        let mut s3 = config("s3://bucket");
        s3.endpoint = Some("http://127.0.0.1:9000".to_string());
        s3.access_key_id = Some(Secret::new("minioadmin"));
        s3.secret_access_key = Some(Secret::new("minioadmin"));
        s3.region = Some("us-east-1".to_string());
        s3.build("s").expect("build succeeds without a request");
    }
}
