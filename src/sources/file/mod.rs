//! The `file` source: tails log files named by paths or glob patterns, one record per line (or per
//! group of lines, with a multi-line start pattern), and appends them to the stream's WAL with
//! each file's position in the frame, so that after a crash every file resumes exactly after
//! the last line the WAL durably holds: never skipping, never repeating.
//!
//! Files are found by scanning the patterns every `glob_interval_ms` and known by device + inode
//! (checked by a fingerprint of their first bytes), not by path:
//! - rename rotation: the renamed file is read to its end through the handle still open (or,
//!   when the rotated name still matches a pattern, simply followed), the new file from its start;
//! - copytruncate: a file shorter than what was read, or whose first bytes changed, is read again
//!   from its start; the copy (a new file whose first bytes are those of a file being read, or
//!   just truncated) continues from the offset the original was read to, so it is neither read
//!   twice nor skipped — whether or not a pattern matches it;
//! - rotated while spillway was down: a rotated name that matches a pattern is found by its
//!   inode and its unread tail is read; one that does not is lost (a warning says so, naming it);
//! - gzip-compressed rotations (`app.log.2.gz`) are recognised by their first bytes and skipped;
//! - a file that disappears is read to its end, then its position is forgotten.
//!
//! `read_from` applies to the files present when the stream first starts; a file appearing later
//! (or while spillway was stopped) is read from its start, so nothing written to it is skipped.
//!
//! Must not: hold more than one read chunk and one record group per file, or acknowledge
//! anything before the WAL append.

mod lines;
mod source;
mod tail;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::lines::Splitter;
use self::tail::{FINGERPRINT_BYTES, FileId, Fingerprint, Refused, Saved, Tail};
use crate::metrics::StreamMetrics;
use crate::wal::{SourcePosition, Wal, WalError};

/// The `source:` block of a stream whose `type` is `file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Files to tail: paths or glob patterns (`*`, `?`, `[a-z]`, `**` for any depth); one or a
    /// list. `path:` is accepted for one file.
    #[serde(alias = "path", deserialize_with = "one_or_many")]
    pub paths: Vec<String>,
    /// Glob patterns of files not to tail, matched against the whole path (`*.gz`, `**/debug.log`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where to start in the files present when the stream first starts: `beginning` (default,
    /// like Fluent Bit's `read_from_head` and Vector's `read_from`) or `end` (only lines written
    /// from now on). Files appearing later are always read from their start.
    #[serde(default, alias = "start_at")]
    pub read_from: ReadFrom,
    /// Join lines into one record: a line matching `start_pattern` begins a record and the lines
    /// after it that do not match belong to it (stack traces).
    #[serde(default)]
    pub multiline: Option<MultilineConfig>,
    /// How often each file is checked for new lines.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How often the patterns are scanned for new, rotated and removed files.
    #[serde(default = "default_glob_interval_ms")]
    pub glob_interval_ms: u64,
    /// Recognise copytruncate's copies (a new file whose first 256 bytes are those of a file
    /// read before) and continue them where the original was read to. Turn off when different
    /// files begin with the same 256 bytes (a long common header): they would be taken for
    /// copies of each other.
    #[serde(default = "default_true")]
    pub detect_copies: bool,
    /// Longer records (a line, or a multi-line group) are cut into records of this size
    /// (Firehose's record limit, 1,000 KiB, is the default and the maximum).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

/// `multiline:` of a file source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A regular expression (Rust `regex` syntax) matched against each line: a match starts a
    /// new record.
    pub start_pattern: String,
    /// A record whose next start line has not come is sent after this long without new lines.
    #[serde(default = "default_multiline_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    Beginning,
    End,
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(path) => vec![path],
        OneOrMany::Many(paths) => paths,
    })
}

fn default_true() -> bool {
    true
}
fn default_poll_interval_ms() -> u64 {
    250
}
fn default_glob_interval_ms() -> u64 {
    1000
}
fn default_multiline_timeout_ms() -> u64 {
    1000
}
fn default_max_line_bytes() -> usize {
    crate::sources::MAX_RECORD_BYTES
}

/// The shard whose presence in the WAL says the stream has started before (so `read_from: end`
/// no longer applies to the files found).
const STARTED_SHARD: &str = "file-source:started";

