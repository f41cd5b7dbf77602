//! k3s: one binary, `/etc/rancher/k3s/config.yaml` from typed settings, a token only in a
//! 0600 token file, units as the upstream installer writes them, readiness polled.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::steps;
use super::{Context, Distro, DistroError, DistroKind, JoinMaterial, JoinRole, Joined, Layout};
use crate::host::CommandSpec;
use crate::plan::{Phase, ServiceAction, Step};
use crate::role::Role;
use crate::secret::Secret;

pub const BIN: &str = "/usr/local/bin/k3s";
pub const CONFIG: &str = "/etc/rancher/k3s/config.yaml";
/// The token k3s reads (`token-file`): the cluster secret on the first server, the full
/// `K10…` token on joiners.
pub const TOKEN_FILE: &str = "/etc/rancher/k3s/bootstrap-token";
pub const SERVER_TOKEN: &str = "/var/lib/rancher/k3s/server/token";
pub const KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
pub const AGENT_KUBECONFIG: &str = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig";
pub const DATA_DIR: &str = "/var/lib/rancher/k3s";
pub const MANIFESTS_DIR: &str = "/var/lib/rancher/k3s/server/manifests";
pub const SERVER_UNIT: &str = "k3s.service";
pub const AGENT_UNIT: &str = "k3s-agent.service";
const UNIT_DIR: &str = "/etc/systemd/system";
/// Tools the installer links to the k3s binary.
const LINKS: [&str; 3] = ["kubectl", "crictl", "ctr"];

/// Keys an agent does not take (server flags, `cli/server.md`); a `distro.k3s` setting
/// meant for servers is left out of an agent's config.
const SERVER_ONLY_KEYS: &[&str] = &[
    "cluster-init",
    "cluster-reset",
    "tls-san",
    "advertise-address",
    "advertise-port",
    "cluster-cidr",
    "service-cidr",
    "cluster-dns",
    "cluster-domain",
    "write-kubeconfig",
    "write-kubeconfig-mode",
    "write-kubeconfig-group",
    "disable",
    "flannel-backend",
    "secrets-encryption",
    "embedded-registry",
    "system-default-registry",
    "kube-apiserver-arg",
    "kube-controller-manager-arg",
    "kube-scheduler-arg",
    "etcd-arg",
    "datastore-endpoint",
    "agent-token",
    "agent-token-file",
    "egress-selector-mode",
    "disable-network-policy",
    "disable-cloud-controller",
    "disable-helm-controller",
    "disable-kube-proxy",
    "flannel-ipv6-masq",
    "flannel-external-ip",
];

/// Keys bootstrap sets from the role and the join material; a user value would break
/// the init/join decision or put a secret where it does not belong.
const OWNED_KEYS: &[&str] = &[
    "token",
    "token-file",
    "agent-token",
    "server",
    "cluster-init",
];

pub struct K3s;

fn unit_name(role: Role) -> &'static str {
    if role.is_controller() {
        SERVER_UNIT
    } else {
        AGENT_UNIT
    }
}

/// The unit `install.sh` writes (`create_systemd_service_file`); arguments live in
/// config.yaml, so `ExecStart` names only the subcommand.
pub fn unit_text(server: bool) -> String {
    let (name, command) = if server {
        ("k3s", "server")
    } else {
        ("k3s-agent", "agent")
    };
    format!(
        "# Written by bootstrap (as the k3s installer writes it); `bootstrap reset` removes it.\n\
[Unit]\n\
Description=Lightweight Kubernetes\n\
Wants=network-online.target\n\
After=network-online.target\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n\
\n\
[Service]\n\
Type=notify\n\
EnvironmentFile=-/etc/default/%N\n\
EnvironmentFile=-/etc/sysconfig/%N\n\
EnvironmentFile=-/etc/systemd/system/{name}.service.env\n\
KillMode=process\n\
Delegate=yes\n\
User=root\n\
LimitNOFILE=1048576\n\
LimitNPROC=infinity\n\
LimitCORE=infinity\n\
TasksMax=infinity\n\
TimeoutStartSec=0\n\
Restart=always\n\
RestartSec=5s\n\
ExecStartPre=-/sbin/modprobe br_netfilter\n\
ExecStartPre=-/sbin/modprobe overlay\n\
ExecStart={BIN} {command}\n"
    )
}

