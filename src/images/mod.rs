//! Image seeding: container images written straight into the local registry's storage.
//!
//! Images reach an air-gapped node as archives in the cluster image (`images/*.tar`) or
//! as a ready registry storage tree (`registry/`); both are written straight into the
//! filesystem storage of the node's registry, so nothing is pushed over the network.
//! One file can also be taken out of an image's layers (`layer_file`): the registry's own
//! binary, when the cluster image ships the registry as a container image.

mod archive;
mod image_ref;
mod layer_file;
mod manifest;
mod report;
mod room;
mod seed;
mod storage;
mod tree;
mod writer;

#[cfg(test)]
#[path = "../../tests/seed_support/archives.rs"]
pub(crate) mod test_archives;

pub use image_ref::{ImageRef, ImageRefError};
pub use layer_file::extract_file;
pub use report::{SeedError, SeedReport, SeededImage};
pub use seed::{seed_archive, seed_images_dir, seed_images_dir_except};
pub use tree::seed_storage_tree;
