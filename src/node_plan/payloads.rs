//! The plan engine's payload actions, done by the subsystems that own them: the cluster
//! image's unpacking (`rootfs`) and image seeding (`images`).

use std::path::Path;

use crate::plan::{PayloadError, Payloads, Unpack};
use crate::rootfs::unpack;

/// Unpacking and seeding for real, on this machine's file system.
pub struct NodePayloads;

impl Payloads for NodePayloads {
    fn is_unpacked(&self, archive: &Path, dest: &Path, sha256: Option<&str>) -> bool {
        unpack::find_unpacked(archive, dest, sha256)
            .is_some_and(|dir| unpack::points_at(dest, &dir))
    }

    fn unpack(&self, request: &Unpack<'_>) -> Result<(), PayloadError> {
        let options = unpack::UnpackOptions {
            sha256: request.sha256.map(str::to_owned),
            sha256_source: request.sha256_source.map(str::to_owned),
            max_size: None,
            host_arch: request.arch.to_owned(),
        };
        unpack::unpack(request.archive, request.dest, &options)
            .map(drop)
            .map_err(PayloadError::of)
    }

    fn seed(
        &self,
        registry_tree: Option<&Path>,
        images_dir: Option<&Path>,
        storage: &Path,
    ) -> Result<(), PayloadError> {
        if let Some(tree) = registry_tree.filter(|t| t.exists()) {
            let report =
                crate::images::seed_storage_tree(tree, storage).map_err(PayloadError::of)?;
            log::info!("registry tree {}: {report}", tree.display());
        }
        if let Some(dir) = images_dir {
            let report = crate::images::seed_images_dir(dir, storage).map_err(PayloadError::of)?;
            log::info!("images in {}: {report}", dir.display());
        }
        Ok(())
    }
}
