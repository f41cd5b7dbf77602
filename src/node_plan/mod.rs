//! The node's plan: every phase's steps — host preparation, the cluster image, the
//! runtime and registry, the distro, the join service — assembled from one
//! [`NodeView`], built once per command by `app`.

mod image_binaries;
mod launch;
mod payloads;
pub mod registry;
pub mod runtime;
mod upgrade;

use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::Config;
use crate::distro::{Context, DistroError, JoinMaterial};
use crate::facts::Facts;
use crate::host::{Host, HostError};
use crate::plan::{Action, Contents, Phase, Plan, Step};
use crate::role::Role;
use crate::rootfs::{unpack, ClusterImage};
use crate::secret::Secret;
pub use payloads::NodePayloads;
use runtime::{Inputs, RuntimeError};
pub use upgrade::upgrade_plan;

/// Why the node's plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NodePlanError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Distro(#[from] DistroError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("cannot make a join secret: {0}")]
    Random(#[source] std::io::Error),
}

/// What the plan is made from: this node as one command sees it.
pub struct NodeView<'a> {
    pub host: &'a dyn Host,
    pub config: &'a Config,
    pub facts: &'a Facts,
    pub image: &'a ClusterImage,
    /// The image was read from `rootfs.archive`, which is not unpacked yet: only what
    /// comes before the unpacking can be planned.
    pub from_archive: bool,
    pub role: Role,
    pub node_name: String,
    pub node_address: Option<IpAddr>,
    /// A joiner's material, already checked against this node.
    pub material: Option<&'a JoinMaterial>,
    /// The join secret an earlier run kept on this node (`join::NODE_SECRET_FILE`).
    pub kept_join_secret: Option<Secret>,
    /// The bootstrap binary the join service runs when the cluster image ships none.
    pub running_binary: String,
    /// For an archive URL, its SHA-256 and where that came from, as the session found.
    pub archive_digest: Option<(String, String)>,
}

impl<'a> NodeView<'a> {
    /// The driver's view of this node.
    pub fn distro_context(&self) -> Context<'a> {
        Context {
            host: self.host,
            config: self.config,
            image: self.image,
            role: self.role,
            node_name: self.node_name.clone(),
            node_address: self.node_address,
            material: self.material,
        }
    }
}

/// The whole plan for this node's role.
pub fn plan(view: &NodeView<'_>) -> Result<Plan, NodePlanError> {
    let requirements = view.image.distro.requirements(view.role.is_controller());
    let ipv6 = [
        view.config.cluster.pod_cidr,
        view.config.cluster.service_cidr,
    ]
    .iter()
    .flatten()
    .any(|n| matches!(n, ipnet::IpNet::V6(_)));
    let mut plan = Plan::default();
    for step in crate::hostprep::steps(view.facts, &requirements, ipv6) {
        plan.push(step);
    }
    if let Some(step) = unpack_step(view) {
        plan.push(step);
    }
    if view.from_archive {
        log::info!("the runtime steps are planned once the cluster image is unpacked; run `up` again after it, or let this `up` go on");
        return Ok(plan);
    }
    let ctx = view.distro_context();
    let inputs = Inputs::new(&ctx);
    for step in registry::registry_steps(&inputs)? {
        plan.push(step);
    }
    for step in runtime::runtime_steps(&inputs)? {
        plan.push(step);
    }
    if ctx.local_api_proxy() {
        for step in api_proxy_steps(view)? {
            plan.push(step);
        }
    }
    let driver = crate::distro::driver(view.image.distro);
    for step in driver.install_steps(&ctx)? {
        plan.push(step);
    }
    if view.role.joins() && view.material.is_none() {
        log::warn!(
            "the join steps are planned once join material is at {}",
            crate::distro::MATERIAL_FILE
        );
        return Ok(plan);
    }
    if let Some(ca) = view.material.and_then(|m| m.registry_ca.as_ref()) {
        if !inputs.runs_registry() && view.config.registry.enabled {
            plan.push(Step::new(
                Phase::Join,
                "pulls through the local registry trust its CA",
                Action::WriteFile {
                    path: PathBuf::from(crate::containerd::mirrors::CA_PATH),
                    mode: 0o644,
                    owner: None,
                    contents: Contents::Public(ca.clone().into_bytes()),
                },
            ));
        }
    }
    for step in driver.cluster_steps(&ctx)? {
        plan.push(step);
    }
    for step in driver.post_install_steps(&ctx)? {
        plan.push(step);
    }
    if view.role.is_controller() {
        for step in join_secret_steps(view)? {
            plan.push(step);
        }
        for step in join_service_steps(view)? {
            plan.push(step);
        }
    }
    // Last: the join service is up for other nodes even if an image's command fails.
    for step in launch::steps(view)? {
        plan.push(step);
    }
    Ok(plan)
}

