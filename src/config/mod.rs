//! The YAML configuration model: typed structs with Firehose-named fields and defaults, and the
//! pure validation that lists every problem with its YAML path. Parsing (and `${ENV}`
//! interpolation) lives in [`yaml`] so the parser can be swapped; nothing here touches the network
//! or the disk.

mod interpolate;
mod overrides;
mod preflight;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use overrides::Overrides;
pub use preflight::preflight;
pub use yaml::{ConfigError, load_file, parse_str};

use crate::processing::PartitionKeys;
use crate::sinks::{PartitionKeySource, SinkConfig};
pub use crate::sources::SourceConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Where the WAL, checkpoints and delivery intents live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub wal: WalConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How streams created through the Firehose API reach their destination.
    #[serde(default)]
    pub api_defaults: ApiDefaultsConfig,
    /// Streams defined here are read-only to the API. None at all is valid: then every stream
    /// is created through the API (`CreateDeliveryStream`).
    #[serde(default)]
    pub streams: Vec<StreamConfig>,
    /// Cluster mode: nodes sharing work through PostgreSQL (see `docs/cluster.md`). Absent: one
    /// node, no coordinator.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// `api_defaults`: what an API-created stream's destination does not say. Firehose's
/// `ExtendedS3DestinationConfiguration` names only a `BucketARN` (and a `RoleARN` spillway does not
/// assume), so the endpoint, region and credentials come from here, or from the standard AWS
/// configuration (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_REGION`, the credential chain).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiDefaultsConfig {
    #[serde(default)]
    pub s3: ApiS3Defaults,
    /// Where a `Lambda` processor's `LambdaArn` is invoked; without it such a processor is refused.
    #[serde(default)]
    pub lambda: Option<ApiLambdaDefaults>,
    /// How an `MSKSourceConfiguration`'s `MSKClusterARN` is reached, by ARN; a stream naming a
    /// cluster not listed is refused.
    #[serde(default)]
    pub msk: BTreeMap<String, ApiMskCluster>,
    /// How an `IcebergDestinationConfiguration`'s `CatalogConfiguration` is reached: the
    /// `iceberg` sink's `catalog:` block (`{type: sql, uri, warehouse, name}` or `{type: rest,
    /// uri, warehouse, credential | token, …}`); the request's
    /// `WarehouseLocation` replaces `warehouse`. Without it such a destination is refused.
    #[serde(default)]
    pub iceberg_catalog: Option<serde_json::Value>,
}

/// `api_defaults.msk.<cluster ARN>`: the `kafka` source's connection fields for that cluster
/// (same names and meaning as in `streams[].source`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiMskCluster {
    pub bootstrap_servers: String,
    #[serde(default)]
    pub auth: Option<serde_json::Value>,
    #[serde(default)]
    pub tls: Option<serde_json::Value>,
    #[serde(default)]
    pub librdkafka_options: Option<serde_json::Value>,
}

/// `api_defaults.lambda`: how a `LambdaArn` becomes the HTTP function a `lambda` transform calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiLambdaDefaults {
    /// The function's url, with `{function}` replaced by the function name in the ARN (qualifier
    /// included, `name:alias`): e.g. the Lambda Invoke API of a Lambda-compatible server,
    /// `http://127.0.0.1:9001/2015-03-31/functions/{function}/invocations`.
    pub url: String,
    /// Request headers for every function (auth), as `lambda` transforms take them.
    #[serde(default)]
    pub headers: BTreeMap<String, spillway_sink_api::Secret>,
}

impl ApiLambdaDefaults {
    /// The url for a `LambdaArn` (`arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]`).
    pub fn url_for(&self, lambda_arn: &str) -> Option<String> {
        let (_, function) = lambda_arn.split_once(":function:")?;
        let valid = |part: &str| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '$')
        };
        function.split(':').all(valid).then(|| self.url.replace("{function}", function))
    }
}

/// `api_defaults.s3`: the connection fields of an `s3` sink (same names and meaning as
/// `streams[].sink`), plus `url`, where a bucket goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiS3Defaults {
    /// The sink url for a `BucketARN`, with `{bucket}` replaced by the bucket name: `s3://{bucket}`
    /// (the default), or `file://./buckets/{bucket}` to keep API-created streams on local disk.
    #[serde(default = "default_api_s3_url")]
    pub url: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: Option<bool>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
    #[serde(default)]
    pub allow_http: Option<bool>,
}

impl Default for ApiS3Defaults {
    fn default() -> Self {
        Self {
            url: default_api_s3_url(),
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: None,
        }
    }
}

impl ApiS3Defaults {
    /// The sink url for `bucket`.
    pub fn url_for(&self, bucket: &str) -> String {
        self.url.replace("{bucket}", bucket)
    }

    /// The connection fields as `s3` sink YAML keys (only those set), for building an
    /// API-created stream's sink configuration.
    pub fn connection_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        let strings = [
            ("endpoint", &self.endpoint),
            ("region", &self.region),
            ("access_key_id", &self.access_key_id),
            ("secret_access_key", &self.secret_access_key),
            ("session_token", &self.session_token),
        ];
        for (key, value) in strings {
            if let Some(value) = value {
                fields.insert(key.to_string(), serde_json::Value::from(value.clone()));
            }
        }
        for (key, value) in [("path_style", self.path_style), ("allow_http", self.allow_http)] {
            if let Some(value) = value {
                fields.insert(key.to_string(), serde_json::Value::from(value));
            }
        }
        fields
    }
}

