//! The payload actions the engine runs but does not implement — unpacking the cluster
//! image, seeding container images, taking a binary out of an image — so `plan` stays
//! below the subsystems that do them. `node_plan::NodePayloads` is the implementation; tests may supply their own.

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
    /// A bundle of binaries from inside the cluster image, not a cluster image.
    pub bundle: bool,
    /// For a URL: CA certificates to trust besides the system's (a real path).
    pub ca_file: Option<&'a Path>,
    /// For a URL: `http://` allowed.
    pub insecure_http: bool,
}

/// Whether an archive "path" is a URL (`https://…`), which is not a host path and is
/// passed to the payloads as it is.
pub fn is_url(archive: &Path) -> bool {
    archive.to_str().is_some_and(|s| s.contains("://"))
}

/// One file taken out of a container image archive and installed.
#[derive(Debug, Clone, Copy)]
pub struct ImageFile<'a> {
    /// The image archive's real path.
    pub image: &'a Path,
    /// The file's path in the image (`/bin/registry`).
    pub file: &'a str,
    /// The destination's real path.
    pub dest: &'a Path,
    pub mode: u32,
    /// The architecture the executable must be for.
    pub arch: &'a str,
}

/// Unpacking and seeding, as implemented above the plan engine.
pub trait Payloads {
    /// Whether `dest` already holds `archive` unpacked (matching `sha256` when given).
    fn is_unpacked(&self, archive: &Path, dest: &Path, sha256: Option<&str>) -> bool;

    /// Unpacks the archive into its destination.
    fn unpack(&self, unpack: &Unpack<'_>) -> Result<(), PayloadError>;

    /// Seeds a registry storage tree and then an images folder (either may be absent)
    /// into the registry storage at `storage` (real paths), leaving out the archives of
    /// the folder named in `skip`.
    fn seed(
        &self,
        registry_tree: Option<&Path>,
        images_dir: Option<&Path>,
        skip: &[String],
        storage: &Path,
    ) -> Result<(), PayloadError>;

    /// Installs a file from an image archive's layers: written beside the destination,
    /// checked, given the archive's mtime, then renamed into place.
    fn install_image_file(&self, file: &ImageFile<'_>) -> Result<(), PayloadError>;
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

    fn seed(
        &self,
        _: Option<&Path>,
        _: Option<&Path>,
        _: &[String],
        _: &Path,
    ) -> Result<(), PayloadError> {
        Err(PayloadError::of("no payloads in this test"))
    }

    fn install_image_file(&self, _: &ImageFile<'_>) -> Result<(), PayloadError> {
        Err(PayloadError::of("no payloads in this test"))
    }
}
