//! One tailed file: its identity, its position in the WAL, and reading it a chunk at a time.
//!
//! A file is identified by device + inode, checked with a fingerprint (a CRC of its first bytes),
//! so a new file that reuses a deleted file's inode is read from its start rather than resumed
//! at the old file's offset. Its WAL shard is `file:<device>:<inode>` and its position
//! `<offset>:<fingerprint length>:<fingerprint>:<path>` — the offset after the last line the WAL
//! holds (the path is there for people reading positions, never used to find the file).
//!
//! Must not: block the async runtime (every method here does blocking I/O and runs on the
//! blocking pool), or emit a record before the line (or group of lines) it holds is complete.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::lines::Splitter;

/// Bytes of a file's start its fingerprint covers (fewer while the file is shorter).
pub const FINGERPRINT_BYTES: u64 = 256;
/// Bytes read per step.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// The first bytes of a gzip file: a rotated-and-compressed log is not read again as text.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A file's identity across renames: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub device: u64,
    pub inode: u64,
}

impl FileId {
    pub fn of(metadata: &std::fs::Metadata) -> Self {
        Self { device: metadata.dev(), inode: metadata.ino() }
    }

    /// The file's shard name in WAL positions.
    pub fn shard(self) -> String {
        format!("{SHARD_PREFIX}{}:{}", self.device, self.inode)
    }

    pub fn parse_shard(shard: &str) -> Option<Self> {
        let (device, inode) = shard.strip_prefix(SHARD_PREFIX)?.split_once(':')?;
        Some(Self { device: device.parse().ok()?, inode: inode.parse().ok()? })
    }
}

const SHARD_PREFIX: &str = "file:";

/// A CRC of a file's first `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub len: u64,
    pub crc: u32,
}

impl Fingerprint {
    /// The fingerprint of `file`'s first `len` bytes (fewer if it is shorter).
    fn of(file: &File, len: u64) -> std::io::Result<Self> {
        let mut bytes = vec![0u8; len as usize];
        let mut read = 0;
        while read < bytes.len() {
            match file.read_at(&mut bytes[read..], read as u64)? {
                0 => break,
                n => read += n,
            }
        }
        Ok(Self { len: read as u64, crc: crc32c::crc32c(&bytes[..read]) })
    }
}

/// Where a file's reader stands, as the WAL holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub offset: u64,
    pub fingerprint: Fingerprint,
    /// Where the file was when the position was saved (for messages only).
    pub path: String,
}

impl Saved {
    pub fn parse(position: &str) -> Option<Self> {
        let mut fields = position.splitn(4, ':');
        let offset = fields.next()?.parse().ok()?;
        let len = fields.next()?.parse().ok()?;
        let crc = u32::from_str_radix(fields.next()?, 16).ok()?;
        let path = fields.next().unwrap_or_default().to_string();
        Some(Self { offset, fingerprint: Fingerprint { len, crc }, path })
    }
}

/// Why a file is not tailed (now).
pub enum Refused {
    /// It starts with gzip's magic bytes: a rotated, compressed copy of a log already read.
    Gzip,
    /// It is a copy of a file being read (copytruncate's copy, before the truncation is seen):
    /// it is opened once the original is truncated or gone, at the offset the original was
    /// read to.
    CopyOfLiveFile,
}

/// A file being tailed.
pub struct Tail {
    file: File,
    pub id: FileId,
    pub path: PathBuf,
    /// The offset after the last record handed out: where a restart resumes.
    committed: u64,
    /// Bytes read after `committed` and not yet handed out as records.
    buffer: BytesMut,
    splitter: Splitter,
    fingerprint: Fingerprint,
}

/// What one read step found.
pub struct Step {
    pub records: Vec<Bytes>,
    /// Nothing more to read for now.
    pub at_end: bool,
    /// The file was truncated or rewritten: its fingerprint and read offset before that (a copy
    /// of it made by copytruncate continues from there).
    pub truncated: Option<(Fingerprint, u64)>,
    pub notes: Vec<String>,
}

