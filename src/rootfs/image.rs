//! Reading a cluster image: sealer's `Metadata`, the per-arch or flat layout, the distro it
//! selects, and the binaries that distro needs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tree::{HostTree, Tree};
use crate::distro_kind::DistroKind;
use crate::host::{FileKind, Host, HostError};

/// The architectures a cluster image may carry subfolders for.
pub const ARCHES: [&str; 2] = ["amd64", "arm64"];

/// sealer's `Metadata` (other keys are ignored: images carry extras such as `NydusFlag`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Kubernetes (or distro) version, such as `v1.31.4+k3s1`.
    #[serde(default)]
    pub version: String,
    /// `amd64` or `arm64`.
    #[serde(default)]
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "kubeVersion",
        skip_serializing_if = "Option::is_none"
    )]
    pub kube_version: Option<String>,
    #[serde(
        default,
        rename = "ClusterRuntime",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_runtime: Option<String>,
}

/// Why the cluster image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no cluster image at {dir}: no Metadata file (looked for {}); set rootfs.dir, or rootfs.archive to unpack one", .looked.join(", "))]
    Missing { dir: String, looked: Vec<String> },
    #[error("{path}: not valid Metadata JSON: {source}")]
    BadMetadata {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: ClusterRuntime {value:?} is not supported; expected one of k3s, k0s, k8s, kubernetes")]
    UnknownRuntime { path: String, value: String },
    #[error("cluster image {dir} ({distro}) is incomplete: {}", .problems.join("; "))]
    Incomplete {
        dir: String,
        distro: DistroKind,
        problems: Vec<String>,
    },
    #[error(transparent)]
    Host(#[from] HostError),
}

/// A cluster image: where it is, what it says about itself, and its layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterImage {
    /// The image root (a host path, or the archive for an image not unpacked yet).
    pub dir: PathBuf,
    pub metadata: Metadata,
    /// Where `Metadata` was found, relative to the root.
    pub metadata_path: PathBuf,
    pub distro: DistroKind,
    /// Per-arch subfolders present (`amd64/`, `arm64/`); empty for a flat image.
    pub arches: Vec<String>,
    /// The subfolder used on this host, when the image is per-arch.
    pub arch_dir: Option<String>,
}

/// Binaries each distro needs in `bin/`.
pub fn required_binaries(distro: DistroKind) -> &'static [&'static str] {
    match distro {
        DistroKind::K3s => &["k3s"],
        DistroKind::K0s => &["k0s"],
        DistroKind::Kubeadm => &["kubeadm", "kubelet", "kubectl"],
    }
}

impl ClusterImage {
    /// Reads the unpacked image at the host path `dir`.
    pub fn open(host: &dyn Host, dir: &Path, host_arch: &str) -> Result<ClusterImage, RootfsError> {
        let mut image = Self::read(&HostTree { host, dir }, host_arch)?;
        image.dir = dir.to_path_buf();
        Ok(image)
    }

    /// Reads an image from any tree, checking that the distro's binaries are there.
    pub fn read(tree: &dyn Tree, host_arch: &str) -> Result<ClusterImage, RootfsError> {
        let image = Self::read_unchecked(tree, host_arch)?;
        // A per-arch image without this host's arch fails preflight's arch check, which
        // says so more plainly than a list of missing binaries would.
        if image.arches.is_empty() || image.arch_dir.is_some() {
            image.check_binaries(tree)?;
        }
        Ok(image)
    }

    /// Reads `Metadata` and the layout without checking for binaries (for `inspect`).
    pub fn read_unchecked(tree: &dyn Tree, host_arch: &str) -> Result<ClusterImage, RootfsError> {
        let mut arches = Vec::new();
        for arch in ARCHES {
            if tree
                .node(Path::new(arch))?
                .is_some_and(|n| n.kind == FileKind::Dir)
            {
                arches.push(arch.to_owned());
            }
        }
        let arch_dir = arches.iter().find(|a| *a == host_arch).cloned();

        // sealer's basefs kept Metadata in etc/ (per arch); newer images at the root.
        let mut candidates = vec![PathBuf::from("Metadata")];
        if let Some(a) = &arch_dir {
            candidates.push(Path::new(a).join("Metadata"));
        }
        candidates.push(PathBuf::from("etc/Metadata"));
        if let Some(a) = &arch_dir {
            candidates.push(Path::new(a).join("etc/Metadata"));
        }
        let mut found = None;
        for candidate in &candidates {
            if let Some(bytes) = tree.read(candidate)? {
                found = Some((candidate.clone(), bytes));
                break;
            }
        }
        let Some((metadata_path, bytes)) = found else {
            return Err(RootfsError::Missing {
                dir: tree.describe(),
                looked: candidates.iter().map(|c| c.display().to_string()).collect(),
            });
        };
        let shown = format!("{}/{}", tree.describe(), metadata_path.display());
        let mut metadata: Metadata =
            serde_json::from_slice(&bytes).map_err(|source| RootfsError::BadMetadata {
                path: shown.clone(),
                source,
            })?;
        if metadata.arch.is_empty() {
            if let Some(a) = &arch_dir {
                metadata.arch = a.clone();
            }
        }
        let distro = match metadata.cluster_runtime.as_deref() {
            None => {
                log::info!("{shown}: no ClusterRuntime; using kubeadm, as sealer does");
                DistroKind::Kubeadm
            }
            Some(value) => DistroKind::from_cluster_runtime(value).ok_or_else(|| {
                RootfsError::UnknownRuntime {
                    path: shown.clone(),
                    value: value.to_owned(),
                }
            })?,
        };
        Ok(ClusterImage {
            dir: PathBuf::from(tree.describe()),
            metadata,
            metadata_path,
            distro,
            arches,
            arch_dir,
        })
    }

