//! Merging a pre-populated registry storage tree (`registry/docker/registry/v2/...` in a
//! cluster image) into the local registry's storage: hardlinked where possible, verified.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::image_ref::{is_tag, validate_repository};
use super::manifest::{self, Manifest, MANIFEST_LIMIT};
use super::report::{io_error, SeedError, SeedReport, SeededImage};
use super::storage::{is_file, read_link, BlobSource, Changes, Digest, Layout, Staging};

/// Repository names have at most 255 characters, so cannot nest deeper than this.
const MAX_REPOSITORY_DEPTH: usize = 128;

/// Merges the registry storage tree rooted at `tree` (the folder holding `docker/`) into
/// the storage at `storage_root`.
///
/// Every blob the storage lacks is staged (a hardlink when both are on one file system,
/// a copy otherwise), and its digest checked against its path. Blobs already stored
/// are not read again: the stored copy is the one the registry serves. Each repository
/// link must name a blob that will be there, each revision must be a manifest the
/// registry can serve whose config and layers the repository links, and each tag must
/// name a revision; only then is anything committed, so a bad tree changes nothing.
pub fn seed_storage_tree(tree: &Path, storage_root: &Path) -> Result<SeedReport, SeedError> {
    let source = Layout::new(tree);
    if !source.v2().is_dir() {
        return Err(SeedError::Missing {
            archive: tree.to_path_buf(),
            entry: "docker/registry/v2".into(),
            what: "the registry storage folder".into(),
        });
    }
    let dest = Layout::new(storage_root);
    let mut staging = Staging::create(&dest)?;
    let mut merge = Merge {
        tree,
        source: &source,
        dest: &dest,
        blobs: BTreeMap::new(),
        changes: Changes::default(),
        images: Vec::new(),
    };
    merge.stage_blobs(&mut staging)?;
    let mut repositories = Vec::new();
    merge.find_repositories(&source.v2().join("repositories"), "", 0, &mut repositories)?;
    for name in &repositories {
        merge.plan_repository(name)?;
    }
    let Merge {
        changes, images, ..
    } = merge;
    let mut report = SeedReport::default();
    changes.commit(&dest, &mut staging, &mut report)?;
    report.images = images;
    log::info!("merged registry storage {}: {report}", tree.display());
    Ok(report)
}

struct Merge<'a> {
    tree: &'a Path,
    source: &'a Layout,
    dest: &'a Layout,
    /// Every blob the merged storage will have from the tree, and where to read it now.
    blobs: BTreeMap<Digest, PathBuf>,
    changes: Changes,
    images: Vec<SeededImage>,
}

