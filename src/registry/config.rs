//! The distribution registry's `config.yml`, rendered from typed structs.
//!
//! The structs mirror the registry's configuration schema (distribution 2.8,
//! `configuration.md`) for the parts bootstrap sets; serde_yaml writes them, so a path or
//! realm can never break the YAML. The registry ignores keys it does not know, so the
//! golden file and the real-registry test are what hold the names to the schema.
//!
//! Every node mirrors docker.io, registry.k8s.io … to this registry, so whoever can push
//! to it replaces the system images of the whole cluster: it is read-only unless told
//! otherwise (seeding writes its storage directly, not through the API), and it listens
//! on one address, never on all of them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::{CERT_FILE, DEFAULT_PORT, KEY_FILE, STORAGE_DIR};

/// Why `config.yml` could not be rendered; names the field involved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryConfigError {
    #[error("registry {field}: {path} is not an absolute path")]
    NotAbsolute { field: &'static str, path: PathBuf },
    #[error("registry {field}: {path} is not valid UTF-8")]
    NotUtf8 { field: &'static str, path: PathBuf },
    #[error("registry {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("registry config.yml could not be written as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// HTTP basic authentication against an htpasswd file (bcrypt entries only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtpasswdAuth {
    /// The realm clients are told in `WWW-Authenticate`.
    pub realm: String,
    /// The htpasswd file. It must exist before the registry starts: a missing one is
    /// created by the registry with a random password printed to its log.
    pub path: PathBuf,
}

/// What bootstrap sets in the registry's `config.yml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The one address to listen on (the registry takes a single `http.addr`).
    pub listen_address: IpAddr,
    /// The port to listen on.
    pub port: u16,
    /// Filesystem storage root (`storage.filesystem.rootdirectory`).
    pub storage_dir: PathBuf,
    /// The serving certificate (PEM).
    pub certificate: PathBuf,
    /// The serving certificate's private key (PEM).
    pub key: PathBuf,
    /// Basic authentication; `None` lets every client pull.
    pub htpasswd: Option<HtpasswdAuth>,
    /// Refuse every write through the API (`storage.maintenance.readonly`): pushes,
    /// uploads and deletes get 405.
    pub read_only: bool,
    /// How often the registry checks its storage; `/v2/` answers 503 while it fails.
    pub health_interval: Duration,
    /// Failed checks in a row before the storage counts as unhealthy.
    pub health_threshold: u32,
}

impl Default for RegistryConfig {
    /// Loopback, port 5000, read-only, storage and TLS files at bootstrap's paths, no
    /// auth, storage checked every 10 s and unhealthy after 3 failures (the registry's
    /// own example values).
    fn default() -> Self {
        RegistryConfig {
            listen_address: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            storage_dir: PathBuf::from(STORAGE_DIR),
            certificate: PathBuf::from(CERT_FILE),
            key: PathBuf::from(KEY_FILE),
            htpasswd: None,
            read_only: true,
            health_interval: Duration::from_secs(10),
            health_threshold: 3,
        }
    }
}

impl RegistryConfig {
    /// `http.addr`: `ADDRESS:PORT` (IPv6 in brackets).
    pub fn http_addr(&self) -> Result<String, RegistryConfigError> {
        if self.listen_address.is_unspecified() {
            return Err(RegistryConfigError::Invalid {
                field: "listen address",
                reason: "must be one address, not every address (0.0.0.0 or ::)",
            });
        }
        Ok(SocketAddr::new(self.listen_address, self.port).to_string())
    }

    /// Every file the registry reads besides `config.yml` itself.
    pub fn files_read(&self) -> Vec<&Path> {
        let mut files = vec![self.certificate.as_path(), self.key.as_path()];
        if let Some(auth) = &self.htpasswd {
            files.push(&auth.path);
        }
        files
    }

