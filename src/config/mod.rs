//! Configuration: the schema, figment layering and validation.
//!
//! Layers, later wins: built-in defaults → `/etc/bootstrap/config.yaml` under the root (or
//! `--config FILE`) → `BOOTSTRAP_*` environment (`__` nests) → command-line flags. Unknown
//! keys are errors; every error names the field path, where the value came from and what
//! was expected, and all of them are reported at once.

mod checks;
mod load;

pub use load::{load, FlagLayer, Sources};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::secret::Secret;
use crate::validate;

/// The cluster name the join keys are salted with where none is configured: only a
/// controller whose join secret `up` made itself (256 random bits) has none.
pub const DEFAULT_CLUSTER_NAME: &str = "bootstrap";

/// The preflight checks by name: here, so `preflight.ignore` is checked where it is
/// read; `preflight` runs them in this order.
pub const PREFLIGHT_CHECKS: [&str; 13] = [
    "root",
    "arch",
    "cpu",
    "memory",
    "disk",
    "swap",
    "ip-forward",
    "modules",
    "ports",
    "cgroups",
    "systemd",
    "hostname",
    "address",
];

/// Where the config file is looked for, under the root, when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bootstrap/config.yaml";
/// The prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "BOOTSTRAP_";

/// The node's role as configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RoleSetting {
    /// Decide from `cluster.controllers` and this host's addresses and name.
    #[default]
    Auto,
    /// A control-plane node.
    Controller,
    /// A worker node.
    Worker,
}

impl fmt::Display for RoleSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoleSetting::Auto => "auto",
            RoleSetting::Controller => "controller",
            RoleSetting::Worker => "worker",
        })
    }
}

/// The whole configuration: file, environment and flags share this one type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `auto`, `controller` or `worker`.
    pub role: RoleSetting,
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub rootfs: RootfsConfig,
    pub registry: RegistryConfig,
    /// Settings merged into each distro's own config (used by the distro drivers).
    pub distro: DistroConfig,
    pub join: JoinConfig,
    pub upgrade: UpgradeConfig,
    pub preflight: PreflightConfig,
    /// Write `/run/cluster-api/bootstrap-success.complete` on success (Cluster API).
    pub cluster_api_sentinel: bool,
    /// How long `up` waits for another running `up` before giving up.
    #[serde(with = "crate::duration_serde")]
    pub lock_wait: Duration,
    #[serde(skip)]
    resolved_secret: Option<Secret>,
    #[serde(skip)]
    resolved_registry_password: Option<Secret>,
    #[serde(skip)]
    resolved_push_password: Option<Secret>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: RoleSetting::Auto,
            node: NodeConfig::default(),
            cluster: ClusterConfig::default(),
            rootfs: RootfsConfig::default(),
            registry: RegistryConfig::default(),
            distro: DistroConfig::default(),
            join: JoinConfig::default(),
            upgrade: UpgradeConfig::default(),
            preflight: PreflightConfig::default(),
            cluster_api_sentinel: false,
            lock_wait: Duration::from_secs(120),
            resolved_secret: None,
            resolved_registry_password: None,
            resolved_push_password: None,
        }
    }
}

/// This node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Kubernetes node name (RFC 1123); default: the host name.
    pub name: Option<String>,
    /// The address other nodes reach this one on; default: the default-route address.
    #[serde(
        with = "crate::parsed::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub address: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Taints as `key[=value]:Effect`.
    pub taints: Vec<String>,
}

/// The cluster this node belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The cluster's name, the same on every node: it salts the join keys, so one list
    /// of guessed secrets cannot be tried against every cluster. Required with a join
    /// secret.
    pub name: Option<String>,
    /// Controller addresses or names; `[0]` initialises, the others join it.
    pub controllers: Vec<String>,
    /// API endpoint `host:port` (VIP or load balancer); default `controllers[0]:6443`.
    pub endpoint: Option<String>,
    /// The pre-shared join secret (prefer `join_secret_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_secret: Option<Secret>,
    /// A file holding the join secret; must not be readable by group or others.
    pub join_secret_file: Option<PathBuf>,
    #[serde(
        with = "crate::parsed::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub pod_cidr: Option<IpNet>,
    #[serde(
        with = "crate::parsed::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_cidr: Option<IpNet>,
    /// Whether controllers also run workloads; unset, each distro's default (k3s: yes;
    /// k0s and kubeadm: only on a one-node cluster).
    pub controller_workloads: Option<bool>,
    /// How long `controllers[0]`, before it initialises, waits for the other controllers
    /// to say whether a cluster already exists (those that stay silent that long count
    /// as "no cluster").
    #[serde(with = "crate::duration_serde")]
    pub init_wait: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: None,
            controllers: Vec::new(),
            endpoint: None,
            join_secret: None,
            join_secret_file: None,
            pod_cidr: None,
            service_cidr: None,
            controller_workloads: None,
            init_wait: Duration::from_secs(120),
        }
    }
}

/// Where the cluster image comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RootfsConfig {
    /// The unpacked cluster image.
    pub dir: PathBuf,
    /// An archive to unpack into `dir`: a host path, or an `https://` URL.
    pub archive: Option<PathBuf>,
    /// The archive's expected SHA-256 (required for a URL, unless `URL.sha256` is there).
    pub sha256: Option<String>,
    /// Allow an `http://` archive URL (the SHA-256 is still checked).
    pub insecure_http: bool,
    /// A PEM file of CA certificates trusted for the archive URL, besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl Default for RootfsConfig {
    fn default() -> Self {
        RootfsConfig {
            dir: PathBuf::from("/var/lib/bootstrap/rootfs"),
            archive: None,
            sha256: None,
            insecure_http: false,
            ca_file: None,
        }
    }
}

