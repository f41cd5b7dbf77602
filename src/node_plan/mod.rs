//! The node's plan: every phase's steps assembled from one view of the node.

pub mod runtime;
