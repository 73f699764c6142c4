//! The WAL writer thread: drains queued appends, writes them as consecutive frames with one
//! `write`, syncs once per group (`fsync: always`) or on a timer (`interval`), then acknowledges.
//! It runs on a dedicated OS thread because every step is blocking file I/O.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::segment::{self, SegmentFile};
use super::{WalError, WalOptions, frame};
use crate::config::FsyncPolicy;

/// Most bytes written in one group; keeps one slow group from delaying every acknowledgement.
const MAX_GROUP_BYTES: usize = 32 << 20;
/// Capacity of the group buffer kept between groups.
const KEEP_GROUP_BUFFER_BYTES: usize = 4 << 20;

/// Where an append's outcome is sent: the sequences its records got, or why it failed.
pub type AppendReply = oneshot::Sender<Result<Range<u64>, WalError>>;

pub enum Command {
    Append { arrival_ms: i64, records: Vec<Bytes>, reply: AppendReply },
    Trim { delivered: u64 },
    Shutdown,
}

pub struct WriterThread {
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl WriterThread {
    pub fn spawn(
        options: WalOptions,
        segments: Vec<SegmentFile>,
        next_sequence: u64,
        disk_bytes: Arc<AtomicU64>,
        committed: watch::Sender<u64>,
    ) -> Result<(Sender<Command>, WriterThread), WalError> {
        let mut state = Writer::open(options, segments, next_sequence, disk_bytes, committed)?;
        let (sender, receiver) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("spillway-wal".into())
            .spawn(move || state.run(receiver))
            .map_err(|source| WalError::Io { path: "wal writer thread".into(), source })?;
        Ok((sender, WriterThread { handle: Mutex::new(Some(handle)) }))
    }

    pub fn join(&self) {
        let handle = self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

struct Writer {
    options: WalOptions,
    /// Closed segments, oldest first (the active one is not in this list).
    closed: Vec<SegmentFile>,
    active: SegmentFile,
    file: File,
    active_len: u64,
    next_sequence: u64,
    disk_bytes: Arc<AtomicU64>,
    committed: watch::Sender<u64>,
    unsynced_since: Option<Instant>,
    /// Set after an I/O error we could not roll back; every later append fails with it.
    failed: Option<String>,
    buffer: Vec<u8>,
}

impl Writer {
    fn open(
        options: WalOptions,
        mut segments: Vec<SegmentFile>,
        next_sequence: u64,
        disk_bytes: Arc<AtomicU64>,
        committed: watch::Sender<u64>,
    ) -> Result<Writer, WalError> {
        let active = match segments.pop() {
            Some(last) => last,
            None => {
                let path = segment::segment_path(&options.dir, next_sequence);
                SegmentFile { first_sequence: next_sequence, path }
            }
        };
        let file = open_append(&active.path)?;
        sync_dir(&options.dir)?;
        let active_len = file.metadata().map_err(|source| WalError::Io { path: active.path.clone(), source })?.len();
        Ok(Writer {
            options,
            closed: segments,
            active,
            file,
            active_len,
            next_sequence,
            disk_bytes,
            committed,
            unsynced_since: None,
            failed: None,
            buffer: Vec::new(),
        })
    }

    fn run(&mut self, commands: Receiver<Command>) {
        loop {
            let first = match self.options.fsync {
                FsyncPolicy::Always => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
                FsyncPolicy::Interval => {
                    let wait = match self.unsynced_since {
                        Some(since) => self.options.fsync_interval.saturating_sub(since.elapsed()),
                        None => Duration::from_secs(3600),
                    };
                    commands.recv_timeout(wait)
                }
            };
            let first = match first {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_if_due();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut appends = Vec::new();
            let mut group_bytes = 0;
            let mut shutdown = false;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append { arrival_ms, records, reply } => {
                        group_bytes += frame::encoded_len(&records);
                        appends.push((arrival_ms, records, reply));
                    }
                    Command::Trim { delivered } => self.trim(delivered),
                    Command::Shutdown => shutdown = true,
                }
                if !shutdown && group_bytes < MAX_GROUP_BYTES {
                    next = commands.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.write_group(appends);
            }
            self.sync_if_due();
            if shutdown {
                break;
            }
        }
        if self.unsynced_since.is_some() {
            let _ = self.file.sync_data();
        }
    }

    fn write_group(&mut self, appends: Vec<(i64, Vec<Bytes>, AppendReply)>) {
        if let Some(reason) = &self.failed {
            for (_, _, reply) in appends {
                let _ = reply.send(Err(self.io_error(std::io::Error::other(reason.clone()))));
            }
            return;
        }
        if self.active_len >= self.options.segment_bytes
            && let Err(error) = self.rotate()
        {
            for (_, _, reply) in appends {
                let _ = reply.send(Err(self.io_error(std::io::Error::other(error.to_string()))));
            }
            return;
        }
        self.buffer.clear();
        let mut accepted = Vec::with_capacity(appends.len());
        let mut sequence = self.next_sequence;
        let used = self.disk_bytes.load(Ordering::Relaxed);
        for (arrival_ms, records, reply) in appends {
            let frame_len = frame::encoded_len(&records) as u64;
            let pending = used + self.buffer.len() as u64;
            if pending + frame_len > self.options.max_bytes {
                let _ = reply.send(Err(WalError::Full { used: pending, limit: self.options.max_bytes }));
                continue;
            }
            frame::encode(sequence, arrival_ms, &records, &mut self.buffer);
            let range = sequence..sequence + records.len() as u64;
            sequence = range.end;
            accepted.push((range, reply));
        }
        if accepted.is_empty() {
            return;
        }
        let written = self.file.write_all(&self.buffer).and_then(|()| match self.options.fsync {
            FsyncPolicy::Always => self.file.sync_data(),
            FsyncPolicy::Interval => Ok(()),
        });
        if let Err(error) = written {
            let rolled_back = self.file.set_len(self.active_len).is_ok();
            if !rolled_back {
                self.failed = Some(format!("unrecoverable write error: {error}"));
            }
            tracing::error!(segment = %self.active.path.display(), %error, rolled_back, "wal write failed");
            for (_, reply) in accepted {
                let _ = reply.send(Err(self.io_error(std::io::Error::new(error.kind(), error.to_string()))));
            }
            return;
        }
        if self.options.fsync == FsyncPolicy::Interval && self.unsynced_since.is_none() {
            self.unsynced_since = Some(Instant::now());
        }
        self.active_len += self.buffer.len() as u64;
        self.disk_bytes.fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
        // A burst can grow the group buffer to MAX_GROUP_BYTES; do not keep that much around.
        self.buffer.clear();
        self.buffer.shrink_to(KEEP_GROUP_BUFFER_BYTES);
        self.next_sequence = sequence;
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
        if let Err(error) = self.file.sync_data() {
            tracing::error!(segment = %self.active.path.display(), %error, "wal fsync failed");
            self.failed = Some(format!("fsync failed: {error}"));
        }
        self.unsynced_since = None;
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        self.file.sync_data().map_err(|source| self.io_error(source))?;
        let path = segment::segment_path(&self.options.dir, self.next_sequence);
        let file = open_append(&path)?;
        sync_dir(&self.options.dir)?;
        let previous = std::mem::replace(&mut self.active, SegmentFile { first_sequence: self.next_sequence, path });
        self.closed.push(previous);
        self.file = file;
        self.active_len = 0;
        self.unsynced_since = None;
        Ok(())
    }

    /// Delete closed segments entirely below `delivered`. A segment's records end where the next
    /// segment starts; the active segment is never deleted.
    fn trim(&mut self, delivered: u64) {
        let mut keep_from = 0;
        for index in 0..self.closed.len() {
            let end = self.closed.get(index + 1).unwrap_or(&self.active).first_sequence;
            if end > delivered {
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

    fn io_error(&self, source: std::io::Error) -> WalError {
        WalError::Io { path: self.active.path.clone(), source }
    }
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