impl FileSourceConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.paths.is_empty() {
            problems.push(("paths".to_string(), "must name at least one file or pattern".to_string()));
        }
        for (field, patterns) in [("paths", &self.paths), ("exclude", &self.exclude)] {
            for (index, pattern) in patterns.iter().enumerate() {
                if pattern.is_empty() {
                    problems.push((format!("{field}[{index}]"), "must not be empty".to_string()));
                } else if let Err(error) = glob::Pattern::new(pattern) {
                    problems.push((format!("{field}[{index}]"), format!("is not a glob pattern: {error}")));
                }
            }
        }
        if let Some(multiline) = &self.multiline {
            if let Err(error) = regex::bytes::Regex::new(&multiline.start_pattern) {
                problems.push(("multiline.start_pattern".to_string(), format!("is not a regular expression: {error}")));
            }
            if !(1..=600_000).contains(&multiline.timeout_ms) {
                problems.push((
                    "multiline.timeout_ms".to_string(),
                    format!("must be 1-600000 (got {})", multiline.timeout_ms),
                ));
            }
        }
        for (field, value) in [("poll_interval_ms", self.poll_interval_ms), ("glob_interval_ms", self.glob_interval_ms)]
        {
            if !(10..=60_000).contains(&value) {
                problems.push((field.to_string(), format!("must be 10-60000 (got {value})")));
            }
        }
        if !(1..=crate::sources::MAX_RECORD_BYTES).contains(&self.max_line_bytes) {
            problems.push((
                "max_line_bytes".to_string(),
                format!("must be 1-{} (got {})", crate::sources::MAX_RECORD_BYTES, self.max_line_bytes),
            ));
        }
        problems
    }

    fn splitter(&self) -> Splitter {
        let start_pattern = self.multiline.as_ref().and_then(|multiline| {
            // Validated at load; a pattern that does not compile means no grouping.
            regex::bytes::Regex::new(&multiline.start_pattern).ok()
        });
        Splitter::new(self.max_line_bytes, start_pattern)
    }
}

/// What the file tasks of one stream share.
struct Context {
    stream: String,
    config: FileSourceConfig,
    wal: Wal,
    metrics: Arc<StreamMetrics>,
    /// Each tailed file's fingerprint and the offset it is read to.
    progress: Mutex<HashMap<FileId, (Fingerprint, u64)>>,
    /// Files truncated (copytruncate) or gone lately: their fingerprint and the offset they
    /// were read to before that, and when.
    ended: Mutex<Vec<(Fingerprint, u64, Instant)>>,
}

/// How long an ended file's last offset is kept for a copy of it to continue from.
const ENDED_MEMORY: Duration = Duration::from_secs(600);

/// What a new file may be a copy of. Only full fingerprints count: two short files with the same
/// few bytes are not taken for copies of each other.
struct CopyCandidates {
    /// Files being read: a copy of one waits until the original is truncated or gone, for the
    /// offset it was read to is exact only then.
    live: Vec<Fingerprint>,
    /// Files truncated or gone lately, and files the WAL knows from before a restart.
    ended: Vec<(Fingerprint, u64)>,
}

impl CopyCandidates {
    /// Where a new file with this fingerprint and length starts.
    fn start(&self, fingerprint: Fingerprint, length: u64) -> Result<Option<u64>, Refused> {
        if fingerprint.len < FINGERPRINT_BYTES {
            return Ok(None);
        }
        if self.live.contains(&fingerprint) {
            return Err(Refused::CopyOfLiveFile);
        }
        Ok(self
            .ended
            .iter()
            .filter(|(candidate, offset)| *candidate == fingerprint && *offset <= length)
            .map(|(_, offset)| *offset)
            .max())
    }
}

