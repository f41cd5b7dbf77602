//! k0s: the binary, `/etc/k0s/k0s.yaml` (a ClusterConfig with telemetry off and image
//! pulls disabled), `k0s install` with a 0600 token file, `k0s start`, readiness from
//! `k0s status`.

use serde_json::{json, Value};

use super::steps;
use super::{Context, Distro, DistroError, DistroKind, JoinMaterial, JoinRole, Joined, Layout};
use crate::host::CommandSpec;
use crate::plan::{Phase, Probe, Step};
use crate::role::Role;
use crate::secret::Secret;

pub const BIN: &str = "/usr/local/bin/k0s";
pub const CONFIG: &str = "/etc/k0s/k0s.yaml";
pub const TOKEN_FILE: &str = "/etc/k0s/join-token";
pub const DATA_DIR: &str = "/var/lib/k0s";
pub const ADMIN_KUBECONFIG: &str = "/var/lib/k0s/pki/admin.conf";
pub const NODE_KUBECONFIG: &str = "/var/lib/k0s/kubelet.conf";
pub const MANIFESTS_DIR: &str = "/var/lib/k0s/manifests/bootstrap";
pub const CONTROLLER_UNIT: &str = "k0scontroller.service";
pub const WORKER_UNIT: &str = "k0sworker.service";
/// `k0s install` takes a while on slow disks (it unpacks nothing, but checks the host).
const INSTALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

pub struct K0s;

fn unit_name(role: Role) -> &'static str {
    if role.is_controller() {
        CONTROLLER_UNIT
    } else {
        WORKER_UNIT
    }
}

/// Whether a controller also runs a kubelet (`--enable-worker`): on a one-node cluster,
/// or when `cluster.controller_workloads` says so.
fn controller_runs_workloads(ctx: &Context<'_>) -> bool {
    ctx.controllers_run_workloads(false)
}

/// Where k0s's node-local load balancer listens for the API on a worker.
pub const NLLB_API_PORT: u16 = 7444;

/// The ClusterConfig for controllers: API address and SANs set explicitly (tokens embed
/// them), CIDRs, no image pulls, no telemetry; `distro.k0s` merged on top. Written as JSON,
/// which is YAML and leaves no doubt about types.
pub fn render_config(ctx: &Context<'_>) -> Result<String, DistroError> {
    let mut api = serde_json::Map::new();
    if let Some(ip) = ctx.node_address {
        api.insert("address".into(), json!(ip.to_string()));
    }
    if ctx.config.cluster.endpoint.is_some() {
        api.insert(
            "externalAddress".into(),
            json!(super::endpoint_host(&ctx.endpoint())),
        );
    }
    api.insert("port".into(), json!(super::API_PORT));
    api.insert("sans".into(), json!(ctx.sans()));
    let mut network = serde_json::Map::new();
    network.insert("provider".into(), json!("kuberouter"));
    if ctx.several_controllers() {
        // Workers reach the API through an envoy on each node over every controller,
        // not through one controller's address (which tokens would otherwise embed).
        // 7443 is the join service's port, so the envoy takes 7444.
        network.insert(
            "nodeLocalLoadBalancing".into(),
            json!({"enabled": true, "type": "EnvoyProxy",
                   "envoyProxy": {"apiServerBindPort": NLLB_API_PORT}}),
        );
    }
    let (pod, service) = ctx.cidrs();
    if let Some(pod) = pod {
        network.insert("podCIDR".into(), json!(pod));
    }
    if let Some(service) = service {
        network.insert("serviceCIDR".into(), json!(service));
    }
    let mut storage = json!({"type": "etcd"});
    if let Some(ip) = ctx.node_address {
        storage["etcd"] = json!({"peerAddress": ip.to_string()});
    }
    let mut doc = json!({
        "apiVersion": "k0s.k0sproject.io/v1beta1",
        "kind": "ClusterConfig",
        "metadata": {"name": "k0s"},
        "spec": {
            "api": Value::Object(api),
            "storage": storage,
            "network": Value::Object(network),
            "images": {"default_pull_policy": "Never"},
            "telemetry": {"enabled": false},
        },
    });
    let user = Value::Object(ctx.config.distro.k0s.clone().into_iter().collect());
    if let Some(kind) = user.get("kind").and_then(Value::as_str) {
        if kind != "ClusterConfig" {
            return Err(DistroError::Config {
                field: "distro.k0s.kind".into(),
                message: format!("{kind:?}: only a ClusterConfig can be merged"),
            });
        }
    }
    super::merge_json(&mut doc, &user);
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| DistroError::Config {
        field: "distro.k0s".into(),
        message: e.to_string(),
    })?;
    text.push('\n');
    Ok(text)
}

