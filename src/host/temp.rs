//! Temporary files beside the file they will replace (by rename): a random name, created
//! with `O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing planted at a name it might take (a
//! symlink to `/etc/shadow`, say) is ever followed, truncated or renamed into place.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Tries before giving up when the random names are taken (they never should be).
const TRIES: usize = 8;

/// A fresh name beside `dest`: `.<name>.bootstrap-<random>`. Temporary files an earlier
/// run left for `dest` when it died between writing and renaming are removed first:
/// nothing else makes them, and one `up` at a time writes a given file.
pub fn name_beside(dest: &Path) -> io::Result<PathBuf> {
    remove_stale(dest)?;
    let parent = dest.parent().unwrap_or(Path::new("."));
    Ok(parent.join(format!("{}{}", prefix(dest), crate::random::hex(8)?)))
}

/// What every temporary name for `dest` starts with.
fn prefix(dest: &Path) -> String {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.bootstrap-")
}

/// Removes the temporary files (or links) of `dest` that a killed run left beside it.
pub fn remove_stale(dest: &Path) -> io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let prefix = prefix(dest);
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        // Never a folder: a temporary name is only ever a file or a link.
        if entry.file_type()?.is_dir() {
            continue;
        }
        log::debug!(
            "removing {}, left by a run that died",
            entry.path().display()
        );
        match std::fs::remove_file(entry.path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Creates a new file beside `dest` with `mode`, never an existing one or a symlink.
pub fn create_beside(dest: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..TRIES {
        let temp = name_beside(dest)?;
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&temp)
        {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// Writes `contents` to `dest` atomically: a new file beside it with `mode`, synced,
/// renamed over it. The temporary file is removed when anything fails.
pub fn replace(dest: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (mut file, temp) = create_beside(dest, mode)?;
    let result = io::Write::write_all(&mut file, contents)
        .and_then(|()| file.sync_all())
        .map(|()| crate::fault::point(|| format!("rename:{}", dest.display())))
        .and_then(|()| std::fs::rename(&temp, dest));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_random_and_a_taken_name_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        assert_ne!(name_beside(&dest).unwrap(), name_beside(&dest).unwrap());
        replace(&dest, b"one", 0o600).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn what_a_killed_run_left_is_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(dir.path().join(".f.bootstrap-0123456789abcdef"), "half").unwrap();
        std::fs::write(dir.path().join(".g.bootstrap-0123456789abcdef"), "other").unwrap();
        std::fs::create_dir(dir.path().join(".f.bootstrap-dir")).unwrap();
        replace(&dest, b"whole", 0o600).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [".f.bootstrap-dir", ".g.bootstrap-0123456789abcdef", "f"]
        );
    }
}
