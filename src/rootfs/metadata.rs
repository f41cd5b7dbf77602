//! sealer's `Metadata` JSON at the root of a cluster image, and distro selection from it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::distro::DistroKind;
use crate::host::{Host, HostError};

/// The name of the metadata file at the image root.
pub const METADATA_FILE: &str = "Metadata";

/// sealer's `Metadata` (unknown keys are kept out, not refused: images carry extras).
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
    #[error("no cluster image at {dir}: {file} is missing (set rootfs.dir, or rootfs.archive to unpack one)")]
    Missing { dir: PathBuf, file: PathBuf },
    #[error("{path}: not valid Metadata JSON: {source}")]
    BadMetadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: ClusterRuntime {value:?} is not supported; expected one of k3s, k0s, k8s, kubernetes")]
    UnknownRuntime { path: PathBuf, value: String },
    #[error(transparent)]
    Host(#[from] HostError),
}

/// An unpacked cluster image on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterImage {
    pub dir: PathBuf,
    pub metadata: Metadata,
    pub distro: DistroKind,
}

impl ClusterImage {
    /// Reads the image at `dir` (a host path) and selects its distro.
    pub fn open(host: &dyn Host, dir: &Path) -> Result<ClusterImage, RootfsError> {
        let path = dir.join(METADATA_FILE);
        let bytes = host.read(&path)?.ok_or_else(|| RootfsError::Missing {
            dir: dir.to_path_buf(),
            file: path.clone(),
        })?;
        let metadata: Metadata =
            serde_json::from_slice(&bytes).map_err(|source| RootfsError::BadMetadata {
                path: path.clone(),
                source,
            })?;
        let distro = match metadata.cluster_runtime.as_deref() {
            None => {
                log::info!(
                    "{}: no ClusterRuntime; using kubeadm, as sealer does",
                    path.display()
                );
                DistroKind::Kubeadm
            }
            Some(value) => DistroKind::from_cluster_runtime(value).ok_or_else(|| {
                RootfsError::UnknownRuntime {
                    path: path.clone(),
                    value: value.to_owned(),
                }
            })?,
        };
        Ok(ClusterImage {
            dir: dir.to_path_buf(),
            metadata,
            distro,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    fn open(json: &str) -> Result<ClusterImage, RootfsError> {
        let host = FakeHost::new().with_file("/img/Metadata", json);
        ClusterImage::open(&host, Path::new("/img"))
    }

    #[test]
    fn selects_the_distro() {
        let img =
            open(r#"{"version":"v1.31.4+k3s1","arch":"amd64","ClusterRuntime":"k3s"}"#).unwrap();
        assert_eq!(img.distro, DistroKind::K3s);
        assert_eq!(
            open(r#"{"ClusterRuntime":"k8s"}"#).unwrap().distro,
            DistroKind::Kubeadm
        );
        assert_eq!(
            open(r#"{"ClusterRuntime":"kubernetes"}"#).unwrap().distro,
            DistroKind::Kubeadm
        );
        assert_eq!(
            open(r#"{"ClusterRuntime":"k0s"}"#).unwrap().distro,
            DistroKind::K0s
        );
        assert_eq!(
            open(r#"{"version":"v1.22.15","arch":"amd64"}"#)
                .unwrap()
                .distro,
            DistroKind::Kubeadm
        );
        let err = open(r#"{"ClusterRuntime":"rke2"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("k3s, k0s, k8s, kubernetes"), "{err}");
        assert!(open("{").unwrap_err().to_string().contains("/img/Metadata"));
    }
}
