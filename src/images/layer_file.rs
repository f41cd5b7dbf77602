//! One file taken out of a container image archive's layers — the registry's binary from
//! the `registry:2` image a sealer basefs ships under `images/` — with no container
//! runtime: the layers are read in their order, whiteouts are respected, symlinks are
//! followed, and the file is taken from the top-most layer that has it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use serde::Deserialize;

use super::archive::normalize;
use super::manifest::{self, Manifest, MANIFEST_LIMIT};
use super::report::{io_error, SeedError};
use crate::io::compression;

/// Symlinks followed from the wanted path before giving up.
const MAX_HOPS: usize = 8;

/// Takes `wanted` (a path in the image, such as `/bin/registry`) out of the image in
/// `archive` (docker-save or OCI layout; plain, gzip or zstd) into the file `out`. A
/// multi-platform image gives the file of its `linux/<arch>` image.
pub fn extract_file(archive: &Path, wanted: &str, arch: &str, out: &Path) -> Result<(), SeedError> {
    let outer = scan(archive)?;
    let layers = layer_paths(archive, &outer, arch)?;
    let mut target = normalize(wanted).unwrap_or_default();
    for _ in 0..MAX_HOPS {
        match find(archive, &layers, &target, out)? {
            Found::File => return Ok(()),
            Found::Link(next) => target = next,
            Found::Nothing => {
                return Err(SeedError::Missing {
                    archive: archive.to_path_buf(),
                    entry: format!("the image's {} layers", layers.len()),
                    what: format!("/{target}"),
                })
            }
        }
    }
    Err(SeedError::Malformed {
        archive: archive.to_path_buf(),
        entry: format!("/{target}"),
        reason: format!("more than {MAX_HOPS} symlinks from {wanted}"),
    })
}

/// What the outer archive holds: small files whole, and links.
struct Outer {
    small: BTreeMap<String, Vec<u8>>,
    links: BTreeMap<String, String>,
}

impl Outer {
    fn resolve(&self, path: &str) -> String {
        let mut path = path.to_owned();
        for _ in 0..MAX_HOPS {
            match self.links.get(&path) {
                Some(next) => path = next.clone(),
                None => break,
            }
        }
        path
    }
}

fn open(archive: &Path) -> Result<tar::Archive<Box<dyn Read>>, SeedError> {
    let file = File::open(archive).map_err(|e| io_error("open", archive, e))?;
    let mut raw = BufReader::with_capacity(1 << 20, file);
    let kind = compression::detect(&mut raw)
        .map_err(|e| io_error("read", archive, e))?
        .map_err(|format| SeedError::UnsupportedCompression {
            archive: archive.to_path_buf(),
            format,
        })?;
    let reader = compression::decoder(kind, raw).map_err(|e| io_error("read", archive, e))?;
    Ok(tar::Archive::new(reader))
}

fn read_err<'a>(archive: &'a Path, entry: Option<&str>) -> impl Fn(io::Error) -> SeedError + 'a {
    let entry = entry.map(str::to_owned);
    move |source| SeedError::Read {
        archive: archive.to_path_buf(),
        entry: entry.clone(),
        source,
    }
}

