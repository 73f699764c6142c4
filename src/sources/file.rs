//! The `file` source: tails a log file, one record per line (without its newline), and appends
//! lines to the stream's WAL with the file's position in each frame. The position is the shard's
//! own cursor — `<inode>:<offset after the last appended line>` — so after a crash the reader
//! resumes exactly after the last line the WAL durably holds: never skipping, never repeating.
//!
//! Rotation: while the file keeps its inode the reader follows it; when the path names a new file
//! (rename rotation), the old file is read to its end through the handle still open, then the new
//! one from its start. A file that shrinks below the position (copytruncate) is read again from
//! its start. If the file was rotated while spillway was down, the old file's unread tail is not
//! found (its path moved) — a warning names the lost position. A partial last line waits for its
//! newline. When the WAL is full the reader waits (back-pressure without loss).
//!
//! Must not: buffer records beyond one read, or acknowledge anything before the WAL append.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::watch;

use crate::metrics::StreamMetrics;
use crate::wal::{SourcePosition, Wal, WalError};

/// The `source:` block of a stream whose `type` is `file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file to tail.
    pub path: PathBuf,
    /// Where to start when the WAL holds no position for the file: `beginning` (default, like
    /// Fluent Bit's `read_from_head`) or `end` (only lines written from now on).
    #[serde(default)]
    pub start_at: StartAt,
    /// How often the file is checked for new lines.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longer lines are cut into records of this size (Firehose's record limit is 1,000 KiB).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    Beginning,
    End,
}

fn default_poll_interval_ms() -> u64 {
    250
}
fn default_max_line_bytes() -> usize {
    crate::sources::MAX_RECORD_BYTES
}

/// Lines appended in one frame at most, and bytes read per step.
const MAX_LINES_PER_FRAME: usize = 500;
const READ_CHUNK_BYTES: usize = 1 << 20;

impl FileSourceConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push(("path".to_string(), "must name a file".to_string()));
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            problems
                .push(("poll_interval_ms".to_string(), format!("must be 10-60000 (got {})", self.poll_interval_ms)));
        }
        if !(1..=crate::sources::MAX_RECORD_BYTES).contains(&self.max_line_bytes) {
            problems.push((
                "max_line_bytes".to_string(),
                format!("must be 1-{} (got {})", crate::sources::MAX_RECORD_BYTES, self.max_line_bytes),
            ));
        }
        problems
    }

    /// The shard name this file has in WAL positions.
    fn shard(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

/// Where the reader stands in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    inode: u64,
    offset: u64,
}

impl Cursor {
    fn parse(position: &str) -> Option<Cursor> {
        let (inode, offset) = position.split_once(':')?;
        Some(Cursor { inode: inode.parse().ok()?, offset: offset.parse().ok()? })
    }

    fn render(self) -> String {
        format!("{}:{}", self.inode, self.offset)
    }
}

/// An open file being tailed, and the bytes of a line not yet complete.
struct Tail {
    file: std::fs::File,
    cursor: Cursor,
    partial: BytesMut,
}