/// The local image registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub enabled: bool,
    pub domain: String,
    pub port: u16,
    /// Run the registry on every controller instead of the first only.
    pub ha: bool,
    /// With `password_file`: the registry asks for basic auth, and every runtime is
    /// given these credentials.
    pub username: Option<String>,
    /// The registry password (8 to 71 bytes); must not be readable by group or others.
    pub password_file: Option<PathBuf>,
    /// Pushing, off unless set: a second, writable registry on loopback that asks for
    /// these credentials. The registry every node pulls from is always read-only.
    pub push: Option<RegistryPushConfig>,
}

/// The writable registry for pushes (`registry.push`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryPushConfig {
    /// The user pushes authenticate as.
    pub username: String,
    /// The push password (8 to 71 bytes); must not be readable by group or others.
    pub password_file: PathBuf,
    /// The port it listens on, on loopback only.
    #[serde(default = "default_push_port")]
    pub port: u16,
}

/// The push registry's port unless `registry.push.port` says otherwise.
pub const DEFAULT_PUSH_PORT: u16 = 5001;

fn default_push_port() -> u16 {
    DEFAULT_PUSH_PORT
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            enabled: true,
            domain: "sea.hub".to_owned(),
            port: 5000,
            ha: false,
            username: None,
            password_file: None,
            push: None,
        }
    }
}

/// Free-form settings merged into each distro's upstream config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistroConfig {
    pub k3s: BTreeMap<String, serde_json::Value>,
    pub k0s: BTreeMap<String, serde_json::Value>,
    pub kubeadm: BTreeMap<String, serde_json::Value>,
}

/// The join service and client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinConfig {
    pub port: u16,
    #[serde(with = "crate::duration_serde")]
    pub timeout: Duration,
    #[serde(with = "crate::duration_serde")]
    pub token_ttl: Duration,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            port: 7443,
            timeout: Duration::from_secs(30 * 60),
            token_ttl: Duration::from_secs(60 * 60),
        }
    }
}

/// How a fleet upgrades itself (`bootstrap upgrade` on every node at once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeConfig {
    /// Workers upgrading at the same time, once every controller has (the join
    /// services enforce the value of the controller they run on).
    pub max_unavailable: u32,
    /// How long `upgrade` waits for its turn before giving up.
    #[serde(with = "crate::duration_serde")]
    pub wait: Duration,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            max_unavailable: 1,
            wait: Duration::from_secs(60 * 60),
        }
    }
}

/// Preflight overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreflightConfig {
    /// Checks whose failure is reported but does not stop `up`.
    pub ignore: Vec<String>,
}

/// The shortest lifetime of a minted join token (`join.token_ttl`, `token create --ttl`).
pub const TOKEN_TTL_MIN: Duration = Duration::from_secs(60);
/// The longest lifetime of a minted join token: a leaked one is good for no longer.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(24 * 3600);

/// Whether `ttl` is a lifetime join tokens may have; `Err` says what is expected.
pub fn check_token_ttl(ttl: Duration) -> Result<(), String> {
    if (TOKEN_TTL_MIN..=TOKEN_TTL_MAX).contains(&ttl) {
        Ok(())
    } else {
        // humantime would write 24h as "1day".
        Err(format!(
            "expected a duration from 1m to 24h, got {}",
            humantime::format_duration(ttl)
        ))
    }
}

/// Ports a distro binds on some node; the registry and join service must not take them.
const RESERVED_PORTS: [u16; 9] = [2379, 2380, 6443, 6444, 8132, 9443, 10250, 10257, 10259];

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, such as `cluster.pod_cidr`.
    pub field: String,
    pub message: String,
    /// Where the value came from (file, environment variable, flag), when known.
    pub origin: Option<String>,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)?;
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        Ok(())
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: YAML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<FieldError>),
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// The join secret, read from `cluster.join_secret` or `cluster.join_secret_file`.
    pub fn join_secret(&self) -> Option<&Secret> {
        self.resolved_secret.as_ref()
    }

    /// The name the join keys are salted with: `cluster.name`, or where none is set
    /// (a controller whose join secret `up` made itself)
    /// [`DEFAULT_CLUSTER_NAME`].
    pub fn cluster_name(&self) -> &str {
        self.cluster.name.as_deref().unwrap_or(DEFAULT_CLUSTER_NAME)
    }

    /// The registry's credentials, when `registry.username` and `password_file` are set.
    pub fn registry_credentials(&self) -> Option<(String, Secret)> {
        let user = self.registry.username.clone()?;
        Some((user, self.resolved_registry_password.clone()?))
    }

    /// The push registry's credentials, when `registry.push` is set. They are never
    /// handed to runtimes or put in join material: they can replace images.
    pub fn registry_push_credentials(&self) -> Option<(String, Secret)> {
        let push = self.registry.push.as_ref()?;
        Some((push.username.clone(), self.resolved_push_password.clone()?))
    }

    /// Whether other nodes take part (controllers listed).
    pub fn is_multi_node(&self) -> bool {
        !self.cluster.controllers.is_empty()
    }

    /// The effective configuration as YAML, secrets redacted.
    pub fn to_redacted_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
