//! The registry's htpasswd entry: `user:$2y$…`, bcrypt, the only format it accepts.

use crate::secret::Secret;

/// The bcrypt cost bootstrap uses. The registry checks the hash on every request (a
/// pull is a dozen), so cost is paid per layer; the password bootstrap generates is
/// random and long, which is what protects it, not the cost. Apache's `htpasswd -B`
/// uses 5.
pub const DEFAULT_BCRYPT_COST: u32 = 8;

/// The longest password bcrypt hashes in full.
pub const MAX_PASSWORD_BYTES: usize = 71;

/// Why an htpasswd entry could not be made; never shows the password.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("registry user name {user:?}: {reason}")]
    BadUser { user: String, reason: &'static str },
    #[error("registry password: {reason}")]
    BadPassword { reason: String },
    #[error("registry password could not be hashed: {0}")]
    Hash(#[from] bcrypt::BcryptError),
}

/// One htpasswd line, `user:$2y$cost$…`, without a line break; the file is such lines
/// each followed by `\n`. The `$2y$` prefix is Apache's; the registry (Go's bcrypt)
/// reads it as it reads `$2a$` and `$2b$`. The line is secret: its hash can be attacked
/// offline.
pub fn htpasswd_line(user: &str, password: &Secret, cost: u32) -> Result<Secret, HtpasswdError> {
    let bad_user = |reason| {
        Err(HtpasswdError::BadUser {
            user: user.to_string(),
            reason,
        })
    };
    if user.is_empty() {
        return bad_user("must not be empty");
    }
    if user.contains(':') {
        return bad_user("must not contain ':' (it ends the user name in htpasswd)");
    }
    if user.starts_with('#') {
        return bad_user("must not begin with '#' (htpasswd comment)");
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad_user("must not contain spaces or control characters");
    }
    if password.is_empty() {
        return Err(HtpasswdError::BadPassword {
            reason: "must not be empty".into(),
        });
    }
    // bcrypt reads 72 bytes, the terminating NUL included; refuse a longer password
    // rather than accept, unseen, every password that shares its first 71.
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(HtpasswdError::BadPassword {
            reason: format!(
                "is {} bytes; bcrypt uses at most {MAX_PASSWORD_BYTES}",
                password.len()
            ),
        });
    }
    let parts = bcrypt::non_truncating_hash_with_result(password.expose(), cost)?;
    Ok(Secret::new(format!(
        "{user}:{}",
        parts.format_for_version(bcrypt::Version::TwoY)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_verifies_with_bcrypt() {
        let password = Secret::new("correct horse battery staple");
        let line = htpasswd_line("bootstrap", &password, 4).unwrap();
        let (user, hash) = line.expose().split_once(':').unwrap();
        assert_eq!(user, "bootstrap");
        assert!(hash.starts_with("$2y$04$"), "{hash}");
        assert!(bcrypt::verify(password.expose(), hash).unwrap());
        assert!(!bcrypt::verify("wrong", hash).unwrap());
        assert!(!line.expose().contains('\n'));
        assert_eq!(format!("{line:?}"), crate::secret::REDACTED);
    }

    #[test]
    fn refuses_what_htpasswd_cannot_hold() {
        let password = Secret::new("pw");
        for user in ["", "a:b", "#x", "a b", "a\nb"] {
            assert!(
                matches!(
                    htpasswd_line(user, &password, 4),
                    Err(HtpasswdError::BadUser { .. })
                ),
                "{user:?}"
            );
        }
        let empty = htpasswd_line("u", &Secret::new(""), 4).unwrap_err();
        assert!(matches!(empty, HtpasswdError::BadPassword { .. }));
        assert!(htpasswd_line("u", &Secret::new("x".repeat(71)), 4).is_ok());
        let long = "x".repeat(72);
        let message = htpasswd_line("u", &Secret::new(long.clone()), 4)
            .unwrap_err()
            .to_string();
        assert!(message.contains("72 bytes"), "{message}");
        assert!(!message.contains(&long), "the password is never shown");
        assert!(matches!(
            htpasswd_line("u", &password, 3),
            Err(HtpasswdError::Hash(_))
        ));
    }
}