    /// The `config.yml` text.
    pub fn render(&self) -> Result<String, RegistryConfigError> {
        if self.port == 0 {
            return Err(RegistryConfigError::Invalid {
                field: "port",
                reason: "must be between 1 and 65535",
            });
        }
        if self.health_threshold == 0 {
            return Err(RegistryConfigError::Invalid {
                field: "health threshold",
                reason: "must be at least 1",
            });
        }
        let auth = match &self.htpasswd {
            None => None,
            Some(htpasswd) => {
                if htpasswd.realm.trim().is_empty() {
                    return Err(RegistryConfigError::Invalid {
                        field: "htpasswd realm",
                        reason: "must not be empty",
                    });
                }
                Some(Auth {
                    htpasswd: Htpasswd {
                        realm: &htpasswd.realm,
                        path: absolute("htpasswd path", &htpasswd.path)?,
                    },
                })
            }
        };
        let document = Document {
            version: ConfigVersion,
            log: Log { level: "info" },
            storage: Storage {
                filesystem: Filesystem {
                    rootdirectory: absolute("storage directory", &self.storage_dir)?,
                },
                // Seeding adds blobs behind the registry's back; nothing may remove
                // them through the API either.
                delete: Enabled { enabled: false },
                maintenance: Maintenance {
                    readonly: Enabled {
                        enabled: self.read_only,
                    },
                },
            },
            http: Http {
                addr: self.http_addr()?,
                headers: BTreeMap::from([("X-Content-Type-Options", vec!["nosniff"])]),
                tls: Tls {
                    certificate: absolute("certificate", &self.certificate)?,
                    key: absolute("key", &self.key)?,
                    // 2.8 defaults to this; registries before 2.8 default to TLS 1.0.
                    minimumtls: "tls1.2",
                },
            },
            auth,
            health: Health {
                storagedriver: StorageDriverHealth {
                    enabled: true,
                    interval: go_duration(self.health_interval)?,
                    threshold: self.health_threshold,
                },
            },
        };
        Ok(serde_yaml::to_string(&document)?)
    }
}

/// A path for the config: absolute (the registry resolves relative ones against its
/// working folder, which systemd sets to `/`) and UTF-8.
fn absolute<'a>(field: &'static str, path: &'a Path) -> Result<&'a str, RegistryConfigError> {
    if !path.is_absolute() {
        return Err(RegistryConfigError::NotAbsolute {
            field,
            path: path.to_path_buf(),
        });
    }
    path.to_str().ok_or_else(|| RegistryConfigError::NotUtf8 {
        field,
        path: path.to_path_buf(),
    })
}

/// A duration as Go's `time.ParseDuration` reads it.
fn go_duration(duration: Duration) -> Result<String, RegistryConfigError> {
    if duration.is_zero() {
        return Err(RegistryConfigError::Invalid {
            field: "health interval",
            reason: "must be longer than zero",
        });
    }
    Ok(if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis().max(1))
    })
}

/// `version: 0.1`, written as the registry's documentation writes it. YAML reads that
/// as a number; the registry takes the scalar's text either way.
#[derive(Debug)]
struct ConfigVersion;

impl Serialize for ConfigVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(0.1)
    }
}

#[derive(Debug, Serialize)]
struct Document<'a> {
    version: ConfigVersion,
    log: Log,
    storage: Storage<'a>,
    http: Http<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<Auth<'a>>,
    health: Health,
}

#[derive(Debug, Serialize)]
struct Log {
    level: &'static str,
}

#[derive(Debug, Serialize)]
struct Storage<'a> {
    filesystem: Filesystem<'a>,
    delete: Enabled,
    maintenance: Maintenance,
}

#[derive(Debug, Serialize)]
struct Maintenance {
    readonly: Enabled,
}

#[derive(Debug, Serialize)]
struct Filesystem<'a> {
    rootdirectory: &'a str,
}

#[derive(Debug, Serialize)]
struct Enabled {
    enabled: bool,
}

#[derive(Debug, Serialize)]
struct Http<'a> {
    addr: String,
    headers: BTreeMap<&'static str, Vec<&'static str>>,
    tls: Tls<'a>,
}

#[derive(Debug, Serialize)]
struct Tls<'a> {
    certificate: &'a str,
    key: &'a str,
    minimumtls: &'static str,
}

#[derive(Debug, Serialize)]
struct Auth<'a> {
    htpasswd: Htpasswd<'a>,
}

#[derive(Debug, Serialize)]
struct Htpasswd<'a> {
    realm: &'a str,
    path: &'a str,
}

#[derive(Debug, Serialize)]
struct Health {
    storagedriver: StorageDriverHealth,
}

#[derive(Debug, Serialize)]
struct StorageDriverHealth {
    enabled: bool,
    interval: String,
    threshold: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    fn parse(text: &str) -> Value {
        serde_yaml::from_str(text).expect("rendered config is YAML")
    }

