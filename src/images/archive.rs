//! Image archives as they ship in a cluster image: compression recognised by magic
//! bytes, and one streaming pass that stages every file so that nothing big is held in
//! memory and each archive is decompressed once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::report::io_error;
use super::report::SeedError;
use super::storage::{hash_stream, Digest, Layout, Staging};

/// The small files of docker-save and OCI layouts, read into memory.
const METADATA_FILES: [&str; 4] = ["manifest.json", "index.json", "oci-layout", "repositories"];
/// Bound on any file read into memory whole: metadata, image configs.
pub(crate) const METADATA_LIMIT: u64 = 16 * 1024 * 1024;
/// Symlinks followed inside an archive before giving up on a loop.
const MAX_LINK_HOPS: usize = 32;
/// Buffer for reading a plain archive: tar headers come through it, file contents
/// mostly bypass it.
const READ_BUFFER: usize = 256 * 1024;
/// Bytes decompressed ahead at a time, and how many such chunks may wait.
const READ_CHUNK: usize = 1024 * 1024;
const READ_AHEAD: usize = 4;

pub(crate) use crate::io::compression::{sniff, Compression};
use crate::io::read_ahead::{self, Shape};

/// Opens a file decompressed as `compression` says. Decompression runs ahead on a
/// thread of its own; a plain file is read on the caller's, straight into its buffers:
/// reading costs little next to hashing, and a thread would add a copy of every byte.
pub(crate) fn open_decompressed(
    path: &Path,
    compression: Compression,
) -> io::Result<Box<dyn Read>> {
    let file = File::open(path)?;
    Ok(match compression {
        Compression::None => Box::new(BufReader::with_capacity(READ_BUFFER, file)),
        _ => {
            let raw = BufReader::with_capacity(READ_CHUNK, file);
            let shape = Shape {
                chunk: READ_CHUNK,
                depth: READ_AHEAD,
            };
            Box::new(read_ahead::spawn(raw, compression, shape, |_| Ok(())))
        }
    })
}

/// One file of an archive: what it hashed to, and where its bytes are now.
#[derive(Debug, Clone)]
pub(crate) struct ArchiveFile {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    /// The staged copy; `None` when the blob was already in the storage, so was only
    /// hashed, not written.
    pub(crate) staged: Option<super::storage::StagedFile>,
}

impl ArchiveFile {
    /// Where the bytes can be read: the staged copy, or the stored blob.
    pub(crate) fn content_path(&self, layout: &Layout) -> PathBuf {
        match &self.staged {
            Some(staged) => staged.path.clone(),
            None => layout.blob_data(&self.digest),
        }
    }
}

/// Everything one pass over an archive learnt.
#[derive(Debug, Default)]
pub(crate) struct ArchiveContents {
    /// `manifest.json`, `index.json` and the like, whole.
    pub(crate) metadata: BTreeMap<String, Vec<u8>>,
    files: BTreeMap<String, ArchiveFile>,
    /// Symlinks and hardlinks: entry path to target path, both archive-relative.
    links: BTreeMap<String, String>,
}

