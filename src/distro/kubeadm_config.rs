//! kubeadm's configuration documents: Init/Cluster/Join/KubeletConfiguration in the API
//! version the Kubernetes version needs, over the cluster image's `etc/kubeadm.yml` when
//! it has one, each merged with `distro.kubeadm.<kind>`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::kubeadm_image::{self, ImageDocs};
use super::{Context, DistroError, JoinMaterial};

pub const CRI_SOCKET: &str = "unix:///var/run/containerd/containerd.sock";

/// The kinds `distro.kubeadm` may carry, each merged into the document of that kind.
pub const KINDS: [&str; 5] = [
    "InitConfiguration",
    "ClusterConfiguration",
    "JoinConfiguration",
    "KubeletConfiguration",
    "KubeProxyConfiguration",
];

/// The secrets chosen before `kubeadm init`.
#[derive(Serialize, Deserialize)]
pub(super) struct Secrets {
    pub(super) token: String,
    pub(super) certificate_key: String,
}

/// `kubeadm.k8s.io/v1beta4` from Kubernetes 1.31, `v1beta3` before.
pub fn api_version(ctx: &Context<'_>) -> &'static str {
    match super::kube_version(&ctx.kube_version()) {
        Some((1, minor, _)) if minor < 31 => "kubeadm.k8s.io/v1beta3",
        _ => "kubeadm.k8s.io/v1beta4",
    }
}

fn is_v1beta4(ctx: &Context<'_>) -> bool {
    api_version(ctx).ends_with("v1beta4")
}

/// `{name: value}` in v1beta3, a list of `{name, value}` in v1beta4.
fn args(ctx: &Context<'_>, pairs: &[(&str, String)]) -> Value {
    if is_v1beta4(ctx) {
        Value::Array(
            pairs
                .iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect(),
        )
    } else {
        Value::Object(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), json!(v)))
                .collect(),
        )
    }
}

/// `key[=value]:Effect` as kubeadm's taint object.
pub(super) fn taint(text: &str) -> Value {
    let (kv, effect) = text.rsplit_once(':').unwrap_or((text, "NoSchedule"));
    match kv.split_once('=') {
        Some((key, value)) => json!({"key": key, "value": value, "effect": effect}),
        None => json!({"key": kv, "effect": effect}),
    }
}

fn node_registration(ctx: &Context<'_>) -> Value {
    let mut kubelet_args = Vec::new();
    if let Some(ip) = ctx.node_address {
        kubelet_args.push(("node-ip", ip.to_string()));
    }
    let labels = ctx.labels();
    if !labels.is_empty() {
        kubelet_args.push(("node-labels", labels.join(",")));
    }
    let mut taints: Vec<Value> = ctx.config.node.taints.iter().map(|t| taint(t)).collect();
    // A lone controller must run workloads; on a bigger cluster controllers keep
    // kubeadm's usual NoSchedule taint unless cluster.controller_workloads lifts it.
    if ctx.role.is_controller() && !ctx.controllers_run_workloads(false) {
        taints.insert(
            0,
            json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}),
        );
    }
    json!({
        "name": ctx.node_name,
        "criSocket": CRI_SOCKET,
        "taints": taints,
        "kubeletExtraArgs": args(ctx, &kubelet_args),
        // Images come through the local registry mirror, or were imported; never from
        // the Internet (containerd's hosts.toml has no upstream fallback).
        "imagePullPolicy": "IfNotPresent",
    })
}

fn user_docs<'a>(
    ctx: &Context<'a>,
) -> Result<&'a std::collections::BTreeMap<String, Value>, DistroError> {
    for key in ctx.config.distro.kubeadm.keys() {
        if !KINDS.contains(&key.as_str()) {
            return Err(DistroError::Config {
                field: format!("distro.kubeadm.{key}"),
                message: format!("not a kubeadm kind; expected one of {}", KINDS.join(", ")),
            });
        }
    }
    Ok(&ctx.config.distro.kubeadm)
}

/// Each document merged with `distro.kubeadm.<kind>`, joined as a multi-document file
/// of JSON objects (valid YAML, unambiguous types).
pub(super) fn render_docs(ctx: &Context<'_>, docs: Vec<Value>) -> Result<String, DistroError> {
    render_layered(ctx, docs, None)
}

