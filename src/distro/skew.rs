//! Version-skew rules: which versions may join a cluster, and which upgrades are allowed
//! (one Kubernetes minor at a time, no downgrades, workers never ahead of controllers).

use super::{kube_version, DistroKind};

/// How far a kubelet may lag the control plane (Kubernetes skew policy since 1.28).
pub const KUBELET_MAX_LAG: u32 = 3;

/// A refused version combination; the message says which versions and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SkewError(pub String);

fn parse(what: &str, version: &str) -> Result<(u32, u32, u32), SkewError> {
    kube_version(version).ok_or_else(|| {
        SkewError(format!(
            "{what} version {version:?} is not a Kubernetes version (vMAJOR.MINOR.PATCH)"
        ))
    })
}

/// Whether a node with `node_distro` at `node_version` may join a cluster of
/// `cluster_distro` at `cluster_version` as a controller or a worker.
pub fn check_join(
    node_distro: DistroKind,
    node_version: &str,
    cluster_distro: DistroKind,
    cluster_version: &str,
    controller: bool,
) -> Result<(), SkewError> {
    if node_distro != cluster_distro {
        return Err(SkewError(format!(
            "the cluster runs {cluster_distro}, but this node's cluster image is {node_distro}"
        )));
    }
    let node = parse("this node's", node_version)?;
    let cluster = parse("the cluster's", cluster_version)?;
    if node.0 != cluster.0 {
        return Err(SkewError(format!(
            "this node's {node_version} and the cluster's {cluster_version} differ in major version"
        )));
    }
    if controller && node.1 != cluster.1 {
        return Err(SkewError(format!(
            "a controller must run the cluster's minor version: this node has {node_version}, the cluster {cluster_version}"
        )));
    }
    if node.1 > cluster.1 {
        return Err(SkewError(format!(
            "a worker may not be newer than the control plane: this node has {node_version}, the cluster {cluster_version}"
        )));
    }
    if cluster.1 - node.1 > KUBELET_MAX_LAG {
        return Err(SkewError(format!(
            "this node's {node_version} is more than {KUBELET_MAX_LAG} minor versions behind the cluster's {cluster_version}"
        )));
    }
    Ok(())
}

/// What an upgrade from `current` to `target` amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeKind {
    /// Same version: nothing to do.
    Same,
    /// Same minor, newer patch.
    Patch,
    /// The next minor.
    Minor,
}

/// Checks an upgrade of this node. `controller_versions` are the versions the control
/// plane runs, for a worker (which must never get ahead of them).
pub fn check_upgrade(
    current_distro: DistroKind,
    current: &str,
    target_distro: DistroKind,
    target: &str,
    controller_versions: Option<&[String]>,
) -> Result<UpgradeKind, SkewError> {
    if current_distro != target_distro {
        return Err(SkewError(format!(
            "the new cluster image is {target_distro}, this node runs {current_distro}; switching distros is not an upgrade"
        )));
    }
    let from = parse("the installed", current)?;
    let to = parse("the new image's", target)?;
    if to.0 != from.0 {
        return Err(SkewError(format!(
            "{current} → {target} changes the major version; not supported"
        )));
    }
    if to < from {
        return Err(SkewError(format!(
            "{current} → {target} is a downgrade; downgrades are not supported (roll back by upgrading to the previous image only before the control plane moved)"
        )));
    }
    if to.1 > from.1 + 1 {
        return Err(SkewError(format!(
            "{current} → {target} skips a minor version; upgrade one minor at a time (to 1.{} first)",
            from.1 + 1
        )));
    }
    if let Some(versions) = controller_versions {
        for version in versions {
            let cp = parse("a controller's", version)?;
            if (to.0, to.1) > (cp.0, cp.1) {
                return Err(SkewError(format!(
                    "workers never run ahead of controllers: a controller still runs {version}, this worker would run {target}; upgrade the controllers first"
                )));
            }
        }
    }
    Ok(if to == from && current == target {
        UpgradeKind::Same
    } else if to.1 == from.1 {
        UpgradeKind::Patch
    } else {
        UpgradeKind::Minor
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use DistroKind::*;

    #[test]
    fn joins() {
        assert!(check_join(K3s, "v1.31.4+k3s1", K3s, "v1.31.2+k3s1", true).is_ok());
        assert!(check_join(K3s, "v1.30.4+k3s1", K3s, "v1.31.2+k3s1", false).is_ok());
        let e = check_join(K0s, "v1.31.4+k0s.0", K3s, "v1.31.4+k3s1", false).unwrap_err();
        assert!(e.0.contains("the cluster runs k3s"), "{e}");
        let e = check_join(Kubeadm, "v1.30.1", Kubeadm, "v1.31.0", true).unwrap_err();
        assert!(
            e.0.contains("controller must run the cluster's minor"),
            "{e}"
        );
        let e = check_join(Kubeadm, "v1.32.1", Kubeadm, "v1.31.0", false).unwrap_err();
        assert!(e.0.contains("may not be newer"), "{e}");
        let e = check_join(Kubeadm, "v1.27.1", Kubeadm, "v1.31.0", false).unwrap_err();
        assert!(e.0.contains("more than 3 minor"), "{e}");
    }

    #[test]
    fn upgrades() {
        assert_eq!(
            check_upgrade(K3s, "v1.31.4+k3s1", K3s, "v1.32.0+k3s1", None),
            Ok(UpgradeKind::Minor)
        );
        assert_eq!(
            check_upgrade(K3s, "v1.31.4+k3s1", K3s, "v1.31.5+k3s1", None),
            Ok(UpgradeKind::Patch)
        );
        assert_eq!(
            check_upgrade(K3s, "v1.31.4+k3s1", K3s, "v1.31.4+k3s1", None),
            Ok(UpgradeKind::Same)
        );
        let e = check_upgrade(Kubeadm, "v1.31.4", Kubeadm, "v1.33.0", None).unwrap_err();
        assert!(e.0.contains("one minor at a time (to 1.32 first)"), "{e}");
        let e = check_upgrade(Kubeadm, "v1.31.4", Kubeadm, "v1.30.0", None).unwrap_err();
        assert!(e.0.contains("downgrade"), "{e}");
        let e = check_upgrade(Kubeadm, "v1.31.4", K0s, "v1.32.0+k0s.0", None).unwrap_err();
        assert!(e.0.contains("switching distros"), "{e}");
        let cps = vec!["v1.31.4".to_owned(), "v1.32.0".to_owned()];
        let e = check_upgrade(Kubeadm, "v1.31.4", Kubeadm, "v1.32.0", Some(&cps)).unwrap_err();
        assert!(e.0.contains("a controller still runs v1.31.4"), "{e}");
        let cps = vec!["v1.32.0".to_owned()];
        assert!(check_upgrade(Kubeadm, "v1.31.4", Kubeadm, "v1.32.0", Some(&cps)).is_ok());
    }
}
