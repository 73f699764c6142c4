//! The WAL writer thread: drains queued appends, writes them as consecutive frames with one
//! `writev` (records a source laid out in place are written from its buffer), syncs once per
//! group (`fsync: always`) or on a timer (`interval`), then acknowledges. Written frames also go
//! to the tail the delivery reader takes them from. It runs on a dedicated OS thread because
//! every step is blocking file I/O.
//!
//! The committed mark (`committed`) records how far the active segment is synced, so recovery
//! can tell damage in acknowledged data from a torn write. It is written at open, at a clean
//! shutdown, and while the synced length moves at most once per `MARK_INTERVAL`, after the
//! group's acknowledgements were sent: no answer waits for it, and a group that arrives while it
//! is written waits for one small `fdatasync` at most (one a second, never one per group).
//!
//! It also owns the WAL's budget: only *undelivered* bytes count against `max_bytes`. An append
//! that does not fit waits (first come, first served) until a trim makes room or `full_wait`
//! passes. A segment that is mostly delivered is closed early, so a trim can delete it even when
//! `max_bytes` is below the segment size. After a failed fsync the WAL refuses every append until
//! a restart: the kernel may have dropped the dirty pages, and a retried fsync would lie.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::committed::{self, CommittedMark, MarkFile};
use super::frame::SourcePosition;
use super::positions::{self, SharedPositions};
use super::segment::{self, ReadOutcome, SegmentFile};
use super::tail::{Tail, TailFrame};
use super::{Frame, WalError, WalOptions, frame};
use crate::config::FsyncPolicy;

/// Most bytes written in one group; keeps one slow group from delaying every acknowledgement.
const MAX_GROUP_BYTES: usize = 32 << 20;
/// Capacity of the group buffer kept between groups.
const KEEP_GROUP_BUFFER_BYTES: usize = 4 << 20;
/// Most commands taken off the channel before the queued appends are written.
const MAX_COMMANDS_PER_ROUND: usize = 4096;
/// A mostly delivered active segment is closed early once this many of its bytes are delivered
/// (or an eighth of `max_bytes`, if smaller), so trimming can delete it.
const RECLAIM_MIN_BYTES: u64 = 4 << 20;
/// A write group joins the previous backlog entry while that holds less than
/// `max_bytes / BACKLOG_ENTRIES_PER_BUDGET`: the bookkeeping stays about this many entries
/// whatever the put sizes, and a trim releases room in steps of at most that share.
const BACKLOG_ENTRIES_PER_BUDGET: u64 = 1024;

/// Where an append's outcome is sent: the sequences its records got, or why it failed.
pub type AppendReply = oneshot::Sender<Result<Range<u64>, WalError>>;

pub enum Command {
    Append {
        arrival_ms: i64,
        records: Vec<Bytes>,
        /// The records laid out as the frame holds them (`records` are slices of it), written
        /// as they are; only in a frame without a source.
        framed: Option<Bytes>,
        source: Option<SourcePosition>,
        /// Per-record metadata of a pulled source: empty, or one entry per record.
        metadata: Vec<Bytes>,
        reply: AppendReply,
    },
    Trim {
        delivered: u64,
    },
    /// Bytes of records above the trim point that were delivered already (batches of other
    /// partitions that left before an older one): they stop counting against `max_bytes`.
    DeliveredAhead {
        bytes: u64,
    },
    Shutdown,
}

pub struct WriterThread {
    handle: Mutex<Option<JoinHandle<()>>>,
    undelivered_bytes: Arc<AtomicU64>,
}

/// What the writer keeps up to date for the [`super::Wal`] handles.
pub struct Published {
    pub disk_bytes: Arc<AtomicU64>,
    pub committed: watch::Sender<u64>,
    /// Pulled shards' positions, as synced.
    pub positions: SharedPositions,
    /// The newest frames written, for the delivery reader.
    pub tail: Arc<Tail>,
}

