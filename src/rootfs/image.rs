//! Reading a cluster image: sealer's `Metadata` and `Kubefile` labels, the per-arch or flat
//! layout, the distro it selects, where containerd and the registry come from, and the
//! binaries that distro needs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::kubefile::{self, Kubefile};
use super::sources::{self, BinarySource};
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
    #[error("{path}: {reason}")]
    BadKubefile { path: String, reason: String },
    /// `Metadata` and the Kubefile's labels disagree; each side says what it says.
    #[error("{metadata_says}, but {kubefile_says}; make them agree")]
    Disagree {
        metadata_says: String,
        kubefile_says: String,
    },
    #[error("{path}: container runtime {value:?} is not supported; bootstrap runs containerd (label {label}: containerd, or docker for an image that ships docker's bundle)")]
    UnknownContainerRuntime {
        path: String,
        value: String,
        label: &'static str,
    },
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
    /// Where the `Kubefile` was found, relative to the root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubefile_path: Option<PathBuf>,
    /// Its labels and launch commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubefile: Option<Kubefile>,
    /// The container runtime its label names (`containerd`, `docker`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<String>,
    /// Where containerd comes from (it matters for kubeadm, which runs the host's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containerd: Option<BinarySource>,
    /// Where the registry binary comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<BinarySource>,
    /// sealer's kubeadm configuration in the image (`etc/kubeadm.yml`), relative.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeadm_config: Option<PathBuf>,
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
        let (kubefile_path, kubefile) = read_kubefile(tree, arch_dir.as_deref())?;
        let labelled = kubefile
            .as_ref()
            .is_some_and(|k| k.label(kubefile::CLUSTER_RUNTIME_TYPE).is_some());
        let (metadata_path, mut metadata) = match found {
            Some((path, bytes)) => {
                let shown = format!("{}/{}", tree.describe(), path.display());
                let metadata: Metadata =
                    serde_json::from_slice(&bytes).map_err(|source| RootfsError::BadMetadata {
                        path: shown,
                        source,
                    })?;
                (path, metadata)
            }
            // sealer 0.9.2 and later describe the image by Kubefile labels alone.
            None if labelled => (
                kubefile_path.clone().unwrap_or_default(),
                Metadata::default(),
            ),
            None => {
                let mut looked: Vec<String> =
                    candidates.iter().map(|c| c.display().to_string()).collect();
                looked.push(
                    "a Kubefile with the label cluster.alpha.sealer.io/cluster-runtime-type".into(),
                );
                return Err(RootfsError::Missing {
                    dir: tree.describe(),
                    looked,
                });
            }
        };
        let shown = format!("{}/{}", tree.describe(), metadata_path.display());
        if metadata.arch.is_empty() {
            if let Some(a) = &arch_dir {
                metadata.arch = a.clone();
            }
        }
        let kubefile_shown = kubefile_path
            .as_ref()
            .map(|p| format!("{}/{}", tree.describe(), p.display()))
            .unwrap_or_default();
        let label = |key| kubefile.as_ref().and_then(|k| k.label(key));
        let runtime_label = label(kubefile::CLUSTER_RUNTIME_TYPE);
        let runtime = match (metadata.cluster_runtime.as_deref(), runtime_label) {
            (Some(value), _) => Some((value, shown.clone())),
            (None, Some(value)) => Some((value, kubefile_shown.clone())),
            (None, None) => None,
        };
        let distro = match runtime {
            None => {
                log::info!("{shown}: no ClusterRuntime; using kubeadm, as sealer does");
                DistroKind::Kubeadm
            }
            Some((value, path)) => DistroKind::from_cluster_runtime(value).ok_or_else(|| {
                RootfsError::UnknownRuntime {
                    path,
                    value: value.to_owned(),
                }
            })?,
        };
        if let (Some(meta), Some(value)) = (metadata.cluster_runtime.as_deref(), runtime_label) {
            if DistroKind::from_cluster_runtime(value) != Some(distro) {
                return Err(RootfsError::Disagree {
                    metadata_says: format!("{shown} says ClusterRuntime {meta:?}"),
                    kubefile_says: format!(
                        "{kubefile_shown} says {}={value:?}",
                        kubefile::CLUSTER_RUNTIME_TYPE
                    ),
                });
            }
        }
        if let Some(value) = label(kubefile::CLUSTER_RUNTIME_VERSION) {
            if metadata.version.is_empty() {
                metadata.version = value.to_owned();
            } else if metadata.version.trim_start_matches('v') != value.trim_start_matches('v') {
                return Err(RootfsError::Disagree {
                    metadata_says: format!("{shown} says version {:?}", metadata.version),
                    kubefile_says: format!(
                        "{kubefile_shown} says {}={value:?}",
                        kubefile::CLUSTER_RUNTIME_VERSION
                    ),
                });
            }
        }
        let container_runtime = label(kubefile::CONTAINER_RUNTIME_TYPE).map(str::to_owned);
        if let Some(value) = &container_runtime {
            if value != "containerd" && value != "docker" {
                return Err(RootfsError::UnknownContainerRuntime {
                    path: kubefile_shown.clone(),
                    value: value.clone(),
                    label: kubefile::CONTAINER_RUNTIME_TYPE,
                });
            }
        }
        let mut image = ClusterImage {
            dir: PathBuf::from(tree.describe()),
            metadata,
            metadata_path,
            distro,
            arches,
            arch_dir,
            kubefile_path,
            kubefile,
            container_runtime,
            containerd: None,
            registry: None,
            kubeadm_config: None,
        };
        let bin = image.subdir(tree, "bin")?;
        image.containerd = sources::containerd(tree, &bin, &image.subdir(tree, "cri")?)?;
        image.registry = sources::registry(tree, &bin, &image.subdir(tree, "images")?)?;
        let kubeadm = image.subdir(tree, "etc")?.join("kubeadm.yml");
        if tree
            .node(&kubeadm)?
            .is_some_and(|n| n.kind == FileKind::File)
        {
            image.kubeadm_config = Some(kubeadm);
        }
        Ok(image)
    }

    /// A folder of the image (`bin`, `images`, `registry`, `etc`, `manifests`), relative to
    /// the root: inside the arch subfolder when the image has one with it, else flat.
    /// sealer's k0s images keep `etc/` and `scripts/` under `rootfs/`, which is looked
    /// at last.
    pub fn subdir(&self, tree: &dyn Tree, name: &str) -> Result<PathBuf, HostError> {
        if let Some(a) = &self.arch_dir {
            let per_arch = Path::new(a).join(name);
            if tree.node(&per_arch)?.is_some() {
                return Ok(per_arch);
            }
        }
        let flat = PathBuf::from(name);
        if tree.node(&flat)?.is_none() {
            let nested = Path::new("rootfs").join(name);
            if tree.node(&nested)?.is_some() {
                return Ok(nested);
            }
        }
        Ok(flat)
    }

    /// Where an application's file (`APP name local://file`) is in the image: where
    /// `sealer build` puts it (`application/apps/<name>/<file name>`), else at its path
    /// from the image root. `None` when it is in neither place.
    pub fn app_file(
        &self,
        tree: &dyn Tree,
        name: &str,
        file: &str,
    ) -> Result<Option<PathBuf>, HostError> {
        let base = Path::new(file)
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        let built = Path::new("application/apps").join(name).join(base);
        let plain = PathBuf::from(file);
        for candidate in [built, plain] {
            let inside = candidate
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if inside && tree.node(&candidate)?.is_some() {
                return Ok(Some(candidate));
            }
        }
        Ok(None)
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

/// The image's `Kubefile` (at the root, else in the arch folder), parsed.
fn read_kubefile(
    tree: &dyn Tree,
    arch_dir: Option<&str>,
) -> Result<(Option<PathBuf>, Option<Kubefile>), RootfsError> {
    let mut candidates = vec![PathBuf::from("Kubefile")];
    if let Some(a) = arch_dir {
        candidates.push(Path::new(a).join("Kubefile"));
    }
    for candidate in candidates {
        if let Some(bytes) = tree.read(&candidate)? {
            let shown = format!("{}/{}", tree.describe(), candidate.display());
            let text = String::from_utf8(bytes).map_err(|_| RootfsError::BadKubefile {
                path: shown.clone(),
                reason: "not UTF-8 text".into(),
            })?;
            let kubefile = Kubefile::parse(&text).map_err(|e| RootfsError::BadKubefile {
                path: shown,
                reason: e.to_string(),
            })?;
            return Ok((Some(candidate), Some(kubefile)));
        }
    }
    Ok((None, None))
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

    const KUBEADM_BINS: [(&str, &str); 3] = [
        ("/img/bin/kubeadm", ""),
        ("/img/bin/kubelet", ""),
        ("/img/bin/kubectl", ""),
    ];
    const LABELS: &str = "LABEL cluster.alpha.sealer.io/cluster-runtime-type=\"kubernetes\"\nLABEL cluster.alpha.sealer.io/cluster-runtime-version=\"v1.31.4\"\nLABEL cluster.alpha.sealer.io/container-runtime-type=\"docker\"\n";

    #[test]
    fn kubefile_labels_name_the_runtime_when_metadata_does_not() {
        let mut files = vec![
            ("/img/Metadata", r#"{"arch":"amd64"}"#),
            ("/img/Kubefile", LABELS),
            ("/img/cri/docker.tar.gz", "x"),
            ("/img/images/docker-amd64-registry-image.tar.gz", "x"),
            ("/img/images/app.tar", "x"),
            ("/img/etc/kubeadm.yml", "kind: ClusterConfiguration\n"),
        ];
        files.extend(KUBEADM_BINS);
        let img = open(&files).unwrap();
        assert_eq!(img.distro, DistroKind::Kubeadm);
        assert_eq!(
            img.metadata.version, "v1.31.4",
            "the version label fills it"
        );
        assert_eq!(img.container_runtime.as_deref(), Some("docker"));
        assert_eq!(
            img.containerd,
            Some(BinarySource::Bundle {
                path: "cri/docker.tar.gz".into(),
                docker: true
            })
        );
        assert_eq!(
            img.registry,
            Some(BinarySource::Image {
                path: "images/docker-amd64-registry-image.tar.gz".into()
            })
        );
        assert_eq!(img.kubeadm_config, Some(PathBuf::from("etc/kubeadm.yml")));

        // Without Metadata at all, the labels alone describe the image (sealer 0.9.2+).
        let mut files = vec![("/img/Kubefile", LABELS)];
        files.extend(KUBEADM_BINS);
        let img = open(&files).unwrap();
        assert_eq!(img.metadata_path, PathBuf::from("Kubefile"));
        assert_eq!(img.metadata.version, "v1.31.4");
    }

    #[test]
    fn metadata_and_labels_must_agree() {
        let mut files = vec![
            (
                "/img/Metadata",
                r#"{"version":"1.31.4","ClusterRuntime":"k8s"}"#,
            ),
            ("/img/Kubefile", LABELS),
        ];
        files.extend(KUBEADM_BINS);
        let img = open(&files).unwrap();
        assert_eq!(
            img.metadata.version, "1.31.4",
            "Metadata wins where both speak"
        );

        let err = open(&[
            ("/img/Metadata", r#"{"ClusterRuntime":"k3s"}"#),
            ("/img/Kubefile", LABELS),
            ("/img/bin/k3s", ""),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/img/Metadata says ClusterRuntime \"k3s\"")
                && err.contains("/img/Kubefile says cluster.alpha.sealer.io/cluster-runtime-type=\"kubernetes\""),
            "{err}"
        );
        let mut files = vec![
            ("/img/Metadata", r#"{"version":"v1.30.1"}"#),
            ("/img/Kubefile", LABELS),
        ];
        files.extend(KUBEADM_BINS);
        let err = open(&files).unwrap_err().to_string();
        assert!(
            err.contains("version \"v1.30.1\"") && err.contains("\"v1.31.4\""),
            "{err}"
        );
        let err = open(&[
            ("/img/Metadata", "{}"),
            (
                "/img/Kubefile",
                "LABEL cluster.alpha.sealer.io/container-runtime-type=cri-o\n",
            ),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"cri-o\" is not supported"), "{err}");
    }

    #[test]
    fn seed_layout_keeps_etc_under_rootfs_and_the_registry_as_an_image() {
        let img = open(&[
            (
                "/img/amd64/Metadata",
                r#"{"version":"v1.31.3+k0s.0","ClusterRuntime":"k0s"}"#,
            ),
            ("/img/amd64/bin/k0s", ""),
            ("/img/amd64/images/registry.tar.gz", "x"),
            ("/img/rootfs/etc/registry.yml", "domain: sea.hub\n"),
            ("/img/rootfs/etc/kubeadm.yml", "{}\n"),
        ])
        .unwrap();
        assert_eq!(
            img.registry,
            Some(BinarySource::Image {
                path: "amd64/images/registry.tar.gz".into()
            })
        );
        assert_eq!(
            img.kubeadm_config,
            Some(PathBuf::from("rootfs/etc/kubeadm.yml"))
        );
        let err = open(&[
            ("/img/Metadata", r#"{"ClusterRuntime":"k3s"}"#),
            ("/img/bin/k3s", ""),
            ("/img/images/registry.tar", "x"),
            ("/img/images/registry-ui.tar", "x"),
        ])
        .unwrap()
        .registry
        .unwrap()
        .to_string();
        assert!(
            err.contains("images/registry-ui.tar, images/registry.tar"),
            "{err}"
        );
    }
}
