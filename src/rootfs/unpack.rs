//! Unpacking a cluster-image archive: streamed, verified, staged, versioned.
//!
//! The archive is read once, through a SHA-256 hasher and the decompressor, into a staging
//! folder beside the destination. Only when every entry is safe, the stream ended properly
//! and the digest matches is the staging folder renamed to `DEST.versions/<version>-<sha>`,
//! and `DEST` (a symlink) switched to it in one rename. A failure or a kill therefore never
//! leaves a half image and never touches the image already in place; earlier versions stay
//! for `upgrade` and rollback. An archive already unpacked (same digest, or the same file
//! unchanged) is not unpacked again.

use std::fs::{self, File};
use std::io::{self, BufReader, IsTerminal, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::extract::{self, ExtractError, ExtractReport, Limits, TailReader};
use super::image::{ClusterImage, RootfsError};
use super::link::{fsync_dir, sanitize};
pub use super::link::{switch_link, versions_dir};
use super::tree::HostTree;
use super::unpack_error::io_err;
pub use super::unpack_error::UnpackError;
use crate::host::RootedHost;
use crate::io::compression::{self, Compression};

/// The record left in each unpacked version folder.
pub const MARKER: &str = ".bootstrap-unpacked.json";

/// What to check while unpacking.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// The archive's expected SHA-256 (hex).
    pub sha256: Option<String>,
    /// Where `sha256` came from, for the error message.
    pub sha256_source: Option<String>,
    /// Most bytes of file data to accept; default: free space where DEST lives.
    pub max_size: Option<u64>,
    /// The host architecture, to read per-arch images.
    pub host_arch: String,
    /// The archive is a bundle of binaries inside a cluster image (containerd's), not a
    /// cluster image: it has no digest of its own (the image it came in was verified)
    /// and no `Metadata`.
    pub bundle: bool,
    /// Publish the version folder but leave DEST where it points (`upgrade` switches it
    /// once its checks pass).
    pub no_switch: bool,
}

/// An archive being read: where it comes from (a path, or a URL shown as one), its
/// bytes, its size when known, and the file's identity (zero for a download).
struct Input {
    archive: PathBuf,
    reader: Box<dyn Read + Send>,
    len: Option<u64>,
    identity: (u64, i128, u64, u64),
}

/// What an unpack did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnpackReport {
    pub archive: PathBuf,
    pub sha256: String,
    pub compression: String,
    /// The version folder DEST now points at.
    pub version_dir: PathBuf,
    /// The archive had been unpacked before; nothing was extracted.
    pub reused: bool,
    pub files: u64,
    pub bytes: u64,
    pub stripped_modes: Vec<String>,
}

/// The record in each version folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    archive: PathBuf,
    sha256: String,
    compression: String,
    size: u64,
    mtime_ns: i128,
    dev: u64,
    ino: u64,
    unpacked_at: String,
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    progress: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if let Some(bar) = &self.progress {
            bar.set_position(self.bytes);
        }
        Ok(n)
    }
}

fn stat_identity(meta: &fs::Metadata) -> (u64, i128, u64, u64) {
    let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    (meta.len(), mtime_ns, meta.dev(), meta.ino())
}

/// The expected digest: the one given, else `ARCHIVE.sha256` beside the archive (the
/// `sha256sum` format, or the hex alone), else none. Returns (digest, where it came from).
pub fn expected_digest(
    archive: &Path,
    given: Option<&str>,
) -> Result<Option<(String, String)>, UnpackError> {
    if let Some(hex) = given {
        return Ok(Some((hex.to_ascii_lowercase(), "given".to_owned())));
    }
    let mut name = archive.as_os_str().to_os_string();
    name.push(".sha256");
    let path = PathBuf::from(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let hex = text.split_whitespace().next().unwrap_or("");
    crate::validate::sha256_hex(hex).map_err(|why| UnpackError::BadDigestFile {
        path: path.clone(),
        reason: format!("expected {why}"),
    })?;
    Ok(Some((hex.to_ascii_lowercase(), path.display().to_string())))
}

/// The version folder that already holds this archive, if any: same digest when one is
/// known, else the same file (device, inode, size, mtime) as last time.
pub fn find_unpacked(archive: &Path, dest: &Path, sha256: Option<&str>) -> Option<PathBuf> {
    let identity = fs::metadata(archive).ok().map(|m| stat_identity(&m));
    let entries = fs::read_dir(versions_dir(dest)).ok()?;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(text) = fs::read_to_string(dir.join(MARKER)) else {
            continue;
        };
        let Ok(marker) = serde_json::from_str::<Marker>(&text) else {
            continue;
        };
        let same = match sha256 {
            Some(hex) => marker.sha256 == hex,
            None => {
                marker.archive == archive
                    && identity == Some((marker.size, marker.mtime_ns, marker.dev, marker.ino))
            }
        };
        if same {
            return Some(dir);
        }
    }
    None
}

