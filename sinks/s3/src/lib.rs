//! spillway's object-store sink: batches become objects in a local folder (`file://`, the
//! embedded default) or an S3-compatible bucket (`s3://`, AWS or MinIO), under Firehose's key
//! layout and prefix expressions. Depends only on `spillway-sink-api` and `object_store`.
//!
//! Module map:
//! - [`backup`]: the `backup: { mode, sink }` block every non-S3 sink shares.
//! - [`config`]: `S3SinkConfig` (the YAML `sink:` block), pure `validate`, and `build`.
//! - [`descriptor`]: the sink as the registry sees it (`SinkDescriptor`): Firehose's S3 ranges
//!   and the `ExtendedS3DestinationDescription`.
//! - [`key`]: prefix expressions (`!{timestamp:..}`, `!{firehose:..}`, partition keys) and
//!   Firehose object names; pure.
//! - [`parquet`]: the Parquet encoder (`format: {type: parquet}`): JSON records → typed column
//!   builders → row groups.
//! - [`timestamp`]: Java `DateTimeFormatter` patterns (`!{timestamp:..}`) and `custom_time_zone`
//!   zones; pure.
//! - `local`: writes into a local folder, staged under `.spillway-staging/` (never beside the
//!   objects), and the free-space probe of its healthcheck.
//! - [`sink`]: `S3Sink`, the `Sink` and `ErrorOutput` implementations (single PUT or multipart).
//! - [`error`]: classification of object store failures into `SinkError`.
//! - `credentials`: the standard AWS credential chain (profiles, SSO, roles) when the YAML names
//!   no keys.

pub mod backup;
pub mod config;
mod credentials;
pub mod descriptor;
pub mod error;
pub mod key;
mod local;
pub mod parquet;
pub mod sink;
pub mod timestamp;

pub use backup::{BackupConfig, BackupMode};
pub use config::{Destination, OutputFormat, S3Connection, S3SinkConfig};
pub use descriptor::bucket_arn_for_url;
pub use error::is_destination_state;
pub use key::{PrefixError, PrefixKind, PrefixTemplate};
pub use local::STAGING_DIR;
pub use sink::S3Sink;
pub use spillway_sink_api::ConfigProblem;
