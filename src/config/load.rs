//! Loading: the layers (defaults, earlier join line, file, environment, flags) as
//! figment providers, merged and extracted, with errors that name each field's origin.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Yaml};
use figment::{Figment, Metadata, Profile, Provider};

use super::checks::err;
use super::{Config, ConfigError, FieldError, DEFAULT_CONFIG_PATH, ENV_PREFIX};
use crate::host::Host;

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
        // The crash tests' switches share the prefix (so no child sees them); not config.
        .filter(|(k, _)| !crate::fault::owns_env(k))
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
