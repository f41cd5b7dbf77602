//! The real host: every host path lives under a root folder (`/` on a live node).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::in_root::{self, Last};
use super::{check_host_path, Arg, CommandOutput, CommandSpec, FileInfo, FileKind, Host};
use super::{HostError, Owner};

/// Variables with this prefix are bootstrap's own configuration (one may hold the join
/// secret); no child process inherits them. Everything else (PATH, locale, proxies) does.
const PRIVATE_ENV_PREFIX: &str = "BOOTSTRAP_";

/// A host whose `/` is `root`.
#[derive(Debug, Clone)]
pub struct RootedHost {
    root: PathBuf,
}

impl RootedHost {
    /// A host rooted at `root` (which must exist).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RootedHost { root: root.into() }
    }

    /// Where a host path lives on this machine: under the root, every symlink on the way
    /// read as if the root were `/`, never leading out of it. The last component is named
    /// as it is (a symlink there is the caller's to replace or follow), as a path handed
    /// to `std::fs` or to a command would be.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, HostError> {
        check_host_path(path)?;
        Ok(in_root::resolve(&self.root, path, Last::Keep)?)
    }

    /// As [`RootedHost::resolve`], and a symlink at the last component followed too (inside
    /// the root): for what is read, listed, run or entered here.
    fn resolve_followed(&self, path: &Path) -> Result<PathBuf, HostError> {
        check_host_path(path)?;
        Ok(in_root::resolve(&self.root, path, Last::Follow)?)
    }

    fn build_command(&self, spec: &CommandSpec) -> Result<Command, HostError> {
        // An absolute program is a host path (a binary of the cluster image, say); a bare
        // name is looked up on PATH like any tool of this machine.
        let mut command = if spec.program.starts_with('/') {
            let program = Path::new(&spec.program);
            // What runs is where the path leads inside the root; argv[0] keeps the name it
            // was called by, as multi-call binaries (k3s's `kubectl` link) go by it.
            let mut command = Command::new(self.resolve_followed(program)?);
            command.arg0(self.resolve(program)?);
            command
        } else {
            Command::new(&spec.program)
        };
        for arg in &spec.args {
            match arg {
                Arg::Lit(s) => command.arg(s),
                Arg::Path(p) => command.arg(self.resolve(p)?),
            };
        }
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with(PRIVATE_ENV_PREFIX) {
                command.env_remove(name);
            }
        }
        for (name, value) in &spec.env {
            command.env(name, value);
        }
        if let Some(dir) = &spec.cwd {
            command.current_dir(self.resolve_followed(dir)?);
        }
        command
            .stdin(if spec.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills whatever it started too.
            .process_group(0);
        Ok(command)
    }
}

/// How long a command has to end after bootstrap passes a stop signal on to it.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Passes SIGTERM to the child's process group (what it started too), waits up to
/// [`STOP_GRACE`], then kills the group. `Some(status)` when the child ended by itself
/// within the grace (it may have finished its work); whatever it left in its group is
/// killed unless it succeeded.
fn stop_group(
    child: &mut std::process::Child,
    shown: &str,
) -> Result<Option<std::process::ExitStatus>, HostError> {
    let group = Pid::from_raw(child.id() as i32);
    log::warn!(
        "stopping `{shown}` and what it started (SIGTERM, then SIGKILL after {}s)",
        STOP_GRACE.as_secs()
    );
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    let mut ended = None;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => {
                ended = Some(status);
                break;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                return Err(HostError::Spawn {
                    command: shown.to_owned(),
                    source,
                })
            }
        }
    }
    if ended.is_some_and(|s| s.success()) {
        return Ok(ended);
    }
    // The leader may be gone while a grandchild holds on: the group lives until its last
    // member does, so its id cannot have been reused.
    let _ = killpg(group, Signal::SIGKILL);
    if ended.is_none() {
        ended = child.wait().ok();
    }
    let gone_by = Instant::now() + Duration::from_secs(2);
    while killpg(group, None::<Signal>).is_ok() && Instant::now() < gone_by {
        thread::sleep(Duration::from_millis(10));
    }
    Ok(ended)
}

fn read_all(mut reader: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error only truncates captured output; the exit status still tells.
        let _ = reader.read_to_end(&mut buf);
        buf
    })
}

