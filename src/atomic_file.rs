//! Replacing a small file so that a crash leaves the old or the new content, never a mix: the
//! checkpoint, the intents, the WAL's positions file, the catalog and the instance id all do.
//!
//! Must not: hold state, or know what the bytes mean.

use std::io::Write;
use std::path::Path;

/// Replace `path` with `bytes` so that a crash leaves the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
