//! Why a cluster-image archive was not unpacked (or its link not switched).

use std::io;
use std::path::{Path, PathBuf};

use super::extract::ExtractError;
use super::image::RootfsError;

/// Why an archive was not unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Io(#[from] crate::io::PathError),
    #[error("{archive}: {format} archives are not supported; use a plain, gzip or zstd tar")]
    Unsupported {
        archive: PathBuf,
        format: &'static str,
    },
    /// The file system holding DEST is too small for the archive (checked against its
    /// free space while unpacking into the staging folder).
    #[error("not enough space to unpack {archive} into {dest}: it needs {}, {} free on its file system", crate::io::bytes(*.needed), crate::io::bytes(*.free))]
    NoSpace {
        archive: PathBuf,
        dest: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("{archive}: {source}")]
    Extract {
        archive: PathBuf,
        #[source]
        source: ExtractError,
    },
    #[error("{archive}: truncated: the stream ends after entry {last:?} without an end-of-archive marker")]
    NoEndMarker { archive: PathBuf, last: String },
    #[error("{archive}: SHA-256 is {actual}, expected {expected}{}", .source_of_expected)]
    Digest {
        archive: PathBuf,
        expected: String,
        actual: String,
        source_of_expected: String,
    },
    #[error("{path}: {reason}")]
    BadDigestFile { path: PathBuf, reason: String },
    #[error("{archive}: unpacked, but not a usable cluster image: {source}")]
    Image {
        archive: PathBuf,
        #[source]
        source: RootfsError,
    },
    #[error("{dest} exists and is not a folder or a symlink bootstrap made")]
    BadDest { dest: PathBuf },
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("{url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url}: a cluster image from a URL needs its SHA-256: set rootfs.sha256 (or --sha256), or publish {url}.sha256 beside it")]
    NoDigest { url: String },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io(crate::io::PathError::new(op, path, source))
}
