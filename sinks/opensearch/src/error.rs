//! Classifying `_bulk` outcomes at the protocol edge: a whole request (connection, status) and
//! each item of a response. 429 / 5xx / 408 / connection loss / timeouts are retriable; 401, 403
//! and 404 are the cluster's state, which an operator can fix, so retriable too; other 4xx items
//! (mapping and parse errors) are the record's own fault: permanent, to the S3 backup.
//!
//! Must not: decide how long to retry (the pipeline does).

use std::time::Duration;

use spillway_sink_api::SinkError;

/// Why one `_bulk` request failed as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("cannot reach opensearch: {0}")]
    Connection(#[source] reqwest::Error),
    #[error("opensearch did not answer within the request timeout: {0}")]
    Timeout(#[source] reqwest::Error),
    #[error("the request body is too large for opensearch (413)")]
    TooLarge,
    #[error("opensearch answered {status}: {body}")]
    Status { status: u16, body: String, retry_after: Option<Duration> },
    #[error("opensearch's _bulk response cannot be read: {0}")]
    Response(String),
    #[error("cannot sign the request: {0}")]
    Signing(SinkError),
}

impl RequestError {
    /// The classified error for every record of the request.
    pub(crate) fn into_sink_error(self) -> SinkError {
        match &self {
            RequestError::Connection(_) => SinkError::retriable("OpenSearch.ConnectionFailed", self.to_string()),
            RequestError::Timeout(_) => SinkError::retriable("OpenSearch.RequestTimeout", self.to_string()),
            // Split by the sink until one record is left: that record is too large.
            RequestError::TooLarge => SinkError::permanent("413", self.to_string()),
            RequestError::Status { status, retry_after, .. } => {
                let status = *status;
                let message = self.to_string();
                let error = if is_retriable_status(status) || matches!(status, 401 | 403 | 404) {
                    SinkError::retriable(status_code(status), message)
                } else {
                    SinkError::permanent(status_code(status), message)
                };
                match retry_after {
                    Some(wait) => error.with_retry_after(*wait),
                    None => error,
                }
            }
            RequestError::Response(_) => SinkError::retriable("OpenSearch.InvalidResponse", self.to_string()),
            RequestError::Signing(_) => match self {
                RequestError::Signing(error) => error,
                _ => SinkError::retriable("OpenSearch.SigningFailed", "cannot sign the request"),
            },
        }
    }
}

/// Item and request statuses worth another attempt.
pub(crate) fn is_retriable_status(status: u16) -> bool {
    status == 429 || status == 408 || status >= 500
}

/// Firehose's failed-document `errorCode` is the HTTP status code.
pub(crate) fn status_code(status: u16) -> String {
    status.to_string()
}

/// `Retry-After` in seconds, as OpenSearch (or a proxy in front of it) may send with 429 / 503.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> SinkError {
        RequestError::Status { status, body: String::new(), retry_after: None }.into_sink_error()
    }

    #[test]
    fn statuses_are_classified_at_the_edge() {
        for retriable in [429, 408, 500, 502, 503, 401, 403, 404] {
            assert!(status(retriable).is_retriable(), "{retriable}");
        }
        for permanent in [400, 409, 422] {
            assert!(!status(permanent).is_retriable(), "{permanent}");
        }
        assert_eq!(status(400).code, "400");
        assert!(!RequestError::TooLarge.into_sink_error().is_retriable());
    }
}
