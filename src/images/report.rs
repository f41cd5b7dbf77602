//! What seeding reports: the images it made servable and its counts, or why it failed.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::image_ref::ImageRefError;

/// Why seeding failed. Every variant names the archive (or storage tree) and the entry
/// or path involved.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Io(#[from] crate::io::PathError),
    #[error("{archive}: reading {}: {source}", entry.as_deref().unwrap_or("the archive"))]
    Read {
        archive: PathBuf,
        entry: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("{archive}: {format}-compressed; image archives may be plain tar, gzip or zstd")]
    UnsupportedCompression {
        archive: PathBuf,
        format: &'static str,
    },
    #[error("{archive}: {entry}: the content's digest is {actual}, but {expected} was expected")]
    DigestMismatch {
        archive: PathBuf,
        entry: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{archive}: {entry}: the content is {actual} bytes, but the descriptor says {expected}"
    )]
    SizeMismatch {
        archive: PathBuf,
        entry: String,
        expected: u64,
        actual: u64,
    },
    #[error("{archive}: {entry}: {reason}")]
    Malformed {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{archive}: {entry}: {what} is missing")]
    Missing {
        archive: PathBuf,
        entry: String,
        what: String,
    },
    /// The storage's file system filled up; the archive's staged files are gone again.
    #[error("not enough space to seed {archive} into {storage}: it holds {}, {} free on its file system ({write})", crate::io::bytes(*.needed), crate::io::bytes(*.free))]
    NoSpace {
        archive: PathBuf,
        storage: PathBuf,
        /// What the archive holds: the most its blobs can take.
        needed: u64,
        free: u64,
        /// The write that failed.
        write: String,
    },
    #[error("{archive}: {entry} is {size} bytes; at most {limit} are read for metadata")]
    TooLarge {
        archive: PathBuf,
        entry: String,
        size: u64,
        limit: u64,
    },
    #[error("{archive}: {entry}: image name {name:?}: {source}")]
    BadName {
        archive: PathBuf,
        entry: String,
        name: String,
        #[source]
        source: ImageRefError,
    },
    #[error("{archive}: not an image archive: it has neither index.json (OCI image layout) nor manifest.json (docker save)")]
    NotImageArchive { archive: PathBuf },
}

/// One tag (or pinned digest) seeding made servable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeededImage {
    /// The repository in the local registry, such as `library/nginx`.
    pub repository: String,
    pub tag: Option<String>,
    /// The manifest digest, `sha256:<hex>`, that the tag resolves to.
    pub digest: String,
}

impl fmt::Display for SeededImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(tag) => write!(f, "{}:{tag}@{}", self.repository, self.digest),
            None => write!(f, "{}@{}", self.repository, self.digest),
        }
    }
}

/// What seeding did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeedReport {
    pub images: Vec<SeededImage>,
    /// Blobs put into the storage by this run.
    pub blobs_written: u64,
    /// Of those written, how many are hardlinks to the source rather than copies.
    pub blobs_linked: u64,
    /// Blobs the images need that the storage already had.
    pub blobs_skipped: u64,
    /// Bytes of the blobs written (hardlinked ones included).
    pub bytes_written: u64,
}

impl SeedReport {
    /// Adds another run's counts and images to this one.
    pub fn merge(&mut self, other: SeedReport) {
        self.images.extend(other.images);
        self.blobs_written += other.blobs_written;
        self.blobs_linked += other.blobs_linked;
        self.blobs_skipped += other.blobs_skipped;
        self.bytes_written += other.bytes_written;
    }
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} image(s), {} blob(s) written ({} bytes, {} hardlinked), {} already present",
            self.images.len(),
            self.blobs_written,
            self.bytes_written,
            self.blobs_linked,
            self.blobs_skipped
        )
    }
}

/// Wraps an I/O error with the operation and path.
pub(crate) fn io_error(op: &'static str, path: &Path, source: io::Error) -> SeedError {
    SeedError::Io(crate::io::PathError::new(op, path, source))
}