/// The first pass: manifests, indexes and configs in memory, links recorded.
fn scan(archive: &Path) -> Result<Outer, SeedError> {
    let mut outer = Outer {
        small: BTreeMap::new(),
        links: BTreeMap::new(),
    };
    let mut tar = open(archive)?;
    for entry in tar.entries().map_err(read_err(archive, None))? {
        let mut entry = entry.map_err(read_err(archive, None))?;
        let Some(path) = entry_path(&entry) else {
            continue;
        };
        match entry.header().entry_type() {
            tar::EntryType::Symlink => {
                if let Some(target) = link_target(&entry, &path, false) {
                    outer.links.insert(path, target);
                }
            }
            tar::EntryType::Link => {
                if let Some(target) = link_target(&entry, &path, true) {
                    outer.links.insert(path, target);
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous
                if entry.size() <= MANIFEST_LIMIT =>
            {
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(read_err(archive, Some(&path)))?;
                outer.small.insert(path, bytes);
            }
            _ => {}
        }
    }
    Ok(outer)
}

/// One image in a docker-save `manifest.json`.
#[derive(Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The archive paths of the image's layers, bottom first.
fn layer_paths(archive: &Path, outer: &Outer, arch: &str) -> Result<Vec<String>, SeedError> {
    let malformed = |entry: &str, reason: String| SeedError::Malformed {
        archive: archive.to_path_buf(),
        entry: entry.to_owned(),
        reason,
    };
    if let Some(bytes) = outer.small.get("manifest.json") {
        let images: Vec<DockerSaveEntry> = serde_json::from_slice(bytes)
            .map_err(|e| malformed("manifest.json", format!("not a docker-save manifest: {e}")))?;
        let [image] = images.as_slice() else {
            return Err(malformed(
                "manifest.json",
                format!("holds {} images; expected exactly one", images.len()),
            ));
        };
        return Ok(image
            .layers
            .iter()
            .map(|l| outer.resolve(&normalize(l).unwrap_or_default()))
            .collect());
    }
    let Some(index) = outer.small.get("index.json") else {
        return Err(SeedError::NotImageArchive {
            archive: archive.to_path_buf(),
        });
    };
    let blob = |digest: &str| -> Result<&Vec<u8>, SeedError> {
        let path = outer.resolve(&format!(
            "blobs/sha256/{}",
            digest.trim_start_matches("sha256:")
        ));
        outer.small.get(&path).ok_or_else(|| SeedError::Missing {
            archive: archive.to_path_buf(),
            entry: "index.json".into(),
            what: path.clone(),
        })
    };
    let mut current = index.clone();
    let mut entry = "index.json".to_owned();
    for _ in 0..4 {
        let parsed = manifest::parse_manifest(&current, None).map_err(|r| malformed(&entry, r))?;
        match parsed {
            Manifest::Image { layers, .. } => {
                return Ok(layers
                    .iter()
                    .map(|l| outer.resolve(&format!("blobs/sha256/{}", l.digest.hex())))
                    .collect())
            }
            Manifest::Index { manifests } => {
                let chosen = match manifests.as_slice() {
                    [one] => one.digest.hex().to_owned(),
                    _ => platform_child(&current, arch).ok_or_else(|| {
                        malformed(
                            &entry,
                            format!("{} images and none for linux/{arch}", manifests.len()),
                        )
                    })?,
                };
                entry = format!("blobs/sha256/{chosen}");
                current = blob(&chosen)?.clone();
            }
        }
    }
    Err(malformed(&entry, "indexes nest too deep".into()))
}

/// The digest (hex) of an index's entry for `linux/<arch>`.
fn platform_child(index: &[u8], arch: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(index).ok()?;
    value["manifests"].as_array()?.iter().find_map(|m| {
        let platform = &m["platform"];
        (platform["os"] == "linux" && platform["architecture"] == arch)
            .then(|| m["digest"].as_str())
            .flatten()
            .map(|d| d.trim_start_matches("sha256:").to_owned())
    })
}

/// What the layers say about the wanted path.
enum Found {
    /// Written to `out`, from the top-most layer that has it.
    File,
    /// The top-most layer makes it (or a folder above it) a link: look there instead.
    Link(String),
    Nothing,
}

/// The second pass: every layer's entries for `target`, its whiteouts and links above it.
fn find(archive: &Path, layers: &[String], target: &str, out: &Path) -> Result<Found, SeedError> {
    let mut by_path: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, path) in layers.iter().enumerate() {
        by_path.entry(path.as_str()).or_default().push(i);
    }
    let mut written: Option<usize> = None;
    // Per layer, the top-most event for the target: a file, a link, or a deletion.
    let mut top: Option<(usize, Found)> = None;
    let mut tar = open(archive)?;
    for entry in tar.entries().map_err(read_err(archive, None))? {
        let entry = entry.map_err(read_err(archive, None))?;
        let Some(path) = entry_path(&entry) else {
            continue;
        };
        let Some(indexes) = by_path.get(path.as_str()) else {
            continue;
        };
        let index = *indexes.iter().max().unwrap_or(&0);
        let layer = format!("layer {path}");
        let mut raw = BufReader::new(entry);
        let kind = compression::detect(&mut raw)
            .map_err(read_err(archive, Some(&layer)))?
            .map_err(|format| SeedError::UnsupportedCompression {
                archive: archive.to_path_buf(),
                format,
            })?;
        let decoded = compression::decoder(kind, raw).map_err(read_err(archive, Some(&layer)))?;
        let mut inner = tar::Archive::new(decoded);
        for item in inner.entries().map_err(read_err(archive, Some(&layer)))? {
            let mut item = item.map_err(read_err(archive, Some(&layer)))?;
            let Some(name) = entry_path(&item) else {
                continue;
            };
            let event = if name == target {
                match item.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        if written.is_none_or(|w| index > w) {
                            copy_to(&mut item, out).map_err(|e| io_error("write", out, e))?;
                            written = Some(index);
                        }
                        Some(Found::File)
                    }
                    tar::EntryType::Symlink => link_target(&item, &name, false).map(Found::Link),
                    tar::EntryType::Link => link_target(&item, &name, true).map(Found::Link),
                    _ => {
                        return Err(SeedError::Malformed {
                            archive: archive.to_path_buf(),
                            entry: format!("{layer}: /{name}"),
                            reason: "not a regular file".into(),
                        })
                    }
                }
            } else if hides(&name, target) {
                Some(Found::Nothing)
            } else if is_ancestor(&name, target) && item.header().entry_type().is_symlink() {
                link_target(&item, &name, false)
                    .map(|dir| Found::Link(format!("{dir}{}", &target[name.len()..])))
            } else {
                None
            };
            if let Some(event) = event {
                // Within one layer, a whiteout and the file do not both exist; between
                // layers, the higher one wins.
                if top.as_ref().is_none_or(|(i, _)| index >= *i) {
                    top = Some((index, event));
                }
            }
        }
    }
    Ok(match top {
        Some((i, Found::File)) if written == Some(i) => Found::File,
        Some((_, Found::File)) | Some((_, Found::Nothing)) | None => Found::Nothing,
        Some((_, link)) => link,
    })
}

