//! sealer's kubeadm configuration in the cluster image (`etc/kubeadm.yml`) as the base of
//! the documents bootstrap writes: bootstrap's values go over it, `distro.kubeadm` over
//! both, and a log line names every image value replaced. What bootstrap owns (the
//! endpoint, tokens, the certificate key, this node's name and address, and what the
//! containerd it installs needs: CRI socket, cgroup driver, the pinned version) is taken
//! out of the image's documents first, and they are brought to the API version written.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Context, DistroError};

/// Fields of each kind that only bootstrap sets.
const OWNED: &[(&str, &[&str])] = &[
    (
        "InitConfiguration",
        &[
            "bootstrapTokens",
            "certificateKey",
            "localAPIEndpoint",
            "nodeRegistration.name",
            "nodeRegistration.criSocket",
        ],
    ),
    (
        "ClusterConfiguration",
        &["controlPlaneEndpoint", "kubernetesVersion"],
    ),
    (
        "JoinConfiguration",
        &[
            "discovery",
            "controlPlane",
            "nodeRegistration.name",
            "nodeRegistration.criSocket",
        ],
    ),
    (
        "KubeletConfiguration",
        &["cgroupDriver", "containerRuntimeEndpoint"],
    ),
];

/// Fields older API versions had and the one written does not (kubeadm decodes
/// strictly): (kind, field, written only before v1beta4).
const DROPPED: &[(&str, &str, bool)] = &[
    ("ClusterConfiguration", "dns.type", false),
    ("ClusterConfiguration", "useHyperKubeImage", false),
    (
        "ClusterConfiguration",
        "apiServer.timeoutForControlPlane",
        true,
    ),
];

/// The image's documents by kind, ready to lie under bootstrap's.
pub(super) struct ImageDocs {
    /// The file, for log lines.
    pub(super) path: String,
    docs: BTreeMap<String, Value>,
}

impl ImageDocs {
    /// The image's document of a kind, if it has one.
    pub(super) fn get(&self, kind: &str) -> Option<&Value> {
        self.docs.get(kind)
    }
}

/// Reads the image's `etc/kubeadm.yml`, if it has one.
pub(super) fn load(ctx: &Context<'_>, v1beta4: bool) -> Result<Option<ImageDocs>, DistroError> {
    let Some(rel) = &ctx.image.kubeadm_config else {
        return Ok(None);
    };
    let path = ctx.image.dir.join(rel);
    let shown = path.display().to_string();
    let Some(text) = ctx.host.read_string(&path)? else {
        return Ok(None);
    };
    let bad = |reason: String| DistroError::ImageConfig {
        path: shown.clone(),
        reason,
    };
    let mut docs = BTreeMap::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(doc)
            .map_err(|e| bad(format!("document {}: not YAML: {e}", i + 1)))?;
        let mut value = match value {
            Value::Null => continue,
            Value::Object(_) => value,
            _ => return Err(bad(format!("document {}: not a map", i + 1))),
        };
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let api = value["apiVersion"].as_str().unwrap_or_default().to_owned();
        let known = match kind.as_str() {
            "InitConfiguration" | "ClusterConfiguration" | "JoinConfiguration" => {
                ["v1beta2", "v1beta3", "v1beta4"]
                    .iter()
                    .any(|v| api == format!("kubeadm.k8s.io/{v}"))
            }
            "KubeletConfiguration" => api == "kubelet.config.k8s.io/v1beta1",
            "KubeProxyConfiguration" => api == "kubeproxy.config.k8s.io/v1alpha1",
            _ => {
                log::info!(
                    "{shown}: document {} ({kind:?}) is not one bootstrap writes; ignored",
                    i + 1
                );
                continue;
            }
        };
        if !known {
            return Err(bad(format!(
                "document {} ({kind}): apiVersion {api:?} is not supported (kubeadm.k8s.io/v1beta2 to v1beta4, kubelet.config.k8s.io/v1beta1, kubeproxy.config.k8s.io/v1alpha1)",
                i + 1
            )));
        }
        if let Some(object) = value.as_object_mut() {
            object.remove("apiVersion");
        }
        for (owned_kind, fields) in OWNED {
            if *owned_kind == kind {
                for field in *fields {
                    if let Some(old) = take(&mut value, field) {
                        log::info!(
                            "{shown}: {kind}.{field} ({}) is not used: bootstrap sets it",
                            compact(&old)
                        );
                    }
                }
            }
        }
        for (dropped_kind, field, before_v1beta4) in DROPPED {
            if *dropped_kind == kind && (!before_v1beta4 || v1beta4) {
                if let Some(old) = take(&mut value, field) {
                    log::info!(
                        "{shown}: {kind}.{field} ({}) is not used: the kubeadm API version written has no such field",
                        compact(&old)
                    );
                }
            }
        }
        reshape_args(&mut value, v1beta4);
        docs.insert(kind, value);
    }
    Ok(Some(ImageDocs { path: shown, docs }))
}

/// `doc` with `generated` and then `user` merged over the image's document of its kind.
pub(super) fn layer(
    image: &ImageDocs,
    kind: &str,
    generated: Value,
    user: Option<&Value>,
) -> Value {
    let Some(base) = image.get(kind) else {
        let mut doc = generated;
        if let Some(user) = user {
            super::merge_json(&mut doc, user);
        }
        return doc;
    };
    let mut doc = base.clone();
    merge_logged(&mut doc, &generated, kind, "bootstrap", &image.path);
    if let Some(user) = user {
        merge_logged(&mut doc, user, kind, "distro.kubeadm", &image.path);
    }
    doc
}

