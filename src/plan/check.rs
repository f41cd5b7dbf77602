//! Whether a step is already in place, by looking at the host (read-only).

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::payloads::Payloads;
use super::step::{Action, Probe, ServiceAction};
use crate::host::{CommandSpec, FileKind, Host, HostError};

/// What a look at the host says about a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The host already looks as the step would leave it.
    Done,
    /// The step would change something.
    Pending,
    /// The host cannot tell (a command without a probe, a restart); the journal decides.
    Unknown,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// `systemctl ARGS…` with the probe timeout.
pub fn systemctl(args: &[&str]) -> CommandSpec {
    CommandSpec::new("systemctl")
        .args(args.iter().copied())
        .timeout(PROBE_TIMEOUT)
}

/// Runs a probe.
pub fn probe(host: &dyn Host, probe: &Probe) -> Result<bool, HostError> {
    Ok(match probe {
        Probe::FileExists { path } => host.exists(path)?,
        Probe::Absent { path } => !host.exists(path)?,
        Probe::FileEquals { path, value } => host
            .read_string(path)?
            .is_some_and(|t| t.trim() == value.trim()),
        Probe::ModuleLoaded { name } => {
            host.exists(&Path::new("/sys/module").join(name))?
                || host
                    .read_string(Path::new("/proc/modules"))?
                    .is_some_and(|t| crate::facts::parse_modules(&t).contains(name))
        }
        Probe::NoActiveSwap => host
            .read_string(Path::new("/proc/swaps"))?
            .is_none_or(|t| crate::facts::parse_swaps(&t).is_empty()),
        Probe::SysctlsSet { values } => {
            for (key, value) in values {
                let path = sysctl_path(key);
                if host.read_string(&path)?.is_none_or(|t| t.trim() != value) {
                    return Ok(false);
                }
            }
            true
        }
        Probe::CommandSucceeds { command } => host.run(command)?.success(),
        Probe::UnixSocket { path } => {
            let real = host.real_path(path)?;
            std::os::unix::net::UnixStream::connect(real).is_ok()
        }
        Probe::Https {
            address,
            server_name,
            ca_file,
            path,
        } => {
            let ca = host.read(ca_file)?.ok_or_else(|| {
                HostError::io(
                    "read",
                    ca_file,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })?;
            match crate::http::https_ok(&ca, address, server_name, path) {
                Ok(ok) => ok,
                Err(why) => {
                    return Err(HostError::Failed {
                        command: format!("GET https://{server_name}{path} at {address}"),
                        status: "no answer".to_owned(),
                        stderr: why,
                    })
                }
            }
        }
        Probe::ServiceActive { unit } => host
            .run(&systemctl(&["is-active", "--quiet", unit]))?
            .success(),
        Probe::ServiceFailed { unit } => host
            .run(&systemctl(&["is-failed", "--quiet", unit]))?
            .success(),
    })
}

/// Whether `dest` is a copy of `source` as `apply` makes them: a file with `mode`, the
/// same size and the same mtime.
fn copied(host: &dyn Host, source: &Path, dest: &Path, mode: u32) -> Result<Status, HostError> {
    let (Some(src), Some(dst)) = (host.stat(source)?, host.metadata(dest)?) else {
        return Ok(Status::Pending);
    };
    let same = src.kind == FileKind::File
        && dst.kind == FileKind::File
        && dst.mode == mode
        && src.len == dst.len
        && mtime_of(host, source)? == mtime_of(host, dest)?;
    Ok(if same { Status::Done } else { Status::Pending })
}

/// The modification time of a host file (following symlinks), for cheap copy checks.
fn mtime_of(host: &dyn Host, path: &Path) -> Result<Option<std::time::SystemTime>, HostError> {
    let real = host.real_path(path)?;
    Ok(std::fs::metadata(real).and_then(|m| m.modified()).ok())
}

/// `/proc/sys/net/ipv4/ip_forward` for `net.ipv4.ip_forward`.
pub fn sysctl_path(key: &str) -> std::path::PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Looks at the host to tell whether `action` is already in place.
pub fn check(
    host: &dyn Host,
    payloads: &dyn Payloads,
    action: &Action,
) -> Result<Status, HostError> {
    let done = |yes: bool| if yes { Status::Done } else { Status::Pending };
    Ok(match action {
        Action::MakeDir { path, mode } => done(
            host.metadata(path)?
                .is_some_and(|m| m.kind == FileKind::Dir && m.mode == *mode),
        ),
        Action::WriteFile {
            path,
            mode,
            owner,
            contents,
        } => {
            let Some(meta) = host.metadata(path)? else {
                return Ok(Status::Pending);
            };
            let owner_ok = owner.is_none_or(|o| o.uid == meta.uid && o.gid == meta.gid);
            if meta.kind != FileKind::File || meta.mode != *mode || !owner_ok {
                return Ok(Status::Pending);
            }
            let current = host.read(path)?.unwrap_or_default();
            done(digest(&current) == digest(contents.bytes()))
        }
        // Installed binaries keep their source's mtime (see `apply`), so size and mtime
        // tell a copy from a change without reading tens of megabytes on every run.
        Action::InstallBinary { source, dest, mode } => copied(host, source, dest, *mode)?,
        // Installed with the image archive's mtime (see `apply`).
        Action::InstallFromImage {
            image, dest, mode, ..
        } => match host.metadata(dest)? {
            Some(dst) if dst.kind == FileKind::File && dst.mode == *mode => done(
                mtime_of(host, image)?.is_some() && mtime_of(host, image)? == mtime_of(host, dest)?,
            ),
            _ => Status::Pending,
        },
        Action::RunCommand { done_when, .. } => match done_when {
            Some(p) => done(probe(host, p)?),
            None => Status::Unknown,
        },
        Action::Service { unit, action } => match action {
            ServiceAction::Enable => done(
                host.run(&systemctl(&["is-enabled", "--quiet", unit]))?
                    .success(),
            ),
            ServiceAction::Start | ServiceAction::StartNoBlock => done(
                host.run(&systemctl(&["is-active", "--quiet", unit]))?
                    .success(),
            ),
            ServiceAction::Stop => done(
                !host
                    .run(&systemctl(&["is-active", "--quiet", unit]))?
                    .success(),
            ),
            ServiceAction::Mask => done(
                host.run(&systemctl(&["is-enabled", unit]))?
                    .stdout_text()
                    .trim()
                    == "masked",
            ),
            ServiceAction::Disable => done(
                !host
                    .run(&systemctl(&["is-enabled", "--quiet", unit]))?
                    .success(),
            ),
            ServiceAction::Restart | ServiceAction::RestartNoBlock => Status::Unknown,
        },
        Action::WaitFor { probe: p, .. } => done(probe(host, p).unwrap_or(false)),
        Action::CopyFile {
            source,
            dest,
            mode,
            decompress,
        } => {
            if *decompress {
                // Sizes differ after decompression; the mtime still tells.
                let (Some(src), Some(dst)) = (host.stat(source)?, host.metadata(dest)?) else {
                    return Ok(Status::Pending);
                };
                let same_time = mtime_of(host, source)? == mtime_of(host, dest)?;
                done(
                    dst.kind == FileKind::File
                        && dst.mode == *mode
                        && same_time
                        && src.kind == FileKind::File,
                )
            } else {
                copied(host, source, dest, *mode)?
            }
        }
        Action::SeedImages { .. } => Status::Unknown,
        Action::Symlink { path, target } => {
            done(host.read_link(path)?.as_deref() == Some(target.as_path()))
        }
        Action::Remove { path } => done(!host.exists(path)?),
        Action::Unmount { under } => {
            let mut real = Vec::new();
            for path in under {
                real.push(host.real_path(path)?);
            }
            done(crate::host::system::mounts_under(&real)?.is_empty())
        }
        Action::KillProcesses { under } => {
            done(crate::host::system::processes_under(&host.real_path(under)?)?.is_empty())
        }
        Action::RemoveHostsEntry { .. } => done(
            !host
                .read_string(std::path::Path::new("/etc/hosts"))?
                .is_some_and(|t| crate::plan::hosts_file::has_any(&t)),
        ),
        Action::HostsEntry { ip, names } => done(
            host.read_string(std::path::Path::new("/etc/hosts"))?
                .is_some_and(|t| crate::plan::hosts_file::has_entry(&t, ip, names)),
        ),
        Action::UnpackRootfs {
            archive,
            dest,
            sha256,
            ..
        } => {
            let archive = if super::payloads::is_url(archive) {
                archive.clone()
            } else {
                host.real_path(archive)?
            };
            let dest = host.real_path(dest)?;
            done(payloads.is_unpacked(&archive, &dest, sha256.as_deref()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::plan::payloads::NoPayloads;
    use crate::plan::Contents;
    use std::path::PathBuf;

    #[test]
    fn write_file_is_done_only_with_same_bytes_and_mode() {
        let host = FakeHost::new();
        let action = Action::WriteFile {
            path: PathBuf::from("/etc/x.conf"),
            mode: 0o644,
            owner: None,
            contents: Contents::Public(b"a=1\n".to_vec()),
        };
        assert_eq!(check(&host, &NoPayloads, &action).unwrap(), Status::Pending);
        host.write_atomic(Path::new("/etc/x.conf"), b"a=1\n", 0o600, None)
            .unwrap();
        assert_eq!(
            check(&host, &NoPayloads, &action).unwrap(),
            Status::Pending,
            "mode differs"
        );
        host.write_atomic(Path::new("/etc/x.conf"), b"a=1\n", 0o644, None)
            .unwrap();
        assert_eq!(check(&host, &NoPayloads, &action).unwrap(), Status::Done);
        host.write_atomic(Path::new("/etc/x.conf"), b"a=2\n", 0o644, None)
            .unwrap();
        assert_eq!(check(&host, &NoPayloads, &action).unwrap(), Status::Pending);
    }

    #[test]
    fn probes_read_proc_files() {
        let host = FakeHost::new()
            .with_file("/proc/modules", "overlay 1 0 - Live 0x0\n")
            .with_file("/proc/swaps", "Filename Type Size Used Priority\n")
            .with_file("/proc/sys/net/ipv4/ip_forward", "1\n");
        assert!(probe(
            &host,
            &Probe::ModuleLoaded {
                name: "overlay".into()
            }
        )
        .unwrap());
        assert!(!probe(
            &host,
            &Probe::ModuleLoaded {
                name: "br_netfilter".into()
            }
        )
        .unwrap());
        assert!(probe(&host, &Probe::NoActiveSwap).unwrap());
        assert!(probe(
            &host,
            &Probe::FileEquals {
                path: "/proc/sys/net/ipv4/ip_forward".into(),
                value: "1".into()
            }
        )
        .unwrap());
    }
}