impl WriterThread {
    /// Start the writer on the segments `Wal::open` found (torn tail already cut). `delivered`
    /// is the checkpoint: bytes below it do not count against `max_bytes`.
    pub fn spawn(
        options: WalOptions,
        segments: Vec<SegmentFile>,
        next_sequence: u64,
        delivered: u64,
        published: Published,
    ) -> Result<(Sender<Command>, WriterThread), WalError> {
        let mut state = Writer::open(options, segments, next_sequence, delivered, published)?;
        let undelivered_bytes = state.backlog.shared_total.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("spillway-wal".into())
            .spawn(move || state.run(receiver))
            .map_err(|source| WalError::Io { path: "wal writer thread".into(), source })?;
        Ok((sender, WriterThread { handle: Mutex::new(Some(handle)), undelivered_bytes }))
    }

    /// Bytes of frames not yet delivered: what `max_bytes` limits.
    pub fn undelivered_bytes(&self) -> u64 {
        self.undelivered_bytes.load(Ordering::Relaxed)
    }

    pub fn join(&self) {
        let handle = self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// An append waiting for its group, or for room in a full WAL.
struct QueuedAppend {
    arrival_ms: i64,
    records: Vec<Bytes>,
    framed: Option<Bytes>,
    source: Option<SourcePosition>,
    metadata: Vec<Bytes>,
    reply: AppendReply,
    frame_len: u64,
    /// When a full WAL answers `Full` instead of waiting longer.
    give_up_at: Instant,
}

/// Undelivered bytes as (end sequence, bytes) entries, oldest first: an entry is released when
/// the checkpoint reaches its end. Entries never span two segments.
struct Backlog {
    entries: VecDeque<BacklogEntry>,
    total: u64,
    /// Delivered bytes inside `total` (records of batches that left before an older one).
    delivered_ahead: u64,
    /// `total`, readable by the metrics probe.
    shared_total: Arc<AtomicU64>,
    /// Undelivered bytes in the active segment; the rest of it is delivered and reclaimable.
    active_bytes: u64,
    merge_below: u64,
}

struct BacklogEntry {
    end_sequence: u64,
    bytes: u64,
    in_active_segment: bool,
}

impl Backlog {
    fn new(max_bytes: u64) -> Backlog {
        Backlog {
            entries: VecDeque::new(),
            total: 0,
            delivered_ahead: 0,
            shared_total: Arc::new(AtomicU64::new(0)),
            active_bytes: 0,
            merge_below: max_bytes / BACKLOG_ENTRIES_PER_BUDGET,
        }
    }

    /// Bytes of a closed segment (found on open) whose records end at `end_sequence`.
    fn add_closed(&mut self, end_sequence: u64, bytes: u64) {
        self.entries.push_back(BacklogEntry { end_sequence, bytes, in_active_segment: false });
        self.total += bytes;
        self.publish();
    }

    /// Bytes written to the active segment, holding records below `end_sequence`.
    fn add_active(&mut self, end_sequence: u64, bytes: u64) {
        self.total += bytes;
        self.active_bytes += bytes;
        match self.entries.back_mut() {
            Some(last) if last.in_active_segment && last.bytes < self.merge_below => {
                last.end_sequence = end_sequence;
                last.bytes += bytes;
            }
            _ => self.entries.push_back(BacklogEntry { end_sequence, bytes, in_active_segment: true }),
        }
        self.publish();
    }

    /// Release every entry whose records are all below `delivered`.
    fn release(&mut self, delivered: u64) {
        while let Some(first) = self.entries.front()
            && first.end_sequence <= delivered
        {
            if first.in_active_segment {
                self.active_bytes -= first.bytes;
            }
            self.total -= first.bytes;
            self.entries.pop_front();
        }
        self.publish();
    }

    fn segment_closed(&mut self) {
        for entry in self.entries.iter_mut().rev() {
            if !entry.in_active_segment {
                break;
            }
            entry.in_active_segment = false;
        }
        self.active_bytes = 0;
    }

    /// Bytes of records above the trim point already delivered (see [`Command::DeliveredAhead`]).
    fn set_delivered_ahead(&mut self, bytes: u64) {
        self.delivered_ahead = bytes;
        self.publish();
    }

    /// What `max_bytes` limits: bytes from the trim point on, less what left ahead of it.
    fn undelivered(&self) -> u64 {
        self.total.saturating_sub(self.delivered_ahead)
    }

    fn publish(&self) {
        self.shared_total.store(self.undelivered(), Ordering::Relaxed);
    }
}

/// Why the WAL refuses appends for good.
#[derive(Clone)]
struct Failure {
    path: PathBuf,
    reason: String,
}

struct Writer {
    options: WalOptions,
    /// Closed segments, oldest first (the active one is not in this list).
    closed: Vec<SegmentFile>,
    active: SegmentFile,
    file: File,
    active_len: u64,
    next_sequence: u64,
    /// The highest checkpoint trimmed to.
    delivered: u64,
    disk_bytes: Arc<AtomicU64>,
    backlog: Backlog,
    queue: VecDeque<QueuedAppend>,
    committed: watch::Sender<u64>,
    unsynced_since: Option<Instant>,
    /// Set after a failed fsync or an I/O error we could not roll back; every later append
    /// fails with it.
    failed: Option<Failure>,
    buffer: Vec<u8>,
    positions: PositionTracker,
    /// Frames written, for the delivery reader.
    tail: Arc<Tail>,
    marker: Marker,
}

/// The committed mark as the writer keeps it: what is synced now, and when it was last recorded.
struct Marker {
    file: MarkFile,
    /// The active segment's synced length and the sequence after it.
    synced: CommittedMark,
    marked_at: Instant,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
}

impl Marker {
    fn is_stale(&self) -> bool {
        self.file.current() != Some(self.synced)
    }
}

/// Source positions as the writer moves them: written → synced (shared with readers) → saved.
struct PositionTracker {
    /// Off for push-only streams: nothing to keep, no file to write.
    enabled: bool,
    shared: SharedPositions,
    /// Written but not yet synced (`fsync: interval`), with the sequence after each frame.
    unsynced: Vec<(u64, SourcePosition)>,
    /// Every frame below this is synced and reflected in `shared`.
    synced_at: u64,
    saved_at_sequence: u64,
    saved_at: Instant,
}

/// How often the positions file is rewritten while records flow (and before segments go).
const POSITIONS_SAVE_INTERVAL: Duration = Duration::from_secs(1);

impl PositionTracker {
    fn new(enabled: bool, shared: SharedPositions, next_sequence: u64) -> Self {
        Self {
            enabled,
            shared,
            unsynced: Vec::new(),
            synced_at: next_sequence,
            saved_at_sequence: next_sequence,
            saved_at: Instant::now(),
        }
    }

    fn written(&mut self, sources: Vec<SourcePosition>, end: u64) {
        self.unsynced.extend(sources.into_iter().map(|source| (end, source)));
    }

    /// Everything below `sequence` is durable: its positions become visible.
    fn synced(&mut self, sequence: u64) {
        if !self.unsynced.is_empty() {
            let mut shared = self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (_, source) in self.unsynced.drain(..) {
                positions::apply(&mut shared, source);
            }
        }
        self.synced_at = self.synced_at.max(sequence);
    }

    /// Save when a second has passed since the last save and frames were added (or `force`).
    /// False when the save failed (then nothing that relies on it may happen).
    fn save_if_due(&mut self, dir: &Path, force: bool) -> bool {
        if !self.enabled || self.synced_at == self.saved_at_sequence {
            return true;
        }
        if !force && self.saved_at.elapsed() < POSITIONS_SAVE_INTERVAL {
            return true;
        }
        let snapshot = self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        match positions::save(dir, self.synced_at, &snapshot) {
            Ok(()) => {
                self.saved_at_sequence = self.synced_at;
                self.saved_at = Instant::now();
                true
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot save wal source positions");
                false
            }
        }
    }
}

impl Writer {
    fn open(
        options: WalOptions,
        mut segments: Vec<SegmentFile>,
        next_sequence: u64,
        delivered: u64,
        published: Published,
    ) -> Result<Writer, WalError> {
        let Published { disk_bytes, committed, positions, tail } = published;
        let active = match segments.pop() {
            Some(last) => last,
            None => {
                let path = segment::segment_path(&options.dir, next_sequence);
                SegmentFile { first_sequence: next_sequence, path }
            }
        };
        let track_positions = options.track_positions;
        let file = open_append(&active.path)?;
        let mark_path = committed::path(&options.dir);
        let mut mark_file =
            MarkFile::open(&options.dir).map_err(|source| WalError::Io { path: mark_path.clone(), source })?;
        sync_dir(&options.dir)?;
        let active_io_error = |source| WalError::Io { path: active.path.clone(), source };
        let active_len = file.metadata().map_err(active_io_error)?.len();
        // Open kept every frame in the active segment (a torn tail is already cut): they will be
        // delivered, so make them durable and record them as committed.
        let synced = CommittedMark {
            segment_first_sequence: active.first_sequence,
            len: active_len,
            end_sequence: next_sequence,
        };
        if mark_file.current() != Some(synced) {
            file.sync_data().map_err(active_io_error)?;
            mark_file.write(synced).map_err(|source| WalError::Io { path: mark_path, source })?;
        }
        let marker = Marker { file: mark_file, synced, marked_at: Instant::now(), failing: false };
        let mut backlog = Backlog::new(options.max_bytes);
        for (index, closed) in segments.iter().enumerate() {
            let end_sequence = segments.get(index + 1).unwrap_or(&active).first_sequence;
            if end_sequence <= delivered {
                continue;
            }
            let len = std::fs::metadata(&closed.path)
                .map_err(|source| WalError::Io { path: closed.path.clone(), source })?
                .len();
            backlog.add_closed(end_sequence, len);
        }
        let active_undelivered = undelivered_bytes_in(&active, active_len, next_sequence, delivered)?;
        if active_undelivered > 0 {
            backlog.add_active(next_sequence, active_undelivered);
        }
        Ok(Writer {
            options,
            closed: segments,
            active,
            file,
            active_len,
            next_sequence,
            delivered,
            disk_bytes,
            backlog,
            queue: VecDeque::new(),
            committed,
            unsynced_since: None,
            failed: None,
            buffer: Vec::new(),
            positions: PositionTracker::new(track_positions, positions, next_sequence),
            tail,
            marker,
        })
    }

    fn run(&mut self, commands: Receiver<Command>) {
        let mut shutdown = false;
        while !shutdown {
            let first = if self.front_can_be_written() {
                // Queued work is ready: take what has arrived meanwhile, but do not block.
                match commands.try_recv() {
                    Ok(command) => Some(command),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => {
                        shutdown = true;
                        None
                    }
                }
            } else {
                let received = match self.next_wake_up() {
                    Some(wake_up) => commands.recv_timeout(wake_up.saturating_duration_since(Instant::now())),
                    None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                match received {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        shutdown = true;
                        None
                    }
                }
            };
            if let Some(first) = first {
                shutdown |= self.handle(first);
                let mut taken = 1;
                while !shutdown && taken < MAX_COMMANDS_PER_ROUND {
                    let Ok(command) = commands.try_recv() else { break };
                    shutdown |= self.handle(command);
                    taken += 1;
                }
            }
            self.write_next_group();
            self.refuse_expired(Instant::now());
            self.sync_if_due();
            self.mark_if_due(false);
        }
        // Shutting down: write what fits; the rest could only wait for a trim that will not come.
        while self.front_can_be_written() {
            self.write_next_group();
        }
        while let Some(queued) = self.queue.pop_front() {
            let _ = queued.reply.send(Err(WalError::Closed));
        }
        if self.unsynced_since.is_some()
            && self.failed.is_none()
            && let Err(error) = self.sync_active()
        {
            self.fail("fsync", &error);
        }
        if self.failed.is_none() {
            self.positions.synced(self.next_sequence);
            self.positions.save_if_due(&self.options.dir, true);
            self.synced_to_end();
            self.mark_if_due(true);
        }
    }

    /// Apply one command; true when it asks the writer to stop.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Append { arrival_ms, records, framed, source, metadata, reply } => {
                let frame_len = frame::encoded_len(&records, source.as_ref(), &metadata) as u64;
                let give_up_at = Instant::now() + self.options.full_wait;
                let queued =
                    QueuedAppend { arrival_ms, records, framed, source, metadata, reply, frame_len, give_up_at };
                self.queue.push_back(queued);
                false
            }
            Command::Trim { delivered } => {
                self.trim(delivered);
                false
            }
            Command::DeliveredAhead { bytes } => {
                self.backlog.set_delivered_ahead(bytes);
                false
            }
            Command::Shutdown => true,
        }
    }

    /// True when the first queued append can be answered now: it fits, or the WAL has failed.
    fn front_can_be_written(&self) -> bool {
        match self.queue.front() {
            None => false,
            Some(front) => self.failed.is_some() || self.fits(0, front.frame_len),
        }
    }

    fn fits(&self, pending: u64, frame_len: u64) -> bool {
        self.backlog.undelivered() + pending + frame_len <= self.options.max_bytes
    }

    /// The earliest of the timed fsync, the first waiting append's deadline and the next mark.
    fn next_wake_up(&self) -> Option<Instant> {
        let fsync_due = match self.options.fsync {
            FsyncPolicy::Interval => self.unsynced_since.map(|since| since + self.options.fsync_interval),
            FsyncPolicy::Always => None,
        };
        // Appends queue in arrival order with one `full_wait`, so the first gives up first.
        let give_up = self.queue.front().map(|front| front.give_up_at);
        let mark_due =
            (self.failed.is_none() && self.marker.is_stale()).then(|| self.marker.marked_at + committed::MARK_INTERVAL);
        [fsync_due, give_up, mark_due].into_iter().flatten().min()
    }

    /// Write the queued appends that fit, in arrival order, as one group. An append that does
    /// not fit stops the group: later ones wait behind it, so a big put is not starved.
    fn write_next_group(&mut self) {
        if let Some(failure) = self.failed.clone() {
            while let Some(queued) = self.queue.pop_front() {
                let _ = queued.reply.send(Err(failure.to_error()));
            }
            return;
        }
        // An append whose requester is gone (a client that gave up while it waited for its group
        // or for room) is not written: nobody could be told it was, and its retry would repeat it.
        self.queue.retain(|queued| !queued.reply.is_closed());
        let mut group = Vec::new();
        let mut group_bytes = 0;
        while let Some(front) = self.queue.front()
            && group_bytes < MAX_GROUP_BYTES as u64
            && self.fits(group_bytes, front.frame_len)
        {
            group_bytes += front.frame_len;
            group.extend(self.queue.pop_front());
        }
        if !group.is_empty() {
            self.write_group(group);
        }
    }

    /// Answer `Full` to the appends at the front that still do not fit and whose wait is over,
    /// and at once to one that could not fit even in an empty WAL.
    fn refuse_expired(&mut self, now: Instant) {
        while let Some(front) = self.queue.front()
            && !self.fits(0, front.frame_len)
            && (front.give_up_at <= now || front.frame_len > self.options.max_bytes)
        {
            let used = self.backlog.undelivered();
            if let Some(refused) = self.queue.pop_front() {
                let _ = refused.reply.send(Err(WalError::Full { used, limit: self.options.max_bytes }));
            }
        }
    }

    fn write_group(&mut self, group: Vec<QueuedAppend>) {
        if self.active_len >= self.options.segment_bytes
            && let Err(error) = self.rotate()
        {
            for queued in group {
                let _ = queued.reply.send(Err(error.duplicate()));
            }
            return;
        }
        self.buffer.clear();
        let mut accepted = Vec::with_capacity(group.len());
        let mut written_frames = Vec::with_capacity(group.len());
        // The group as written: stretches of `self.buffer` and records laid out in place.
        let mut pieces: Vec<GroupPiece> = Vec::with_capacity(group.len() * 2);
        let mut group_len = 0;
        let mut sequence = self.next_sequence;
        let mut sources = Vec::new();
        for queued in group {
            let start = self.buffer.len();
            match &queued.framed {
                Some(framed) => {
                    frame::encode_head(sequence, queued.arrival_ms, queued.records.len(), framed, &mut self.buffer)
                }
                None => frame::encode(
                    sequence,
                    queued.arrival_ms,
                    &queued.records,
                    queued.source.as_ref(),
                    &queued.metadata,
                    &mut self.buffer,
                ),
            }
            group_len += (self.buffer.len() - start) as u64;
            match pieces.last_mut() {
                Some(GroupPiece::Buffered(stretch)) => stretch.end = self.buffer.len(),
                _ => pieces.push(GroupPiece::Buffered(start..self.buffer.len())),
            }
            if let Some(framed) = queued.framed {
                group_len += framed.len() as u64;
                pieces.push(GroupPiece::Framed(framed));
            }
            let range = sequence..sequence + queued.records.len() as u64;
            // As `frame::decode` gives it back: metadata is kept only with a source.
            let metadata = if queued.source.is_some() { queued.metadata } else { Vec::new() };
            let frame = Frame {
                first_sequence: sequence,
                arrival_ms: queued.arrival_ms,
                records: queued.records,
                source: queued.source.clone(),
                metadata,
            };
            written_frames.push((frame, group_len));
            sequence = range.end;
            sources.extend(queued.source);
            accepted.push((range, queued.reply));
        }
        if let Err(error) = write_pieces(&mut self.file, &self.buffer, &pieces) {
            let rolled_back = self.file.set_len(self.active_len).is_ok();
            tracing::error!(segment = %self.active.path.display(), %error, rolled_back, "wal write failed");
            if !rolled_back {
                self.fail("write", &error);
            }
            for (_, reply) in accepted {
                let _ = reply.send(Err(self.io_error(std::io::Error::new(error.kind(), error.to_string()))));
            }
            return;
        }
        if self.options.fsync == FsyncPolicy::Always
            && let Err(error) = self.sync_active()
        {
            // Best effort, so a restart is less likely to deliver records whose put failed.
            let _ = self.file.set_len(self.active_len);
            self.fail("fsync", &error);
            for (_, reply) in accepted {
                let _ = reply.send(Err(self.io_error(std::io::Error::new(error.kind(), error.to_string()))));
            }
            return;
        }
        if self.options.fsync == FsyncPolicy::Interval && self.unsynced_since.is_none() {
            self.unsynced_since = Some(Instant::now());
        }
        let written = group_len;
        let segment_start = self.active_len;
        let segment_first_sequence = self.active.first_sequence;
        self.tail.push(written_frames.into_iter().map(|(frame, end)| TailFrame {
            frame,
            segment_first_sequence,
            next_offset: segment_start + end,
        }));
        self.active_len += written;
        self.next_sequence = sequence;
        if self.options.fsync == FsyncPolicy::Always {
            self.synced_to_end();
        }
        self.disk_bytes.fetch_add(written, Ordering::Relaxed);
        self.backlog.add_active(sequence, written);
        // A burst can grow the group buffer to MAX_GROUP_BYTES; do not keep that much around.
        self.buffer.clear();
        self.buffer.shrink_to(KEEP_GROUP_BUFFER_BYTES);
        self.positions.written(sources, sequence);
        if self.options.fsync == FsyncPolicy::Always {
            self.positions.synced(sequence);
            self.positions.save_if_due(&self.options.dir, false);
        }
        self.committed.send_replace(sequence);
        for (range, reply) in accepted {
            let _ = reply.send(Ok(range));
        }
    }

    fn sync_if_due(&mut self) {
        let Some(since) = self.unsynced_since else { return };
        if since.elapsed() < self.options.fsync_interval {
            return;
        }
        self.unsynced_since = None;
        // Never fsync a file again after a failed fsync: it could report success for lost pages.
        if self.failed.is_some() {
            return;
        }
        if let Err(error) = self.sync_active() {
            self.fail("fsync", &error);
            return;
        }
        self.synced_to_end();
        self.positions.synced(self.next_sequence);
        self.positions.save_if_due(&self.options.dir, false);
    }

    /// Everything written to the active segment is synced.
    fn synced_to_end(&mut self) {
        self.marker.synced = CommittedMark {
            segment_first_sequence: self.active.first_sequence,
            len: self.active_len,
            end_sequence: self.next_sequence,
        };
    }

    /// Record the synced length in the committed mark when it moved and `MARK_INTERVAL` has
    /// passed since the last mark (or now, with `force`). Called after a group's
    /// acknowledgements, never before. A failure is logged and retried later: until then
    /// recovery knows less, and classifies the newest frames by their bytes alone.
    fn mark_if_due(&mut self, force: bool) {
        if self.failed.is_some() || !self.marker.is_stale() {
            return;
        }
        if !force && self.marker.marked_at.elapsed() < committed::MARK_INTERVAL {
            return;
        }
        self.marker.marked_at = Instant::now();
        let synced = self.marker.synced;
        match self.marker.file.write(synced) {
            Ok(()) => self.marker.failing = false,
            Err(error) if !self.marker.failing => {
                self.marker.failing = true;
                tracing::warn!(dir = %self.options.dir.display(), %error, "cannot record the wal's committed length; retrying every second");
            }
            Err(_) => {}
        }
    }

    /// Close the active segment and start a new one at the next sequence.
    fn rotate(&mut self) -> Result<(), WalError> {
        if let Err(error) = self.sync_active() {
            self.fail("fsync", &error);
            return Err(self.io_error(error));
        }
        self.unsynced_since = None;
        self.positions.synced(self.next_sequence);
        let path = segment::segment_path(&self.options.dir, self.next_sequence);
        let file = open_append(&path)?;
        if let Err(error) = sync_dir(&self.options.dir) {
            self.fail("directory fsync", &std::io::Error::other(error.to_string()));
            return Err(error);
        }
        let previous = std::mem::replace(&mut self.active, SegmentFile { first_sequence: self.next_sequence, path });
        self.closed.push(previous);
        self.file = file;
        self.active_len = 0;
        self.synced_to_end();
        self.backlog.segment_closed();
        Ok(())
    }

    /// Release the budget below `delivered`, close the active segment early when most of it is
    /// delivered, and delete closed segments entirely below `delivered`. A segment's records end
    /// where the next segment starts; the active segment is never deleted.
    fn trim(&mut self, delivered: u64) {
        self.delivered = self.delivered.max(delivered);
        self.backlog.release(self.delivered);
        self.tail.trim(self.delivered);
        if self.active_is_mostly_delivered()
            && let Err(error) = self.rotate()
        {
            tracing::warn!(segment = %self.active.path.display(), %error, "cannot close a delivered wal segment");
        }
        // Positions of frames about to be deleted must be in the positions file first.
        let deletes_any = self
            .closed
            .first()
            .is_some_and(|_| self.closed.get(1).unwrap_or(&self.active).first_sequence <= self.delivered);
        if deletes_any && !self.positions.save_if_due(&self.options.dir, true) {
            return;
        }
        let mut keep_from = 0;
        for index in 0..self.closed.len() {
            let end = self.closed.get(index + 1).unwrap_or(&self.active).first_sequence;
            if end > self.delivered {
                break;
            }
            let segment = &self.closed[index];
            let len = std::fs::metadata(&segment.path).map(|metadata| metadata.len()).unwrap_or(0);
            match std::fs::remove_file(&segment.path) {
                Ok(()) => {
                    self.disk_bytes.fetch_sub(len, Ordering::Relaxed);
                    keep_from = index + 1;
                }
                Err(error) => {
                    tracing::warn!(segment = %segment.path.display(), %error, "cannot delete delivered wal segment");
                    break;
                }
            }
        }
        self.closed.drain(..keep_from);
    }

    /// At least half of the active segment, and enough bytes to be worth a new file, is
    /// delivered: closing it lets the next trim delete it without waiting for `segment_bytes`.
    fn active_is_mostly_delivered(&self) -> bool {
        if self.failed.is_some() || self.next_sequence == self.active.first_sequence {
            return false;
        }
        let delivered_bytes = self.active_len.saturating_sub(self.backlog.active_bytes);
        let worth_reclaiming = RECLAIM_MIN_BYTES.min(self.options.max_bytes / 8).max(1);
        delivered_bytes * 2 >= self.active_len && delivered_bytes >= worth_reclaiming
    }

    /// `sync_data` on the active segment; tests can make it fail for one WAL directory.
    fn sync_active(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if fail_points::sync_fails_in(&self.options.dir) {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        let started = Instant::now();
        let synced = self.file.sync_data();
        crate::metrics::observe_wal_fsync(started.elapsed());
        synced
    }

    /// Refuse appends for good, logging once with the segment that failed.
    fn fail(&mut self, operation: &str, error: &std::io::Error) {
        if self.failed.is_some() {
            return;
        }
        tracing::error!(
            segment = %self.active.path.display(),
            %error,
            "wal {operation} failed; refusing appends until a restart"
        );
        self.failed = Some(Failure { path: self.active.path.clone(), reason: format!("{operation} failed: {error}") });
    }

    fn io_error(&self, source: std::io::Error) -> WalError {
        WalError::Io { path: self.active.path.clone(), source }
    }
}