/// What `up --stage install` puts in place: the steps of every node that neither
/// depend on the role nor start anything — configuration files of the host, the
/// cluster image, binaries, links and unit files. `view.role` should be
/// [`Role::InitController`] (everything a node could need) and `view.material` none.
pub fn install_plan(view: &NodeView<'_>) -> Result<Plan, NodePlanError> {
    let bakeable = |step: &Step| match &step.action {
        Action::InstallBinary { .. } | Action::Symlink { .. } => true,
        Action::WriteFile { path, .. } => {
            step.phase == Phase::HostPrep || path.starts_with("/etc/systemd/system")
        }
        _ => false,
    };
    let requirements = view.image.distro.requirements(true);
    let mut plan = Plan::default();
    for step in crate::hostprep::steps(view.facts, &requirements, false) {
        if bakeable(&step) {
            plan.push(step);
        }
    }
    if let Some(step) = unpack_step(view) {
        plan.push(step);
    }
    if view.from_archive {
        return Ok(plan);
    }
    let ctx = view.distro_context();
    let inputs = Inputs::new(&ctx);
    let mut candidates = Vec::new();
    if view.config.registry.enabled {
        candidates.extend(registry::registry_steps(&inputs)?);
    }
    candidates.extend(runtime::runtime_steps(&inputs)?);
    candidates.extend(crate::distro::driver(view.image.distro).install_steps(&ctx)?);
    for step in candidates {
        if bakeable(&step) {
            plan.push(step);
        }
    }
    Ok(plan)
}

/// Unpacking `rootfs.archive` into `rootfs.dir`, when an archive is configured.
fn unpack_step(view: &NodeView<'_>) -> Option<Step> {
    let archive = view.config.rootfs.archive.as_ref()?;
    let url = crate::plan::is_url(archive);
    let digest = if url {
        // Resolved (given, or URL.sha256) when the session opened the image.
        view.archive_digest.clone()
    } else {
        view.host
            .real_path(archive)
            .ok()
            .and_then(|real| {
                unpack::expected_digest(&real, view.config.rootfs.sha256.as_deref()).ok()
            })
            .flatten()
    };
    let (sha256, source) = match digest {
        Some((hex, source)) if view.config.rootfs.sha256.is_some() => {
            (Some(hex), Some(format!("rootfs.sha256 ({source})")))
        }
        Some((hex, source)) => (Some(hex), Some(source)),
        None => (None, None),
    };
    let root = view.host.root().display().to_string();
    Some(Step::new(
        Phase::ClusterImage,
        "the cluster image is shipped as an archive (rootfs.archive)",
        Action::UnpackRootfs {
            archive: archive.clone(),
            dest: view.config.rootfs.dir.clone(),
            sha256,
            sha256_source: source.map(|s| s.replacen(&root, "", 1)),
            arch: view.facts.arch.clone(),
            bundle: false,
            ca_file: view.config.rootfs.ca_file.clone().filter(|_| url),
            insecure_http: url && view.config.rootfs.insecure_http,
        },
    ))
}