impl Merge<'_> {
    /// A path as named in errors: relative to the tree.
    fn entry(&self, path: &Path) -> String {
        path.strip_prefix(self.tree)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn malformed(&self, path: &Path, reason: impl Into<String>) -> SeedError {
        SeedError::Malformed {
            archive: self.tree.to_path_buf(),
            entry: self.entry(path),
            reason: reason.into(),
        }
    }

    fn stage_blobs(&mut self, staging: &mut Staging) -> Result<(), SeedError> {
        let blobs_dir = self.source.v2().join("blobs/sha256");
        for prefix in sorted_names(&blobs_dir)? {
            let prefix_dir = blobs_dir.join(&prefix);
            for hex in sorted_names(&prefix_dir)? {
                let blob_dir = prefix_dir.join(&hex);
                let digest = Digest::from_hex(&hex)
                    .filter(|d| d.hex().starts_with(&prefix))
                    .ok_or_else(|| {
                        self.malformed(
                            &blob_dir,
                            "not a blob folder: expected blobs/sha256/<2 hex>/<64 hex>",
                        )
                    })?;
                let data = blob_dir.join("data");
                if !is_file(&data)? {
                    // The registry leaves such folders behind after deleting a blob.
                    log::debug!("{}: no data; skipped", data.display());
                    continue;
                }
                if self.dest.has_blob(&digest)? {
                    let size = fs::metadata(&data)
                        .map_err(|e| io_error("inspect", &data, e))?
                        .len();
                    self.changes.blob(&digest, BlobSource::Present, size);
                    self.blobs
                        .insert(digest.clone(), self.dest.blob_data(&digest));
                    continue;
                }
                let staged = staging.stage_file(&data)?;
                if staged.digest != digest {
                    return Err(SeedError::DigestMismatch {
                        archive: self.tree.to_path_buf(),
                        entry: self.entry(&data),
                        expected: digest.to_string(),
                        actual: staged.digest.to_string(),
                    });
                }
                self.blobs.insert(digest.clone(), staged.path.clone());
                let size = staged.size;
                self.changes.blob(&digest, BlobSource::Staged(staged), size);
            }
        }
        // Copies (across file systems) are read back while planning.
        staging.wait_for_writes()
    }

    /// Repository folders are those holding `_manifests` or `_layers`; names nest
    /// (`library/nginx`), and one repository may sit inside another's folder.
    fn find_repositories(
        &self,
        dir: &Path,
        name: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) -> Result<(), SeedError> {
        if depth > MAX_REPOSITORY_DEPTH {
            return Err(self.malformed(dir, "repository folders nest too deep"));
        }
        let children = sorted_names(dir)?;
        if !name.is_empty() && children.iter().any(|c| c == "_manifests" || c == "_layers") {
            out.push(name.to_string());
        }
        for child in children.iter().filter(|c| !c.starts_with('_')) {
            let path = dir.join(child);
            if path.is_dir() {
                let child_name = if name.is_empty() {
                    child.clone()
                } else {
                    format!("{name}/{child}")
                };
                self.find_repositories(&path, &child_name, depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// The digest links under `dir/sha256/<hex>/link`, each checked to name its folder.
    fn digest_links(&self, dir: &Path) -> Result<Vec<Digest>, SeedError> {
        let mut digests = Vec::new();
        let dir = dir.join("sha256");
        for hex in sorted_names(&dir)? {
            let link = dir.join(&hex).join("link");
            let Some(text) = read_link(&link)? else {
                // Left behind by a delete in the registry: not a link any more.
                continue;
            };
            let digest = text.map_err(|reason| self.malformed(&link, reason))?;
            if digest.hex() != hex {
                return Err(
                    self.malformed(&link, format!("names {digest}, not the folder's {hex}"))
                );
            }
            digests.push(digest);
        }
        Ok(digests)
    }

    fn has_blob(&self, digest: &Digest) -> bool {
        self.blobs.contains_key(digest)
    }

    fn missing(&self, path: &Path, what: String) -> SeedError {
        SeedError::Missing {
            archive: self.tree.to_path_buf(),
            entry: self.entry(path),
            what,
        }
    }

    fn plan_repository(&mut self, name: &str) -> Result<(), SeedError> {
        let repo = self.source.repository(name);
        validate_repository(name).map_err(|source| SeedError::BadName {
            archive: self.tree.to_path_buf(),
            entry: self.entry(&repo),
            name: name.to_string(),
            source,
        })?;
        let dest_has = |path: PathBuf| is_file(&path);

        let layers_dir = repo.join("_layers");
        let mut layers = BTreeSet::new();
        for digest in self.digest_links(&layers_dir)? {
            if !self.has_blob(&digest) && !self.dest.has_blob(&digest)? {
                return Err(self.missing(&layers_dir, format!("blob {digest}")));
            }
            self.changes
                .link(self.dest.layer_link(name, &digest), &digest);
            layers.insert(digest);
        }

        let revisions_dir = repo.join("_manifests/revisions");
        let mut revisions = BTreeSet::new();
        for digest in self.digest_links(&revisions_dir)? {
            let content = match self.blobs.get(&digest) {
                Some(path) => path.clone(),
                None if self.dest.has_blob(&digest)? => self.dest.blob_data(&digest),
                None => return Err(self.missing(&revisions_dir, format!("manifest blob {digest}"))),
            };
            let where_ = revisions_dir.join("sha256").join(digest.hex());
            let bytes = read_limited(&content, MANIFEST_LIMIT)
                .map_err(|e| io_error("read", &content, e))?;
            let parsed = manifest::parse_manifest(&bytes, None)
                .map_err(|reason| self.malformed(&where_, reason))?;
            if let Manifest::Image {
                config,
                layers: image_layers,
            } = parsed
            {
                for blob in std::iter::once(&config).chain(&image_layers) {
                    let linked = layers.contains(&blob.digest)
                        || dest_has(self.dest.layer_link(name, &blob.digest))?;
                    if !linked {
                        return Err(self.missing(
                            &where_,
                            format!("layer link for {} in repository {name}", blob.digest),
                        ));
                    }
                }
            }
            self.changes
                .link(self.dest.revision_link(name, &digest), &digest);
            revisions.insert(digest);
        }

        let tags_dir = repo.join("_manifests/tags");
        for tag in sorted_names(&tags_dir)? {
            let tag_dir = tags_dir.join(&tag);
            if !is_tag(&tag) {
                return Err(self.malformed(&tag_dir, "not a valid tag"));
            }
            let is_revision = |digest: &Digest| -> Result<bool, SeedError> {
                Ok(revisions.contains(digest) || dest_has(self.dest.revision_link(name, digest))?)
            };
            for digest in self.digest_links(&tag_dir.join("index"))? {
                // History may name manifests since deleted; those are not carried over.
                if is_revision(&digest)? {
                    self.changes
                        .link(self.dest.tag_index_link(name, &tag, &digest), &digest);
                }
            }
            let current = tag_dir.join("current/link");
            let Some(text) = read_link(&current)? else {
                continue;
            };
            let digest = text.map_err(|reason| self.malformed(&current, reason))?;
            if !is_revision(&digest)? {
                return Err(
                    self.missing(&current, format!("revision {digest} in repository {name}"))
                );
            }
            self.changes
                .link(self.dest.tag_index_link(name, &tag, &digest), &digest);
            self.changes
                .tag(self.dest.tag_current_link(name, &tag), &digest);
            self.images.push(SeededImage {
                repository: name.to_string(),
                tag: Some(tag.clone()),
                digest: digest.to_string(),
            });
        }
        Ok(())
    }
}

/// Names in a folder, sorted; none when it does not exist.
fn sorted_names(dir: &Path) -> Result<Vec<String>, SeedError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("read folder", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("read folder", dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the {limit} bytes a manifest may have"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::images::seed::seed_archive;
    use crate::images::seed::tests::{snapshot, write};
    use crate::images::test_archives::{self as build, TestImage};

    /// A registry storage tree with two images, made by seeding archives.
    fn source_tree(dir: &Path) -> (PathBuf, Vec<TestImage>) {
        let tree = dir.join("registry");
        let a = TestImage::random(21, 2, 5000);
        let b = TestImage::random(22, 1, 5000);
        let archive = write(
            dir,
            "images.tar",
            &build::tar(&build::docker_save(&[
                (&a, &["a:1"]),
                (&b, &["quay.io/org/b:2"]),
            ])),
        );
        seed_archive(&archive, &tree).expect("source tree");
        (tree, vec![a, b])
    }

    fn v2(root: &Path) -> PathBuf {
        Layout::new(root).v2()
    }

    #[test]
    fn merges_a_tree_with_hardlinks_and_skips_what_is_there() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tree, images) = source_tree(dir.path());
        let storage = dir.path().join("storage");
        let report = seed_storage_tree(&tree, &storage).expect("merged");
        // Two layers + config + manifest, one layer + config + manifest.
        assert_eq!(report.blobs_written, 7);
        assert_eq!(
            report.blobs_linked, 7,
            "same file system: every blob hardlinked"
        );
        let names: Vec<String> = report
            .images
            .iter()
            .map(|i| format!("{}:{}", i.repository, i.tag.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(names, ["library/a:1", "org/b:2"]);
        assert_eq!(snapshot(&v2(&storage)), snapshot(&v2(&tree)));

        let layer = Digest::parse(&build::digest(&images[0].layers[0])).expect("digest");
        let source_inode = fs::metadata(Layout::new(&tree).blob_data(&layer))
            .expect("source")
            .ino();
        let dest_inode = fs::metadata(Layout::new(&storage).blob_data(&layer))
            .expect("dest")
            .ino();
        assert_eq!(source_inode, dest_inode);

        let again = seed_storage_tree(&tree, &storage).expect("again");
        assert_eq!((again.blobs_written, again.blobs_skipped), (0, 7));
        assert_eq!(snapshot(&v2(&storage)), snapshot(&v2(&tree)));
    }

    #[test]
    fn copies_across_file_systems() {
        // /dev/shm is a tmpfs where there is one; elsewhere this case cannot be made.
        let shm = Path::new("/dev/shm");
        let dir = tempfile::tempdir().expect("temp dir");
        let same_device = fs::metadata(shm)
            .map(|m| m.dev() == fs::metadata(dir.path()).expect("temp").dev())
            .unwrap_or(true);
        if same_device {
            eprintln!("no second file system at /dev/shm; cross-device copy not exercised");
            return;
        }
        let (tree, _) = source_tree(dir.path());
        let storage = tempfile::tempdir_in(shm).expect("tmpfs dir");
        let report = seed_storage_tree(&tree, storage.path()).expect("merged");
        assert_eq!((report.blobs_written, report.blobs_linked), (7, 0));
        assert_eq!(snapshot(&v2(storage.path())), snapshot(&v2(&tree)));
    }

    #[test]
    fn a_corrupt_tree_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = dir.path().join("storage");
        let existing = TestImage::random(23, 1, 100);
        let archive = write(
            dir.path(),
            "e.tar",
            &build::tar(&build::docker_save(&[(&existing, &["e:1"])])),
        );
        seed_archive(&archive, &storage).expect("existing");
        let before = snapshot(&storage);

        let (tree, images) = source_tree(dir.path());
        let layout = Layout::new(&tree);
        let layer = Digest::parse(&build::digest(&images[1].layers[0])).expect("digest");
        let data = layout.blob_data(&layer);
        let mut bytes = fs::read(&data).expect("blob");
        bytes[10] ^= 1;
        // Replace rather than modify in place: the archive's staging may share inodes.
        fs::remove_file(&data).expect("remove");
        fs::write(&data, &bytes).expect("corrupt");
        match seed_storage_tree(&tree, &storage) {
            Err(SeedError::DigestMismatch { archive, entry, .. }) => {
                assert_eq!(archive, tree);
                assert!(
                    entry.starts_with("docker/registry/v2/blobs/sha256/"),
                    "{entry}"
                );
                assert!(entry.ends_with(&format!("{}/data", layer.hex())), "{entry}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(snapshot(&storage), before);
        fs::remove_file(&data).expect("remove");
        fs::write(&data, &images[1].layers[0]).expect("restore");

        // A tag naming a manifest the repository does not have.
        let tag = layout.tag_current_link("org/b", "2");
        let original_tag = fs::read(&tag).expect("tag");
        let stray = Digest::of(b"stray");
        fs::write(&tag, stray.to_string()).expect("tag");
        match seed_storage_tree(&tree, &storage) {
            Err(SeedError::Missing { entry, what, .. }) => {
                assert_eq!(
                    entry,
                    "docker/registry/v2/repositories/org/b/_manifests/tags/2/current/link"
                );
                assert!(what.contains(&stray.to_string()), "{what}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(snapshot(&storage), before);

        // A link that names another blob than its folder.
        fs::write(&tag, original_tag).expect("tag");
        let config = Digest::parse(&images[1].config_digest()).expect("digest");
        fs::write(layout.layer_link("org/b", &config), stray.to_string()).expect("link");
        let error = seed_storage_tree(&tree, &storage).expect_err("bad link");
        assert!(error.to_string().contains("_layers/sha256/"), "{error}");
        assert_eq!(snapshot(&storage), before);

        let error = seed_storage_tree(&dir.path().join("nowhere"), &storage).expect_err("no tree");
        assert!(error.to_string().contains("docker/registry/v2"), "{error}");
    }
}
