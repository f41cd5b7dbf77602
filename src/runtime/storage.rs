//! The distribution registry's filesystem storage layout, and staged, verified writes into
//! it: blobs land by rename only once verified, repository links only after every blob.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::seed::{SeedError, SeedReport};

/// Where the filesystem driver keeps everything, under its `rootdirectory`.
const V2: &str = "docker/registry/v2";
/// Staging folders in the storage root are named `<prefix><pid>-<serial>`.
const STAGING_PREFIX: &str = ".bootstrap-seed-";
/// Large enough that hashing, not system calls, dominates a copy.
const COPY_BUFFER: usize = 256 * 1024;
/// Blob and link files are world-readable: the registry may run as its own user.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

static STAGING_SERIAL: AtomicU64 = AtomicU64::new(0);

/// A sha256 content digest; only sha256 is used by the images bootstrap seeds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex digits>`.
    pub(crate) fn parse(text: &str) -> Option<Digest> {
        text.strip_prefix("sha256:").and_then(Digest::from_hex)
    }

    /// Takes the 64 lowercase hex digits alone, as in blob paths.
    pub(crate) fn from_hex(hex: &str) -> Option<Digest> {
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Digest(hex.to_string()))
    }

    /// The digest of some bytes in memory.
    pub(crate) fn of(bytes: &[u8]) -> Digest {
        Digest(hex::encode(Sha256::digest(bytes)))
    }

    pub(crate) fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// Paths of the filesystem driver's layout under one storage root.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn v2(&self) -> PathBuf {
        self.root.join(V2)
    }

    /// `v2/blobs/sha256/<hex[0..2]>/<hex>/data`.
    pub(crate) fn blob_data(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.v2()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Whether the blob is stored. Its content is trusted: nothing but a verified rename
    /// (or the registry itself, which verifies uploads) puts a `data` file there.
    pub(crate) fn has_blob(&self, digest: &Digest) -> Result<bool, SeedError> {
        is_file(&self.blob_data(digest))
    }

    pub(crate) fn repository(&self, name: &str) -> PathBuf {
        self.v2().join("repositories").join(name)
    }

    /// The link that lets `name` serve a layer or config blob.
    pub(crate) fn layer_link(&self, name: &str, digest: &Digest) -> PathBuf {
        self.repository(name)
            .join("_layers/sha256")
            .join(digest.hex())
            .join("link")
    }

    /// The link that lets `name` serve a manifest by digest.
    pub(crate) fn revision_link(&self, name: &str, digest: &Digest) -> PathBuf {
        self.repository(name)
            .join("_manifests/revisions/sha256")
            .join(digest.hex())
            .join("link")
    }

    /// The link a tag resolves through.
    pub(crate) fn tag_current_link(&self, name: &str, tag: &str) -> PathBuf {
        self.repository(name)
            .join("_manifests/tags")
            .join(tag)
            .join("current/link")
    }

    /// The tag's history entry for one manifest.
    pub(crate) fn tag_index_link(&self, name: &str, tag: &str, digest: &Digest) -> PathBuf {
        self.repository(name)
            .join("_manifests/tags")
            .join(tag)
            .join("index/sha256")
            .join(digest.hex())
            .join("link")
    }
}

/// Wraps an I/O error with the operation and path.
pub(crate) fn io_error(op: &'static str, path: &Path, source: io::Error) -> SeedError {
    SeedError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a regular file is at `path` (following symlinks); other errors are errors.
pub(crate) fn is_file(path: &Path) -> Result<bool, SeedError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.is_file()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("inspect", path, e)),
    }
}

/// Which side of a copy failed.
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Streams `reader` to its end, hashing it and writing it to `out` when given; memory
/// stays at one buffer whatever the size.
pub(crate) fn copy_hashing(
    reader: &mut dyn Read,
    mut out: Option<&mut File>,
) -> Result<(Digest, u64), CopyError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buffer[..n]);
        if let Some(out) = out.as_mut() {
            out.write_all(&buffer[..n]).map_err(CopyError::Write)?;
        }
        total += n as u64;
    }
    Ok((Digest(hex::encode(hasher.finalize())), total))
}

/// A file written (or hardlinked) into the staging folder, with what it hashed to.
#[derive(Debug, Clone)]
pub(crate) struct StagedFile {
    pub(crate) path: PathBuf,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    /// A hardlink to the source rather than a copy.
    pub(crate) linked: bool,
}

