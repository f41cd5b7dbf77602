//! The three Kubernetes distributions: what each asks of a host, and one [`Distro`]
//! driver per distribution that turns config, facts, the cluster image and join material
//! into plan steps for every phase (install, init or join, post-install, upgrade, leave,
//! reset).

pub mod k0s;
pub mod k3s;
pub mod kubeadm;
mod kubeadm_config;
mod kubeadm_image;
pub mod lease;
pub mod material;
pub mod node_ops;
pub mod skew;
mod steps;
pub mod upgrade_lease;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;
pub use crate::distro_kind::{kube_version, DistroKind, Requirements};
use crate::host::{CommandSpec, FileKind, Host, HostError};
use crate::plan::{Phase, Step};
use crate::role::Role;
use crate::rootfs::ClusterImage;
pub use material::{JoinAccess, JoinMaterial, JoinRole, MATERIAL_FILE};
pub use node_ops::{NodeOps, Presence};

/// Why a distro's steps could not be planned, or its join material not minted.
#[derive(Debug, thiserror::Error)]
pub enum DistroError {
    #[error("cluster image {image}: {what} is missing ({why})")]
    MissingInImage {
        image: String,
        what: String,
        why: String,
    },
    #[error("{field}: {message}")]
    Config { field: String, message: String },
    #[error("no join material at {path}: this node joins an existing cluster. Create it on a running controller with `bootstrap token create {role} --material > material.json` and put it at {path} (mode 0600)")]
    NoMaterial { path: &'static str, role: JoinRole },
    #[error("join material {path}: {reason}")]
    Mismatch { path: &'static str, reason: String },
    #[error(transparent)]
    Material(#[from] material::MaterialError),
    #[error("{what}: {reason}")]
    Cluster { what: String, reason: String },
    #[error("cannot choose a secret: {0}")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Host(#[from] HostError),
    /// The cluster image's own distro configuration (sealer's `etc/kubeadm.yml`).
    #[error("{path}: {reason}")]
    ImageConfig { path: String, reason: String },
}

/// Everything a driver plans from.
pub struct Context<'a> {
    pub host: &'a dyn Host,
    pub config: &'a Config,
    pub image: &'a ClusterImage,
    pub role: Role,
    pub node_name: String,
    pub node_address: Option<IpAddr>,
    /// A joiner's material (absent on the first controller, or not fetched yet).
    pub material: Option<&'a JoinMaterial>,
}

/// The API server port all three distros use.
pub const API_PORT: u16 = 6443;

/// How long a distro may take to come up after it was started.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Where operators look for a kubeconfig on a controller.
pub const OPERATOR_KUBECONFIG: &str = "/root/.kube/config";

/// `host:port`, with an IPv6 address in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
pub fn endpoint_host(endpoint: &str) -> String {
    let host = match endpoint.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => endpoint,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

impl Context<'_> {
    /// The API endpoint (`host:port`): `cluster.endpoint`; else what join material says;
    /// else, on a kubeadm cluster of several controllers, the node-local load balancer
    /// ([`Context::local_api_proxy`]); else the first controller, else this node.
    pub fn endpoint(&self) -> String {
        if let Some(endpoint) = &self.config.cluster.endpoint {
            return endpoint.clone();
        }
        if let Some(material) = self.material {
            return material.endpoint.clone();
        }
        if self.local_api_proxy() {
            return crate::api_proxy::LISTEN.to_owned();
        }
        if let Some(first) = self.config.cluster.controllers.first() {
            return host_port(first, API_PORT);
        }
        match self.node_address {
            Some(ip) => host_port(&ip.to_string(), API_PORT),
            None => host_port("127.0.0.1", API_PORT),
        }
    }

    /// Whether the nodes reach the API through `bootstrap apiserver-proxy` on loopback:
    /// kubeadm, several controllers and no `cluster.endpoint`. (k3s agents balance over
    /// the servers themselves, and k0s gets node-local load balancing.)
    pub fn local_api_proxy(&self) -> bool {
        self.image.distro == DistroKind::Kubeadm && self.several_controllers()
    }

    /// Several controllers listed and no `cluster.endpoint`: no single controller may be
    /// the API endpoint.
    pub fn several_controllers(&self) -> bool {
        self.config.cluster.endpoint.is_none() && self.config.cluster.controllers.len() > 1
    }

    /// The endpoint minted join material names: `cluster.endpoint`, the load balancer
    /// every node runs, or else this (live) controller — not the first controller, which
    /// may be gone.
    pub fn mint_endpoint(&self) -> String {
        if let Some(endpoint) = &self.config.cluster.endpoint {
            return endpoint.clone();
        }
        if self.local_api_proxy() {
            return crate::api_proxy::LISTEN.to_owned();
        }
        match self.node_address {
            Some(ip) => host_port(&ip.to_string(), API_PORT),
            None => self.endpoint(),
        }
    }

    /// Names and addresses the API server certificate must carry.
    pub fn sans(&self) -> Vec<String> {
        let mut out = vec![endpoint_host(&self.endpoint())];
        if let Some(ip) = self.node_address {
            out.push(ip.to_string());
        }
        out.extend(self.config.cluster.controllers.iter().cloned());
        out.push(self.node_name.clone());
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|s| !s.is_empty() && seen.insert(s.clone()));
        out
    }

    /// The distro version of the cluster image (`v1.31.4+k3s1`).
    pub fn version(&self) -> &str {
        &self.image.metadata.version
    }

    /// The plain Kubernetes version (`v1.31.4`).
    pub fn kube_version(&self) -> String {
        let text = self
            .image
            .metadata
            .kube_version
            .as_deref()
            .unwrap_or(&self.image.metadata.version);
        match kube_version(text) {
            Some((a, b, c)) => format!("v{a}.{b}.{c}"),
            None => text.to_owned(),
        }
    }

    /// A binary of the cluster image, which must be there.
    pub fn bin(&self, name: &str) -> Result<PathBuf, DistroError> {
        let dir = self.image.host_subdir(self.host, "bin")?;
        let path = dir.join(name);
        if self
            .host
            .stat(&path)?
            .is_some_and(|m| m.kind == FileKind::File)
        {
            Ok(path)
        } else {
            Err(DistroError::MissingInImage {
                image: self.image.dir.display().to_string(),
                what: format!("bin/{name}"),
                why: format!("{} needs it", self.image.distro),
            })
        }
    }

    /// The manifests the cluster image asks to apply (`manifests/*.yaml|yml|json`).
    pub fn manifests(&self) -> Result<Vec<(String, PathBuf)>, DistroError> {
        let dir = self.image.host_subdir(self.host, "manifests")?;
        let mut out = Vec::new();
        for name in self.host.list_dir(&dir)?.unwrap_or_default() {
            let path = dir.join(&name);
            let is_manifest = [".yaml", ".yml", ".json"].iter().any(|s| name.ends_with(s));
            if is_manifest
                && self
                    .host
                    .stat(&path)?
                    .is_some_and(|m| m.kind == FileKind::File)
            {
                out.push((name, path));
            }
        }
        Ok(out)
    }

    /// Whether controllers run workloads: `cluster.controller_workloads`, else
    /// `default` for a cluster of several nodes (a lone controller always does, or
    /// nothing could run).
    pub fn controllers_run_workloads(&self, default: bool) -> bool {
        self.config
            .cluster
            .controller_workloads
            .unwrap_or(default || self.single_node())
    }

    /// Whether this is a one-node cluster (no controllers listed).
    pub fn single_node(&self) -> bool {
        !self.config.is_multi_node()
    }

    /// The join material, required on a joining node.
    pub fn material(&self) -> Result<&JoinMaterial, DistroError> {
        self.material.ok_or(DistroError::NoMaterial {
            path: MATERIAL_FILE,
            role: if self.role.is_controller() {
                JoinRole::Controller
            } else {
                JoinRole::Worker
            },
        })
    }

    /// `node.labels` as `key=value` strings.
    pub fn labels(&self) -> Vec<String> {
        self.config
            .node
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// Pod and service CIDRs as configured.
    pub fn cidrs(&self) -> (Option<String>, Option<String>) {
        (
            self.config.cluster.pod_cidr.map(|n| n.to_string()),
            self.config.cluster.service_cidr.map(|n| n.to_string()),
        )
    }
}

/// The fixed facts of a distro on a node, as data.
pub struct Layout {
    pub kind: DistroKind,
    /// The admin kubeconfig on a controller.
    pub admin_kubeconfig: &'static str,
    /// The kubeconfig the kubelet uses.
    pub node_kubeconfig: &'static str,
    /// The kubectl program and the arguments before `--kubeconfig`.
    pub kubectl: (&'static str, &'static [&'static str]),
    /// The systemd units on a controller and on a worker.
    pub units: (&'static str, &'static str),
    /// What shows that a worker has joined, and why it does.
    pub worker_joined: (&'static str, Joined),
    /// The cluster CA certificate on a controller.
    pub ca_cert: &'static str,
}

/// A sign that a worker has joined.
#[derive(Debug, Clone, Copy)]
pub enum Joined {
    /// Its kubelet kubeconfig exists.
    FileExists(&'static str),
    /// Its unit is active.
    Active(&'static str),
}

/// One distribution's driver.
pub trait Distro {
    fn kind(&self) -> DistroKind {
        self.layout().kind
    }

    /// Binaries and units, the same on every node (what baking an image installs).
    fn install_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError>;

    /// Init on the first controller, join everywhere else; ends when the node is ready.
    fn cluster_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError>;

    /// After init: manifests, the operator's kubeconfig.
    fn post_install_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError>;

    /// Join material for another node, minted on this (running) controller.
    fn mint(
        &self,
        ctx: &Context<'_>,
        role: JoinRole,
        ttl: std::time::Duration,
    ) -> Result<JoinMaterial, DistroError>;

    /// Where the distro keeps its kubeconfigs, what runs it and how a joined worker
    /// shows.
    fn layout(&self) -> &'static Layout;

    /// The admin kubeconfig on a controller.
    fn admin_kubeconfig(&self) -> &'static str {
        self.layout().admin_kubeconfig
    }

    /// The kubeconfig this node's kubelet uses.
    fn node_kubeconfig(&self, _role: Role) -> &'static str {
        self.layout().node_kubeconfig
    }

    /// `kubectl --kubeconfig KUBECONFIG`, the distro's way.
    fn kubectl(&self, kubeconfig: &str) -> CommandSpec {
        let (program, args) = self.layout().kubectl;
        CommandSpec::new(program)
            .args(args.iter().copied())
            .args(["--kubeconfig", kubeconfig])
    }

    /// The systemd unit that runs the distro on a node of `role`.
    fn unit(&self, role: Role) -> &'static str {
        let (controller, worker) = self.layout().units;
        if role.is_controller() {
            controller
        } else {
            worker
        }
    }

    /// Waits until the node is up: the API answers `/readyz` on a controller, the worker
    /// has joined elsewhere; a failed unit ends the wait early.
    fn readiness(&self, ctx: &Context<'_>, phase: Phase) -> Step {
        let unit = self.unit(ctx.role);
        if ctx.role.is_controller() {
            steps::until_readyz(phase, self.kubectl(self.admin_kubeconfig()), unit)
        } else {
            let (reason, joined) = self.layout().worker_joined;
            let probe = match joined {
                Joined::FileExists(path) => steps::file_exists(path),
                Joined::Active(unit) => steps::active(unit),
            };
            steps::until_ready(phase, reason, probe, unit)
        }
    }

    /// The names of the cluster's controllers (to refuse removing the last one).
    fn controllers(&self, host: &dyn Host, kubeconfig: &str) -> Result<Vec<String>, DistroError> {
        let command = self.kubectl(kubeconfig).args([
            "get",
            "nodes",
            "-l",
            "node-role.kubernetes.io/control-plane",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        let output = host.run_checked(&command)?;
        Ok(output
            .stdout_text()
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// Removes a controller whose machine is gone from the cluster, through this live
    /// controller (`this_node`): its Node (`name`, when it has one) and its etcd member
    /// (by `address`). What was removed, for the logs.
    fn forget_controller(
        &self,
        host: &dyn Host,
        this_node: &str,
        name: Option<&str>,
        address: IpAddr,
    ) -> Result<Vec<String>, DistroError> {
        let _ = (this_node, address);
        // k3s: deleting the Node is what removes the member (its etcd controller does).
        Ok(delete_node(self, host, name)?
            .map(|node| format!("{node} and its etcd member"))
            .into_iter()
            .collect())
    }

    /// Once a controller has joined and given the admission lease back: removes what was
    /// shared with the cluster only for that join.
    fn after_controller_joined(&self, host: &dyn Host) -> Result<(), DistroError> {
        let _ = host;
        Ok(())
    }

    /// What leaving takes beyond drain and delete (an etcd member the distro does not
    /// remove by itself).
    fn leave_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError>;

    /// The distro's own teardown: services stopped, shims killed, mounts and state gone.
    fn teardown_steps(&self) -> Vec<Step>;

    /// Folders the distro's own folders live in, removed by reset once empty.
    fn parent_dirs(&self) -> &'static [&'static str] {
        &[]
    }

    /// Moving this node to the cluster image in `ctx` (the new one), in two parts: what
    /// stops the old binaries and puts the new ones in place, and what starts them. The
    /// node's version-dependent files are written between the two, so a new binary never
    /// starts with a file written for the old one.
    /// `leads`: this node is the first controller of the cluster to move to this version
    /// (kubeadm upgrades the control plane from it).
    fn upgrade_steps(&self, ctx: &Context<'_>, leads: bool) -> Result<UpgradeSteps, DistroError>;
}

/// A distro's upgrade, split where the node's files are written for the new version.
#[derive(Debug, Default)]
pub struct UpgradeSteps {
    /// Stop what runs (where it must stop) and swap its binaries.
    pub swap: Vec<Step>,
    /// Start on the new binaries and wait until ready.
    pub start: Vec<Step>,
}

/// Deletes Node `name` (if any) with the admin kubeconfig; what was removed.
pub(crate) fn delete_node<D: Distro + ?Sized>(
    driver: &D,
    host: &dyn Host,
    name: Option<&str>,
) -> Result<Option<String>, DistroError> {
    let Some(name) = name else {
        return Ok(None);
    };
    let command = driver.kubectl(driver.admin_kubeconfig()).args([
        "delete",
        "node",
        name,
        "--ignore-not-found",
    ]);
    host.run_checked(&command)?;
    Ok(Some(format!("node {name}")))
}

/// The driver for a distribution.
pub fn driver(kind: DistroKind) -> &'static dyn Distro {
    match kind {
        DistroKind::K3s => &k3s::K3s,
        DistroKind::K0s => &k0s::K0s,
        DistroKind::Kubeadm => &kubeadm::Kubeadm,
    }
}

/// A path inside `dir` for a manifest of the image, prefixed so reset can tell ours.
pub(crate) fn manifest_dest(dir: &str, name: &str) -> PathBuf {
    Path::new(dir).join(format!("bootstrap-{name}"))
}

/// `a` deep-merged with `b` (maps merge key by key, anything else in `b` wins).
pub fn merge_json(a: &mut serde_json::Value, b: &serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (key, value) in b {
                match a.get_mut(key) {
                    Some(existing) => merge_json(existing, value),
                    None => {
                        a.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// Go's duration text for a TTL (`1h0m0s`), which every distro CLI parses.
pub fn go_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    format!("{}h{}m{}s", secs / 3600, (secs % 3600) / 60, secs % 60)
}

/// `/root/.kube/config` pointing at the distro's admin kubeconfig, unless the operator
/// already has one there.
pub(crate) fn operator_kubeconfig(
    ctx: &Context<'_>,
    admin: &str,
) -> Result<Vec<Step>, DistroError> {
    let target = steps::relative_target(OPERATOR_KUBECONFIG, admin);
    let path = Path::new(OPERATOR_KUBECONFIG);
    let ours = ctx.host.read_link(path)?.as_deref() == Some(Path::new(&target));
    if !ours && ctx.host.exists(path)? {
        log::info!("{OPERATOR_KUBECONFIG} exists; not replacing it with a link to {admin}");
        return Ok(Vec::new());
    }
    Ok(vec![steps::symlink(
        crate::plan::Phase::PostInstall,
        "kubectl on this controller finds the admin kubeconfig where operators expect it",
        OPERATOR_KUBECONFIG,
        &target,
    )])
}

/// Post-install for distros that deploy manifests from a folder: the image's manifests
/// copied there on the first controller, the operator's kubeconfig on every controller.
pub(crate) fn auto_deploy_post_install(
    ctx: &Context<'_>,
    dir: &str,
    reason: &str,
    admin: &str,
) -> Result<Vec<Step>, DistroError> {
    let mut out = Vec::new();
    if !ctx.role.is_controller() {
        return Ok(out);
    }
    if ctx.role == Role::InitController {
        for (name, source) in ctx.manifests()? {
            out.push(Step::new(
                crate::plan::Phase::PostInstall,
                reason,
                crate::plan::Action::CopyFile {
                    source,
                    dest: manifest_dest(dir, &name),
                    mode: 0o600,
                    decompress: false,
                },
            ));
        }
    }
    out.extend(operator_kubeconfig(ctx, admin)?);
    Ok(out)
}

/// Now plus `ttl`, as RFC 3339.
pub(crate) fn expiry(ttl: std::time::Duration) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now() + ttl).to_string()
}

/// Join material around a minted token: endpoint, versions and cluster facts from this
/// controller, and the registry CA when this node has one.
pub(crate) fn material(
    ctx: &Context<'_>,
    role: JoinRole,
    token: crate::secret::Secret,
    expires_at: Option<String>,
) -> Result<JoinMaterial, DistroError> {
    let (pod_cidr, service_cidr) = ctx.cidrs();
    let registry_ca = ctx
        .host
        .read_string(Path::new(crate::containerd::mirrors::CA_PATH))?;
    Ok(JoinMaterial {
        distro: ctx.image.distro,
        version: ctx.version().to_owned(),
        role,
        endpoint: ctx.mint_endpoint(),
        token,
        ca_cert_hash: None,
        certificate_key: None,
        expires_at,
        pod_cidr,
        service_cidr,
        registry_ca,
        registry_auth: ctx.config.registry_credentials(),
        cluster: ctx.config.cluster.name.clone(),
        join: JoinAccess::default(),
    })
}

/// Teardown every distro shares: containerd shims killed, mounts under the data folders
/// unmounted, CNI interfaces deleted (on a live node only: they are not under a root).
pub(crate) fn teardown_common(
    units: &[&str],
    shim_dir: &str,
    mount_dirs: &[&str],
    interfaces: &[&str],
) -> Vec<Step> {
    use crate::plan::{Action, Phase};
    let mut out: Vec<Step> = units
        .iter()
        .map(|unit| {
            steps::service(
                Phase::Reset,
                "the distro stops first",
                unit,
                crate::plan::ServiceAction::Stop,
            )
        })
        .collect();
    out.extend([
        Step::new(
            Phase::Reset,
            "containerd shims outlive the service (KillMode=process)",
            Action::KillProcesses {
                under: PathBuf::from(shim_dir),
            },
        ),
        Step::new(
            Phase::Reset,
            "pod volumes and network namespaces are mounted under the data folders",
            Action::Unmount {
                under: mount_dirs.iter().map(PathBuf::from).collect(),
            },
        ),
    ]);
    for name in interfaces {
        out.push(steps::run(
            Phase::Reset,
            "the pod network's interfaces would linger until reboot",
            CommandSpec::new("ip").args(["link", "delete", name]),
            Some(steps::absent(&format!("/sys/class/net/{name}"))),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_material_never_carries_the_push_credentials() {
        use crate::host::Host;
        let host = crate::host::FakeHost::new().with_file(
            "/etc/bootstrap/config.yaml",
            "registry:\n  username: puller\n  password_file: /etc/bootstrap/pull-pw\n  push: {username: pusher, password_file: /etc/bootstrap/push-pw}\n",
        );
        for (path, text) in [
            ("/etc/bootstrap/pull-pw", "pull-password-1"),
            ("/etc/bootstrap/push-pw", "push-password-1"),
        ] {
            host.write_atomic(Path::new(path), text.as_bytes(), 0o600, None)
                .unwrap();
        }
        let config = crate::config::load(&host, &crate::config::Sources::default()).unwrap();
        let image = ClusterImage {
            dir: "/img".into(),
            metadata: crate::rootfs::Metadata {
                version: "v1.31.4+k3s1".into(),
                ..Default::default()
            },
            metadata_path: "Metadata".into(),
            distro: DistroKind::K3s,
            arches: vec![],
            arch_dir: None,
            kubefile_path: None,
            kubefile: None,
            container_runtime: None,
            containerd: None,
            registry: None,
            kubeadm_config: None,
        };
        let ctx = Context {
            host: &host,
            config: &config,
            image: &image,
            role: Role::InitController,
            node_name: "cp-1".into(),
            node_address: Some("10.0.0.10".parse().unwrap()),
            material: None,
        };
        for role in [JoinRole::Worker, JoinRole::Controller] {
            let minted = material(
                &ctx,
                role,
                crate::secret::Secret::new("K10x::server:y"),
                None,
            )
            .unwrap();
            let (user, password) = minted.registry_auth.clone().expect("pull credentials");
            assert_eq!(
                (user.as_str(), password.expose()),
                ("puller", "pull-password-1")
            );
            let text = minted.to_file_text();
            assert!(
                !text.contains("push-password-1") && !text.contains("pusher"),
                "{role} material carries the push credentials: {text}"
            );
        }
    }

    #[test]
    fn versions() {
        assert_eq!(kube_version("v1.31.4+k3s1"), Some((1, 31, 4)));
        assert_eq!(kube_version("v1.36.3+k0s.0"), Some((1, 36, 3)));
        assert_eq!(kube_version("1.30"), Some((1, 30, 0)));
        assert_eq!(kube_version("latest"), None);
    }
}
