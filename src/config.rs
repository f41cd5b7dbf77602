//! Configuration: the schema, figment layering and validation.
//!
//! Layers, later wins: built-in defaults → `/etc/bootstrap/config.yaml` under the root (or
//! `--config FILE`) → `BOOTSTRAP_*` environment (`__` nests) → command-line flags. Unknown
//! keys are errors; every error names the field path, where the value came from and what
//! was expected, and all of them are reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Yaml};
use figment::{Figment, Metadata, Profile, Provider};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::secret::Secret;
use crate::validate;

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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
}

/// Where the cluster image comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RootfsConfig {
    /// The unpacked cluster image.
    pub dir: PathBuf,
    /// An archive to unpack into `dir`.
    pub archive: Option<PathBuf>,
    /// The archive's expected SHA-256.
    pub sha256: Option<String>,
}

impl Default for RootfsConfig {
    fn default() -> Self {
        RootfsConfig {
            dir: PathBuf::from("/var/lib/bootstrap/rootfs"),
            archive: None,
            sha256: None,
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

/// Values given as command-line flags, already shaped like the config tree.
pub type FlagLayer = serde_json::Map<String, serde_json::Value>;

/// Where to read configuration from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE` (a path on this machine, not under the root); required to exist.
    pub file: Option<PathBuf>,
    /// Environment variables to consider (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
    /// The flag layer.
    pub flags: FlagLayer,
    /// A manual join line stands in for the join secret on this node.
    pub manual_join: bool,
    /// What an earlier `up --join` settled on this node, as a layer just above the
    /// defaults (file, environment and flags still win).
    pub persisted: Option<FlagLayer>,
}

/// A YAML file as a figment provider named after its path.
struct YamlFile {
    path: PathBuf,
    text: String,
}

impl Provider for YamlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from(
            format!("{}", self.path.display()),
            figment::Source::File(self.path.clone()),
        )
    }

    fn data(&self) -> Result<figment::value::Map<Profile, figment::value::Dict>, figment::Error> {
        Yaml::string(&self.text).data()
    }
}

/// Loads, layers and validates the configuration.
pub fn load(host: &dyn Host, sources: &Sources) -> Result<Config, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(persisted) = &sources.persisted {
        figment = figment.merge(PersistedProvider(persisted.clone()));
    }
    if let Some(file) = config_file(host, sources)? {
        figment = figment.merge(file);
    }
    let env: Vec<(String, String)> = sources
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .cloned()
        .collect();
    figment = figment.merge(EnvList { vars: env });
    figment = figment.merge(FlagProvider(sources.flags.clone()));

    let mut config: Config = figment.extract().map_err(|e| from_figment(&figment, e))?;
    let mut errors = config.check_fields();
    if sources.manual_join || sources.persisted.is_some() {
        errors.retain(|e| e.field != "cluster.join_secret_file");
    }
    match config.read_secret(host) {
        Ok(secret) => config.resolved_secret = secret,
        Err(e) => errors.push(e),
    }
    match config.read_registry_password(host) {
        Ok(password) => config.resolved_registry_password = password,
        Err(e) => errors.push(e),
    }
    match config.read_push_password(host) {
        Ok(password) => config.resolved_push_password = password,
        Err(e) => errors.push(e),
    }
    if config.resolved_push_password.is_some()
        && config.resolved_push_password == config.resolved_registry_password
    {
        // The pull password goes to every node and into join material.
        errors.push(err(
            "registry.push.password_file",
            "holds the same password as registry.password_file, which every node is given; pushing needs a password of its own",
        ));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        for e in &mut errors {
            e.origin = e.origin.take().or_else(|| origin_of(&figment, &e.field));
        }
        Err(ConfigError::Invalid(errors))
    }
}

/// The flag layer as a figment provider named "command-line flags".
struct FlagProvider(FlagLayer);

impl Provider for FlagProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
    }

    fn data(&self) -> Result<figment::value::Map<Profile, figment::value::Dict>, figment::Error> {
        Serialized::globals(&self.0).data()
    }
}

