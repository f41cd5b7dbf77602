//! Pointing every container runtime at the local registry: containerd `hosts.toml` files
//! (kubeadm's host containerd and k0s's), k3s `registries.yaml`, and the k0s drop-in.
//!
//! The local registry is set as the `server` of every upstream, so in an air gap nothing
//! is ever asked of the internet; the CA is given by absolute path so the same files work
//! wherever the hosts directory lives.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// Registries images are commonly named after; each gets the local registry as mirror.
/// `_default` catches every other name.
pub const UPSTREAMS: [&str; 8] = [
    "_default",
    "docker.io",
    "registry.k8s.io",
    "k8s.gcr.io",
    "gcr.io",
    "quay.io",
    "ghcr.io",
    "registry.gitlab.com",
];

/// Where every node keeps the registry's CA certificate.
pub const CA_PATH: &str = "/etc/bootstrap/registry/ca.crt";
/// k3s's registry configuration.
pub const K3S_REGISTRIES: &str = "/etc/rancher/k3s/registries.yaml";
/// A k3s config drop-in that turns off fallback to upstream registries.
pub const K3S_DROPIN: &str = "/etc/rancher/k3s/config.yaml.d/50-bootstrap-registry.yaml";
/// The k0s containerd drop-in and its hosts directory.
pub const K0S_DROPIN: &str = "/etc/k0s/containerd.d/bootstrap-registry.toml";
pub const K0S_CERTS_DIR: &str = "/etc/k0s/containerd.d/certs.d";

const HEADER: &str = "# Written by bootstrap; `bootstrap reset` removes it.\n";

/// The local registry as runtimes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRegistry {
    /// `sea.hub:5000`
    pub host: String,
    pub ca_path: String,
    /// Basic-auth credentials, when the registry asks for them.
    pub auth: Option<(String, crate::secret::Secret)>,
}

impl LocalRegistry {
    fn url(&self) -> String {
        format!("https://{}", self.host)
    }
}

#[derive(Serialize)]
struct HostEntry {
    capabilities: [&'static str; 2],
    ca: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<BTreeMap<&'static str, String>>,
}

/// The local registry as `server` and as the one `[host]`, each with the CA. containerd
/// 1.6 refuses a file without a `[host]` table — and then quietly falls back to the
/// upstream registry — and tries `server` after the hosts, so the server needs the CA
/// too (or a missing image reads as a TLS error instead of "not found").
#[derive(Serialize)]
struct HostsToml {
    server: String,
    ca: String,
    capabilities: [&'static str; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<BTreeMap<&'static str, String>>,
    host: BTreeMap<String, HostEntry>,
}

/// containerd has no credentials setting in `hosts.toml`; a static `Authorization`
/// header is how a mirror with basic auth is reached.
fn auth_header(registry: &LocalRegistry) -> Option<BTreeMap<&'static str, String>> {
    use base64::Engine;
    let (user, password) = registry.auth.as_ref()?;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.expose()));
    Some(BTreeMap::from([(
        "Authorization",
        format!("Basic {token}"),
    )]))
}

/// `hosts.toml` making the local registry the only source for a registry name. Holds the
/// registry credentials when there are some: write it 0600 then.
pub fn hosts_toml(registry: &LocalRegistry) -> String {
    let doc = HostsToml {
        server: registry.url(),
        ca: registry.ca_path.clone(),
        capabilities: ["pull", "resolve"],
        header: auth_header(registry),
        host: BTreeMap::from([(
            registry.url(),
            HostEntry {
                capabilities: ["pull", "resolve"],
                ca: registry.ca_path.clone(),
                header: auth_header(registry),
            },
        )]),
    };
    format!("{HEADER}{}", toml::to_string(&doc).unwrap_or_default())
}

/// Every `hosts.toml` to write under `certs_dir`: one per upstream name and one for the
/// local registry's own name (so `sea.hub:5000/x` is trusted too).
pub fn hosts_files(certs_dir: &str, registry: &LocalRegistry) -> Vec<(PathBuf, String)> {
    let body = hosts_toml(registry);
    let mut names: Vec<&str> = UPSTREAMS.to_vec();
    names.push(&registry.host);
    names
        .into_iter()
        .map(|name| {
            (
                PathBuf::from(certs_dir).join(name).join("hosts.toml"),
                body.clone(),
            )
        })
        .collect()
}

#[derive(Serialize)]
struct K3sMirror {
    endpoint: Vec<String>,
}

#[derive(Serialize)]
struct K3sTls {
    ca_file: String,
}

