//! Join material: what a joining node needs from a controller (the distro's token, the
//! API endpoint, the cluster facts it must agree with), and its file on the joiner.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DistroKind;
use crate::host::{Host, HostError};
use crate::secret::Secret;

/// Where a joiner keeps its join material (0600).
pub const MATERIAL_FILE: &str = "/var/lib/bootstrap/join/material.json";

/// The role a node joins as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinRole {
    Worker,
    Controller,
}

impl std::fmt::Display for JoinRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JoinRole::Worker => "worker",
            JoinRole::Controller => "controller",
        })
    }
}

/// Everything a node needs to join, for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinMaterial {
    pub distro: DistroKind,
    /// The distro version the cluster runs (`v1.31.4+k3s1`).
    pub version: String,
    pub role: JoinRole,
    /// The API endpoint, `host:port`.
    pub endpoint: String,
    /// k3s: the full `K10…` token; k0s: the join token; kubeadm: the bootstrap token.
    pub token: Secret,
    /// kubeadm: `sha256:` of the cluster CA's public key.
    pub ca_cert_hash: Option<String>,
    /// kubeadm control-plane joins: the key the uploaded certificates are encrypted with.
    pub certificate_key: Option<Secret>,
    /// When the token stops working (RFC 3339); `None` for tokens that do not expire.
    pub expires_at: Option<String>,
    pub pod_cidr: Option<String>,
    pub service_cidr: Option<String>,
    /// The local registry's CA certificate (PEM), so joiners trust it.
    pub registry_ca: Option<String>,
    /// The local registry's credentials, when it requires them.
    pub registry_auth: Option<(String, Secret)>,
    /// The cluster's name (`cluster.name` of the minting controller): it salts the
    /// join keys, so a controller that receives the join secret needs it too.
    pub cluster: Option<String>,
    /// How this node reaches the cluster's join services later (to leave, or to serve
    /// as a controller).
    pub join: JoinAccess,
}

/// The cluster's join services, as join material tells a node about them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinAccess {
    /// `host:port` of every join service known to the controller that minted this.
    pub services: Vec<String>,
    /// The pin of the join services' key (SHA-256 of its SPKI).
    pub pin: Option<[u8; 32]>,
    /// Workers: this node's own credential, which lets it (and only it) ask a join
    /// service to remove it from the cluster.
    pub node_credential: Option<Secret>,
    /// Controllers: the cluster's join secret, so this controller's join service has
    /// the same identity as the others'.
    pub secret: Option<Secret>,
    /// The id the cluster was given when it was initialised; every node records it.
    pub cluster_id: Option<String>,
}

/// The file form: the same fields, secrets in the clear (the file is 0600 and never
/// logged).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: u32,
    distro: String,
    version: String,
    role: JoinRole,
    endpoint: String,
    token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_cert_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod_cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service_cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registry_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registry_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registry_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    join_services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    join_pin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_credential: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    join_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
}

/// Why join material could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("{path}: not join material: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path} is readable by others (mode {mode:04o}); join material must be 0600")]
    Exposed { path: String, mode: u32 },
    #[error(transparent)]
    Host(#[from] HostError),
}