/// What an earlier `up --join` settled, as a figment provider.
struct PersistedProvider(FlagLayer);

impl Provider for PersistedProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named("the join line of an earlier `up --join`")
    }

    fn data(&self) -> Result<figment::value::Map<Profile, figment::value::Dict>, figment::Error> {
        Serialized::globals(&self.0).data()
    }
}

/// `BOOTSTRAP_A__B=v` variables as a figment provider.
struct EnvList {
    vars: Vec<(String, String)>,
}

impl Provider for EnvList {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment").interpolater(|_profile, keys| {
            let name = keys.join("__").to_ascii_uppercase();
            format!("{ENV_PREFIX}{name}")
        })
    }

    fn data(&self) -> Result<figment::value::Map<Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (key, value) in &self.vars {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.iter().any(String::is_empty) {
                continue;
            }
            let parsed: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            insert_path(&mut dict, &path, parsed);
        }
        Ok(Profile::Global.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = figment::value::Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = figment::value::Value::from(inner);
            }
        }
    }
}

fn config_file(host: &dyn Host, sources: &Sources) -> Result<Option<YamlFile>, ConfigError> {
    let (path, text) = match &sources.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            (path.clone(), text)
        }
        None => {
            let path = Path::new(DEFAULT_CONFIG_PATH);
            match host.read_string(path) {
                Ok(Some(text)) => (path.to_path_buf(), text),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(ConfigError::Read {
                        path: path.to_path_buf(),
                        source: std::io::Error::other(e.to_string()),
                    })
                }
            }
        }
    };
    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
        Ok(serde_yaml::Value::Null) => Ok(None),
        Ok(serde_yaml::Value::Mapping(_)) => Ok(Some(YamlFile { path, text })),
        Ok(_) => Err(ConfigError::Invalid(vec![FieldError {
            field: "(top level)".to_owned(),
            message: "expected a mapping of settings such as `role: controller`".to_owned(),
            origin: Some(path.display().to_string()),
        }])),
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let message = e.to_string();
            // serde_yaml appends " at line L column C"; we already say it.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            Err(ConfigError::Syntax {
                path,
                line,
                column,
                message,
            })
        }
    }
}

fn from_figment(figment: &Figment, error: figment::Error) -> ConfigError {
    let errors = error
        .into_iter()
        .map(|e| {
            let path = e.path.clone();
            let message = match &e.kind {
                figment::error::Kind::UnknownField(_, expected) => {
                    format!("unknown key; expected one of: {}", expected.join(", "))
                }
                figment::error::Kind::InvalidType(actual, expected) => {
                    format!("expected {expected}, got {actual}")
                }
                figment::error::Kind::InvalidValue(actual, expected) => {
                    format!("expected {expected}, got {actual}")
                }
                figment::error::Kind::UnknownVariant(name, expected) => {
                    format!("expected one of {}, got {name:?}", expected.join(", "))
                }
                other => other.to_string(),
            };
            let field = if path.is_empty() {
                "(top level)".to_owned()
            } else {
                path.join(".")
            };
            let origin = e
                .metadata
                .as_ref()
                .map(|m| {
                    let keys: Vec<&str> = path.iter().map(String::as_str).collect();
                    if matches!(m.source, Some(figment::Source::File(_)))
                        || m.name == "command-line flags"
                    {
                        m.name.to_string()
                    } else {
                        m.interpolate(&Profile::Default, &keys)
                    }
                })
                .or_else(|| origin_of(figment, &field));
            FieldError {
                field,
                message,
                origin,
            }
        })
        .collect();
    ConfigError::Invalid(errors)
}

fn origin_of(figment: &Figment, field: &str) -> Option<String> {
    let meta = figment.find_metadata(field)?;
    if meta.name.contains("Serialized") || meta.name.contains("Config") {
        return None;
    }
    if matches!(meta.source, Some(figment::Source::File(_)))
        || meta.name == "command-line flags"
        || meta.name.starts_with("the join line")
    {
        return Some(meta.name.to_string());
    }
    let keys: Vec<&str> = field.split('.').collect();
    Some(meta.interpolate(&Profile::Default, &keys))
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
        origin: None,
    }
}

