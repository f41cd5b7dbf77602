//! The plan engine's payload actions, done by the subsystems that own them: the cluster
//! image's unpacking (`rootfs`), image seeding, and a binary taken out of an image's
//! layers (`images`).

use std::path::Path;

use crate::plan::{ImageFile, PayloadError, Payloads, Unpack};
use crate::rootfs::unpack;

/// Unpacking and seeding for real, on this machine's file system.
pub struct NodePayloads;

impl Payloads for NodePayloads {
    fn is_unpacked(&self, archive: &Path, dest: &Path, sha256: Option<&str>) -> bool {
        unpack::find_unpacked(archive, dest, sha256)
            .is_some_and(|dir| unpack::points_at(dest, &dir))
    }

    fn unpack(&self, request: &Unpack<'_>) -> Result<(), PayloadError> {
        if crate::plan::is_url(request.archive) {
            let trust = match request.ca_file {
                Some(path) => crate::http::Trust::with_ca_file(path).map_err(PayloadError::of)?,
                None => crate::http::Trust::default(),
            };
            let url = request.archive.to_string_lossy();
            let remote = crate::rootfs::remote::Remote::new(&url, trust, request.insecure_http)
                .map_err(PayloadError::of)?;
            let options = unpack::UnpackOptions {
                sha256: request.sha256.map(str::to_owned),
                sha256_source: request.sha256_source.map(str::to_owned),
                max_size: None,
                host_arch: request.arch.to_owned(),
                bundle: false,
                no_switch: false,
            };
            return remote
                .unpack(request.dest, &options)
                .map(drop)
                .map_err(PayloadError::of);
        }
        let options = unpack::UnpackOptions {
            sha256: request.sha256.map(str::to_owned),
            sha256_source: request.sha256_source.map(str::to_owned),
            max_size: None,
            host_arch: request.arch.to_owned(),
            bundle: request.bundle,
            no_switch: false,
        };
        unpack::unpack(request.archive, request.dest, &options)
            .map(drop)
            .map_err(PayloadError::of)
    }

    fn seed(
        &self,
        registry_tree: Option<&Path>,
        images_dir: Option<&Path>,
        skip: &[String],
        storage: &Path,
    ) -> Result<(), PayloadError> {
        if let Some(tree) = registry_tree.filter(|t| t.exists()) {
            let report =
                crate::images::seed_storage_tree(tree, storage).map_err(PayloadError::of)?;
            log::info!("registry tree {}: {report}", tree.display());
        }
        if let Some(dir) = images_dir {
            let report = crate::images::seed_images_dir_except(dir, storage, skip)
                .map_err(PayloadError::of)?;
            log::info!("images in {}: {report}", dir.display());
        }
        Ok(())
    }

    fn install_image_file(&self, request: &ImageFile<'_>) -> Result<(), PayloadError> {
        install_image_file(request).map_err(PayloadError::of)
    }
}

/// Why a file taken from an image was not installed.
#[derive(Debug, thiserror::Error)]
enum ImageFileError {
    #[error(transparent)]
    Read(#[from] crate::images::SeedError),
    #[error("{image}: {file} is {reason}")]
    NotExecutable {
        image: std::path::PathBuf,
        file: String,
        reason: String,
    },
    #[error(transparent)]
    Io(#[from] crate::io::PathError),
}

fn install_image_file(request: &ImageFile<'_>) -> Result<(), ImageFileError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| crate::io::PathError::new(op, &path, e)
    };
    let parent = request.dest.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io("create folder", parent))?;
    // A random name beside the destination: nobody can plant a link at it beforehand.
    let temp = crate::host::temp::name_beside(request.dest)
        .map_err(io("name a file beside", request.dest))?;
    let result = (|| {
        crate::images::extract_file(request.image, request.file, request.arch, &temp)?;
        let mut head = [0u8; 20];
        let n = std::io::Read::read(
            &mut std::fs::File::open(&temp).map_err(io("open", &temp))?,
            &mut head,
        )
        .map_err(io("read", &temp))?;
        crate::validate::elf_executable(&head[..n], request.arch).map_err(|reason| {
            ImageFileError::NotExecutable {
                image: request.image.to_path_buf(),
                file: request.file.to_owned(),
                reason,
            }
        })?;
        let mtime = std::fs::metadata(request.image)
            .and_then(|m| m.modified())
            .map_err(io("stat", request.image))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&temp)
            .map_err(io("open", &temp))?;
        file.set_permissions(std::fs::Permissions::from_mode(request.mode))
            .map_err(io("chmod", &temp))?;
        file.set_modified(mtime)
            .map_err(io("set the mtime of", &temp))?;
        file.sync_all().map_err(io("fsync", &temp))?;
        crate::fault::point(|| format!("rename:{}", request.dest.display()));
        std::fs::rename(&temp, request.dest).map_err(io("rename", request.dest))?;
        log::info!(
            "installed {} from {} in {}",
            request.dest.display(),
            request.file,
            request.image.display()
        );
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
