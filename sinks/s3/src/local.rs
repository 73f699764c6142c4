//! Writes into a local output folder, staged where readers do not look. object_store's
//! `LocalFileSystem` stages each object as `<key>#<n>` beside the final file and renames it into
//! place; a crash (SIGKILL) between the two leaves that file next to the real objects, where a
//! reader taking every file under a prefix counts its records twice. Here an object is written
//! to `<root>/.spillway-staging/<stream>/<uuid>`, fsynced, and renamed to its key; the new
//! directories on its way are fsynced too, so "written" means on disk, as it did before. What a
//! crash leaves in the staging folder is removed when the sink is built at the next start.
//!
//! Reads (listing, `head`) still go through `LocalFileSystem`.
//! Must not: write anywhere but under its root (keys are validated object paths: no `.` or `..`
//! segment, see `parse_location`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// The folder under a local sink's root that holds objects being written.
pub const STAGING_DIR: &str = ".spillway-staging";

/// A local output folder's writer.
#[derive(Debug, Clone)]
pub(crate) struct LocalWriter {
    root: PathBuf,
    staging: PathBuf,
}

impl LocalWriter {
    /// Blocking: remove what a crash left in the stream's staging folder (made at the first
    /// write, so a sink that never writes leaves none). The folder is per stream, so a stream
    /// created later never removes another one's writes.
    pub fn open(root: &Path, stream: &str) -> std::io::Result<LocalWriter> {
        let staging = root.join(STAGING_DIR).join(stream);
        let entries = match std::fs::read_dir(&staging) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LocalWriter { root: root.to_path_buf(), staging });
            }
            Err(error) => return Err(error),
        };
        let mut removed = 0usize;
        for entry in entries {
            let path = entry?.path();
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        if removed > 0 {
            tracing::info!(
                stream,
                folder = %staging.display(),
                removed,
                "removed partly written objects left by a crash (their batches are written again)"
            );
        }
        Ok(LocalWriter { root: root.to_path_buf(), staging })
    }

    /// Write `chunks` as the object at `key` (a validated object path), replacing what is there.
    pub async fn write(&self, key: &str, chunks: Vec<Bytes>) -> object_store::Result<()> {
        let writer = self.clone();
        let key = key.to_string();
        let written = tokio::task::spawn_blocking(move || writer.write_blocking(&key, &chunks)).await;
        match written {
            Ok(result) => result
                .map_err(|source| object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(source) }),
            Err(join) => Err(object_store::Error::JoinError { source: join }),
        }
    }

    fn write_blocking(&self, key: &str, chunks: &[Bytes]) -> std::io::Result<()> {
        let target = self.root.join(key);
        let staged = self.staging.join(uuid::Uuid::new_v4().simple().to_string());
        let result = (|| {
            let mut file = match File::create_new(&staged) {
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    // The first write, or the output folder was removed and made again.
                    std::fs::create_dir_all(&self.staging)?;
                    File::create_new(&staged)?
                }
                other => other?,
            };
            for chunk in chunks {
                file.write_all(chunk)?;
            }
            file.sync_all()?;
            let parent = target.parent().unwrap_or(&self.root);
            let created = create_dirs(parent, &self.root)?;
            std::fs::rename(&staged, &target)?;
            // The rename and every folder made on the way must survive a power loss.
            sync_dir(parent)?;
            for dir in created {
                if let Some(above) = dir.parent() {
                    sync_dir(above)?;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        result
    }
}

/// `create_dir_all` that returns the folders it made (outermost first), below `root`.
fn create_dirs(dir: &Path, root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current {
        if path == root || path.is_dir() {
            break;
        }
        missing.push(path.to_path_buf());
        current = path.parent();
    }
    missing.reverse();
    for path in &missing {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
    }
    Ok(missing)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes free for unprivileged writers on the filesystem holding `path` (`statvfs`'s `f_bavail`).
pub fn available_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stats.blocks_available().saturating_mul(stats.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(root: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    found.push(path.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        found.sort();
        found
    }

    #[tokio::test]
    async fn objects_land_at_their_key_and_nothing_is_left_beside_them() {
        let root = tempfile::tempdir().unwrap();
        let writer = LocalWriter::open(root.path(), "s").unwrap();
        writer.write("2026/12/06/a.gz", vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]).await.unwrap();
        writer.write("2026/12/06/a.gz", vec![Bytes::from_static(b"abc")]).await.unwrap();
        writer.write("top", vec![]).await.unwrap();
        assert_eq!(files_under(root.path()), ["2026/12/06/a.gz", "top"]);
        assert_eq!(std::fs::read(root.path().join("2026/12/06/a.gz")).unwrap(), b"abc");
    }

    #[tokio::test]
    async fn an_output_folder_made_again_gets_its_staging_folder_back() {
        let root = tempfile::tempdir().unwrap();
        let writer = LocalWriter::open(root.path(), "s").unwrap();
        writer.write("first", vec![Bytes::from_static(b"1")]).await.unwrap();
        std::fs::remove_dir_all(root.path().join(STAGING_DIR)).unwrap();
        writer.write("k", vec![Bytes::from_static(b"x")]).await.unwrap();
        assert_eq!(std::fs::read(root.path().join("k")).unwrap(), b"x");
    }

    #[test]
    fn a_sink_that_never_writes_leaves_no_staging_folder() {
        let root = tempfile::tempdir().unwrap();
        LocalWriter::open(root.path(), "s").unwrap();
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_crash_s_leftovers_are_removed_at_open_and_only_the_stream_s_own() {
        let root = tempfile::tempdir().unwrap();
        let mine = root.path().join(STAGING_DIR).join("s");
        let other = root.path().join(STAGING_DIR).join("t");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(mine.join("half-written"), b"x").unwrap();
        std::fs::write(other.join("in-flight"), b"y").unwrap();
        LocalWriter::open(root.path(), "s").unwrap();
        assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 0);
        assert!(other.join("in-flight").exists());
    }

    #[test]
    fn free_space_is_read() {
        let root = tempfile::tempdir().unwrap();
        assert!(available_bytes(root.path()).unwrap() > 0);
    }
}