/// A private folder in the storage root. Staged files are renamed into place from it,
/// which is atomic because it is on the same file system; whatever is left (a failed
/// or unneeded file) goes with the folder when this is dropped.
pub(crate) struct Staging {
    dir: PathBuf,
    next: u64,
}

impl Staging {
    /// Creates the storage root if needed, clears staging folders of dead processes and
    /// makes a new one.
    pub(crate) fn create(layout: &Layout) -> Result<Staging, SeedError> {
        create_dirs(layout.root())?;
        remove_stale_staging(layout.root());
        let serial = STAGING_SERIAL.fetch_add(1, Ordering::Relaxed);
        let dir = layout
            .root()
            .join(format!("{STAGING_PREFIX}{}-{serial}", std::process::id()));
        // Only a reused pid from an earlier boot can leave a folder of this name.
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| io_error("remove", &dir, e))?;
        }
        fs::create_dir(&dir).map_err(|e| io_error("create folder", &dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_error("chmod", &dir, e))?;
        Ok(Staging { dir, next: 0 })
    }

    fn next_path(&mut self) -> PathBuf {
        self.next += 1;
        self.dir.join(self.next.to_string())
    }

    fn create_file(&mut self) -> Result<(PathBuf, File), SeedError> {
        let path = self.next_path();
        let file = File::create(&path).map_err(|e| io_error("create", &path, e))?;
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| io_error("chmod", &path, e))?;
        Ok((path, file))
    }

    /// Streams `reader` into a new staged file. Read errors are the caller's to name
    /// (an archive entry, a source file), through `read_error`.
    pub(crate) fn stage_stream(
        &mut self,
        reader: &mut dyn Read,
        read_error: impl FnOnce(io::Error) -> SeedError,
    ) -> Result<StagedFile, SeedError> {
        let (path, mut file) = self.create_file()?;
        let (digest, size) = match copy_hashing(reader, Some(&mut file)) {
            Ok(done) => done,
            Err(CopyError::Read(e)) => return Err(read_error(e)),
            Err(CopyError::Write(e)) => return Err(io_error("write", &path, e)),
        };
        file.sync_all().map_err(|e| io_error("sync", &path, e))?;
        Ok(StagedFile {
            path,
            digest,
            size,
            linked: false,
        })
    }

    /// Stages bytes made in memory (a generated manifest, a link's text).
    pub(crate) fn stage_bytes(&mut self, bytes: &[u8]) -> Result<StagedFile, SeedError> {
        let (path, mut file) = self.create_file()?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("write", &path, e))?;
        Ok(StagedFile {
            path,
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            linked: false,
        })
    }

    /// Stages a copy of `source`: a hardlink when it is on the same file system (no
    /// bytes copied; blobs are never modified in place, so sharing the inode is safe),
    /// a copy otherwise. Either way the staged file is hashed, so what lands is what
    /// was verified.
    pub(crate) fn stage_file(&mut self, source: &Path) -> Result<StagedFile, SeedError> {
        let path = self.next_path();
        match fs::hard_link(source, &path) {
            Ok(()) => {
                let mut file = File::open(&path).map_err(|e| io_error("open", source, e))?;
                let (digest, size) = match copy_hashing(&mut file, None) {
                    Ok(done) => done,
                    Err(CopyError::Read(e) | CopyError::Write(e)) => {
                        return Err(io_error("read", source, e))
                    }
                };
                Ok(StagedFile {
                    path,
                    digest,
                    size,
                    linked: true,
                })
            }
            Err(e) if link_falls_back_to_copy(&e) => {
                log::debug!(
                    "cannot hardlink {} into {}: {e}; copying",
                    source.display(),
                    self.dir.display()
                );
                let mut file = File::open(source).map_err(|e| io_error("open", source, e))?;
                self.stage_stream(&mut file, |e| io_error("read", source, e))
            }
            Err(e) => Err(io_error("hardlink", source, e)),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("could not remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// EXDEV is the expected case (another file system). EPERM and EMLINK also mean "not
/// here" rather than "broken": `fs.protected_hardlinks` refuses links to files the
/// caller does not own, some file systems refuse links altogether, and an inode can run
/// out of links.
fn link_falls_back_to_copy(error: &io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().is_some_and(|code| {
        [Errno::EXDEV, Errno::EPERM, Errno::EMLINK, Errno::EOPNOTSUPP]
            .iter()
            .any(|errno| *errno as i32 == code)
    })
}

/// Best effort: a folder left by a killed run is only wasted space, so failures here
/// are logged, not returned.
fn remove_stale_staging(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        let path = entry.path();
        match fs::remove_dir_all(&path) {
            Ok(()) => log::debug!("removed {} left by a run that died", path.display()),
            Err(e) => log::warn!("could not remove {}: {e}", path.display()),
        }
    }
}

fn process_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    // Signal 0 checks existence; EPERM means it exists but belongs to someone else.
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// `create_dir_all` with mode 0755 on each folder it creates, whatever the umask: the
/// registry may run as another user and must be able to walk the tree.
pub(crate) fn create_dirs(path: &Path) -> Result<(), SeedError> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dirs(parent)?;
    }
    match fs::create_dir(path) {
        Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| io_error("chmod", path, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(io_error("create folder", path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SeedError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

/// Where a blob an image needs comes from.
#[derive(Debug, Clone)]
pub(crate) enum BlobSource {
    /// Verified and waiting in the staging folder.
    Staged(StagedFile),
    /// Already in the storage.
    Present,
}

/// Everything one archive or tree adds to the storage, checked in full before any of
/// it is committed.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    blobs: BTreeMap<Digest, (BlobSource, u64)>,
    links: Vec<(PathBuf, Digest)>,
    tags: Vec<(PathBuf, Digest)>,
    seen: BTreeSet<PathBuf>,
}

impl Changes {
    /// Adds a blob; the first source given for a digest is kept.
    pub(crate) fn blob(&mut self, digest: &Digest, source: BlobSource, size: u64) {
        self.blobs.entry(digest.clone()).or_insert((source, size));
    }

    /// Adds a layer, revision or tag-index link.
    pub(crate) fn link(&mut self, path: PathBuf, digest: &Digest) {
        if self.seen.insert(path.clone()) {
            self.links.push((path, digest.clone()));
        }
    }

    /// Adds a tag's `current` link; these are written last, so a tag never resolves to
    /// a manifest the repository cannot serve yet. A later one for the same tag wins.
    pub(crate) fn tag(&mut self, path: PathBuf, digest: &Digest) {
        self.tags.push((path, digest.clone()));
    }

    /// Moves the blobs into place, then writes the links, then the tags; each stage is
    /// made durable (its folders synced) before the next begins, so after a crash a
    /// link never points at a blob that is not there.
    pub(crate) fn commit(
        self,
        layout: &Layout,
        staging: &mut Staging,
        report: &mut SeedReport,
    ) -> Result<(), SeedError> {
        let mut touched = BTreeSet::new();
        for (digest, (source, size)) in &self.blobs {
            let staged = match source {
                BlobSource::Staged(staged) if !layout.has_blob(digest)? => staged,
                _ => {
                    report.blobs_skipped += 1;
                    continue;
                }
            };
            let data = layout.blob_data(digest);
            let dir = data.parent().unwrap_or(layout.root());
            create_dirs(dir)?;
            fs::rename(&staged.path, &data).map_err(|e| io_error("rename into", &data, e))?;
            touched.insert(dir.to_path_buf());
            report.blobs_written += 1;
            report.bytes_written += size;
            if staged.linked {
                report.blobs_linked += 1;
            }
        }
        sync_all(&touched)?;
        for stage in [&self.links, &self.tags] {
            let mut touched = BTreeSet::new();
            for (path, digest) in stage {
                if write_link(path, digest, staging)? {
                    if let Some(dir) = path.parent() {
                        touched.insert(dir.to_path_buf());
                    }
                }
            }
            sync_all(&touched)?;
        }
        Ok(())
    }
}

fn sync_all(dirs: &BTreeSet<PathBuf>) -> Result<(), SeedError> {
    dirs.iter().try_for_each(|dir| sync_dir(dir))
}

/// Writes `sha256:<hex>` (no newline: the registry parses the whole file as a digest)
/// unless the link already says so. Returns whether it wrote.
fn write_link(path: &Path, digest: &Digest, staging: &mut Staging) -> Result<bool, SeedError> {
    let text = digest.to_string();
    match fs::read(path) {
        Ok(current) if current == text.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("read", path, e)),
    }
    let staged = staging.stage_bytes(text.as_bytes())?;
    if let Some(dir) = path.parent() {
        create_dirs(dir)?;
    }
    fs::rename(&staged.path, path).map_err(|e| io_error("rename into", path, e))?;
    Ok(true)
}

/// Reads a link file: its digest, `None` when absent. Surrounding whitespace is
/// tolerated (hand-made trees), anything else is not a link.
pub(crate) fn read_link(path: &Path) -> Result<Option<Result<Digest, String>>, SeedError> {
    let mut text = String::new();
    match File::open(path) {
        Ok(file) => {
            // A link is 71 bytes; reading a little more shows when it is something else.
            file.take(256)
                .read_to_string(&mut text)
                .map_err(|e| io_error("read", path, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path, e)),
    }
    let trimmed = text.trim();
    Ok(Some(Digest::parse(trimmed).ok_or_else(|| {
        format!("{trimmed:?} is not a sha256 digest")
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_filesystem_driver() {
        let layout = Layout::new(Path::new("/srv/reg"));
        let digest = Digest::of(b"x");
        let hex = digest.hex().to_string();
        let v2 = "/srv/reg/docker/registry/v2";
        assert_eq!(
            layout.blob_data(&digest),
            PathBuf::from(format!("{v2}/blobs/sha256/{}/{hex}/data", &hex[..2]))
        );
        assert_eq!(
            layout.layer_link("library/nginx", &digest),
            PathBuf::from(format!(
                "{v2}/repositories/library/nginx/_layers/sha256/{hex}/link"
            ))
        );
        assert_eq!(
            layout.revision_link("pause", &digest),
            PathBuf::from(format!(
                "{v2}/repositories/pause/_manifests/revisions/sha256/{hex}/link"
            ))
        );
        assert_eq!(
            layout.tag_current_link("pause", "3.9"),
            PathBuf::from(format!(
                "{v2}/repositories/pause/_manifests/tags/3.9/current/link"
            ))
        );
        assert_eq!(
            layout.tag_index_link("pause", "3.9", &digest),
            PathBuf::from(format!(
                "{v2}/repositories/pause/_manifests/tags/3.9/index/sha256/{hex}/link"
            ))
        );
    }

    #[test]
    fn digests_parse_only_sha256_lowercase_hex() {
        let hex = "ab".repeat(32);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_some());
        assert!(Digest::parse(&hex).is_none());
        assert!(Digest::parse(&format!("sha256:{}", hex.to_uppercase())).is_none());
        assert!(Digest::parse(&format!("sha512:{hex}")).is_none());
        assert!(Digest::from_hex("../../etc/passwd").is_none());
    }

    #[test]
    fn staging_is_removed_on_drop_and_stale_folders_are_cleared() {
        let root = tempfile::tempdir().expect("temp dir");
        // No process has pid i32::MAX: pid_max is at most 2^22.
        let stale = root.path().join(format!("{STAGING_PREFIX}{}-0", i32::MAX));
        fs::create_dir(&stale).expect("stale folder");
        let layout = Layout::new(root.path());
        let mut staging = Staging::create(&layout).expect("staging");
        assert!(!stale.exists(), "the dead run's folder is cleared");
        let staged = staging.stage_bytes(b"hello").expect("staged");
        assert_eq!(staged.digest, Digest::of(b"hello"));
        drop(staging);
        let left: Vec<_> = fs::read_dir(root.path()).expect("list").collect();
        assert!(left.is_empty(), "nothing is left behind: {left:?}");
    }

    #[test]
    fn links_have_no_newline_and_are_not_rewritten() {
        let root = tempfile::tempdir().expect("temp dir");
        let layout = Layout::new(root.path());
        let mut staging = Staging::create(&layout).expect("staging");
        let digest = Digest::of(b"m");
        let path = layout.revision_link("pause", &digest);
        assert!(write_link(&path, &digest, &mut staging).expect("written"));
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            format!("sha256:{}", digest.hex())
        );
        assert!(!write_link(&path, &digest, &mut staging).expect("checked"));
        assert_eq!(read_link(&path).expect("read"), Some(Ok(digest)));
    }
}
