//! The `stream` source: a stream that reads another stream of the same process, as a second
//! consumer of that stream's WAL (its own position, its own processing and delivery), so that
//! one intake feeds, say, a raw archive and a filtered or aggregated table.
//!
//! The reader copies the upstream's frames (records, arrival times, the source's per-record
//! metadata) into this stream's WAL with the upstream sequence after them as the frame's
//! position, and resumes from that position after any restart: never skipping, never repeating.
//! After each durable copy it moves its hold on the upstream WAL (`Wal::hold`), below which the
//! upstream may delete segments; so the upstream keeps what this stream has not copied yet, and a
//! reader that stops holds the upstream's WAL until `limits.max_wal_mib` throttles its intake.
//!
//! Must not: deliver, or let the upstream trim anything it has not durably copied.

mod source;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::metrics::StreamMetrics;
use crate::wal::{Frame, SourcePosition, Wal, WalDirectory, WalError};

/// The `source:` block of a stream whose `type` is `stream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSourceConfig {
    /// The stream to read: another stream of the YAML file.
    pub stream: String,
    /// Where a stream reading for the first time starts: `trim_horizon` (default: the oldest
    /// record the upstream's WAL still holds, i.e. everything it has not delivered yet) or
    /// `latest` (records appended from now on).
    #[serde(default)]
    pub start: StreamStart,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStart {
    #[default]
    TrimHorizon,
    Latest,
}

impl StreamSourceConfig {
    /// The position's shard name in this stream's WAL.
    fn shard(&self) -> String {
        format!("stream:{}", self.stream)
    }
}

/// Most record bytes copied per upstream read.
const READ_BYTES: usize = 4 << 20;
/// How long the reader waits before looking for an upstream that is not running, or retrying
/// after an error.
const RETRY: Duration = Duration::from_secs(1);

/// Why one copying run ended.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("the upstream stream stopped (removed or shutting down)")]
    UpstreamGone,
    #[error("this stream's position in the upstream is unreadable: {0:?}")]
    BadPosition(String),
    #[error("reading the upstream's wal: {0}")]
    Read(WalError),
    #[error("holding the upstream's wal: {0}")]
    Hold(WalError),
    #[error("a blocking task failed: {0}")]
    Join(String),
}

/// What one reader task uses.
struct Reader {
    stream: String,
    config: StreamSourceConfig,
    wal: Wal,
    wals: Arc<WalDirectory>,
    metrics: Arc<StreamMetrics>,
}