fn expected(field: impl Into<String>, what: &str, got: &str) -> FieldError {
    err(field, format!("expected {what}, got {got:?}"))
}

fn check_host_path_field(errors: &mut Vec<FieldError>, field: &str, path: &Path) {
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        errors.push(expected(
            field,
            "an absolute path without `..`",
            &path.display().to_string(),
        ));
    }
}

impl Config {
    /// The join secret, read from `cluster.join_secret` or `cluster.join_secret_file`.
    pub fn join_secret(&self) -> Option<&Secret> {
        self.resolved_secret.as_ref()
    }

    /// The name the join keys are salted with: `cluster.name`, or where none is set
    /// (a controller whose join secret `up` made itself)
    /// [`crate::join::DEFAULT_CLUSTER_NAME`].
    pub fn cluster_name(&self) -> &str {
        self.cluster
            .name
            .as_deref()
            .unwrap_or(crate::join::DEFAULT_CLUSTER_NAME)
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

    /// Field-level checks that need nothing but the config itself.
    fn check_fields(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let node = &self.node;
        if let Some(name) = &node.name {
            if let Err(what) = validate::dns_subdomain(name) {
                errors.push(expected("node.name", what, name));
            }
        }
        for (key, value) in &node.labels {
            if let Err(what) = validate::label_key(key) {
                errors.push(expected(format!("node.labels.{key}"), what, key));
            } else if let Err(what) = validate::label_value(value) {
                errors.push(expected(format!("node.labels.{key}"), what, value));
            }
        }
        for (i, taint) in node.taints.iter().enumerate() {
            if let Err(what) = validate::taint(taint) {
                errors.push(expected(format!("node.taints[{i}]"), what, taint));
            }
        }

        let cluster = &self.cluster;
        let mut seen = BTreeSet::new();
        for (i, controller) in cluster.controllers.iter().enumerate() {
            if let Err(what) = validate::host(controller) {
                errors.push(expected(
                    format!("cluster.controllers[{i}]"),
                    what,
                    controller,
                ));
            } else if !seen.insert(controller.as_str()) {
                errors.push(err(
                    format!("cluster.controllers[{i}]"),
                    format!("{controller:?} is listed twice"),
                ));
            }
        }
        if let Some(endpoint) = &cluster.endpoint {
            if let Err(what) = validate::endpoint(endpoint) {
                errors.push(expected("cluster.endpoint", what, endpoint));
            }
        }
        match (&cluster.join_secret, &cluster.join_secret_file) {
            (Some(_), Some(_)) => errors.push(err(
                "cluster.join_secret",
                "set only one of cluster.join_secret and cluster.join_secret_file",
            )),
            (None, None) if self.is_multi_node() => errors.push(err(
                "cluster.join_secret_file",
                "a cluster with controllers listed needs a join secret: set cluster.join_secret_file (or cluster.join_secret)",
            )),
            (Some(secret), None) => {
                if let Err(what) = validate::join_secret(secret.expose()) {
                    errors.push(err("cluster.join_secret", format!("expected {what}")));
                }
            }
            (None, Some(path)) => check_host_path_field(&mut errors, "cluster.join_secret_file", path),
            (None, None) => {}
        }
        match &cluster.name {
            Some(name) => {
                if let Err(what) = validate::dns_subdomain(name) {
                    errors.push(expected("cluster.name", what, name));
                }
            }
            None if cluster.join_secret.is_some() || cluster.join_secret_file.is_some() => {
                errors.push(err(
                    "cluster.name",
                    "a cluster with a join secret needs a name, the same on every node: it salts the keys derived from the secret, so that one list of guessed secrets cannot be tried against every cluster",
                ))
            }
            None => {}
        }
        if self.role == RoleSetting::Worker && !self.is_multi_node() {
            errors.push(err(
                "role",
                "a worker needs a controller to join: list them in cluster.controllers",
            ));
        }
        self.check_cidrs(&mut errors);

        check_host_path_field(&mut errors, "rootfs.dir", &self.rootfs.dir);
        if let Some(archive) = &self.rootfs.archive {
            check_host_path_field(&mut errors, "rootfs.archive", archive);
        }
        if let Some(sha) = &self.rootfs.sha256 {
            if let Err(what) = validate::sha256_hex(sha) {
                errors.push(expected("rootfs.sha256", what, sha));
            }
        }

        match (&self.registry.username, &self.registry.password_file) {
            (Some(user), Some(path)) => {
                check_registry_user(&mut errors, "registry.username", user);
                check_host_path_field(&mut errors, "registry.password_file", path);
            }
            (Some(_), None) => errors.push(err(
                "registry.password_file",
                "registry.username needs registry.password_file",
            )),
            (None, Some(_)) => errors.push(err(
                "registry.username",
                "registry.password_file needs registry.username",
            )),
            (None, None) => {}
        }
        if let Some(push) = &self.registry.push {
            check_registry_user(&mut errors, "registry.push.username", &push.username);
            check_host_path_field(
                &mut errors,
                "registry.push.password_file",
                &push.password_file,
            );
            if !self.registry.enabled {
                errors.push(err(
                    "registry.push",
                    "pushing needs the local registry: set registry.enabled: true, or remove registry.push",
                ));
            }
        }
        if let Err(what) = validate::dns_subdomain(&self.registry.domain) {
            errors.push(expected("registry.domain", what, &self.registry.domain));
        }
        let push_port = self.registry.push.as_ref().map(|p| p.port);
        for (field, port) in [
            ("registry.port", Some(self.registry.port)),
            ("registry.push.port", push_port),
            ("join.port", Some(self.join.port)),
        ]
        .into_iter()
        .filter_map(|(field, port)| Some((field, port?)))
        {
            if port == 0 {
                errors.push(expected(field, "a port number from 1 to 65535", "0"));
            } else if RESERVED_PORTS.contains(&port) {
                errors.push(err(
                    field,
                    format!("port {port} is used by Kubernetes or the distro; choose another"),
                ));
            }
        }
        if self.registry.enabled && self.registry.port == self.join.port && self.join.port != 0 {
            errors.push(err(
                "join.port",
                format!("port {} is already registry.port", self.join.port),
            ));
        }
        if let Some(port) = push_port.filter(|p| *p != 0) {
            for (other, taken) in [
                ("registry.port", self.registry.port),
                ("join.port", self.join.port),
            ] {
                if port == taken {
                    errors.push(err(
                        "registry.push.port",
                        format!("port {port} is already {other}"),
                    ));
                }
            }
        }
        if let Err(what) = check_token_ttl(self.join.token_ttl) {
            errors.push(err("join.token_ttl", what));
        }
        for (i, name) in self.preflight.ignore.iter().enumerate() {
            if !crate::preflight::CHECK_NAMES.contains(&name.as_str()) {
                errors.push(expected(
                    format!("preflight.ignore[{i}]"),
                    &format!("one of {}", crate::preflight::CHECK_NAMES.join(", ")),
                    name,
                ));
            }
        }
        errors
    }

    fn check_cidrs(&self, errors: &mut Vec<FieldError>) {
        let cidrs = [
            ("cluster.pod_cidr", self.cluster.pod_cidr),
            ("cluster.service_cidr", self.cluster.service_cidr),
        ];
        for (field, cidr) in cidrs {
            let Some(cidr) = cidr else { continue };
            if cidr.trunc() != cidr {
                errors.push(err(
                    field,
                    format!(
                        "expected a network address, got {cidr} (host bits set; did you mean {}?)",
                        cidr.trunc()
                    ),
                ));
            }
            let mut addresses: Vec<(String, IpAddr)> = Vec::new();
            if let Some(a) = self.node.address {
                addresses.push(("node.address".to_owned(), a));
            }
            for (i, c) in self.cluster.controllers.iter().enumerate() {
                if let Ok(a) = c.parse::<IpAddr>() {
                    addresses.push((format!("cluster.controllers[{i}]"), a));
                }
            }
            for (name, address) in addresses {
                if cidr.contains(&address) {
                    errors.push(err(
                        field,
                        format!(
                            "{cidr} contains {name} {address}; pick a range the nodes are not in"
                        ),
                    ));
                }
            }
        }
        if let (Some(pod), Some(svc)) = (self.cluster.pod_cidr, self.cluster.service_cidr) {
            if pod.contains(&svc.network()) || svc.contains(&pod.network()) {
                errors.push(err(
                    "cluster.service_cidr",
                    format!("{svc} overlaps cluster.pod_cidr {pod}"),
                ));
            }
        }
    }

    fn read_secret(&self, host: &dyn Host) -> Result<Option<Secret>, FieldError> {
        if let Some(secret) = &self.cluster.join_secret {
            return Ok(Some(secret.clone()));
        }
        let Some(path) = &self.cluster.join_secret_file else {
            return Ok(None);
        };
        const FIELD: &str = "cluster.join_secret_file";
        let Some(secret) = read_secret_file(host, FIELD, path, "a join secret")? else {
            return Ok(None);
        };
        if let Err(what) = validate::join_secret(secret.expose()) {
            return Err(err(FIELD, format!("{}: expected {what}", path.display())));
        }
        Ok(Some(secret))
    }

    fn read_registry_password(&self, host: &dyn Host) -> Result<Option<Secret>, FieldError> {
        let (Some(_), Some(path)) = (&self.registry.username, &self.registry.password_file) else {
            return Ok(None);
        };
        read_registry_password(host, "registry.password_file", path)
    }

    fn read_push_password(&self, host: &dyn Host) -> Result<Option<Secret>, FieldError> {
        let Some(push) = &self.registry.push else {
            return Ok(None);
        };
        read_registry_password(host, "registry.push.password_file", &push.password_file)
    }
}

/// A registry user name as htpasswd and basic auth take it.
fn check_registry_user(errors: &mut Vec<FieldError>, field: &str, user: &str) {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        errors.push(expected(field, "1-64 of [A-Za-z0-9._-]", user));
    }
}

