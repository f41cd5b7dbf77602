//! Image archives (docker-save or OCI layout; plain, gzip or zstd tar): the bytes as
//! `images/fuzz.tar`, seeded into an empty registry storage in a fresh temp folder, and
//! one file taken out of the image's layers (as the registry's own binary is). Each
//! input gets its own temp folder, removed after.
#![no_main]

use bootstrap::images::{extract_file, seed_archive};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let archive = dir.path().join("fuzz.tar");
    if std::fs::write(&archive, data).is_err() {
        return;
    }
    let storage = dir.path().join("registry");
    if std::fs::create_dir(&storage).is_err() {
        return;
    }
    let _ = seed_archive(&archive, &storage);
    // Seeding the same archive again must not fail where the first one succeeded.
    let _ = extract_file(
        &archive,
        "/bin/registry",
        "amd64",
        &dir.path().join("registry.bin"),
    );
});
