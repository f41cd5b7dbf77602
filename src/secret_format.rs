//! The join secret's generated form and the rule every join secret must pass.
//!
//! `bootstrap secret generate` (and `up` on a first controller with no secret) makes
//! `bjs1-<64 hex digits: 256 random bits>-<8 hex digits: checksum>`. The checksum lets a
//! typo be caught where the secret is read, instead of as joins that fail for
//! `join.timeout`. A typed secret is accepted only when a conservative estimate
//! ([`crate::entropy`]) gives it at least [`MIN_BITS`] bits; the examples bootstrap
//! once published are refused by name.

use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// What every generated secret starts with.
pub const PREFIX: &str = "bjs1-";
/// The random part's length in bytes.
const RANDOM_BYTES: usize = 32;
/// The checksum's length in bytes.
const CHECKSUM_BYTES: usize = 4;
/// The least entropy a typed join secret must have.
pub const MIN_BITS: f64 = 128.0;

/// Join secrets that were printed in bootstrap's README and cloud-init examples: copied
/// as they are, they would be every such cluster's secret.
const PUBLISHED: [&str; 1] = ["3f9c0d1e5b7a48c2e6d0f1a3b5c7e9d1f3a5b7c9e1d3f5a7b9c1e3d5f7a9b1c3"];

/// What the README and cloud-init examples now show in place of a secret; refused too.
pub const PLACEHOLDER: &str = "REPLACE-WITH-THE-OUTPUT-OF-bootstrap-secret-generate";

/// A new secret in the generated form, from the kernel's CSPRNG.
pub fn generate() -> std::io::Result<Secret> {
    let random = crate::random::hex(RANDOM_BYTES)?;
    Ok(Secret::new(format!(
        "{PREFIX}{random}-{}",
        checksum(&random)
    )))
}

fn checksum(random_hex: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"bootstrap join secret v1:")
        .chain_update(random_hex.as_bytes())
        .finalize();
    hex::encode(&digest[..CHECKSUM_BYTES])
}

/// Whether `secret` may be a join secret; `Err` says what was expected, without
/// repeating the secret.
pub fn check(secret: &str) -> Result<(), String> {
    const GENERATE: &str = "generate one with `bootstrap secret generate`";
    // Any case: an upper-cased copy is another secret, not the generated one.
    let generated = secret
        .get(..PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(PREFIX));
    if generated {
        return check_generated(secret)
            .map_err(|why| format!("a secret from `bootstrap secret generate`: {why}"));
    }
    if PUBLISHED.contains(&secret) || secret == PLACEHOLDER {
        return Err(format!(
            "a secret of your own: this is the example printed in bootstrap's README and cloud-init files; {GENERATE}"
        ));
    }
    let bits = crate::entropy::estimate_bits(secret);
    if bits < MIN_BITS {
        return Err(format!(
            "a secret with at least {MIN_BITS:.0} bits of entropy: this one is estimated at {bits:.0} (words, repeats, sequences and few kinds of characters count little); {GENERATE}, or use 32 random bytes (`openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

/// The prefix, the random hex, `-`, the checksum.
fn check_generated(secret: &str) -> Result<(), String> {
    let expected_len = 2 * RANDOM_BYTES + 1 + 2 * CHECKSUM_BYTES;
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let (random, sum) = secret
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('-').filter(|_| rest.len() == expected_len))
        .filter(|(random, sum)| {
            random.len() == 2 * RANDOM_BYTES && lower_hex(random) && lower_hex(sum)
        })
        .ok_or_else(|| {
            format!(
                "{PREFIX}, {} lower-case hex digits, '-' and {} more; this one is {} characters long or has others (copied in part?)",
                2 * RANDOM_BYTES,
                2 * CHECKSUM_BYTES,
                secret.chars().count()
            )
        })?;
    if checksum(random) != sum {
        return Err("its checksum does not match: a character was changed (a typo?); copy it again from where it was generated".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_pass_and_a_typo_is_caught() {
        let secret = generate().unwrap();
        let text = secret.expose();
        assert_eq!(text.len(), 78, "{text}");
        assert!(text.starts_with("bjs1-"));
        assert_ne!(secret, generate().unwrap());
        assert_eq!(check(text), Ok(()));
        // Every single-character change is caught: in the random part, in the checksum.
        for at in PREFIX.len()..text.len() {
            if text.as_bytes()[at] == b'-' {
                continue;
            }
            for replacement in ['0', 'f', 'x'] {
                let mut typo: Vec<char> = text.chars().collect();
                if typo[at] == replacement {
                    continue;
                }
                typo[at] = replacement;
                let typo: String = typo.into_iter().collect();
                let why = check(&typo).unwrap_err();
                assert!(why.contains("bootstrap secret generate"), "{why}");
                assert!(!why.contains(&typo), "the secret is repeated: {why}");
            }
        }
        // Cut short, or with a character too many.
        assert!(check(&text[..text.len() - 1]).is_err());
        assert!(check(&format!("{text}0")).is_err());
        assert!(check(&text.to_ascii_uppercase()).is_err());
    }

    #[test]
    fn weak_and_published_secrets_are_refused() {
        for weak in [
            "correct horse battery staple 2024",
            "password password password password!",
            "0123456789abcdef0123456789abcdef",
            PLACEHOLDER,
        ] {
            let why = check(weak).unwrap_err();
            assert!(why.contains("bootstrap secret generate"), "{weak}: {why}");
        }
        let why = check(PUBLISHED[0]).unwrap_err();
        assert!(
            why.contains("example printed in bootstrap's README"),
            "{why}"
        );
        // Random hex of 32 bytes passes, as before.
        assert_eq!(check(&crate::random::hex(32).unwrap()), Ok(()));
    }
}