/// A registry password from its file: private, and 8 to 71 bytes.
fn read_registry_password(
    host: &dyn Host,
    field: &str,
    path: &Path,
) -> Result<Option<Secret>, FieldError> {
    let Some(password) = read_secret_file(host, field, path, "a registry password")? else {
        return Ok(None);
    };
    // bcrypt uses at most 72 bytes; a longer password would be cut without a word.
    if password.len() < 8 || password.len() > 71 {
        return Err(err(
            field,
            format!(
                "{}: expected a password of 8 to 71 bytes, got {}",
                path.display(),
                password.len()
            ),
        ));
    }
    Ok(Some(password))
}

/// A secret from a file: absolute, private (no group or other access), UTF-8, one line.
/// `Ok(None)` when the path itself is invalid (reported by the field checks).
fn read_secret_file(
    host: &dyn Host,
    field: &str,
    path: &Path,
    what: &str,
) -> Result<Option<Secret>, FieldError> {
    if crate::host::check_host_path(path).is_err() {
        return Ok(None);
    }
    let info = host
        .metadata(path)
        .map_err(|e| err(field, e.to_string()))?
        .ok_or_else(|| err(field, format!("{} does not exist", path.display())))?;
    if info.mode & 0o077 != 0 {
        return Err(err(
            field,
            format!(
                "{} has mode {:04o}: {what} must not be readable or writable by group or others (chmod 600)",
                path.display(),
                info.mode
            ),
        ));
    }
    let bytes = host
        .read(path)
        .map_err(|e| err(field, e.to_string()))?
        .unwrap_or_default();
    let text = String::from_utf8(bytes)
        .map_err(|_| err(field, format!("{} is not UTF-8 text", path.display())))?;
    Ok(Some(Secret::new(text.trim_end_matches(['\n', '\r']))))
}