fn default_api_s3_url() -> String {
    "s3://{bucket}".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the Direct PUT API, the NDJSON endpoint, `/health` and `/metrics`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Region and account used in ARNs that `DescribeDeliveryStream` reports.
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_account_id")]
    pub account_id: String,
    /// On SIGTERM / Ctrl-C, how long to wait for buffers to flush and deliveries to finish before
    /// exiting anyway (what is left stays in the WAL and is delivered on the next start). Also how
    /// long a stream removed by a reload, deleted or given a new destination may take to deliver
    /// what it holds before its delivery is stopped anyway (what is left stays in its WAL).
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
    /// A request whose body has not fully arrived within this many seconds is answered
    /// `408 Request Timeout` and dropped, so a client that trickles its body cannot hold a
    /// connection and its share of the body memory budget forever.
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: u64,
    /// How often every sink's healthcheck runs in the background; `/ready` answers from the
    /// last result.
    #[serde(default = "default_healthcheck_interval_seconds")]
    pub healthcheck_interval_seconds: u64,
    /// Serve HTTPS instead of HTTP (off by default). Producers such as Fluent Bit's
    /// `kinesis_firehose` output always speak TLS, so they need this (or a TLS-terminating proxy).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Check AWS Signature Version 4 on every Firehose API call (`POST /`), every NDJSON put and
    /// (unless listed in `open_routes`) `/metrics` and the status page, against these keys (off
    /// by default: any signature, or none, is accepted).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// A connection has this long to send a complete request head once it starts one (its first
    /// byte), and to finish its TLS handshake; then it is closed. Stops slow-header clients from
    /// holding connections.
    #[serde(default = "default_header_read_timeout_seconds")]
    pub header_read_timeout_seconds: u64,
    /// A connection that sends nothing for this long (before its first request, or between
    /// keep-alive requests) is closed.
    #[serde(default = "default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// Most connections served at once (plain or TLS). Past it, up to
    /// [`OVERFLOW_CONNECTIONS`] more get one quick answer (`/health` and `/ready` answered, every
    /// other route `503 ServiceUnavailableException`) and are closed; beyond that a connection
    /// is closed as soon as it is accepted. Keep it below `ulimit -n` minus the WAL's and sinks'
    /// files.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// Connections past `server.max_connections` that still get an answer (see there).
pub const OVERFLOW_CONNECTIONS: usize = 32;

/// `server.auth`: the access keys whose SigV4 signatures are accepted. Values are usually
/// `${ENV}` references, so secrets stay out of the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub access_keys: Vec<AccessKey>,
    /// Read-only routes that stay open without a signature (none by default: with `auth`, only
    /// `/health` and `/ready` are open).
    #[serde(default)]
    pub open_routes: Vec<OpenRoute>,
}

/// A group of read-only routes `server.auth.open_routes` can leave open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenRoute {
    /// `GET /metrics` (for a Prometheus scrape, which cannot sign requests).
    Metrics,
    /// The status page: `GET /` and `GET /api/status` (for a browser).
    Status,
}

impl AuthConfig {
    /// Whether `route` is served without a signature.
    pub fn is_open(&self, route: OpenRoute) -> bool {
        self.open_routes.contains(&route)
    }
}

/// One accepted key pair. `Debug` never prints the secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// `server.tls`: the server certificate and its private key, both PEM files. The certificate
/// file may hold the chain (leaf first); the key may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC). The
/// files are read once at start-up; a file that cannot be read or parsed stops the start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            region: default_region(),
            account_id: default_account_id(),
            shutdown_grace_seconds: default_shutdown_grace_seconds(),
            request_timeout_seconds: default_request_timeout_seconds(),
            healthcheck_interval_seconds: default_healthcheck_interval_seconds(),
            tls: None,
            auth: None,
            header_read_timeout_seconds: default_header_read_timeout_seconds(),
            idle_timeout_seconds: default_idle_timeout_seconds(),
            max_connections: default_max_connections(),
        }
    }
}

/// When an appended record is forced to disk before the client is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync before every acknowledgement; concurrent requests share one fsync (group commit).
    #[default]
    Always,
    /// Acknowledge after the write; fsync every `fsync_interval_ms`. A machine crash (not a
    /// process crash) can lose the last interval.
    Interval,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    #[serde(default)]
    pub fsync: FsyncPolicy,
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// A new segment file starts when the current one reaches this size.
    #[serde(default = "default_segment_mib")]
    pub segment_mib: u64,
    /// Cluster mode only: acknowledge a put once its segment is in object storage and indexed
    /// in the coordinator (see `docs/cluster.md`, "Replicated WAL").
    #[serde(default)]
    pub replication: Option<crate::cluster::replication::ReplicationConfig>,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::default(),
            fsync_interval_ms: default_fsync_interval_ms(),
            segment_mib: default_segment_mib(),
            replication: None,
        }
    }
}

/// Resource limits: past them, Direct PUT answers `ServiceUnavailableException` ("Slow down.")
/// so clients back off, and nothing already acknowledged is affected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Undelivered WAL bytes per stream.
    #[serde(default = "default_max_wal_mib")]
    pub max_wal_mib: u64,
    /// Request bodies held in memory at once, over all connections; further requests wait.
    #[serde(default = "default_max_inflight_request_mib")]
    pub max_inflight_request_mib: u64,
    /// How long a request may wait for its share of `max_inflight_request_mib` before it is
    /// answered `ServiceUnavailableException` (the client backs off and retries).
    #[serde(default = "default_body_wait_ms")]
    pub body_wait_ms: u64,
    /// How long a put waits for room when the stream's WAL is full before it is answered
    /// `ServiceUnavailableException`. Producers that re-send a whole chunk on any 503 (Fluent
    /// Bit's `kinesis_firehose`) duplicate less when short outages are absorbed here.
    #[serde(default = "default_full_wait_ms")]
    pub full_wait_ms: u64,
    /// Encoded open batches held in memory across all streams and partitions; past it the
    /// largest open batch is closed (delivered) early.
    #[serde(default = "default_max_open_batches_mib")]
    pub max_open_batches_mib: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_wal_mib: default_max_wal_mib(),
            max_inflight_request_mib: default_max_inflight_request_mib(),
            body_wait_ms: default_body_wait_ms(),
            full_wait_ms: default_full_wait_ms(),
            max_open_batches_mib: default_max_open_batches_mib(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Delivery stream name, as in Firehose: 1–64 characters of `[a-zA-Z0-9_.-]`.
    pub name: String,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub processing: ProcessingConfig,
    #[serde(default)]
    pub buffering: BufferingConfig,
    pub sink: SinkConfig,
    #[serde(default)]
    pub retry: RetryConfig,
}

impl StreamConfig {
    /// How long retriable delivery failures are retried: with dynamic partitioning Firehose uses
    /// its `RetryOptions` (`dynamic_partitioning.retry_duration_seconds`), else `retry.duration_seconds`.
    pub fn retry_duration_seconds(&self) -> u64 {
        match &self.processing.dynamic_partitioning {
            Some(dynamic) if dynamic.enabled => dynamic.retry_duration_seconds,
            _ => self
                .retry
                .duration_seconds
                .unwrap_or_else(|| self.sink.descriptor().limits().default_retry_duration_seconds),
        }
    }

