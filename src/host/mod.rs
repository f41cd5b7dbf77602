//! The one seam for side effects: files under a root, commands, and the network.
//!
//! Everything that reads or changes the machine goes through [`Host`]. The real
//! implementation, [`RootedHost`], maps every absolute host path under `--root`, so the
//! whole binary can run against a temp directory in tests and for image baking;
//! [`FakeHost`] keeps files in memory and records commands for unit tests.

mod command;
mod fake;
mod in_root;
mod rooted;
pub mod system;
pub mod temp;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use command::{Arg, CommandOutput, CommandSpec};
pub use fake::FakeHost;
pub use in_root::InRootError;
pub use rooted::RootedHost;

/// What kind of file system object a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The parts of a file's metadata that steps compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub kind: FileKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub len: u64,
}

/// A numeric owner for files bootstrap writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A failed host operation; always names the path or command involved.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Io(#[from] crate::io::PathError),
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` did not finish within {}", humantime::format_duration(*.timeout))]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    /// Boxed: three paths would make every `Result<_, HostError>` that much larger.
    #[error(transparent)]
    InRoot(Box<in_root::InRootError>),
    #[error("{path} is not a path bootstrap may touch: {reason}")]
    BadPath { path: PathBuf, reason: &'static str },
    /// bootstrap was asked to stop (SIGTERM, SIGINT) while the command ran; it was
    /// stopped with everything it started.
    #[error("`{command}` was stopped: bootstrap received {signal}")]
    Interrupted {
        command: String,
        signal: crate::interrupt::Stop,
    },
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!(": {trimmed}")
    }
}

impl From<in_root::InRootError> for HostError {
    fn from(e: in_root::InRootError) -> Self {
        HostError::InRoot(Box::new(e))
    }
}

impl HostError {
    /// Wraps an I/O error with the operation and the host path it concerned.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        HostError::Io(crate::io::PathError::shown_as(op, path, source, None))
    }

    /// [`HostError::io`] for an operation on the host path `path`, which lives at `real`:
    /// a full file system is then reported with the room left there.
    pub fn io_at(op: &'static str, path: &Path, real: &Path, source: io::Error) -> Self {
        let free = crate::io::is_no_space(&source)
            .then(|| crate::io::free_space(real).ok())
            .flatten();
        HostError::Io(crate::io::PathError::shown_as(op, path, source, free))
    }
}

/// Side effects on one machine. Paths are absolute paths *on the target host*; an
/// implementation decides where they live (under `--root`, in memory).
pub trait Host {
    /// The directory host paths are mapped under (`/` on a live node).
    fn root(&self) -> &Path;

    /// Reads a whole file; `Ok(None)` when it does not exist.
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, HostError>;

    /// Metadata without following a final symlink; `Ok(None)` when nothing is there.
    fn metadata(&self, path: &Path) -> Result<Option<FileInfo>, HostError>;

    /// Metadata following symlinks (as opening the path would).
    fn stat(&self, path: &Path) -> Result<Option<FileInfo>, HostError>;

    /// The real location of a host path on this machine, for code that must stream large
    /// files (archives, image blobs) rather than read them whole. Hosts without real
    /// files refuse.
    fn real_path(&self, path: &Path) -> Result<PathBuf, HostError>;

    /// Names in a directory, sorted; `Ok(None)` when it does not exist.
    fn list_dir(&self, path: &Path) -> Result<Option<Vec<String>>, HostError>;

    /// Replaces a file atomically: temp file beside it, fsync, rename, fsync the folder.
    /// Missing parent folders are created with mode 0755.
    fn write_atomic(
        &self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<(), HostError>;

    /// Creates a folder and its parents; sets `mode` on the last one.
    fn create_dir_all(&self, path: &Path, mode: u32) -> Result<(), HostError>;

    /// Removes a file; succeeds when it is already gone.
    fn remove_file(&self, path: &Path) -> Result<(), HostError>;

    /// Makes `path` a symlink to `target` (replacing a symlink already there, atomically).
    fn symlink(&self, target: &Path, path: &Path) -> Result<(), HostError>;

    /// Where a symlink points; `Ok(None)` when `path` is not a symlink.
    fn read_link(&self, path: &Path) -> Result<Option<PathBuf>, HostError>;

    /// Removes a file, symlink or whole folder tree; succeeds when nothing is there.
    fn remove_all(&self, path: &Path) -> Result<(), HostError>;

    /// Removes a folder if it is empty; `Ok(false)` when it is not (or not there).
    fn remove_dir_if_empty(&self, path: &Path) -> Result<bool, HostError>;

    /// Runs a command to completion (or its timeout). A non-zero exit is returned in
    /// the output, not as an error; see [`Host::run_checked`].
    fn run(&self, command: &CommandSpec) -> Result<CommandOutput, HostError>;

    /// Free bytes on the file system holding `path` (or its nearest existing parent).
    fn free_space(&self, path: &Path) -> Result<u64, HostError>;

    /// Runs a command and turns a non-zero exit into [`HostError::Failed`] with its stderr.
    fn run_checked(&self, command: &CommandSpec) -> Result<CommandOutput, HostError> {
        let output = self.run(command)?;
        if output.success() {
            Ok(output)
        } else {
            // A command that explains itself only on stdout is shown by that.
            let shown = if output.stderr.iter().all(u8::is_ascii_whitespace) {
                tail(&String::from_utf8_lossy(&output.stdout), 20)
            } else {
                String::from_utf8_lossy(&output.stderr).into_owned()
            };
            Err(HostError::Failed {
                command: command.to_string(),
                status: output.status_text(),
                stderr: shown,
            })
        }
    }

    /// Reads a file as UTF-8 text (lossy); `Ok(None)` when it does not exist.
    fn read_string(&self, path: &Path) -> Result<Option<String>, HostError> {
        Ok(self
            .read(path)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Whether anything exists at `path`.
    fn exists(&self, path: &Path) -> Result<bool, HostError> {
        Ok(self.metadata(path)?.is_some())
    }
}

/// Rejects relative paths and `..` components: every host path is absolute and literal.
pub fn check_host_path(path: &Path) -> Result<(), HostError> {
    if !path.is_absolute() {
        return Err(HostError::BadPath {
            path: path.to_path_buf(),
            reason: "host paths must be absolute",
        });
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(HostError::BadPath {
            path: path.to_path_buf(),
            reason: "host paths may not contain `..`",
        });
    }
    Ok(())
}