/// Copy the upstream's records until `stop` turns true, waiting for the upstream whenever it is
/// not running.
pub(crate) async fn run(
    stream: String,
    config: StreamSourceConfig,
    wal: Wal,
    wals: Arc<WalDirectory>,
    metrics: Arc<StreamMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let reader = Reader { stream, config, wal, wals, metrics };
    let mut waiting_logged = false;
    loop {
        if *stop.borrow() {
            return;
        }
        match reader.wals.get(&reader.config.stream) {
            None => {
                if !waiting_logged {
                    tracing::info!(stream = %reader.stream, upstream = %reader.config.stream, "waiting for the stream it reads to start");
                    waiting_logged = true;
                }
            }
            Some(upstream) => {
                waiting_logged = false;
                match reader.copy(&upstream, &mut stop).await {
                    Ok(()) => return,
                    Err(CopyError::UpstreamGone) => {
                        tracing::info!(stream = %reader.stream, upstream = %reader.config.stream, "the stream it reads stopped; waiting for it")
                    }
                    Err(error) => {
                        tracing::error!(stream = %reader.stream, upstream = %reader.config.stream, %error, "copying from the stream it reads failed; retrying")
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Reader {
    /// Copy from `upstream` until stopped (`Ok`) or until something fails.
    async fn copy(&self, upstream: &Wal, stop: &mut watch::Receiver<bool>) -> Result<(), CopyError> {
        let shard = self.config.shard();
        let saved = self.wal.positions().get(&shard).cloned();
        let mut position = match (saved, self.config.start) {
            (Some(saved), _) => {
                let position = saved.parse::<u64>().map_err(|_| CopyError::BadPosition(saved.clone()))?;
                self.hold(upstream, position).await?;
                position
            }
            (None, StreamStart::TrimHorizon) => {
                let (upstream, stream) = (upstream.clone(), self.stream.clone());
                tokio::task::spawn_blocking(move || upstream.hold_from_trim_point(&stream))
                    .await
                    .map_err(|join| CopyError::Join(join.to_string()))?
                    .map_err(CopyError::Hold)?
            }
            (None, StreamStart::Latest) => {
                let position = *upstream.committed().borrow();
                self.hold(upstream, position).await?;
                position
            }
        };
        let shard_metrics = self.metrics.source.shard(&shard);
        self.metrics.source.set_active_shards(1);
        let mut committed = upstream.committed();
        let mut upstream_reader = upstream.reader(position);
        loop {
            let end = *committed.borrow_and_update();
            if position < end {
                let (read, returned) = tokio::task::spawn_blocking(move || {
                    let read = upstream_reader.read(end, READ_BYTES);
                    (read, upstream_reader)
                })
                .await
                .map_err(|join| CopyError::Join(join.to_string()))?;
                upstream_reader = returned;
                let frames = match read {
                    Ok(frames) => frames,
                    Err(WalError::Gap { sequence }) => {
                        // Only when the upstream deleted records before this stream held them
                        // (its hold file was removed by hand, or it never held them).
                        let oldest = upstream.oldest_sequence().map_err(CopyError::Read)?.max(sequence);
                        tracing::error!(stream = %self.stream, upstream = %self.config.stream, first_missing = sequence, continuing_at = oldest,
                            "the stream it reads no longer holds records this stream had not copied; they are skipped");
                        upstream_reader = upstream.reader(oldest);
                        position = oldest;
                        continue;
                    }
                    Err(error) => return Err(CopyError::Read(error)),
                };
                for frame in frames {
                    let end = frame.end_sequence();
                    let (records, bytes) =
                        (frame.records.len() as u64, frame.records.iter().map(|record| record.len() as u64).sum());
                    if records > 0 {
                        if !self.append(frame, &shard, end, stop).await {
                            return Ok(());
                        }
                        position = end;
                        shard_metrics.records.inc_by(records);
                        shard_metrics.bytes.inc_by(bytes);
                        self.metrics.incoming_records.inc_by(records);
                        self.metrics.incoming_bytes.inc_by(bytes);
                    }
                }
                // Only what this stream's WAL durably holds: its position after a restart.
                self.hold(upstream, position).await?;
                continue;
            }
            tokio::select! {
                changed = committed.changed() => if changed.is_err() { return Err(CopyError::UpstreamGone) },
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// Append one upstream frame with the upstream position after it; retried until it succeeds
    /// (a full WAL means waiting). False when stopping.
    async fn append(&self, frame: Frame, shard: &str, end: u64, stop: &mut watch::Receiver<bool>) -> bool {
        let source = SourcePosition { shard: shard.to_string(), position: end.to_string() };
        let mut backoff = Duration::from_millis(100);
        loop {
            let appended = self
                .wal
                .append_pulled_with_metadata(
                    frame.arrival_ms,
                    frame.records.clone(),
                    source.clone(),
                    frame.metadata.clone(),
                )
                .await;
            match appended {
                Ok(_) => return true,
                Err(error @ WalError::Full { .. }) => {
                    tracing::debug!(stream = %self.stream, %error, "wal full; the stream reader waits");
                }
                Err(error) => {
                    tracing::error!(stream = %self.stream, %error, "cannot append copied records to the wal; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return false,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn hold(&self, upstream: &Wal, position: u64) -> Result<(), CopyError> {
        let (upstream, stream) = (upstream.clone(), self.stream.clone());
        tokio::task::spawn_blocking(move || upstream.hold(&stream, position))
            .await
            .map_err(|join| CopyError::Join(join.to_string()))?
            .map_err(CopyError::Hold)
    }
}