    /// A folder of the image (`bin`, `images`, `registry`, `etc`, `manifests`), relative to
    /// the root: inside the arch subfolder when the image has one with it, else flat.
    pub fn subdir(&self, tree: &dyn Tree, name: &str) -> Result<PathBuf, HostError> {
        if let Some(a) = &self.arch_dir {
            let per_arch = Path::new(a).join(name);
            if tree.node(&per_arch)?.is_some() {
                return Ok(per_arch);
            }
        }
        Ok(PathBuf::from(name))
    }

    /// The host path of a folder of an unpacked image.
    pub fn host_subdir(&self, host: &dyn Host, name: &str) -> Result<PathBuf, HostError> {
        let tree = HostTree {
            host,
            dir: &self.dir,
        };
        Ok(self.dir.join(self.subdir(&tree, name)?))
    }

    /// Checks that the distro's binaries are present, files, and executable.
    pub fn check_binaries(&self, tree: &dyn Tree) -> Result<(), RootfsError> {
        let bin = self.subdir(tree, "bin")?;
        let mut problems = Vec::new();
        for name in required_binaries(self.distro) {
            let rel = bin.join(name);
            match tree.node(&rel)? {
                None => problems.push(format!("{} is missing", rel.display())),
                Some(n) if n.kind != FileKind::File => {
                    problems.push(format!("{} is not a file", rel.display()))
                }
                Some(n) if !n.executable => {
                    problems.push(format!("{} is not executable", rel.display()))
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RootfsError::Incomplete {
                dir: tree.describe(),
                distro: self.distro,
                problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    fn open(files: &[(&str, &str)]) -> Result<ClusterImage, RootfsError> {
        let mut host = FakeHost::new();
        for (path, contents) in files {
            host = host.with_file(path, contents);
        }
        for (path, _) in files {
            if path.contains("/bin/") {
                host.write_atomic(Path::new(path), b"#!", 0o755, None)
                    .unwrap();
            }
        }
        ClusterImage::open(&host, Path::new("/img"), "amd64")
    }

    const K3S_BIN: (&str, &str) = ("/img/bin/k3s", "");

    #[test]
    fn selects_the_distro() {
        let img = open(&[
            (
                "/img/Metadata",
                r#"{"version":"v1.31.4+k3s1","arch":"amd64","ClusterRuntime":"k3s"}"#,
            ),
            K3S_BIN,
        ])
        .unwrap();
        assert_eq!(img.distro, DistroKind::K3s);
        let kubeadm = [
            ("/img/bin/kubeadm", ""),
            ("/img/bin/kubelet", ""),
            ("/img/bin/kubectl", ""),
        ];
        for runtime in ["k8s", "kubernetes"] {
            let meta = format!(r#"{{"ClusterRuntime":"{runtime}"}}"#);
            let mut files = vec![("/img/Metadata", meta.as_str())];
            files.extend(kubeadm);
            assert_eq!(open(&files).unwrap().distro, DistroKind::Kubeadm);
        }
        let mut files = vec![("/img/Metadata", r#"{"version":"v1.22.15","arch":"amd64"}"#)];
        files.extend(kubeadm);
        assert_eq!(
            open(&files).unwrap().distro,
            DistroKind::Kubeadm,
            "absent means kubeadm"
        );
        let err = open(&[("/img/Metadata", r#"{"ClusterRuntime":"rke2"}"#)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("k3s, k0s, k8s, kubernetes"), "{err}");
        assert!(open(&[("/img/Metadata", "{")])
            .unwrap_err()
            .to_string()
            .contains("/img/Metadata"));
    }

    #[test]
    fn names_missing_binaries() {
        let err = open(&[
            ("/img/Metadata", r#"{"ClusterRuntime":"kubernetes"}"#),
            ("/img/bin/kubeadm", ""),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("bin/kubelet is missing"), "{err}");
        assert!(err.contains("bin/kubectl is missing"), "{err}");
        assert!(!err.contains("bin/kubeadm"), "{err}");
        let host = FakeHost::new()
            .with_file("/img/Metadata", r#"{"ClusterRuntime":"k0s"}"#)
            .with_file("/img/bin/k0s", "");
        let err = ClusterImage::open(&host, Path::new("/img"), "amd64")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bin/k0s is not executable"), "{err}");
    }

    #[test]
    fn basefs_per_arch_layout() {
        let img = open(&[
            (
                "/img/amd64/etc/Metadata",
                r#"{"version":"v1.22.15","arch":"amd64"}"#,
            ),
            ("/img/amd64/bin/kubeadm", ""),
            ("/img/amd64/bin/kubelet", ""),
            ("/img/amd64/bin/kubectl", ""),
            ("/img/arm64/bin/kubeadm", ""),
        ])
        .unwrap();
        assert_eq!(img.arch_dir.as_deref(), Some("amd64"));
        assert_eq!(img.arches, vec!["amd64", "arm64"]);
        assert_eq!(img.metadata_path, PathBuf::from("amd64/etc/Metadata"));
    }

    #[test]
    fn missing_metadata_lists_where_it_looked() {
        let err = open(&[K3S_BIN]).unwrap_err().to_string();
        assert!(err.contains("Metadata, etc/Metadata"), "{err}");
    }
}