    /// What is appended to every record: `processing.record_delimiter` when set; unset, the
    /// source decides ([`crate::sources::SourceDescriptor::newline_by_default`]: `newline` for a
    /// `file` source) and otherwise Firehose's default, `none` (bytes as sent).
    pub fn record_delimiter(&self) -> RecordDelimiter {
        match self.processing.record_delimiter {
            Some(chosen) => chosen,
            None if self.source.descriptor().newline_by_default() => RecordDelimiter::Newline,
            None => RecordDelimiter::None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// Firehose's `AppendDelimiterToRecord`: `newline` appends `\n` to every record. Unset, the
    /// source decides: read it through [`StreamConfig::record_delimiter`].
    #[serde(default)]
    pub record_delimiter: Option<RecordDelimiter>,
    /// Firehose's `DynamicPartitioningConfiguration` plus its `MetadataExtraction` processor:
    /// records are grouped by the values of jq keys, named in the sink prefix as
    /// `!{partitionKeyFromQuery:<key>}`.
    #[serde(default)]
    pub dynamic_partitioning: Option<DynamicPartitioningConfig>,
    /// Transforms run in order on every record before its partition keys are evaluated
    /// (Firehose runs its Lambda before `MetadataExtraction` too); see `processing::transform`.
    #[serde(default)]
    pub transforms: Vec<crate::processing::TransformConfig>,
}

impl ProcessingConfig {
    /// The partition keys in force: empty unless dynamic partitioning is present and enabled.
    pub fn partition_keys(&self) -> BTreeMap<String, String> {
        match &self.dynamic_partitioning {
            Some(dynamic) if dynamic.enabled => dynamic.keys.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// The partition cap: `max_active_partitions` with dynamic partitioning, else 1 (one batch).
    pub fn max_active_partitions(&self) -> usize {
        match &self.dynamic_partitioning {
            Some(dynamic) if dynamic.enabled => dynamic.max_active_partitions as usize,
            _ => 1,
        }
    }
}

/// `processing.dynamic_partitioning`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicPartitioningConfig {
    /// Firehose's `Enabled`; true when the block is present, so `enabled: false` keeps the block
    /// around while switching it off.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Key name → jq expression evaluated on each record (a JSON object), like Firehose's
    /// `MetadataExtractionQuery` `{service: .service, year: .ts | strftime("%Y")}`. Each must
    /// yield exactly one string, number or boolean; otherwise the record goes to the error
    /// output under `metadata-extraction-failed`.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Partitions with an open batch at once (Firehose: 500 by default, raisable to 5,000). Past
    /// it spillway closes (delivers) the oldest open batch to make room, so memory stays bounded
    /// and nothing goes to the error output — Firehose would send the record there under
    /// `activePartitionExceeded`. Each early close counts in
    /// `spillway_partition_count_exceeded_total`.
    #[serde(default = "default_max_active_partitions")]
    pub max_active_partitions: u32,
    /// Firehose's `RetryOptions.DurationInSeconds` for dynamic partitioning (0-7200): how long
    /// delivery of a partition's batch is retried before its records go to the error output.
    #[serde(default = "default_partitioning_retry_duration_seconds")]
    pub retry_duration_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordDelimiter {
    /// Records are concatenated as sent (Firehose's default).
    #[default]
    None,
    /// `\n` after every record (Firehose's `AppendDelimiterToRecord`).
    Newline,
    /// `\n` after every record that does not already end with one: for producers that end their
    /// records with a newline themselves (Fluent Bit's firehose output does), so neither a
    /// missing nor a doubled newline.
    #[serde(rename = "newline_if_missing")]
    NewlineIfMissing,
}

impl RecordDelimiter {
    /// The bytes appended to `record`.
    pub fn suffix_for(self, record: &[u8]) -> &'static [u8] {
        match self {
            RecordDelimiter::None => b"",
            RecordDelimiter::Newline => b"\n",
            RecordDelimiter::NewlineIfMissing if record.ends_with(b"\n") => b"",
            RecordDelimiter::NewlineIfMissing => b"\n",
        }
    }
}

/// Firehose's `BufferingHints`: a buffer is flushed when either is reached, whichever first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferingConfig {
    #[serde(default = "default_size_mib")]
    pub size_mib: u64,
    #[serde(default = "default_interval_seconds")]
    pub interval_seconds: u64,
}

impl Default for BufferingConfig {
    fn default() -> Self {
        Self { size_mib: default_size_mib(), interval_seconds: default_interval_seconds() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// How long a retriable delivery failure is retried before the records go to the error
    /// output. Unset: the sink's Firehose default (S3: 24 hours; OpenSearch: 300 s).
    #[serde(default)]
    pub duration_seconds: Option<u64>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./var/spillway")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4573))
}
fn default_region() -> String {
    "us-east-1".to_string()
}
fn default_account_id() -> String {
    "000000000000".to_string()
}
fn default_shutdown_grace_seconds() -> u64 {
    60
}
fn default_request_timeout_seconds() -> u64 {
    30
}
fn default_healthcheck_interval_seconds() -> u64 {
    10
}
fn default_header_read_timeout_seconds() -> u64 {
    10
}
fn default_idle_timeout_seconds() -> u64 {
    60
}
fn default_max_connections() -> usize {
    512
}
fn default_body_wait_ms() -> u64 {
    5_000
}
fn default_full_wait_ms() -> u64 {
    5_000
}
fn default_max_open_batches_mib() -> u64 {
    256
}
fn default_fsync_interval_ms() -> u64 {
    200
}
fn default_segment_mib() -> u64 {
    64
}
fn default_max_wal_mib() -> u64 {
    4096
}
fn default_max_inflight_request_mib() -> u64 {
    64
}
fn default_size_mib() -> u64 {
    5
}
fn default_interval_seconds() -> u64 {
    300
}
fn default_true() -> bool {
    true
}
fn default_max_active_partitions() -> u32 {
    500
}
fn default_partitioning_retry_duration_seconds() -> u64 {
    300
}

/// Bounds that keep a typo from meaning "wait an hour" or "use a petabyte".
const MAX_SHUTDOWN_GRACE_SECONDS: u64 = 3_600;
/// Upper bound of `server.max_connections`: far above any `ulimit -n` a machine is given.
const MAX_CONNECTIONS: usize = 1_000_000;
const MIN_WAL_MIB: u64 = 8;
const MAX_WAL_MIB: u64 = 1 << 20;
const MAX_WAIT_MS: u64 = 60_000;
/// Firehose's active partition quota: 500 by default, raisable to 5,000.
const MAX_ACTIVE_PARTITIONS: u32 = 5_000;
/// Firehose's `RetryOptions.DurationInSeconds` range for dynamic partitioning.
const MAX_PARTITIONING_RETRY_SECONDS: u64 = 7_200;

/// One validation problem, located by its YAML path (e.g. `streams[0].buffering.size_mib`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Config {
    /// Every rule the types cannot express, all problems at once. Pure: no disk, no network.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push = |path: String, message: String| problems.push(Problem { path, message });

        let example_url = self.api_defaults.s3.url_for("example-bucket");
        if let Err(message) = spillway_sink_s3::Destination::parse(&example_url) {
            push("api_defaults.s3.url".into(), format!("{message} (after replacing {{bucket}})"));
        }
        if let Some(lambda) = &self.api_defaults.lambda
            && !(lambda.url.starts_with("http://") || lambda.url.starts_with("https://"))
        {
            push("api_defaults.lambda.url".into(), format!("must be an http:// or https:// url (got {})", lambda.url));
        }
        if !(1..=1024).contains(&self.wal.segment_mib) {
            push("wal.segment_mib".into(), format!("must be between 1 and 1024 (got {})", self.wal.segment_mib));
        }
        if self.wal.fsync_interval_ms == 0 || self.wal.fsync_interval_ms > 60_000 {
            push(
                "wal.fsync_interval_ms".into(),
                format!("must be between 1 and 60000 (got {})", self.wal.fsync_interval_ms),
            );
        }
        if self.server.shutdown_grace_seconds > MAX_SHUTDOWN_GRACE_SECONDS {
            push(
                "server.shutdown_grace_seconds".into(),
                format!(
                    "must be at most {MAX_SHUTDOWN_GRACE_SECONDS} (got {}); what is left at exit stays in the WAL",
                    self.server.shutdown_grace_seconds
                ),
            );
        }
        if !(1..=600).contains(&self.server.request_timeout_seconds) {
            push(
                "server.request_timeout_seconds".into(),
                format!("must be between 1 and 600 (got {})", self.server.request_timeout_seconds),
            );
        }
        if let Some(tls) = &self.server.tls {
            for (field, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                if path.as_os_str().is_empty() {
                    push(format!("server.tls.{field}"), "must name a PEM file".into());
                }
            }
        }
        if let Some(auth) = &self.server.auth {
            if auth.access_keys.is_empty() {
                push("server.auth.access_keys".into(), "must list at least one key".into());
            }
            let mut seen = std::collections::BTreeSet::new();
            for (index, key) in auth.access_keys.iter().enumerate() {
                let path = format!("server.auth.access_keys[{index}]");
                if key.access_key_id.trim().is_empty() {
                    push(format!("{path}.access_key_id"), "must not be empty (is its ${VAR} set?)".into());
                } else if !seen.insert(key.access_key_id.as_str()) {
                    push(format!("{path}.access_key_id"), format!("{} is listed twice", key.access_key_id));
                }
                if key.secret_access_key.is_empty() {
                    push(format!("{path}.secret_access_key"), "must not be empty (is its ${VAR} set?)".into());
                }
            }
        }
        if !(1..=300).contains(&self.server.header_read_timeout_seconds) {
            push(
                "server.header_read_timeout_seconds".into(),
                format!("must be between 1 and 300 (got {})", self.server.header_read_timeout_seconds),
            );
        }
        if !(1..=3600).contains(&self.server.idle_timeout_seconds) {
            push(
                "server.idle_timeout_seconds".into(),
                format!("must be between 1 and 3600 (got {})", self.server.idle_timeout_seconds),
            );
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.server.max_connections) {
            push(
                "server.max_connections".into(),
                format!("must be between 1 and {MAX_CONNECTIONS} (got {})", self.server.max_connections),
            );
        }
        if !(1..=3600).contains(&self.server.healthcheck_interval_seconds) {
            push(
                "server.healthcheck_interval_seconds".into(),
                format!("must be between 1 and 3600 (got {})", self.server.healthcheck_interval_seconds),
            );
        }
        if !(MIN_WAL_MIB..=MAX_WAL_MIB).contains(&self.limits.max_wal_mib) {
            push(
                "limits.max_wal_mib".into(),
                format!(
                    "must be between {MIN_WAL_MIB} (room for the largest request, 4 MiB, twice) and {MAX_WAL_MIB} (got {})",
                    self.limits.max_wal_mib
                ),
            );
        }
        for (field, value) in
            [("limits.body_wait_ms", self.limits.body_wait_ms), ("limits.full_wait_ms", self.limits.full_wait_ms)]
        {
            if value > MAX_WAIT_MS {
                push(field.into(), format!("must be between 0 and {MAX_WAIT_MS} (got {value})"));
            }
        }
        if !(4..=65_536).contains(&self.limits.max_open_batches_mib) {
            push(
                "limits.max_open_batches_mib".into(),
                format!("must be between 4 and 65536 (got {})", self.limits.max_open_batches_mib),
            );
        }
        if self.limits.max_inflight_request_mib < 8 {
            push(
                "limits.max_inflight_request_mib".into(),
                format!("must be at least 8, two full 4 MiB batches (got {})", self.limits.max_inflight_request_mib),
            );
        }

        if let Some(cluster) = &self.cluster {
            for (field, message) in cluster.validate(self.server.listen) {
                push(format!("cluster.{field}"), message);
            }
        }
        if let Some(replication) = &self.wal.replication {
            if self.cluster.is_none() {
                push(
                    "wal.replication".into(),
                    "needs cluster mode (`cluster:`): the segment index and the ingest slots live in its coordinator"
                        .into(),
                );
            }
            for (field, message) in replication.validate() {
                push(format!("wal.replication.{field}"), message);
            }
        }

        for (index, problem) in stream_reading_problems(&self.streams) {
            push(format!("streams[{index}].source.stream"), problem);
        }
        let mut seen = BTreeSet::new();
        for (index, stream) in self.streams.iter().enumerate() {
            let at = |field: &str| format!("streams[{index}].{field}");
            if !is_valid_stream_name(&stream.name) {
                push(at("name"), format!("{:?} must be 1-64 characters of [a-zA-Z0-9_.-]", stream.name));
            }
            if !seen.insert(stream.name.as_str()) {
                push(at("name"), format!("duplicate stream name {:?}", stream.name));
            }
            let size_range = stream.sink.descriptor().limits().buffer_size_mib;
            if !size_range.contains(&stream.buffering.size_mib) {
                push(
                    at("buffering.size_mib"),
                    format!(
                        "must be between {} and {} for a {} sink (got {})",
                        size_range.start(),
                        size_range.end(),
                        stream.sink.descriptor().type_name(),
                        stream.buffering.size_mib
                    ),
                );
            }
            if stream.buffering.interval_seconds > 900 {
                push(
                    at("buffering.interval_seconds"),
                    format!("must be between 0 and 900 (got {})", stream.buffering.interval_seconds),
                );
            }
            if stream.buffering.size_mib * 2 > self.limits.max_wal_mib {
                push(
                    at("buffering.size_mib"),
                    format!(
                        "must be at most half of limits.max_wal_mib ({}), or the WAL fills before a buffer does",
                        self.limits.max_wal_mib
                    ),
                );
            }
            let retry_range = stream.sink.descriptor().limits().retry_duration_seconds;
            if let Some(duration_seconds) = stream.retry.duration_seconds
                && !retry_range.contains(&duration_seconds)
            {
                push(
                    at("retry.duration_seconds"),
                    format!(
                        "must be between {} and {} for a {} sink (got {})",
                        retry_range.start(),
                        retry_range.end(),
                        stream.sink.descriptor().type_name(),
                        duration_seconds
                    ),
                );
            }
            let sink_problems = stream.sink.descriptor().validate();
            let sink_reported = |field: &str| sink_problems.iter().any(|problem| problem.field == field);
            for problem in dynamic_partitioning_problems(stream, &sink_reported) {
                push(at(&problem.path), problem.message);
            }
            for problem in sink_problems {
                push(at(&format!("sink.{}", problem.field)), problem.message);
            }
            for (field, message) in stream.source.descriptor().validate() {
                push(at(&format!("source.{field}")), message);
            }
        }
        problems
    }

    /// What spillway accepts but AWS would refuse: `validate` prints these, `run` logs them;
    /// neither fails. Paths as in [`Config::validate`].
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        for (index, stream) in self.streams.iter().enumerate() {
            let partitioned = stream.processing.dynamic_partitioning.as_ref().is_some_and(|dynamic| dynamic.enabled);
            if partitioned && stream.buffering.size_mib < FIREHOSE_MIN_PARTITIONED_BUFFER_MIB {
                warnings.push(Problem {
                    path: format!("streams[{index}].buffering.size_mib"),
                    message: format!(
                        "{} is below Firehose's minimum of {FIREHOSE_MIN_PARTITIONED_BUFFER_MIB} with dynamic partitioning: \
                         spillway accepts it, AWS refuses such a stream",
                        stream.buffering.size_mib
                    ),
                });
            }
        }
        warnings
    }

    pub fn stream(&self, name: &str) -> Option<&StreamConfig> {
        self.streams.iter().find(|stream| stream.name == name)
    }
}

/// Firehose's smallest buffer size for a stream with dynamic partitioning.
const FIREHOSE_MIN_PARTITIONED_BUFFER_MIB: u64 = 64;

/// `processing.dynamic_partitioning` and how the sink prefix uses it; paths are relative to the
/// stream. `sink_reported(field)` says whether the sink's own validation already flagged a field.
fn dynamic_partitioning_problems(stream: &StreamConfig, sink_reported: &dyn Fn(&str) -> bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |path: &str, message: String| problems.push(Problem { path: path.to_string(), message });
    if let Err(bad) = crate::processing::Chain::build(&stream.processing.transforms) {
        for (index, reason) in bad {
            let field = match stream.processing.transforms.get(index) {
                Some(crate::processing::TransformConfig::Lambda(_)) => "",
                // Reported field by field below.
                Some(crate::processing::TransformConfig::Sql(_)) => continue,
                _ => ".expr",
            };
            push(&format!("processing.transforms[{index}]{field}"), reason);
        }
    }
    let mut has_lambda = false;
    for (index, transform) in stream.processing.transforms.iter().enumerate() {
        if let crate::processing::TransformConfig::Lambda(lambda) = transform {
            has_lambda = true;
            for (field, message) in lambda.validate() {
                push(&format!("processing.transforms[{index}].{field}"), message);
            }
        }
        if let crate::processing::TransformConfig::Sql(sql) = transform {
            for (field, message) in sql.validate() {
                push(&format!("processing.transforms[{index}].{field}"), message);
            }
            if sql.window.is_some() && (index != 0 || stream.source.descriptor().reads_stream().is_none()) {
                push(
                    &format!("processing.transforms[{index}].window"),
                    "a windowed sql transform runs where a stream reads another stream: make it the first transform of a stream with `source: { type: stream, stream: <the intake> }`".into(),
                );
            }
        }
    }
    let block = "processing.dynamic_partitioning";
    let enabled_keys = stream.processing.partition_keys();
    let lambda_partitioning = stream.processing.dynamic_partitioning.as_ref().is_some_and(|dynamic| dynamic.enabled);

    if let Some(dynamic) = &stream.processing.dynamic_partitioning {
        if !stream.sink.descriptor().supports_dynamic_partitioning() {
            push(
                block,
                format!("is not supported by a {} sink (Firehose: S3 only)", stream.sink.descriptor().type_name()),
            );
        }
        if dynamic.enabled && dynamic.keys.is_empty() && !has_lambda {
            push(
                &format!("{block}.keys"),
                "at least one key (or a lambda transform returning partition keys) is required when dynamic partitioning is enabled".into(),
            );
        }
        if dynamic.keys.contains_key("") {
            push(&format!("{block}.keys"), "a key name must not be empty".into());
        }
        if !(1..=MAX_ACTIVE_PARTITIONS).contains(&dynamic.max_active_partitions) {
            push(
                &format!("{block}.max_active_partitions"),
                format!("must be between 1 and {MAX_ACTIVE_PARTITIONS} (got {})", dynamic.max_active_partitions),
            );
        }
        if dynamic.retry_duration_seconds > MAX_PARTITIONING_RETRY_SECONDS {
            push(
                &format!("{block}.retry_duration_seconds"),
                format!(
                    "must be between 0 and {MAX_PARTITIONING_RETRY_SECONDS} (got {})",
                    dynamic.retry_duration_seconds
                ),
            );
        }
        // Disabled keys are still compiled: a typo should not wait until someone enables them.
        if let Err(errors) = PartitionKeys::compile(&dynamic.keys) {
            for error in errors {
                push(&format!("{block}.keys.{}", error.key), error.message);
            }
        }
        // Firehose requires an error output prefix whenever dynamic partitioning is enabled.
        if dynamic.enabled
            && !stream.sink.descriptor().has_error_output_prefix()
            && !sink_reported("error_output_prefix")
        {
            push("sink.error_output_prefix", "is required when dynamic partitioning is enabled".into());
        }
    }

    // An unparsable prefix is reported by the sink's own validation.
    let Ok(named) = stream.sink.descriptor().partition_keys_in_prefix() else {
        return problems;
    };
    let field = format!("sink.{}", stream.sink.descriptor().partition_keys_field());
    let field = field.as_str();
    let mut reported = BTreeSet::new();
    for (source, name) in named {
        if !reported.insert((source == PartitionKeySource::Query, name.clone())) {
            continue;
        }
        match source {
            PartitionKeySource::Query if enabled_keys.is_empty() => push(
                field,
                format!("uses !{{partitionKeyFromQuery:{name}}} but processing.dynamic_partitioning is not enabled"),
            ),
            PartitionKeySource::Query if !enabled_keys.contains_key(&name) => {
                push(field, format!("uses !{{partitionKeyFromQuery:{name}}} but {block}.keys has no key `{name}`"))
            }
            PartitionKeySource::Query => {}
            PartitionKeySource::Lambda if !has_lambda => push(
                field,
                format!(
                    "uses !{{partitionKeyFromLambda:{name}}}, which needs a lambda transform in processing.transforms returning partition keys"
                ),
            ),
            PartitionKeySource::Lambda if !lambda_partitioning => push(
                field,
                format!("uses !{{partitionKeyFromLambda:{name}}} but processing.dynamic_partitioning is not enabled"),
            ),
            PartitionKeySource::Lambda => {}
        }
    }
    problems
}

/// Each stream that other streams read, with the names of those readers (`source: { type: stream }`).
pub fn stream_readers(streams: &[StreamConfig]) -> BTreeMap<String, Vec<String>> {
    let mut readers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for stream in streams {
        if let Some(upstream) = stream.source.descriptor().reads_stream() {
            readers.entry(upstream.to_string()).or_default().push(stream.name.clone());
        }
    }
    readers
}

/// A stream read by another must be a stream of the file, not the reader itself, and readers may
/// not form a cycle (records would go round for ever). Problems as (stream index, message).
fn stream_reading_problems(streams: &[StreamConfig]) -> Vec<(usize, String)> {
    let upstream_of: BTreeMap<&str, &str> = streams
        .iter()
        .filter_map(|stream| Some((stream.name.as_str(), stream.source.descriptor().reads_stream()?)))
        .collect();
    let names: BTreeSet<&str> = streams.iter().map(|stream| stream.name.as_str()).collect();
    let mut problems = Vec::new();
    for (index, stream) in streams.iter().enumerate() {
        let Some(upstream) = stream.source.descriptor().reads_stream() else { continue };
        if upstream == stream.name {
            problems.push((index, "a stream cannot read itself".to_string()));
        } else if !names.contains(upstream) {
            problems.push((
                index,
                format!("no stream named {upstream:?} in this file (a stream reads only another YAML stream)"),
            ));
        } else {
            // Follow the chain of upstreams; it ends at a stream that reads no stream, or comes back.
            let mut chain = vec![stream.name.as_str()];
            let mut next = upstream;
            while let Some(&after) = upstream_of.get(next) {
                chain.push(next);
                if after == stream.name {
                    chain.push(after);
                    problems.push((index, format!("streams read each other in a cycle: {}", chain.join(" -> "))));
                    break;
                }
                if chain.len() > streams.len() {
                    break;
                }
                next = after;
            }
        }
    }
    problems
}

/// Firehose's `DeliveryStreamName` constraint (1-64 characters of `[a-zA-Z0-9_.-]`), and not made
/// only of dots: a stream's name is its folder under `data_dir/streams`, and `.` or `..` would
/// name the folder of every stream or `data_dir` itself.
pub fn is_valid_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
        && !is_only_dots(name)
}