impl Failure {
    fn to_error(&self) -> WalError {
        WalError::Failed { path: self.path.clone(), reason: self.reason.clone() }
    }
}

impl WalError {
    /// The same error for another waiter (I/O errors are not `Clone`).
    fn duplicate(&self) -> WalError {
        match self {
            WalError::Io { path, source } => {
                WalError::Io { path: path.clone(), source: std::io::Error::new(source.kind(), source.to_string()) }
            }
            WalError::Failed { path, reason } => WalError::Failed { path: path.clone(), reason: reason.clone() },
            other => WalError::Io { path: PathBuf::new(), source: std::io::Error::other(other.to_string()) },
        }
    }
}

/// Bytes of the frames in the active segment that hold records at or after `delivered`.
/// Scans the file only when the checkpoint falls inside it.
fn undelivered_bytes_in(
    active: &SegmentFile,
    active_len: u64,
    next_sequence: u64,
    delivered: u64,
) -> Result<u64, WalError> {
    if delivered <= active.first_sequence {
        return Ok(active_len);
    }
    if delivered >= next_sequence {
        return Ok(0);
    }
    let io_error = |source| WalError::Io { path: active.path.clone(), source };
    let mut file = File::open(&active.path).map_err(io_error)?;
    let mut offset = 0;
    loop {
        match segment::read_frame(&mut file, offset, active_len).map_err(io_error)? {
            ReadOutcome::Frame { frame, next_offset } => {
                if frame.end_sequence() > delivered {
                    return Ok(active_len - offset);
                }
                offset = next_offset;
            }
            ReadOutcome::End => return Ok(0),
            // Open already cut a torn tail; count anything unreadable as undelivered.
            ReadOutcome::Damaged { .. } => return Ok(active_len - offset),
        }
    }
}

