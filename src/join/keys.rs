//! Keys derived from the pre-shared join secret: the join service's TLS identity (an
//! Ed25519 key every controller derives alike, so joiners pin it without having seen it)
//! and the key that authenticates requests and responses.
//!
//! PBKDF2 (a deliberate cost per guess, since the server's public key — a function of the
//! secret — is visible to anyone who connects) stretches the secret into a master key;
//! HKDF splits it into independent subkeys.

use ring::{hkdf, hmac, pbkdf2, signature::KeyPair};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

const PBKDF2_ROUNDS: u32 = 100_000;
const SALT: &[u8] = b"bootstrap join v1";

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
    /// Everything, from the cluster's join secret (controllers and joiners alike).
    pub fn from_secret(secret: &Secret) -> JoinKeys {
        let mut master = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(PBKDF2_ROUNDS).expect("non-zero"),
            SALT,
            secret.expose().as_bytes(),
            &mut master,
        );
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
        JoinKeys {
            server_pkcs8: Some(pkcs8),
            pin: pin_of_spki(&spki),
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac),
            node_base: Some(hmac::Key::new(hmac::HMAC_SHA256, &node_base)),
        }
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

/// The request key of a manual-join credential.
pub fn credential_key(credential: &Secret) -> hmac::Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(credential.expose().as_bytes());
    hmac::Key::new(hmac::HMAC_SHA256, &expand(&prk, b"manual join credential"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_secret_gives_the_same_identity_and_another_does_not() {
        let a = JoinKeys::from_secret(&Secret::new("a".repeat(40)));
        let b = JoinKeys::from_secret(&Secret::new("a".repeat(40)));
        let c = JoinKeys::from_secret(&Secret::new("b".repeat(40)));
        assert_eq!(a.pin(), b.pin());
        assert_ne!(a.pin(), c.pin());
        assert_eq!(a.server_pkcs8(), b.server_pkcs8());
        assert!(a.pin_text().starts_with("sha256:"));
    }

    #[test]
    fn node_credentials_are_per_node_and_need_the_secret() {
        let a = JoinKeys::from_secret(&Secret::new("a".repeat(40)));
        let w1 = a.node_secret("w1").unwrap();
        assert_eq!(Some(&w1), a.node_secret("w1").as_ref());
        assert_ne!(Some(&w1), a.node_secret("w2").as_ref());
        let other = JoinKeys::from_secret(&Secret::new("b".repeat(40)));
        assert_ne!(Some(&w1), other.node_secret("w1").as_ref());
        assert!(JoinKeys::from_credential(a.pin(), &w1)
            .node_secret("w1")
            .is_none());
    }

    #[test]
    fn the_derived_key_is_a_valid_pkcs8_ed25519_key() {
        let keys = JoinKeys::from_secret(&Secret::new("s".repeat(40)));
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(
            keys.server_pkcs8().unwrap(),
        )
        .unwrap();
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        assert_eq!(pin_of_spki(&spki), keys.pin());
    }
}