impl Tail {
    /// Open `path` to be tailed from where `saved` says, else from
    /// `fresh_offset(fingerprint, length)` (`Err`: not now). `Ok(None)`: the file is gone.
    pub fn open(
        path: &Path,
        saved: Option<&Saved>,
        fresh_offset: impl FnOnce(Fingerprint, u64) -> Result<u64, Refused>,
        splitter: Splitter,
        notes: &mut Vec<String>,
    ) -> std::io::Result<Result<Option<Tail>, Refused>> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
            Err(error) => return Err(error),
        };
        let metadata = file.metadata()?;
        let length = metadata.len();
        let mut magic = [0u8; 2];
        if length >= 2 && file.read_at(&mut magic, 0)? == 2 && magic == GZIP_MAGIC {
            return Ok(Err(Refused::Gzip));
        }
        let fingerprint = Fingerprint::of(&file, FINGERPRINT_BYTES)?;
        let offset = match saved {
            Some(saved) => {
                let now = Fingerprint::of(&file, saved.fingerprint.len)?;
                if now != saved.fingerprint {
                    notes.push(format!(
                        "{}: a new file reuses the inode of one read before (its first bytes differ); reading it from its start",
                        path.display()
                    ));
                    0
                } else if saved.offset > length {
                    notes.push(format!(
                        "{}: the file is shorter than the saved offset {}; reading it from its start",
                        path.display(),
                        saved.offset
                    ));
                    0
                } else {
                    saved.offset
                }
            }
            None => match fresh_offset(fingerprint, length) {
                Ok(offset) => offset.min(length),
                Err(refused) => return Ok(Err(refused)),
            },
        };
        file.seek(SeekFrom::Start(offset))?;
        Ok(Ok(Some(Tail {
            file,
            id: FileId::of(&metadata),
            path: path.to_path_buf(),
            committed: offset,
            buffer: BytesMut::new(),
            splitter,
            fingerprint,
        })))
    }

    /// The fingerprint of the file's first bytes, and the offset after the last record handed out.
    pub fn progress(&self) -> (Fingerprint, u64) {
        (self.fingerprint, self.committed)
    }

    /// The position to save with the records handed out so far.
    pub fn position(&self) -> String {
        format!("{}:{}:{:08x}:{}", self.committed, self.fingerprint.len, self.fingerprint.crc, self.path.display())
    }

    /// Read the next chunk and cut the records it completes.
    pub fn read_step(&mut self) -> std::io::Result<Step> {
        let mut notes = Vec::new();
        // Checked before every read, not only at the end: a file truncated and written past the
        // old offset again must not be read from the middle of a line.
        if let Some(before) = self.check_truncation(&mut notes)? {
            return Ok(Step { records: Vec::new(), at_end: false, truncated: Some(before), notes });
        }
        let start = self.buffer.len();
        self.buffer.resize(start + READ_CHUNK_BYTES, 0);
        let read = match self.file.read(&mut self.buffer[start..]) {
            Ok(read) => read,
            Err(error) => {
                self.buffer.truncate(start);
                return Err(error);
            }
        };
        self.buffer.truncate(start + read);
        if read == 0 {
            return Ok(Step { records: Vec::new(), at_end: true, truncated: None, notes });
        }
        if self.fingerprint.len < FINGERPRINT_BYTES {
            // The file was shorter than a full fingerprint when opened: widen it as it grows.
            self.fingerprint = Fingerprint::of(&self.file, FINGERPRINT_BYTES)?;
        }
        let mut records = Vec::new();
        self.committed += self.splitter.split(&mut self.buffer, &mut records) as u64;
        let at_end = read < READ_CHUNK_BYTES && self.buffer.len() < READ_CHUNK_BYTES;
        Ok(Step { records, at_end, truncated: None, notes })
    }

    /// Hand out what is held as complete: a multi-line group that waited long enough, and (when
    /// the file was rotated away and will not grow) its unterminated last line.
    pub fn flush(&mut self, partial_too: bool) -> Vec<Bytes> {
        let mut records = Vec::new();
        self.committed += self.splitter.flush(&mut self.buffer, partial_too, &mut records) as u64;
        records
    }

    /// Whether a multi-line group waits for its next start line.
    pub fn has_pending_group(&self) -> bool {
        self.splitter.has_pending()
    }

    /// copytruncate: the file is now shorter than what was read, or its first bytes changed, so
    /// it was truncated and is being written again from its start. Read it again from there
    /// (what was not read yet before the truncation is in the copy, which continues from here).
    fn check_truncation(&mut self, notes: &mut Vec<String>) -> std::io::Result<Option<(Fingerprint, u64)>> {
        let length = self.file.metadata()?.len();
        let read_to = self.committed + self.buffer.len() as u64;
        if length >= read_to && Fingerprint::of(&self.file, self.fingerprint.len)? == self.fingerprint {
            return Ok(None);
        }
        notes.push(format!(
            "{}: truncated or rewritten below offset {read_to} (copytruncate); reading it again from its start",
            self.path.display()
        ));
        let before = self.progress();
        self.file.seek(SeekFrom::Start(0))?;
        self.committed = 0;
        self.buffer.clear();
        self.splitter.reset();
        self.fingerprint = Fingerprint::of(&self.file, FINGERPRINT_BYTES)?;
        Ok(Some(before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn splitter() -> Splitter {
        Splitter::new(1000, None)
    }

    fn text(records: &[Bytes]) -> Vec<String> {
        records.iter().map(|record| String::from_utf8_lossy(record).into_owned()).collect()
    }

    #[test]
    fn a_saved_position_resumes_and_an_inode_reused_by_another_file_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, "first line\nsecond line\n").unwrap();
        let mut notes = Vec::new();
        let Ok(Some(mut tail)) = Tail::open(&path, None, |_, _| Ok(0), splitter(), &mut notes).unwrap() else {
            panic!()
        };
        let step = tail.read_step().unwrap();
        assert_eq!(text(&step.records), ["first line", "second line"]);
        let saved = Saved::parse(&tail.position()).unwrap();
        assert_eq!(saved.offset, 23);

        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"third\n").unwrap();
        let Ok(Some(mut resumed)) = Tail::open(&path, Some(&saved), |_, _| Ok(0), splitter(), &mut notes).unwrap()
        else {
            panic!()
        };
        assert_eq!(text(&resumed.read_step().unwrap().records), ["third"]);
        assert!(notes.is_empty(), "{notes:?}");

        // Same inode, other first bytes: not the file the position belongs to.
        std::fs::write(&path, "another file entirely, longer than the old offset\n").unwrap();
        let Ok(Some(mut other)) = Tail::open(&path, Some(&saved), |_, _| Ok(0), splitter(), &mut notes).unwrap() else {
            panic!()
        };
        assert_eq!(text(&other.read_step().unwrap().records), ["another file entirely, longer than the old offset"]);
        assert!(notes[0].contains("reuses the inode"), "{notes:?}");
    }

    #[test]
    fn gzip_files_are_refused_and_truncation_rereads_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("app.log.1.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        let mut notes = Vec::new();
        assert!(matches!(Tail::open(&gz, None, |_, _| Ok(0), splitter(), &mut notes).unwrap(), Err(Refused::Gzip)));

        let path = dir.path().join("app.log");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        let Ok(Some(mut tail)) = Tail::open(&path, None, |_, _| Ok(0), splitter(), &mut notes).unwrap() else {
            panic!()
        };
        assert_eq!(text(&tail.read_step().unwrap().records), ["one", "two"]);
        std::fs::write(&path, "x\n").unwrap();
        let step = tail.read_step().unwrap();
        assert!(step.truncated.is_some() && step.records.is_empty());
        assert!(step.notes[0].contains("copytruncate"), "{:?}", step.notes);
        assert_eq!(text(&tail.read_step().unwrap().records), ["x"]);
    }

    #[test]
    fn read_from_end_starts_at_the_length_and_a_rotated_files_last_line_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut notes = Vec::new();
        let Ok(Some(mut tail)) = Tail::open(&path, None, |_, length| Ok(length), splitter(), &mut notes).unwrap()
        else {
            panic!()
        };
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"new\nno newline").unwrap();
        assert_eq!(text(&tail.read_step().unwrap().records), ["new"]);
        assert_eq!(text(&tail.flush(true)), ["no newline"]);
        assert_eq!(Saved::parse(&tail.position()).unwrap().offset, 18);
    }
}
