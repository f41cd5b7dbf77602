//! The distribution registry's filesystem storage layout, and staged, verified writes into
//! it: blobs land by rename only once verified, repository links only after every blob.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::report::io_error;
use super::report::{SeedError, SeedReport};
use super::writer::{Chunk, Job, StagedWrite, Writer, CHUNK};
#[cfg(test)]
use super::writer::{DIRECT_ALIGN, FILE_MODE, QUEUE_DEPTH};

/// Where the filesystem driver keeps everything, under its `rootdirectory`.
const V2: &str = "docker/registry/v2";
/// Staging folders in the storage root are named `<prefix><pid>-<serial>`.
const STAGING_PREFIX: &str = ".bootstrap-seed-";
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
    /// (or the registry itself, which verifies uploads) puts a `data` file there, and
    /// that rename only after a sync barrier made the content durable, so it is whole
    /// even after a crash.
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

/// Whether a regular file is at `path` (following symlinks); other errors are errors.
pub(crate) fn is_file(path: &Path) -> Result<bool, SeedError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.is_file()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("inspect", path, e)),
    }
}

/// Hashes `reader` to its end without keeping it; memory stays at one buffer whatever
/// the size.
pub(crate) fn hash_stream(reader: &mut dyn Read) -> io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut chunk = Chunk::new();
    let mut total = 0u64;
    while chunk.fill(reader)? > 0 {
        hasher.update(chunk.filled());
        total += chunk.filled().len() as u64;
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
///
/// Nothing staged is synced file by file: [`Staging::sync`] is the barrier that makes
/// all of it durable at once, and [`Changes::commit`] places one before each stage of
/// renames.
pub(crate) struct Staging {
    dir: PathBuf,
    next: u64,
    /// The storage root, opened before anything is written: `syncfs` on it reports
    /// write-back errors of everything written since (Linux 5.8 and later).
    root: File,
    /// Writes big files behind the caller's back; started on the first.
    writer: Option<Writer>,
}

impl Staging {
    /// Creates the storage root if needed, clears staging folders of dead processes and
    /// makes a new one.
    pub(crate) fn create(layout: &Layout) -> Result<Staging, SeedError> {
        create_dirs(layout.root())?;
        let root = File::open(layout.root()).map_err(|e| io_error("open", layout.root(), e))?;
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
        Ok(Staging {
            dir,
            next: 0,
            root,
            writer: None,
        })
    }

    fn next_path(&mut self) -> PathBuf {
        self.next += 1;
        self.dir.join(self.next.to_string())
    }

    /// Streams `reader` (`size` bytes are expected: a chunk or more is written
    /// `O_DIRECT`) into a new staged file, hashing it on this thread while the writer
    /// thread writes: the file is complete only after [`Staging::wait_for_writes`].
    /// Read errors are the caller's to name (an archive entry, a source file), through
    /// `read_error`.
    pub(crate) fn stage_stream(
        &mut self,
        reader: &mut dyn Read,
        size: u64,
        read_error: impl FnOnce(io::Error) -> SeedError,
    ) -> Result<StagedFile, SeedError> {
        let path = self.next_path();
        let writer = self.writer.get_or_insert_with(Writer::spawn);
        writer.send(Job::Create {
            path: path.clone(),
            direct: size >= CHUNK as u64,
        })?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        loop {
            let mut chunk = writer.chunk();
            let n = match chunk.fill(reader) {
                Ok(n) => n,
                Err(e) => return Err(read_error(e)),
            };
            if n == 0 {
                break;
            }
            hasher.update(chunk.filled());
            total += n as u64;
            writer.send(Job::Write(chunk))?;
            if n < CHUNK {
                break;
            }
        }
        Ok(StagedFile {
            path,
            digest: Digest(hex::encode(hasher.finalize())),
            size: total,
            linked: false,
        })
    }

    /// Waits until every file [`Staging::stage_stream`] started is written; call before
    /// reading any of them back.
    pub(crate) fn wait_for_writes(&mut self) -> Result<(), SeedError> {
        match self.writer.take() {
            Some(mut writer) => writer.finish(),
            None => Ok(()),
        }
    }

    /// Stages bytes made in memory (a generated manifest, a link's text).
    pub(crate) fn stage_bytes(&mut self, bytes: &[u8]) -> Result<StagedFile, SeedError> {
        let path = self.next_path();
        let mut out = StagedWrite::create(path, false)?;
        out.write(bytes)
            .map_err(|e| io_error("write", &out.path, e))?;
        Ok(StagedFile {
            path: out.path,
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
                let (digest, size) =
                    hash_stream(&mut file).map_err(|e| io_error("read", source, e))?;
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
                let size = file
                    .metadata()
                    .map_err(|e| io_error("inspect", source, e))?
                    .len();
                self.stage_stream(&mut file, size, |e| io_error("read", source, e))
            }
            Err(e) => Err(io_error("hardlink", source, e)),
        }
    }

    /// The barrier between stages of a commit: `syncfs` makes everything written to the
    /// storage's file system so far durable — staged data, renames, and the folders
    /// made for them (parents included, which syncing each folder would miss) — in one
    /// call, where syncing file by file took one call per file and folder and made each
    /// wait for the device in turn. It also flushes what other programs wrote to that
    /// file system, which only costs time.
    pub(crate) fn sync(&self) -> Result<(), SeedError> {
        nix::unistd::syncfs(self.root.as_raw_fd())
            .map_err(|e| io_error("sync the file system of", &self.dir, e.into()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The writer may still be creating files in the folder: stop it first.
        if let Some(mut writer) = self.writer.take() {
            let _ = writer.finish();
        }
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
    // The parent of a relative path's first component is "", which is no folder.
    if path.as_os_str().is_empty() || path.is_dir() {
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

/// A staged file and where it goes.
type Move = (PathBuf, PathBuf);

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

    /// Moves the blobs into place, then the links, then the tags, each by rename from
    /// the staging folder, with a sync barrier ([`Staging::sync`]) before each stage:
    ///
    /// - before the blobs, so every staged byte (the blobs, and the links' texts,
    ///   staged early for this) is durable before any rename is made: a rename may
    ///   reach the disk before the renamed file's bytes do, and a blob in place must
    ///   be whole after a crash, as a later run trusts it ([`Layout::has_blob`]);
    /// - before the links, so the blobs they name are in place for good;
    /// - before the tags, so the revisions they name are;
    /// - and once more at the end, so the commit is durable when this returns.
    ///
    /// A stage with nothing to move needs no barrier: the next one covers its turn.
    /// After a crash the storage therefore never holds a partial blob, a link to a
    /// missing blob, or a tag to a manifest its repository cannot serve yet.
    pub(crate) fn commit(
        self,
        layout: &Layout,
        staging: &mut Staging,
        report: &mut SeedReport,
    ) -> Result<(), SeedError> {
        staging.wait_for_writes()?;
        let blobs = self.blob_moves(layout, report)?;
        let links = stage_links(&self.links, staging)?;
        let tags = stage_links(&self.tags, staging)?;
        let mut moved = false;
        for stage in [blobs, links, tags] {
            if stage.is_empty() {
                continue;
            }
            staging.sync()?;
            for (from, to) in &stage {
                if let Some(dir) = to.parent() {
                    create_dirs(dir)?;
                }
                // Between blobs (and links): a crash leaves some in place, some staged.
                crate::fault::point(|| format!("seed:{}", to.display()));
                fs::rename(from, to).map_err(|e| io_error("rename into", to, e))?;
            }
            moved = true;
        }
        if moved {
            staging.sync()?;
        }
        Ok(())
    }

    /// The staged blobs the storage does not have yet, counted into the report.
    fn blob_moves(&self, layout: &Layout, report: &mut SeedReport) -> Result<Vec<Move>, SeedError> {
        let mut moves = Vec::new();
        for (digest, (source, size)) in &self.blobs {
            let staged = match source {
                BlobSource::Staged(staged) if !layout.has_blob(digest)? => staged,
                _ => {
                    report.blobs_skipped += 1;
                    continue;
                }
            };
            moves.push((staged.path.clone(), layout.blob_data(digest)));
            report.blobs_written += 1;
            report.bytes_written += size;
            if staged.linked {
                report.blobs_linked += 1;
            }
        }
        Ok(moves)
    }
}

/// Stages the text of each link that does not already say it; when `links` names a
/// path twice, the last one wins.
fn stage_links(links: &[(PathBuf, Digest)], staging: &mut Staging) -> Result<Vec<Move>, SeedError> {
    let mut last = BTreeMap::new();
    for (path, digest) in links {
        last.insert(path, digest);
    }
    let mut moves = Vec::new();
    for (path, digest) in last {
        if let Some(staged) = stage_link(path, digest, staging)? {
            moves.push((staged.path, path.clone()));
        }
    }
    Ok(moves)
}

/// Stages `sha256:<hex>` (no newline: the registry parses the whole file as a digest)
/// for the link at `path`, unless the link already says so.
fn stage_link(
    path: &Path,
    digest: &Digest,
    staging: &mut Staging,
) -> Result<Option<StagedFile>, SeedError> {
    let text = digest.to_string();
    match fs::read(path) {
        Ok(current) if current == text.as_bytes() => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("read", path, e)),
    }
    staging.stage_bytes(text.as_bytes()).map(Some)
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
        let mut changes = Changes::default();
        changes.link(path.clone(), &digest);
        changes
            .commit(&layout, &mut staging, &mut SeedReport::default())
            .expect("committed");
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            format!("sha256:{}", digest.hex())
        );
        assert!(stage_link(&path, &digest, &mut staging)
            .expect("checked")
            .is_none());
        assert_eq!(read_link(&path).expect("read"), Some(Ok(digest)));
    }

    #[test]
    fn the_last_tag_for_a_path_wins() {
        let root = tempfile::tempdir().expect("temp dir");
        let layout = Layout::new(root.path());
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let path = layout.tag_current_link("x", "1");
        // The third round has the storage saying the last already, the first not.
        for (first, last) in [(&a, &b), (&b, &a), (&b, &a)] {
            let mut staging = Staging::create(&layout).expect("staging");
            let mut changes = Changes::default();
            changes.tag(path.clone(), first);
            changes.tag(path.clone(), last);
            changes
                .commit(&layout, &mut staging, &mut SeedReport::default())
                .expect("committed");
            assert_eq!(read_link(&path).expect("read"), Some(Ok(last.clone())));
        }
    }

    fn read_error(e: io::Error) -> SeedError {
        io_error("read", Path::new("test input"), e)
    }

    /// Content of `len` bytes that differs from chunk to chunk.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / CHUNK) as u8)
            .collect()
    }

    fn stage_and_check(dir: &Path, len: usize) {
        let layout = Layout::new(dir);
        let mut staging = Staging::create(&layout).expect("staging");
        let bytes = pattern(len);
        let staged = staging
            .stage_stream(&mut &bytes[..], len as u64, read_error)
            .expect("staged");
        staging.wait_for_writes().expect("written");
        assert_eq!(
            (staged.digest, staged.size),
            (Digest::of(&bytes), len as u64)
        );
        let written = fs::read(&staged.path).expect("read back");
        assert!(written == bytes, "{len} bytes staged in {}", dir.display());
        let mode = fs::metadata(&staged.path)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, FILE_MODE);
    }

    #[test]
    fn streams_are_staged_whole_whatever_their_size() {
        let root = tempfile::tempdir().expect("temp dir");
        // Empty, small, whole chunks (direct writes alone), and chunks with a tail
        // that is not whole blocks (direct writes, then through the page cache).
        for len in [
            0,
            5,
            CHUNK,
            3 * CHUNK,
            2 * CHUNK + 1000,
            CHUNK + DIRECT_ALIGN,
        ] {
            stage_and_check(root.path(), len);
        }
        // tmpfs took O_DIRECT only from Linux 6.6 on; either way the bytes land.
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            stage_and_check(shm.path(), 2 * CHUNK + 7);
        }
    }

    #[test]
    fn a_failed_staged_write_is_an_error_not_a_hang() {
        let root = tempfile::tempdir().expect("temp dir");
        let layout = Layout::new(root.path());
        let mut staging = Staging::create(&layout).expect("staging");
        fs::remove_dir_all(&staging.dir).expect("pull the folder away");
        let bytes = pattern(QUEUE_DEPTH * 3 * CHUNK);
        let staged = staging.stage_stream(&mut &bytes[..], bytes.len() as u64, read_error);
        let error = match staged {
            Err(e) => e,
            Ok(_) => staging.wait_for_writes().expect_err("the writer failed"),
        };
        assert!(error.to_string().contains("create"), "{error}");
    }
}
