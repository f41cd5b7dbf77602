//! Manual joins (bare metal): a controller prints one line — its join service's address,
//! the pin of its key and a short-lived credential for one role — and the new node joins
//! with it instead of the cluster's join secret.
//!
//! `bootstrap-join://ADDR:PORT/?role=worker&pin=<sha256 hex>&credential=<id>.<secret>`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::{credential_key, JoinKeys};
use crate::distro::JoinRole;
use crate::secret::Secret;

/// Where a controller keeps the credentials it handed out (0600).
pub const CREDENTIALS_FILE: &str = "/var/lib/bootstrap/join/credentials.json";
const SCHEME: &str = "bootstrap-join://";

/// A parsed join line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinLine {
    pub address: String,
    pub role: JoinRole,
    pub pin: [u8; 32],
    pub id: String,
    pub secret: Secret,
}

impl JoinLine {
    /// The line's text (it holds a secret: print it, never log it).
    pub fn text(&self) -> String {
        format!(
            "{SCHEME}{}/?role={}&pin={}&credential={}.{}",
            self.address,
            self.role,
            hex::encode(self.pin),
            self.id,
            self.secret.expose()
        )
    }

    /// Parses a line; the error says which part is wrong (never echoing the secret).
    pub fn parse(text: &str) -> Result<JoinLine, String> {
        let rest = text
            .trim()
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("a join line starts with {SCHEME}"))?;
        let (address, query) = rest
            .split_once("/?")
            .ok_or("a join line is ADDR:PORT/?role=…&pin=…&credential=…")?;
        if crate::validate::endpoint(address).is_err() {
            return Err(format!("{address:?} is not an address:port"));
        }
        let mut role = None;
        let mut pin = None;
        let mut credential = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("role", "worker")) => role = Some(JoinRole::Worker),
                Some(("role", "controller")) => role = Some(JoinRole::Controller),
                Some(("pin", hex_pin)) => {
                    let bytes = hex::decode(hex_pin).map_err(|_| "pin is not hex")?;
                    pin = Some(
                        <[u8; 32]>::try_from(bytes.as_slice())
                            .map_err(|_| "pin is not a SHA-256 digest")?,
                    );
                }
                Some(("credential", value)) => credential = Some(value.to_owned()),
                _ => return Err("unknown part in the join line".into()),
            }
        }
        let (id, secret) = credential
            .as_deref()
            .and_then(|c| c.split_once('.'))
            .filter(|(id, secret)| !id.is_empty() && secret.len() >= 32)
            .ok_or("the credential is missing or malformed")?;
        Ok(JoinLine {
            address: address.to_owned(),
            role: role.ok_or("role=worker or role=controller is missing")?,
            pin: pin.ok_or("pin is missing")?,
            id: id.to_owned(),
            secret: Secret::new(secret),
        })
    }

    /// The keys a joiner uses with this line.
    pub fn keys(&self) -> JoinKeys {
        JoinKeys::from_credential(self.pin, &self.secret)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    secret: String,
    role: JoinRole,
    /// Seconds since the Unix epoch.
    expires: u64,
    /// Join material went out for it: a line works once.
    #[serde(default)]
    used: bool,
}

/// A join line as `token list` shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineInfo {
    pub id: String,
    pub role: JoinRole,
    /// Seconds since the Unix epoch.
    pub expires: u64,
    pub used: bool,
}

