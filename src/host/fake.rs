//! An in-memory host that records every command, for unit tests of steps and phases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Owner;
use super::{check_host_path, CommandOutput, CommandSpec, FileInfo, FileKind, Host, HostError};

type Responder = Box<dyn Fn(&CommandSpec) -> CommandOutput + Send>;

#[derive(Debug, Clone)]
struct Entry {
    kind: FileKind,
    mode: u32,
    owner: Owner,
    contents: Vec<u8>,
}

/// Files in memory, commands recorded and answered by a responder (exit 0 by default).
pub struct FakeHost {
    files: Mutex<BTreeMap<PathBuf, Entry>>,
    commands: Mutex<Vec<String>>,
    responder: Mutex<Responder>,
    free_bytes: u64,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            files: Mutex::new(BTreeMap::new()),
            commands: Mutex::new(Vec::new()),
            responder: Mutex::new(Box::new(|_| CommandOutput {
                code: Some(0),
                ..CommandOutput::default()
            })),
            free_bytes: 100 << 30,
        }
    }
}

impl FakeHost {
    /// An empty host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file (and its parent folders).
    pub fn with_file(self, path: &str, contents: impl AsRef<[u8]>) -> Self {
        self.write_atomic(Path::new(path), contents.as_ref(), 0o644, None)
            .expect("fake write");
        self
    }

    /// Answers commands with `responder` instead of exit 0.
    pub fn respond(&self, responder: impl Fn(&CommandSpec) -> CommandOutput + Send + 'static) {
        *self.responder.lock().expect("fake lock") = Box::new(responder);
    }

    /// Every command run so far, as display strings.
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().expect("fake lock").clone()
    }

    /// The contents of a file, if present.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.files
            .lock()
            .expect("fake lock")
            .get(Path::new(path))
            .map(|e| e.contents.clone())
    }

    /// A copy of what is at `path`.
    fn entry(&self, path: &Path) -> Result<Option<Entry>, HostError> {
        check_host_path(path)?;
        Ok(self.files.lock().expect("fake lock").get(path).cloned())
    }

    /// Puts `entry` at `path`, making its parent folders as `mkdir -p` would.
    fn put(&self, path: &Path, kind: FileKind, mode: u32, owner: Owner, contents: Vec<u8>) {
        let mut files = self.files.lock().expect("fake lock");
        if let Some(parent) = path.parent() {
            Self::mkdirs(&mut files, parent);
        }
        let entry = Entry {
            kind,
            mode,
            owner,
            contents,
        };
        files.insert(path.to_path_buf(), entry);
    }

    fn mkdirs(files: &mut BTreeMap<PathBuf, Entry>, path: &Path) {
        for ancestor in path.ancestors() {
            files.entry(ancestor.to_path_buf()).or_insert(Entry {
                kind: FileKind::Dir,
                mode: 0o755,
                owner: Owner { uid: 0, gid: 0 },
                contents: Vec::new(),
            });
        }
    }
}

impl Host for FakeHost {
    fn root(&self) -> &Path {
        Path::new("/")
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self
            .entry(path)?
            .filter(|e| e.kind == FileKind::File)
            .map(|e| e.contents))
    }

    fn metadata(&self, path: &Path) -> Result<Option<FileInfo>, HostError> {
        Ok(self.entry(path)?.map(|e| FileInfo {
            kind: e.kind,
            mode: e.mode,
            uid: e.owner.uid,
            gid: e.owner.gid,
            len: e.contents.len() as u64,
        }))
    }

    fn stat(&self, path: &Path) -> Result<Option<FileInfo>, HostError> {
        self.metadata(path)
    }

    fn real_path(&self, path: &Path) -> Result<PathBuf, HostError> {
        Err(HostError::BadPath {
            path: path.to_path_buf(),
            reason: "the in-memory test host has no real files",
        })
    }

    fn list_dir(&self, path: &Path) -> Result<Option<Vec<String>>, HostError> {
        check_host_path(path)?;
        let files = self.files.lock().expect("fake lock");
        if !files.contains_key(path) {
            return Ok(None);
        }
        Ok(Some(
            files
                .keys()
                .filter(|p| p.parent() == Some(path) && p.as_path() != path)
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
        ))
    }

    fn write_atomic(
        &self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<(), HostError> {
        check_host_path(path)?;
        let owner = owner.unwrap_or(Owner { uid: 0, gid: 0 });
        self.put(path, FileKind::File, mode, owner, contents.to_vec());
        Ok(())
    }

    fn create_dir_all(&self, path: &Path, mode: u32) -> Result<(), HostError> {
        check_host_path(path)?;
        let mut files = self.files.lock().expect("fake lock");
        Self::mkdirs(&mut files, path);
        if let Some(entry) = files.get_mut(path) {
            entry.mode = mode;
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Result<(), HostError> {
        check_host_path(path)?;
        self.files.lock().expect("fake lock").remove(path);
        Ok(())
    }

    fn symlink(&self, target: &Path, path: &Path) -> Result<(), HostError> {
        check_host_path(path)?;
        let target = target.as_os_str().as_encoded_bytes().to_vec();
        self.put(
            path,
            FileKind::Symlink,
            0o777,
            Owner { uid: 0, gid: 0 },
            target,
        );
        Ok(())
    }

    fn read_link(&self, path: &Path) -> Result<Option<PathBuf>, HostError> {
        check_host_path(path)?;
        Ok(self
            .files
            .lock()
            .expect("fake lock")
            .get(path)
            .filter(|e| e.kind == FileKind::Symlink)
            .map(|e| PathBuf::from(String::from_utf8_lossy(&e.contents).into_owned())))
    }

    fn remove_all(&self, path: &Path) -> Result<(), HostError> {
        check_host_path(path)?;
        self.files
            .lock()
            .expect("fake lock")
            .retain(|p, _| !p.starts_with(path));
        Ok(())
    }

    fn remove_dir_if_empty(&self, path: &Path) -> Result<bool, HostError> {
        check_host_path(path)?;
        let mut files = self.files.lock().expect("fake lock");
        let is_dir = files.get(path).is_some_and(|e| e.kind == FileKind::Dir);
        let has_children = files.keys().any(|p| p.parent() == Some(path));
        if is_dir && !has_children {
            files.remove(path);
            return Ok(true);
        }
        Ok(false)
    }

    fn run(&self, command: &CommandSpec) -> Result<CommandOutput, HostError> {
        self.commands
            .lock()
            .expect("fake lock")
            .push(command.to_string());
        Ok((self.responder.lock().expect("fake lock"))(command))
    }

    fn free_space(&self, _path: &Path) -> Result<u64, HostError> {
        Ok(self.free_bytes)
    }
}