/// [`render_docs`], each document over the image's of its kind when there is one.
fn render_layered(
    ctx: &Context<'_>,
    mut docs: Vec<Value>,
    image: Option<&ImageDocs>,
) -> Result<String, DistroError> {
    let user = user_docs(ctx)?;
    let present: Vec<String> = docs
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect();
    let image_proxy = image.is_some_and(|i| i.get("KubeProxyConfiguration").is_some());
    if present.iter().any(|k| k == "ClusterConfiguration")
        && (user.contains_key("KubeProxyConfiguration") || image_proxy)
    {
        docs.push(json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
        }));
    }
    let mut out = String::new();
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let extra = user.get(&kind);
        if extra.is_some_and(|e| !e.is_object()) {
            return Err(DistroError::Config {
                field: format!("distro.kubeadm.{kind}"),
                message: "expected a map of fields".into(),
            });
        }
        match (image, extra) {
            (Some(image), extra) => doc = kubeadm_image::layer(image, &kind, doc, extra),
            (None, Some(extra)) => super::merge_json(&mut doc, extra),
            (None, None) => {}
        }
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(&doc).unwrap_or_default());
        out.push('\n');
    }
    Ok(out)
}

/// The init configuration: InitConfiguration (pre-chosen token and certificate key),
/// ClusterConfiguration (pinned version, endpoint, SANs, subnets), KubeletConfiguration.
pub(super) fn render_init(ctx: &Context<'_>, secrets: &Secrets) -> Result<String, DistroError> {
    let api = api_version(ctx);
    let mut init = json!({
        "apiVersion": api,
        "kind": "InitConfiguration",
        "bootstrapTokens": [{
            "token": secrets.token,
            "ttl": super::go_duration(ctx.config.join.token_ttl),
            "usages": ["signing", "authentication"],
            "groups": ["system:bootstrappers:kubeadm:default-node-token"],
            "description": "bootstrap: the first joins",
        }],
        "nodeRegistration": node_registration(ctx),
        "certificateKey": secrets.certificate_key,
    });
    if let Some(ip) = ctx.node_address {
        init["localAPIEndpoint"] =
            json!({"advertiseAddress": ip.to_string(), "bindPort": super::API_PORT});
    }
    let mut networking = serde_json::Map::new();
    let (pod, service) = ctx.cidrs();
    if let Some(pod) = pod {
        networking.insert("podSubnet".into(), json!(pod));
    }
    if let Some(service) = service {
        networking.insert("serviceSubnet".into(), json!(service));
    }
    let cluster = json!({
        "apiVersion": api,
        "kind": "ClusterConfiguration",
        // Pinned: without it kubeadm asks the Internet for "stable-1".
        "kubernetesVersion": ctx.kube_version(),
        // Set at init, or the control plane can never grow.
        "controlPlaneEndpoint": ctx.endpoint(),
        "networking": Value::Object(networking),
        "apiServer": {"certSANs": ctx.sans()},
    });
    let kubelet = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // Matches containerd's SystemdCgroup = true.
        "cgroupDriver": "systemd",
        "failSwapOn": true,
        "containerRuntimeEndpoint": CRI_SOCKET,
    });
    let image = kubeadm_image::load(ctx, is_v1beta4(ctx))?;
    render_layered(ctx, vec![init, cluster, kubelet], image.as_ref())
}

pub(super) fn render_join(
    ctx: &Context<'_>,
    material: &JoinMaterial,
) -> Result<String, DistroError> {
    let hash = material
        .ca_cert_hash
        .clone()
        .ok_or_else(|| DistroError::Mismatch {
            path: super::MATERIAL_FILE,
            reason: "kubeadm material has no ca_cert_hash".into(),
        })?;
    let mut join = json!({
        "apiVersion": api_version(ctx),
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "token": material.token.expose(),
                "apiServerEndpoint": material.endpoint,
                // Pinned: never unsafeSkipCAVerification.
                "caCertHashes": [hash],
            },
        },
        "nodeRegistration": node_registration(ctx),
    });
    if ctx.role.is_controller() {
        let key = material
            .certificate_key
            .as_ref()
            .ok_or_else(|| DistroError::Mismatch {
                path: super::MATERIAL_FILE,
                reason: "a controller join needs the certificate key".into(),
            })?;
        let mut control_plane = json!({"certificateKey": key.expose()});
        if let Some(ip) = ctx.node_address {
            control_plane["localAPIEndpoint"] =
                json!({"advertiseAddress": ip.to_string(), "bindPort": super::API_PORT});
        }
        join["controlPlane"] = control_plane;
    }
    let image = kubeadm_image::load(ctx, is_v1beta4(ctx))?;
    render_layered(ctx, vec![join], image.as_ref())
}