/// Whether a whiteout entry removes `target` (or a folder above it) from lower layers.
fn hides(name: &str, target: &str) -> bool {
    let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
    if file == ".wh..wh..opq" {
        return dir.is_empty() || is_ancestor(dir, target);
    }
    let Some(removed) = file.strip_prefix(".wh.") else {
        return false;
    };
    let removed = if dir.is_empty() {
        removed.to_owned()
    } else {
        format!("{dir}/{removed}")
    };
    removed == target || is_ancestor(&removed, target)
}

fn is_ancestor(dir: &str, path: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

fn copy_to(reader: &mut impl Read, out: &Path) -> io::Result<()> {
    let mut file = File::create(out)?;
    io::copy(reader, &mut file)?;
    file.flush()?;
    file.sync_all()
}

/// An entry's path, normalised; `None` for the root or a path that climbs out.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Option<String> {
    let raw = entry.path_bytes();
    normalize(&String::from_utf8_lossy(&raw)).filter(|p| !p.is_empty())
}

/// A link's target as a normalised path: symlinks relative to their folder (or the
/// root when absolute), hard links relative to the archive root.
fn link_target<R: Read>(entry: &tar::Entry<'_, R>, path: &str, hard: bool) -> Option<String> {
    let target = entry.link_name_bytes()?;
    let target = String::from_utf8_lossy(&target).into_owned();
    if hard || target.starts_with('/') {
        return normalize(&target);
    }
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    normalize(&format!("{dir}/{target}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::test_archives::{docker_save, gzip, oci_layout, tar, Entry, TestImage};

    fn file(path: &str, bytes: &[u8]) -> Entry {
        Entry::File(path.into(), bytes.to_vec())
    }

    /// Writes an image of these layers as an archive and takes /bin/registry out of it.
    fn take_from(layers: Vec<Vec<Entry>>, oci: bool) -> Result<Vec<u8>, String> {
        let image = TestImage::with_layers(7, layers.iter().map(|l| tar(l)).collect());
        let entries = if oci {
            oci_layout(&[(&image, &[])])
        } else {
            docker_save(&[(&image, &["registry:2.7.1"])])
        };
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("registry.tar.gz");
        std::fs::write(&archive, gzip(&tar(&entries))).unwrap();
        let out = dir.path().join("out");
        extract_file(&archive, "/bin/registry", "amd64", &out).map_err(|e| e.to_string())?;
        Ok(std::fs::read(out).unwrap())
    }

    #[test]
    fn the_top_most_layer_wins() {
        let layers = vec![
            vec![
                Entry::Dir("bin/".into()),
                file("bin/registry", b"old"),
                file("bin/sh", b"sh"),
            ],
            vec![file("etc/motd", b"hi")],
            vec![file("./bin/registry", b"new")],
        ];
        assert_eq!(take_from(layers.clone(), false).unwrap(), b"new");
        assert_eq!(take_from(layers, true).unwrap(), b"new");
    }

    #[test]
    fn a_whiteout_deletes_it_and_symlinks_are_followed() {
        let deleted = vec![
            vec![file("bin/registry", b"old")],
            vec![file("bin/.wh.registry", b"")],
        ];
        let err = take_from(deleted, false).unwrap_err();
        assert!(err.contains("/bin/registry is missing"), "{err}");
        let opaque = vec![
            vec![file("bin/registry", b"old")],
            vec![file("bin/.wh..wh..opq", b""), file("bin/other", b"x")],
        ];
        assert!(take_from(opaque, true).is_err());
        let usr_merged = vec![
            vec![Entry::Symlink("bin".into(), "usr/bin".into())],
            vec![file("usr/bin/registry-2", b"real")],
            vec![Entry::Symlink(
                "usr/bin/registry".into(),
                "registry-2".into(),
            )],
        ];
        assert_eq!(take_from(usr_merged, false).unwrap(), b"real");
        let err = take_from(vec![vec![file("bin/sh", b"sh")]], false).unwrap_err();
        assert!(
            err.contains("registry.tar.gz") && err.contains("1 layers"),
            "{err}"
        );
    }

    #[test]
    fn whiteouts_hide_lower_layers() {
        assert!(hides("bin/.wh.registry", "bin/registry"));
        assert!(hides(".wh.bin", "bin/registry"));
        assert!(hides("bin/.wh..wh..opq", "bin/registry"));
        assert!(!hides("bin/.wh.registry-old", "bin/registry"));
        assert!(!hides("usr/bin/.wh..wh..opq", "bin/registry"));
        assert!(is_ancestor("bin", "bin/registry"));
        assert!(!is_ancestor("bi", "bin/registry"));
    }
}
