//! The `rootfs` link: switched to a version folder in one rename, and an image folder a
//! killed switch had moved aside put back.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::image::ClusterImage;
use super::unpack_error::{io_err, UnpackError};
use crate::host::RootedHost;

/// The versions folder beside `dest`: `/var/lib/bootstrap/rootfs.versions`.
pub fn versions_dir(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".versions");
    dest.with_file_name(name)
}

pub(super) fn fsync_dir(dir: &Path) -> Result<(), UnpackError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", dir))
}

/// A file-name-safe version label.
pub(super) fn sanitize(version: &str) -> String {
    let cleaned: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "unversioned".to_owned()
    } else {
        cleaned
    }
}

/// Points `dest` at `version_dir` with one atomic rename. A real folder at `dest` (an image
/// baked in place) is first moved into the versions folder, so it is kept, not replaced.
pub fn switch_link(dest: &Path, version_dir: &Path, host_arch: &str) -> Result<(), UnpackError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let versions = versions_dir(dest);
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.file_type().is_symlink() => {}
        Ok(meta) if meta.is_dir() => {
            let host = RootedHost::new("/");
            let label = ClusterImage::open(&host, dest, host_arch)
                .map(|img| sanitize(&img.metadata.version))
                .unwrap_or_else(|_| "unversioned".to_owned());
            let mut kept = versions.join(format!("{label}-preexisting"));
            let mut n = 1;
            while kept.exists() {
                n += 1;
                kept = versions.join(format!("{label}-preexisting-{n}"));
            }
            log::info!(
                "keeping the image already at {} as {}",
                dest.display(),
                kept.display()
            );
            fs::create_dir_all(&versions).map_err(io_err("create folder", &versions))?;
            fs::rename(dest, &kept).map_err(io_err("move", dest))?;
            crate::fault::point(|| format!("moved-aside:{}", dest.display()));
        }
        Ok(_) => {
            return Err(UnpackError::BadDest {
                dest: dest.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", dest)(e)),
    }
    // Relative: it leads to the same image under `--root` (an image being baked) as on
    // the node itself.
    let relative = crate::io::relative::link_target(parent, version_dir);
    // A fresh name; links an earlier run left there when it died are removed first.
    let temp = crate::host::temp::name_beside(dest).map_err(io_err("name a link beside", dest))?;
    std::os::unix::fs::symlink(&relative, &temp).map_err(io_err("symlink", &temp))?;
    crate::fault::point(|| format!("rename:{}", dest.display()));
    fs::rename(&temp, dest).map_err(io_err("rename", dest))?;
    fsync_dir(parent)
}

/// Undoes half of a link switch that a killed run left: the image folder that was at
/// `dest` moved into `versions` (`*-preexisting`), no link made yet, so no image at
/// `dest` at all. With exactly one such folder and nothing at `dest`, it is put back, and
/// the command that was cut short switches again. Returns the folder put back.
pub fn restore_moved_aside(dest: &Path, versions: &Path) -> io::Result<Option<PathBuf>> {
    if fs::symlink_metadata(dest).is_ok() {
        return Ok(None);
    }
    let Ok(entries) = fs::read_dir(versions) else {
        return Ok(None);
    };
    let moved: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("-preexisting"))
        .collect();
    let [only] = moved.as_slice() else {
        return Ok(None);
    };
    log::warn!(
        "{} is missing and {} was moved aside by a run that died: putting it back",
        dest.display(),
        only.display()
    );
    fs::rename(only, dest)?;
    fs::File::open(dest.parent().unwrap_or(Path::new("/")))?.sync_all()?;
    Ok(Some(only.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_moved_aside_is_put_back_only_when_nothing_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("rootfs");
        let versions = dir.path().join("rootfs.versions");
        fs::create_dir_all(versions.join("v1-preexisting")).unwrap();
        fs::write(versions.join("v1-preexisting/Metadata"), "{}").unwrap();
        assert!(restore_moved_aside(&dest, &versions).unwrap().is_some());
        assert!(dest.join("Metadata").exists());
        fs::create_dir_all(versions.join("v0-preexisting")).unwrap();
        assert!(restore_moved_aside(&dest, &versions).unwrap().is_none());
    }
}
