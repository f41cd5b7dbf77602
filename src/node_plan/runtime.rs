//! The container-runtime phase of a plan — what each distro's runtime needs on this node,
//! computed from config, role, the cluster image and what is already on the host — and
//! the inputs it shares with the registry phase (`registry.rs`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::containerd::mirrors::{self, LocalRegistry};
use crate::containerd::{self, ConfigVersion};
use crate::distro::Context;
use crate::distro_kind::{kube_version, DistroKind};
use crate::host::{CommandSpec, FileKind, HostError};
use crate::plan::{Action, Contents, Phase, Probe, ServiceAction, Step};
use crate::role::Role;
use crate::rootfs::sources::BinarySource;
use crate::systemd::daemon_reload;

/// Where k3s imports image archives from at every start.
pub const K3S_IMAGES_DIR: &str = "/var/lib/rancher/k3s/agent/images";
/// Where k0s imports (uncompressed) image bundles from.
pub const K0S_IMAGES_DIR: &str = "/var/lib/k0s/images";
/// How long to wait for containerd's socket.
const CONTAINERD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why the runtime phase could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cluster image {image}: {what} is missing ({why})")]
    MissingInImage {
        image: String,
        what: String,
        why: String,
    },
    #[error("{binary}: cannot tell the containerd version from `--version` output {output:?}")]
    ContainerdVersion { binary: String, output: String },
    #[error("registry certificates: {0}")]
    Pki(#[from] crate::registry::PkiError),
    #[error("registry config.yml: {0}")]
    RegistryConfig(#[from] crate::registry::RegistryConfigError),
    #[error("registry unit: {0}")]
    Unit(#[from] crate::systemd::UnitError),
    #[error("registry htpasswd: {0}")]
    Htpasswd(#[from] crate::registry::HtpasswdError),
    #[error(transparent)]
    Packed(#[from] super::image_binaries::PackedError),
    #[error(transparent)]
    Host(#[from] HostError),
}

/// Everything the runtime phase is computed from: the driver's view of the node (the
/// same one the distro plans from).
pub struct Inputs<'a> {
    ctx: &'a Context<'a>,
}

impl<'a> Inputs<'a> {
    pub fn new(ctx: &'a Context<'a>) -> Self {
        Inputs { ctx }
    }
}

impl<'a> std::ops::Deref for Inputs<'a> {
    type Target = Context<'a>;

    fn deref(&self) -> &Context<'a> {
        self.ctx
    }
}

impl Inputs<'_> {
    /// The local registry as runtimes reach it.
    pub fn local_registry(&self) -> LocalRegistry {
        LocalRegistry {
            host: format!(
                "{}:{}",
                self.config.registry.domain, self.config.registry.port
            ),
            ca_path: mirrors::CA_PATH.to_owned(),
            auth: self
                .config
                .registry_credentials()
                .or_else(|| self.material.and_then(|m| m.registry_auth.clone())),
        }
    }

    /// The address the registry name resolves to: the first controller's, or this node's
    /// on a single-node cluster. `None` when the first controller is given by name.
    pub fn registry_ip(&self) -> Option<IpAddr> {
        match self.config.cluster.controllers.first() {
            Some(first) => first.parse().ok(),
            None => self.node_address,
        }
    }

    /// The one address the registry listens on (it takes a single `http.addr`): the
    /// address its name resolves to on every node when this is the node it names (the
    /// first controller, or a single node), else this node's address; loopback when
    /// neither is known. Never every address: nothing else on the node's other networks
    /// should reach it.
    pub fn registry_listen_ip(&self) -> IpAddr {
        let named = match self.role {
            Role::InitController => self.registry_ip(),
            _ => None,
        };
        named
            .or(self.node_address)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Whether this node runs the registry.
    pub fn runs_registry(&self) -> bool {
        self.config.registry.enabled
            && (self.role == Role::InitController
                || (self.config.registry.ha && self.role.is_controller()))
    }

    pub(super) fn image_dir(&self, name: &str) -> Result<PathBuf, HostError> {
        self.image.host_subdir(self.host, name)
    }

    pub(super) fn image_files(&self, name: &str) -> Result<Vec<(String, PathBuf)>, HostError> {
        let dir = self.image_dir(name)?;
        let mut out = Vec::new();
        for file in self.host.list_dir(&dir)?.unwrap_or_default() {
            let path = dir.join(&file);
            if self
                .host
                .stat(&path)?
                .is_some_and(|m| m.kind == FileKind::File)
            {
                out.push((file, path));
            }
        }
        Ok(out)
    }
}

pub(super) fn step(phase: Phase, reason: &str, action: Action) -> Step {
    Step::new(phase, reason, action)
}

pub(super) fn write(phase: Phase, reason: &str, path: &str, mode: u32, contents: Contents) -> Step {
    Step::write_file(phase, reason, path, mode, contents)
}

/// The runtime phase: mirror configuration for every distro, containerd itself for
/// kubeadm, and image archives where the distro imports them.
pub fn runtime_steps(inputs: &Inputs<'_>) -> Result<Vec<Step>, RuntimeError> {
    let mut steps = Vec::new();
    let registry = inputs.local_registry();
    let use_registry = inputs.config.registry.enabled;
    if use_registry {
        if let Some(ip) = inputs.registry_ip() {
            steps.push(step(
                Phase::Runtime,
                "nodes reach the local registry by its name",
                Action::HostsEntry {
                    ip: ip.to_string(),
                    names: vec![inputs.config.registry.domain.clone()],
                },
            ));
        }
    }
    let version = kube_version(&inputs.image.metadata.version).map(|(a, b, _)| (a, b));
    match inputs.image.distro {
        DistroKind::K3s => {
            if use_registry {
                let text = mirrors::k3s_registries(&registry);
                // With credentials it holds the registry password: no digest of it in
                // plans or logs, where it could be checked against guesses.
                let contents = if registry.auth.is_some() {
                    Contents::Secret(crate::secret::Secret::new(text))
                } else {
                    Contents::Public(text.into_bytes())
                };
                steps.push(write(
                    Phase::Runtime,
                    "k3s's containerd pulls every image through the local registry",
                    mirrors::K3S_REGISTRIES,
                    0o600,
                    contents,
                ));
                steps.push(write(
                    Phase::Runtime,
                    "no fall-back to upstream registries in an air gap",
                    mirrors::K3S_DROPIN,
                    0o644,
                    Contents::Public(mirrors::k3s_dropin().into_bytes()),
                ));
            }
            // Every k3s node runs a kubelet (servers too, by default).
            airgap_images(inputs, &mut steps, K3S_IMAGES_DIR, false)?;
            if !inputs.image_files("images")?.is_empty() {
                steps.push(write(
                    Phase::Runtime,
                    "k3s then imports only archives that changed since the last start",
                    &format!("{K3S_IMAGES_DIR}/.cache.json"),
                    0o644,
                    Contents::Public(Vec::new()),
                ));
            }
        }
        DistroKind::K0s => {
            if use_registry {
                steps.push(write(
                    Phase::Runtime,
                    "k0s's containerd reads its registry hosts from this folder",
                    mirrors::K0S_DROPIN,
                    0o644,
                    Contents::Public(mirrors::k0s_dropin(version).into_bytes()),
                ));
                hosts_steps(mirrors::K0S_CERTS_DIR, &registry, &mut steps);
            }
            // Workers run a kubelet; a lone controller runs one too (`--single`).
            let runs_kubelet = !inputs.role.is_controller() || !inputs.config.is_multi_node();
            if runs_kubelet {
                airgap_images(inputs, &mut steps, K0S_IMAGES_DIR, true)?;
            }
        }
        DistroKind::Kubeadm => kubeadm_containerd(inputs, &registry, version, &mut steps)?,
    }
    Ok(steps)
}

/// The `hosts.toml` files under `certs_dir`; private when they carry credentials.
fn hosts_steps(certs_dir: &str, registry: &LocalRegistry, steps: &mut Vec<Step>) {
    for (path, body) in mirrors::hosts_files(certs_dir, registry) {
        let (mode, contents) = if registry.auth.is_some() {
            (0o600, Contents::Secret(crate::secret::Secret::new(body)))
        } else {
            (0o644, Contents::Public(body.into_bytes()))
        };
        steps.push(write(
            Phase::Runtime,
            "pull through the local registry",
            &path.to_string_lossy(),
            mode,
            contents,
        ));
    }
}

/// Image archives copied where the distro imports them itself (k0s takes only plain tar).
fn airgap_images(
    inputs: &Inputs<'_>,
    steps: &mut Vec<Step>,
    dir: &str,
    decompress: bool,
) -> Result<(), RuntimeError> {
    let registry_image = super::image_binaries::registry_image_name(inputs);
    for (name, source) in inputs.image_files("images")? {
        if registry_image.as_ref() == Some(&name) {
            continue;
        }
        let dest_name = if decompress {
            strip_compression_suffix(&name)
        } else {
            name.clone()
        };
        steps.push(step(
            Phase::Runtime,
            "the distro imports these at start, before anything is pulled",
            Action::CopyFile {
                source,
                dest: Path::new(dir).join(dest_name),
                mode: 0o644,
                decompress,
            },
        ));
    }
    Ok(())
}

fn strip_compression_suffix(name: &str) -> String {
    for (suffix, replacement) in [
        (".tar.gz", ".tar"),
        (".tgz", ".tar"),
        (".tar.zst", ".tar"),
        (".tar.zstd", ".tar"),
        (".tzst", ".tar"),
    ] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return format!("{stem}{replacement}");
        }
    }
    name.to_owned()
}

fn kubeadm_containerd(
    inputs: &Inputs<'_>,
    registry: &LocalRegistry,
    version: Option<(u32, u32)>,
    steps: &mut Vec<Step>,
) -> Result<(), RuntimeError> {
    let mut cni_files = Vec::new();
    for cni in ["cni/bin", "opt/cni/bin"] {
        cni_files.extend(inputs.image_files(cni)?);
    }
    let (binary, text) = match &inputs.image.containerd {
        Some(BinarySource::Bundle { path, docker }) => {
            let own: Vec<String> = cni_files.iter().map(|(n, _)| n.clone()).collect();
            let (bundle_steps, text) =
                super::image_binaries::containerd_from_bundle(inputs, path, *docker, &own)?;
            steps.extend(bundle_steps);
            (path.join("containerd"), text)
        }
        _ => {
            let bin_dir = inputs.image_dir("bin")?;
            let names: Vec<String> = inputs.host.list_dir(&bin_dir)?.unwrap_or_default();
            for needed in ["containerd", "runc", "containerd-shim-runc-v2"] {
                if !names.iter().any(|n| n == needed) {
                    return Err(RuntimeError::MissingInImage {
                        image: inputs.image.dir.display().to_string(),
                        what: format!("bin/{needed}"),
                        why: "kubeadm needs containerd and runc on the host (from bin/, or from the bundle cri/containerd.tar.gz)".to_owned(),
                    });
                }
            }
            for (name, dest) in containerd::binaries(&names) {
                steps.push(step(
                    Phase::Runtime,
                    "kubeadm runs on the host's containerd",
                    Action::InstallBinary {
                        source: bin_dir.join(&name),
                        dest,
                        mode: 0o755,
                    },
                ));
            }
            let binary = bin_dir.join("containerd");
            let output = inputs
                .host
                .run(&CommandSpec::new(binary.display().to_string()).arg("--version"))?;
            (binary, output.stdout_text())
        }
    };
    for (name, source) in cni_files {
        steps.push(step(
            Phase::Runtime,
            "pod networking plugins",
            Action::InstallBinary {
                source,
                dest: Path::new(containerd::CNI_BIN_DIR).join(name),
                mode: 0o755,
            },
        ));
    }
    let schema =
        containerd::version_from_output(&text).ok_or_else(|| RuntimeError::ContainerdVersion {
            binary: binary.display().to_string(),
            output: text.trim().to_owned(),
        })?;
    let settings = containerd::Settings::standard(containerd::pause_image(version));
    steps.push(write(
        Phase::Runtime,
        match schema {
            ConfigVersion::V2 => {
                "containerd 1.x: config version 2, systemd cgroups, mirrors from certs.d"
            }
            ConfigVersion::V3 => {
                "containerd 2.x: config version 3, systemd cgroups, mirrors from certs.d"
            }
        },
        containerd::CONFIG_PATH,
        0o644,
        Contents::Public(containerd::render_config(schema, &settings).into_bytes()),
    ));
    if inputs.config.registry.enabled {
        hosts_steps(containerd::CERTS_DIR, registry, steps);
    }
    let unit = containerd::unit().render()?;
    steps.push(write(
        Phase::Runtime,
        "containerd as a system service",
        containerd::UNIT_PATH,
        0o644,
        Contents::Public(unit.clone().into_bytes()),
    ));
    steps.push(daemon_reload(Phase::Runtime, &[&unit]));
    for action in [ServiceAction::Enable, ServiceAction::Start] {
        steps.push(step(
            Phase::Runtime,
            "containerd runs now and at every boot",
            Action::Service {
                unit: containerd::UNIT_NAME.to_owned(),
                action,
            },
        ));
    }
    steps.push(step(
        Phase::Runtime,
        "kubeadm needs the CRI socket answering",
        Action::WaitFor {
            fail_when: None,
            probe: Probe::UnixSocket {
                path: PathBuf::from(containerd::SOCKET),
            },
            timeout: CONTAINERD_WAIT,
            interval: std::time::Duration::from_millis(250),
        },
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k0s_bundles_lose_their_compression_suffix() {
        assert_eq!(strip_compression_suffix("coredns.tar.zst"), "coredns.tar");
        assert_eq!(strip_compression_suffix("pause.tgz"), "pause.tar");
        assert_eq!(strip_compression_suffix("plain.tar"), "plain.tar");
    }
}
