//! Host paths resolved inside a root without ever leading out of it: a symlink met on the
//! way is read as the host would read it with the root as `/` (an absolute target starts
//! again at the root), and `..` stops at the root.
//!
//! `--root` is a tree bootstrap writes into (a baked image, a test's temp folder). Joining
//! a host path onto it and handing the result to `std::fs` would let the kernel follow an
//! intermediate symlink such as `root/etc/x -> /tmp/elsewhere` out of the tree, so a write
//! of `/etc/x/file` would land on the machine running bootstrap. Here the existing part of
//! a path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` where it has it
//! (Linux 5.6), else by a walk of the components that does what that flag does; what
//! comes back is a real path under the root whose existing components are no symlinks.
//! (Another process swapping a component for a symlink between this and the use of the
//! path is not covered: bootstrap owns `--root` while it runs.)

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before it is called a loop (the kernel's 40).
const MAX_LINKS: usize = 40;

/// Why a host path could not be resolved under the root; names both.
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    #[error("{path}: more than {MAX_LINKS} symlinks met resolving it under {root}")]
    Loop { root: PathBuf, path: PathBuf },
    #[error("{path}: cannot resolve it under {root}: {source}")]
    Io {
        root: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: resolves to {real}, which is not under {root}")]
    Escaped {
        root: PathBuf,
        path: PathBuf,
        real: PathBuf,
    },
}

/// Whether the last component, when it is a symlink, is followed (reading, listing) or is
/// itself what the operation acts on (replacing, removing, `lstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    Follow,
    Keep,
}

/// Where host path `path` (absolute on the host) lives under `root`.
pub fn resolve(root: &Path, path: &Path, last: Last) -> Result<PathBuf, InRootError> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    // Nothing is outside `/`: the kernel's own resolution is resolution in that root.
    if root == Path::new("/") {
        return Ok(root.join(relative));
    }
    let (walked, name) = match (last, relative.parent(), relative.file_name()) {
        (Last::Keep, Some(parent), Some(name)) => (parent, Some(name)),
        _ => (relative, None),
    };
    let mut real = match kernel(root, walked) {
        Some(real) => real,
        None => walk(root, path, walked)?,
    };
    if let Some(name) = name {
        real.push(name);
    }
    Ok(real)
}

/// The kernel's answer, relative to the root and joined onto it, when `openat2` exists,
/// may be used here and finds every component; `None` sends the caller to [`walk`] (a
/// missing component, which the walk keeps literally; an old kernel; a seccomp filter;
/// no `/proc`).
fn kernel(root: &Path, relative: &Path) -> Option<PathBuf> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let open_root = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC);
    let dir = openat2(nix::libc::AT_FDCWD, root, open_root).ok()?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let target = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    use std::os::fd::AsRawFd;
    let found = openat2(dir.as_raw_fd(), target, how).ok()?;
    // SAFETY: as above.
    let found = unsafe { OwnedFd::from_raw_fd(found) };
    let fd_path = |fd: &OwnedFd| fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let real_root = fd_path(&dir).ok()?;
    let real = fd_path(&found).ok()?;
    // Both are names of open files: a folder renamed away since shows elsewhere, and
    // the walk decides then.
    let inside = real.strip_prefix(&real_root).ok()?;
    Some(root.join(inside))
}

/// One step of what is left to resolve.
enum Part {
    /// Start again at the root (an absolute symlink target).
    Root,
    Up,
    Name(OsString),
}

fn parts(path: &Path) -> impl DoubleEndedIterator<Item = Part> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Part::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Part::Up),
        Component::Normal(name) => Some(Part::Name(name.to_owned())),
    })
}