/// A name made only of dots (`.`, `..`, `...`): refused as a stream name (see above).
pub fn is_only_dots(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|byte| byte == b'.')
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// One stream with the given `processing:` and `sink:` bodies (flow YAML).
    fn problems(processing: &str, sink: &str) -> Vec<Problem> {
        let yaml = format!("streams:\n  - name: s\n    processing: {processing}\n    sink: {sink}\n");
        match serde_yaml_ng::from_str::<Config>(&yaml) {
            Ok(config) => config.validate(),
            Err(error) => panic!("{error}"),
        }
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|problem| problem.path.as_str()).collect()
    }

    const PARTITIONED_SINK: &str = "{ type: s3, url: 'file://out', prefix: 'svc=!{partitionKeyFromQuery:service}/', error_output_prefix: 'errors/!{firehose:error-output-type}/' }";

    #[test]
    // Needs the kinesis source built (a left-out type is refused by feature before cluster mode).
    #[cfg(feature = "source-kinesis")]
    fn cluster_mode_checks_its_block_and_accepts_shard_sources() {
        let yaml = "cluster: { coordinator: 'postgres://spillway:pw@db/spillway', lease_seconds: 1 }\n\
                    streams:\n\
                    \x20 - name: k\n\
                    \x20   source: { type: kinesis, stream_name: orders, region: us-east-1 }\n\
                    \x20   sink: { type: s3, url: 'file://out' }\n\
                    \x20 - name: p\n\
                    \x20   sink: { type: s3, url: 'file://out' }\n";
        let config = parse_str(yaml, Path::new("test.yaml")).unwrap_err().to_string();
        assert!(config.contains("cluster.lease_seconds: must be between 2 and 300 (got 1)"), "{config}");
        // Kinesis shards are shared through leases: only the lease period is wrong.
        assert!(!config.contains("streams["), "{config}");
        // Without `cluster:` the same streams are valid.
        let single =
            yaml.replace("cluster: { coordinator: 'postgres://spillway:pw@db/spillway', lease_seconds: 1 }\n", "");
        let config = parse_str(&single, Path::new("test.yaml")).unwrap();
        assert!(config.cluster.is_none());
    }

    /// Every pull source runs in cluster mode: shard and partition sources share their shards
    /// through leases.
    #[test]
    #[cfg(feature = "source-kafka")]
    fn cluster_mode_accepts_a_kafka_source() {
        let yaml = "cluster: { coordinator: 'postgres://spillway:pw@db/spillway' }\n\
                    streams:\n\
                    \x20 - name: k\n\
                    \x20   source: { type: kafka, bootstrap_servers: 'b:9092', topics: [orders] }\n\
                    \x20   sink: { type: s3, url: 'file://out' }\n";
        let config = parse_str(yaml, Path::new("test.yaml")).unwrap();
        assert!(config.cluster.is_some());
        // Each partition's owner commits its delivered offsets to the group.
        let committing = yaml.replace("topics: [orders]", "topics: [orders], commit_offsets_to_group: lag");
        assert!(parse_str(&committing, Path::new("test.yaml")).is_ok());
    }

    #[test]
    fn server_auth_needs_keys_and_hides_secrets() {
        let yaml = "server: { auth: { access_keys: [ { access_key_id: AKID, secret_access_key: s3cr3t } ] } }\n";
        let config = parse_str(yaml, Path::new("test.yaml")).unwrap();
        assert_eq!(config.validate(), []);
        assert!(!format!("{config:?}").contains("s3cr3t"));

        let yaml = "server: { auth: { access_keys: [ { access_key_id: A, secret_access_key: '' }, \
                    { access_key_id: A, secret_access_key: x } ] } }\n";
        let config: Config = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(
            paths(&config.validate()),
            ["server.auth.access_keys[0].secret_access_key", "server.auth.access_keys[1].access_key_id"]
        );
        let config: Config = serde_yaml_ng::from_str("server: { auth: { access_keys: [] } }\n").unwrap();
        assert_eq!(paths(&config.validate()), ["server.auth.access_keys"]);
    }

    #[test]
    fn connection_limits_have_defaults_and_bounds() {
        let config = parse_str("streams: []\n", Path::new("test.yaml")).unwrap();
        assert_eq!(config.server.header_read_timeout_seconds, 10);
        assert_eq!(config.server.idle_timeout_seconds, 60);
        assert_eq!(config.server.max_connections, 512);

        let yaml = "server: { header_read_timeout_seconds: 0, idle_timeout_seconds: 0, max_connections: 0 }\n";
        let config: Config = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(
            paths(&config.validate()),
            ["server.header_read_timeout_seconds", "server.idle_timeout_seconds", "server.max_connections"]
        );
        let yaml = "server: { header_read_timeout_seconds: 1, idle_timeout_seconds: 1, max_connections: 1 }\n";
        let config: Config = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(config.validate(), []);
    }

    #[test]
    fn auth_open_routes_default_to_none_and_name_only_known_groups() {
        let yaml = "server: { auth: { access_keys: [ { access_key_id: A, secret_access_key: s } ] } }\n";
        let config: Config = serde_yaml_ng::from_str(yaml).unwrap();
        let auth = config.server.auth.clone().unwrap();
        assert!(!auth.is_open(OpenRoute::Metrics) && !auth.is_open(OpenRoute::Status));

        let yaml = "server: { auth: { access_keys: [ { access_key_id: A, secret_access_key: s } ], \
                    open_routes: [metrics] } }\n";
        let config: Config = serde_yaml_ng::from_str(yaml).unwrap();
        let auth = config.server.auth.clone().unwrap();
        assert!(auth.is_open(OpenRoute::Metrics) && !auth.is_open(OpenRoute::Status));

        let yaml = "server: { auth: { access_keys: [ { access_key_id: A, secret_access_key: s } ], \
                    open_routes: [health] } }\n";
        let error = serde_yaml_ng::from_str::<Config>(yaml).unwrap_err().to_string();
        assert!(error.contains("metrics") && error.contains("status"), "{error}");
    }

    #[test]
    fn server_tls_is_off_by_default_and_needs_both_paths() {
        let config = parse_str("streams: []\n", Path::new("test.yaml")).unwrap();
        assert!(config.server.tls.is_none());

        let yaml = "server: { tls: { cert: ./cert.pem, key: ./key.pem } }\n";
        let config = parse_str(yaml, Path::new("test.yaml")).unwrap();
        let tls = config.server.tls.clone().unwrap();
        assert_eq!(tls.cert, Path::new("./cert.pem"));
        assert_eq!(config.validate(), []);

        let config: Config = serde_yaml_ng::from_str("server: { tls: { cert: '', key: '' } }\n").unwrap();
        assert_eq!(paths(&config.validate()), ["server.tls.cert", "server.tls.key"]);

        let unknown = serde_yaml_ng::from_str::<Config>("server: { tls: { cert: a, key: b, ca: c } }\n");
        assert!(unknown.is_err());
        let missing_key = serde_yaml_ng::from_str::<Config>("server: { tls: { cert: a } }\n");
        assert!(missing_key.is_err());
    }

    #[test]
    #[cfg(feature = "sink-postgres")]
    fn redshift_retries_for_an_hour_by_default_within_firehose_range_and_postgres_for_a_day() {
        let stream = |mode: &str, retry: &str| {
            format!(
                "streams:\n  - name: s\n{retry}    sink: {{ type: postgres, url: 'postgres://h:5439/dev', table: t, mode: {mode}, \
                 iam_role: 'arn:aws:iam::1:role/r', s3_staging: {{ url: 's3://staging-bucket' }} }}\n"
            )
        };
        let config = parse_str(&stream("s3_manifest", ""), Path::new("test.yaml")).unwrap();
        assert_eq!(config.validate(), []);
        assert_eq!(config.streams[0].retry_duration_seconds(), 3_600);
        let config: Config =
            serde_yaml_ng::from_str(&stream("s3_manifest", "    retry: { duration_seconds: 7201 }\n")).unwrap();
        let problems = config.validate();
        assert_eq!(paths(&problems), ["streams[0].retry.duration_seconds"]);
        assert!(problems[0].message.contains("between 0 and 7200"), "{}", problems[0].message);

        let yaml = "streams:\n  - name: s\n    sink: { type: postgres, url: 'postgres://h/db', table: t, backup: { sink: { url: 'file://e' } } }\n";
        let config = parse_str(yaml, Path::new("test.yaml")).unwrap();
        assert_eq!(config.validate(), []);
        assert_eq!(config.streams[0].retry_duration_seconds(), 86_400);
    }

    #[test]
    fn dynamic_partitioning_defaults_and_a_valid_stream() {
        let yaml = format!(
            "streams:\n  - name: s\n    processing: {{ dynamic_partitioning: {{ keys: {{ service: '.service' }} }} }}\n    sink: {PARTITIONED_SINK}\n"
        );
        let config = parse_str(&yaml, Path::new("test.yaml")).unwrap();
        let dynamic = config.streams[0].processing.dynamic_partitioning.clone().unwrap();
        assert!(dynamic.enabled);
        assert_eq!(dynamic.max_active_partitions, 500);
        assert_eq!(dynamic.retry_duration_seconds, 300);
        assert_eq!(config.validate(), []);
        assert_eq!(config.streams[0].processing.partition_keys().len(), 1);
    }

    /// A sink whose keys are named by another field (Iceberg's `table`) is named in the problem.
    #[test]
    #[cfg(feature = "sink-iceberg")]
    fn table_keys_are_reported_under_the_table_field() {
        let sink = "{ type: iceberg, catalog: { type: sql, uri: 'postgres://u@h/db', warehouse: 's3://w' }, \
                    table: 'db.!{partitionKeyFromQuery:t}', backup: { sink: { url: 'file://errors' } } }";
        let found = problems("{}", sink);
        assert_eq!(paths(&found), ["streams[0].sink.table"], "{found:?}");
        assert!(found[0].message.contains("not enabled"), "{}", found[0]);
    }

    #[test]
    fn prefix_keys_need_dynamic_partitioning_with_that_key() {
        let found = problems("{}", PARTITIONED_SINK);
        assert_eq!(paths(&found), ["streams[0].sink.prefix"]);
        assert!(found[0].message.contains("not enabled"), "{}", found[0]);

        let found = problems("{ dynamic_partitioning: { keys: { team: '.team' } } }", PARTITIONED_SINK);
        assert_eq!(paths(&found), ["streams[0].sink.prefix"]);
        assert!(found[0].message.contains("no key `service`"), "{}", found[0]);

        let found =
            problems("{ dynamic_partitioning: { enabled: false, keys: { service: '.service' } } }", PARTITIONED_SINK);
        assert_eq!(paths(&found), ["streams[0].sink.prefix"]);
    }

    #[test]
    fn dynamic_partitioning_requires_an_error_output_prefix_once() {
        let keys = "{ dynamic_partitioning: { keys: { service: '.service' } } }";
        // The prefix names the key: the sink's own rule reports it, not twice.
        let found = problems(keys, "{ type: s3, url: 'file://out', prefix: 'svc=!{partitionKeyFromQuery:service}/' }");
        assert_eq!(paths(&found), ["streams[0].sink.error_output_prefix"]);
        // Keys unused by the prefix are allowed, but the error prefix is still required.
        let found = problems(keys, "{ type: s3, url: 'file://out' }");
        assert_eq!(paths(&found), ["streams[0].sink.error_output_prefix"]);
        assert!(found[0].message.contains("dynamic partitioning"), "{}", found[0]);
        let found = problems(keys, "{ type: s3, url: 'file://out', error_output_prefix: 'errors/' }");
        assert_eq!(found, []);
    }

    #[test]
    fn transforms_must_compile_and_be_known() {
        let found = problems(
            "{ transforms: [ { type: jq, expr: '.a' }, { type: jq, expr: 'select(.a ==' }, { type: jq, expr: 'nope' } ] }",
            "{ type: s3, url: 'file://out' }",
        );
        assert_eq!(
            paths(&found),
            ["streams[0].processing.transforms[1].expr", "streams[0].processing.transforms[2].expr"]
        );
        assert!(found[1].message.contains("undefined filter `nope`"), "{}", found[1]);
        let yaml = "streams:\n  - name: s\n    processing: { transforms: [ { type: lua, expr: '.' } ] }\n    sink: { type: s3, url: 'file://out' }\n";
        let error = serde_yaml_ng::from_str::<Config>(yaml).expect_err("an unknown transform type is refused");
        assert!(error.to_string().contains("unknown variant `lua`"), "{error}");
    }

    #[test]
    fn keys_must_compile_and_have_names() {
        let found = problems(
            "{ dynamic_partitioning: { keys: { '': '.a', broken: '.a |', fine: '.b', unknown: 'nope(1)' } } }",
            "{ type: s3, url: 'file://out', error_output_prefix: 'errors/' }",
        );
        assert_eq!(
            paths(&found),
            [
                "streams[0].processing.dynamic_partitioning.keys",
                "streams[0].processing.dynamic_partitioning.keys.broken",
                "streams[0].processing.dynamic_partitioning.keys.unknown",
            ]
        );
        assert!(found[2].message.contains("undefined filter `nope`"), "{}", found[2]);

        let found = problems(
            "{ dynamic_partitioning: { keys: {} } }",
            "{ type: s3, url: 'file://out', error_output_prefix: 'errors/' }",
        );
        assert_eq!(paths(&found), ["streams[0].processing.dynamic_partitioning.keys"]);
    }

    #[test]
    fn partition_limits_follow_firehose() {
        let found = problems(
            "{ dynamic_partitioning: { keys: { a: '.a' }, max_active_partitions: 5001, retry_duration_seconds: 7201 } }",
            "{ type: s3, url: 'file://out', error_output_prefix: 'errors/' }",
        );
        assert_eq!(
            paths(&found),
            [
                "streams[0].processing.dynamic_partitioning.max_active_partitions",
                "streams[0].processing.dynamic_partitioning.retry_duration_seconds",
            ]
        );
        let found = problems(
            "{ dynamic_partitioning: { keys: { a: '.a' }, max_active_partitions: 0 } }",
            "{ type: s3, url: 'file://out', error_output_prefix: 'errors/' }",
        );
        assert_eq!(paths(&found), ["streams[0].processing.dynamic_partitioning.max_active_partitions"]);
        let yaml = "streams:\n  - name: s\n    processing: { dynamic_partitioning: { keys: {}, max_partitions: 1 } }\n    sink: { type: s3, url: 'file://out' }\n";
        assert!(parse_str(yaml, Path::new("test.yaml")).is_err(), "unknown fields are refused");
    }

    #[test]
    fn lambda_partition_keys_need_a_lambda_and_dynamic_partitioning() {
        let sink = "{ type: s3, url: 'file://out', prefix: 't=!{partitionKeyFromLambda:team}/', error_output_prefix: 'errors/!{firehose:error-output-type}/' }";
        let found = problems("{}", sink);
        assert_eq!(paths(&found), ["streams[0].sink.prefix"]);
        assert!(found[0].message.contains("lambda transform"), "{}", found[0]);

        let lambda = "{ type: lambda, url: 'http://127.0.0.1:9/f' }";
        let found = problems(&format!("{{ transforms: [ {lambda} ] }}"), sink);
        assert_eq!(paths(&found), ["streams[0].sink.prefix"]);
        assert!(found[0].message.contains("dynamic_partitioning"), "{}", found[0]);

        let found =
            problems(&format!("{{ transforms: [ {lambda} ], dynamic_partitioning: {{ enabled: true }} }}"), sink);
        assert_eq!(found, []);
    }

    #[test]
    fn lambda_transforms_are_checked() {
        let found = problems(
            "{ transforms: [ { type: jq, expr: '.' }, { type: lambda, url: 'nope', buffer_size_mib: 0.1 }, { type: lambda, url: 'http://x/' } ] }",
            "{ type: s3, url: 'file://out' }",
        );
        assert_eq!(
            paths(&found),
            [
                "streams[0].processing.transforms[2]",
                "streams[0].processing.transforms[1].url",
                "streams[0].processing.transforms[1].buffer_size_mib",
            ]
        );
        let yaml = "streams:\n  - name: s\n    processing: { transforms: [ { type: lambda, url: 'http://x/', retries: 2 } ] }\n    sink: { type: s3, url: 'file://out' }\n";
        assert!(parse_str(yaml, Path::new("test.yaml")).is_err(), "unknown fields are refused");
    }

    #[test]
    fn the_record_delimiter_defaults_to_newline_for_a_file_source_only() {
        let delimiter = |source: &str, processing: &str| {
            let yaml = format!(
                "streams:\n  - name: s\n    source: {source}\n{processing}    sink: {{ type: s3, url: 'file://out' }}\n"
            );
            let config = parse_str(&yaml, Path::new("test.yaml")).unwrap();
            config.streams[0].record_delimiter()
        };
        let file = "{ type: file, path: /var/log/app.log }";
        assert_eq!(delimiter(file, ""), RecordDelimiter::Newline);
        assert_eq!(delimiter(file, "    processing: { record_delimiter: none }\n"), RecordDelimiter::None);
        assert_eq!(
            delimiter(file, "    processing: { record_delimiter: newline_if_missing }\n"),
            RecordDelimiter::NewlineIfMissing
        );
        assert_eq!(delimiter("{ type: direct_put }", ""), RecordDelimiter::None);
        assert_eq!(
            delimiter("{ type: direct_put }", "    processing: { record_delimiter: newline }\n"),
            RecordDelimiter::Newline
        );
    }
}
