//! The client side of the Firehose API, used by `spillway put` and `spillway bench`: an
//! `aws-sdk-firehose` client pointed at a spillway endpoint, and batching of records into
//! `PutRecordBatch` calls within Firehose's limits (500 records, 4 MiB).

pub mod bench;
pub mod codec_bench;
pub mod put;
pub mod status;

use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};

use crate::sources::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS};

/// A Firehose client for `endpoint`. Uses the standard AWS credential chain when it is configured
/// (spillway checks signatures only with `server.auth`; a real Firehose always does), else fixed local credentials.
pub async fn firehose_client(endpoint: &str, region: &str) -> Client {
    let has_credentials = std::env::var_os("AWS_ACCESS_KEY_ID").is_some() || std::env::var_os("AWS_PROFILE").is_some();
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).endpoint_url(endpoint).region(Region::new(region.to_string()));
    if !has_credentials {
        loader = loader.credentials_provider(Credentials::new("spillway", "spillway", None, None, "spillway-local"));
    }
    Client::new(&loader.load().await)
}

/// An error and its causes on one line, each said once: many errors already print their source
/// in their own message ("cannot listen on …: Address already in use"), and repeating the chain
/// after it would say everything twice.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let said = current.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = current.source();
    }
    text
}

/// Split records into `PutRecordBatch`-sized groups, keeping order.
pub fn batches(records: Vec<bytes::Bytes>) -> Vec<Vec<bytes::Bytes>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0;
    for record in records {
        if !current.is_empty() && (current.len() == MAX_BATCH_RECORDS || current_bytes + record.len() > MAX_BATCH_BYTES)
        {
            batches.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += record.len();
        current.push(record);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn batches_respect_record_and_byte_limits() {
        let small: Vec<Bytes> = (0..1200).map(|_| Bytes::from_static(b"x")).collect();
        let sizes: Vec<usize> = batches(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![500, 500, 200]);

        let big: Vec<Bytes> = (0..9).map(|_| Bytes::from(vec![0u8; 1_000_000])).collect();
        let sizes: Vec<usize> = batches(big).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![4, 4, 1]);
    }

    #[test]
    fn error_text_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 127.0.0.1:1: {source}")]
        struct Listen {
            source: std::io::Error,
        }
        #[derive(Debug, thiserror::Error)]
        #[error("cannot start")]
        struct Start {
            #[source]
            source: std::io::Error,
        }
        let in_use = || std::io::Error::from_raw_os_error(98);
        let text = error_text(&Listen { source: in_use() });
        assert_eq!(text.matches("Address already in use").count(), 1, "{text}");
        let text = error_text(&Start { source: in_use() });
        assert!(text.starts_with("cannot start: Address already in use"), "{text}");
    }
}
