//! The write-ahead log of pushed records, one per delivery stream. A record is acknowledged only
//! after its frame is written (and, with `fsync: always`, synced). One writer thread owns the
//! files; concurrent appends queue up and share one write + fsync (group commit). Delivery reads
//! the same files back through a [`WalReader`], so recovery after a crash and normal delivery
//! are one code path. Delivered segments are deleted by [`Wal::trim`].
//!
//! Opening tells a torn tail (a write whose sync never completed: its put was never answered)
//! from damage in acknowledged data by what a torn write can leave and by the committed mark, a
//! durable record of the synced length written about once a second off the groups' path (see
//! `segment` and `committed`). A torn tail is cut with a warning; damage fails the open, naming
//! segment and offset, so only that stream stops and `spillway wal quarantine` can set it aside.
//!
//! Must not: interpret record bytes, or know about batches and sinks.

mod committed;
mod directory;
mod frame;
mod holds;
mod positions;
pub mod quarantine;
mod reader;
mod records;
mod segment;
mod tail;
mod writer;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

pub use committed::CommittedMark;
pub use directory::WalDirectory;
pub use frame::{Frame, MAX_SOURCE_FIELD_LEN, SourcePosition, decode_all as decode_frames};
pub use reader::WalReader;
pub use records::{FramedRecords, Records};
pub use segment::{Scan, ScanError, SegmentStatus};

use crate::config::FsyncPolicy;

#[derive(Debug, Clone)]
pub struct WalOptions {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub segment_bytes: u64,
    /// Undelivered bytes (frames not yet below the checkpoint) may not exceed this; an append
    /// that does not fit waits for a trim.
    pub max_bytes: u64,
    /// How long an append waits for room in a full WAL before it fails with `WalError::Full`;
    /// zero refuses at once.
    pub full_wait: Duration,
    /// The stream has a pull source: keep the shards' positions (recovered at open, saved about
    /// once a second). Push-only streams skip both, so opening never reads the backlog.
    pub track_positions: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal is full ({used} of {limit} bytes undelivered)")]
    Full { used: u64, limit: u64 },
    #[error("wal i/o error in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("wal refuses appends after an i/o error in {path} ({reason}); restart spillway")]
    Failed { path: PathBuf, reason: String },
    #[error("wal writer has stopped")]
    Closed,
    #[error("wal segment {path} is corrupt at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("wal is missing records from sequence {sequence}: no segment holds them")]
    Gap { sequence: u64 },
    #[error("a source position's shard or position is longer than {limit} bytes")]
    SourcePositionTooLong { limit: usize },
    #[error("{metadata} record metadata entries for {records} records (must be none or one per record)")]
    MetadataCount { records: usize, metadata: usize },
}

impl WalError {
    /// Full and a stopped writer pass; the client may retry. I/O and corruption need an operator.
    pub fn is_retriable(&self) -> bool {
        matches!(self, WalError::Full { .. } | WalError::Closed)
    }
}

/// What opening the WAL found on disk.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    pub bytes: u64,
    /// Sequence the next append gets.
    pub next_sequence: u64,
    /// Set when a torn tail (a write that never completed: the file ends inside its frame, or
    /// part of it reads as zeros after a power loss) was cut off: segment, offset and reason.
    pub truncated_tail: Option<String>,
    /// Frames read after the saved positions file to bring source positions up to date.
    pub position_frames_read: u64,
}

/// Handle to a stream's WAL; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    commands: std::sync::mpsc::Sender<writer::Command>,
    committed: watch::Receiver<u64>,
    disk_bytes: Arc<AtomicU64>,
    dir: PathBuf,
    /// None for [`Wal::unavailable`]: no writer was started.
    writer: Option<Arc<writer::WriterThread>>,
    /// Pulled shards' positions as durably appended.
    positions: positions::SharedPositions,
    /// The newest frames written, for [`Wal::delivery_reader`].
    tail: Arc<tail::Tail>,
    /// Other streams reading this WAL: segments are kept until they copied them too.
    holds: Arc<holds::Holds>,
    /// The checkpoint as [`Wal::trim`] last heard it: a pull source that reports delivered
    /// positions back to its service (Kafka's `commit_offsets_to_group`) follows it.
    delivered: Arc<watch::Sender<u64>>,
}