/// Resolves `relative` under `root` one component at a time, as `RESOLVE_IN_ROOT` does: a
/// symlink's target is resolved in its place (an absolute one from the root), `..` never
/// climbs above the root. Components that do not exist are kept as they are, so the
/// result can name a file or folder yet to be made. `path` is only for errors.
pub(crate) fn walk(root: &Path, path: &Path, relative: &Path) -> Result<PathBuf, InRootError> {
    let mut done = PathBuf::new();
    let mut todo: VecDeque<Part> = parts(relative).collect();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        let name = match part {
            Part::Root => {
                done.clear();
                continue;
            }
            Part::Up => {
                done.pop();
                continue;
            }
            Part::Name(name) => name,
        };
        let here = root.join(&done).join(&name);
        let is_link = match fs::symlink_metadata(&here) {
            Ok(meta) => meta.file_type().is_symlink(),
            // Missing, or under a file: kept as named, for the operation to fail on.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
            {
                false
            }
            Err(source) => return Err(io_error(root, path, source)),
        };
        if !is_link {
            done.push(name);
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(InRootError::Loop {
                root: root.to_path_buf(),
                path: path.to_path_buf(),
            });
        }
        let target = fs::read_link(&here).map_err(|source| io_error(root, path, source))?;
        for part in parts(&target).rev() {
            todo.push_front(part);
        }
    }
    let real = root.join(&done);
    // `done` holds names only, never `..`: this holds by construction; say so if not.
    if !real.starts_with(root) {
        return Err(InRootError::Escaped {
            root: root.to_path_buf(),
            path: path.to_path_buf(),
            real,
        });
    }
    Ok(real)
}

fn io_error(root: &Path, path: &Path, source: io::Error) -> InRootError {
    InRootError::Io {
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root with `etc/x -> <outside>` (absolute), `etc/up -> ../../..`, `etc/self -> .`,
    /// `loop -> loop`, and a real folder outside it.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("var/lib")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("etc/x")).unwrap();
        symlink("../../..", root.join("etc/up")).unwrap();
        symlink("/var/lib", root.join("etc/lib")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        (dir, root, outside)
    }

    /// Both ways of resolving, so a machine with openat2 still tests the walk.
    fn both(root: &Path, path: &str) -> Vec<PathBuf> {
        let relative = Path::new(path).strip_prefix("/").unwrap();
        let mut out = vec![walk(root, Path::new(path), relative).unwrap()];
        if let Some(real) = kernel(root, relative) {
            out.push(real);
        }
        out
    }

    #[test]
    fn an_absolute_symlink_is_read_from_the_root() {
        let (_dir, root, outside) = setup();
        // `/tmp/.../outside` read with the root as `/`: a folder inside the root.
        let inside = root.join(outside.strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        for real in both(&root, "/etc/x") {
            assert_eq!(real, inside);
        }
        assert_eq!(
            resolve(&root, Path::new("/etc/x/file"), Last::Follow).unwrap(),
            inside.join("file")
        );
        for real in both(&root, "/etc/lib") {
            assert_eq!(real, root.join("var/lib"));
        }
    }

    #[test]
    fn dot_dot_stops_at_the_root() {
        let (_dir, root, _) = setup();
        for real in both(&root, "/etc/up") {
            assert_eq!(real, root);
        }
        assert_eq!(
            walk(&root, Path::new("/etc/up/etc"), Path::new("etc/up/etc")).unwrap(),
            root.join("etc")
        );
    }

    #[test]
    fn missing_components_are_kept_and_resolved_later_parts_stay_inside() {
        let (_dir, root, outside) = setup();
        let real = resolve(&root, Path::new("/etc/x/new/file"), Last::Follow).unwrap();
        assert!(real.starts_with(&root), "{}", real.display());
        assert!(!real.starts_with(&outside));
        assert_eq!(
            resolve(&root, Path::new("/a/b/c"), Last::Keep).unwrap(),
            root.join("a/b/c")
        );
    }

    #[test]
    fn the_last_symlink_is_kept_when_asked() {
        let (_dir, root, _) = setup();
        assert_eq!(
            resolve(&root, Path::new("/etc/x"), Last::Keep).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            resolve(&root, Path::new("/etc/lib"), Last::Follow).unwrap(),
            root.join("var/lib")
        );
    }

    #[test]
    fn a_symlink_loop_is_an_error_naming_the_path() {
        let (_dir, root, _) = setup();
        let err = walk(&root, Path::new("/loop/x"), Path::new("loop/x")).unwrap_err();
        assert!(matches!(err, InRootError::Loop { .. }), "{err}");
        assert!(err.to_string().contains("/loop/x"), "{err}");
        let err = resolve(&root, Path::new("/loop/x"), Last::Follow).unwrap_err();
        assert!(err.to_string().contains("/loop/x"), "{err}");
    }

    #[test]
    fn the_real_root_is_left_to_the_kernel() {
        assert_eq!(
            resolve(Path::new("/"), Path::new("/etc/hostname"), Last::Follow).unwrap(),
            PathBuf::from("/etc/hostname")
        );
    }
}
