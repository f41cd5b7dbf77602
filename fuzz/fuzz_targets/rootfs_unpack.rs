//! Cluster-image archives (plain, gzip or zstd tar): the bytes as an archive file,
//! unpacked with `rootfs unpack`'s safe unpacker into a fresh temp folder (staged,
//! verified, versioned), listed as `inspect` lists an archive, and one member copied
//! out as containerd's bundle is. Each input gets its own temp folder, removed after.
#![no_main]

use std::path::Path;

use bootstrap::rootfs::unpack::{unpack, UnpackOptions};
use bootstrap::rootfs::{bundle, inspect, ClusterImage};
use libfuzzer_sys::fuzz_target;

/// Removes the temp folder even where an archive left read-only folders in it (a
/// failed removal would leave one folder per input behind).
fn remove(dir: tempfile::TempDir) {
    let path = dir.path().to_path_buf();
    if dir.close().is_err() {
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwx"])
            .arg(&path)
            .status();
        let _ = std::fs::remove_dir_all(&path);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let archive = dir.path().join("image.tar");
    if std::fs::write(&archive, data).is_err() {
        return;
    }
    let dest = dir.path().join("rootfs");
    // Small enough that an archive claiming gigabytes is refused quickly.
    let opts = UnpackOptions {
        max_size: Some(8 << 20),
        host_arch: "amd64".into(),
        ..UnpackOptions::default()
    };
    let _ = unpack(&archive, &dest, &opts);
    // The same bytes as a bundle (no Metadata wanted) into another destination.
    let bundle_opts = UnpackOptions {
        bundle: true,
        ..opts
    };
    let _ = unpack(&archive, &dir.path().join("bundle"), &bundle_opts);
    if let Ok((listing, _)) = inspect::list_archive(&archive) {
        let _ = ClusterImage::read_unchecked(&listing, "amd64");
    }
    let _ = bundle::copy_member(
        &archive,
        Path::new("bin/containerd"),
        &dir.path().join("out"),
    );
    remove(dir);
});
