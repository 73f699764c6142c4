//! Classifying one request's outcome at the protocol edge, with Firehose's error codes
//! (`HttpEndpoint.*`). Only 200 with the contract's JSON is success; 413 is permanent for that
//! request (the sink splits it); everything else (3xx, which is not followed, other statuses, a
//! body that is not the contract's JSON, timeouts, connection loss) is retriable.
//!
//! Must not: decide how long to retry (the pipeline does).

use std::time::Duration;

use spillway_sink_api::SinkError;

/// Why one request was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("cannot connect to the endpoint: {0}")]
    Connection(#[source] reqwest::Error),
    #[error("the connection to the endpoint was lost: {0}")]
    ConnectionReset(#[source] reqwest::Error),
    #[error("the endpoint did not answer within request_timeout_seconds: {0}")]
    Timeout(#[source] reqwest::Error),
    #[error("{}", response_message(*status, error_message.as_deref(), body))]
    Status { status: u16, error_message: Option<String>, body: String, retry_after: Option<Duration> },
    #[error("the endpoint's response is not the protocol's: {0}")]
    InvalidResponse(String),
    #[error("the endpoint's response is larger than 1 MiB")]
    ResponseTooLarge,
    #[error("cannot compress the request body: {0}")]
    Compression(String),
}

/// Firehose's wording: the status and the receiver's `errorMessage`, else its body.
fn response_message(status: u16, error_message: Option<&str>, body: &str) -> String {
    match error_message {
        Some(message) => message.to_string(),
        None => format!("The following response was received from the endpoint destination. {status}: {body}"),
    }
}

impl RequestError {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            RequestError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The outcome class counted in `spillway_http_endpoint_requests_total`.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            RequestError::Connection(_) | RequestError::ConnectionReset(_) => "connection",
            RequestError::Timeout(_) => "timeout",
            RequestError::Status { status: 413, .. } => "413",
            RequestError::Status { status, .. } => match status {
                200..=299 => "2xx_not_200",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            },
            RequestError::InvalidResponse(_) | RequestError::ResponseTooLarge => "invalid_response",
            RequestError::Compression(_) => "not_sent",
        }
    }

    /// The classified error for every record of the request. A 413 reaches here only for a
    /// request of one record (larger ones are split): permanent.
    pub(crate) fn into_sink_error(self) -> SinkError {
        let message = self.to_string();
        let error = match &self {
            RequestError::Connection(_) => SinkError::retriable("HttpEndpoint.ConnectionFailed", message),
            RequestError::ConnectionReset(_) => SinkError::retriable("HttpEndpoint.ConnectionReset", message),
            RequestError::Timeout(_) => SinkError::retriable("HttpEndpoint.RequestTimeout", message),
            RequestError::Status { status: 413, .. } => {
                SinkError::permanent("HttpEndpoint.DestinationException", message)
            }
            RequestError::Status { .. } => SinkError::retriable("HttpEndpoint.DestinationException", message),
            RequestError::InvalidResponse(_) => {
                SinkError::retriable("HttpEndpoint.InvalidResponseFromDestination", message)
            }
            RequestError::ResponseTooLarge => SinkError::retriable("HttpEndpoint.ResponseTooLarge", message),
            RequestError::Compression(_) => SinkError::retriable("HttpEndpoint.InternalError", message),
        };
        match self {
            RequestError::Status { retry_after: Some(wait), .. } => error.with_retry_after(wait),
            _ => error,
        }
    }
}

/// `Retry-After` in seconds (a 429 / 503 from a proxy in front of the receiver).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, error_message: Option<&str>) -> SinkError {
        RequestError::Status {
            status,
            error_message: error_message.map(str::to_string),
            body: "{}".into(),
            retry_after: None,
        }
        .into_sink_error()
    }

    #[test]
    fn only_a_single_record_413_is_permanent() {
        for retriable in [201, 302, 400, 401, 403, 404, 429, 500, 503] {
            assert!(status(retriable, None).is_retriable(), "{retriable}");
        }
        let too_large = status(413, Some("Payload too large"));
        assert!(!too_large.is_retriable());
        assert_eq!(too_large.code, "HttpEndpoint.DestinationException");
        assert_eq!(too_large.message, "Payload too large");
        assert_eq!(
            status(500, None).message,
            "The following response was received from the endpoint destination. 500: {}"
        );
        assert_eq!(
            RequestError::InvalidResponse("x".into()).into_sink_error().code,
            "HttpEndpoint.InvalidResponseFromDestination"
        );
    }
}
