//! Mounts and processes of this machine, found through the real `/proc` and limited to
//! real paths below given folders — so under `--root DIR` only what lives inside DIR is
//! ever touched, and on a live node the distro's data folders are.

use std::io;
use std::path::{Path, PathBuf};

use super::HostError;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Mount points at or below any of `folders` (real paths), deepest first.
pub fn mounts_under(folders: &[PathBuf]) -> Result<Vec<PathBuf>, HostError> {
    let text = std::fs::read_to_string(MOUNTINFO)
        .map_err(|e| HostError::io("read", Path::new(MOUNTINFO), e))?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|point| folders.iter().any(|f| point.starts_with(f)))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(value) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .map_err(drop)
                .and_then(|d| u8::from_str_radix(d, 8).map_err(drop))
            {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts every mount at or below `folders`, deepest first, lazily (a busy mount is
/// detached now and freed when its last user goes, as `umount -l` does).
pub fn unmount_under(folders: &[PathBuf]) -> Result<(), HostError> {
    for point in mounts_under(folders)? {
        match nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => log::info!("unmounted {}", point.display()),
            // Gone already (a parent's lazy unmount took it along).
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(HostError::io("unmount", &point, io::Error::from(e))),
        }
    }
    Ok(())
}

/// Processes whose executable lies below `folder` (a real path).
pub fn processes_under(folder: &Path) -> Result<Vec<i32>, HostError> {
    let proc_dir = Path::new("/proc");
    let entries = std::fs::read_dir(proc_dir).map_err(|e| HostError::io("list", proc_dir, e))?;
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes of other users or already gone cannot be read; they are not ours.
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if exe.starts_with(folder) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Kills (SIGKILL) every process running from below `folder`, then waits (bounded) until
/// they are gone: a shim that survives would keep its mounts busy.
pub fn kill_processes_under(folder: &Path) -> Result<(), HostError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pids = processes_under(folder)?;
    for pid in &pids {
        log::info!("killing process {pid} (runs from {})", folder.display());
        match kill(Pid::from_raw(*pid), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                return Err(HostError::io(
                    "kill a process under",
                    folder,
                    io::Error::from(e),
                ))
            }
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_under(folder)?.is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(HostError::io(
                "kill processes under",
                folder,
                io::Error::other("some still run 10 s after SIGKILL"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/end\\"), "/end\\");
    }

    #[test]
    fn nothing_is_mounted_under_a_fresh_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(&[dir.path().to_path_buf()])
            .unwrap()
            .is_empty());
        assert!(processes_under(dir.path()).unwrap().is_empty());
    }
}