/// config.yaml for this node: bootstrap's settings, then `distro.k3s` on top.
pub fn render_config(ctx: &Context<'_>) -> Result<String, DistroError> {
    let server = ctx.role.is_controller();
    let mut config = Map::new();
    config.insert("node-name".into(), json!(ctx.node_name));
    if let Some(ip) = ctx.node_address {
        config.insert("node-ip".into(), json!(ip.to_string()));
    }
    config.insert("token-file".into(), json!(TOKEN_FILE));
    match ctx.role {
        Role::InitController => {
            config.insert("cluster-init".into(), json!(true));
        }
        Role::JoinController | Role::Worker => {
            config.insert(
                "server".into(),
                json!(format!("https://{}", ctx.material()?.endpoint)),
            );
        }
    }
    if server {
        config.insert("write-kubeconfig-mode".into(), json!("0600"));
        config.insert("tls-san".into(), json!(ctx.sans()));
        if let Some(ip) = ctx.node_address {
            config.insert("advertise-address".into(), json!(ip.to_string()));
        }
        let (pod, service) = ctx.cidrs();
        if let Some(pod) = pod {
            config.insert("cluster-cidr".into(), json!(pod));
        }
        if let Some(service) = service {
            config.insert("service-cidr".into(), json!(service));
        }
    }
    let labels = ctx.labels();
    if !labels.is_empty() {
        config.insert("node-label".into(), json!(labels));
    }
    let mut taints = ctx.config.node.taints.clone();
    if server && !ctx.controllers_run_workloads(true) {
        // k3s servers take workloads by default; this keeps them off.
        taints.insert(
            0,
            "node-role.kubernetes.io/control-plane:NoSchedule".to_owned(),
        );
    }
    if !taints.is_empty() {
        config.insert("node-taint".into(), json!(taints));
    }
    for (key, value) in &ctx.config.distro.k3s {
        let bare = key.trim_end_matches('+');
        if OWNED_KEYS.contains(&bare) {
            return Err(DistroError::Config {
                field: format!("distro.k3s.{key}"),
                message: "set by bootstrap from the node's role and join material (tokens only ever go through token-file); remove it".into(),
            });
        }
        if !server && SERVER_ONLY_KEYS.contains(&bare) {
            log::debug!("distro.k3s.{key} is a server setting; left out of this agent's config");
            continue;
        }
        match config.get_mut(key) {
            Some(existing) => super::merge_json(existing, value),
            None => {
                config.insert(key.clone(), value.clone());
            }
        }
    }
    let mut text =
        String::from("# Written by bootstrap from its config (distro.k3s is merged in).\n");
    text.push_str(&serde_yaml::to_string(&Value::Object(config)).map_err(|e| {
        DistroError::Config {
            field: "distro.k3s".into(),
            message: format!("cannot be written as YAML: {e}"),
        }
    })?);
    Ok(text)
}

/// The token this node hands k3s: the first server's own secret (kept across runs), or the
/// joiner's `K10…` token.
fn token(ctx: &Context<'_>) -> Result<Secret, DistroError> {
    if ctx.role == Role::InitController {
        if let Some(existing) = ctx.host.read_string(Path::new(TOKEN_FILE))? {
            if !existing.trim().is_empty() {
                return Ok(Secret::new(existing.trim()));
            }
        }
        return Ok(Secret::new(
            crate::random::hex(16).map_err(DistroError::Random)?,
        ));
    }
    Ok(ctx.material()?.token.clone())
}

const LAYOUT: Layout = Layout {
    kind: DistroKind::K3s,
    admin_kubeconfig: KUBECONFIG,
    node_kubeconfig: AGENT_KUBECONFIG,
    kubectl: (BIN, &["kubectl"]),
    units: (SERVER_UNIT, AGENT_UNIT),
    worker_joined: (
        "the agent has registered with a server (its kubelet kubeconfig exists)",
        Joined::FileExists(AGENT_KUBECONFIG),
    ),
    ca_cert: "/var/lib/rancher/k3s/server/tls/server-ca.crt",
};

