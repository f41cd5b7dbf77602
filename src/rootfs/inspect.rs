//! `rootfs inspect`: what a cluster image holds, from a folder or straight from an archive.

use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::image::{required_binaries, ClusterImage};
use super::tree::{ListingTree, Node, Tree};
use super::unpack::UnpackError;
use crate::host::{FileKind, HostError};
use crate::io::compression;

/// Metadata files larger than this are not read from archives (they are a few hundred bytes).
const MAX_METADATA_BYTES: u64 = 1 << 20;
/// How deep registry repository names may nest (`org/team/app`).
const MAX_REPO_DEPTH: usize = 6;

/// What a cluster image holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InspectReport {
    pub source: String,
    /// `folder`, or the archive format (`tar+zstd` …).
    pub format: String,
    pub distro: String,
    pub version: String,
    pub arch: String,
    pub arches: Vec<String>,
    pub metadata: String,
    pub binaries: Vec<FileSummary>,
    pub images: ImagesSummary,
    pub registry_repositories: Vec<String>,
    pub manifests: Vec<String>,
    /// Where containerd comes from (kubeadm installs it on the host).
    pub containerd: Option<String>,
    /// Where the registry binary comes from.
    pub registry: Option<String>,
    /// The Kubefile, its labels, and what runs once the cluster is up.
    pub kubefile: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub launch: Vec<String>,
    /// sealer's kubeadm configuration, the base of the one bootstrap writes.
    pub kubeadm_config: Option<String>,
}

/// One file and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSummary {
    pub name: String,
    pub bytes: u64,
}

/// Image archives under `images/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImagesSummary {
    pub count: usize,
    pub bytes: u64,
    pub files: Vec<FileSummary>,
}

fn files_in(tree: &dyn Tree, dir: &Path) -> Result<Vec<FileSummary>, HostError> {
    let mut out = Vec::new();
    for name in tree.list(dir)? {
        if let Some(Node {
            kind: FileKind::File,
            size,
            ..
        }) = tree.node(&dir.join(&name))?
        {
            out.push(FileSummary { name, bytes: size });
        }
    }
    Ok(out)
}

fn repositories(
    tree: &dyn Tree,
    base: &Path,
    prefix: &Path,
    depth: usize,
    out: &mut Vec<String>,
) -> Result<(), HostError> {
    if depth > MAX_REPO_DEPTH {
        return Ok(());
    }
    let names = tree.list(&base.join(prefix))?;
    if names.iter().any(|n| n == "_manifests") {
        out.push(prefix.display().to_string());
        return Ok(());
    }
    for name in names {
        if name.starts_with('_') {
            continue;
        }
        let rel = prefix.join(&name);
        if tree
            .node(&base.join(&rel))?
            .is_some_and(|n| n.kind == FileKind::Dir)
        {
            repositories(tree, base, &rel, depth + 1, out)?;
        }
    }
    Ok(())
}

/// Summarises an image read from `tree`.
pub fn report(
    tree: &dyn Tree,
    image: &ClusterImage,
    format: &str,
) -> Result<InspectReport, HostError> {
    let bin = image.subdir(tree, "bin")?;
    let mut binaries = files_in(tree, &bin)?;
    let needed = required_binaries(image.distro);
    binaries.sort_by_key(|b| (!needed.contains(&b.name.as_str()), b.name.clone()));
    let images_dir = image.subdir(tree, "images")?;
    let files = files_in(tree, &images_dir)?;
    let images = ImagesSummary {
        count: files.len(),
        bytes: files.iter().map(|f| f.bytes).sum(),
        files,
    };
    let mut repos = Vec::new();
    let registry = image
        .subdir(tree, "registry")?
        .join("docker/registry/v2/repositories");
    repositories(tree, &registry, Path::new(""), 0, &mut repos)?;
    let manifests_dir = image.subdir(tree, "manifests")?;
    let manifests = files_in(tree, &manifests_dir)?
        .into_iter()
        .map(|f| f.name)
        .collect();
    let shown = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    Ok(InspectReport {
        containerd: image.containerd.as_ref().map(ToString::to_string),
        registry: image.registry.as_ref().map(ToString::to_string),
        kubefile: shown(&image.kubefile_path),
        labels: image
            .kubefile
            .as_ref()
            .map(|k| k.labels.clone())
            .unwrap_or_default(),
        launch: image
            .kubefile
            .as_ref()
            .map(|k| k.launch.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        kubeadm_config: shown(&image.kubeadm_config),
        source: tree.describe(),
        format: format.to_owned(),
        distro: image.distro.to_string(),
        version: image.metadata.version.clone(),
        arch: image.metadata.arch.clone(),
        arches: image.arches.clone(),
        metadata: image.metadata_path.display().to_string(),
        binaries,
        images,
        registry_repositories: repos,
        manifests,
    })
}

/// Lists an archive's entries in one streaming pass (nothing is written), keeping the
/// contents of the files that may be `Metadata` or the `Kubefile`.
pub fn list_archive(
    archive: &Path,
) -> Result<(ListingTree, compression::Compression), UnpackError> {
    let file = std::fs::File::open(archive)
        .map_err(|e| UnpackError::Io(crate::io::PathError::new("open", archive, e)))?;
    list_stream(archive, file)
}

/// [`list_archive`] of a stream (a download), `archive` naming it in messages.
pub fn list_stream(
    archive: &Path,
    reader: impl Read,
) -> Result<(ListingTree, compression::Compression), UnpackError> {
    let io_err = |op: &'static str| {
        move |source: io::Error| UnpackError::Io(crate::io::PathError::new(op, archive, source))
    };
    let mut raw = BufReader::with_capacity(1 << 20, reader);
    let compression = match compression::detect(&mut raw).map_err(io_err("read"))? {
        Ok(c) => c,
        Err(format) => {
            return Err(UnpackError::Unsupported {
                archive: archive.to_path_buf(),
                format,
            })
        }
    };
    let decoder = compression::decoder(compression, &mut raw).map_err(io_err("read"))?;
    let mut tar = tar::Archive::new(decoder);
    let mut listing = ListingTree {
        archive: archive.to_path_buf(),
        ..ListingTree::default()
    };
    let corrupt =
        |e: io::Error| UnpackError::Io(crate::io::PathError::new("read archive", archive, e));
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw_path = entry.path_bytes().into_owned();
        let rel: PathBuf = Path::new(std::ffi::OsStr::from_bytes(&raw_path))
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => FileKind::Dir,
            tar::EntryType::Symlink => FileKind::Symlink,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => {
                FileKind::File
            }
            _ => FileKind::Other,
        };
        if kind == FileKind::Symlink {
            if let Some(target) = entry.link_name_bytes() {
                let target = Path::new(std::ffi::OsStr::from_bytes(&target)).to_path_buf();
                listing.links.insert(rel.clone(), target);
            }
        }
        let size = entry.size();
        let executable = header.mode().unwrap_or(0) & 0o111 != 0;
        if rel
            .file_name()
            .is_some_and(|n| n == "Metadata" || n == "Kubefile")
            && size <= MAX_METADATA_BYTES
        {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(corrupt)?;
            listing.contents.insert(rel.clone(), bytes);
        }
        listing.nodes.insert(
            rel,
            Node {
                kind,
                size,
                executable,
            },
        );
    }
    Ok((listing, compression))
}
