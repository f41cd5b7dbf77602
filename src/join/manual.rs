//! Manual joins (bare metal): a controller prints one line — its join service's address,
//! the pin of its key and a short-lived credential for one role — and the new node joins
//! with it instead of the cluster's join secret.
//!
//! `bootstrap-join://ADDR:PORT/?role=worker&pin=<sha256 hex>&credential=<id>.<secret>`

use super::keys::JoinKeys;
use crate::distro::JoinRole;
use crate::secret::Secret;

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
            // Not echoed: in a garbled line the part before `/?` may hold the secret.
            return Err("the part before /? is not ADDR:PORT".into());
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_garbled_line_is_refused_without_echoing_its_secret() {
        // Found by fuzzing (fuzz/corpus/join_line/secret-before-the-query-found): the address
        // part ran on past the credential.
        let secret = "0123456789abcdef".repeat(3);
        let text = format!(
            "bootstrap-join://10.0.0.10:7443&role=worker&credential=a1b2.{secret}/?pin={}",
            "ab".repeat(32)
        );
        let e = JoinLine::parse(&text).unwrap_err();
        assert!(!e.contains(&secret), "{e}");
        assert!(e.contains("ADDR:PORT"), "{e}");
    }
}
