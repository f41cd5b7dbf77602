//! Byte streams: archive compression and one bounded read-ahead pipeline, shared by the
//! cluster image's unpacking and image seeding — and the one error type for a failed
//! file operation.

pub mod compression;
pub mod read_ahead;

use std::path::{Path, PathBuf};

/// A failed file operation: what was done, to which path, and the system's answer.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct PathError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathError {
    pub fn new(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        PathError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// A function that wraps an I/O error for `op` on `path`, for `map_err`.
    pub fn of<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> PathError + 'a {
        move |source| PathError::new(op, path, source)
    }
}
