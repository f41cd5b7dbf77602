//! Secrets bootstrap chooses itself (tokens, keys), from the kernel's CSPRNG.

use std::io::{self, Read};

fn fill(buf: &mut [u8]) -> io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// `bytes` random bytes, hex encoded.
pub fn hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf)?;
    Ok(hex::encode(buf))
}

/// A number in `[0, 1]` (for jitter).
pub fn fraction() -> io::Result<f64> {
    let mut buf = [0u8; 8];
    fill(&mut buf)?;
    Ok(u64::from_le_bytes(buf) as f64 / u64::MAX as f64)
}

/// `len` characters drawn uniformly from `alphabet` (rejection sampling: no modulo bias).
pub fn from_alphabet(len: usize, alphabet: &[u8]) -> io::Result<String> {
    assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        fill(&mut buf)?;
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let h = hex(32).unwrap();
        assert_eq!(h.len(), 64);
        assert_ne!(h, hex(32).unwrap());
        let t = from_alphabet(16, b"abcdefghijklmnopqrstuvwxyz0123456789").unwrap();
        assert_eq!(t.len(), 16);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }
}
