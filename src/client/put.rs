//! `spillway put`: send the lines of files (or stdin) to a delivery stream with `PutRecordBatch`,
//! resending only the entries that failed, with a progress bar and a summary.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_firehose::Client;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};

use super::batches;
use crate::pipeline::retry::backoff;

pub struct PutOptions {
    pub stream: String,
    pub endpoint: String,
    pub region: String,
    pub files: Vec<PathBuf>,
    /// Keep each line's trailing newline in the record (objects stay newline-delimited).
    pub keep_newlines: bool,
    pub max_attempts: u32,
}

#[derive(Debug, Default)]
pub struct PutSummary {
    pub records: u64,
    pub bytes: u64,
    pub calls: u64,
    pub resent_records: u64,
    pub failed_records: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Api(String),
}

/// Read every record first: a put is usually a file of logs, and the total drives the progress bar.
fn read_records(files: &[PathBuf], keep_newlines: bool) -> Result<Vec<Bytes>, PutError> {
    let mut records = Vec::new();
    for path in files {
        let read_error = |source| PutError::Read { path: path.clone(), source };
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(read_error)?))
        };
        for line in reader.split(b'\n') {
            let mut line = line.map_err(read_error)?;
            if line.is_empty() {
                continue;
            }
            if keep_newlines {
                line.push(b'\n');
            }
            records.push(Bytes::from(line));
        }
    }
    Ok(records)
}

pub async fn put(options: PutOptions) -> Result<PutSummary, PutError> {
    let records = read_records(&options.files, options.keep_newlines)?;
    let client = super::firehose_client(&options.endpoint, &options.region).await;
    let total_bytes: u64 = records.iter().map(|record| record.len() as u64).sum();
    let progress = ProgressBar::new(total_bytes);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut summary = PutSummary { records: records.len() as u64, bytes: total_bytes, ..PutSummary::default() };
    for batch in batches(records) {
        let outcome = send_with_retries(&client, &options, batch, &mut summary).await;
        match outcome {
            Ok(sent_bytes) => progress.inc(sent_bytes),
            Err(error) => {
                progress.abandon_with_message("failed");
                return Err(error);
            }
        }
    }
    progress.finish_with_message("done");
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Whether a failed call is worth another attempt, and what to tell the user: the service's
/// error code and message, or why the endpoint could not be reached (never the SDK's debug dump).
fn classify<E, R>(error: &aws_sdk_firehose::error::SdkError<E, R>, endpoint: &str) -> (bool, String)
where
    E: aws_sdk_firehose::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_sdk_firehose::error::SdkError;
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown error");
            let message = service.err().message().unwrap_or_default();
            let retriable = matches!(code, "ServiceUnavailableException" | "InternalFailure" | "ThrottlingException");
            (retriable, format!("{code}: {message}"))
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            (true, format!("cannot reach {endpoint}: {}", super::error_text(error)))
        }
        other => (false, super::error_text(other)),
    }
}

/// Send one batch; resend only the failed entries until none fail or attempts run out.
async fn send_with_retries(
    client: &Client,
    options: &PutOptions,
    mut pending: Vec<Bytes>,
    summary: &mut PutSummary,
) -> Result<u64, PutError> {
    let mut sent_bytes = 0;
    for attempt in 1..=options.max_attempts {
        let entries: Vec<Record> =
            pending.iter().filter_map(|data| Record::builder().data(Blob::new(data.to_vec())).build().ok()).collect();
        summary.calls += 1;
        let response =
            client.put_record_batch().delivery_stream_name(&options.stream).set_records(Some(entries)).send().await;
        let output = match response {
            Ok(output) => output,
            Err(error) => {
                let (retriable, error) = classify(&error, &options.endpoint);
                if !retriable || attempt == options.max_attempts {
                    return Err(PutError::Api(error));
                }
                tokio::time::sleep(backoff(attempt, None)).await;
                continue;
            }
        };
        let mut failed = Vec::new();
        for (entry, data) in output.request_responses().iter().zip(pending) {
            if entry.error_code().is_some() {
                failed.push(data);
            } else {
                sent_bytes += data.len() as u64;
            }
        }
        if failed.is_empty() {
            return Ok(sent_bytes);
        }
        summary.resent_records += failed.len() as u64;
        pending = failed;
        tokio::time::sleep(backoff(attempt, None)).await;
    }
    summary.failed_records += pending.len() as u64;
    Err(PutError::Api(format!("{} records still failing after {} attempts", pending.len(), options.max_attempts)))
}