fn file_kind(meta: &fs::Metadata) -> FileKind {
    let ft = meta.file_type();
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

fn file_info(meta: &fs::Metadata) -> FileInfo {
    FileInfo {
        kind: file_kind(meta),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        len: meta.len(),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Host for RootedHost {
    fn root(&self) -> &Path {
        &self.root
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, HostError> {
        let real = self.resolve_followed(path)?;
        match fs::read(&real) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HostError::io("read", path, e)),
        }
    }

    fn metadata(&self, path: &Path) -> Result<Option<FileInfo>, HostError> {
        let real = self.resolve(path)?;
        match fs::symlink_metadata(&real) {
            Ok(meta) => Ok(Some(file_info(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HostError::io("stat", path, e)),
        }
    }

    fn stat(&self, path: &Path) -> Result<Option<FileInfo>, HostError> {
        let real = self.resolve_followed(path)?;
        match fs::metadata(&real) {
            Ok(meta) => Ok(Some(file_info(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HostError::io("stat", path, e)),
        }
    }

    fn real_path(&self, path: &Path) -> Result<PathBuf, HostError> {
        self.resolve(path)
    }

    fn list_dir(&self, path: &Path) -> Result<Option<Vec<String>>, HostError> {
        let real = self.resolve_followed(path)?;
        let entries = match fs::read_dir(&real) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HostError::io("list", path, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| HostError::io("list", path, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(Some(names))
    }

    fn write_atomic(
        &self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<(), HostError> {
        let real = self.resolve(path)?;
        let parent = real.parent().ok_or(HostError::BadPath {
            path: path.to_path_buf(),
            reason: "a file needs a parent folder",
        })?;
        let host_parent = path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(|e| HostError::io("create folder", host_parent, e))?;
        // A new file of a random name, created with the final mode so a secret is never
        // briefly world-readable, and never a file or symlink someone planted.
        let (mut file, temp) = super::temp::create_beside(&real, mode)
            .map_err(|e| HostError::io_at("write", path, parent, e))?;
        let result = (|| -> io::Result<()> {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            if let Some(owner) = owner {
                use std::os::fd::AsRawFd;
                nix::unistd::fchown(
                    file.as_raw_fd(),
                    Some(nix::unistd::Uid::from_raw(owner.uid)),
                    Some(nix::unistd::Gid::from_raw(owner.gid)),
                )
                .map_err(io::Error::from)?;
            }
            file.write_all(contents)?;
            file.sync_all()?;
            crate::fault::point(|| format!("rename:{}", path.display()));
            fs::rename(&temp, &real)?;
            fsync_dir(parent)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            // The old file is untouched: a full disk fails here, before the rename.
            return Err(match HostError::io_at("write", path, parent, e) {
                HostError::Io(e) => HostError::Io(e.needing(contents.len() as u64)),
                other => other,
            });
        }
        Ok(())
    }

    fn create_dir_all(&self, path: &Path, mode: u32) -> Result<(), HostError> {
        let real = self.resolve_followed(path)?;
        fs::create_dir_all(&real).map_err(|e| HostError::io("create folder", path, e))?;
        fs::set_permissions(&real, fs::Permissions::from_mode(mode))
            .map_err(|e| HostError::io("chmod", path, e))
    }

    fn remove_file(&self, path: &Path) -> Result<(), HostError> {
        let real = self.resolve(path)?;
        match fs::remove_file(&real) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::io("remove", path, e)),
        }
    }

    fn symlink(&self, target: &Path, path: &Path) -> Result<(), HostError> {
        let real = self.resolve(path)?;
        let parent = real.parent().ok_or(HostError::BadPath {
            path: path.to_path_buf(),
            reason: "a symlink needs a parent folder",
        })?;
        fs::create_dir_all(parent).map_err(|e| HostError::io("create folder", path, e))?;
        // symlink(2) never follows or replaces what is at its name: a random one that
        // nobody can have planted.
        let temp =
            super::temp::name_beside(&real).map_err(|e| HostError::io("symlink", path, e))?;
        let result = std::os::unix::fs::symlink(target, &temp)
            .map(|()| crate::fault::point(|| format!("rename:{}", path.display())))
            .and_then(|()| fs::rename(&temp, &real))
            .and_then(|()| fsync_dir(parent));
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            return Err(HostError::io("symlink", path, e));
        }
        Ok(())
    }

    fn read_link(&self, path: &Path) -> Result<Option<PathBuf>, HostError> {
        let real = self.resolve(path)?;
        match fs::read_link(&real) {
            Ok(target) => Ok(Some(target)),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::InvalidInput =>
            {
                Ok(None)
            }
            Err(e) => Err(HostError::io("read link", path, e)),
        }
    }

    fn remove_all(&self, path: &Path) -> Result<(), HostError> {
        let real = self.resolve(path)?;
        if real == self.root {
            return Err(HostError::BadPath {
                path: path.to_path_buf(),
                reason: "refusing to remove the root",
            });
        }
        let result = match fs::symlink_metadata(&real) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => Err(e),
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&real),
            Ok(_) => fs::remove_file(&real),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::io("remove", path, e)),
        }
    }

    fn remove_dir_if_empty(&self, path: &Path) -> Result<bool, HostError> {
        let real = self.resolve(path)?;
        if real == self.root {
            return Ok(false);
        }
        match fs::remove_dir(&real) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound
                        | io::ErrorKind::DirectoryNotEmpty
                        | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(HostError::io("remove folder", path, e)),
        }
    }

    fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, HostError> {
        let shown = spec.to_string();
        let mut child = self
            .build_command(spec)?
            .spawn()
            .map_err(|source| HostError::Spawn {
                command: shown.clone(),
                source,
            })?;
        if let (Some(secret), Some(mut stdin)) = (&spec.stdin, child.stdin.take()) {
            // A child that exits without reading stdin is not our error; its status tells.
            let _ = stdin.write_all(secret.expose().as_bytes());
        }
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        let deadline = Instant::now() + spec.timeout;
        let _in_flight = crate::interrupt::child_group(child.id() as i32);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if crate::interrupt::pending().is_some() => {
                    match stop_group(&mut child, &shown)? {
                        // It finished its work despite the signal: the step is done.
                        Some(status) if status.success() => break status,
                        _ => {
                            return Err(HostError::Interrupted {
                                command: shown,
                                signal: crate::interrupt::pending()
                                    .unwrap_or(crate::interrupt::Stop(Signal::SIGTERM)),
                            })
                        }
                    }
                }
                Ok(None) if Instant::now() >= deadline => {
                    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                    let _ = child.wait();
                    return Err(HostError::Timeout {
                        command: shown,
                        timeout: spec.timeout,
                    });
                }
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(source) => {
                    return Err(HostError::Spawn {
                        command: shown,
                        source,
                    })
                }
            }
        };
        Ok(CommandOutput {
            code: status.code(),
            stdout: stdout.and_then(|h| h.join().ok()).unwrap_or_default(),
            stderr: stderr.and_then(|h| h.join().ok()).unwrap_or_default(),
        })
    }

    fn free_space(&self, path: &Path) -> Result<u64, HostError> {
        let mut real = self.resolve_followed(path)?;
        while !real.exists() {
            if !real.pop() {
                break;
            }
        }
        let stat = nix::sys::statvfs::statvfs(&real)
            .map_err(|e| HostError::io("statvfs", path, e.into()))?;
        Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_mapped_under_the_root() {
        let host = RootedHost::new("/tmp/r");
        assert_eq!(
            host.resolve(Path::new("/etc/x")).unwrap(),
            PathBuf::from("/tmp/r/etc/x")
        );
        assert!(host.resolve(Path::new("etc/x")).is_err());
        assert!(host.resolve(Path::new("/etc/../x")).is_err());
    }

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let host = RootedHost::new(dir.path());
        host.write_atomic(Path::new("/a/b/secret"), b"x", 0o600, None)
            .unwrap();
        let info = host.metadata(Path::new("/a/b/secret")).unwrap().unwrap();
        assert_eq!(info.mode, 0o600);
        assert_eq!(
            host.list_dir(Path::new("/a/b")).unwrap().unwrap(),
            vec!["secret"]
        );
    }

    #[test]
    fn a_symlink_planted_at_the_old_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let host = RootedHost::new(dir.path().join("root"));
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        fs::create_dir_all(dir.path().join("root/a")).unwrap();
        // The name the temporary file used to have: predictable from the pid.
        let planted = dir
            .path()
            .join(format!("root/a/.secret.bootstrap-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        host.write_atomic(Path::new("/a/secret"), b"x", 0o600, None)
            .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        let info = host.stat(Path::new("/a/secret")).unwrap().unwrap();
        assert_eq!(info.kind, FileKind::File);
        assert_eq!(fs::read(dir.path().join("root/a/secret")).unwrap(), b"x");
    }

    /// A root whose `etc/x` points at a real folder outside it (absolute) and whose
    /// `etc/up` climbs out with `../../..`; a secret-looking file waits outside.
    fn escaping_root() -> (tempfile::TempDir, RootedHost, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("shadow"), b"outside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/x")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/up")).unwrap();
        (dir, RootedHost::new(&root), root, outside)
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn writes_through_a_symlink_out_of_the_root_stay_in_the_root() {
        let (_dir, host, root, outside) = escaping_root();
        let up = outside.strip_prefix("/").unwrap();
        for path in [
            "/etc/x/file".to_owned(),
            format!("/etc/up/{}/via-dot-dot", up.display()),
        ] {
            host.write_atomic(Path::new(&path), b"x", 0o600, None)
                .unwrap();
            assert_eq!(host.read(Path::new(&path)).unwrap().unwrap(), b"x");
        }
        assert_eq!(files_under(&outside), vec![outside.join("shadow")]);
        // Both landed where the root's own `/` would put them.
        assert_eq!(fs::read(root.join(up).join("file")).unwrap(), b"x");
        assert_eq!(fs::read(root.join(up).join("via-dot-dot")).unwrap(), b"x");
        host.create_dir_all(Path::new("/etc/x/dir"), 0o700).unwrap();
        host.symlink(Path::new("/nowhere"), Path::new("/etc/x/link"))
            .unwrap();
        assert_eq!(files_under(&outside), vec![outside.join("shadow")]);
    }

    #[test]
    fn reads_and_removals_through_a_symlink_out_of_the_root_stay_in_the_root() {
        let (_dir, host, _root, outside) = escaping_root();
        assert_eq!(host.read(Path::new("/etc/x/shadow")).unwrap(), None);
        let up = outside.strip_prefix("/").unwrap();
        let via_up = format!("/etc/up/{}/shadow", up.display());
        assert_eq!(host.read(Path::new(&via_up)).unwrap(), None);
        assert_eq!(host.stat(Path::new("/etc/x/shadow")).unwrap(), None);
        assert!(host.list_dir(Path::new("/etc/x")).unwrap().is_none());
        host.remove_file(Path::new("/etc/x/shadow")).unwrap();
        host.remove_all(Path::new(&via_up)).unwrap();
        assert_eq!(fs::read(outside.join("shadow")).unwrap(), b"outside");
        assert!(host
            .real_path(Path::new("/etc/x/shadow"))
            .unwrap()
            .starts_with(host.root()));
        // The link itself is still what `lstat` and removal act on.
        assert_eq!(
            host.metadata(Path::new("/etc/x")).unwrap().unwrap().kind,
            FileKind::Symlink
        );
        host.remove_file(Path::new("/etc/x")).unwrap();
        assert!(outside.join("shadow").exists());
    }

    #[test]
    fn commands_get_a_clean_environment_and_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let host = RootedHost::new(dir.path());
        std::env::set_var("BOOTSTRAP_UNIT_TEST_LEAK", "x");
        let out = host.run(&CommandSpec::new("env")).unwrap();
        assert!(out.success());
        assert!(!out.stdout_text().contains("BOOTSTRAP_UNIT_TEST_LEAK"));
        let err = host
            .run(
                &CommandSpec::new("sleep")
                    .arg("5")
                    .timeout(Duration::from_millis(100)),
            )
            .unwrap_err();
        assert!(matches!(err, HostError::Timeout { .. }), "{err}");
    }

    #[test]
    fn failure_carries_command_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let host = RootedHost::new(dir.path());
        let err = host
            .run_checked(&CommandSpec::new("ls").arg("/definitely/not/here"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`ls /definitely/not/here` failed (exit code 2)"),
            "{err}"
        );
        assert!(err.contains("No such file"), "{err}");
    }
}
