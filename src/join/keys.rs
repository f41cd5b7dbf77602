//! Keys derived from the pre-shared join secret: the join service's TLS identity (an
//! Ed25519 key every controller derives alike, so joiners pin it without having seen it)
//! and the key that authenticates requests and responses.
//!
//! Argon2id stretches the secret into a master key — a deliberate cost in time and
//! memory per guess, since the server's public key, a function of the secret, is visible
//! to anyone who connects — salted with the cluster's name, so one list of guesses
//! cannot be tried against every cluster at once. HKDF splits the master key into
//! independent subkeys.

use argon2::{Algorithm, Argon2, Params, Version};
use ring::{hkdf, hmac, signature::KeyPair};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// HKDF's salt, and the manual credentials' (unchanged since v1).
const SALT: &[u8] = b"bootstrap join v1";
/// What the cluster name is prefixed with to make Argon2id's salt.
const KDF_SALT_PREFIX: &[u8] = b"bootstrap join v2 cluster ";
/// Argon2id's memory cost, KiB: 46 MiB, OWASP's first Argon2id setting (RFC 9106's
/// 64 MiB would lift the join service's peak memory over the 64 MiB that
/// scripts/bench-join.sh holds it to, for this one moment at its start).
pub const KDF_MEMORY_KIB: u32 = 46 * 1024;
/// Argon2id's passes over that memory (OWASP asks for 1 at this size).
pub const KDF_PASSES: u32 = 3;
/// Argon2id's lanes.
pub const KDF_LANES: u32 = 4;

pub use crate::config::DEFAULT_CLUSTER_NAME;

/// Why join keys could not be derived.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("join keys: Argon2id over the join secret failed: {0}")]
    Kdf(String),
}

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410); the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The SubjectPublicKeyInfo prefix of an Ed25519 public key; the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The join service's identity and the request key, as both sides derive them.
#[derive(Clone)]
pub struct JoinKeys {
    /// PKCS#8 of the server's Ed25519 key; `None` on a joiner that only has a pin.
    server_pkcs8: Option<Vec<u8>>,
    /// SHA-256 of the server's SubjectPublicKeyInfo: what joiners pin.
    pin: [u8; 32],
    /// Authenticates requests and responses (HMAC-SHA256).
    mac: hmac::Key,
    /// Derives each node's own credential; `None` on a joiner that only has a pin.
    node_base: Option<hmac::Key>,
}

/// The credential id prefix of a node's own credential: `node:<name>`.
pub const NODE_CREDENTIAL_PREFIX: &str = "node:";

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, info: &'static [u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let info = [info];
    let okm = prk
        .expand(&info, Len(32))
        .expect("32 bytes is a valid HKDF-SHA256 length");
    okm.fill(&mut out)
        .expect("the buffer has the requested length");
    out
}

/// SHA-256 of an SPKI, as a pin.
pub fn pin_of_spki(spki: &[u8]) -> [u8; 32] {
    Sha256::digest(spki).into()
}

impl JoinKeys {
    /// Everything, from the cluster's join secret and name (controllers and joiners
    /// alike). Costs Argon2id's 46 MiB and three passes: derive once per process.
    pub fn from_secret(secret: &Secret, cluster: &str) -> Result<JoinKeys, KeyError> {
        let master = master_key(secret, cluster)?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(&master);
        let seed = expand(&prk, b"server identity");
        let mac = expand(&prk, b"request authentication");
        let node_base = expand(&prk, b"node credentials");
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed);
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("any 32-byte seed is an Ed25519 key");
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        Ok(JoinKeys {
            server_pkcs8: Some(pkcs8),
            pin: pin_of_spki(&spki),
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac),
            node_base: Some(hmac::Key::new(hmac::HMAC_SHA256, &node_base)),
        })
    }

    /// A joiner holding a manual join line: the server's pin and a short-lived credential
    /// instead of the cluster secret.
    pub fn from_credential(pin: [u8; 32], credential: &Secret) -> JoinKeys {
        JoinKeys {
            server_pkcs8: None,
            pin,
            mac: credential_key(credential),
            node_base: None,
        }
    }

    /// The credential of node `name`: it lets that node, and only it, ask a join
    /// service to take it out of the cluster. Every holder of the join secret derives
    /// the same one, so any controller can check it without keeping a list.
    pub fn node_secret(&self, name: &str) -> Option<Secret> {
        let base = self.node_base.as_ref()?;
        Some(Secret::new(hex::encode(hmac::sign(base, name.as_bytes()))))
    }

    /// The server's private key (PKCS#8), on nodes that hold the secret.
    pub fn server_pkcs8(&self) -> Option<&[u8]> {
        self.server_pkcs8.as_deref()
    }

    /// The pin joiners check the server's key against.
    pub fn pin(&self) -> [u8; 32] {
        self.pin
    }

    /// The pin as text (`sha256:<hex>`).
    pub fn pin_text(&self) -> String {
        format!("sha256:{}", hex::encode(self.pin))
    }

    pub(crate) fn mac_key(&self) -> &hmac::Key {
        &self.mac
    }
}

