//! Relative symlink targets: a link that leads to the same place under `--root` as on the
//! node, where an absolute target would name a path of the machine running bootstrap.

use std::path::{Path, PathBuf};

/// The target of a link in folder `dir` that leads to `to` (both absolute).
pub fn link_target(dir: &Path, to: &Path) -> PathBuf {
    let dir: Vec<_> = dir.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = dir.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out: PathBuf = dir[common..].iter().map(|_| "..").collect();
    out.extend(&to[common..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_point_relatively_so_they_stay_inside_a_root() {
        assert_eq!(
            link_target(
                Path::new("/tmp/r/var/lib/bootstrap"),
                Path::new("/tmp/r/opt/images/next")
            ),
            PathBuf::from("../../../opt/images/next")
        );
        assert_eq!(
            link_target(
                Path::new("/var/lib/bootstrap"),
                Path::new("/var/lib/bootstrap/rootfs.versions/v1")
            ),
            PathBuf::from("rootfs.versions/v1")
        );
        assert_eq!(
            link_target(
                Path::new("/root/.kube"),
                Path::new("/etc/rancher/k3s/k3s.yaml")
            ),
            PathBuf::from("../../etc/rancher/k3s/k3s.yaml")
        );
        assert_eq!(
            link_target(Path::new("/usr/local/bin"), Path::new("/usr/local/bin/k3s")),
            PathBuf::from("k3s")
        );
    }
}