impl Wal {
    /// Open (creating if needed) the WAL in `options.dir`, cut off a torn tail, and start the
    /// writer. `delivered` is the stream's checkpoint: sequences continue from it when every
    /// segment was already trimmed. Only the last segment is checksummed (start-up stays fast
    /// whatever the backlog); damage in older segments is found by the reader. Damage in the
    /// last segment's acknowledged data (below its committed mark, or bad bytes a torn write
    /// cannot leave: see `segment`) fails the open with `WalError::Scan(ScanError::Corrupt)`
    /// naming segment and offset, and leaves every file as it was.
    pub fn open(options: WalOptions, delivered: u64) -> Result<(Wal, RecoveryReport), WalError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalError::Io { path, source }
        };
        std::fs::create_dir_all(&options.dir).map_err(io_error(&options.dir))?;
        let segments = segment::list(&options.dir).map_err(io_error(&options.dir))?;
        let mut disk_bytes = total_len(&segments)?;
        let mut truncated_tail = None;
        let next_sequence = match segments.last() {
            None => delivered,
            Some(last) => {
                let mark = committed::load(&options.dir).map_err(io_error(&committed::path(&options.dir)))?;
                let scan = segment::scan(last, segment::TailPolicy::LastSegment { mark })?;
                match scan.status {
                    segment::SegmentStatus::Ok => {}
                    segment::SegmentStatus::Damaged { offset, reason } => {
                        return Err(ScanError::Corrupt { path: last.path.clone(), offset, reason }.into());
                    }
                    segment::SegmentStatus::TornTail { offset, reason } => {
                        let file =
                            std::fs::OpenOptions::new().write(true).open(&last.path).map_err(io_error(&last.path))?;
                        file.set_len(offset).map_err(io_error(&last.path))?;
                        file.sync_all().map_err(io_error(&last.path))?;
                        let cut_bytes = scan.file_len - offset;
                        disk_bytes -= cut_bytes;
                        truncated_tail = Some(format!(
                            "{}: cut {cut_bytes} bytes at offset {offset} ({reason})",
                            last.path.display()
                        ));
                    }
                }
                scan.end_sequence.max(delivered)
            }
        };
        let (recovered_positions, position_frames_read) =
            if options.track_positions { positions::recover(&options.dir)? } else { Default::default() };
        let positions: positions::SharedPositions = Arc::new(std::sync::Mutex::new(recovered_positions));
        let holds = Arc::new(holds::Holds::load(&options.dir, delivered).map_err(io_error(&options.dir))?);
        // A reader's hold below the checkpoint keeps segments the checkpoint alone would delete.
        let trim_point = holds.trim_point();
        let report = RecoveryReport {
            segments: segments.len(),
            bytes: disk_bytes,
            next_sequence,
            truncated_tail,
            position_frames_read,
        };
        let disk_bytes = Arc::new(AtomicU64::new(disk_bytes));
        let (committed_tx, committed) = watch::channel(next_sequence);
        let tail = Arc::new(tail::Tail::default());
        let published = writer::Published {
            disk_bytes: disk_bytes.clone(),
            committed: committed_tx,
            positions: positions.clone(),
            tail: tail.clone(),
        };
        let (commands, writer) =
            writer::WriterThread::spawn(options.clone(), segments, next_sequence, trim_point, published)?;
        let writer = Some(Arc::new(writer));
        let delivered = Arc::new(watch::Sender::new(delivered));
        let wal = Wal { commands, committed, disk_bytes, dir: options.dir, writer, positions, tail, holds, delivered };
        Ok((wal, report))
    }

    /// Open a WAL in `options.dir` after removing whatever the folder held (a cache whose owner
    /// carries on from state kept elsewhere: a shared shard's or an ingest slot's), numbering
    /// from `next_sequence`. Blocking file I/O.
    pub fn open_cleared(options: WalOptions, next_sequence: u64) -> Result<Wal, String> {
        match std::fs::remove_dir_all(&options.dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("cannot clear {}: {error}", options.dir.display())),
        }
        Wal::open(options, next_sequence).map(|(wal, _)| wal).map_err(|error| error.to_string())
    }

    /// A handle for a stream whose WAL could not be opened: no writer runs, appends fail with
    /// `WalError::Closed`, nothing is committed, and the files stay as they are for an operator
    /// (`spillway wal inspect` / `quarantine`). `disk_bytes` reports what the segments hold.
    pub fn unavailable(dir: PathBuf) -> Wal {
        let held_bytes = segment::list(&dir).ok().and_then(|segments| total_len(&segments).ok()).unwrap_or(0);
        let (commands, _no_writer) = std::sync::mpsc::channel();
        let (_never_committed, committed) = watch::channel(0);
        let disk_bytes = Arc::new(AtomicU64::new(held_bytes));
        let holds = Arc::new(holds::Holds::empty(&dir));
        Wal {
            commands,
            committed,
            disk_bytes,
            dir,
            writer: None,
            positions: Arc::default(),
            tail: Arc::default(),
            holds,
            delivered: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Append one request's records as a single frame (all or nothing). Resolves once the frame
    /// is durable per the fsync policy, with the sequences the records got.
    pub async fn append(&self, arrival_ms: i64, records: impl Into<Records>) -> Result<Range<u64>, WalError> {
        self.append_frame(arrival_ms, records.into(), None, Vec::new()).await
    }

    /// Append records pulled from a shard, with the shard's position after the last of them
    /// (an empty position forgets the shard: see [`Wal::forget_position`]). Once this resolves, [`Wal::positions`] (now and after any restart) holds `source`, so the
    /// shard reader resumes after these records: never skipping, never repeating.
    pub async fn append_pulled(
        &self,
        arrival_ms: i64,
        records: Vec<Bytes>,
        source: SourcePosition,
    ) -> Result<Range<u64>, WalError> {
        self.append_pulled_with_metadata(arrival_ms, records, source, Vec::new()).await
    }

    /// [`Wal::append_pulled`] with one opaque metadata entry per record (or none), kept in the
    /// frame for later stages ([`Frame::metadata`]).
    pub async fn append_pulled_with_metadata(
        &self,
        arrival_ms: i64,
        records: Vec<Bytes>,
        source: SourcePosition,
        metadata: Vec<Bytes>,
    ) -> Result<Range<u64>, WalError> {
        if source.shard.len() > MAX_SOURCE_FIELD_LEN || source.position.len() > MAX_SOURCE_FIELD_LEN {
            return Err(WalError::SourcePositionTooLong { limit: MAX_SOURCE_FIELD_LEN });
        }
        if !metadata.is_empty() && metadata.len() != records.len() {
            return Err(WalError::MetadataCount { records: records.len(), metadata: metadata.len() });
        }
        self.append_frame(arrival_ms, records.into(), Some(source), metadata).await
    }

    async fn append_frame(
        &self,
        arrival_ms: i64,
        records: Records,
        source: Option<SourcePosition>,
        metadata: Vec<Bytes>,
    ) -> Result<Range<u64>, WalError> {
        let (reply, response) = oneshot::channel();
        let Records { records, framed } = records;
        // Records laid out in place are written as they are only in a frame without a source
        // (only `append` takes them; this keeps the writer's rule in one place).
        let framed = framed.filter(|_| source.is_none());
        let command = writer::Command::Append { arrival_ms, records, framed, source, metadata, reply };
        self.commands.send(command).map_err(|_| WalError::Closed)?;
        response.await.map_err(|_| WalError::Closed)?
    }

    /// Forget a shard that is gone for good (a deleted log file): [`Wal::positions`] no longer
    /// lists it, now and after any restart.
    pub async fn forget_position(&self, shard: String) -> Result<(), WalError> {
        let arrival_ms = chrono::Utc::now().timestamp_millis();
        self.append_pulled(arrival_ms, Vec::new(), SourcePosition { shard, position: String::new() }).await.map(|_| ())
    }

    /// Each pulled shard's position after the newest record the WAL durably holds (delivered or
    /// not): where its reader resumes.
    pub fn positions(&self) -> std::collections::BTreeMap<String, String> {
        self.positions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Release the budget of records below `delivered` (the checkpoint), waking appends that
    /// wait for room, and delete segments whose records are all below it.
    pub fn trim(&self, delivered: u64) {
        self.delivered.send_if_modified(|current| {
            let moved = delivered > *current;
            *current = (*current).max(delivered);
            moved
        });
        // Segments another stream has not copied yet stay (see `holds`).
        let trim_point = self.holds.delivered(delivered);
        // A stopped writer has nothing left to trim; the next start trims instead.
        let _ = self.commands.send(writer::Command::Trim { delivered: trim_point });
    }

    /// Bytes of records above the last trim point that were delivered already (batches of
    /// other partitions that left before an older one): they stop counting against
    /// `max_wal_mib` at once, while the trim point waits for the oldest batch. Send a smaller
    /// value before the `trim` that passes those records, so the count never dips below the truth.
    pub fn delivered_ahead(&self, bytes: u64) {
        // Records another stream still has to copy keep counting.
        let bytes = if self.holds.readers().is_empty() { bytes } else { 0 };
        let _ = self.commands.send(writer::Command::DeliveredAhead { bytes });
    }

    /// Hold this WAL for `reader` (a stream reading it) from `position` on: segments holding
    /// records at or after it are kept, whatever this stream delivered. The hold survives restarts
    /// (see `holds`). Blocking file I/O.
    pub fn hold(&self, reader: &str, position: u64) -> Result<(), WalError> {
        let trim_point = self.holds.hold(reader, position).map_err(|source| self.holds_error(source))?;
        let _ = self.commands.send(writer::Command::Trim { delivered: trim_point });
        Ok(())
    }

    /// Hold this WAL for a new `reader` from the oldest record it still holds (atomically with
    /// respect to trims, so nothing from there on is deleted meanwhile). Blocking file I/O.
    /// Returns the position.
    pub fn hold_from_trim_point(&self, reader: &str) -> Result<u64, WalError> {
        self.holds.hold_at_trim_point(reader).map_err(|source| self.holds_error(source))
    }

    /// The first sequence of the oldest segment on disk (the committed end when there is none).
    /// Blocking file I/O.
    pub fn oldest_sequence(&self) -> Result<u64, WalError> {
        let segments = segment::list(&self.dir).map_err(|source| WalError::Io { path: self.dir.clone(), source })?;
        Ok(segments.first().map_or(*self.committed.borrow(), |segment| segment.first_sequence))
    }

    /// `reader` reads this WAL no more (it was removed): drop its hold. Blocking file I/O.
    pub fn release_hold(&self, reader: &str) -> Result<(), WalError> {
        let trim_point = self.holds.release(reader).map_err(|source| self.holds_error(source))?;
        let _ = self.commands.send(writer::Command::Trim { delivered: trim_point });
        Ok(())
    }

    /// The streams holding this WAL.
    pub fn holders(&self) -> Vec<String> {
        self.holds.readers()
    }

    fn holds_error(&self, source: std::io::Error) -> WalError {
        WalError::Io { path: self.dir.join("readers"), source }
    }

    /// The checkpoint: every record below it is delivered (or in the error output). Changes with
    /// every [`Wal::trim`].
    pub fn delivered(&self) -> watch::Receiver<u64> {
        self.delivered.subscribe()
    }

    /// The sequence below which every record is durably appended; changes on every commit.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Size of the segment files, delivered parts included (the active segment and a closed
    /// one the checkpoint is still inside are kept whole).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of frames not yet delivered: what `max_bytes` limits.
    pub fn undelivered_bytes(&self) -> u64 {
        self.writer.as_ref().map_or(0, |writer| writer.undelivered_bytes())
    }

    /// A reader positioned at `from`, reading the files.
    pub fn reader(&self, from: u64) -> WalReader {
        WalReader::new(self.dir.clone(), from)
    }

    /// The stream's delivery reader, positioned at `from` (usually the checkpoint): it also takes
    /// the newest frames from memory as the writer wrote them (see `tail`). One per stream at a
    /// time: a frame it takes is gone from memory, and any other reader reads the file.
    pub fn delivery_reader(&self, from: u64) -> WalReader {
        WalReader::with_tail(self.dir.clone(), from, self.tail.clone())
    }

    /// A handle whose [`Wal::committed`] is `gate` instead of the writer's own: readers given it
    /// (a delivery loop) see records only once the gate passed them — in cluster mode with
    /// `wal.replication`, once their segment object is stored and indexed. Appends, trims and
    /// everything else are the same WAL's.
    pub fn gated(&self, gate: watch::Receiver<u64>) -> Wal {
        Wal { committed: gate, ..self.clone() }
    }

    /// Stop the writer after the queued appends, syncing the last segment.
    pub fn close(&self) {
        if let Err(error) = self.holds.persist() {
            tracing::warn!(wal = %self.dir.display(), %error, "cannot save where other streams read this wal; it keeps a few more records for them until they move on");
        }
        let _ = self.commands.send(writer::Command::Shutdown);
        if let Some(writer) = &self.writer {
            writer.join();
        }
    }
}

fn total_len(segments: &[segment::SegmentFile]) -> Result<u64, WalError> {
    let mut bytes = 0;
    for segment in segments {
        let metadata =
            std::fs::metadata(&segment.path).map_err(|source| WalError::Io { path: segment.path.clone(), source })?;
        bytes += metadata.len();
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
