//! `spillway wal inspect` and `spillway wal quarantine`: one stream's files as an operator sees
//! them (the checkpoint, every WAL segment checked, set-aside ranges, recorded intents), and
//! setting a damaged segment aside (the WAL's own [`crate::wal::quarantine`]).
//!
//! Owns: where a stream keeps its files under `data_dir`, and the inspection's text.
//! Must not: run while spillway runs on the same data_dir, or change any file itself (only
//! `quarantine`, through the WAL, does).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::pipeline::{Intent, IntentError, IntentLog};
use crate::wal::SegmentStatus;
use crate::wal::quarantine::{self as wal_quarantine, QuarantineError, Survey};
pub use crate::wal::quarantine::{QuarantineOutcome, SetAside};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Wal(#[from] QuarantineError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Intent(#[from] IntentError),
}

/// Where a stream keeps its files under `data_dir`.
#[derive(Debug, Clone)]
pub struct StreamPaths {
    pub stream_dir: PathBuf,
    pub wal_dir: PathBuf,
    pub quarantine_dir: PathBuf,
}

impl StreamPaths {
    pub fn new(data_dir: &Path, stream: &str) -> Self {
        let stream_dir = data_dir.join("streams").join(stream);
        let wal_dir = stream_dir.join("wal");
        Self { quarantine_dir: wal_quarantine::quarantine_dir(&wal_dir), wal_dir, stream_dir }
    }
}

/// Everything `spillway wal inspect` prints about a stream.
#[derive(Debug)]
pub struct Inspection {
    pub stream: String,
    pub paths: StreamPaths,
    pub checkpoint: u64,
    /// The segments checked, the committed mark, the set-aside ranges.
    pub wal: Survey,
    /// Recorded intents: pending (to re-send) and done (to skip) batches above the checkpoint.
    pub pending_intents: Vec<Intent>,
}

/// Read a stream's checkpoint, checksum every segment, list set-aside ranges and recorded intents.
pub fn inspect(data_dir: &Path, stream: &str) -> Result<Inspection, InspectError> {
    let paths = StreamPaths::new(data_dir, stream);
    let checkpoint = Checkpoint::new(&paths.stream_dir).load()?;
    let wal = wal_quarantine::survey(&paths.wal_dir)?;
    let pending_intents = if paths.stream_dir.join("intents").is_dir() {
        IntentLog::open(&paths.stream_dir)?.load()?
    } else {
        Vec::new()
    };
    Ok(Inspection { stream: stream.to_string(), paths, checkpoint, wal, pending_intents })
}

/// Set aside the first damaged segment of a stream's WAL, or the one `named`
/// ([`wal_quarantine::quarantine`]).
pub fn quarantine(data_dir: &Path, stream: &str, named: Option<&Path>) -> Result<QuarantineOutcome, InspectError> {
    let paths = StreamPaths::new(data_dir, stream);
    Ok(wal_quarantine::quarantine(&paths.wal_dir, named)?)
}

impl fmt::Display for Inspection {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(out, "stream {}", self.stream)?;
        writeln!(out, "  stream dir:  {}", self.paths.stream_dir.display())?;
        writeln!(out, "  wal:         {}", self.paths.wal_dir.display())?;
        writeln!(out, "  quarantine:  {}", self.paths.quarantine_dir.display())?;
        writeln!(out, "  checkpoint:  {} (every record below it is delivered)", self.checkpoint)?;
        match &self.wal.committed_mark {
            Some(mark) => writeln!(
                out,
                "  committed:   {} bytes of segment {} (records below {}) recorded as synced",
                mark.len, mark.segment_first_sequence, mark.end_sequence
            )?,
            None => writeln!(out, "  committed:   no mark recorded")?,
        }
        writeln!(out, "segments ({}):", self.wal.segments.len())?;
        for segment in &self.wal.segments {
            let scan = &segment.scan;
            let status = match &scan.status {
                SegmentStatus::Ok => "ok".to_string(),
                SegmentStatus::TornTail { offset, reason } => {
                    format!("torn tail at offset {offset} ({reason}); the next start cuts it")
                }
                SegmentStatus::Damaged { offset, reason } => format!("DAMAGED at offset {offset}: {reason}"),
            };
            writeln!(
                out,
                "  {}  {} bytes  sequences {}..{}  {} frames  {} records  {status}",
                segment.path.display(),
                scan.file_len,
                segment.first_sequence,
                scan.end_sequence,
                scan.frames,
                scan.records,
            )?;
        }
        writeln!(out, "set aside ({}):", self.wal.set_aside.len())?;
        for range in &self.wal.set_aside {
            writeln!(
                out,
                "  sequences {}..{} from {} (damaged at offset {}: {}), kept in {}",
                range.start,
                range.end,
                range.original_segment.display(),
                range.damaged_offset,
                range.reason,
                range.quarantined_segment.display()
            )?;
        }
        writeln!(out, "intents ({}):", self.pending_intents.len())?;
        for intent in &self.pending_intents {
            let route = match (&intent.error_output_type, intent.partition.is_empty()) {
                (Some(error_output_type), _) => format!("  error output {error_output_type}"),
                (None, false) => format!("  partition {:?}", intent.partition),
                (None, true) => String::new(),
            };
            writeln!(out, "  {}  start {}  end {}  {:?}{route}", intent.id, intent.start, intent.end, intent.state)?;
        }
        Ok(())
    }
}