#[derive(Serialize)]
struct K3sAuth {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct K3sRegistryConfig {
    tls: K3sTls,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<K3sAuth>,
}

#[derive(Serialize)]
struct K3sRegistries {
    mirrors: BTreeMap<String, K3sMirror>,
    configs: BTreeMap<String, K3sRegistryConfig>,
}

/// k3s `registries.yaml`: the local registry mirrors `*` and each usual upstream. Holds
/// the registry password when there is one, so it is written 0600.
pub fn k3s_registries(registry: &LocalRegistry) -> String {
    let mut mirrors = BTreeMap::new();
    for name in UPSTREAMS
        .iter()
        .map(|u| if *u == "_default" { "*" } else { u })
    {
        mirrors.insert(
            name.to_owned(),
            K3sMirror {
                endpoint: vec![registry.url()],
            },
        );
    }
    let configs = BTreeMap::from([(
        registry.host.clone(),
        K3sRegistryConfig {
            tls: K3sTls {
                ca_file: registry.ca_path.clone(),
            },
            auth: registry.auth.as_ref().map(|(user, password)| K3sAuth {
                username: user.clone(),
                password: password.expose().to_owned(),
            }),
        },
    )]);
    let doc = K3sRegistries { mirrors, configs };
    format!(
        "{HEADER}{}",
        serde_yaml::to_string(&doc).unwrap_or_default()
    )
}

/// The k3s config drop-in: never fall back to an upstream registry's own endpoint.
pub fn k3s_dropin() -> String {
    format!("{HEADER}disable-default-registry-endpoint: true\n")
}

#[derive(Serialize)]
struct RegistryPath {
    config_path: String,
}

#[derive(Serialize)]
struct K0sV3Images {
    registry: RegistryPath,
}

#[derive(Serialize)]
struct K0sV3Plugins {
    #[serde(rename = "io.containerd.cri.v1.images")]
    images: K0sV3Images,
}

#[derive(Serialize)]
struct K0sV3 {
    version: u32,
    plugins: K0sV3Plugins,
}

#[derive(Serialize)]
struct K0sV2Cri {
    registry: RegistryPath,
}

#[derive(Serialize)]
struct K0sV2Plugins {
    #[serde(rename = "io.containerd.grpc.v1.cri")]
    cri: K0sV2Cri,
}

#[derive(Serialize)]
struct K0sV2 {
    version: u32,
    plugins: K0sV2Plugins,
}

/// The k0s containerd drop-in: version 3 for k0s 1.36 and later (containerd 2.x, which
/// rejects version 2 drop-ins), version 2 before.
pub fn k0s_dropin(kube_minor: Option<(u32, u32)>) -> String {
    let config_path = K0S_CERTS_DIR.to_owned();
    let body = if kube_minor.is_none_or(|v| v >= (1, 36)) {
        toml::to_string(&K0sV3 {
            version: 3,
            plugins: K0sV3Plugins {
                images: K0sV3Images {
                    registry: RegistryPath { config_path },
                },
            },
        })
    } else {
        toml::to_string(&K0sV2 {
            version: 2,
            plugins: K0sV2Plugins {
                cri: K0sV2Cri {
                    registry: RegistryPath { config_path },
                },
            },
        })
    };
    format!("{HEADER}{}", body.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalRegistry {
        LocalRegistry {
            host: "sea.hub:5000".into(),
            ca_path: CA_PATH.into(),
            auth: None,
        }
    }

    #[test]
    fn hosts_toml_makes_the_mirror_the_only_server() {
        let doc: toml::Value = toml::from_str(&hosts_toml(&local())).unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://sea.hub:5000"));
        assert_eq!(doc["ca"].as_str(), Some(CA_PATH));
        assert_eq!(doc["capabilities"].as_array().unwrap().len(), 2);
        let host = &doc["host"]["https://sea.hub:5000"];
        assert_eq!(host["ca"].as_str(), Some(CA_PATH));
        assert_eq!(
            doc.get("host").and_then(|h| h.as_table()).map(|t| t.len()),
            Some(1)
        );
        let files = hosts_files("/etc/containerd/certs.d", &local());
        assert!(files
            .iter()
            .any(|(p, _)| p.ends_with("docker.io/hosts.toml")));
        assert!(files
            .iter()
            .any(|(p, _)| p.ends_with("_default/hosts.toml")));
        assert!(files
            .iter()
            .any(|(p, _)| p.ends_with("sea.hub:5000/hosts.toml")));
    }

    #[test]
    fn credentials_travel_as_a_basic_auth_header() {
        let mut reg = local();
        reg.auth = Some(("pull".into(), crate::secret::Secret::new("s3cret-pw")));
        let doc: toml::Value = toml::from_str(&hosts_toml(&reg)).unwrap();
        // base64("pull:s3cret-pw")
        let want = "Basic cHVsbDpzM2NyZXQtcHc=";
        assert_eq!(doc["header"]["Authorization"].as_str(), Some(want));
        assert_eq!(
            doc["host"]["https://sea.hub:5000"]["header"]["Authorization"].as_str(),
            Some(want)
        );
        assert!(toml::from_str::<toml::Value>(&hosts_toml(&local()))
            .unwrap()
            .get("header")
            .is_none());
    }

    #[test]
    fn k3s_registries_mirror_everything() {
        let mut reg = local();
        reg.auth = Some(("pull".into(), crate::secret::Secret::new("pw")));
        let doc: serde_yaml::Value = serde_yaml::from_str(&k3s_registries(&reg)).unwrap();
        assert_eq!(
            doc["mirrors"]["*"]["endpoint"][0].as_str(),
            Some("https://sea.hub:5000")
        );
        assert_eq!(
            doc["mirrors"]["docker.io"]["endpoint"][0].as_str(),
            Some("https://sea.hub:5000")
        );
        assert_eq!(
            doc["configs"]["sea.hub:5000"]["tls"]["ca_file"].as_str(),
            Some(CA_PATH)
        );
        assert_eq!(
            doc["configs"]["sea.hub:5000"]["auth"]["username"].as_str(),
            Some("pull")
        );
    }

    #[test]
    fn k0s_dropin_version_follows_k0s() {
        let v3: toml::Value = toml::from_str(&k0s_dropin(Some((1, 36)))).unwrap();
        assert_eq!(v3["version"].as_integer(), Some(3));
        assert!(v3["plugins"].get("io.containerd.cri.v1.images").is_some());
        let v2: toml::Value = toml::from_str(&k0s_dropin(Some((1, 35)))).unwrap();
        assert_eq!(v2["version"].as_integer(), Some(2));
        assert!(v2["plugins"].get("io.containerd.grpc.v1.cri").is_some());
    }
}
