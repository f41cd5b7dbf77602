//! Byte streams: archive compression and one bounded read-ahead pipeline, shared by the
//! cluster image's unpacking and image seeding — and the one error type for a failed
//! file operation.

pub mod compression;
pub mod read_ahead;
pub mod relative;

use std::path::{Path, PathBuf};

/// A failed file operation: what was done, to which path, and the system's answer. A
/// full file system (ENOSPC, EDQUOT) also says how much room is left there.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}{}", .room.as_deref().map(Room::to_string).unwrap_or_default())]
pub struct PathError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
    /// The room on the path's file system, looked up when the error was "no space"
    /// (boxed: most errors have none, and every `Result` carries the size).
    pub room: Option<Box<Room>>,
}

/// How full a file system was when a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Bytes free there.
    pub free: u64,
    /// Bytes the operation needed there, when known.
    pub needed: Option<u64>,
}

impl std::fmt::Display for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.needed {
            Some(n) => write!(
                f,
                " (needs {}, {} free on its file system)",
                bytes(n),
                bytes(self.free)
            ),
            None => write!(f, " ({} free on its file system)", bytes(self.free)),
        }
    }
}

/// Whether an I/O error means the file system (or the user's quota) is full.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT
    )
}

/// Bytes available to bootstrap on the file system holding `path`, or its nearest
/// existing ancestor (a folder not made yet lands there).
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let mut at = path.to_path_buf();
    while !at.exists() && at.pop() {}
    let stat = nix::sys::statvfs::statvfs(&at)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// A byte count for people: `12.3 MiB (12897484 bytes)`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "";
    for u in UNITS {
        value /= 1024.0;
        unit = u;
        if value < 1024.0 {
            break;
        }
    }
    format!("{value:.1} {unit} ({n} bytes)")
}

impl PathError {
    /// An error on a real path of this machine; a "no space" error looks up the room
    /// left there.
    pub fn new(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        let free = is_no_space(&source)
            .then(|| free_space(path).ok())
            .flatten();
        PathError::shown_as(op, path, source, free)
    }

    /// An error on a path shown as given (a host path under `--root`), where the free
    /// space cannot be looked up from the path itself.
    pub fn shown_as(
        op: &'static str,
        path: &Path,
        source: std::io::Error,
        free: Option<u64>,
    ) -> Self {
        PathError {
            op,
            path: path.to_path_buf(),
            source,
            room: free.map(|free| Box::new(Room { free, needed: None })),
        }
    }

    /// Notes how many bytes the operation needed (shown when the file system was full).
    pub fn needing(mut self, bytes: u64) -> Self {
        if let Some(room) = &mut self.room {
            room.needed = Some(bytes);
        }
        self
    }

    /// A function that wraps an I/O error for `op` on `path`, for `map_err`.
    pub fn of<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> PathError + 'a {
        move |source| PathError::new(op, path, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_how_much_room_there_is_and_was_needed() {
        let full = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert!(is_no_space(&full));
        let e = PathError::shown_as("write", Path::new("/var/lib/x"), full, Some(4096))
            .needing(6 << 20);
        let text = e.to_string();
        assert!(
            text.starts_with("write /var/lib/x: No space left on device"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "(needs 6.0 MiB (6291456 bytes), 4.0 KiB (4096 bytes) free on its file system)"
            ),
            "{text}"
        );
        let other = PathError::new("read", Path::new("/nope"), std::io::Error::other("x"));
        assert!(other.room.is_none());
        assert_eq!(other.needing(1).to_string(), "read /nope: x");
        assert_eq!(bytes(512), "512 bytes");
    }
}