/// Whether `id` has the shape `token create` gives ids (8 hex digits): anything else is
/// refused before the file is read.
fn plausible_id(id: &str) -> bool {
    id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The credentials a controller handed out, in a 0600 file (a real path).
pub struct CredentialStore {
    pub file: PathBuf,
}

impl CredentialStore {
    fn read(&self) -> BTreeMap<String, Stored> {
        std::fs::read(&self.file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// A new credential for `role` living `ttl`; expired ones are dropped on the way.
    pub fn add(&self, role: JoinRole, ttl: Duration) -> std::io::Result<(String, Secret)> {
        let mut all = self.read();
        let now = super::unix_now();
        all.retain(|_, c| c.expires > now);
        let id = crate::random::hex(4)?;
        let secret = crate::random::hex(24)?;
        all.insert(
            id.clone(),
            Stored {
                secret: secret.clone(),
                role,
                expires: now + ttl.as_secs(),
                used: false,
            },
        );
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.write(&all)?;
        Ok((id, Secret::new(secret)))
    }

    fn write(&self, all: &BTreeMap<String, Stored>) -> std::io::Result<()> {
        crate::host::temp::replace(&self.file, &serde_json::to_vec(all)?, 0o600)
    }

    /// The live join lines (expired ones are left out).
    pub fn list(&self) -> Vec<LineInfo> {
        let now = super::unix_now();
        self.read()
            .into_iter()
            .filter(|(_, c)| c.expires > now)
            .map(|(id, c)| LineInfo {
                id,
                role: c.role,
                expires: c.expires,
                used: c.used,
            })
            .collect()
    }

    /// Removes join line `id`; `Ok(false)` when there is none by that id.
    pub fn revoke(&self, id: &str) -> std::io::Result<bool> {
        let mut all = self.read();
        let now = super::unix_now();
        all.retain(|_, c| c.expires > now);
        let found = all.remove(id).is_some();
        self.write(&all)?;
        Ok(found)
    }
}

impl super::server::Credentials for CredentialStore {
    fn lookup(&self, id: &str) -> Option<(ring::hmac::Key, JoinRole)> {
        if !plausible_id(id) {
            return None;
        }
        let stored = self.read().remove(id)?;
        (stored.expires > super::unix_now())
            .then(|| (credential_key(&Secret::new(stored.secret)), stored.role))
    }

    fn used(&self, id: &str) -> bool {
        plausible_id(id) && self.read().get(id).is_some_and(|c| c.used)
    }

    fn consume(&self, id: &str) {
        let mut all = self.read();
        if let Some(stored) = all.get_mut(id) {
            stored.used = true;
            if let Err(e) = self.write(&all) {
                log::warn!(
                    "cannot mark join line {id} used in {}: {e}",
                    self.file.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::server::Credentials;

    #[test]
    fn lines_round_trip_and_bad_ones_say_why() {
        let line = JoinLine {
            address: "10.0.0.10:7443".into(),
            role: JoinRole::Worker,
            pin: [7u8; 32],
            id: "abcd1234".into(),
            secret: Secret::new("f".repeat(48)),
        };
        assert_eq!(JoinLine::parse(&line.text()).unwrap(), line);
        let e = JoinLine::parse("https://x").unwrap_err();
        assert!(e.contains("bootstrap-join://"), "{e}");
        let short = line.text().replace(&"f".repeat(48), "ff");
        let e = JoinLine::parse(&short).unwrap_err();
        assert!(e.contains("credential") && !e.contains("ff"), "{e}");
    }

    #[test]
    fn stored_credentials_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore {
            file: dir.path().join("c.json"),
        };
        let (id, _) = store
            .add(JoinRole::Worker, Duration::from_secs(600))
            .unwrap();
        assert_eq!(store.lookup(&id).map(|(_, r)| r), Some(JoinRole::Worker));
        let (old, _) = store.add(JoinRole::Worker, Duration::from_secs(0)).unwrap();
        assert!(store.lookup(&old).is_none());
        assert!(store.lookup("nope").is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store.file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_symlink_planted_at_the_old_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let store = CredentialStore {
            file: dir.path().join("credentials.json"),
        };
        std::os::unix::fs::symlink(&victim, dir.path().join("credentials.tmp")).unwrap();
        let (id, _) = store
            .add(JoinRole::Worker, Duration::from_secs(600))
            .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&store.file)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(store.lookup(&id).is_some());
    }
}
