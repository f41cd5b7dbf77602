//! The step vocabulary: what a plan may do to a host, and how to tell it has been done.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::host::{CommandSpec, Owner};
use crate::secret::Secret;

/// The stages of `up`, in order. Steps in [`Phase::Join`] mark the node as joining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    HostPrep,
    ClusterImage,
    Runtime,
    Registry,
    /// The distro's binaries and units, the same on every node (what image baking does).
    Install,
    Init,
    Join,
    PostInstall,
    Upgrade,
    Leave,
    Reset,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::HostPrep => "host preparation",
            Phase::ClusterImage => "cluster image",
            Phase::Runtime => "container runtime",
            Phase::Registry => "registry",
            Phase::Install => "distro install",
            Phase::Init => "cluster init",
            Phase::Join => "cluster join",
            Phase::PostInstall => "post-install",
            Phase::Upgrade => "upgrade",
            Phase::Leave => "leave",
            Phase::Reset => "reset",
        })
    }
}

/// File contents; secret contents never appear in plans, logs or journals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Public(Vec<u8>),
    Secret(Secret),
    /// Public, but made fresh by this run (a new certificate): plans show that, not a
    /// digest that would differ on every run.
    Generated(Vec<u8>),
}

impl Contents {
    /// The bytes to write.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Contents::Public(b) | Contents::Generated(b) => b,
            Contents::Secret(s) => s.expose().as_bytes(),
        }
    }

    /// SHA-256 of the bytes, hex.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.bytes()))
    }
}

impl Serialize for Contents {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Contents", 3)?;
        match self {
            Contents::Public(b) => {
                st.serialize_field("bytes", &b.len())?;
                st.serialize_field("sha256", &self.sha256())?;
                st.serialize_field("secret", &false)?;
            }
            Contents::Generated(_) => {
                st.serialize_field("bytes", "generated")?;
                st.serialize_field("sha256", "generated")?;
                st.serialize_field("secret", &false)?;
            }
            Contents::Secret(sec) => {
                st.serialize_field("bytes", &sec.len())?;
                st.serialize_field("sha256", crate::secret::REDACTED)?;
                st.serialize_field("secret", &true)?;
            }
        }
        st.end()
    }
}

/// What to do with a systemd unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceAction {
    Enable,
    Start,
    /// Start without waiting for `Type=notify` units (their readiness is probed after).
    StartNoBlock,
    Restart,
    /// Restart without waiting for `Type=notify` units.
    RestartNoBlock,
    Stop,
    Disable,
    Mask,
}

impl ServiceAction {
    /// The `systemctl` verb.
    pub fn verb(self) -> &'static str {
        match self {
            ServiceAction::Enable => "enable",
            ServiceAction::Start | ServiceAction::StartNoBlock => "start",
            ServiceAction::Restart | ServiceAction::RestartNoBlock => "restart",
            ServiceAction::Stop => "stop",
            ServiceAction::Disable => "disable",
            ServiceAction::Mask => "mask",
        }
    }
}

