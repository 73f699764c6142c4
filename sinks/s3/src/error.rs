//! Classification of object store failures into [`SinkError`], at the protocol edge where the
//! S3 error code is understood (CONVENTIONS §9–10). A destination's own state (missing bucket,
//! denied access, bad credentials, full disk) is retriable: the operator can fix it without
//! losing data. A failure caused by the batch itself (object too large, key too long) or by a
//! request spillway can never make valid is permanent. Transport failures and 5xx are retriable.
//!
//! This module must not decide retry timing or count attempts: that belongs to the pipeline.

use std::error::Error as StdError;
use std::io;

use spillway_sink_api::SinkError;

/// What the sink was doing when the store failed, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Write,
    WriteErrorRecords,
    Healthcheck,
}

impl Operation {
    fn describe(self) -> &'static str {
        match self {
            Operation::Write => "write object",
            Operation::WriteErrorRecords => "write error output object",
            Operation::Healthcheck => "list bucket",
        }
    }
}

/// Codes whose failure is the batch's own fault: the same batch fails the same way every time.
const PERMANENT_S3_CODES: &[&str] = &["EntityTooLarge", "KeyTooLongError", "InvalidObjectName"];

/// Codes that describe the destination's state; see [`is_destination_state`].
const DESTINATION_STATE_CODES: &[&str] = &[
    "S3.NoSuchBucket",
    "S3.AccessDenied",
    "S3.InvalidAccessKeyId",
    "S3.SignatureDoesNotMatch",
    "S3.ExpiredToken",
    "S3.InvalidToken",
    "S3.AllAccessDisabled",
    "S3.AccountProblem",
    "S3.InvalidBucketName",
    "S3.PermanentRedirect",
    "S3.AuthorizationHeaderMalformed",
    "S3.StorageFull",
];

/// True when a retriable error is something an operator must fix (bucket, credentials,
/// permissions, disk space) rather than a transient fault: worth an alert, not just a retry.
pub fn is_destination_state(error: &SinkError) -> bool {
    DESTINATION_STATE_CODES.contains(&error.code.as_str())
}

/// Classify a store failure for an object key (or the listed prefix, for a healthcheck).
pub(crate) fn classify(error: object_store::Error, operation: Operation, key: &str) -> SinkError {
    let s3_code = s3_error_code(&error);
    let io_kind = io_error_kind(&error);
    let message = format!("{} `{key}` failed", operation.describe());

    let (retriable, code) = match &error {
        object_store::Error::NotFound { .. } => (true, s3_code.unwrap_or_else(|| "NoSuchBucket".to_string())),
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            (true, s3_code.unwrap_or_else(|| "AccessDenied".to_string()))
        }
        object_store::Error::Precondition { .. }
        | object_store::Error::NotModified { .. }
        | object_store::Error::AlreadyExists { .. } => (false, "PreconditionFailed".to_string()),
        object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => {
            (false, "NotSupported".to_string())
        }
        object_store::Error::InvalidPath { .. } => (false, "InvalidKey".to_string()),
        object_store::Error::UnknownConfigurationKey { .. } => (false, "InvalidConfiguration".to_string()),
        object_store::Error::JoinError { .. } => (true, "UploadTaskFailed".to_string()),
        _ => match (s3_code, io_kind) {
            (Some(code), _) => (!PERMANENT_S3_CODES.contains(&code.as_str()), code),
            (None, Some(kind)) => (true, io_code(kind).to_string()),
            (None, None) => (true, "RequestFailed".to_string()),
        },
    };
    let code = format!("S3.{code}");
    let classified = if retriable { SinkError::retriable(code, message) } else { SinkError::permanent(code, message) };
    classified.with_source(error)
}

/// Map a local filesystem failure to an S3-like code.
fn io_code(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => "AccessDenied",
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => "StorageFull",
        io::ErrorKind::NotFound => "NoSuchBucket",
        _ => "IoError",
    }
}

/// The S3 error code (`<Code>NoSuchBucket</Code>`) in the error's source chain, if the server
/// sent one. object_store keeps the response body in the error text but does not expose a typed
/// code, so the body is read from the rendered chain.
fn s3_error_code(error: &object_store::Error) -> Option<String> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(level) = current {
        let text = level.to_string();
        if let Some(code) = code_in_body(&text) {
            return Some(code);
        }
        current = level.source();
    }
    None
}

