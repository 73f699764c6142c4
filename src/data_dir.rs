//! The exclusive lock on `data_dir`: one spillway process per data directory. Two processes on
//! one folder would hand out the same WAL sequences and batch ids, write the same object keys
//! and lose one side's acknowledged records without a word.
//!
//! The lock is `flock(2)` on `data_dir/spillway.lock` (through `File::try_lock`): the kernel
//! drops it when the process dies, SIGKILL included, so a crash never leaves a stale lock. The
//! file holds the holder's pid, only to name it in the refusal.
//!
//! Also here: the folder's free space, which `/ready` reports (a full WAL disk).
//!
//! Must not: decide anything else about the folder's contents.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "spillway.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data_dir {path} is in use by another spillway process{holder}; \
         two processes on one data_dir would lose records (give each its own data_dir)",
        holder = holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Held { path: PathBuf, holder: Option<u32> },
    #[error("cannot lock data_dir {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Held for as long as the process uses `data_dir`; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Take the lock or fail at once (never waits). Blocking I/O: call before serving.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io_error = |source| LockError::Io { path: data_dir.to_path_buf(), source };
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held { path: data_dir.to_path_buf(), holder });
            }
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }
        file.set_len(0).map_err(io_error)?;
        file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(DataDirLock { _file: file })
    }
}

/// Bytes free for unprivileged writers on the filesystem holding `path` (`statvfs`'s `f_bavail`).
pub fn available_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stats.blocks_available().saturating_mul(stats.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let refused = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(refused, LockError::Held { holder: Some(pid), .. } if pid == std::process::id()), "{refused}");
        assert!(refused.to_string().contains(&format!("(pid {})", std::process::id())), "{refused}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
