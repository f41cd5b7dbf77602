//! The cluster image (rootfs): sealer's `Metadata` file and the distro it selects.

mod metadata;

pub use metadata::{ClusterImage, Metadata, RootfsError};