/// A read-only test of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "probe", rename_all = "kebab-case")]
pub enum Probe {
    /// Something exists at the path.
    FileExists { path: PathBuf },
    /// Nothing exists at the path.
    Absent { path: PathBuf },
    /// The file's trimmed text equals `value` (a sysctl under `/proc/sys`, say).
    FileEquals { path: PathBuf, value: String },
    /// A kernel module is loaded or built in.
    ModuleLoaded { name: String },
    /// `/proc/swaps` lists no active swap.
    NoActiveSwap,
    /// Every sysctl (`net.ipv4.ip_forward`) reads the value under `/proc/sys`.
    SysctlsSet { values: Vec<(String, String)> },
    /// A command exits 0.
    CommandSucceeds { command: CommandSpec },
    /// `systemctl is-active` says active.
    ServiceActive { unit: String },
    /// `systemctl is-failed` says failed.
    ServiceFailed { unit: String },
    /// Something accepts connections on the unix socket.
    UnixSocket { path: PathBuf },
    /// An HTTPS server at `address` proves itself with a certificate for `server_name`
    /// signed by the CA in `ca_file`, and answers `GET path` with 200 or 401.
    Https {
        address: String,
        server_name: String,
        ca_file: PathBuf,
        path: String,
    },
}

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    MakeDir {
        path: PathBuf,
        mode: u32,
    },
    WriteFile {
        path: PathBuf,
        mode: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
        contents: Contents,
    },
    InstallBinary {
        source: PathBuf,
        dest: PathBuf,
        mode: u32,
    },
    /// Installs one file of a container image archive (`file`, a path in the image, from
    /// its top-most layer that has it), checked to be an executable for `arch`. In
    /// place when the destination has the archive's mtime and the mode.
    InstallFromImage {
        image: PathBuf,
        file: String,
        dest: PathBuf,
        mode: u32,
        arch: String,
    },
    RunCommand {
        command: CommandSpec,
        /// When given, the command is skipped while this probe passes.
        #[serde(skip_serializing_if = "Option::is_none")]
        done_when: Option<Probe>,
    },
    Service {
        unit: String,
        action: ServiceAction,
    },
    /// Copies a (possibly large) file, streaming; with `decompress`, a gzip or zstd file is
    /// written uncompressed. In place when the destination has the source's mtime and mode.
    CopyFile {
        source: PathBuf,
        dest: PathBuf,
        mode: u32,
        decompress: bool,
    },
    /// Writes the images of the cluster image into the registry's storage.
    SeedImages {
        #[serde(skip_serializing_if = "Option::is_none")]
        images_dir: Option<PathBuf>,
        /// Archives of `images_dir` not to seed (the registry's own image).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skip: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        registry_tree: Option<PathBuf>,
        storage: PathBuf,
        /// What the sources hold (names, sizes, mtimes), so a new cluster image is seeded
        /// again while an unchanged one is not read twice.
        sources: String,
    },
    /// Keeps exactly one line `IP NAMES # bootstrap` in `/etc/hosts`.
    HostsEntry {
        ip: String,
        names: Vec<String>,
    },
    /// Unpacks a cluster-image archive (verified, staged, versioned) and points the
    /// image folder at it.
    UnpackRootfs {
        archive: PathBuf,
        dest: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// Where `sha256` came from (config, or the `.sha256` file beside the archive).
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256_source: Option<String>,
        /// The host architecture, for per-arch images.
        arch: String,
        /// A bundle of binaries from inside the cluster image (containerd's), unpacked
        /// the same safe way, not itself a cluster image.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        bundle: bool,
        /// For an archive URL: CA certificates trusted besides the system's (a host path).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        /// For an archive URL: `http://` allowed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        insecure_http: bool,
    },
    /// Makes `path` a symlink to `target`.
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    /// Removes a file, symlink or folder tree.
    Remove {
        path: PathBuf,
    },
    /// Unmounts (lazily) every mount at or below these folders, deepest first.
    Unmount {
        under: Vec<PathBuf>,
    },
    /// Kills every process whose executable lies below this folder (containerd shims).
    KillProcesses {
        under: PathBuf,
    },
    /// Drops the `# bootstrap` line for these names from `/etc/hosts`.
    RemoveHostsEntry {
        names: Vec<String>,
    },
    WaitFor {
        probe: Probe,
        /// Stop waiting early, as failed, once this passes (the service has failed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fail_when: Option<Probe>,
        #[serde(with = "crate::duration_serde")]
        timeout: Duration,
        #[serde(with = "crate::duration_serde")]
        interval: Duration,
    },
}

/// An action with a stable id, the phase it belongs to and why it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Stable across runs; the journal is keyed by it.
    pub id: String,
    pub phase: Phase,
    /// Why this step exists, for the plan output.
    pub reason: String,
    #[serde(flatten)]
    pub action: Action,
}

impl Step {
    /// A step whose id is derived from its action.
    pub fn new(phase: Phase, reason: impl Into<String>, action: Action) -> Step {
        Step {
            id: action.default_id(),
            phase,
            reason: reason.into(),
            action,
        }
    }

