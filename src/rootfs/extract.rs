//! Safe extraction of a tar stream into a fresh staging folder.
//!
//! The archive is hostile until proven otherwise: every entry name is checked (no absolute
//! paths, no `..`, OS name limits), nothing is ever opened through a symlink, links must
//! stay inside the folder (checked again over the finished tree, so an order of entries
//! cannot smuggle an escape in), device and FIFO nodes are refused, and the total size is
//! capped. The caller only renames the folder into place when this returns `Ok`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::EntryType;

/// Longest file-name component Linux accepts (NAME_MAX).
const NAME_MAX: usize = 255;
/// Longest path Linux accepts (PATH_MAX, including the terminating NUL).
const PATH_MAX: usize = 4096;
/// Symlinks followed while resolving one path before giving up (as the kernel's MAXSYMLINKS).
const MAX_SYMLINK_HOPS: usize = 40;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("entry {entry:?}: {reason}")]
    Entry { entry: String, reason: String },
    #[error("entry {entry:?}: the archive holds {total} bytes, more than the {limit}-byte limit (--max-size)")]
    TooLarge {
        /// The first entry past the limit.
        entry: String,
        limit: u64,
        /// The file data of the whole archive (its remaining headers were read for it).
        total: u64,
    },
    #[error("{}: {message}", after.as_ref().map(|e| format!("truncated or corrupt stream after entry {e:?}")).unwrap_or_else(|| "truncated or corrupt stream at the start".to_owned()))]
    Corrupt {
        after: Option<String>,
        message: String,
    },
    #[error(transparent)]
    Io(#[from] crate::io::PathError),
}

fn refuse(entry: &str, reason: impl Into<String>) -> ExtractError {
    ExtractError::Entry {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExtractError + 'a {
    move |source| ExtractError::Io(crate::io::PathError::new(op, path, source))
}

/// What was extracted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Entries whose setuid, setgid or sticky bits were dropped.
    pub stripped_modes: Vec<String>,
    /// The last entry read, to name where a stream that stops early stopped.
    pub last_entry: Option<String>,
}

/// Limits for one extraction.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of file data the archive may hold.
    pub max_bytes: u64,
}

/// A reader that remembers the last block it passed on, to tell a proper end-of-archive
/// (zero blocks) from a stream that simply stopped.
pub struct TailReader<R> {
    inner: R,
    tail: Vec<u8>,
}

impl<R: Read> TailReader<R> {
    pub fn new(inner: R) -> Self {
        TailReader {
            inner,
            tail: Vec::with_capacity(1024),
        }
    }

    /// Whether the last 512 bytes read were all zero (an end-of-archive block).
    pub fn ended_with_zero_block(&self) -> bool {
        self.tail.len() >= 512 && self.tail[self.tail.len() - 512..].iter().all(|b| *b == 0)
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for TailReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n >= 512 {
            self.tail.clear();
            self.tail.extend_from_slice(&buf[n - 512..n]);
        } else if n > 0 {
            self.tail.extend_from_slice(&buf[..n]);
            let excess = self.tail.len().saturating_sub(512);
            self.tail.drain(..excess);
        }
        Ok(n)
    }
}

/// A checked relative path inside the archive.
fn entry_path(raw: &[u8], dest_len: usize) -> Result<Option<PathBuf>, String> {
    if raw.is_empty() {
        return Err("empty name".into());
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                if name.len() > NAME_MAX {
                    return Err(format!(
                        "a name component is {} bytes long; the limit is {NAME_MAX}",
                        name.len()
                    ));
                }
                clean.push(name);
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path: entries must be relative to the image root".into())
            }
            Component::ParentDir => return Err("`..` in the path would escape the image".into()),
        }
    }
    if dest_len + 1 + clean.as_os_str().len() >= PATH_MAX {
        return Err(format!(
            "the path is {} bytes long; with the destination it passes the {PATH_MAX}-byte limit",
            clean.as_os_str().len()
        ));
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

/// Where `target` (relative, from the folder holding the link) lands, lexically; `None`
/// when it climbs above the root.
fn lexical_join(link_dir: &Path, target: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&OsStr> = link_dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for c in target.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Resolves `rel` inside `root` following symlinks as the kernel would, but failing
/// instead of leaving `root`. Missing components are taken literally.
pub fn resolves_inside(root: &Path, rel: &Path) -> bool {
    let mut pending: Vec<PathBuf> = rel
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut resolved: Vec<PathBuf> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.components().next() {
            Some(Component::ParentDir) => {
                if resolved.pop().is_none() {
                    return false;
                }
            }
            Some(Component::CurDir) | None => {}
            Some(Component::RootDir) | Some(Component::Prefix(_)) => return false,
            Some(Component::Normal(_)) => {
                let here: PathBuf = resolved.iter().collect::<PathBuf>().join(&part);
                match fs::symlink_metadata(root.join(&here)) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        hops += 1;
                        if hops > MAX_SYMLINK_HOPS {
                            return false;
                        }
                        let Ok(target) = fs::read_link(root.join(&here)) else {
                            return false;
                        };
                        if target.is_absolute() {
                            return false;
                        }
                        for c in target.components().rev() {
                            pending.push(PathBuf::from(c.as_os_str()));
                        }
                    }
                    _ => resolved.push(part),
                }
            }
        }
    }
    true
}

