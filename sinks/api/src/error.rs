//! `SinkError`: every failure a sink reports, classified where the protocol is understood.
//! The pipeline reads only the class: retriable errors are retried with backoff until the stream's
//! retry duration, permanent ones (and per-record failures of a partial write) go to the error output.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// How the pipeline must treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later: timeouts, throttling, 5xx, connection loss, a destination the operator can fix.
    Retriable,
    /// Will fail the same way every time: the batch goes to the error output.
    Permanent,
    /// Some records failed, the rest were written; `failures` says which.
    Partial,
}

/// A record the sink could not write in an otherwise accepted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    /// Position of the record in the batch (the order of `Batch::sequences` and of the payload).
    pub index: usize,
    pub retriable: bool,
    /// Firehose-style error code, e.g. `OpenSearch.MapperParsingException`.
    pub code: String,
    pub message: String,
}

#[derive(Debug)]
pub struct SinkError {
    pub class: ErrorClass,
    /// Error code written to the error output, e.g. `S3.NoSuchBucket`.
    pub code: String,
    pub message: String,
    /// The destination asked us to wait this long before retrying.
    pub retry_after: Option<Duration>,
    pub failures: Vec<RecordFailure>,
    pub source: Option<BoxError>,
}

impl SinkError {
    pub fn retriable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Retriable, code, message)
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, code, message)
    }

    pub fn partial(failures: Vec<RecordFailure>) -> Self {
        let message = format!("{} records of the batch failed", failures.len());
        let mut error = Self::new(ErrorClass::Partial, "PartialFailure", message);
        error.failures = failures;
        error
    }

    fn new(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            failures: Vec::new(),
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    pub fn is_retriable(&self) -> bool {
        self.class == ErrorClass::Retriable
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for SinkError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|source| source as &(dyn StdError + 'static))
    }
}

/// An error and its sources, `: `-joined, each said once ("error sending request: connection
/// refused"): what logs and error records show of an error from a client library, whose own
/// `Display` often leaves the cause out.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