    /// Writing `contents` to `path` (owned by root).
    pub fn write_file(
        phase: Phase,
        reason: impl Into<String>,
        path: impl Into<PathBuf>,
        mode: u32,
        contents: Contents,
    ) -> Step {
        let action = Action::WriteFile {
            path: path.into(),
            mode,
            owner: None,
            contents,
        };
        Step::new(phase, reason, action)
    }

    /// This step, run once per distinct `inputs`: its id carries their digest, so a
    /// change runs it again and an unchanged re-run finds it journaled (for steps the
    /// host cannot judge: a restart, a command).
    pub fn keyed(mut self, inputs: &[&[u8]]) -> Step {
        let mut hasher = Sha256::new();
        for bytes in inputs {
            hasher.update(Sha256::digest(bytes));
        }
        self.id = format!("{}@{}", self.id, hex::encode(&hasher.finalize()[..6]));
        self
    }

    /// A digest of everything the step does; a journal entry only counts for the same
    /// fingerprint. Secret contents enter only through their hash, mixed with the rest.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        // A certificate made by this run and the same one read back by the next are one
        // step: "newly generated" is for plans, not for telling steps apart (or a second
        // `up` would record it again).
        let action = match &self.action {
            Action::WriteFile {
                contents: Contents::Generated(bytes),
                ..
            } => {
                let mut public = self.action.clone();
                if let Action::WriteFile { contents, .. } = &mut public {
                    *contents = Contents::Public(bytes.clone());
                }
                std::borrow::Cow::Owned(public)
            }
            _ => std::borrow::Cow::Borrowed(&self.action),
        };
        hasher.update(serde_json::to_vec(action.as_ref()).unwrap_or_default());
        if let Action::WriteFile { contents, .. } = &self.action {
            hasher.update(Sha256::digest(contents.bytes()));
        }
        hex::encode(&hasher.finalize()[..16])
    }
}