/// Whether `dest` is a symlink to `version_dir`.
pub fn points_at(dest: &Path, version_dir: &Path) -> bool {
    match (fs::canonicalize(dest), fs::canonicalize(version_dir)) {
        (Ok(a), Ok(b)) => {
            fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) && a == b
        }
        _ => false,
    }
}

/// Removes staging folders left by runs that died (their pid is gone).
fn remove_stale_staging(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let alive = pid
            .parse::<i32>()
            .is_ok_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok());
        if !alive {
            log::info!(
                "removing {}, left by an unpack that did not finish",
                entry.path().display()
            );
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the staging folder unless the unpack committed it.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = make_writable(&self.path);
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Read-only folders inside the staging tree would stop `remove_dir_all`.
fn make_writable(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        let meta = fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700))?;
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}

/// Puts back the image folder a [`switch_link`] killed halfway had moved aside.
pub fn restore_moved_aside(dest: &Path) -> Result<(), UnpackError> {
    super::link::restore_moved_aside(dest, &versions_dir(dest))
        .map(drop)
        .map_err(io_err("put back", dest))
}

/// Unpacks `archive` (a real path) so that `dest` (a real path) points at its contents.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let versions = versions_dir(dest);
    fs::create_dir_all(&versions).map_err(io_err("create folder", &versions))?;
    if let Some(done) = find_unpacked(archive, dest, opts.sha256.as_deref()) {
        return reuse(archive, &done, dest, opts);
    }
    let file = File::open(archive).map_err(io_err("open", archive))?;
    let file_meta = file.metadata().map_err(io_err("stat", archive))?;
    let input = Input {
        archive: archive.to_path_buf(),
        reader: Box::new(file),
        len: Some(file_meta.len()),
        identity: stat_identity(&file_meta),
    };
    unpack_input(input, dest, opts)
}

/// Unpacks what `download` serves so that `dest` (a real path) points at it: the bytes
/// go from the network through the hasher and the decompressor into the staging folder,
/// with no copy of the archive on disk. `opts.sha256` must be set: a download is only
/// published when its digest is the one expected.
pub fn unpack_download(
    download: crate::http::download::Download,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let archive = PathBuf::from(download.shown());
    let versions = versions_dir(dest);
    fs::create_dir_all(&versions).map_err(io_err("create folder", &versions))?;
    if let Some(done) = find_unpacked(&archive, dest, opts.sha256.as_deref()) {
        return reuse(&archive, &done, dest, opts);
    }
    let input = Input {
        archive,
        len: download.len(),
        reader: Box::new(download),
        identity: (0, 0, 0, 0),
    };
    unpack_input(input, dest, opts)
}

/// What an unpack reports for an archive already unpacked in `done`; DEST is pointed at
/// it unless `opts.no_switch`.
fn reuse(
    archive: &Path,
    done: &Path,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let text = fs::read_to_string(done.join(MARKER)).map_err(io_err("read", done))?;
    let marker: Marker =
        serde_json::from_str(&text).map_err(|e| io_err("parse", done)(io::Error::other(e)))?;
    if !opts.no_switch && !points_at(dest, done) {
        switch_link(dest, done, &opts.host_arch)?;
    }
    log::info!(
        "{} is already unpacked in {}",
        archive.display(),
        done.display()
    );
    Ok(UnpackReport {
        archive: archive.to_path_buf(),
        sha256: marker.sha256,
        compression: marker.compression,
        version_dir: done.to_path_buf(),
        reused: true,
        files: 0,
        bytes: 0,
        stripped_modes: Vec::new(),
    })
}

