//! The container-runtime and registry phases of a plan: what each distro's runtime needs
//! on this node, computed from config, role, the cluster image and what is already on
//! the host.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::containerd::mirrors::{self, LocalRegistry};
use crate::containerd::{self, ConfigVersion};
use crate::distro::Context;
use crate::distro_kind::{kube_version, DistroKind};
use crate::host::{CommandSpec, FileKind, Host, HostError};
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

    /// Whether this node runs the registry.
    pub fn runs_registry(&self) -> bool {
        self.config.registry.enabled
            && (self.role == Role::InitController
                || (self.config.registry.ha && self.role.is_controller()))
    }

    fn image_dir(&self, name: &str) -> Result<PathBuf, HostError> {
        self.image.host_subdir(self.host, name)
    }

    fn image_files(&self, name: &str) -> Result<Vec<(String, PathBuf)>, HostError> {
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

fn step(phase: Phase, reason: &str, action: Action) -> Step {
    Step::new(phase, reason, action)
}

fn write(phase: Phase, reason: &str, path: &str, mode: u32, contents: Contents) -> Step {
    Step::write_file(phase, reason, path, mode, contents)
}

/// How long to wait for the registry to answer over TLS.
const REGISTRY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// The names the serving certificate was issued for, to tell when to issue a new one.
const SERVER_NAMES_FILE: &str = "/etc/bootstrap/registry/server.names";

/// A short digest of what the image sources hold: each file's name, size and mtime (the
/// registry tree's repositories by name), without reading the data.
fn sources_digest(
    host: &dyn Host,
    dirs: impl IntoIterator<Item = Option<PathBuf>>,
) -> Result<String, HostError> {
    let mut hasher = Sha256::new();
    for dir in dirs.into_iter().flatten() {
        let dir = dir.as_path();
        hasher.update(dir.as_os_str().as_encoded_bytes());
        for name in host.list_dir(dir)?.unwrap_or_default() {
            let path = dir.join(&name);
            let real = host.real_path(&path)?;
            let stamp = std::fs::metadata(&real)
                .map(|m| (m.len(), m.modified().ok()))
                .unwrap_or((0, None));
            hasher.update(format!("{name}\0{stamp:?}\n").as_bytes());
        }
    }
    Ok(hex::encode(&hasher.finalize()[..8]))
}

/// A restart keyed by what the service reads, so a change of any of it restarts the
/// service once, and an unchanged re-run does not.
fn keyed_restart(phase: Phase, unit: &str, inputs: &[&[u8]]) -> Step {
    step(
        phase,
        "(re)start with the files above",
        Action::Service {
            unit: unit.to_owned(),
            action: ServiceAction::Restart,
        },
    )
    .keyed(inputs)
}

/// The registry phase, on the node(s) that run it: binary, CA and serving certificate
/// (made once, then reused), `config.yml`, the unit, images seeded into its storage, and
/// a bounded wait until it answers over TLS with our CA.
pub fn registry_steps(inputs: &Inputs<'_>) -> Result<Vec<Step>, RuntimeError> {
    use crate::registry as reg;
    let mut steps = Vec::new();
    if !inputs.runs_registry() {
        return Ok(steps);
    }
    let host = inputs.host;
    let (install, registry_image) = super::image_binaries::registry_install(inputs)?;
    steps.push(install);

    let mut ips: Vec<IpAddr> = inputs
        .config
        .cluster
        .controllers
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    if let Some(a) = inputs.node_address {
        if !ips.contains(&a) {
            ips.push(a);
        }
    }
    let names = reg::ServerNames::new(inputs.config.registry.domain.clone(), ips.clone());
    let names_text = {
        let mut all: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
        all.insert(0, inputs.config.registry.domain.clone());
        all.join("\n") + "\n"
    };
    let read =
        |path: &str| -> Result<Option<String>, HostError> { host.read_string(Path::new(path)) };
    let now = time::OffsetDateTime::now_utc();
    let (ca_cert, ca_key, ca_fresh) = match (read(reg::CA_CERT_FILE)?, read(reg::CA_KEY_FILE)?) {
        (Some(cert), Some(key)) => (cert, crate::secret::Secret::new(key), false),
        _ => {
            let ca = reg::generate_ca(now)?;
            (ca.cert_pem, ca.key_pem, true)
        }
    };
    let same_names = read(SERVER_NAMES_FILE)?.as_deref() == Some(names_text.as_str());
    let (server_cert, server_key, server_fresh) =
        match (read(reg::CERT_FILE)?, read(reg::KEY_FILE)?) {
            (Some(cert), Some(key)) if same_names && !ca_fresh => {
                (cert, crate::secret::Secret::new(key), false)
            }
            _ => {
                let ca = reg::CertificateAuthority {
                    cert_pem: ca_cert.clone(),
                    key_pem: ca_key.clone(),
                };
                let serving = reg::issue_serving_cert(&ca, &names, now)?;
                (serving.cert_pem, serving.key_pem, true)
            }
        };
    let public = |fresh: bool, text: &str| {
        if fresh {
            Contents::Generated(text.as_bytes().to_vec())
        } else {
            Contents::Public(text.as_bytes().to_vec())
        }
    };
    steps.push(write(
        Phase::Registry,
        "every node trusts the registry through this CA",
        reg::CA_CERT_FILE,
        0o644,
        public(ca_fresh, &ca_cert),
    ));
    steps.push(write(
        Phase::Registry,
        "kept on controllers, to issue serving certificates",
        reg::CA_KEY_FILE,
        0o600,
        Contents::Secret(ca_key),
    ));
    steps.push(write(
        Phase::Registry,
        "the registry's TLS certificate, for its name and the controllers' addresses",
        reg::CERT_FILE,
        0o644,
        public(server_fresh, &server_cert),
    ));
    steps.push(write(
        Phase::Registry,
        "the registry's TLS key",
        reg::KEY_FILE,
        0o600,
        Contents::Secret(server_key.clone()),
    ));
    steps.push(write(
        Phase::Registry,
        "what the serving certificate was issued for",
        SERVER_NAMES_FILE,
        0o644,
        Contents::Public(names_text.clone().into_bytes()),
    ));

    let (htpasswd, htpasswd_text) = match inputs.config.registry_credentials() {
        Some((user, password)) => {
            // bcrypt salts every hash: keep the line already there while it still
            // matches, or every run would rewrite it and restart the registry.
            let current = read(reg::HTPASSWD_FILE)?.filter(|line| {
                line.trim_end().split_once(':').is_some_and(|(u, hash)| {
                    u == user && bcrypt::verify(password.expose(), hash).unwrap_or(false)
                })
            });
            let text = match current {
                Some(line) => line,
                None => format!(
                    "{}\n",
                    reg::htpasswd_line(&user, &password, reg::DEFAULT_BCRYPT_COST)?.expose()
                ),
            };
            steps.push(write(
                Phase::Registry,
                "the registry asks for these credentials (registry.username)",
                reg::HTPASSWD_FILE,
                0o600,
                Contents::Secret(crate::secret::Secret::new(text.clone())),
            ));
            let auth = reg::HtpasswdAuth {
                realm: "bootstrap-registry".to_owned(),
                path: PathBuf::from(reg::HTPASSWD_FILE),
            };
            (Some(auth), text)
        }
        None => (None, String::new()),
    };
    let config = reg::RegistryConfig {
        port: inputs.config.registry.port,
        htpasswd,
        ..reg::RegistryConfig::default()
    };
    let config_text = config.render()?;
    steps.push(write(
        Phase::Registry,
        "the registry's configuration",
        reg::CONFIG_FILE,
        0o644,
        Contents::Public(config_text.clone().into_bytes()),
    ));
    let unit_text = reg::RegistryUnit::new(
        PathBuf::from(reg::BINARY),
        PathBuf::from(reg::CONFIG_FILE),
        &config,
    )
    .render()?;
    steps.push(write(
        Phase::Registry,
        "the registry as a system service",
        &format!("/etc/systemd/system/{}", reg::UNIT_NAME),
        0o644,
        Contents::Public(unit_text.clone().into_bytes()),
    ));
    steps.push(daemon_reload(Phase::Registry, &[&unit_text]));

    let images = inputs.image_dir("images")?;
    let tree = inputs.image_dir("registry")?;
    let images = host.stat(&images)?.is_some().then_some(images);
    let tree = host.stat(&tree)?.is_some().then_some(tree);
    if images.is_some() || tree.is_some() {
        steps.push(step(
            Phase::Registry,
            "the cluster image's images, written straight into the registry's storage",
            Action::SeedImages {
                sources: sources_digest(
                    host,
                    [
                        images.clone(),
                        tree.as_ref()
                            .map(|t| t.join("docker/registry/v2/repositories")),
                    ],
                )?,
                images_dir: images,
                skip: registry_image.into_iter().collect(),
                registry_tree: tree,
                storage: PathBuf::from(reg::STORAGE_DIR),
            },
        ));
    }
    steps.push(step(
        Phase::Registry,
        "the registry runs now and at every boot",
        Action::Service {
            unit: reg::UNIT_NAME.to_owned(),
            action: ServiceAction::Enable,
        },
    ));
    steps.push(keyed_restart(
        Phase::Registry,
        reg::UNIT_NAME,
        &[
            config_text.as_bytes(),
            unit_text.as_bytes(),
            server_cert.as_bytes(),
            names_text.as_bytes(),
            htpasswd_text.as_bytes(),
        ],
    ));
    if let Some(ip) = inputs.node_address {
        let address = match ip {
            IpAddr::V6(v6) => format!("[{v6}]:{}", inputs.config.registry.port),
            IpAddr::V4(v4) => format!("{v4}:{}", inputs.config.registry.port),
        };
        steps.push(step(
            Phase::Registry,
            "images are pulled from it next",
            Action::WaitFor {
                fail_when: None,
                probe: Probe::Https {
                    address,
                    server_name: inputs.config.registry.domain.clone(),
                    ca_file: PathBuf::from(reg::CA_CERT_FILE),
                    path: "/v2/".to_owned(),
                },
                timeout: REGISTRY_WAIT,
                interval: std::time::Duration::from_millis(250),
            },
        ));
    }
    Ok(steps)
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
                steps.push(write(
                    Phase::Runtime,
                    "k3s's containerd pulls every image through the local registry",
                    mirrors::K3S_REGISTRIES,
                    0o600,
                    Contents::Public(mirrors::k3s_registries(&registry).into_bytes()),
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