impl Distro for K3s {
    fn layout(&self) -> &'static Layout {
        &LAYOUT
    }

    fn install_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        let mut out = vec![steps::install(
            Phase::Install,
            "k3s is one binary",
            ctx.bin("k3s")?,
            BIN,
        )];
        for name in LINKS {
            let path = format!("/usr/local/bin/{name}");
            let ours = ctx.host.read_link(Path::new(&path))?.as_deref() == Some(Path::new("k3s"));
            let taken = !ours
                && (ctx.host.exists(Path::new(&path))?
                    || ctx.host.exists(&Path::new("/usr/bin").join(name))?);
            if taken {
                log::info!("{name} is already installed; not linking it to k3s");
                continue;
            }
            out.push(steps::symlink(
                Phase::Install,
                "the installer links the usual tools to k3s",
                &path,
                "k3s",
            ));
        }
        Ok(out)
    }

    fn cluster_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        let phase = if ctx.role.joins() {
            Phase::Join
        } else {
            Phase::Init
        };
        let unit = unit_name(ctx.role);
        let token = token(ctx)?;
        let config = render_config(ctx)?;
        let unit_text = unit_text(ctx.role.is_controller());
        let unit_path = format!("{UNIT_DIR}/{unit}");
        let mut out = vec![
            steps::write_secret(
                phase,
                "k3s reads its token from a 0600 file, never from argv",
                TOKEN_FILE,
                token.clone(),
            ),
            steps::write(
                phase,
                "k3s settings for this node",
                CONFIG,
                0o600,
                config.clone().into_bytes(),
            ),
            steps::write(
                phase,
                "the unit the k3s installer writes",
                &unit_path,
                0o644,
                unit_text.clone().into_bytes(),
            ),
            crate::systemd::daemon_reload(phase, &[&unit_text]),
            steps::service(
                phase,
                "k3s starts at every boot",
                unit,
                ServiceAction::Enable,
            ),
            steps::service(
                phase,
                "(re)start with these settings; Type=notify would block until ready, so do not wait here",
                unit,
                ServiceAction::RestartNoBlock,
            )
            .keyed(&[
                config.as_bytes(),
                token.expose().as_bytes(),
                unit_text.as_bytes(),
            ]),
            steps::service(
                phase,
                "k3s must be running",
                unit,
                ServiceAction::StartNoBlock,
            ),
        ];
        out.push(self.readiness(ctx, phase));
        Ok(out)
    }

    fn post_install_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        super::auto_deploy_post_install(
            ctx,
            MANIFESTS_DIR,
            "k3s deploys what is in its manifests folder",
            KUBECONFIG,
        )
    }

    fn mint(
        &self,
        ctx: &Context<'_>,
        role: JoinRole,
        ttl: std::time::Duration,
    ) -> Result<JoinMaterial, DistroError> {
        let (token, expires_at) = match role {
            // Only the server token joins servers (bootstrap tokens join agents only).
            JoinRole::Controller => {
                let token = ctx
                    .host
                    .read_string(Path::new(SERVER_TOKEN))?
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| DistroError::Cluster {
                        what: SERVER_TOKEN.into(),
                        reason: "missing: k3s has not initialised this server yet".into(),
                    })?;
                (Secret::new(token.trim()), None)
            }
            JoinRole::Worker => {
                let command = CommandSpec::new(BIN).args([
                    "token",
                    "create",
                    "--ttl",
                    &super::go_duration(ttl),
                    "--description",
                    "bootstrap join",
                ]);
                let output = ctx.host.run_checked(&command)?;
                let token = output.stdout_text().trim().to_owned();
                if !token.starts_with("K10") {
                    return Err(DistroError::Cluster {
                        what: "k3s token create".into(),
                        reason: "printed no K10 token".into(),
                    });
                }
                (Secret::new(token), Some(super::expiry(ttl)))
            }
        };
        super::material(ctx, role, token, expires_at)
    }

    fn leave_steps(&self, _ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        // Deleting a server's Node removes its etcd member too (k3s etcd controller).
        Ok(Vec::new())
    }

    fn teardown_steps(&self) -> Vec<Step> {
        let mut out = Vec::new();
        out.extend(super::teardown_common(
            &[SERVER_UNIT, AGENT_UNIT],
            &format!("{DATA_DIR}/data"),
            &[
                "/run/k3s",
                "/var/lib/kubelet/pods",
                "/var/lib/kubelet/plugins",
                "/run/netns",
                DATA_DIR,
            ],
            &[
                "cni0",
                "flannel.1",
                "flannel-v6.1",
                "kube-ipvs0",
                "flannel-wg",
                "flannel-wg-v6",
            ],
        ));
        for path in [
            "/etc/rancher/k3s",
            "/run/k3s",
            "/run/flannel",
            DATA_DIR,
            "/var/lib/kubelet",
            "/var/lib/cni",
        ] {
            out.push(steps::remove(
                Phase::Reset,
                "k3s state (as k3s-uninstall.sh removes it)",
                path,
            ));
        }
        out
    }

    fn parent_dirs(&self) -> &'static [&'static str] {
        &["/var/lib/rancher", "/etc/rancher"]
    }

    fn upgrade_steps(
        &self,
        ctx: &Context<'_>,
        _leads: bool,
    ) -> Result<super::UpgradeSteps, DistroError> {
        let unit = unit_name(ctx.role);
        let version = ctx.version().to_owned();
        // k3s reads its files only when it starts: the running one is replaced in place
        // and restarted once they are written.
        Ok(super::UpgradeSteps {
            swap: vec![steps::install(
                Phase::Upgrade,
                "the new k3s binary",
                ctx.bin("k3s")?,
                BIN,
            )],
            start: vec![
                steps::service(
                    Phase::Upgrade,
                    "k3s restarts on the new binary",
                    unit,
                    ServiceAction::RestartNoBlock,
                )
                .keyed(&[version.as_bytes()]),
                self.readiness(ctx, Phase::Upgrade),
            ],
        })
    }
}
