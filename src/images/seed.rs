//! Image seeding: docker-save and OCI-layout archives written straight into the local
//! registry's filesystem storage, verified, and all-or-nothing per archive.
//!
//! Each archive is read once into a staging folder in the storage root, checked in full
//! (every blob's digest, every manifest, every name), and only then committed: blobs by
//! rename, then repository links, then tags. A failed archive leaves the storage as it
//! was. The registry can be running meanwhile: it only ever sees whole files.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::archive::{self, ArchiveContents, ArchiveFile, Compression, METADATA_LIMIT};
use super::image_ref::ImageRef;
use super::manifest::{self, Descriptor, Manifest, MANIFEST_LIMIT};
use super::report::{io_error, SeedError, SeedReport, SeededImage};
use super::storage::{hash_stream, BlobSource, Changes, Digest, Layout, Staging};

/// Indexes may nest (an index of indexes); deeper than this is a loop or an attack.
const MAX_INDEX_DEPTH: usize = 4;
/// File names taken as image archives in an images folder. The compression is told by
/// the content, not by these.
const ARCHIVE_SUFFIXES: [&str; 6] = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd", ".tzst"];

/// Seeds every image archive in `images_dir` (file names ending `.tar`, `.tar.gz`,
/// `.tgz`, `.tar.zst`, `.tar.zstd`, `.tzst`), in name order, into the registry storage
/// at `storage_root`. A missing folder seeds nothing. Stops at the first archive that
/// fails; the archives before it stay seeded, and that one leaves no trace.
pub fn seed_images_dir(images_dir: &Path, storage_root: &Path) -> Result<SeedReport, SeedError> {
    seed_images_dir_except(images_dir, storage_root, &[])
}

/// [`seed_images_dir`], leaving out the archives named in `skip` (the registry's own
/// image, which the node runs from its binary and does not serve).
pub fn seed_images_dir_except(
    images_dir: &Path,
    storage_root: &Path,
    skip: &[String],
) -> Result<SeedReport, SeedError> {
    let entries = match fs::read_dir(images_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::debug!(
                "{}: no images folder; nothing to seed",
                images_dir.display()
            );
            return Ok(SeedReport::default());
        }
        Err(e) => return Err(io_error("read folder", images_dir, e)),
    };
    let mut archives = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("read folder", images_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || path.is_dir() {
            continue;
        }
        if skip.contains(&name) {
            log::info!(
                "{}: not seeded: it is the registry's own image",
                path.display()
            );
            continue;
        }
        if ARCHIVE_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) {
            archives.push((name, path));
        } else {
            log::warn!(
                "{}: skipped: not named like an image archive ({})",
                path.display(),
                ARCHIVE_SUFFIXES.join(", ")
            );
        }
    }
    archives.sort();
    let mut report = SeedReport::default();
    for (_, path) in archives {
        report.merge(seed_archive(&path, storage_root)?);
    }
    Ok(report)
}

/// Seeds one image archive into the registry storage at `storage_root`.
///
/// The archive is a docker-save archive (`manifest.json`) or an OCI image layout
/// (`index.json`, `blobs/sha256/`), plain, gzip or zstd (told by its first bytes). When
/// both are there, as from docker save since version 25, the OCI manifests are used
/// unchanged so digests stay those of the original image; a docker-save-only archive
/// gets an OCI manifest written for it (see [`manifest::image_manifest`] for why OCI).
pub fn seed_archive(archive: &Path, storage_root: &Path) -> Result<SeedReport, SeedError> {
    // The staging folder is gone when this returns: the room it took is free again.
    stage_and_commit(archive, storage_root)
        .map_err(|e| super::room::explain(e, archive, storage_root))
}

fn stage_and_commit(archive: &Path, storage_root: &Path) -> Result<SeedReport, SeedError> {
    let layout = Layout::new(storage_root);
    let mut staging = Staging::create(&layout)?;
    let contents = archive::read_archive(archive, &layout, &mut staging)?;
    let mut planner = Planner {
        archive,
        layout: &layout,
        contents: &contents,
        changes: Changes::default(),
        images: Vec::new(),
    };
    let docker_save = match contents.metadata.get("manifest.json") {
        Some(bytes) => Some(
            serde_json::from_slice::<Vec<DockerSaveEntry>>(bytes).map_err(|e| {
                planner.malformed("manifest.json", format!("not a docker-save manifest: {e}"))
            })?,
        ),
        None => None,
    };
    match (contents.metadata.get("index.json"), docker_save) {
        (Some(index), docker_save) => {
            planner.plan_oci_layout(index, docker_save.as_deref().unwrap_or_default())?
        }
        (None, Some(docker_save)) => planner.plan_docker_save(&docker_save, &mut staging)?,
        (None, None) => {
            return Err(SeedError::NotImageArchive {
                archive: archive.to_path_buf(),
            })
        }
    }
    let Planner {
        changes, images, ..
    } = planner;
    let mut report = SeedReport::default();
    changes.commit(&layout, &mut staging, &mut report)?;
    report.images = images;
    log::info!("seeded {}: {report}", archive.display());
    Ok(report)
}

/// One image in a docker-save `manifest.json`.
#[derive(Debug, Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// What one image (manifest, and children for an index) needs in a repository.
#[derive(Debug, Default)]
struct Walk {
    /// Manifests to link as revisions.
    revisions: Vec<Digest>,
    /// Configs and layers to link under `_layers`.
    layers: Vec<Digest>,
    /// Configs alone, to match docker-save `manifest.json` entries.
    configs: Vec<Digest>,
}