impl ArchiveContents {
    /// The file at an archive path, through symlinks and hardlinks.
    pub(crate) fn file(&self, path: &str) -> Option<&ArchiveFile> {
        let mut path = normalize(path)?;
        for _ in 0..MAX_LINK_HOPS {
            if let Some(file) = self.files.get(&path) {
                return Some(file);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }

    /// An OCI layout blob by digest.
    pub(crate) fn blob(&self, digest: &Digest) -> Option<&ArchiveFile> {
        self.file(&format!("blobs/sha256/{}", digest.hex()))
    }
}

/// Lexically normalises an archive path (`./a//b/../c` is `a/c`); `None` when it climbs
/// out of the archive.
pub(super) fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// Reads an archive once, start to end. Metadata files are kept in memory (bounded);
/// every other regular file is streamed into the staging folder while being hashed.
/// Files at `blobs/sha256/<hex>` are checked against their name here, and when the
/// storage already holds that blob they are only hashed, not written.
pub(crate) fn read_archive(
    archive: &Path,
    layout: &Layout,
    staging: &mut Staging,
) -> Result<ArchiveContents, SeedError> {
    let compression = match sniff(archive).map_err(|e| io_error("read", archive, e))? {
        Ok(compression) => compression,
        Err(format) => {
            return Err(SeedError::UnsupportedCompression {
                archive: archive.to_path_buf(),
                format,
            })
        }
    };
    log::debug!("{}: {compression:?}", archive.display());
    let reader =
        open_decompressed(archive, compression).map_err(|e| io_error("open", archive, e))?;
    let read_error = |entry: Option<&str>, source: io::Error| SeedError::Read {
        archive: archive.to_path_buf(),
        entry: entry.map(str::to_string),
        source,
    };
    let malformed = |entry: &str, reason: String| SeedError::Malformed {
        archive: archive.to_path_buf(),
        entry: entry.to_string(),
        reason,
    };

    let mut contents = ArchiveContents::default();
    let mut tar = tar::Archive::new(reader);
    let entries = tar.entries().map_err(|e| read_error(None, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(None, e))?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = normalize(&raw_path)
            .ok_or_else(|| malformed(&raw_path, "the path climbs out of the archive".into()))?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            // Symlinks are relative to their folder (docker save links repeated layers
            // as `../<id>/layer.tar`); hardlinks name a path from the archive root.
            let joined = match (kind.is_symlink(), path.rsplit_once('/')) {
                (true, Some((dir, _))) if !target.starts_with('/') => format!("{dir}/{target}"),
                _ => target.clone(),
            };
            let resolved = normalize(&joined).ok_or_else(|| {
                malformed(
                    &raw_path,
                    format!("the link target {target:?} climbs out of the archive"),
                )
            })?;
            contents.links.insert(path, resolved);
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) || path.is_empty() {
            continue;
        }
        if METADATA_FILES.contains(&path.as_str()) {
            let size = entry.size();
            if size > METADATA_LIMIT {
                return Err(SeedError::TooLarge {
                    archive: archive.to_path_buf(),
                    entry: path,
                    size,
                    limit: METADATA_LIMIT,
                });
            }
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| read_error(Some(&path), e))?;
            contents.metadata.insert(path, bytes);
            continue;
        }
        let named = match path.strip_prefix("blobs/sha256/") {
            Some(hex) => Some(Digest::from_hex(hex).ok_or_else(|| {
                malformed(
                    &path,
                    "an OCI layout blob must be named by its 64-digit sha256".into(),
                )
            })?),
            None => None,
        };
        let file = match &named {
            Some(digest) if layout.has_blob(digest)? => {
                let (digest, size) =
                    hash_stream(&mut entry).map_err(|e| read_error(Some(&path), e))?;
                ArchiveFile {
                    digest,
                    size,
                    staged: None,
                }
            }
            _ => {
                let size = entry.size();
                let staged =
                    staging.stage_stream(&mut entry, size, |e| read_error(Some(&path), e))?;
                ArchiveFile {
                    digest: staged.digest.clone(),
                    size: staged.size,
                    staged: Some(staged),
                }
            }
        };
        if let Some(expected) = named {
            if file.digest != expected {
                return Err(SeedError::DigestMismatch {
                    archive: archive.to_path_buf(),
                    entry: path,
                    expected: expected.to_string(),
                    actual: file.digest.to_string(),
                });
            }
        }
        contents.files.insert(path, file);
    }
    // What was staged is read back while planning.
    staging.wait_for_writes()?;
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_archive_paths() {
        assert_eq!(normalize("./a//b/../c").as_deref(), Some("a/c"));
        assert_eq!(
            normalize("/manifest.json").as_deref(),
            Some("manifest.json")
        );
        assert_eq!(normalize("a/../../etc"), None);
    }

    fn zstd_file(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join("data.zst");
        std::fs::write(&path, zstd::encode_all(bytes, 1).expect("compress")).expect("write");
        path
    }

    #[test]
    fn read_ahead_passes_the_stream_through_and_reports_corruption() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data: Vec<u8> = (0..5 * READ_CHUNK + 123).map(|i| (i % 253) as u8).collect();
        let path = zstd_file(dir.path(), &data);
        let mut out = Vec::new();
        open_decompressed(&path, Compression::Zstd)
            .expect("open")
            .read_to_end(&mut out)
            .expect("read");
        assert!(out == data, "the stream comes through whole");

        let compressed = std::fs::read(&path).expect("read");
        std::fs::write(&path, &compressed[..compressed.len() / 2]).expect("truncate");
        let mut reader = open_decompressed(&path, Compression::Zstd).expect("open");
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn read_ahead_stops_when_dropped_early() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Far more than the read-ahead holds, so the thread is waiting to send.
        let data = vec![7u8; 4 * READ_AHEAD * READ_CHUNK];
        let path = zstd_file(dir.path(), &data);
        let mut reader = open_decompressed(&path, Compression::Zstd).expect("open");
        let mut first = [0u8; 10];
        reader.read_exact(&mut first).expect("read");
        drop(reader); // joins the thread: this test hangs if it does not stop
    }
}
