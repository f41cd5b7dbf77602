//! Byte streams: archive compression and one bounded read-ahead pipeline, shared by the
//! cluster image's unpacking and image seeding.

pub mod compression;
pub mod read_ahead;