impl Context {
    fn copy_candidates(&self, saved: &BTreeMap<FileId, Saved>) -> CopyCandidates {
        if !self.config.detect_copies {
            return CopyCandidates { live: Vec::new(), ended: Vec::new() };
        }
        let live = lock(&self.progress).values().map(|(fingerprint, _)| *fingerprint).collect();
        let mut ended = lock(&self.ended);
        ended.retain(|(_, _, at)| at.elapsed() < ENDED_MEMORY);
        let mut candidates: Vec<(Fingerprint, u64)> =
            ended.iter().map(|(fingerprint, offset, _)| (*fingerprint, *offset)).collect();
        candidates.extend(saved.values().map(|saved| (saved.fingerprint, saved.offset)));
        CopyCandidates { live, ended: candidates }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A file being tailed by its own task.
struct Tracked {
    /// Set when a scan no longer finds the file: its task reads it to its end, then finishes.
    gone: Arc<AtomicBool>,
}

/// Tail the configured files until `stop`, appending to `wal`. Errors are logged and retried;
/// the task ends only when asked to.
pub async fn run(
    stream: String,
    config: FileSourceConfig,
    wal: Wal,
    metrics: Arc<StreamMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let context =
        Arc::new(Context { stream, config, wal, metrics, progress: Mutex::default(), ended: Mutex::default() });
    let glob_interval = Duration::from_millis(context.config.glob_interval_ms);
    let first_start = !context.wal.positions().contains_key(STARTED_SHARD);
    let mut first_scan = true;
    let mut tracked: HashMap<FileId, Tracked> = HashMap::new();
    let mut tasks: JoinSet<FileId> = JoinSet::new();
    let mut task_files: HashMap<tokio::task::Id, FileId> = HashMap::new();
    let mut refused: HashSet<FileId> = HashSet::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let patterns = (context.config.paths.clone(), context.config.exclude.clone());
        let found = match tokio::task::spawn_blocking(move || scan(&patterns.0, &patterns.1)).await {
            Ok(found) => found,
            Err(join) => {
                tracing::error!(stream = %context.stream, error = %join, "file scan failed; retrying");
                BTreeMap::new()
            }
        };
        let saved = saved_positions(&context.wal.positions());
        for (id, entry) in &tracked {
            entry.gone.store(!found.contains_key(id), Ordering::Relaxed);
        }
        // Files the WAL knows first: a copy of one of them must see it live (see `CopyCandidates`).
        let (known, new): (Vec<_>, Vec<_>) = found.iter().partition(|(id, _)| saved.contains_key(id));
        for (id, path) in known.into_iter().chain(new) {
            if tracked.contains_key(id) || refused.contains(id) {
                continue;
            }
            let read_from_end = first_start && first_scan && context.config.read_from == ReadFrom::End;
            let candidates = context.copy_candidates(&saved);
            match open(&context, path.clone(), saved.get(id).cloned(), read_from_end, candidates).await {
                Opened::Tail(tail) => {
                    if read_from_end && !append(&context, Vec::new(), &tail, &mut stop).await {
                        break;
                    }
                    let gone = Arc::new(AtomicBool::new(false));
                    tracked.insert(tail.id, Tracked { gone: gone.clone() });
                    let task = tasks.spawn(follow(context.clone(), tail, gone, stop.clone()));
                    task_files.insert(task.id(), *id);
                }
                Opened::Refused(Refused::CopyOfLiveFile) => {}
                Opened::Refused(Refused::Gzip) => {
                    tracing::info!(stream = %context.stream, path = %path.display(), "gzip-compressed file (a compressed rotation); not tailed");
                    refused.insert(*id);
                }
                Opened::Gone | Opened::Failed => {}
            }
        }
        if first_scan && first_start {
            let marker = SourcePosition { shard: STARTED_SHARD.to_string(), position: "1".to_string() };
            if !append_frame(&context, Vec::new(), marker, &mut stop).await {
                break;
            }
        }
        refused.retain(|id| found.contains_key(id));
        // Positions of files that are gone for good (not found, and no task reading them).
        for (id, position) in saved.iter().filter(|(id, _)| !found.contains_key(id) && !tracked.contains_key(id)) {
            if first_scan {
                // Removed, or rotated to a name no pattern matches, while spillway was stopped.
                tracing::warn!(stream = %context.stream, path = %position.path, offset = position.offset,
                    "a file read before is no longer found; lines written to it after that offset, if any, are not read");
            }
            if let Err(error) = context.wal.forget_position(id.shard()).await {
                tracing::warn!(stream = %context.stream, %error, "cannot forget a removed file's position");
            }
        }
        first_scan = false;
        context.metrics.source.set_active_shards(tracked.len() as i64);
        let deadline = tokio::time::sleep(glob_interval);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                finished = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let task = match finished {
                        Some(Ok((task, _))) => task,
                        Some(Err(join)) => {
                            tracing::error!(stream = %context.stream, error = %join, "file reader task failed; the file is opened again at the next scan");
                            join.id()
                        }
                        None => continue,
                    };
                    if let Some(id) = task_files.remove(&task) {
                        tracked.remove(&id);
                    }
                }
                _ = stop.changed() => break,
            }
        }
    }
    tasks.shutdown().await;
}

