//! spillway's HTTP endpoint sink: Firehose's HTTP endpoint destination, speaking its delivery
//! protocol exactly, so any receiver of that protocol (Datadog, New Relic, Dynatrace, Honeycomb,
//! Coralogix, Vector's `aws_kinesis_firehose` source, the OpenTelemetry Collector's
//! `awsfirehosereceiver`, …) takes spillway in Firehose's place.
//!
//! Module map:
//! - [`config`]: the YAML block and its pure validation.
//! - [`descriptor`]: the sink as the registry sees it (`SinkDescriptor`): Firehose's ranges and
//!   the `HttpEndpointDestinationDescription` (never the access key).
//! - [`encode`]: the encoder an open batch is held in: the `records` arrays of its requests
//!   (≤ 10,000 records and `max_body_mib` each), base64 as records arrive.
//! - [`sink`]: one POST per request, the response read as the contract says; 413 splits.
//! - [`error`]: classification of responses and transport failures, Firehose's error codes.
//! - [`stats`]: request counters by outcome, for `/metrics` and the status page.

pub mod config;
pub mod descriptor;
pub mod encode;
pub mod error;
pub mod sink;
pub mod stats;

use std::sync::Arc;

pub use config::{ContentEncoding, HttpEndpointSinkConfig};
pub use encode::RequestEncoderFactory;
pub use sink::HttpEndpointSink;
use spillway_sink_api::SinkError;
pub use stats::RequestStats;

/// `!{firehose:error-output-type}` of records the endpoint did not take: Firehose's folder name.
pub const FAILED_OUTPUT_TYPE: &str = "http-endpoint-failed";

/// The sink, its encoders and its backup, built for one stream.
pub struct BuiltHttpEndpoint {
    pub sink: Arc<HttpEndpointSink>,
    pub encoders: Arc<RequestEncoderFactory>,
    pub backup: Arc<spillway_sink_s3::S3Sink>,
}

impl HttpEndpointSinkConfig {
    /// Build the http client and the backup sink (`version_id` names backup objects as the
    /// stream's S3 objects are named; `stream_arn` is sent as `X-Amz-Firehose-Source-Arn`).
    /// Does not contact the endpoint.
    pub fn build(&self, stream: &str, version_id: u64, stream_arn: &str) -> Result<BuiltHttpEndpoint, SinkError> {
        let problems = self.validate();
        if !problems.is_empty() {
            let listed: Vec<String> =
                problems.iter().map(|problem| format!("{}: {}", problem.field, problem.message)).collect();
            return Err(SinkError::permanent("HttpEndpoint.InvalidConfig", listed.join("; ")));
        }
        let backup = Arc::new(self.backup.sink.build_versioned(stream, version_id)?);
        let all_records = (self.backup.mode == spillway_sink_s3::BackupMode::All).then(|| backup.clone());
        let sink = HttpEndpointSink::new(self, stream_arn, all_records)?;
        Ok(BuiltHttpEndpoint {
            sink: Arc::new(sink),
            encoders: Arc::new(RequestEncoderFactory::new((self.max_body_mib << 20) as usize)),
            backup,
        })
    }
}
