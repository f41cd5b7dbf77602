//! The local registry's files: `config.yml`, TLS certificates, htpasswd and the
//! systemd unit, rendered as data for plan steps to write.
//!
//! Air-gapped nodes pull every image from a CNCF distribution registry that bootstrap
//! runs on the first controller (every controller with `registry.ha`), serving the
//! storage that seeding fills, read-only. With `registry.push`, a second instance on
//! loopback serves the same storage writable, behind its own credentials. Nothing here
//! touches the host.

mod config;
mod htpasswd;
mod pki;
mod unit;

pub use config::{HtpasswdAuth, RegistryConfig, RegistryConfigError};
pub use htpasswd::{htpasswd_line, HtpasswdError, DEFAULT_BCRYPT_COST, MAX_PASSWORD_BYTES};
pub use pki::{
    generate_ca, generate_pki, issue_serving_cert, CertificateAuthority, PkiError, RegistryPki,
    ServerNames, ServingCertificate, BACKDATE, CA_COMMON_NAME, CA_VALIDITY, SERVING_VALIDITY,
};
pub use unit::RegistryUnit;

/// The registry's name on every node.
pub const DEFAULT_DOMAIN: &str = "sea.hub";
/// The registry's port.
pub const DEFAULT_PORT: u16 = 5000;
/// The registry's filesystem storage root.
pub const STORAGE_DIR: &str = "/var/lib/bootstrap/registry";
/// Where the registry's configuration, certificates and htpasswd live.
pub const CONFIG_DIR: &str = "/etc/bootstrap/registry";
/// The registry's `config.yml`.
pub const CONFIG_FILE: &str = "/etc/bootstrap/registry/config.yml";
/// The serving certificate.
pub const CERT_FILE: &str = "/etc/bootstrap/registry/server.crt";
/// The serving certificate's key.
pub const KEY_FILE: &str = "/etc/bootstrap/registry/server.key";
/// The cluster's registry CA certificate (containerd on every node trusts it).
pub const CA_CERT_FILE: &str = "/etc/bootstrap/registry/ca.crt";
/// The CA's key: kept on controllers only, to issue serving certificates.
pub const CA_KEY_FILE: &str = "/etc/bootstrap/registry/ca.key";
/// The htpasswd file, when authentication is on.
pub const HTPASSWD_FILE: &str = "/etc/bootstrap/registry/htpasswd";
/// Where bootstrap installs the registry binary from the cluster image.
pub const BINARY: &str = "/usr/local/bin/registry";
/// The registry's systemd unit.
pub const UNIT_NAME: &str = "bootstrap-registry.service";
/// With `registry.push`: the writable registry's `config.yml` (loopback only).
pub const PUSH_CONFIG_FILE: &str = "/etc/bootstrap/registry/config-push.yml";
/// With `registry.push`: the push credentials' htpasswd file.
pub const PUSH_HTPASSWD_FILE: &str = "/etc/bootstrap/registry/htpasswd-push";
/// With `registry.push`: the writable registry's unit.
pub const PUSH_UNIT_NAME: &str = "bootstrap-registry-push.service";
