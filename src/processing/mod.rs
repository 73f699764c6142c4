//! Record processing between the WAL and the open batches: what a record's content decides
//! (its transforms, see [`transform`], and its dynamic partition, see [`partition`]). Everything here is pure and deterministic —
//! a replayed record must land in the same partition — and must not do I/O, read the clock, or
//! know about batches, sinks or the WAL. The Lambda transform's protocol lives in [`lambda`];
//! its HTTP calls are the delivery loop's (`pipeline::lambda`).

pub mod jq;
pub mod lambda;
pub mod partition;
pub mod sql;
pub mod transform;

pub use partition::{
    KeyCompileError, KeyError, METADATA_EXTRACTION_FAILED, METADATA_EXTRACTION_OUTPUT_TYPE, PartitionKeys,
    PartitionValues,
};
pub use transform::{
    Chain, DecompressFormat, PROCESSING_FAILED_OUTPUT_TYPE, SubRecordType, TransformConfig, TransformFailure,
    Transforms,
};
