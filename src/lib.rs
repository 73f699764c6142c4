//! spillway: a self-hosted delivery service that does what Amazon Data Firehose does. Records come
//! in (Firehose Direct PUT API, NDJSON), are appended to a write-ahead log before they are
//! acknowledged, buffered per stream until a size or time hint, and delivered to a sink (S3 /
//! MinIO / a local folder) with retries, an error output and effectively-once batch identities.
//!
//! Module map (a record's way through, see DESIGN.md):
//! - [`config`]: YAML model, `${ENV}` interpolation, validation with YAML paths and positions.
//! - [`sources`]: push handlers (`direct_put`, `http`) appending to the WAL through `Ingest`
//!   (`direct_put` also owns the Firehose API's wire protocol and hands control operations to
//!   [`control`]); pull sources (`file`, and the shard sources `kinesis` and `dynamodb_streams`
//!   over the shared core `sources::shards`), each behind its cargo feature.
//! - [`control`]: the Firehose control plane: create / describe / update / delete / tags /
//!   encryption, Firehose's S3 destination shapes ↔ `StreamConfig` (`control::s3_destination`),
//!   and the catalog of stream records behind a trait (`control::catalog`: a folder under
//!   `data_dir` today).
//! - [`stream_record`]: what is recorded about a stream beside its configuration (status,
//!   version, times, tags); the stream table carries it, the control plane's catalog keeps it.
//! - [`streams`]: one stream's lifecycle (WAL, sink, delivery loop), for YAML and API streams.
//! - [`reload`]: SIGHUP / `--watch-config`: re-read the file, apply added, changed and removed
//!   YAML streams through the lifecycle, or keep the running configuration and say why.
//! - [`wal`]: segment files with checksums, group commit, recovery, trimming, and setting damaged
//!   segments aside (`wal::quarantine`).
//! - [`readiness`]: what `/ready` answers from (sink health, the WAL disk, the coordinator).
//! - [`record_metadata`]: what a pull source knows about each record (a Kinesis sequence number,
//!   a partition key), kept in its WAL frame in Firehose's names and read by the Lambda stage.
//! - [`processing`]: what a record's content decides: transforms, its dynamic partition (jq
//!   keys), the Lambda transform's protocol (`processing::lambda`).
//! - [`pipeline`]: buffer → intent → sink → checkpoint, with retries and the error output; a
//!   Lambda transform's stage (`pipeline::lambda_stage`) and HTTP invoker (`pipeline::invoker`).
//! - [`checkpoint`]: the per-stream delivered position.
//! - [`atomic_file`]: replacing a small file crash-safely (checkpoint, intents, positions, catalog).
//! - [`data_dir`]: the exclusive lock that keeps a second process off a data directory.
//! - [`sinks`]: the registry mapping a YAML `sink.type` to a sink crate (`postgres` and
//!   `opensearch` behind cargo features; a left-out type is refused by name and feature).
//! - [`sigv4`]: verifying SigV4-signed requests (`server.auth`), for the HTTP front and the push
//!   sources.
//! - [`server`]: the HTTP router (`/`, `/streams/{name}/records`, `/health`, `/metrics`).
//! - [`metrics`]: Prometheus / OpenMetrics instruments (prometheus-client) and scrape-time gauges;
//!   a leaf every layer reports into, importing none of them.
//! - [`app`]: wiring (the catalog, the lifecycle, the control plane, the server) and ordered
//!   shutdown; nothing below it imports it.
//! - [`client`]: the `put` and `bench` commands' Firehose client side.
//! - [`cluster`]: cluster mode's foundation: the `cluster:` block, the coordinator's schema in
//!   PostgreSQL, the lease store with fencing, the balancer, membership and `cluster status`.
//! - [`operate`]: the operator's `wal inspect` / `wal quarantine` tools, above the WAL, the
//!   checkpoint and the intents they read together.

pub mod app;
pub mod atomic_file;
pub mod checkpoint;
pub mod client;
pub mod cluster;
pub mod config;
pub mod control;
pub mod data_dir;
pub mod metrics;
pub mod operate;
pub mod pipeline;
pub mod processing;
pub mod readiness;
pub mod record_metadata;
pub mod reload;
pub mod server;
pub mod sigv4;
pub mod sinks;
pub mod sources;
pub mod stream_record;
pub mod streams;
pub mod wal;