enum Opened {
    Tail(Tail),
    Refused(Refused),
    Gone,
    Failed,
}

/// Open a file found by a scan: where the WAL says, else (a file new to the stream) at its end
/// for `read_from_end`, at the offset of the file it is a copy of, or at its start.
async fn open(
    context: &Arc<Context>,
    path: PathBuf,
    saved: Option<Saved>,
    read_from_end: bool,
    copy_candidates: CopyCandidates,
) -> Opened {
    let splitter = context.config.splitter();
    let opened = tokio::task::spawn_blocking(move || {
        let mut notes = Vec::new();
        let mut copy_note = None;
        let fresh = |fingerprint: Fingerprint, length: u64| {
            if read_from_end {
                return Ok(length);
            }
            let copied = copy_candidates.start(fingerprint, length)?;
            if let Some(offset) = copied {
                copy_note = Some(format!(
                    "{}: a copy of a file read to offset {offset} (copytruncate); reading it from there",
                    path.display()
                ));
            }
            Ok(copied.unwrap_or(0))
        };
        let result = Tail::open(&path, saved.as_ref(), fresh, splitter, &mut notes);
        notes.extend(copy_note);
        (path, result, notes)
    })
    .await;
    match opened {
        Ok((path, result, notes)) => {
            for note in notes {
                tracing::warn!(stream = %context.stream, "{note}");
            }
            match result {
                Ok(Ok(Some(tail))) => {
                    tracing::info!(stream = %context.stream, path = %path.display(), position = %tail.position(), "tailing file");
                    Opened::Tail(tail)
                }
                Ok(Ok(None)) => Opened::Gone,
                Ok(Err(refused)) => Opened::Refused(refused),
                Err(error) => {
                    tracing::warn!(stream = %context.stream, path = %path.display(), %error, "cannot open the file; retrying at the next scan");
                    Opened::Failed
                }
            }
        }
        Err(join) => {
            tracing::error!(stream = %context.stream, error = %join, "file open task failed");
            Opened::Failed
        }
    }
}

/// Read one file until it is gone and read to its end (returns its id), or until `stop`.
async fn follow(context: Arc<Context>, tail: Tail, gone: Arc<AtomicBool>, mut stop: watch::Receiver<bool>) -> FileId {
    let id = tail.id;
    let poll = Duration::from_millis(context.config.poll_interval_ms);
    let group_timeout = context.config.multiline.as_ref().map(|multiline| Duration::from_millis(multiline.timeout_ms));
    let shard_metrics = context.metrics.source.shard(&tail.path.display().to_string());
    lock(&context.progress).insert(id, tail.progress());
    let mut tail = Some(tail);
    let mut last_line_at = Instant::now();
    loop {
        if *stop.borrow() {
            return id;
        }
        let Some(mut current) = tail.take() else { return id };
        // Read once more after the file is seen gone, so lines written just before are kept.
        let gone_now = gone.load(Ordering::Relaxed);
        let group_due = group_timeout.is_some_and(|timeout| last_line_at.elapsed() >= timeout);
        let step = tokio::task::spawn_blocking(move || {
            let step = current.read_step();
            (current, step)
        })
        .await;
        let (mut current, step) = match step {
            Ok(done) => done,
            Err(join) => {
                tracing::error!(stream = %context.stream, error = %join, "file reader task failed");
                return id;
            }
        };
        let (mut records, at_end) = match step {
            Ok(step) => {
                for note in step.notes {
                    tracing::warn!(stream = %context.stream, "{note}");
                }
                if let Some((fingerprint, offset)) = step.truncated {
                    lock(&context.ended).push((fingerprint, offset, Instant::now()));
                    lock(&context.progress).insert(id, current.progress());
                }
                (step.records, step.at_end)
            }
            Err(error) => {
                tracing::warn!(stream = %context.stream, path = %current.path.display(), %error, "cannot read the tailed file; retrying");
                (Vec::new(), true)
            }
        };
        if !records.is_empty() {
            last_line_at = Instant::now();
        }
        let finished = at_end && gone_now;
        if finished || (at_end && group_due && current.has_pending_group()) {
            // Gone and read to its end: its last line will never get a newline.
            records.extend(current.flush(finished));
        }
        if !records.is_empty() {
            let (count, bytes) = (records.len() as u64, records.iter().map(|record| record.len() as u64).sum());
            if !append(&context, records, &current, &mut stop).await {
                return id;
            }
            lock(&context.progress).insert(id, current.progress());
            shard_metrics.records.inc_by(count);
            shard_metrics.bytes.inc_by(bytes);
            context.metrics.incoming_records.inc_by(count);
            context.metrics.incoming_bytes.inc_by(bytes);
        }
        if finished {
            lock(&context.progress).remove(&id);
            let (fingerprint, offset) = current.progress();
            lock(&context.ended).push((fingerprint, offset, Instant::now()));
            tracing::info!(stream = %context.stream, path = %current.path.display(), "file removed or rotated away, read to its end");
            return id;
        }
        tail = Some(current);
        if at_end {
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                _ = stop.changed() => return id,
            }
        }
    }
}

