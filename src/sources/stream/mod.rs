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
    #[error("the windowed sql transform cannot run: {0}")]
    Window(String),
}

/// What one reader task uses.
struct Reader {
    stream: String,
    config: StreamSourceConfig,
    /// A windowed `sql` transform the reader runs (the stream's first transform).
    window: Option<crate::processing::sql::SqlConfig>,
    wal: Wal,
    wals: Arc<WalDirectory>,
    metrics: Arc<StreamMetrics>,
}

/// Copy the upstream's records until `stop` turns true, waiting for the upstream whenever it is
/// not running.
pub(crate) async fn run(
    stream: String,
    config: StreamSourceConfig,
    window: Option<crate::processing::sql::SqlConfig>,
    wal: Wal,
    wals: Arc<WalDirectory>,
    metrics: Arc<StreamMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let reader = Reader { stream, config, window, wal, wals, metrics };
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
        if let Some(window) = &self.window {
            return self.aggregate(window, upstream, stop).await;
        }
        let shard = self.config.shard();
        let mut position = match self.wal.positions().get(&shard) {
            Some(saved) => {
                let position = saved.parse::<u64>().map_err(|_| CopyError::BadPosition(saved.clone()))?;
                self.hold(upstream, position).await?;
                position
            }
            None => self.first_position(upstream).await?,
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

    /// Where a stream reading for the first time starts, held.
    async fn first_position(&self, upstream: &Wal) -> Result<u64, CopyError> {
        match self.config.start {
            StreamStart::TrimHorizon => {
                let (upstream, stream) = (upstream.clone(), self.stream.clone());
                tokio::task::spawn_blocking(move || upstream.hold_from_trim_point(&stream))
                    .await
                    .map_err(|join| CopyError::Join(join.to_string()))?
                    .map_err(CopyError::Hold)
            }
            StreamStart::Latest => {
                let position = *upstream.committed().borrow();
                self.hold(upstream, position).await?;
                Ok(position)
            }
        }
    }

    /// Run the windowed query over the upstream's records: the windows' rows (and the records
    /// the stage refuses) are appended with the stage's position, from which a restart rebuilds
    /// the open windows (see `processing::sql::window`). The upstream is held from the oldest
    /// record of an open window.
    #[cfg(feature = "transform-sql")]
    async fn aggregate(
        &self,
        window: &crate::processing::sql::SqlConfig,
        upstream: &Wal,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), CopyError> {
        use crate::processing::sql::window::{WindowOutput, WindowPosition, WindowStage};
        let shard = self.config.shard();
        let mut stage = WindowStage::build(window).map_err(CopyError::Window)?;
        let saved = self.wal.positions().get(&shard).cloned();
        let (from, replay_until) = match saved {
            Some(saved) => {
                let position = WindowPosition::decode(&saved).ok_or_else(|| CopyError::BadPosition(saved.clone()))?;
                stage.restore(&position);
                self.hold(upstream, position.hold).await?;
                (position.hold, position.consumed)
            }
            None => (self.first_position(upstream).await?, 0),
        };
        let shard_metrics = self.metrics.source.shard(&shard);
        self.metrics.source.set_active_shards(1);
        let mut committed = upstream.committed();
        let mut upstream_reader = upstream.reader(from);
        let mut consumed = from;
        let mut stage = Some(stage);
        // The newest time and the clock when the last records were fed: while the upstream is
        // idle, the watermark moves on with the clock.
        let mut last_fed = (stage.as_ref().map_or(i64::MIN, WindowStage::max_time), tokio::time::Instant::now());
        let mut held = from;
        let mut reported_late = 0;
        loop {
            let end = *committed.borrow_and_update();
            let mut outputs = Vec::new();
            if consumed < end {
                let mut taken = stage.take().ok_or_else(|| CopyError::Join("window stage lost".into()))?;
                let (read, returned, taken, fed) = tokio::task::spawn_blocking(move || {
                    let read = upstream_reader.read(end, READ_BYTES);
                    let mut fed = Vec::new();
                    let mut frames_end = None;
                    if let Ok(frames) = &read {
                        for frame in frames {
                            fed.extend(taken.feed(
                                frame.first_sequence,
                                frame.arrival_ms,
                                &frame.records,
                                replay_until,
                            ));
                            frames_end = Some(frame.end_sequence());
                        }
                    }
                    (read.map(|_| frames_end), upstream_reader, taken, fed)
                })
                .await
                .map_err(|join| CopyError::Join(join.to_string()))?;
                upstream_reader = returned;
                stage = Some(taken);
                match read {
                    Ok(Some(frames_end)) => {
                        let records = frames_end.saturating_sub(consumed);
                        consumed = frames_end;
                        shard_metrics.records.inc_by(records);
                        self.metrics.incoming_records.inc_by(records);
                    }
                    Ok(None) => {}
                    Err(error) => return Err(CopyError::Read(error)),
                }
                last_fed = (stage.as_ref().map_or(i64::MIN, WindowStage::max_time), tokio::time::Instant::now());
                outputs = fed;
            } else {
                tokio::select! {
                    changed = committed.changed() => if changed.is_err() { return Err(CopyError::UpstreamGone) },
                    _ = stop.changed() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if let Some(stage) = stage.as_mut() {
                            let idle_ms = last_fed.1.elapsed().as_millis() as i64;
                            outputs = stage.advance_idle(last_fed.0, idle_ms);
                        }
                    }
                }
            }
            if let Some(current) = stage.as_ref() {
                self.metrics.sql_late_records.inc_by(current.late_records - reported_late);
                reported_late = current.late_records;
                self.metrics.sql_open_windows.set(current.open_windows() as i64);
            }
            if outputs.is_empty() {
                continue;
            }
            let Some(current) = stage.as_ref() else { continue };
            let position = current.position(consumed);
            let mut records = Vec::new();
            let mut metadata = Vec::new();
            let mut rows = 0u64;
            for output in outputs {
                match output {
                    WindowOutput::Rows { rows: window_rows, .. } => {
                        rows += window_rows.len() as u64;
                        for row in window_rows {
                            records.push(row);
                            metadata.push(bytes::Bytes::new());
                        }
                    }
                    WindowOutput::Failed { data, code, message, .. } => {
                        records.push(data);
                        metadata.push(crate::record_metadata::failed_record(code, &message));
                    }
                    WindowOutput::Dropped => {}
                }
            }
            if metadata.iter().all(bytes::Bytes::is_empty) {
                metadata.clear();
            }
            let source = SourcePosition { shard: shard.clone(), position: position.encode() };
            if !self.append_with_retry(None, records, metadata, source, stop).await {
                return Ok(());
            }
            self.metrics.sql_window_rows.inc_by(rows);
            self.metrics.sql_open_windows.set(current.open_windows() as i64);
            tracing::debug!(stream = %self.stream, rows, open_windows = current.open_windows(), "window rows appended");
            if position.hold != held {
                self.hold(upstream, position.hold).await?;
                held = position.hold;
            }
        }
    }

    #[cfg(not(feature = "transform-sql"))]
    async fn aggregate(
        &self,
        _window: &crate::processing::sql::SqlConfig,
        _upstream: &Wal,
        _stop: &mut watch::Receiver<bool>,
    ) -> Result<(), CopyError> {
        Err(CopyError::Window(crate::processing::sql::FEATURE_MISSING.into()))
    }

    /// Append records with `source` as the frame's position, arrived at `arrival_ms` (now when
    /// None); retried until it succeeds (a full WAL means waiting). False when stopping.
    async fn append_with_retry(
        &self,
        arrival_ms: Option<i64>,
        records: Vec<bytes::Bytes>,
        metadata: Vec<bytes::Bytes>,
        source: SourcePosition,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let arrival_ms = arrival_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            match self
                .wal
                .append_pulled_with_metadata(arrival_ms, records.clone(), source.clone(), metadata.clone())
                .await
            {
                Ok(_) => return true,
                Err(error @ WalError::Full { .. }) => {
                    tracing::debug!(stream = %self.stream, %error, "wal full; the stream reader waits");
                }
                Err(error) => {
                    tracing::error!(stream = %self.stream, %error, "cannot append to the wal; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return false,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Append one upstream frame (its arrival time kept) with the upstream position after it;
    /// retried until it succeeds. False when stopping.
    async fn append(&self, frame: Frame, shard: &str, end: u64, stop: &mut watch::Receiver<bool>) -> bool {
        let source = SourcePosition { shard: shard.to_string(), position: end.to_string() };
        self.append_with_retry(Some(frame.arrival_ms), frame.records, frame.metadata, source, stop).await
    }

    async fn hold(&self, upstream: &Wal, position: u64) -> Result<(), CopyError> {
        let (upstream, stream) = (upstream.clone(), self.stream.clone());
        tokio::task::spawn_blocking(move || upstream.hold(&stream, position))
            .await
            .map_err(|join| CopyError::Join(join.to_string()))?
            .map_err(CopyError::Hold)
    }
}