/// `k0s install controller|worker …`; every flag ends up in the unit's ExecStart.
pub fn install_command(ctx: &Context<'_>) -> CommandSpec {
    let mut command = CommandSpec::new(BIN).timeout(INSTALL_TIMEOUT);
    let runs_kubelet = !ctx.role.is_controller() || controller_runs_workloads(ctx);
    if ctx.role.is_controller() {
        command = command.args(["install", "controller", "-c", CONFIG]);
        if controller_runs_workloads(ctx) {
            // Not --single: that would refuse joins for good.
            command = command.args(["--enable-worker", "--no-taints"]);
        }
    } else {
        command = command.args(["install", "worker"]);
    }
    command = command.args(["--data-dir", DATA_DIR]);
    if ctx.role.is_controller() {
        // The update prober (a controller component) would call home.
        command = command.args(["--disable-components", "update-prober"]);
    }
    if ctx.role.joins() {
        command = command.args(["--token-file", TOKEN_FILE]);
    }
    if runs_kubelet {
        let labels = ctx.labels();
        if !labels.is_empty() {
            command = command.args(["--labels".to_owned(), labels.join(",")]);
        }
        if !ctx.config.node.taints.is_empty() {
            command = command.args(["--taints".to_owned(), ctx.config.node.taints.join(",")]);
        }
    }
    command
}

/// k0s's own status first, then the shared readiness.
fn status_then_ready(ctx: &Context<'_>, phase: Phase) -> Vec<Step> {
    let unit = unit_name(ctx.role);
    let status = steps::until_ready(
        phase,
        "k0s reports its status",
        Probe::CommandSucceeds {
            command: CommandSpec::new(BIN).args(["status", "-o", "json"]),
        },
        unit,
    );
    let ready = K0s.readiness(ctx, phase);
    vec![status, ready]
}

const LAYOUT: Layout = Layout {
    kind: DistroKind::K0s,
    admin_kubeconfig: ADMIN_KUBECONFIG,
    node_kubeconfig: NODE_KUBECONFIG,
    kubectl: (BIN, &["kubectl"]),
    units: (CONTROLLER_UNIT, WORKER_UNIT),
    worker_joined: (
        "the worker has joined (its kubelet kubeconfig exists)",
        Joined::FileExists(NODE_KUBECONFIG),
    ),
    ca_cert: "/var/lib/k0s/pki/ca.crt",
};

