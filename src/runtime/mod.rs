//! Container runtime and local registry: image seeding into the registry's storage.
//!
//! Images reach an air-gapped node as archives in the cluster image (`images/*.tar`) or
//! as a ready registry storage tree (`registry/`); both are written straight into the
//! filesystem storage of the node's registry, so nothing is pushed over the network.

mod archive;
pub mod containerd;
pub mod etc_hosts;
mod image_ref;
mod manifest;
pub mod mirrors;
pub mod phase;
pub mod registry;
mod seed;
mod storage;
mod tree;

#[cfg(test)]
#[path = "../../tests/seed_support/archives.rs"]
pub(crate) mod test_archives;

pub use image_ref::{ImageRef, ImageRefError};
pub use seed::{seed_archive, seed_images_dir, SeedError, SeedReport, SeededImage};
pub use tree::seed_storage_tree;