/// A stretch of a write group.
enum GroupPiece {
    /// Frames (or a frame's head) encoded into the writer's buffer.
    Buffered(Range<usize>),
    /// Records laid out in place by their source.
    Framed(Bytes),
}

/// Write a group's pieces in order, with as few `writev` calls as the pieces allow.
fn write_pieces(file: &mut File, buffer: &[u8], pieces: &[GroupPiece]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice> = pieces
        .iter()
        .map(|piece| match piece {
            GroupPiece::Buffered(stretch) => IoSlice::new(&buffer[stretch.clone()]),
            GroupPiece::Framed(framed) => IoSlice::new(framed),
        })
        .collect();
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        match file.write_vectored(remaining) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut remaining, written),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn open_append(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| WalError::Io { path: path.to_path_buf(), source })
}

/// Make a created or deleted file name durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|source| WalError::Io { path: dir.to_path_buf(), source })
}

/// Failures tests inject into the writer, which real files cannot be made to produce.
#[cfg(test)]
pub(super) mod fail_points {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static FAILING_SYNC_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// Make every fsync of a segment in `dir` fail (`true`) or work again (`false`).
    pub fn fail_syncs_in(dir: &Path, failing: bool) {
        let mut dirs = FAILING_SYNC_DIRS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        dirs.retain(|failing_dir| failing_dir != dir);
        if failing {
            dirs.push(dir.to_path_buf());
        }
    }

    pub(super) fn sync_fails_in(dir: &Path) -> bool {
        FAILING_SYNC_DIRS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().any(|failing| failing == dir)
    }
}
