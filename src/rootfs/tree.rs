//! A read-only view of a cluster image, whether an unpacked folder or an archive listing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::host::{FileKind, Host, HostError};

/// What is at a path inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub kind: FileKind,
    pub size: u64,
    pub executable: bool,
}

/// A cluster image's files, by path relative to the image root.
pub trait Tree {
    /// What is at `rel`, following symlinks (`bin/kubectl -> k3s`).
    fn node(&self, rel: &Path) -> Result<Option<Node>, HostError>;
    /// Names directly under the folder `rel`, sorted.
    fn list(&self, rel: &Path) -> Result<Vec<String>, HostError>;
    /// A small file's contents.
    fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>, HostError>;
    /// Where the image is, for messages.
    fn describe(&self) -> String;
}

/// An unpacked image under a host path.
pub struct HostTree<'a> {
    pub host: &'a dyn Host,
    pub dir: &'a Path,
}

impl Tree for HostTree<'_> {
    fn node(&self, rel: &Path) -> Result<Option<Node>, HostError> {
        let info = self.host.stat(&self.dir.join(rel))?;
        Ok(info.map(|i| Node {
            kind: i.kind,
            size: i.len,
            executable: i.mode & 0o111 != 0,
        }))
    }

    fn list(&self, rel: &Path) -> Result<Vec<String>, HostError> {
        Ok(self.host.list_dir(&self.dir.join(rel))?.unwrap_or_default())
    }

    fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>, HostError> {
        self.host.read(&self.dir.join(rel))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// An archive's entries, listed once while streaming it.
#[derive(Debug, Default)]
pub struct ListingTree {
    pub archive: PathBuf,
    pub nodes: BTreeMap<PathBuf, Node>,
    /// Contents of the few small files the reader needs (the Metadata candidates).
    pub contents: BTreeMap<PathBuf, Vec<u8>>,
    /// Symlink targets, as written in the archive.
    pub links: BTreeMap<PathBuf, PathBuf>,
}

/// Symlinks followed before a listing gives up on a chain.
const MAX_LINK_HOPS: usize = 8;

impl Tree for ListingTree {
    fn node(&self, rel: &Path) -> Result<Option<Node>, HostError> {
        let mut rel = rel.to_path_buf();
        for _ in 0..MAX_LINK_HOPS {
            match self.links.get(&rel) {
                Some(target) => {
                    let dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
                    rel = normalize(&dir.join(target));
                }
                None => break,
            }
        }
        let rel = rel.as_path();
        if let Some(node) = self.nodes.get(rel) {
            return Ok(Some(*node));
        }
        // Folders are often implied by their entries rather than listed.
        let implied = self.nodes.keys().any(|p| p.starts_with(rel) && p != rel);
        Ok(implied.then_some(Node {
            kind: FileKind::Dir,
            size: 0,
            executable: true,
        }))
    }

    fn list(&self, rel: &Path) -> Result<Vec<String>, HostError> {
        let mut names: Vec<String> = self
            .nodes
            .keys()
            .filter_map(|p| p.strip_prefix(rel).ok())
            .filter_map(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.contents.get(rel).cloned())
    }

    fn describe(&self) -> String {
        self.archive.display().to_string()
    }
}

/// `a/b/../c` as `a/c`, lexically (listings have no file system to ask).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}