/// On a controller without a configured join secret, the join service's secret: the
/// cluster's from controller join material, else the one kept from an earlier run, else
/// (a first controller) a new one. It lets this controller hand out join lines without
/// any configuration (bare metal).
fn join_secret_steps(view: &NodeView<'_>) -> Result<Vec<Step>, NodePlanError> {
    if view.config.join_secret().is_some() {
        return Ok(Vec::new());
    }
    let received = view.material.and_then(|m| m.join.secret.clone());
    let secret = match (received, view.kept_join_secret.clone()) {
        (Some(secret), _) => secret,
        (None, Some(kept)) => kept,
        // The same generator as `bootstrap secret generate`: 256 random bits, with a
        // checksum, passing the rule every join secret must pass.
        (None, None) => crate::secret_format::generate().map_err(NodePlanError::Random)?,
    };
    let mut text = secret.expose().to_owned();
    text.push('\n');
    Ok(vec![Step::new(
        Phase::PostInstall,
        "the join service's identity: no join secret is configured, so this controller keeps its own (token create hands out join lines for it)",
        Action::WriteFile {
            path: PathBuf::from(crate::join::NODE_SECRET_FILE),
            mode: 0o600,
            owner: None,
            contents: Contents::Secret(Secret::new(text)),
        },
    )])
}

/// The cluster image's bootstrap, when it ships one.
fn image_bootstrap(view: &NodeView<'_>) -> Result<Option<PathBuf>, NodePlanError> {
    let bin_dir = view.image.host_subdir(view.host, "bin")?;
    let shipped = bin_dir.join("bootstrap");
    Ok(view
        .host
        .stat(&shipped)?
        .is_some_and(|m| m.kind == crate::host::FileKind::File)
        .then_some(shipped))
}

/// `bootstrap-join.service`, running the image's bootstrap if it ships one, else the
/// binary running now.
fn join_service_steps(view: &NodeView<'_>) -> Result<Vec<Step>, NodePlanError> {
    crate::join::service_steps(image_bootstrap(view)?, &view.running_binary)
        .map_err(|e| RuntimeError::from(e).into())
}

/// The unit of the node-local API load balancer (`bootstrap apiserver-proxy`).
pub const API_PROXY_UNIT: &str = "bootstrap-apiserver-proxy.service";

/// `bootstrap-apiserver-proxy.service`, running `binary apiserver-proxy`.
pub fn api_proxy_unit(binary: &str) -> Result<String, crate::systemd::UnitError> {
    crate::systemd::daemon_unit(
        "bootstrap node-local Kubernetes API load balancer",
        format!("{binary} apiserver-proxy"),
        "2",
        &[("Before", "kubelet.service")],
        &[
            ("NoNewPrivileges", "yes"),
            ("PrivateTmp", "yes"),
            ("ProtectHome", "yes"),
        ],
    )
    .render()
}

/// `bootstrap-apiserver-proxy.service` on every node of a kubeadm cluster whose nodes
/// reach the API through it, started before kubeadm needs the endpoint.
fn api_proxy_steps(view: &NodeView<'_>) -> Result<Vec<Step>, NodePlanError> {
    use crate::plan::ServiceAction;
    const INSTALLED: &str = "/usr/local/bin/bootstrap";
    let mut steps = Vec::new();
    let binary = match image_bootstrap(view)? {
        Some(source) => {
            steps.push(Step::new(
                Phase::Runtime,
                "the API load balancer runs the cluster image's bootstrap",
                Action::InstallBinary {
                    source,
                    dest: PathBuf::from(INSTALLED),
                    mode: 0o755,
                },
            ));
            INSTALLED.to_owned()
        }
        None => view.running_binary.clone(),
    };
    let unit = api_proxy_unit(&binary).map_err(RuntimeError::from)?;
    steps.push(Step::write_file(
        Phase::Runtime,
        "kubeadm nodes reach the API through a load balancer over every controller (no cluster.endpoint)",
        format!("/etc/systemd/system/{API_PROXY_UNIT}"),
        0o644,
        Contents::Public(unit.clone().into_bytes()),
    ));
    steps.push(crate::systemd::daemon_reload(Phase::Runtime, &[&unit]));
    for action in [ServiceAction::Enable, ServiceAction::Start] {
        steps.push(Step::new(
            Phase::Runtime,
            "the API load balancer runs now and at every boot",
            Action::Service {
                unit: API_PROXY_UNIT.to_owned(),
                action,
            },
        ));
    }
    steps.push(
        Step::new(
            Phase::Runtime,
            "a changed unit takes effect",
            Action::Service {
                unit: API_PROXY_UNIT.to_owned(),
                action: ServiceAction::RestartNoBlock,
            },
        )
        .keyed(&[unit.as_bytes()]),
    );
    Ok(steps)
}