/// `Argon2id(secret, salt = "bootstrap join v2 cluster " + cluster, 46 MiB, 3 passes,
/// 4 lanes, 32 bytes)`.
fn master_key(secret: &Secret, cluster: &str) -> Result<[u8; 32], KeyError> {
    let mut master = [0u8; 32];
    let params = Params::new(KDF_MEMORY_KIB, KDF_PASSES, KDF_LANES, Some(master.len()))
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let mut salt = KDF_SALT_PREFIX.to_vec();
    salt.extend_from_slice(cluster.as_bytes());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(secret.expose().as_bytes(), &salt, &mut master)
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    Ok(master)
}

/// The request key of a manual-join credential.
pub fn credential_key(credential: &Secret) -> hmac::Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(credential.expose().as_bytes());
    hmac::Key::new(hmac::HMAC_SHA256, &expand(&prk, b"manual join credential"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// (secret, cluster name) → keys, each derived once.
    type Derived = Vec<((String, String), &'static JoinKeys)>;

    /// Each derivation costs 46 MiB and over a hundred milliseconds: derive each once.
    fn keys(secret: &str, cluster: &str) -> &'static JoinKeys {
        static DERIVED: OnceLock<std::sync::Mutex<Derived>> = OnceLock::new();
        let mut derived = DERIVED.get_or_init(Default::default).lock().unwrap();
        let key = (secret.to_owned(), cluster.to_owned());
        if let Some((_, k)) = derived.iter().find(|(k, _)| *k == key) {
            return k;
        }
        let k: &'static JoinKeys = Box::leak(Box::new(
            JoinKeys::from_secret(&Secret::new(secret), cluster).unwrap(),
        ));
        derived.push((key, k));
        k
    }

    #[test]
    fn the_same_secret_and_cluster_give_the_same_identity_and_others_do_not() {
        let a = keys(&"a".repeat(40), "prod");
        let again = JoinKeys::from_secret(&Secret::new("a".repeat(40)), "prod").unwrap();
        let other_secret = keys(&"b".repeat(40), "prod");
        let other_cluster = keys(&"a".repeat(40), "staging");
        assert_eq!(a.pin(), again.pin());
        assert_eq!(a.server_pkcs8(), again.server_pkcs8());
        assert_ne!(a.pin(), other_secret.pin());
        assert_ne!(
            a.pin(),
            other_cluster.pin(),
            "the cluster name salts the keys"
        );
        assert!(a.pin_text().starts_with("sha256:"));
    }

    #[test]
    fn the_master_key_is_argon2id_salted_with_the_cluster_name() {
        // Argon2id as documented, written out independently of master_key's constants.
        let params = Params::new(47104, 3, 4, Some(32)).unwrap();
        let mut expected = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(
                b"s3cret-join",
                b"bootstrap join v2 cluster prod",
                &mut expected,
            )
            .unwrap();
        assert_eq!(
            master_key(&Secret::new("s3cret-join"), "prod").unwrap(),
            expected
        );
    }

    #[test]
    fn node_credentials_are_per_node_and_need_the_secret() {
        let a = keys(&"a".repeat(40), "prod");
        let w1 = a.node_secret("w1").unwrap();
        assert_eq!(Some(&w1), a.node_secret("w1").as_ref());
        assert_ne!(Some(&w1), a.node_secret("w2").as_ref());
        let other = keys(&"b".repeat(40), "prod");
        assert_ne!(Some(&w1), other.node_secret("w1").as_ref());
        assert!(JoinKeys::from_credential(a.pin(), &w1)
            .node_secret("w1")
            .is_none());
    }

    #[test]
    fn the_derived_key_is_a_valid_pkcs8_ed25519_key() {
        let keys = keys(&"a".repeat(40), "prod");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(
            keys.server_pkcs8().unwrap(),
        )
        .unwrap();
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        assert_eq!(pin_of_spki(&spki), keys.pin());
    }
}
