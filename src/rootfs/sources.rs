//! Where a cluster image keeps containerd and the registry: ready binaries in `bin/`, or
//! — as sealer's basefs builds images — containerd in a `cri/` bundle and the registry
//! as a container image under `images/`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::tree::Tree;
use crate::host::{FileKind, HostError};

/// File names taken as image archives under `images/`.
const IMAGE_SUFFIXES: [&str; 6] = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd", ".tzst"];

/// Where a binary comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "kebab-case")]
pub enum BinarySource {
    /// A ready binary (`bin/containerd`, `bin/registry`), relative to the image root.
    Bin { path: PathBuf },
    /// A tarball of binaries under `cri/`: containerd's `cri-containerd` bundle, or
    /// docker's static bundle (`docker: true`), which also holds containerd, its shim,
    /// `ctr` and `runc`.
    Bundle { path: PathBuf, docker: bool },
    /// A container image archive under `images/` (docker-save or OCI) whose layers
    /// hold the binary (`registry:2` holds `/bin/registry`).
    Image { path: PathBuf },
    /// More than one archive under `images/` looks like the registry's image.
    Ambiguous { candidates: Vec<PathBuf> },
}

impl BinarySource {
    /// The path in the image it names (the first candidate when ambiguous).
    pub fn path(&self) -> &Path {
        match self {
            BinarySource::Bin { path }
            | BinarySource::Bundle { path, .. }
            | BinarySource::Image { path } => path,
            BinarySource::Ambiguous { candidates } => {
                candidates.first().map_or(Path::new(""), PathBuf::as_path)
            }
        }
    }
}

impl std::fmt::Display for BinarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BinarySource::Bin { path } => write!(f, "{}", path.display()),
            BinarySource::Bundle {
                path,
                docker: false,
            } => write!(f, "{} (containerd bundle)", path.display()),
            BinarySource::Bundle { path, docker: true } => write!(
                f,
                "{} (docker's static bundle: its containerd, shim, ctr and runc; docker itself is not installed, kubelet 1.24 and later has no dockershim)",
                path.display()
            ),
            BinarySource::Image { path } => write!(
                f,
                "{} (container image: its /bin/registry is taken from its layers, and it is not seeded)",
                path.display()
            ),
            BinarySource::Ambiguous { candidates } => write!(
                f,
                "ambiguous: {} all look like the registry's image; keep one, or ship bin/registry",
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

fn is_file(tree: &dyn Tree, rel: &Path) -> Result<bool, HostError> {
    Ok(tree.node(rel)?.is_some_and(|n| n.kind == FileKind::File))
}

/// containerd: `bin/containerd`, else a bundle under `cri/` (containerd's preferred to
/// docker's), else none.
pub fn containerd(
    tree: &dyn Tree,
    bin: &Path,
    cri: &Path,
) -> Result<Option<BinarySource>, HostError> {
    let binary = bin.join("containerd");
    if is_file(tree, &binary)? {
        return Ok(Some(BinarySource::Bin { path: binary }));
    }
    let names = tree.list(cri)?;
    let tarball = |n: &str| n.ends_with(".tar.gz") || n.ends_with(".tgz") || n.ends_with(".tar");
    let pick = |prefix: &str| {
        names
            .iter()
            .find(|n| n.starts_with(prefix) && tarball(n))
            .map(|n| cri.join(n))
    };
    for (prefix, docker) in [
        ("containerd", false),
        ("cri-containerd", false),
        ("docker", true),
    ] {
        if let Some(path) = pick(prefix) {
            if is_file(tree, &path)? {
                return Ok(Some(BinarySource::Bundle { path, docker }));
            }
        }
    }
    Ok(None)
}

/// The registry: `bin/registry`, else the one archive under `images/` whose name says
/// registry, else none.
pub fn registry(
    tree: &dyn Tree,
    bin: &Path,
    images: &Path,
) -> Result<Option<BinarySource>, HostError> {
    let binary = bin.join("registry");
    if is_file(tree, &binary)? {
        return Ok(Some(BinarySource::Bin { path: binary }));
    }
    let mut candidates = Vec::new();
    for name in tree.list(images)? {
        let path = images.join(&name);
        if name.to_ascii_lowercase().contains("registry")
            && IMAGE_SUFFIXES.iter().any(|s| name.ends_with(s))
            && is_file(tree, &path)?
        {
            candidates.push(path);
        }
    }
    Ok(match candidates.len() {
        0 => None,
        1 => Some(BinarySource::Image {
            path: candidates.remove(0),
        }),
        _ => Some(BinarySource::Ambiguous { candidates }),
    })
}
