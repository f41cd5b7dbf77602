//! A joining node's kept join material, checked against this node (role, cluster name)
//! and against the cluster as it runs now (the skew rules).

use std::path::Path;

use super::{Error, Session};
use crate::host::Host;
use crate::role::RoleDecision;

impl Session {
    /// A joiner's material, checked against this node: same distro, a version the
    /// cluster accepts, material for this node's role.
    pub(crate) fn join_material(
        &self,
        role: &RoleDecision,
    ) -> Result<Option<crate::distro::JoinMaterial>, Error> {
        use crate::distro::{skew, DistroError, JoinRole, MATERIAL_FILE};
        if !role.role.joins() {
            return Ok(None);
        }
        let Some(material) =
            crate::distro::JoinMaterial::load(&self.host).map_err(DistroError::from)?
        else {
            return Ok(None);
        };
        let wanted = if role.role.is_controller() {
            JoinRole::Controller
        } else {
            JoinRole::Worker
        };
        if material.role != wanted {
            return Err(DistroError::Mismatch {
                path: MATERIAL_FILE,
                reason: format!(
                    "it is for a {}, but this node joins as a {wanted}",
                    material.role
                ),
            }
            .into());
        }
        if let (Some(theirs), Some(ours)) = (&material.cluster, &self.config.cluster.name) {
            // A controller keeps the received join secret: its join keys would not be
            // the cluster's under another name.
            if theirs != ours {
                return Err(DistroError::Mismatch {
                    path: MATERIAL_FILE,
                    reason: format!(
                        "it is for cluster {theirs:?}, but this node's cluster.name is {ours:?}"
                    ),
                }
                .into());
            }
        }
        if self.upgrading {
            return Ok(Some(material));
        }
        // The material's version is the cluster's when this node joined. Once it has
        // joined, the cluster may have moved on (an upgrade): the rules are checked
        // against the version the API server reports now.
        let cluster_version = if self.host.exists(Path::new(crate::state::DONE_FILE))? {
            let driver = crate::distro::driver(self.image.distro);
            let kubeconfig = if role.role.is_controller() {
                driver.admin_kubeconfig()
            } else {
                driver.node_kubeconfig(role.role)
            };
            let ops = crate::distro::NodeOps::new(&self.host, driver, kubeconfig);
            match ops.server_version() {
                Ok(version) => version,
                Err(e) => {
                    log::warn!("cannot ask the API server for the cluster's version ({e}); this node has joined already, so its join material is not checked again");
                    return Ok(Some(material));
                }
            }
        } else {
            material.version.clone()
        };
        skew::check_join(
            self.image.distro,
            &self.image.metadata.version,
            material.distro,
            &cluster_version,
            role.role.is_controller(),
        )
        .map_err(|e| DistroError::Mismatch {
            path: MATERIAL_FILE,
            reason: e.0,
        })?;
        Ok(Some(material))
    }
}
