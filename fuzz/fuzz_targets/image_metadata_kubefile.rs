//! A cluster image's `Metadata` and `Kubefile`: the Kubefile parser alone, then both read
//! together as an image's description (labels against `Metadata`, the distro chosen).
//! The input is `Metadata` bytes, a NUL, then Kubefile bytes (no NUL: Kubefile only).
#![no_main]

use std::path::PathBuf;

use bootstrap::rootfs::kubefile::Kubefile;
use bootstrap::rootfs::tree::ListingTree;
use bootstrap::rootfs::ClusterImage;
use libfuzzer_sys::fuzz_target;

/// What `inspect` prints of an image, without a JSON dependency here.
fn serde_json_free_render(image: &ClusterImage) -> String {
    format!("{image:?}")
}

fuzz_target!(|data: &[u8]| {
    let (metadata, kubefile) = match data.iter().position(|b| *b == 0) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    if let Ok(text) = std::str::from_utf8(kubefile) {
        if let Ok(parsed) = Kubefile::parse(text) {
            for launch in &parsed.launch {
                let _ = launch.to_string();
            }
        }
    }
    let mut tree = ListingTree {
        archive: PathBuf::from("fuzz.tar"),
        ..ListingTree::default()
    };
    if let Some(metadata) = metadata {
        tree.contents
            .insert(PathBuf::from("Metadata"), metadata.to_vec());
    }
    tree.contents
        .insert(PathBuf::from("Kubefile"), kubefile.to_vec());
    if let Ok(image) = ClusterImage::read_unchecked(&tree, "amd64") {
        let _ = serde_json_free_render(&image);
    }
});
