//! What `run` would refuse that the pure checks ([`super::Config::validate`]) cannot see: files
//! and folders on this machine. For `spillway validate`; it creates no folder and writes nothing
//! but a probe file it removes at once (permission bits do not tell root that a mount is read-only
//! or a pseudo filesystem). Blocking file I/O.
//!
//! Must not: reach the network (that is `validate --connect`).

use std::path::{Path, PathBuf};

use super::{Config, Problem};

/// Every problem with the TLS files, `data_dir` and the sinks' local folders.
pub fn preflight(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(tls) = &config.server.tls {
        for (field, file) in [("cert", &tls.cert), ("key", &tls.key)] {
            if let Err(error) = std::fs::File::open(file) {
                problems.push(Problem {
                    path: format!("server.tls.{field}"),
                    message: format!("cannot read {}: {error}", file.display()),
                });
            }
        }
    }
    if let Err(message) = writable_folder(&config.data_dir) {
        problems.push(Problem { path: "data_dir".into(), message });
    }
    for (index, stream) in config.streams.iter().enumerate() {
        for (field, folder) in stream.sink.descriptor().local_folders() {
            if let Err(message) = writable_folder(&folder) {
                problems.push(Problem { path: format!("streams[{index}].sink.{field}"), message });
            }
        }
    }
    problems
}

/// A folder that exists and can be written, or can be created (its nearest existing ancestor
/// is a folder that can be written).
fn writable_folder(folder: &Path) -> Result<(), String> {
    let mut existing: PathBuf = folder.to_path_buf();
    loop {
        match std::fs::metadata(&existing) {
            Ok(metadata) if metadata.is_dir() => break,
            Ok(_) => return Err(format!("{} is not a folder", existing.display())),
            // A missing path, or one below a file: walk up to what is there.
            Err(error) if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                existing = match existing.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                    _ => PathBuf::from("."),
                };
            }
            Err(error) => return Err(format!("cannot read {}: {error}", existing.display())),
        }
    }
    let probe = existing.join(format!(".spillway-validate-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(error) => {
            let what = if existing == folder { "cannot write in" } else { "cannot create a folder in" };
            Err(format!("{what} {}: {error}", existing.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_that_exist_or_can_be_made_pass_others_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(writable_folder(dir.path()), Ok(()));
        assert_eq!(writable_folder(&dir.path().join("a/b/c")), Ok(()));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(writable_folder(&file.join("below")).unwrap_err().contains("is not a folder"));
        let read_only = writable_folder(Path::new("/proc/spillway-out")).unwrap_err();
        assert!(read_only.starts_with("cannot create a folder in /proc"), "{read_only}");
    }
}
