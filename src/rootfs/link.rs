//! The `rootfs` link's own rules: relative targets, and putting back an image folder a
//! killed link switch had moved aside (`unpack::switch_link` does the switching).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `target` as seen from the folder `from` (both absolute): `../..` up to what they
/// share, then down to `target`. A relative link means the same under `--root` (an image
/// being baked) as on the node itself.
pub fn relative_to(from: &Path, target: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = target.components().collect();
    let shared = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in shared..from.len() {
        out.push("..");
    }
    for c in &to[shared..] {
        out.push(c);
    }
    out
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
    fn links_are_relative_to_their_folder() {
        let r = |a: &str, b: &str| relative_to(Path::new(a), Path::new(b));
        assert_eq!(
            r(
                "/r/var/lib/bootstrap",
                "/r/var/lib/bootstrap/rootfs.versions/v1"
            ),
            Path::new("rootfs.versions/v1")
        );
        assert_eq!(
            r("/r/var/lib/bootstrap", "/r/opt/images/next"),
            Path::new("../../../opt/images/next")
        );
    }

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