/// Append a file's records with its position after them. False when stopping.
async fn append(context: &Context, records: Vec<Bytes>, tail: &Tail, stop: &mut watch::Receiver<bool>) -> bool {
    let source = SourcePosition { shard: tail.id.shard(), position: tail.position() };
    append_frame(context, records, source, stop).await
}

/// Append until it succeeds; a full WAL means waiting, not dropping. False when stopping.
async fn append_frame(
    context: &Context,
    records: Vec<Bytes>,
    source: SourcePosition,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let arrival_ms = chrono::Utc::now().timestamp_millis();
    let mut backoff = Duration::from_millis(100);
    loop {
        match context.wal.append_pulled(arrival_ms, records.clone(), source.clone()).await {
            Ok(_) => return true,
            Err(error @ WalError::Full { .. }) => {
                tracing::debug!(stream = %context.stream, %error, "wal full; the file reader waits");
            }
            Err(error) => {
                tracing::error!(stream = %context.stream, %error, "cannot append tailed lines to the wal; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The files the WAL holds positions for.
fn saved_positions(positions: &BTreeMap<String, String>) -> BTreeMap<FileId, Saved> {
    positions
        .iter()
        .filter_map(|(shard, position)| Some((FileId::parse_shard(shard)?, Saved::parse(position)?)))
        .collect()
}

/// The regular files the patterns name now, minus the excluded ones, by identity (a file named
/// by two patterns, or by a hard link, is one file). Blocking.
fn scan(paths: &[String], exclude: &[String]) -> BTreeMap<FileId, PathBuf> {
    let exclude: Vec<glob::Pattern> = exclude.iter().filter_map(|pattern| glob::Pattern::new(pattern).ok()).collect();
    let mut found = BTreeMap::new();
    for pattern in paths {
        let Ok(matches) = glob::glob(pattern) else { continue };
        for path in matches.flatten() {
            if exclude.iter().any(|pattern| pattern.matches_path(&path)) {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(metadata) if metadata.is_file() => {
                    found.entry(FileId::of(&metadata)).or_insert(path);
                }
                _ => {}
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> FileSourceConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn one_path_a_list_and_the_old_names_all_read() {
        assert_eq!(config("path: /var/log/app.log").paths, ["/var/log/app.log"]);
        let config = config("paths: [/var/log/*.log, /srv/**/out.log]\nstart_at: end");
        assert_eq!(config.paths.len(), 2);
        assert_eq!(config.read_from, ReadFrom::End);
    }

    #[test]
    fn bad_patterns_and_regexes_are_named_by_their_field() {
        let config =
            config("paths: ['/var/log/[.log', '']\nexclude: ['***']\nmultiline: {start_pattern: '(', timeout_ms: 0}");
        let fields: Vec<String> = config.validate().into_iter().map(|(field, _)| field).collect();
        assert_eq!(
            fields,
            ["paths[0]", "paths[1]", "exclude[0]", "multiline.start_pattern", "multiline.timeout_ms"],
            "{:?}",
            config.validate()
        );
    }

    #[test]
    fn a_scan_finds_files_once_each_without_the_excluded_ones() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.log", "b.log", "b.log.1.gz", "debug.log"] {
            std::fs::write(dir.path().join(name), "x\n").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::hard_link(dir.path().join("a.log"), dir.path().join("sub/a-link.log")).unwrap();
        let base = dir.path().display();
        let found = scan(
            &[format!("{base}/*.log*"), format!("{base}/**/*.log")],
            &["*.gz".to_string(), format!("{base}/debug.log")],
        );
        let mut names: Vec<String> =
            found.values().map(|path| path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["a.log", "b.log"]);
    }
}
