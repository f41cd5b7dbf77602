//! Image archives built in memory for the seeding tests: docker-save and OCI-layout tars
//! with random layer contents, plain or compressed. Shared by the unit tests in
//! `src/runtime` (through `#[path]`) and by `tests/seed.rs`, so it uses only crates both
//! can see.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;

use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Pseudo-random bytes (xorshift64*): different seeds give different layers, the same
/// seed the same ones, so a failure can be replayed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One member of a tar built by [`tar`].
#[derive(Debug, Clone)]
pub enum Entry {
    File(String, Vec<u8>),
    Symlink(String, String),
    Dir(String),
}

/// A tar (GNU format, as Go's archive/tar and docker write) of the entries, in order.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match entry {
            Entry::File(path, bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(bytes.len() as u64);
                builder
                    .append_data(&mut header, path, bytes.as_slice())
                    .expect("tar file");
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, path, target)
                    .expect("tar symlink");
            }
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .expect("tar folder");
            }
        }
    }
    builder.into_inner().expect("tar finished")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip finished")
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 1).expect("zstd")
}

/// A layer: a tar of a folder and two files of random bytes, one `size` long.
pub fn random_layer(seed: u64, size: usize) -> Vec<u8> {
    tar(&[
        Entry::Dir("data/".into()),
        Entry::File(format!("data/blob-{seed}"), random_bytes(seed, size)),
        Entry::File("data/small".into(), random_bytes(seed ^ 0xffff, 300)),
    ])
}

/// An image: a config naming its layers' diff_ids, and the layers (plain tars).
#[derive(Debug, Clone)]
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

impl TestImage {
    /// `layer_count` random layers of about `layer_size` bytes each.
    pub fn random(seed: u64, layer_count: usize, layer_size: usize) -> TestImage {
        let layers: Vec<Vec<u8>> = (0..layer_count)
            .map(|i| random_layer(seed * 1000 + i as u64, layer_size))
            .collect();
        TestImage::with_layers(seed, layers)
    }

    pub fn with_layers(seed: u64, layers: Vec<Vec<u8>>) -> TestImage {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [format!("SEED={seed}")], "Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "test"}],
        }))
        .expect("config json");
        TestImage { config, layers }
    }

    pub fn config_digest(&self) -> String {
        digest(&self.config)
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| digest(l)).collect()
    }

    /// An OCI manifest with uncompressed layers, as an OCI layout carries it. Its key
    /// order differs from what bootstrap writes, so its digest is the original's only.
    pub fn oci_manifest(&self) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": OCI_LAYER, "digest": digest(l), "size": l.len()}))
            .collect();
        let text = format!(
            "{{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"{OCI_MANIFEST}\",\n  \"config\": {},\n  \"layers\": {}\n}}\n",
            serde_json::json!({"mediaType": OCI_CONFIG, "digest": self.config_digest(), "size": self.config.len()}),
            serde_json::Value::Array(layers)
        );
        text.into_bytes()
    }

    pub fn oci_manifest_digest(&self) -> String {
        digest(&self.oci_manifest())
    }
}

/// A classic docker-save archive (before docker 25): `<config hex>.json`,
/// `<layer id>/layer.tar`, `manifest.json` (last, as docker writes it), `repositories`.
pub fn docker_save(images: &[(&TestImage, &[&str])]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut manifest = Vec::new();
    for (image, tags) in images {
        let mut layer_paths = Vec::new();
        for (j, layer) in image.layers.iter().enumerate() {
            // v1 layer ids are not content digests; any stable hex will do.
            let id = sha256_hex(format!("{}-{j}", image.config_digest()).as_bytes());
            entries.push(Entry::Dir(format!("{id}/")));
            entries.push(Entry::File(format!("{id}/VERSION"), b"1.0".to_vec()));
            entries.push(Entry::File(
                format!("{id}/json"),
                format!("{{\"id\":\"{id}\"}}").into_bytes(),
            ));
            entries.push(Entry::File(format!("{id}/layer.tar"), layer.clone()));
            layer_paths.push(format!("{id}/layer.tar"));
        }
        let config_path = format!("{}.json", sha256_hex(&image.config));
        entries.push(Entry::File(config_path.clone(), image.config.clone()));
        manifest.push(serde_json::json!({
            "Config": config_path,
            "RepoTags": tags,
            "Layers": layer_paths,
        }));
    }
    entries.push(Entry::File(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).expect("manifest.json"),
    ));
    entries.push(Entry::File("repositories".into(), b"{}".to_vec()));
    entries
}

/// An OCI image layout: `oci-layout`, `blobs/sha256/...`, and `index.json` with one
/// entry per image carrying the given annotations.
pub fn oci_layout(images: &[(&TestImage, &[(&str, &str)])]) -> Vec<Entry> {
    let mut entries = vec![
        Entry::File(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        Entry::Dir("blobs/".into()),
        Entry::Dir("blobs/sha256/".into()),
    ];
    let mut written = BTreeSet::new();
    let mut index = Vec::new();
    for (image, annotations) in images {
        let manifest = image.oci_manifest();
        let blobs = std::iter::once(&image.config)
            .chain(&image.layers)
            .chain(std::iter::once(&manifest));
        for blob in blobs {
            let hex = sha256_hex(blob);
            if written.insert(hex.clone()) {
                entries.push(Entry::File(format!("blobs/sha256/{hex}"), blob.clone()));
            }
        }
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        let mut descriptor = serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest(&manifest),
            "size": manifest.len(),
        });
        if !annotations.is_empty() {
            descriptor["annotations"] = serde_json::Value::Object(annotations);
        }
        index.push(descriptor);
    }
    entries.push(Entry::File(
        "index.json".into(),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": index,
        }))
        .expect("index.json"),
    ));
    entries
}

/// What docker save writes since version 25: an OCI layout whose entries name the
/// image (containerd's annotation, and the tag alone as `ref.name`), plus a
/// `manifest.json` pointing into `blobs/`.
pub fn docker_save_oci(images: &[(&TestImage, &str)]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut manifest = Vec::new();
    for (image, name) in images {
        let tag = name.rsplit(':').next().unwrap_or("latest");
        entries.extend(oci_layout(&[(
            image,
            &[
                ("io.containerd.image.name", name),
                ("org.opencontainers.image.ref.name", tag),
            ],
        )]));
        manifest.push(serde_json::json!({
            "Config": format!("blobs/sha256/{}", sha256_hex(&image.config)),
            "RepoTags": [name],
            "Layers": image.layers.iter().map(|l| format!("blobs/sha256/{}", sha256_hex(l))).collect::<Vec<_>>(),
        }));
    }
    // One layout per image above, each with its own index.json: keep the last
    // index.json only after merging their entries.
    let mut index_entries = Vec::new();
    let mut other = Vec::new();
    for entry in entries {
        match entry {
            Entry::File(path, bytes) if path == "index.json" => {
                let index: serde_json::Value = serde_json::from_slice(&bytes).expect("index");
                index_entries.extend(index["manifests"].as_array().cloned().unwrap_or_default());
            }
            Entry::File(path, _)
                if path == "oci-layout"
                    && other
                        .iter()
                        .any(|e| matches!(e, Entry::File(p, _) if p == "oci-layout")) => {}
            Entry::Dir(path)
                if other
                    .iter()
                    .any(|e| matches!(e, Entry::Dir(p) if *p == path)) => {}
            entry => other.push(entry),
        }
    }
    other.push(Entry::File(
        "index.json".into(),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": index_entries,
        }))
        .expect("index.json"),
    ));
    other.push(Entry::File(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).expect("manifest.json"),
    ));
    other
}
