//! The cluster image (rootfs): sealer-compatible `Metadata` and layout, the distro it
//! selects, `inspect`, and safe, verified, versioned unpacking of image archives.

pub mod compression;
mod extract;
mod image;
pub mod inspect;
mod pipe;
pub mod tree;
pub mod unpack;

pub use compression::Compression;
pub use extract::{ExtractError, ExtractReport};
pub use image::{required_binaries, ClusterImage, Metadata, RootfsError, ARCHES};