struct Extractor<'a> {
    root: &'a Path,
    limits: Limits,
    report: ExtractReport,
    /// Directories to give their final mode and mtime once their contents are written.
    dirs: BTreeMap<PathBuf, (u32, SystemTime)>,
    /// Symlinks to check over the finished tree, with their mtimes.
    symlinks: Vec<(PathBuf, String, SystemTime)>,
    /// Folders known to be real folders. One stays one: no later entry may replace a
    /// folder (see `clear`), so each is checked once, not once per entry below it.
    known_dirs: std::collections::HashSet<PathBuf>,
    /// The process umask, to skip a chmod when creation already gave the right mode.
    umask: u32,
    /// The first entry past `limits.max_bytes`: nothing more is written, the rest is
    /// only counted, so the error can say how much the whole archive needs.
    over: Option<String>,
}

fn mtime(header: &tar::Header) -> SystemTime {
    let secs = header.mtime().unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

impl Extractor<'_> {
    /// Creates missing parents (0755) and refuses to go through anything but real folders.
    fn prepare_parent(&mut self, rel: &Path, shown: &str) -> Result<(), ExtractError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() || self.known_dirs.contains(parent) {
            return Ok(());
        }
        let mut here = PathBuf::new();
        for component in parent.components() {
            here.push(component);
            if self.known_dirs.contains(&here) {
                continue;
            }
            let real = self.root.join(&here);
            match fs::symlink_metadata(&real) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(refuse(
                        shown,
                        format!("would write through the symlink {}", here.display()),
                    ))
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(refuse(
                        shown,
                        format!("{} is a file, not a folder", here.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&real).map_err(io_err("create folder", &real))?;
                    fs::set_permissions(&real, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("chmod", &real))?;
                    self.report.dirs += 1;
                }
                Err(e) => return Err(io_err("stat", &real)(e)),
            }
            self.known_dirs.insert(here.clone());
        }
        Ok(())
    }

    /// Removes a non-folder already at `real` (a later entry replaces an earlier one).
    fn clear(&self, real: &Path, shown: &str) -> Result<(), ExtractError> {
        match fs::symlink_metadata(real) {
            Ok(meta) if meta.is_dir() => Err(refuse(shown, "a folder of that name already exists")),
            Ok(_) => fs::remove_file(real).map_err(io_err("remove", real)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("stat", real)(e)),
        }
    }

    fn mode(&mut self, header: &tar::Header, shown: &str) -> u32 {
        let mode = header.mode().unwrap_or(0o644);
        if mode & 0o7000 != 0 {
            log::warn!(
                "{shown}: setuid/setgid/sticky bits dropped (mode {:04o} becomes {:04o})",
                mode & 0o7777,
                mode & 0o777
            );
            self.report.stripped_modes.push(shown.to_owned());
        }
        mode & 0o777
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
    ) -> Result<(), ExtractError> {
        let size = entry.size();
        self.report.bytes = self.report.bytes.saturating_add(size);
        if self.report.bytes > self.limits.max_bytes {
            self.over = Some(shown.to_owned());
            return Ok(());
        }
        let mode = self.mode(entry.header(), shown);
        let real = self.root.join(rel);
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&real)
        };
        let mut file = match create() {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.clear(&real, shown)?;
                create().map_err(io_err("create", &real))?
            }
            Err(e) => return Err(io_err("create", &real)(e)),
        };
        let copied = copy(entry, &mut file).map_err(|e| match e {
            // A full disk is the disk's fault, not the archive's.
            CopyError::Write(e) => io_err("write", &real)(e),
            CopyError::Read(e) => ExtractError::Corrupt {
                after: Some(shown.to_owned()),
                message: e.to_string(),
            },
        })?;
        if copied != size {
            return Err(ExtractError::Corrupt {
                after: Some(shown.to_owned()),
                message: format!("the entry says {size} bytes but the stream ended after {copied}"),
            });
        }
        if mode & self.umask != 0 {
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", &real))?;
        }
        file.set_modified(mtime(entry.header()))
            .map_err(io_err("set mtime", &real))?;
        self.report.files += 1;
        Ok(())
    }

    fn dir(&mut self, header: &tar::Header, rel: &Path, shown: &str) -> Result<(), ExtractError> {
        let mode = self.mode(header, shown);
        let real = self.root.join(rel);
        match fs::symlink_metadata(&real) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(refuse(shown, "a file or link of that name already exists")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Owner-writable until the end, so a read-only folder can still be filled.
                fs::create_dir(&real).map_err(io_err("create folder", &real))?;
                fs::set_permissions(&real, fs::Permissions::from_mode(0o700))
                    .map_err(io_err("chmod", &real))?;
                self.report.dirs += 1;
            }
            Err(e) => return Err(io_err("stat", &real)(e)),
        }
        self.dirs.insert(rel.to_path_buf(), (mode, mtime(header)));
        self.known_dirs.insert(rel.to_path_buf());
        Ok(())
    }

    fn symlink(
        &mut self,
        header: &tar::Header,
        target: &[u8],
        rel: &Path,
        shown: &str,
    ) -> Result<(), ExtractError> {
        let target_path = Path::new(OsStr::from_bytes(target));
        if target.is_empty() {
            return Err(refuse(shown, "symlink with an empty target"));
        }
        if target_path.is_absolute() {
            return Err(refuse(
                shown,
                format!(
                    "symlink to the absolute path {}, outside the image",
                    target_path.display()
                ),
            ));
        }
        let link_dir = rel.parent().unwrap_or(Path::new(""));
        if lexical_join(link_dir, target_path).is_none() {
            return Err(refuse(
                shown,
                format!(
                    "symlink to {} leads outside the image",
                    target_path.display()
                ),
            ));
        }
        let real = self.root.join(rel);
        self.clear(&real, shown)?;
        std::os::unix::fs::symlink(target_path, &real).map_err(io_err("symlink", &real))?;
        self.symlinks
            .push((rel.to_path_buf(), shown.to_owned(), mtime(header)));
        self.report.symlinks += 1;
        Ok(())
    }

    fn hardlink(&mut self, target: &[u8], rel: &Path, shown: &str) -> Result<(), ExtractError> {
        let target_rel = match entry_path(target, self.root.as_os_str().len()) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(refuse(shown, "hard link to the image root")),
            Err(why) => return Err(refuse(shown, format!("hard link target: {why}"))),
        };
        let mut here = PathBuf::new();
        for component in target_rel.components() {
            here.push(component);
            match fs::symlink_metadata(self.root.join(&here)) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(refuse(
                        shown,
                        format!("hard link through the symlink {}", here.display()),
                    ))
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(refuse(
                        shown,
                        format!(
                            "hard link to {}, which the archive has not created",
                            target_rel.display()
                        ),
                    ))
                }
            }
        }
        let source = self.root.join(&target_rel);
        let is_file = fs::symlink_metadata(&source).is_ok_and(|m| m.is_file());
        if !is_file {
            return Err(refuse(
                shown,
                format!("hard link to {}, which is not a file", target_rel.display()),
            ));
        }
        let real = self.root.join(rel);
        if real == source {
            return Ok(());
        }
        self.clear(&real, shown)?;
        fs::hard_link(&source, &real).map_err(io_err("hard link", &real))?;
        self.report.hardlinks += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ExtractError> {
        for (rel, shown, _) in &self.symlinks {
            let target = fs::read_link(self.root.join(rel))
                .map_err(io_err("read link", &self.root.join(rel)))?;
            let joined = rel.parent().unwrap_or(Path::new("")).join(&target);
            if !resolves_inside(self.root, &joined) {
                return Err(refuse(
                    shown,
                    format!(
                        "symlink to {} resolves outside the image once the other links are in place",
                        target.display()
                    ),
                ));
            }
        }
        for (rel, _, time) in &self.symlinks {
            set_symlink_mtime(&self.root.join(rel), *time);
        }
        // Deepest first, so setting a parent's mtime is not undone by its children.
        for (rel, (mode, time)) in self.dirs.iter().rev() {
            let real = self.root.join(rel);
            let dir = File::open(&real).map_err(io_err("open folder", &real))?;
            dir.set_modified(*time)
                .map_err(io_err("set mtime", &real))?;
            fs::set_permissions(&real, fs::Permissions::from_mode(*mode))
                .map_err(io_err("chmod", &real))?;
        }
        Ok(())
    }
}

