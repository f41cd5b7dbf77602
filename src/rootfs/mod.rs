//! The cluster image (rootfs): sealer-compatible `Metadata`, `Kubefile` and layout, the
//! distro it selects, `inspect`, and safe, verified, versioned unpacking of image archives
//! (from a file, or streamed from a URL).

pub mod bundle;
mod extract;
mod image;
pub mod inspect;
pub mod kubefile;
pub mod link;
pub mod remote;
pub mod sources;
pub mod tree;
pub mod unpack;
mod unpack_error;

pub use crate::io::compression::Compression;
pub use extract::{ExtractError, ExtractReport};
pub use image::{required_binaries, ClusterImage, Metadata, RootfsError, ARCHES};
