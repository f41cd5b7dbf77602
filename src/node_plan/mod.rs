//! The node's plan: every phase's steps assembled from one view of the node.

mod payloads;
pub mod runtime;

pub use payloads::NodePayloads;
