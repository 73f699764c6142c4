//! `spillway run --watch-config`: notice that the configuration file's contents changed.
//!
//! Polls: every interval the file is read and its contents hashed, and a different hash from the
//! last one seen is a change. Reading a few KiB every two seconds costs nothing measurable, and
//! polling sees every way a file gets replaced — an editor's write-to-temp-and-rename, a
//! Kubernetes ConfigMap's symlink swap, a network or overlay mount — where inotify (the `notify`
//! crate) misses renames of the watched file and events on network mounts unless each case is
//! handled; hashing the contents rather than trusting the modification time also sees a change
//! on filesystems with one-second timestamps, and ignores a `touch`.
//!
//! Must not: parse or apply the file; the reloader does that (once per change: a broken file is
//! reported once, not every interval).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default interval between two looks at the file.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

pub struct ConfigWatch {
    path: PathBuf,
    interval: tokio::time::Interval,
    /// The SHA-256 of the contents last seen; `None` while the file cannot be read.
    last: Option<Digest>,
}

impl ConfigWatch {
    /// Start from the file as it is now (the contents the process started with).
    pub async fn new(path: &Path, interval: Duration) -> Self {
        let mut interval = tokio::time::interval(interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await; // the first tick completes at once
        let last = contents_hash(path).await;
        Self { path: path.to_path_buf(), interval, last }
    }

    /// Wait until the file's contents differ from the last ones seen.
    pub async fn changed(&mut self) {
        loop {
            self.interval.tick().await;
            let now = contents_hash(&self.path).await;
            // A file that is briefly missing (between an unlink and a rename) is not a change.
            if now.is_some() && now != self.last {
                self.last = now;
                return;
            }
        }
    }
}

type Digest = [u8; 32];

async fn contents_hash(path: &Path) -> Option<Digest> {
    use sha2::Digest as _;
    let contents = tokio::fs::read(path).await.ok()?;
    Some(sha2::Sha256::digest(&contents).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_of_contents_is_seen_and_a_rewrite_of_the_same_bytes_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spillway.yaml");
        std::fs::write(&path, "streams: []\n").expect("write");
        let mut watch = ConfigWatch::new(&path, Duration::from_millis(10)).await;
        std::fs::write(&path, "streams: []\n").expect("rewrite");
        let same = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
        assert!(same.is_err(), "the same contents are not a change");
        // Replaced the way editors do: a new file renamed over the old one.
        std::fs::write(dir.path().join("next.yaml"), "data_dir: ./x\n").expect("write");
        std::fs::rename(dir.path().join("next.yaml"), &path).expect("rename");
        tokio::time::timeout(Duration::from_secs(5), watch.changed()).await.expect("the new contents are seen");
    }
}