fn code_in_body(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let length = text[start..].find("</Code>")?;
    let code = &text[start..start + length];
    let well_formed = !code.is_empty() && code.len() <= 64 && code.chars().all(|c| c.is_ascii_alphanumeric());
    well_formed.then(|| code.to_string())
}

/// The kind of the first `std::io::Error` in the source chain (local filesystem failures).
fn io_error_kind(error: &object_store::Error) -> Option<io::ErrorKind> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(level) = current {
        if let Some(io_error) = level.downcast_ref::<io::Error>() {
            return Some(io_error.kind());
        }
        current = level.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use spillway_sink_api::ErrorClass;

    use super::*;

    fn boxed(text: &str) -> Box<dyn StdError + Send + Sync> {
        text.to_string().into()
    }

    const NO_SUCH_BUCKET_BODY: &str = "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";

    #[test]
    fn missing_bucket_on_write_is_retriable_no_such_bucket() {
        let error = object_store::Error::NotFound { path: "a/b".to_string(), source: boxed(NO_SUCH_BUCKET_BODY) };
        let classified = classify(error, Operation::Write, "a/b");
        assert_eq!(classified.class, ErrorClass::Retriable);
        assert_eq!(classified.code, "S3.NoSuchBucket");
        assert_eq!(classified.message, "write object `a/b` failed");
        assert!(is_destination_state(&classified));
    }

    #[test]
    fn missing_bucket_in_a_generic_list_error_is_found_in_the_body() {
        let error = object_store::Error::Generic { store: "S3", source: boxed(NO_SUCH_BUCKET_BODY) };
        let classified = classify(error, Operation::Healthcheck, "");
        assert_eq!((classified.class, classified.code.as_str()), (ErrorClass::Retriable, "S3.NoSuchBucket"));
    }

    #[test]
    fn denied_access_is_retriable() {
        let error = object_store::Error::PermissionDenied { path: "k".to_string(), source: boxed("403 Forbidden") };
        let classified = classify(error, Operation::Write, "k");
        assert_eq!((classified.class, classified.code.as_str()), (ErrorClass::Retriable, "S3.AccessDenied"));

        let body = "403 Forbidden: <Error><Code>InvalidAccessKeyId</Code></Error>";
        let error = object_store::Error::PermissionDenied { path: "k".to_string(), source: boxed(body) };
        let classified = classify(error, Operation::Write, "k");
        assert_eq!((classified.class, classified.code.as_str()), (ErrorClass::Retriable, "S3.InvalidAccessKeyId"));
    }

    #[test]
    fn oversize_objects_are_permanent() {
        let body = "400 Bad Request: <Error><Code>EntityTooLarge</Code></Error>";
        let error = object_store::Error::Generic { store: "S3", source: boxed(body) };
        let classified = classify(error, Operation::Write, "k");
        assert_eq!((classified.class, classified.code.as_str()), (ErrorClass::Permanent, "S3.EntityTooLarge"));
    }

    #[test]
    fn server_errors_and_transport_failures_are_retriable() {
        let body = "503 Service Unavailable: <Error><Code>SlowDown</Code></Error>";
        let error = object_store::Error::Generic { store: "S3", source: boxed(body) };
        let classified = classify(error, Operation::Write, "k");
        assert_eq!((classified.class, classified.code.as_str()), (ErrorClass::Retriable, "S3.SlowDown"));

        let error =
            object_store::Error::Generic { store: "S3", source: boxed("error sending request: connection refused") };
        let classified = classify(error, Operation::Write, "k");
        assert_eq!((classified.class, classified.code.as_str()), (ErrorClass::Retriable, "S3.RequestFailed"));
        assert!(!is_destination_state(&classified));
    }

    #[test]
    fn local_io_errors_map_by_kind() {
        let io_error = io::Error::new(io::ErrorKind::StorageFull, "no space left on device");
        let error = object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(io_error) };
        let classified = classify(error, Operation::Write, "k");
        assert_eq!((classified.class, classified.code.as_str()), (ErrorClass::Retriable, "S3.StorageFull"));
    }

    #[test]
    fn request_shape_errors_are_permanent() {
        let error = object_store::Error::Precondition { path: "k".to_string(), source: boxed("412") };
        assert_eq!(classify(error, Operation::Write, "k").class, ErrorClass::Permanent);
        let error = object_store::Error::NotSupported { source: boxed("no") };
        assert_eq!(classify(error, Operation::Write, "k").class, ErrorClass::Permanent);
    }
}