    fn at<'v>(value: &'v Value, path: &[&str]) -> &'v Value {
        path.iter().fold(value, |v, key| &v[*key])
    }

    #[test]
    fn default_config_has_every_required_setting() {
        let text = RegistryConfig::default().render().unwrap();
        assert!(text.starts_with("version: 0.1\n"), "{text}");
        let yaml = parse(&text);
        assert_eq!(
            at(&yaml, &["storage", "filesystem", "rootdirectory"]),
            "/var/lib/bootstrap/registry"
        );
        assert_eq!(
            at(&yaml, &["storage", "delete", "enabled"]),
            &Value::Bool(false)
        );
        assert_eq!(at(&yaml, &["http", "addr"]), "127.0.0.1:5000");
        assert_eq!(
            at(&yaml, &["storage", "maintenance", "readonly", "enabled"]),
            &Value::Bool(true),
            "read-only unless asked: {text}"
        );
        assert_eq!(
            at(&yaml, &["http", "tls", "certificate"]),
            "/etc/bootstrap/registry/server.crt"
        );
        assert_eq!(
            at(&yaml, &["http", "tls", "key"]),
            "/etc/bootstrap/registry/server.key"
        );
        assert_eq!(
            at(&yaml, &["http", "headers", "X-Content-Type-Options"]),
            &Value::Sequence(vec!["nosniff".into()])
        );
        assert_eq!(at(&yaml, &["log", "level"]), "info");
        let health = at(&yaml, &["health", "storagedriver"]);
        assert_eq!(health["enabled"], Value::Bool(true));
        assert_eq!(health["interval"], "10s");
        assert_eq!(health["threshold"], Value::from(3));
        assert!(yaml.get("auth").is_none(), "no auth unless asked: {text}");
    }

    #[test]
    fn htpasswd_auth_and_listen_address() {
        let config = RegistryConfig {
            listen_address: "::1".parse().unwrap(),
            port: 5443,
            read_only: false,
            htpasswd: Some(HtpasswdAuth {
                realm: "bootstrap registry: \"sea.hub\"".into(),
                path: "/etc/bootstrap/registry/htpasswd".into(),
            }),
            health_interval: Duration::from_millis(1500),
            ..RegistryConfig::default()
        };
        let yaml = parse(&config.render().unwrap());
        assert_eq!(at(&yaml, &["http", "addr"]), "[::1]:5443");
        assert_eq!(
            at(&yaml, &["storage", "maintenance", "readonly", "enabled"]),
            &Value::Bool(false)
        );
        assert_eq!(
            at(&yaml, &["auth", "htpasswd", "realm"]),
            "bootstrap registry: \"sea.hub\"",
            "quotes and colons in the realm survive as data"
        );
        assert_eq!(
            at(&yaml, &["auth", "htpasswd", "path"]),
            "/etc/bootstrap/registry/htpasswd"
        );
        assert_eq!(
            at(&yaml, &["health", "storagedriver", "interval"]),
            "1500ms"
        );
        assert_eq!(
            RegistryConfig {
                listen_address: "10.0.0.10".parse().unwrap(),
                ..RegistryConfig::default()
            }
            .http_addr()
            .unwrap(),
            "10.0.0.10:5000"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let relative = RegistryConfig {
            storage_dir: "var/lib/registry".into(),
            ..RegistryConfig::default()
        };
        let message = relative.render().unwrap_err().to_string();
        assert_eq!(
            message,
            "registry storage directory: var/lib/registry is not an absolute path"
        );

        let no_port = RegistryConfig {
            port: 0,
            ..RegistryConfig::default()
        };
        assert!(no_port.render().unwrap_err().to_string().contains("port"));

        let empty_realm = RegistryConfig {
            htpasswd: Some(HtpasswdAuth {
                realm: " ".into(),
                path: "/etc/htpasswd".into(),
            }),
            ..RegistryConfig::default()
        };
        assert!(empty_realm
            .render()
            .unwrap_err()
            .to_string()
            .contains("htpasswd realm"));

        // `:5000`, `0.0.0.0:5000` and `[::]:5000` would all listen on every address.
        for every in ["0.0.0.0", "::"] {
            let config = RegistryConfig {
                listen_address: every.parse().unwrap(),
                ..RegistryConfig::default()
            };
            let message = config.render().unwrap_err().to_string();
            assert!(message.contains("listen address"), "{message}");
        }

        let zero_interval = RegistryConfig {
            health_interval: Duration::ZERO,
            ..RegistryConfig::default()
        };
        assert!(zero_interval
            .render()
            .unwrap_err()
            .to_string()
            .contains("health interval"));
    }

    #[test]
    fn files_read_include_htpasswd_when_enabled() {
        let mut config = RegistryConfig::default();
        assert_eq!(config.files_read().len(), 2);
        config.htpasswd = Some(HtpasswdAuth {
            realm: "r".into(),
            path: "/etc/bootstrap/registry/htpasswd".into(),
        });
        assert_eq!(
            config.files_read()[2],
            Path::new("/etc/bootstrap/registry/htpasswd")
        );
    }
}