/// Merges `over` into `base` like `merge_json`, logging each value of `base` replaced.
/// Lists of `{name, value}` (v1beta4 extra args) merge by name; `certSANs` are joined.
fn merge_logged(base: &mut Value, over: &Value, path: &str, who: &str, file: &str) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                let here = format!("{path}.{key}");
                match base.get_mut(key) {
                    Some(existing) => merge_logged(existing, value, &here, who, file),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(over)) if path.ends_with(".certSANs") => {
            for value in over {
                if !base.contains(value) {
                    base.push(value.clone());
                }
            }
        }
        (Value::Array(base), Value::Array(over)) if is_named_list(base) && is_named_list(over) => {
            for item in over {
                match base.iter_mut().find(|b| b["name"] == item["name"]) {
                    Some(existing) => {
                        let here = format!("{path}[{}]", item["name"].as_str().unwrap_or("?"));
                        merge_logged(existing, item, &here, who, file);
                    }
                    None => base.push(item.clone()),
                }
            }
        }
        (base, over) => {
            if *base != *over {
                log::info!(
                    "{file}: {path} = {} replaced by {who}'s {}",
                    compact(base),
                    compact(over)
                );
            }
            *base = over.clone();
        }
    }
}

fn is_named_list(items: &[Value]) -> bool {
    items.iter().all(|i| i["name"].is_string())
}

/// Removes the field at a dotted path, returning it.
fn take(doc: &mut Value, dotted: &str) -> Option<Value> {
    let (parent, last) = match dotted.rsplit_once('.') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, dotted),
    };
    let mut node = doc;
    for part in parent.into_iter().flat_map(|p| p.split('.')) {
        node = node.get_mut(part)?;
    }
    node.as_object_mut()?.remove(last)
}

/// `extraArgs` and `kubeletExtraArgs` as the API version written wants them: lists of
/// `{name, value}` in v1beta4, maps before.
fn reshape_args(value: &mut Value, v1beta4: bool) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "extraArgs" || key == "kubeletExtraArgs" {
                    *child = match (std::mem::take(child), v1beta4) {
                        (Value::Object(args), true) => Value::Array(
                            args.into_iter()
                                .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
                                .collect(),
                        ),
                        (Value::Array(args), false) => Value::Object(
                            args.into_iter()
                                .filter_map(|a| {
                                    Some((a["name"].as_str()?.to_owned(), a["value"].clone()))
                                })
                                .collect(),
                        ),
                        (other, _) => other,
                    };
                } else {
                    reshape_args(child, v1beta4);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| reshape_args(i, v1beta4)),
        _ => {}
    }
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_values_lie_under_bootstraps_and_the_users() {
        let image = ImageDocs {
            path: "/img/etc/kubeadm.yml".into(),
            docs: BTreeMap::from([(
                "ClusterConfiguration".to_owned(),
                json!({
                    "kind": "ClusterConfiguration",
                    "networking": {"dnsDomain": "cluster.test", "podSubnet": "100.64.0.0/10"},
                    "apiServer": {"certSANs": ["apiserver.cluster.local"],
                                  "extraArgs": [{"name": "audit-log-maxage", "value": "7"}]},
                }),
            )]),
        };
        let generated = json!({
            "apiVersion": "kubeadm.k8s.io/v1beta4",
            "kind": "ClusterConfiguration",
            "networking": {"podSubnet": "10.42.0.0/16"},
            "apiServer": {"certSANs": ["10.0.0.10"]},
        });
        let user =
            json!({"apiServer": {"extraArgs": [{"name": "audit-log-maxage", "value": "30"}]}});
        let doc = layer(&image, "ClusterConfiguration", generated, Some(&user));
        assert_eq!(doc["apiVersion"], "kubeadm.k8s.io/v1beta4");
        assert_eq!(doc["networking"]["dnsDomain"], "cluster.test");
        assert_eq!(doc["networking"]["podSubnet"], "10.42.0.0/16");
        assert_eq!(
            doc["apiServer"]["certSANs"],
            json!(["apiserver.cluster.local", "10.0.0.10"])
        );
        assert_eq!(
            doc["apiServer"]["extraArgs"],
            json!([{"name": "audit-log-maxage", "value": "30"}])
        );
    }

    #[test]
    fn args_take_the_shape_of_the_version_written() {
        let mut doc = json!({"apiServer": {"extraArgs": {"a": "1"}},
                             "nodeRegistration": {"kubeletExtraArgs": {"b": "2"}}});
        reshape_args(&mut doc, true);
        assert_eq!(
            doc["apiServer"]["extraArgs"],
            json!([{"name": "a", "value": "1"}])
        );
        reshape_args(&mut doc, false);
        assert_eq!(
            doc["nodeRegistration"]["kubeletExtraArgs"],
            json!({"b": "2"})
        );
        let mut doc = json!({"nodeRegistration": {"name": "x", "criSocket": "y", "taints": []}});
        assert_eq!(
            take(&mut doc, "nodeRegistration.criSocket"),
            Some(json!("y"))
        );
        assert_eq!(
            doc,
            json!({"nodeRegistration": {"name": "x", "taints": []}})
        );
        assert_eq!(take(&mut doc, "discovery.timeout"), None);
    }
}