/// A blob found in the archive or the storage.
struct Found {
    source: BlobSource,
    size: u64,
    path: PathBuf,
}

/// Checks one archive's images and collects the changes they make.
struct Planner<'a> {
    archive: &'a Path,
    layout: &'a Layout,
    contents: &'a ArchiveContents,
    changes: Changes,
    images: Vec<SeededImage>,
}

impl<'a> Planner<'a> {
    fn malformed(&self, entry: &str, reason: String) -> SeedError {
        SeedError::Malformed {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            reason,
        }
    }

    fn mismatch(&self, entry: &str, expected: &Digest, actual: &Digest) -> SeedError {
        SeedError::DigestMismatch {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    /// A blob from the archive, or else from the storage.
    fn find_blob(&self, digest: &Digest) -> Result<Option<Found>, SeedError> {
        if let Some(file) = self.contents.blob(digest) {
            return Ok(Some(self.found(file)));
        }
        let data = self.layout.blob_data(digest);
        match fs::metadata(&data) {
            Ok(meta) if meta.is_file() => Ok(Some(Found {
                source: BlobSource::Present,
                size: meta.len(),
                path: data,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("inspect", &data, e)),
        }
    }

    fn found(&self, file: &ArchiveFile) -> Found {
        Found {
            source: match &file.staged {
                Some(staged) => BlobSource::Staged(staged.clone()),
                None => BlobSource::Present,
            },
            size: file.size,
            path: file.content_path(self.layout),
        }
    }

    /// The blob a descriptor names, present and of the size it says.
    fn require(&self, descriptor: &Descriptor, entry: &str) -> Result<Found, SeedError> {
        let found = self
            .find_blob(&descriptor.digest)?
            .ok_or_else(|| SeedError::Missing {
                archive: self.archive.to_path_buf(),
                entry: entry.to_string(),
                what: format!(
                    "blob {} (in neither the archive nor the registry storage)",
                    descriptor.digest
                ),
            })?;
        if found.size != descriptor.size {
            return Err(SeedError::SizeMismatch {
                archive: self.archive.to_path_buf(),
                entry: format!("{entry} ({})", descriptor.digest),
                expected: descriptor.size,
                actual: found.size,
            });
        }
        Ok(found)
    }

    /// A file a docker-save `manifest.json` names.
    fn archive_file(&self, path: &str, entry: &str) -> Result<&'a ArchiveFile, SeedError> {
        let contents: &'a ArchiveContents = self.contents;
        contents.file(path).ok_or_else(|| SeedError::Missing {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            what: format!("file {path:?}"),
        })
    }

    fn read_limited(&self, path: &Path, limit: u64, entry: &str) -> Result<Vec<u8>, SeedError> {
        let file = fs::File::open(path).map_err(|e| io_error("open", path, e))?;
        let size = file
            .metadata()
            .map_err(|e| io_error("inspect", path, e))?
            .len();
        if size > limit {
            return Err(SeedError::TooLarge {
                archive: self.archive.to_path_buf(),
                entry: entry.to_string(),
                size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error("read", path, e))?;
        Ok(bytes)
    }

    /// An OCI image layout: each `index.json` entry is an image (or an index of them),
    /// stored with its manifests as they are.
    fn plan_oci_layout(
        &mut self,
        index: &[u8],
        docker_save: &[DockerSaveEntry],
    ) -> Result<(), SeedError> {
        let entries = manifest::parse_layout_index(index)
            .map_err(|reason| self.malformed("index.json", reason))?;
        if entries.is_empty() {
            return Err(self.malformed("index.json", "lists no images".into()));
        }
        for (i, descriptor) in entries.iter().enumerate() {
            let entry = format!("index.json manifests[{i}]");
            let mut walk = Walk::default();
            self.walk_manifest(descriptor, &entry, 0, &mut walk)?;
            for name in self.oci_names(descriptor, &entry, &walk, docker_save)? {
                self.link_image(&name, &entry, &descriptor.digest, &walk)?;
            }
        }
        Ok(())
    }

    fn walk_manifest(
        &mut self,
        descriptor: &Descriptor,
        entry: &str,
        depth: usize,
        walk: &mut Walk,
    ) -> Result<(), SeedError> {
        let found = self.require(descriptor, entry)?;
        let where_ = format!("{entry} ({})", descriptor.digest);
        let bytes = self.read_limited(&found.path, MANIFEST_LIMIT, &where_)?;
        let parsed = manifest::parse_manifest(&bytes, descriptor.media_type.as_deref())
            .map_err(|reason| self.malformed(&where_, reason))?;
        match parsed {
            Manifest::Image { config, layers } => {
                let named = std::iter::once((format!("{entry} config"), &config)).chain(
                    layers
                        .iter()
                        .enumerate()
                        .map(|(j, layer)| (format!("{entry} layers[{j}]"), layer)),
                );
                for (blob_entry, blob) in named {
                    let found = self.require(blob, &blob_entry)?;
                    self.changes.blob(&blob.digest, found.source, found.size);
                    walk.layers.push(blob.digest.clone());
                }
                walk.configs.push(config.digest);
            }
            Manifest::Index { manifests } => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(self.malformed(&where_, "indexes are nested too deep".into()));
                }
                let mut present = 0;
                for (j, child) in manifests.iter().enumerate() {
                    let child_entry = format!("{entry} manifests[{j}]");
                    // An export for one platform keeps the whole index but only its own
                    // platform's manifest; containerd asks for that one alone.
                    if self.find_blob(&child.digest)?.is_none() {
                        log::debug!(
                            "{}: {child_entry} ({}) is not in the archive; skipped",
                            self.archive.display(),
                            child.digest
                        );
                        continue;
                    }
                    self.walk_manifest(child, &child_entry, depth + 1, walk)?;
                    present += 1;
                }
                if present == 0 {
                    return Err(SeedError::Missing {
                        archive: self.archive.to_path_buf(),
                        entry: where_,
                        what: "every manifest the index lists".into(),
                    });
                }
            }
        }
        self.changes
            .blob(&descriptor.digest, found.source, found.size);
        walk.revisions.push(descriptor.digest.clone());
        Ok(())
    }

    /// The names an `index.json` entry is tagged with: containerd's full-name
    /// annotation, a `ref.name` that is a full reference, or else the `RepoTags` of the
    /// docker-save entries for the same config (docker save puts both in one archive).
    fn oci_names(
        &self,
        descriptor: &Descriptor,
        entry: &str,
        walk: &Walk,
        docker_save: &[DockerSaveEntry],
    ) -> Result<Vec<String>, SeedError> {
        if let Some(name) = descriptor.annotations.get(manifest::ANNOTATION_IMAGE_NAME) {
            return Ok(vec![name.clone()]);
        }
        let ref_name = descriptor.annotations.get(manifest::ANNOTATION_REF_NAME);
        // A bare tag has neither `/` nor `:`; a name with a tag or a path has one.
        if let Some(name) = ref_name.filter(|r| r.contains(['/', ':'])) {
            return Ok(vec![name.clone()]);
        }
        let mut names = Vec::new();
        for saved in docker_save {
            let same_image = self
                .contents
                .file(&saved.config)
                .is_some_and(|config| walk.configs.contains(&config.digest));
            if same_image {
                names.extend(saved.repo_tags.iter().flatten().cloned());
            }
        }
        if names.is_empty() {
            let reason = match ref_name {
                Some(tag) => format!(
                    "{} {tag:?} is only a tag, and nothing else names the image \
                     (annotation {}, or RepoTags in manifest.json)",
                    manifest::ANNOTATION_REF_NAME,
                    manifest::ANNOTATION_IMAGE_NAME
                ),
                None => format!(
                    "the image has no name (annotation {} or {}, or RepoTags in manifest.json)",
                    manifest::ANNOTATION_IMAGE_NAME,
                    manifest::ANNOTATION_REF_NAME
                ),
            };
            return Err(self.malformed(entry, reason));
        }
        Ok(names)
    }

    /// A docker-save archive without an OCI layout: configs and layers are checked
    /// against each other (`diff_ids`), and an OCI manifest is written for each image.
    fn plan_docker_save(
        &mut self,
        docker_save: &[DockerSaveEntry],
        staging: &mut Staging,
    ) -> Result<(), SeedError> {
        if docker_save.is_empty() {
            return Err(self.malformed("manifest.json", "lists no images".into()));
        }
        for (i, saved) in docker_save.iter().enumerate() {
            let entry = format!("manifest.json[{i}]");
            let config = self.archive_file(&saved.config, &format!("{entry} Config"))?;
            // Docker names the config by its digest: `<hex>.json`.
            let file_name = saved.config.rsplit('/').next().unwrap_or_default();
            if let Some(named) = file_name.strip_suffix(".json").and_then(Digest::from_hex) {
                if named != config.digest {
                    return Err(self.mismatch(&saved.config, &named, &config.digest));
                }
            }
            let config_bytes = self.read_limited(
                &config.content_path(self.layout),
                METADATA_LIMIT,
                &saved.config,
            )?;
            let diff_ids = manifest::diff_ids(&config_bytes)
                .map_err(|reason| self.malformed(&saved.config, reason))?;
            if diff_ids.len() != saved.layers.len() {
                return Err(self.malformed(
                    &entry,
                    format!(
                        "lists {} layer(s), but its config {} has {} diff_ids",
                        saved.layers.len(),
                        saved.config,
                        diff_ids.len()
                    ),
                ));
            }
            let mut walk = Walk::default();
            let mut layers = Vec::new();
            for (j, (path, diff_id)) in saved.layers.iter().zip(&diff_ids).enumerate() {
                let file = self.archive_file(path, &format!("{entry} Layers[{j}]"))?;
                let (media_type, uncompressed) = self.layer_diff_id(file, path)?;
                if uncompressed != *diff_id {
                    return Err(self.mismatch(path, diff_id, &uncompressed));
                }
                let found = self.found(file);
                self.changes.blob(&file.digest, found.source, found.size);
                walk.layers.push(file.digest.clone());
                layers.push(manifest::Layer {
                    media_type,
                    digest: file.digest.clone(),
                    size: file.size,
                });
            }
            let found = self.found(config);
            self.changes.blob(&config.digest, found.source, found.size);
            walk.layers.push(config.digest.clone());
            walk.configs.push(config.digest.clone());

            let manifest_bytes = manifest::image_manifest(&config.digest, config.size, &layers);
            let staged = staging.stage_bytes(&manifest_bytes)?;
            let manifest_digest = staged.digest.clone();
            let size = staged.size;
            self.changes
                .blob(&manifest_digest, BlobSource::Staged(staged), size);
            walk.revisions.push(manifest_digest.clone());

            let tags = saved.repo_tags.as_deref().unwrap_or_default();
            if tags.is_empty() {
                return Err(self.malformed(
                    &entry,
                    "the image has no RepoTags; save it by name (docker save repo:tag), not by ID"
                        .into(),
                ));
            }
            for name in tags {
                self.link_image(name, &entry, &manifest_digest, &walk)?;
            }
        }
        Ok(())
    }

    /// A docker-save layer's media type and uncompressed digest. Docker writes plain
    /// tars, whose digest is the diff_id; a compressed one is decompressed to check it.
    fn layer_diff_id(
        &self,
        file: &ArchiveFile,
        path: &str,
    ) -> Result<(&'static str, Digest), SeedError> {
        let content = file.content_path(self.layout);
        let compression = archive::sniff(&content)
            .map_err(|e| io_error("read", &content, e))?
            .map_err(|format| {
                self.malformed(
                    path,
                    format!("a {format}-compressed layer; layers may be plain tar, gzip or zstd"),
                )
            })?;
        let media_type = match compression {
            Compression::None => return Ok((manifest::OCI_LAYER, file.digest.clone())),
            Compression::Gzip => manifest::OCI_LAYER_GZIP,
            Compression::Zstd => manifest::OCI_LAYER_ZSTD,
        };
        let read_error = |source| SeedError::Read {
            archive: self.archive.to_path_buf(),
            entry: Some(path.to_string()),
            source,
        };
        let mut reader = archive::open_decompressed(&content, compression).map_err(read_error)?;
        let (digest, _) = hash_stream(&mut reader).map_err(read_error)?;
        Ok((media_type, digest))
    }

    /// Links an image into the repository its name maps to, and tags it.
    fn link_image(
        &mut self,
        name: &str,
        entry: &str,
        manifest_digest: &Digest,
        walk: &Walk,
    ) -> Result<(), SeedError> {
        let image = ImageRef::parse(name).map_err(|source| SeedError::BadName {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            name: name.to_string(),
            source,
        })?;
        if let Some(pinned) = image.digest.as_deref().and_then(Digest::parse) {
            if pinned != *manifest_digest {
                return Err(self.mismatch(
                    &format!("{entry} name {name:?}"),
                    &pinned,
                    manifest_digest,
                ));
            }
        }
        let repository = &image.repository;
        for digest in &walk.layers {
            self.changes
                .link(self.layout.layer_link(repository, digest), digest);
        }
        for digest in &walk.revisions {
            self.changes
                .link(self.layout.revision_link(repository, digest), digest);
        }
        if let Some(tag) = &image.tag {
            self.changes.link(
                self.layout.tag_index_link(repository, tag, manifest_digest),
                manifest_digest,
            );
            self.changes.tag(
                self.layout.tag_current_link(repository, tag),
                manifest_digest,
            );
        }
        self.images.push(SeededImage {
            repository: image.repository,
            tag: image.tag,
            digest: manifest_digest.to_string(),
        });
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::images::test_archives::{self as build, Entry, TestImage};

    /// Every folder and file under `root`, with file contents: compared before and after
    /// to prove a failed run changed nothing.
    pub(crate) fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).expect("list") {
                let path = entry.expect("entry").path();
                let relative = path.strip_prefix(root).expect("under root").to_path_buf();
                if path.is_dir() {
                    out.insert(relative, None);
                    pending.push(path);
                } else {
                    out.insert(relative, Some(fs::read(&path).expect("read")));
                }
            }
        }
        out
    }

    pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, bytes).expect("write archive");
        path
    }

    fn blob(root: &Path, digest: &str) -> Vec<u8> {
        let digest = Digest::parse(digest).expect("digest");
        fs::read(Layout::new(root).blob_data(&digest)).expect("blob stored")
    }

    fn link(path: PathBuf) -> String {
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn digest(text: &str) -> Digest {
        Digest::parse(text).expect("digest")
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("temp dir");
            fs::create_dir(dir.path().join("storage")).expect("storage");
            fs::create_dir(dir.path().join("images")).expect("images");
            Fixture { dir }
        }
        fn storage(&self) -> PathBuf {
            self.dir.path().join("storage")
        }
        fn images(&self) -> PathBuf {
            self.dir.path().join("images")
        }
        fn archive(&self, name: &str, bytes: &[u8]) -> PathBuf {
            write(&self.images(), name, bytes)
        }
        fn seed(&self, archive: &Path) -> Result<SeedReport, SeedError> {
            seed_archive(archive, &self.storage())
        }
    }

    #[test]
    fn seeds_a_docker_save_archive_into_the_registry_layout() {
        let fx = Fixture::new();
        let image = TestImage::random(1, 2, 4096);
        let archive = fx.archive(
            "nginx.tar",
            &build::tar(&build::docker_save(&[(
                &image,
                &["nginx:1.25", "docker.io/library/nginx:latest"],
            )])),
        );
        let report = fx.seed(&archive).expect("seeded");
        assert_eq!(report.images.len(), 2);
        assert_eq!(report.images[0].repository, "library/nginx");
        assert_eq!(report.images[0].tag.as_deref(), Some("1.25"));
        assert_eq!(report.images[1].tag.as_deref(), Some("latest"));
        assert_eq!(report.images[0].digest, report.images[1].digest);
        assert_eq!((report.blobs_written, report.blobs_skipped), (4, 0));
        let layer_bytes: u64 = image.layers.iter().map(|l| l.len() as u64).sum();
        let manifest_digest = report.images[0].digest.clone();
        let manifest_bytes = blob(&fx.storage(), &manifest_digest);
        assert_eq!(
            report.bytes_written,
            layer_bytes + image.config.len() as u64 + manifest_bytes.len() as u64
        );

        // The manifest is OCI with uncompressed layers, in the image's order.
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).expect("json");
        assert_eq!(manifest["mediaType"], build::OCI_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], build::OCI_CONFIG);
        assert_eq!(manifest["config"]["digest"], image.config_digest());
        for (j, layer) in image.layers.iter().enumerate() {
            assert_eq!(manifest["layers"][j]["mediaType"], build::OCI_LAYER);
            assert_eq!(manifest["layers"][j]["digest"], build::digest(layer));
            assert_eq!(manifest["layers"][j]["size"], layer.len());
            assert_eq!(&blob(&fx.storage(), &build::digest(layer)), layer);
        }
        assert_eq!(blob(&fx.storage(), &image.config_digest()), image.config);

        let layout = Layout::new(&fx.storage());
        let m = digest(&manifest_digest);
        assert_eq!(
            link(layout.tag_current_link("library/nginx", "1.25")),
            manifest_digest
        );
        assert_eq!(
            link(layout.tag_current_link("library/nginx", "latest")),
            manifest_digest
        );
        assert_eq!(
            link(layout.tag_index_link("library/nginx", "1.25", &m)),
            manifest_digest
        );
        assert_eq!(
            link(layout.revision_link("library/nginx", &m)),
            manifest_digest
        );
        for blob_digest in image.layer_digests().iter().chain([&image.config_digest()]) {
            let d = digest(blob_digest);
            assert_eq!(link(layout.layer_link("library/nginx", &d)), *blob_digest);
        }
        // Only the storage layout and nothing else is left in the root.
        let names: Vec<_> = fs::read_dir(fx.storage())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["docker"]);
    }

    #[test]
    fn plain_gzip_and_zstd_archives_are_recognised_by_magic_bytes() {
        let image = TestImage::random(2, 1, 2000);
        let plain = build::tar(&build::docker_save(&[(
            &image,
            &["registry.k8s.io/pause:3.9"],
        )]));
        let mut digests = Vec::new();
        for (label, bytes) in [
            ("plain", plain.clone()),
            ("gzip", build::gzip(&plain)),
            ("zstd", build::zstd(&plain)),
        ] {
            let fx = Fixture::new();
            // All named .tar: the name says nothing about the compression.
            let archive = fx.archive("pause.tar", &bytes);
            let report = fx.seed(&archive).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(report.images[0].repository, "pause", "{label}");
            digests.push(report.images[0].digest.clone());
        }
        assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");

        let fx = Fixture::new();
        let xz = fx.archive("pause.tar", &[0xfd, b'7', b'z', b'X', b'Z', 0x00, 1, 2]);
        match fx.seed(&xz) {
            Err(SeedError::UnsupportedCompression {
                format: "xz",
                archive,
            }) => {
                assert_eq!(archive, xz)
            }
            other => panic!("unexpected {other:?}"),
        }
        let garbage = fx.archive("junk.tar", &build::random_bytes(9, 3000));
        let error = fx.seed(&garbage).expect_err("not a tar");
        assert!(error.to_string().contains("junk.tar"), "{error}");
    }

    #[test]
    fn reseeding_skips_existing_blobs_and_changes_nothing() {
        let fx = Fixture::new();
        let image = TestImage::random(3, 3, 1000);
        let docker = fx.archive(
            "a.tar",
            &build::tar(&build::docker_save(&[(&image, &["a:1"])])),
        );
        let oci = fx.archive(
            "b.tar",
            &build::tar(&build::oci_layout(&[(
                &image,
                &[("io.containerd.image.name", "b:1")],
            )])),
        );
        let first = fx.seed(&docker).expect("first");
        assert_eq!((first.blobs_written, first.blobs_skipped), (5, 0));
        let before = snapshot(&fx.storage());
        let again = fx.seed(&docker).expect("again");
        assert_eq!(
            (
                again.blobs_written,
                again.blobs_skipped,
                again.bytes_written
            ),
            (0, 5, 0)
        );
        assert_eq!(again.images, first.images);
        assert_eq!(snapshot(&fx.storage()), before);
        // Another archive of the same layers only adds its own manifest.
        let other = fx.seed(&oci).expect("oci");
        assert_eq!((other.blobs_written, other.blobs_skipped), (1, 4));
    }

    #[test]
    fn a_blob_that_does_not_match_its_name_is_refused() {
        let fx = Fixture::new();
        let image = TestImage::random(4, 2, 1000);
        let mut entries = build::oci_layout(&[(&image, &[("io.containerd.image.name", "x:1")])]);
        let bad_hex = build::sha256_hex(&image.layers[1]);
        for entry in &mut entries {
            if let Entry::File(path, bytes) = entry {
                if path.ends_with(&bad_hex) {
                    bytes[600] ^= 1;
                }
            }
        }
        let archive = fx.archive("x.tar", &build::tar(&entries));
        match fx.seed(&archive) {
            Err(SeedError::DigestMismatch {
                archive: a,
                entry,
                expected,
                ..
            }) => {
                assert_eq!(a, archive);
                assert_eq!(entry, format!("blobs/sha256/{bad_hex}"));
                assert_eq!(expected, format!("sha256:{bad_hex}"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn docker_save_layers_and_configs_are_checked_against_the_config() {
        let fx = Fixture::new();
        let image = TestImage::random(5, 2, 1000);
        // A layer whose content is not what the config's diff_ids say.
        let mut entries = build::docker_save(&[(&image, &["x:1"])]);
        let mut layer_path = String::new();
        for entry in &mut entries {
            if let Entry::File(path, bytes) = entry {
                if bytes == &image.layers[1] {
                    bytes[700] ^= 1;
                    layer_path = path.clone();
                }
            }
        }
        let archive = fx.archive("layer.tar", &build::tar(&entries));
        match fx.seed(&archive) {
            Err(SeedError::DigestMismatch {
                entry, expected, ..
            }) => {
                assert_eq!(entry, layer_path);
                assert_eq!(expected, build::digest(&image.layers[1]));
            }
            other => panic!("unexpected {other:?}"),
        }
        // A config whose file name is not its digest.
        let mut entries = build::docker_save(&[(&image, &["x:1"])]);
        let config_path = format!("{}.json", build::sha256_hex(&image.config));
        for entry in &mut entries {
            if let Entry::File(path, bytes) = entry {
                if *path == config_path {
                    bytes.push(b' ');
                }
            }
        }
        let archive = fx.archive("config.tar", &build::tar(&entries));
        match fx.seed(&archive) {
            Err(SeedError::DigestMismatch { entry, .. }) => assert_eq!(entry, config_path),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn with_manifest_json(image: &TestImage, manifest: &[u8]) -> Vec<u8> {
        let mut entries = build::docker_save(&[(image, &["x:1"])]);
        for entry in &mut entries {
            if let Entry::File(path, bytes) = entry {
                if path == "manifest.json" {
                    *bytes = manifest.to_vec();
                }
            }
        }
        build::tar(&entries)
    }

    #[test]
    fn a_malformed_manifest_json_is_refused_naming_it() {
        let fx = Fixture::new();
        let image = TestImage::random(6, 1, 500);
        let config = format!("{}.json", build::sha256_hex(&image.config));
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (
                b"{not json".to_vec(),
                "manifest.json",
                "not a docker-save manifest",
            ),
            (
                b"{}".to_vec(),
                "manifest.json",
                "not a docker-save manifest",
            ),
            (b"[]".to_vec(), "manifest.json", "lists no images"),
            (
                format!(r#"[{{"Config":"{config}","RepoTags":["x:1"],"Layers":[]}}]"#).into_bytes(),
                "manifest.json[0]",
                "lists 0 layer(s), but its config",
            ),
            (
                format!(r#"[{{"Config":"{config}","RepoTags":null,"Layers":["nope/layer.tar"]}}]"#)
                    .into_bytes(),
                "manifest.json[0] Layers[0]",
                "file \"nope/layer.tar\" is missing",
            ),
            (
                br#"[{"Config":"missing.json","RepoTags":["x:1"],"Layers":[]}]"#.to_vec(),
                "manifest.json[0] Config",
                "file \"missing.json\" is missing",
            ),
        ];
        for (manifest, entry, message) in cases {
            let archive = fx.archive("bad.tar", &with_manifest_json(&image, &manifest));
            let error = fx.seed(&archive).expect_err(entry);
            let text = error.to_string();
            assert!(
                text.contains(&format!("{}: {entry}", archive.display())) && text.contains(message),
                "{entry}: {text}"
            );
        }
        // Untagged images cannot be served by name.
        let layers: Vec<String> = image
            .layers
            .iter()
            .enumerate()
            .map(|(j, _)| {
                format!(
                    "{}/layer.tar",
                    build::sha256_hex(format!("{}-{j}", image.config_digest()).as_bytes())
                )
            })
            .collect();
        let untagged = serde_json::json!([{"Config": config, "RepoTags": null, "Layers": layers}]);
        let archive = fx.archive(
            "untagged.tar",
            &with_manifest_json(&image, untagged.to_string().as_bytes()),
        );
        let error = fx.seed(&archive).expect_err("untagged");
        assert!(error.to_string().contains("no RepoTags"), "{error}");
        // And a bad name is named.
        let badname = serde_json::json!([{"Config": config, "RepoTags": ["quay.io/Org/x:1"], "Layers": layers}]);
        let archive = fx.archive(
            "badname.tar",
            &with_manifest_json(&image, badname.to_string().as_bytes()),
        );
        match fx.seed(&archive) {
            Err(SeedError::BadName { name, .. }) => assert_eq!(name, "quay.io/Org/x:1"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            !fx.storage().join("docker").exists(),
            "nothing was committed"
        );
    }

    #[test]
    fn a_manifest_the_registry_cannot_serve_is_refused() {
        let fx = Fixture::new();
        let image = TestImage::random(7, 1, 500);
        let mut entries = build::oci_layout(&[(&image, &[("io.containerd.image.name", "x:1")])]);
        let manifest_hex = build::sha256_hex(&image.oci_manifest());
        let bogus =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#;
        let bogus_hex = build::sha256_hex(bogus);
        for entry in &mut entries {
            if let Entry::File(path, bytes) = entry {
                if path.ends_with(&manifest_hex) {
                    *path = format!("blobs/sha256/{bogus_hex}");
                    *bytes = bogus.to_vec();
                } else if path == "index.json" {
                    let text = String::from_utf8(bytes.clone()).expect("utf-8");
                    let size = image.oci_manifest().len();
                    *bytes = text
                        .replace(&manifest_hex, &bogus_hex)
                        .replace(
                            &format!("\"size\":{size}"),
                            &format!("\"size\":{}", bogus.len()),
                        )
                        .into_bytes();
                }
            }
        }
        let archive = fx.archive("bogus.tar", &build::tar(&entries));
        let error = fx.seed(&archive).expect_err("bogus");
        let text = error.to_string();
        assert!(text.contains("index.json manifests[0]"), "{text}");
        assert!(text.contains("not an image manifest or index"), "{text}");
        assert!(
            !fx.storage().join("docker").exists(),
            "nothing was committed"
        );
    }

    #[test]
    fn a_failed_archive_leaves_the_storage_unchanged() {
        let fx = Fixture::new();
        let good = TestImage::random(8, 2, 3000);
        let archive = fx.archive(
            "good.tar",
            &build::tar(&build::docker_save(&[(&good, &["good:1"])])),
        );
        fx.seed(&archive).expect("good");
        let before = snapshot(&fx.storage());

        // A new image whose blobs all stage fine, with the one bad blob last.
        let new = TestImage::random(9, 3, 3000);
        let mut entries = build::oci_layout(&[(&new, &[("io.containerd.image.name", "new:1")])]);
        let index = entries
            .iter()
            .position(|e| matches!(e, Entry::File(p, _) if p == "index.json"));
        let index = entries.remove(index.expect("index.json"));
        entries.insert(3, index);
        if let Some(Entry::File(_, bytes)) = entries.last_mut() {
            bytes[0] ^= 1;
        }
        let bad = fx.archive("bad.tar", &build::tar(&entries));
        assert!(matches!(
            fx.seed(&bad),
            Err(SeedError::DigestMismatch { .. })
        ));
        assert_eq!(snapshot(&fx.storage()), before);

        // A docker-save whose second image is broken: the first is not seeded either.
        let other = TestImage::random(10, 1, 3000);
        let mut entries = build::docker_save(&[(&other, &["other:1"]), (&new, &["new:1"])]);
        for entry in &mut entries {
            if let Entry::File(_, bytes) = entry {
                if *bytes == new.layers[2] {
                    bytes[100] ^= 1;
                }
            }
        }
        let bad = fx.archive("bad2.tar", &build::tar(&entries));
        assert!(matches!(
            fx.seed(&bad),
            Err(SeedError::DigestMismatch { .. })
        ));
        assert_eq!(snapshot(&fx.storage()), before);

        // An index naming a blob the archive lacks.
        let mut entries = build::oci_layout(&[(&new, &[("io.containerd.image.name", "new:1")])]);
        let missing = build::sha256_hex(&new.layers[0]);
        entries.retain(|e| !matches!(e, Entry::File(p, _) if p.ends_with(&missing)));
        let bad = fx.archive("bad3.tar", &build::tar(&entries));
        match fx.seed(&bad) {
            Err(SeedError::Missing { entry, what, .. }) => {
                assert_eq!(entry, "index.json manifests[0] layers[0]");
                assert!(what.contains(&missing), "{what}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(snapshot(&fx.storage()), before);
    }

    #[test]
    fn docker_save_with_an_oci_layout_keeps_the_original_manifest() {
        let fx = Fixture::new();
        let image = TestImage::random(11, 2, 1500);
        let archive = fx.archive(
            "new-docker.tar",
            &build::tar(&build::docker_save_oci(&[(&image, "quay.io/org/x:1")])),
        );
        let report = fx.seed(&archive).expect("seeded");
        assert_eq!(report.images.len(), 1);
        assert_eq!(report.images[0].repository, "org/x");
        assert_eq!(report.images[0].tag.as_deref(), Some("1"));
        assert_eq!(report.images[0].digest, image.oci_manifest_digest());
        assert_eq!(
            blob(&fx.storage(), &image.oci_manifest_digest()),
            image.oci_manifest()
        );
    }

    #[test]
    fn oci_layout_names_come_from_annotations_or_manifest_json() {
        let fx = Fixture::new();
        let image = TestImage::random(12, 1, 500);
        let full_ref = build::tar(&build::oci_layout(&[(
            &image,
            &[(
                "org.opencontainers.image.ref.name",
                "registry.k8s.io/pause:3.9",
            )],
        )]));
        let report = fx.seed(&fx.archive("a.tar", &full_ref)).expect("ref.name");
        assert_eq!(
            report.images[0].to_string(),
            format!("pause:3.9@{}", image.oci_manifest_digest())
        );

        let tag_only = build::tar(&build::oci_layout(&[(
            &image,
            &[("org.opencontainers.image.ref.name", "3.9")],
        )]));
        let error = fx
            .seed(&fx.archive("b.tar", &tag_only))
            .expect_err("tag only");
        assert!(
            error.to_string().contains("\"3.9\" is only a tag"),
            "{error}"
        );

        // A tag-only ref.name, but manifest.json names the same config.
        let mut entries =
            build::oci_layout(&[(&image, &[("org.opencontainers.image.ref.name", "3.9")])]);
        entries.push(Entry::File(
            "manifest.json".into(),
            serde_json::to_vec(&serde_json::json!([{
                "Config": format!("blobs/sha256/{}", build::sha256_hex(&image.config)),
                "RepoTags": ["nginx:3.9"],
                "Layers": [format!("blobs/sha256/{}", build::sha256_hex(&image.layers[0]))],
            }]))
            .expect("json"),
        ));
        let report = fx
            .seed(&fx.archive("c.tar", &build::tar(&entries)))
            .expect("repo tags");
        assert_eq!(report.images[0].repository, "library/nginx");
        assert_eq!(report.images[0].tag.as_deref(), Some("3.9"));

        let unnamed = build::tar(&build::oci_layout(&[(&image, &[])]));
        let error = fx
            .seed(&fx.archive("d.tar", &unnamed))
            .expect_err("unnamed");
        assert!(
            error
                .to_string()
                .contains("index.json manifests[0]: the image has no name"),
            "{error}"
        );
    }

    #[test]
    fn docker_save_symlinked_layers_are_followed() {
        let fx = Fixture::new();
        let shared = build::random_layer(77, 2000);
        let a = TestImage::with_layers(1, vec![shared.clone(), build::random_layer(78, 100)]);
        let b = TestImage::with_layers(2, vec![shared.clone()]);
        let mut entries = build::docker_save(&[(&a, &["a:1"]), (&b, &["b:1"])]);
        // Docker writes a repeated layer once and links the other id's layer.tar to it.
        let first = entries
            .iter()
            .find_map(|e| match e {
                Entry::File(p, bytes) if *bytes == shared => Some(p.clone()),
                _ => None,
            })
            .expect("shared layer");
        let second_index = entries
            .iter()
            .rposition(|e| matches!(e, Entry::File(_, bytes) if *bytes == shared))
            .expect("second copy");
        let Entry::File(second, _) = entries[second_index].clone() else {
            unreachable!()
        };
        assert_ne!(first, second);
        entries[second_index] = Entry::Symlink(second, format!("../{first}"));
        let report = fx
            .seed(&fx.archive("linked.tar", &build::tar(&entries)))
            .expect("seeded");
        assert_eq!(report.images.len(), 2);
        // Shared layer once, a's other layer, two configs, two manifests.
        assert_eq!(report.blobs_written, 6);
        let layout = Layout::new(&fx.storage());
        assert!(layout
            .layer_link("library/b", &digest(&build::digest(&shared)))
            .is_file());
    }

    #[test]
    fn an_index_keeps_the_platforms_the_archive_carries() {
        let fx = Fixture::new();
        let amd64 = TestImage::random(13, 1, 800);
        let arm64 = TestImage::random(14, 1, 800);
        let mut entries = build::oci_layout(&[(&amd64, &[])]);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": build::OCI_INDEX,
            "manifests": [
                {"mediaType": build::OCI_MANIFEST, "digest": amd64.oci_manifest_digest(),
                 "size": amd64.oci_manifest().len(), "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": build::OCI_MANIFEST, "digest": arm64.oci_manifest_digest(),
                 "size": arm64.oci_manifest().len(), "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        }))
        .expect("index");
        let index_digest = build::digest(&index);
        entries.retain(|e| !matches!(e, Entry::File(p, _) if p == "index.json"));
        entries.push(Entry::File(
            format!("blobs/sha256/{}", build::sha256_hex(&index)),
            index.clone(),
        ));
        entries.push(Entry::File(
            "index.json".into(),
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "manifests": [{"mediaType": build::OCI_INDEX, "digest": index_digest, "size": index.len(),
                               "annotations": {"io.containerd.image.name": "docker.io/library/multi:1"}}],
            }))
            .expect("index.json"),
        ));
        let report = fx
            .seed(&fx.archive("multi.tar", &build::tar(&entries)))
            .expect("seeded");
        assert_eq!(report.images[0].digest, index_digest);
        let layout = Layout::new(&fx.storage());
        assert!(layout
            .revision_link("library/multi", &digest(&index_digest))
            .is_file());
        assert!(layout
            .revision_link("library/multi", &digest(&amd64.oci_manifest_digest()))
            .is_file());
        assert!(!layout
            .revision_link("library/multi", &digest(&arm64.oci_manifest_digest()))
            .exists());
        assert_eq!(
            link(layout.tag_current_link("library/multi", "1")),
            index_digest
        );
    }

    #[test]
    fn an_images_folder_is_seeded_in_name_order() {
        let fx = Fixture::new();
        let a = TestImage::random(15, 1, 500);
        let b = TestImage::random(16, 1, 500);
        fx.archive(
            "20-b.tar.gz",
            &build::gzip(&build::tar(&build::docker_save(&[(&b, &["b:1"])]))),
        );
        fx.archive(
            "10-a.tar",
            &build::tar(&build::docker_save(&[(&a, &["a:1"])])),
        );
        fx.archive("README", b"not an archive");
        fx.archive(".hidden.tar", b"ignored");
        let report = seed_images_dir(&fx.images(), &fx.storage()).expect("seeded");
        let names: Vec<String> = report.images.iter().map(|i| i.repository.clone()).collect();
        assert_eq!(names, ["library/a", "library/b"]);
        assert_eq!(report.blobs_written, 6);

        let none = seed_images_dir(&fx.dir.path().join("absent"), &fx.storage()).expect("absent");
        assert_eq!(none, SeedReport::default());

        fx.archive("30-bad.tar", b"garbage garbage");
        let error = seed_images_dir(&fx.images(), &fx.storage()).expect_err("bad archive");
        assert!(error.to_string().contains("30-bad.tar"), "{error}");
    }
}
