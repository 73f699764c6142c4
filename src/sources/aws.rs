//! The AWS client settings every AWS pull source shares: the standard credential chain
//! (environment, profile, IMDS, `credential_process`), an optional region, and bounded timeouts.
//! Each source builds its own SDK client from these and sets its `endpoint`.
//!
//! Must not: hold credentials itself or read any file the SDK does not.

use std::time::Duration;

/// The SDK's shared configuration: the standard chain, the region if one is given.
pub(crate) async fn shared_config(region: Option<String>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    loader.load().await
}

/// Connect within 5 s, each attempt within 30 s: a hung endpoint never stalls a reader.
pub(crate) fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .build()
}
