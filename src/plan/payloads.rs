//! The payload actions the engine runs but does not implement — unpacking the cluster
//! image and seeding container images — so `plan` stays below the subsystems that do
//! them. `node_plan::NodePayloads` is the implementation; tests may supply their own.

use std::path::Path;

/// Why a payload action failed: the subsystem's own error, which names the archive,
/// entry or path, as its message (the engine only ever shows it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

impl PayloadError {
    pub fn of(error: impl std::fmt::Display) -> Self {
        PayloadError(error.to_string())
    }
}

/// One unpacking of a cluster image archive, as the plan's step describes it.
#[derive(Debug, Clone, Copy)]
pub struct Unpack<'a> {
    /// The archive's real path.
    pub archive: &'a Path,
    /// The destination's real path.
    pub dest: &'a Path,
    pub sha256: Option<&'a str>,
    pub sha256_source: Option<&'a str>,
    pub arch: &'a str,
}

/// Unpacking and seeding, as implemented above the plan engine.
pub trait Payloads {
    /// Whether `dest` already holds `archive` unpacked (matching `sha256` when given).
    fn is_unpacked(&self, archive: &Path, dest: &Path, sha256: Option<&str>) -> bool;

    /// Unpacks the archive into its destination.
    fn unpack(&self, unpack: &Unpack<'_>) -> Result<(), PayloadError>;

    /// Seeds a registry storage tree and then an images folder (either may be absent)
    /// into the registry storage at `storage` (real paths).
    fn seed(
        &self,
        registry_tree: Option<&Path>,
        images_dir: Option<&Path>,
        storage: &Path,
    ) -> Result<(), PayloadError>;
}

/// For tests of the engine alone: nothing is unpacked, and payload steps fail.
#[cfg(test)]
pub(crate) struct NoPayloads;

#[cfg(test)]
impl Payloads for NoPayloads {
    fn is_unpacked(&self, _: &Path, _: &Path, _: Option<&str>) -> bool {
        false
    }

    fn unpack(&self, _: &Unpack<'_>) -> Result<(), PayloadError> {
        Err(PayloadError::of("no payloads in this test"))
    }

    fn seed(&self, _: Option<&Path>, _: Option<&Path>, _: &Path) -> Result<(), PayloadError> {
        Err(PayloadError::of("no payloads in this test"))
    }
}