impl Distro for K0s {
    fn layout(&self) -> &'static Layout {
        &LAYOUT
    }

    fn install_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        Ok(vec![steps::install(
            Phase::Install,
            "k0s is one binary (it unpacks its own components)",
            ctx.bin("k0s")?,
            BIN,
        )])
    }

    fn cluster_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        let phase = if ctx.role.joins() {
            Phase::Join
        } else {
            Phase::Init
        };
        let unit = unit_name(ctx.role);
        let mut out = Vec::new();
        if ctx.role.is_controller() {
            out.push(steps::write(
                phase,
                "every controller gets the same ClusterConfig, with its own addresses",
                CONFIG,
                0o600,
                render_config(ctx)?.into_bytes(),
            ));
        }
        if ctx.role.joins() {
            out.push(steps::write_secret(
                phase,
                "k0s reads the join token from a 0600 file, never from argv",
                TOKEN_FILE,
                ctx.material()?.token.clone(),
            ));
        }
        out.push(steps::run(
            phase,
            "k0s writes its unit with these flags",
            install_command(ctx),
            Some(steps::file_exists(&format!("/etc/systemd/system/{unit}"))),
        ));
        out.push(steps::run(
            phase,
            "start k0s",
            CommandSpec::new(BIN).arg("start"),
            Some(steps::active(unit)),
        ));
        out.extend(status_then_ready(ctx, phase));
        Ok(out)
    }

    fn post_install_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        super::auto_deploy_post_install(
            ctx,
            MANIFESTS_DIR,
            "k0s applies what is in its manifests folders",
            ADMIN_KUBECONFIG,
        )
    }

    fn mint(
        &self,
        ctx: &Context<'_>,
        role: JoinRole,
        ttl: std::time::Duration,
    ) -> Result<JoinMaterial, DistroError> {
        let command = CommandSpec::new(BIN).args([
            "token".to_owned(),
            "create".to_owned(),
            "--role".to_owned(),
            role.to_string(),
            "--expiry".to_owned(),
            super::go_duration(ttl),
        ]);
        let token = ctx
            .host
            .run_checked(&command)?
            .stdout_text()
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(DistroError::Cluster {
                what: "k0s token create".into(),
                reason: "printed no token".into(),
            });
        }
        super::material(ctx, role, Secret::new(token), Some(super::expiry(ttl)))
    }

    /// Controllers without workloads are no Kubernetes nodes; etcd knows them all.
    fn controllers(
        &self,
        host: &dyn crate::host::Host,
        _kubeconfig: &str,
    ) -> Result<Vec<String>, DistroError> {
        let command = CommandSpec::new(BIN).args(["etcd", "member-list"]);
        let output = host.run_checked(&command)?;
        let doc: Value =
            serde_json::from_slice(&output.stdout).map_err(|e| DistroError::Cluster {
                what: command.to_string(),
                reason: format!("printed no JSON: {e}"),
            })?;
        Ok(doc["members"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// The Node (a controller with workloads has one) and, since k0s does not remove a
    /// member by itself, the etcd member at `address`.
    fn forget_controller(
        &self,
        host: &dyn crate::host::Host,
        _this_node: &str,
        name: Option<&str>,
        address: std::net::IpAddr,
    ) -> Result<Vec<String>, DistroError> {
        let mut removed: Vec<String> = super::delete_node(self, host, name)?.into_iter().collect();
        let list = host.run_checked(&CommandSpec::new(BIN).args(["etcd", "member-list"]))?;
        let members: Value =
            serde_json::from_slice(&list.stdout).map_err(|e| DistroError::Cluster {
                what: "k0s etcd member-list".into(),
                reason: format!("unreadable: {e}"),
            })?;
        let peer = super::host_port(&address.to_string(), 2380);
        let member = members["members"].as_object().and_then(|m| {
            m.iter()
                .find(|(_, url)| {
                    url.as_str()
                        .is_some_and(|u| u.ends_with(&format!("//{peer}")))
                })
                .map(|(n, _)| n.clone())
        });
        if let Some(member) = member {
            host.run_checked(&CommandSpec::new(BIN).args([
                "etcd".to_owned(),
                "leave".to_owned(),
                "--peer-address".to_owned(),
                address.to_string(),
            ]))?;
            removed.push(format!("etcd member {member} ({peer})"));
        }
        Ok(removed)
    }

    fn leave_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        if !ctx.role.is_controller() {
            return Ok(Vec::new());
        }
        let Some(ip) = ctx.node_address else {
            return Err(DistroError::Cluster {
                what: "leaving the etcd cluster".into(),
                reason: "this controller's address is unknown; set node.address".into(),
            });
        };
        Ok(vec![steps::run(
            Phase::Leave,
            "k0s does not remove a controller's etcd member by itself",
            CommandSpec::new(BIN).args([
                "etcd".to_owned(),
                "leave".to_owned(),
                "--peer-address".to_owned(),
                ip.to_string(),
            ]),
            None,
        )])
    }

    fn teardown_steps(&self) -> Vec<Step> {
        let mut out = Vec::new();
        out.extend(super::teardown_common(
            &[CONTROLLER_UNIT, WORKER_UNIT],
            &format!("{DATA_DIR}/bin"),
            &[DATA_DIR, "/run/k0s", "/var/lib/kubelet"],
            &["kube-bridge", "dummy0", "vxlan.calico"],
        ));
        out.push(steps::run(
            Phase::Reset,
            "k0s's own reset: data, PKI, units",
            CommandSpec::new(BIN)
                .args(["reset", "--data-dir", DATA_DIR])
                .timeout(INSTALL_TIMEOUT),
            Some(steps::absent(DATA_DIR)),
        ));
        for path in ["/etc/k0s", "/run/k0s", DATA_DIR, "/var/lib/cni"] {
            out.push(steps::remove(Phase::Reset, "k0s state", path));
        }
        for unit in [CONTROLLER_UNIT, WORKER_UNIT] {
            out.push(steps::remove(
                Phase::Reset,
                "the unit k0s install wrote",
                &format!("/etc/systemd/system/{unit}"),
            ));
        }
        out
    }

    fn upgrade_steps(
        &self,
        ctx: &Context<'_>,
        _leads: bool,
    ) -> Result<super::UpgradeSteps, DistroError> {
        let version = ctx.version().to_owned();
        let swap = vec![
            steps::run(
                Phase::Upgrade,
                "k0s stops before its binary is replaced",
                CommandSpec::new(BIN).arg("stop"),
                None,
            )
            .keyed(&[version.as_bytes()]),
            steps::install(Phase::Upgrade, "the new k0s binary", ctx.bin("k0s")?, BIN),
        ];
        let mut start = vec![steps::run(
            Phase::Upgrade,
            "k0s starts on the new binary",
            CommandSpec::new(BIN).arg("start"),
            None,
        )
        .keyed(&[version.as_bytes()])];
        start.extend(status_then_ready(ctx, Phase::Upgrade));
        Ok(super::UpgradeSteps { swap, start })
    }
}