/// The process umask (read by setting and restoring it; no other thread creates files
/// while an extraction runs).
fn current_umask() -> u32 {
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o022));
    umask(old);
    old.bits()
}

fn set_symlink_mtime(path: &Path, time: SystemTime) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let ts = TimeSpec::from_duration(since);
    // Cosmetic: a link's own mtime matters to no one, so a failure is not worth failing for.
    let _ = utimensat(None, path, &ts, &ts, UtimensatFlags::NoFollowSymlink);
}

/// Copies with a large buffer (fewer syscalls than `io::copy`'s 8 KiB).
/// Which end of a copy failed: the archive's stream or the file being written.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy(reader: &mut impl Read, file: &mut File) -> Result<u64, CopyError> {
    use std::io::Write;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        file.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// Extracts every entry of `archive` into `root` (an empty folder of ours).
pub fn extract<R: Read>(
    archive: &mut tar::Archive<R>,
    root: &Path,
    limits: Limits,
) -> Result<ExtractReport, ExtractError> {
    let mut x = Extractor {
        root,
        limits,
        report: ExtractReport::default(),
        dirs: BTreeMap::new(),
        symlinks: Vec::new(),
        known_dirs: std::collections::HashSet::new(),
        umask: current_umask(),
        over: None,
    };
    let dest_len = root.as_os_str().len();
    let mut last: Option<String> = None;
    let corrupt = |last: &Option<String>, e: io::Error| ExtractError::Corrupt {
        after: last.clone(),
        message: e.to_string(),
    };
    let entries = archive.entries().map_err(|e| corrupt(&last, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(&last, e))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            continue;
        }
        if x.over.is_some() {
            if matches!(kind, EntryType::Regular | EntryType::Continuous) {
                x.report.bytes = x.report.bytes.saturating_add(entry.size());
            }
            continue;
        }
        let rel = match entry_path(&raw, dest_len) {
            Ok(Some(rel)) => rel,
            Ok(None) if kind == EntryType::Directory => {
                last = Some(shown);
                continue;
            }
            Ok(None) => return Err(refuse(&shown, "names the image root itself")),
            Err(why) => return Err(refuse(&shown, why)),
        };
        x.prepare_parent(&rel, &shown)?;
        match kind {
            EntryType::Regular | EntryType::Continuous => x.file(&mut entry, &rel, &shown)?,
            EntryType::Directory => x.dir(entry.header(), &rel, &shown)?,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                x.symlink(entry.header(), &target, &rel, &shown)?
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                x.hardlink(&target, &rel, &shown)?
            }
            EntryType::Char | EntryType::Block => {
                return Err(refuse(
                    &shown,
                    "device nodes do not belong in a cluster image",
                ))
            }
            EntryType::Fifo => {
                return Err(refuse(&shown, "FIFOs do not belong in a cluster image"))
            }
            other => {
                return Err(refuse(
                    &shown,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ))
            }
        }
        // Between entries: a crash here leaves a half-filled staging folder.
        crate::fault::point(|| format!("unpack-entry:{shown}"));
        last = Some(shown);
    }
    if let Some(entry) = x.over {
        return Err(ExtractError::TooLarge {
            entry,
            limit: x.limits.max_bytes,
            total: x.report.bytes,
        });
    }
    x.finish()?;
    x.report.last_entry = last;
    Ok(x.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(
            entry_path(b"./bin/k3s", 10).unwrap(),
            Some(PathBuf::from("bin/k3s"))
        );
        assert_eq!(entry_path(b"./", 10).unwrap(), None);
        assert!(entry_path(b"/etc/passwd", 10).is_err());
        assert!(entry_path(b"a/../../x", 10).is_err());
        assert!(entry_path(&[b'a'; 256], 10).is_err());
        assert!(entry_path(b"", 10).is_err());
    }

    #[test]
    fn lexical_links() {
        assert_eq!(
            lexical_join(Path::new("bin"), Path::new("k3s")),
            Some(PathBuf::from("bin/k3s"))
        );
        assert_eq!(
            lexical_join(Path::new("a/b"), Path::new("../../c")),
            Some(PathBuf::from("c"))
        );
        assert_eq!(lexical_join(Path::new("a"), Path::new("../../c")), None);
    }

    #[test]
    fn resolution_follows_links_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink(".", root.join("b")).unwrap();
        assert!(resolves_inside(root, Path::new("b/d")));
        assert!(!resolves_inside(root, Path::new("b/..")));
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        assert!(!resolves_inside(root, Path::new("loop1")));
    }

    #[test]
    fn tail_reader_sees_the_end_block() {
        let mut data = vec![1u8; 700];
        data.extend(vec![0u8; 1024]);
        let mut r = TailReader::new(&data[..]);
        let mut sink = Vec::new();
        r.read_to_end(&mut sink).unwrap();
        assert!(r.ended_with_zero_block());
        let mut r = TailReader::new(&[1u8; 2000][..]);
        r.read_to_end(&mut sink).unwrap();
        assert!(!r.ended_with_zero_block());
    }
}