impl JoinMaterial {
    /// The file text (JSON), secrets included.
    pub fn to_file_text(&self) -> String {
        let wire = Wire {
            format: 1,
            distro: self.distro.to_string(),
            version: self.version.clone(),
            role: self.role,
            endpoint: self.endpoint.clone(),
            token: self.token.expose().to_owned(),
            ca_cert_hash: self.ca_cert_hash.clone(),
            certificate_key: self.certificate_key.as_ref().map(|k| k.expose().to_owned()),
            expires_at: self.expires_at.clone(),
            pod_cidr: self.pod_cidr.clone(),
            service_cidr: self.service_cidr.clone(),
            registry_ca: self.registry_ca.clone(),
            registry_username: self.registry_auth.as_ref().map(|(u, _)| u.clone()),
            registry_password: self
                .registry_auth
                .as_ref()
                .map(|(_, p)| p.expose().to_owned()),
            cluster_name: self.cluster.clone(),
            join_services: self.join.services.clone(),
            join_pin: self.join.pin.map(hex::encode),
            node_credential: self
                .join
                .node_credential
                .as_ref()
                .map(|c| c.expose().to_owned()),
            join_secret: self.join.secret.as_ref().map(|s| s.expose().to_owned()),
            cluster_id: self.join.cluster_id.clone(),
        };
        let mut text = serde_json::to_string_pretty(&wire).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parses the file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<JoinMaterial, MaterialError> {
        let invalid = |reason: String| MaterialError::Invalid {
            path: origin.to_owned(),
            reason,
        };
        let wire: Wire = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if wire.format != 1 {
            return Err(invalid(format!(
                "format {} is not known to this bootstrap (1 is)",
                wire.format
            )));
        }
        let distro = match wire.distro.as_str() {
            "k3s" => DistroKind::K3s,
            "k0s" => DistroKind::K0s,
            "kubeadm" => DistroKind::Kubeadm,
            other => {
                return Err(invalid(format!(
                    "distro {other:?} is not k3s, k0s or kubeadm"
                )))
            }
        };
        if wire.token.trim().is_empty() {
            return Err(invalid("the token is empty".to_owned()));
        }
        if distro == DistroKind::Kubeadm && wire.ca_cert_hash.is_none() {
            return Err(invalid("kubeadm material needs ca_cert_hash".to_owned()));
        }
        if distro == DistroKind::Kubeadm
            && wire.role == JoinRole::Controller
            && wire.certificate_key.is_none()
        {
            return Err(invalid(
                "kubeadm controller material needs certificate_key".to_owned(),
            ));
        }
        if let Some(name) = &wire.cluster_name {
            crate::validate::dns_subdomain(name)
                .map_err(|what| invalid(format!("cluster_name {name:?}: expected {what}")))?;
        }
        let join_pin = match &wire.join_pin {
            None => None,
            Some(text) => Some(
                hex::decode(text)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                    .ok_or_else(|| invalid("join_pin is not a SHA-256 digest in hex".to_owned()))?,
            ),
        };
        Ok(JoinMaterial {
            distro,
            version: wire.version,
            role: wire.role,
            endpoint: wire.endpoint,
            token: Secret::new(wire.token.trim()),
            ca_cert_hash: wire.ca_cert_hash,
            certificate_key: wire.certificate_key.map(Secret::new),
            expires_at: wire.expires_at,
            pod_cidr: wire.pod_cidr,
            service_cidr: wire.service_cidr,
            registry_ca: wire.registry_ca,
            registry_auth: wire
                .registry_username
                .zip(wire.registry_password)
                .map(|(u, p)| (u, Secret::new(p))),
            cluster: wire.cluster_name,
            join: JoinAccess {
                services: wire.join_services,
                pin: join_pin,
                node_credential: wire.node_credential.map(Secret::new),
                secret: wire.join_secret.map(Secret::new),
                cluster_id: wire.cluster_id,
            },
        })
    }

    /// Reads [`MATERIAL_FILE`]; `Ok(None)` when there is none.
    pub fn load(host: &dyn Host) -> Result<Option<JoinMaterial>, MaterialError> {
        let path = Path::new(MATERIAL_FILE);
        let Some(meta) = host.metadata(path)? else {
            return Ok(None);
        };
        if meta.mode & 0o077 != 0 {
            return Err(MaterialError::Exposed {
                path: MATERIAL_FILE.to_owned(),
                mode: meta.mode,
            });
        }
        let text = host.read_string(path)?.unwrap_or_default();
        JoinMaterial::parse(&text, MATERIAL_FILE).map(Some)
    }

    /// The API server URL.
    pub fn server_url(&self) -> String {
        format!("https://{}", self.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JoinMaterial {
        JoinMaterial {
            distro: DistroKind::Kubeadm,
            version: "v1.31.4".into(),
            role: JoinRole::Controller,
            endpoint: "10.0.0.10:6443".into(),
            token: Secret::new("abcdef.0123456789abcdef"),
            ca_cert_hash: Some(format!("sha256:{}", "a".repeat(64))),
            certificate_key: Some(Secret::new("b".repeat(64))),
            expires_at: Some("2026-11-30T00:00:00Z".into()),
            pod_cidr: Some("10.244.0.0/16".into()),
            service_cidr: None,
            registry_ca: None,
            registry_auth: Some(("pull".into(), Secret::new("registry-password-1"))),
            cluster: Some("prod".into()),
            join: JoinAccess {
                services: vec!["10.0.0.10:7443".into()],
                pin: Some([3u8; 32]),
                node_credential: Some(Secret::new("node-credential-1")),
                secret: Some(Secret::new("join-secret-1")),
                cluster_id: Some("c0ffee".into()),
            },
        }
    }

    #[test]
    fn round_trips_through_the_file_form() {
        let m = sample();
        let text = m.to_file_text();
        assert!(text.contains("abcdef.0123456789abcdef"));
        assert_eq!(JoinMaterial::parse(&text, "x").unwrap(), m);
    }

    #[test]
    fn debug_output_hides_the_secrets() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(!shown.contains(&"b".repeat(64)), "{shown}");
        assert!(!shown.contains("registry-password-1"), "{shown}");
        assert!(!shown.contains("node-credential-1"), "{shown}");
        assert!(!shown.contains("join-secret-1"), "{shown}");
    }

    #[test]
    fn incomplete_material_is_refused_with_the_reason() {
        let mut m = sample();
        m.certificate_key = None;
        let e = JoinMaterial::parse(&m.to_file_text(), "/m.json").unwrap_err();
        assert!(e.to_string().contains("certificate_key"), "{e}");
        let e = JoinMaterial::parse("{}", "/m.json").unwrap_err();
        assert!(
            e.to_string().starts_with("/m.json: not join material"),
            "{e}"
        );
    }

    #[test]
    fn exposed_material_is_refused() {
        let host = crate::host::FakeHost::new().with_file(MATERIAL_FILE, sample().to_file_text());
        let e = JoinMaterial::load(&host).unwrap_err();
        assert!(e.to_string().contains("0644"), "{e}");
    }
}
