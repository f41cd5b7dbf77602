//! Which distribution a cluster image carries and what each asks of a host: a closed set
//! every layer may name, so this module imports nothing of the crate.

use std::fmt;

use serde::Serialize;

/// Which distribution a cluster image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DistroKind {
    K3s,
    K0s,
    Kubeadm,
}

impl fmt::Display for DistroKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DistroKind::K3s => "k3s",
            DistroKind::K0s => "k0s",
            DistroKind::Kubeadm => "kubeadm",
        })
    }
}

/// Minimums and host needs of one distro for one kind of node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    pub min_cpus: usize,
    pub min_memory_mib: u64,
    /// kubelet refuses to run with swap on (kubeadm's `failSwapOn: true`).
    pub swap_off: bool,
    /// TCP ports this node's distro binds, with what binds them.
    pub ports: Vec<(u16, &'static str)>,
}

impl DistroKind {
    /// Maps sealer's `ClusterRuntime` to a distro (`k8s` and `kubernetes` are kubeadm).
    pub fn from_cluster_runtime(value: &str) -> Option<DistroKind> {
        match value {
            "k3s" => Some(DistroKind::K3s),
            "k0s" => Some(DistroKind::K0s),
            "k8s" | "kubernetes" => Some(DistroKind::Kubeadm),
            _ => None,
        }
    }

    /// What a controller (`controller = true`) or worker of this distro needs. CPU figures
    /// are the upstream minimums (k3s server 2, k0s 1, kubeadm control plane 2); memory
    /// figures are compared with `MemTotal`, which a "2 GB" machine reports as about
    /// 1.9 GiB, so they sit where kubeadm's own check does (1700 MiB for 2 GB).
    pub fn requirements(self, controller: bool) -> Requirements {
        let kubelet = (10250, "kubelet");
        match (self, controller) {
            (DistroKind::K3s, true) => Requirements {
                min_cpus: 2,
                min_memory_mib: 1700,
                swap_off: false,
                ports: vec![
                    (6443, "k3s supervisor and API"),
                    (2379, "etcd client"),
                    (2380, "etcd peer"),
                    kubelet,
                ],
            },
            (DistroKind::K3s, false) => Requirements {
                min_cpus: 1,
                min_memory_mib: 450,
                swap_off: false,
                ports: vec![kubelet],
            },
            (DistroKind::K0s, true) => Requirements {
                min_cpus: 1,
                min_memory_mib: 900,
                swap_off: false,
                ports: vec![
                    (6443, "kube-apiserver"),
                    (2380, "etcd peer"),
                    (8132, "konnectivity"),
                    (9443, "k0s join API"),
                    kubelet,
                ],
            },
            (DistroKind::K0s, false) => Requirements {
                min_cpus: 1,
                min_memory_mib: 450,
                swap_off: false,
                ports: vec![kubelet],
            },
            (DistroKind::Kubeadm, true) => Requirements {
                min_cpus: 2,
                min_memory_mib: 1700,
                swap_off: true,
                ports: vec![
                    (6443, "kube-apiserver"),
                    (2379, "etcd client"),
                    (2380, "etcd peer"),
                    kubelet,
                    (10257, "kube-controller-manager"),
                    (10259, "kube-scheduler"),
                ],
            },
            (DistroKind::Kubeadm, false) => Requirements {
                min_cpus: 1,
                min_memory_mib: 900,
                swap_off: true,
                ports: vec![kubelet],
            },
        }
    }
}

/// Major, minor and patch of a version such as `v1.31.4+k3s1` or `1.30.2`.
pub fn kube_version(text: &str) -> Option<(u32, u32, u32)> {
    let core = text.trim().trim_start_matches('v');
    let core = core.split(['+', '-']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}
