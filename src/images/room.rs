//! A full disk while seeding: how much room an archive's contents take, so the error
//! says what is needed, not only that a write failed.

use std::path::Path;

use super::archive::{open_decompressed, sniff};
use super::report::SeedError;

/// `error` restated as "not enough space" when a write failed on a full file system:
/// the bytes the archive holds (an upper bound: blobs already in the storage take no
/// room) and the bytes free once its staging folder is gone. Other errors pass as
/// they are.
pub(crate) fn explain(error: SeedError, archive: &Path, storage: &Path) -> SeedError {
    let SeedError::Io(failed) = &error else {
        return error;
    };
    if failed.room.is_none() {
        return error;
    }
    let (Some(needed), Ok(free)) = (content_size(archive), crate::io::free_space(storage)) else {
        return error;
    };
    SeedError::NoSpace {
        archive: archive.to_path_buf(),
        storage: storage.to_path_buf(),
        needed,
        free,
        write: format!("{} {}: {}", failed.op, failed.path.display(), failed.source),
    }
}

/// The file data an image archive holds, read through once (decompressed); `None` when
/// it cannot be read, which the seeding error already said.
fn content_size(archive: &Path) -> Option<u64> {
    let compression = sniff(archive).ok()?.ok()?;
    let reader = open_decompressed(archive, compression).ok()?;
    let mut tar = tar::Archive::new(reader);
    let mut total = 0u64;
    for entry in tar.entries().ok()? {
        let entry = entry.ok()?;
        if entry.header().entry_type().is_file() {
            total = total.saturating_add(entry.size());
        }
    }
    Some(total)
}