/// The unpack proper: staged, hashed while read, verified, then published.
fn unpack_input(
    input: Input,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let archive = input.archive.as_path();
    let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    let dest_name = dest
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let versions = versions_dir(dest);
    let max_bytes = match opts.max_size {
        Some(max) => max,
        None => {
            let stat = nix::sys::statvfs::statvfs(&versions)
                .map_err(|e| io_err("statvfs", &versions)(e.into()))?;
            stat.blocks_available() as u64 * stat.fragment_size() as u64
        }
    };

    let staging_prefix = format!(".{dest_name}.staging-");
    remove_stale_staging(&parent, &staging_prefix);
    let staging_path = parent.join(format!(
        "{staging_prefix}{}-{}",
        std::process::id(),
        nanos()
    ));
    fs::create_dir(&staging_path).map_err(io_err("create folder", &staging_path))?;
    fs::set_permissions(&staging_path, fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod", &staging_path))?;
    let mut staging = Staging {
        path: staging_path,
        committed: false,
    };

    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = match input.len {
            Some(len) => indicatif::ProgressBar::new(len),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "unpacking {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut raw = BufReader::with_capacity(
        1 << 20,
        HashingReader {
            inner: input.reader,
            hasher: Sha256::new(),
            bytes: 0,
            progress: progress.clone(),
        },
    );
    let compression = match compression::detect(&mut raw).map_err(io_err("read", archive))? {
        Ok(c) => c,
        Err(format) => {
            return Err(UnpackError::Unsupported {
                archive: archive.to_path_buf(),
                format,
            })
        }
    };
    let (extracted, actual) = extract_stream(archive, compression, raw, &staging.path, max_bytes)
        .map_err(|e| match e {
        // Without --max-size the limit was the free space: say so, and what it needs.
        UnpackError::Extract {
            archive,
            source: ExtractError::TooLarge { total, limit, .. },
        } if opts.max_size.is_none() => UnpackError::NoSpace {
            archive,
            dest: dest.to_path_buf(),
            needed: total,
            free: limit,
        },
        other => other,
    })?;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    if let Some(expected) = &opts.sha256 {
        if *expected != actual {
            return Err(UnpackError::Digest {
                archive: archive.to_path_buf(),
                expected: expected.clone(),
                actual,
                source_of_expected: opts
                    .sha256_source
                    .as_ref()
                    .map(|s| format!(" (from {s})"))
                    .unwrap_or_default(),
            });
        }
    } else if !opts.bundle {
        log::warn!(
            "{}: no SHA-256 to check against (set rootfs.sha256 or put {}.sha256 beside it); its digest is {actual}",
            archive.display(),
            archive.display()
        );
    }

    let label = if opts.bundle {
        archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        let host = RootedHost::new("/");
        ClusterImage::open(&host, &staging.path, &opts.host_arch)
            .map_err(|source| UnpackError::Image {
                archive: archive.to_path_buf(),
                source,
            })?
            .metadata
            .version
    };
    let (size, mtime_ns, dev, ino) = input.identity;
    let marker = Marker {
        archive: archive.to_path_buf(),
        sha256: actual.clone(),
        compression: compression.to_string(),
        size,
        mtime_ns,
        dev,
        ino,
        unpacked_at: crate::state::now_rfc3339(),
    };
    let marker_path = staging.path.join(MARKER);
    let json = serde_json::to_vec_pretty(&marker).unwrap_or_default();
    fs::write(&marker_path, json).map_err(io_err("write", &marker_path))?;
    fs::set_permissions(&staging.path, fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", &staging.path))?;
    fsync_tree_root(&staging.path)?;

    let version_dir = versions.join(format!("{}-{}", sanitize(&label), &actual[..12]));
    if version_dir.exists() {
        let published = fs::read_to_string(version_dir.join(MARKER))
            .ok()
            .and_then(|t| serde_json::from_str::<Marker>(&t).ok())
            .is_some_and(|m| m.sha256 == actual);
        if published {
            // Another run unpacked the same archive meanwhile: use its copy.
            drop(staging);
            return reuse(archive, &version_dir, dest, opts);
        }
        // Same digest, but no valid marker: an older, unrecorded copy. Ours to replace.
        let _ = make_writable(&version_dir);
        fs::remove_dir_all(&version_dir).map_err(io_err("remove", &version_dir))?;
    }
    crate::fault::point(|| format!("rename:{}", version_dir.display()));
    fs::rename(&staging.path, &version_dir).map_err(io_err("rename", &version_dir))?;
    staging.committed = true;
    fsync_dir(&versions)?;
    if !opts.no_switch {
        switch_link(dest, &version_dir, &opts.host_arch)?;
    }
    log::info!(
        "unpacked {} ({compression}, {} files, {} bytes) into {}",
        archive.display(),
        extracted.files,
        extracted.bytes,
        version_dir.display()
    );
    Ok(UnpackReport {
        archive: archive.to_path_buf(),
        sha256: actual,
        compression: compression.to_string(),
        version_dir,
        reused: false,
        files: extracted.files,
        bytes: extracted.bytes,
        stripped_modes: extracted.stripped_modes,
    })
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Puts everything written under `dir` on disk (one `syncfs` of its file system), so the
/// rename that follows can never publish files a power cut would leave empty.
fn fsync_tree_root(dir: &Path) -> Result<(), UnpackError> {
    let folder = File::open(dir).map_err(io_err("open", dir))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&folder))
        .map_err(|e| io_err("syncfs", dir)(e.into()))?;
    Ok(())
}

/// Extracts on this thread while another reads, hashes and decompresses; returns the
/// report and the archive's SHA-256 (of every byte, including any after the stream).
fn extract_stream(
    archive: &Path,
    compression: Compression,
    raw: BufReader<HashingReader<Box<dyn Read + Send>>>,
    staging: &Path,
    max_bytes: u64,
) -> Result<(ExtractReport, String), UnpackError> {
    let corrupt = |after: &str, e: io::Error| UnpackError::Extract {
        archive: archive.to_path_buf(),
        source: ExtractError::Corrupt {
            after: Some(after.to_owned()),
            message: e.to_string(),
        },
    };
    let shape = crate::io::read_ahead::Shape::default();
    let pipeline = crate::io::read_ahead::spawn(raw, compression, shape, |mut rest| {
        // Whatever follows the compressed stream still counts toward the digest.
        io::copy(&mut rest, &mut io::sink())?;
        Ok(hex::encode(rest.into_inner().hasher.finalize()))
    });
    let mut tail = TailReader::new(pipeline);
    let report = {
        let mut tar = tar::Archive::new(&mut tail);
        extract::extract(&mut tar, staging, Limits { max_bytes }).map_err(|source| {
            UnpackError::Extract {
                archive: archive.to_path_buf(),
                source,
            }
        })?
    };
    if !tail.ended_with_zero_block() {
        return Err(UnpackError::NoEndMarker {
            archive: archive.to_path_buf(),
            last: last_entry_hint(&report),
        });
    }
    // Read the decompressor to its end: a cut or corrupt compressed stream shows here.
    let mut rest = tail.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| corrupt("the end-of-archive marker", e))?;
    let digest = rest
        .finish()
        .map_err(|e| corrupt("the end-of-archive marker", e))?;
    Ok((report, digest))
}

fn last_entry_hint(report: &ExtractReport) -> String {
    report
        .last_entry
        .clone()
        .unwrap_or_else(|| "(none)".to_owned())
}

/// Opens the unpacked image `dest` through a host at `/` (for callers outside `up`).
pub fn open_unpacked(dest: &Path, host_arch: &str) -> Result<ClusterImage, RootfsError> {
    let host = RootedHost::new("/");
    let tree = HostTree {
        host: &host,
        dir: dest,
    };
    let mut image = ClusterImage::read(&tree, host_arch)?;
    image.dir = dest.to_path_buf();
    Ok(image)
}
