//! The contract between spillway's pipeline and its sinks. This crate is a leaf: it knows nothing
//! of configuration, sources, the WAL or retries.
//!
//! Module map:
//! - [`batch`]: `Record`, `SequenceSet` and `Batch` (a closed, encoded batch of one partition).
//! - [`encode`]: the `Encoder` an open batch is held in, and the raw (+ gzip / zstd) encoder.
//! - [`sink`]: the `Sink` trait (one attempt per call; retries belong to the pipeline).
//! - [`error`]: `SinkError`, classified as retriable, permanent or partial.
//! - [`descriptor`]: `SinkDescriptor`, what a sink type tells spillway about itself (ranges,
//!   validation, build, Firehose's description), and `BuiltSink`.
//! - [`codec`]: the compressions every byte-oriented sink shares (none, gzip, zstd).
//! - [`json_depth`]: the nesting bound every JSON parse honours, checked before parsing.
//! - [`panic`]: containing a panic into an "internal error" of one record or batch.
//! - [`secret`]: `Secret`, a configuration value (credential, password) that never shows in logs.
//! - [`testkit`]: an in-memory sink and the conformance checks every sink must pass.

pub mod batch;
pub mod civil;
pub mod codec;
pub mod descriptor;
pub mod encode;
pub mod error;
pub mod json_depth;
pub mod panic;
pub mod secret;
pub mod sink;
pub mod testkit;

pub use batch::{Batch, LAMBDA_PARTITION_KEY_PREFIX, PartitionKeys, Record, SequenceSet, lambda_partition_key};
pub use codec::Compression;
pub use descriptor::{
    BuildContext, BuiltSink, ConfigProblem, DESTINATION_ID, DescribeContext, FirehoseLimits, PartitionKeySource,
    SinkDescriptor,
};
pub use encode::{
    EncodeError, Encoder, EncoderFactory, Payload, RawEncoder, RawEncoderFactory, RecordPosition, Refusal,
};
pub use error::{ErrorClass, RecordFailure, SinkError, error_chain};
pub use json_depth::{MAX_JSON_DEPTH, TooDeep, check_json_depth};
pub use panic::catch_panic;
pub use secret::{Secret, same_configuration};
pub use sink::{ErrorOutput, RequestCounts, Sink};