/// Tail the file until `stop`, appending to `wal`. Errors are logged and retried; the task ends
/// only when asked to.
pub async fn run(
    stream: String,
    config: FileSourceConfig,
    wal: Wal,
    metrics: Arc<StreamMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let shard = config.shard();
    let poll = Duration::from_millis(config.poll_interval_ms);
    let mut tail: Option<Tail> = None;
    let mut resume = wal.positions().get(&shard).and_then(|position| Cursor::parse(position));
    loop {
        if *stop.borrow() {
            return;
        }
        let step = {
            let config = config.clone();
            let taken = tail.take();
            tokio::task::spawn_blocking(move || read_step(&config, taken, resume)).await
        };
        let waited = match step {
            Ok(Ok((next, lines, notes))) => {
                for note in notes {
                    tracing::warn!(stream = %stream, path = %config.path.display(), "{note}");
                }
                tail = next;
                if let Some((records, cursor)) = lines {
                    let source = SourcePosition { shard: shard.clone(), position: cursor.render() };
                    let (count, bytes) = (records.len() as u64, records.iter().map(|record| record.len() as u64).sum());
                    if !append(&stream, &wal, records, source, &mut stop).await {
                        return;
                    }
                    metrics.incoming_records.inc_by(count);
                    metrics.incoming_bytes.inc_by(bytes);
                    resume = Some(cursor);
                    false
                } else {
                    true
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(stream = %stream, path = %config.path.display(), %error, "cannot read the tailed file; retrying");
                true
            }
            Err(join) => {
                tracing::error!(stream = %stream, error = %join, "file reader task failed; retrying");
                true
            }
        };
        if waited {
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Append until it succeeds; a full WAL means waiting, not dropping. False when stopping.
async fn append(
    stream: &str,
    wal: &Wal,
    records: Vec<Bytes>,
    source: SourcePosition,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let arrival_ms = chrono::Utc::now().timestamp_millis();
    let mut backoff = Duration::from_millis(100);
    loop {
        match wal.append_pulled(arrival_ms, records.clone(), source.clone()).await {
            Ok(_) => return true,
            Err(error @ WalError::Full { .. }) => {
                tracing::debug!(stream, %error, "wal full; the file reader waits");
            }
            Err(error) => {
                tracing::error!(stream, %error, "cannot append tailed lines to the wal; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

type Step = (Option<Tail>, Option<(Vec<Bytes>, Cursor)>, Vec<String>);

/// One blocking step: (re)open the file if needed, read up to a chunk, split complete lines.
/// Returns the tail to keep, the lines with the cursor after the last of them, and warnings.
fn read_step(config: &FileSourceConfig, tail: Option<Tail>, resume: Option<Cursor>) -> std::io::Result<Step> {
    let mut notes = Vec::new();
    let mut tail = match tail {
        Some(tail) => tail,
        None => match open(config, resume, &mut notes)? {
            Some(tail) => tail,
            None => return Ok((None, None, notes)),
        },
    };
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    let read = tail.file.read(&mut buffer)?;
    if read == 0 {
        return at_end(config, tail, notes);
    }
    tail.partial.extend_from_slice(&buffer[..read]);
    let data = tail.partial.split().freeze();
    let mut records = Vec::new();
    let mut consumed = 0usize;
    while records.len() < MAX_LINES_PER_FRAME {
        let Some(newline) = data[consumed..].iter().position(|&byte| byte == b'\n') else { break };
        let line_end = consumed + newline;
        push_line(&mut records, data.slice(consumed..line_end), config.max_line_bytes);
        consumed = line_end + 1;
    }
    if consumed == 0 && data.len() >= config.max_line_bytes {
        // A line longer than a record with no newline yet: cut a record so memory stays bounded.
        consumed = config.max_line_bytes;
        records.push(data.slice(..consumed));
    }
    // Keep what follows the last complete line (a partial line, or lines past the frame cap).
    tail.partial.extend_from_slice(&data[consumed..]);
    if consumed == 0 {
        return Ok((Some(tail), None, notes));
    }
    tail.cursor.offset += consumed as u64;
    let cursor = tail.cursor;
    Ok((Some(tail), Some((records, cursor)), notes))
}

/// One line as records: without its `\r`, cut to `max_line_bytes`; a blank line gives none.
fn push_line(records: &mut Vec<Bytes>, line: Bytes, max_line_bytes: usize) {
    let line = if line.ends_with(b"\r") { line.slice(..line.len() - 1) } else { line };
    for piece in line.chunks(max_line_bytes) {
        records.push(line.slice_ref(piece));
    }
}

/// The open file is read to its end: stay, or move on when the path names a new file (rotation)
/// or the file shrank (copytruncate).
fn at_end(config: &FileSourceConfig, tail: Tail, mut notes: Vec<String>) -> std::io::Result<Step> {
    let metadata = match std::fs::metadata(&config.path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((Some(tail), None, notes)),
        Err(error) => return Err(error),
    };
    if metadata.ino() != tail.cursor.inode {
        notes.push(format!("file rotated; following the new file from its start (old inode {})", tail.cursor.inode));
        // The rotated file's last line had no newline: it is complete now.
        let mut records = Vec::new();
        let mut cursor = tail.cursor;
        if !tail.partial.is_empty() {
            cursor.offset += tail.partial.len() as u64;
            push_line(&mut records, tail.partial.freeze(), config.max_line_bytes);
        }
        let next = open_at(config, Cursor { inode: metadata.ino(), offset: 0 })?;
        let lines = if records.is_empty() { None } else { Some((records, cursor)) };
        return Ok((next, lines, notes));
    }
    if metadata.len() < tail.cursor.offset + tail.partial.len() as u64 {
        notes.push(format!("file truncated below offset {}; reading it again from its start", tail.cursor.offset));
        return Ok((open_at(config, Cursor { inode: tail.cursor.inode, offset: 0 })?, None, notes));
    }
    Ok((Some(tail), None, notes))
}

/// Open the file where the WAL says the reader stands (or per `start_at`).
fn open(config: &FileSourceConfig, resume: Option<Cursor>, notes: &mut Vec<String>) -> std::io::Result<Option<Tail>> {
    let metadata = match std::fs::metadata(&config.path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let inode = metadata.ino();
    let offset = match resume {
        Some(cursor) if cursor.inode == inode && cursor.offset <= metadata.len() => cursor.offset,
        Some(cursor) if cursor.inode == inode => {
            notes.push(format!("file is shorter than the saved offset {}; reading it from its start", cursor.offset));
            0
        }
        Some(cursor) => {
            notes.push(format!(
                "the file was replaced while spillway was stopped (saved inode {}, offset {}); reading the new file from its start, the old file's unread tail is not read",
                cursor.inode, cursor.offset
            ));
            0
        }
        None => match config.start_at {
            StartAt::Beginning => 0,
            StartAt::End => metadata.len(),
        },
    };
    open_at(config, Cursor { inode, offset })
}

fn open_at(config: &FileSourceConfig, cursor: Cursor) -> std::io::Result<Option<Tail>> {
    let mut file = match std::fs::File::open(&config.path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let inode = file.metadata()?.ino();
    let cursor = if inode == cursor.inode { cursor } else { Cursor { inode, offset: 0 } };
    file.seek(SeekFrom::Start(cursor.offset))?;
    Ok(Some(Tail { file, cursor, partial: BytesMut::new() }))
}
