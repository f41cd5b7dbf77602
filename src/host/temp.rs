//! Temporary files beside the file they will replace (by rename): a random name, created
//! with `O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing planted at a name it might take (a
//! symlink to `/etc/shadow`, say) is ever followed, truncated or renamed into place.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Tries before giving up when the random names are taken (they never should be).
const TRIES: usize = 8;

/// A fresh name beside `dest`: `.<name>.bootstrap-<random>`.
pub fn name_beside(dest: &Path) -> io::Result<PathBuf> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(parent.join(format!(".{name}.bootstrap-{}", crate::random::hex(8)?)))
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
}