impl Action {
    fn default_id(&self) -> String {
        match self {
            Action::MakeDir { path, .. } => format!("mkdir:{}", path.display()),
            Action::WriteFile { path, .. } => format!("write:{}", path.display()),
            Action::InstallBinary { dest, .. } | Action::InstallFromImage { dest, .. } => {
                format!("install:{}", dest.display())
            }
            Action::RunCommand { command, .. } => format!("run:{command}"),
            Action::Service { unit, action } => format!("{}:{unit}", action.verb()),
            Action::WaitFor { probe, .. } => format!("wait:{probe}"),
            Action::UnpackRootfs { dest, .. } => format!("unpack:{}", dest.display()),
            Action::CopyFile { dest, .. } => format!("copy:{}", dest.display()),
            Action::SeedImages { storage, .. } => format!("seed:{}", storage.display()),
            Action::HostsEntry { names, .. } => format!("hosts:{}", names.join(",")),
            Action::Symlink { path, .. } => format!("symlink:{}", path.display()),
            Action::Remove { path } => format!("remove:{}", path.display()),
            Action::Unmount { under } => format!(
                "unmount:{}",
                under
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Action::KillProcesses { under } => format!("kill:{}", under.display()),
            Action::RemoveHostsEntry { names } => format!("unhosts:{}", names.join(",")),
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::FileExists { path } => write!(f, "{} exists", path.display()),
            Probe::Absent { path } => write!(f, "{} is gone", path.display()),
            Probe::FileEquals { path, value } => write!(f, "{} = {value}", path.display()),
            Probe::ModuleLoaded { name } => write!(f, "module {name} loaded"),
            Probe::NoActiveSwap => f.write_str("no active swap"),
            Probe::SysctlsSet { values } => {
                let shown: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "sysctls {}", shown.join(", "))
            }
            Probe::CommandSucceeds { command } => write!(f, "`{command}` succeeds"),
            Probe::ServiceActive { unit } => write!(f, "{unit} active"),
            Probe::ServiceFailed { unit } => write!(f, "{unit} failed"),
            Probe::UnixSocket { path } => write!(f, "{} accepts connections", path.display()),
            Probe::Https {
                address,
                server_name,
                path,
                ..
            } => write!(f, "https://{server_name}{path} answers at {address}"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::MakeDir { path, mode } => {
                write!(f, "make folder {} ({mode:04o})", path.display())
            }
            Action::WriteFile {
                path,
                mode,
                contents,
                ..
            } => match contents {
                Contents::Public(b) => write!(
                    f,
                    "write {} ({mode:04o}, {} bytes, sha256 {})",
                    path.display(),
                    b.len(),
                    &contents.sha256()[..12]
                ),
                Contents::Secret(_) => write!(f, "write {} ({mode:04o}, secret)", path.display()),
                Contents::Generated(_) => {
                    write!(f, "write {} ({mode:04o}, newly generated)", path.display())
                }
            },
            Action::InstallBinary { source, dest, mode } => write!(
                f,
                "install {} from {} ({mode:04o})",
                dest.display(),
                source.display()
            ),
            Action::InstallFromImage {
                image,
                file,
                dest,
                mode,
                ..
            } => write!(
                f,
                "install {} from {file} in the image {} ({mode:04o})",
                dest.display(),
                image.display()
            ),
            Action::RunCommand { command, .. } => write!(f, "run `{command}`"),
            Action::Service { unit, action } => match action {
                ServiceAction::StartNoBlock => write!(f, "systemctl start --no-block {unit}"),
                ServiceAction::RestartNoBlock => {
                    write!(f, "systemctl restart --no-block {unit}")
                }
                other => write!(f, "systemctl {} {unit}", other.verb()),
            },
            Action::CopyFile {
                source,
                dest,
                mode,
                decompress,
            } => write!(
                f,
                "{} {} to {} ({mode:04o})",
                if *decompress { "decompress" } else { "copy" },
                source.display(),
                dest.display()
            ),
            Action::SeedImages {
                images_dir,
                registry_tree,
                storage,
                ..
            } => {
                let sources: Vec<String> = [images_dir, registry_tree]
                    .iter()
                    .filter_map(|p| p.as_ref().map(|p| p.display().to_string()))
                    .collect();
                write!(
                    f,
                    "seed images from {} into {}",
                    sources.join(" and "),
                    storage.display()
                )
            }
            Action::HostsEntry { ip, names } => {
                write!(
                    f,
                    "keep `{ip} {} # bootstrap` in /etc/hosts",
                    names.join(" ")
                )
            }
            Action::UnpackRootfs {
                archive,
                dest,
                bundle: true,
                ..
            } => write!(
                f,
                "unpack the bundle {} into {}",
                archive.display(),
                dest.display()
            ),
            Action::UnpackRootfs {
                archive,
                dest,
                sha256,
                ..
            } => write!(
                f,
                "unpack {} into {} ({})",
                archive.display(),
                dest.display(),
                match sha256 {
                    Some(hex) => format!("sha256 {}", &hex[..12.min(hex.len())]),
                    None => "no digest to verify".to_owned(),
                }
            ),
            Action::Symlink { path, target } => {
                write!(f, "link {} -> {}", path.display(), target.display())
            }
            Action::Remove { path } => write!(f, "remove {}", path.display()),
            Action::Unmount { under } => write!(
                f,
                "unmount everything under {}",
                under
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::KillProcesses { under } => {
                write!(f, "kill processes running from {}", under.display())
            }
            Action::RemoveHostsEntry { names } => {
                write!(
                    f,
                    "drop the `{} # bootstrap` line from /etc/hosts",
                    names.join(" ")
                )
            }
            Action::WaitFor { probe, timeout, .. } => write!(
                f,
                "wait until {probe} (at most {})",
                humantime::format_duration(*timeout)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(contents: Contents) -> Step {
        Step::new(
            Phase::Registry,
            "a certificate",
            Action::WriteFile {
                path: PathBuf::from("/etc/bootstrap/registry/ca.crt"),
                mode: 0o644,
                owner: None,
                contents,
            },
        )
    }

    #[test]
    fn a_generated_file_and_the_same_bytes_read_back_are_one_step() {
        let pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        let made = write(Contents::Generated(pem.clone()));
        let read_back = write(Contents::Public(pem));
        assert_eq!(made.fingerprint(), read_back.fingerprint());
        // Other bytes are another step.
        let other = write(Contents::Public(b"other".to_vec()));
        assert_ne!(made.fingerprint(), other.fingerprint());
    }
}
