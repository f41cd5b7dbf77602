//! A bundle of binaries in a cluster image's `cri/` folder — containerd's
//! `cri-containerd-<v>-linux-<arch>` tarball (`usr/local/bin/containerd*`, `ctr`,
//! `usr/local/sbin/runc`, `opt/cni/bin/*`) or docker's static bundle — and what kubeadm's
//! node takes from it: containerd, its shims, `ctr`, `runc` and the CNI plugins. docker
//! itself is never taken: kubelet 1.24 and later has no dockershim.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Component, Path, PathBuf};

use super::tree::Tree;
use super::unpack::UnpackError;
use crate::host::{FileKind, HostError};
use crate::io::compression;

/// Folders deeper than this are not looked into (bundles are two or three deep).
const MAX_DEPTH: usize = 8;

/// The files of a bundle kubeadm's node installs, by path relative to the bundle root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleFiles {
    /// `containerd`, `containerd-shim*`, `ctr`, `runc`: (name, path in the bundle).
    pub binaries: Vec<(String, PathBuf)>,
    /// CNI plugins (files under a `cni/bin` folder): (name, path in the bundle).
    pub cni: Vec<(String, PathBuf)>,
}

impl BundleFiles {
    /// The path of the binary called `name`, if the bundle has it.
    pub fn binary(&self, name: &str) -> Option<&Path> {
        self.binaries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }
}

/// Picks the files kubeadm needs out of a bundle's tree (unpacked, or listed from the
/// archive). When a name appears twice, the shallower path wins.
pub fn files(tree: &dyn Tree) -> Result<BundleFiles, HostError> {
    let mut all = Vec::new();
    walk(tree, Path::new(""), 0, &mut all)?;
    all.sort_by_key(|p| (p.components().count(), p.clone()));
    let mut out = BundleFiles::default();
    for path in all {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let wanted = name == "containerd"
            || name == "ctr"
            || name == "runc"
            || name.starts_with("containerd-shim");
        if path.parent().is_some_and(|d| d.ends_with("cni/bin")) {
            if !out.cni.iter().any(|(n, _)| *n == name) {
                out.cni.push((name, path));
            }
        } else if wanted && out.binary(&name).is_none() {
            out.binaries.push((name, path));
        }
    }
    Ok(out)
}

fn walk(
    tree: &dyn Tree,
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> Result<(), HostError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for name in tree.list(dir)? {
        let path = dir.join(&name);
        match tree.node(&path)? {
            Some(n) if n.kind == FileKind::Dir => walk(tree, &path, depth + 1, out)?,
            Some(n) if n.kind == FileKind::File => out.push(path),
            _ => {}
        }
    }
    Ok(())
}

/// Copies the regular file at `member` (a path in the archive) into `out`, streaming;
/// `Ok(false)` when the archive has no such regular file. Only the member's bytes are
/// read from the archive: where they land is the caller's choice, never the archive's.
pub fn copy_member(archive: &Path, member: &Path, out: &Path) -> Result<bool, UnpackError> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e: io::Error| UnpackError::Io(crate::io::PathError::new(op, &path, e))
    };
    let file = File::open(archive).map_err(io_err("open", archive))?;
    let mut raw = BufReader::with_capacity(1 << 20, file);
    let kind = match compression::detect(&mut raw).map_err(io_err("read", archive))? {
        Ok(kind) => kind,
        Err(format) => {
            return Err(UnpackError::Unsupported {
                archive: archive.to_path_buf(),
                format,
            })
        }
    };
    let decoder = compression::decoder(kind, raw).map_err(io_err("read", archive))?;
    let mut tar = tar::Archive::new(decoder);
    for entry in tar.entries().map_err(io_err("read", archive))? {
        let mut entry = entry.map_err(io_err("read", archive))?;
        let path: PathBuf = entry
            .path()
            .map_err(io_err("read", archive))?
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let regular = matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        );
        if path == member && regular {
            let mut dest = File::create(out).map_err(io_err("create", out))?;
            io::copy(&mut entry, &mut dest).map_err(io_err("write", out))?;
            return Ok(true);
        }
    }
    Ok(false)
}
