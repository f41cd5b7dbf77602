//! Syntax of the values users write: names, labels, taints, endpoints, secrets, digests;
//! and whether a binary taken from an image is an executable for this machine.
//!
//! Each check returns `Err(expected)`: a phrase saying what was expected, which the caller
//! joins with the field path and the offending value.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// A DNS label (RFC 1123): 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns_label(s: &str) -> Result<(), &'static str> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then_some(())
        .ok_or("a lowercase RFC 1123 label: letters, digits and '-', at most 63, alphanumeric at both ends")
}

/// A DNS subdomain (RFC 1123), as Kubernetes node names are: dot-separated labels, ≤ 253.
pub fn dns_subdomain(s: &str) -> Result<(), &'static str> {
    const EXPECTED: &str = "a lowercase RFC 1123 name: labels of letters, digits and '-' separated by '.', at most 253 characters";
    if s.is_empty() || s.len() > 253 {
        return Err(EXPECTED);
    }
    s.split('.').try_for_each(dns_label).map_err(|_| EXPECTED)
}

/// A host: an IP address or an RFC 1123 name.
pub fn host(s: &str) -> Result<(), &'static str> {
    if s.parse::<IpAddr>().is_ok() || dns_subdomain(s).is_ok() {
        Ok(())
    } else {
        Err("an IP address or an RFC 1123 host name")
    }
}

/// `host:port`, with IPv6 in brackets (`[fd00::1]:6443`).
pub fn endpoint(s: &str) -> Result<(String, u16), &'static str> {
    const EXPECTED: &str = "host:port, such as 10.0.0.10:6443 or [fd00::10]:6443";
    let (host_part, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or(EXPECTED)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| EXPECTED)?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or(EXPECTED)?;
        if h.contains(':') {
            return Err(EXPECTED);
        }
        host(h).map_err(|_| EXPECTED)?;
        (h, p)
    };
    let port = port_number(port).map_err(|_| EXPECTED)?;
    Ok((host_part.to_owned(), port))
}

/// A TCP port, 1–65535.
pub fn port_number(s: &str) -> Result<u16, &'static str> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("a port number from 1 to 65535"),
    }
}

fn qualified_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A Kubernetes label or taint key: `[prefix/]name`, prefix a DNS subdomain.
pub fn label_key(s: &str) -> Result<(), &'static str> {
    const EXPECTED: &str =
        "a Kubernetes key: optional DNS-subdomain prefix and '/', then 1-63 of [A-Za-z0-9-_.], alphanumeric at both ends";
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            dns_subdomain(prefix).map_err(|_| EXPECTED)?;
            name
        }
        None => s,
    };
    qualified_name(name).then_some(()).ok_or(EXPECTED)
}

/// A Kubernetes label value: empty, or 1-63 of `[A-Za-z0-9-_.]` alphanumeric at both ends.
pub fn label_value(s: &str) -> Result<(), &'static str> {
    (s.is_empty() || qualified_name(s)).then_some(()).ok_or(
        "a Kubernetes label value: empty or 1-63 of [A-Za-z0-9-_.], alphanumeric at both ends",
    )
}

/// Checks every key and value of a label map; the error names the offending key.
pub fn labels(map: &BTreeMap<String, String>) -> Result<(), (String, &'static str)> {
    for (key, value) in map {
        label_key(key).map_err(|e| (key.clone(), e))?;
        label_value(value).map_err(|e| (key.clone(), e))?;
    }
    Ok(())
}

/// The three taint effects Kubernetes knows.
pub const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// A taint as kubectl writes it: `key[=value]:Effect`.
pub fn taint(s: &str) -> Result<(), &'static str> {
    const EXPECTED: &str =
        "a taint key[=value]:Effect, with Effect one of NoSchedule, PreferNoSchedule, NoExecute";
    let (kv, effect) = s.rsplit_once(':').ok_or(EXPECTED)?;
    if !TAINT_EFFECTS.contains(&effect) {
        return Err(EXPECTED);
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    label_key(key).map_err(|_| EXPECTED)?;
    label_value(value).map_err(|_| EXPECTED)
}

/// A SHA-256 digest in hex: 64 of `[0-9a-f]` (upper case accepted).
pub fn sha256_hex(s: &str) -> Result<(), &'static str> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(())
        .ok_or("a SHA-256 digest: 64 hexadecimal digits")
}

/// A join secret: one from `bootstrap secret generate` (checksum intact), or one
/// estimated to hold at least 128 bits of entropy, and not an example bootstrap once
/// published (see [`crate::secret_format`]). `Err` says what was expected.
pub fn join_secret(s: &str) -> Result<(), String> {
    crate::secret_format::check(s)
}

/// A size such as `512M`, `2G`, `1.5GiB` or `1048576` (binary multiples), in bytes.
pub fn byte_size(s: &str) -> Result<u64, &'static str> {
    const EXPECTED: &str = "a size such as 512M, 2G or 1048576 (K, M, G, T are binary multiples)";
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| EXPECTED)?;
    let shift = match unit
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i')
    {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(EXPECTED),
    };
    let bytes = number * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(EXPECTED);
    }
    Ok(bytes as u64)
}

/// Whether `head` (a file's first 20 bytes or more) starts a 64-bit little-endian ELF
/// executable for the Go architecture `arch` (`amd64`, `arm64`). `Err` says what it is.
pub fn elf_executable(head: &[u8], arch: &str) -> Result<(), String> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    let found = match machine {
        0x3e => "amd64",
        0xb7 => "arm64",
        0x03 => "386",
        0x28 => "arm",
        0xf3 => "riscv64",
        0x15 => "ppc64",
        0x16 => "s390x",
        _ => "an unknown machine",
    };
    if head[4] != 2 || head[5] != 1 {
        return Err(format!(
            "an ELF file for {found}, but not 64-bit little-endian"
        ));
    }
    let kind = u16::from_le_bytes([head[16], head[17]]);
    if kind != 2 && kind != 3 {
        return Err(format!("an ELF file of type {kind}, not an executable"));
    }
    if found != arch {
        return Err(format!(
            "an executable for {found}, not for this {arch} machine"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(byte_size("1048576"), Ok(1 << 20));
        assert_eq!(byte_size("512M"), Ok(512 << 20));
        assert_eq!(byte_size("2GiB"), Ok(2 << 30));
        assert_eq!(byte_size("1.5G"), Ok(3 << 29));
        assert!(byte_size("lots").is_err());
        assert!(byte_size("0").is_err());
        assert!(byte_size("5X").is_err());
    }

    #[test]
    fn names() {
        assert!(dns_subdomain("node-1.example.com").is_ok());
        assert!(dns_subdomain("Node1").is_err());
        assert!(dns_subdomain("-a").is_err());
        assert!(dns_subdomain(&"a".repeat(64)).is_err());
        assert!(dns_subdomain("a..b").is_err());
    }

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("10.0.0.1:6443").unwrap().1, 6443);
        assert_eq!(endpoint("[fd00::1]:6443").unwrap().0, "fd00::1");
        assert_eq!(
            endpoint("api.example.com:443").unwrap().0,
            "api.example.com"
        );
        for bad in [
            "10.0.0.1",
            "10.0.0.1:0",
            "fd00::1:6443",
            "a_b:1",
            "h:70000",
            "[zz]:1",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_and_taints() {
        assert!(label_key("node-role.kubernetes.io/worker").is_ok());
        assert!(label_key("example.com/").is_err());
        assert!(label_key("-x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("a b").is_err());
        assert!(taint("dedicated=gpu:NoSchedule").is_ok());
        assert!(taint("dedicated:NoExecute").is_ok());
        assert!(taint("dedicated=gpu:Sometimes").is_err());
        assert!(taint("dedicated=gpu").is_err());
    }

    #[test]
    fn secrets() {
        assert!(join_secret(crate::secret_format::generate().unwrap().expose()).is_ok());
        assert!(join_secret(&crate::random::hex(32).unwrap()).is_ok());
        assert!(join_secret("correct horse battery staple 2024").is_err());
        assert!(join_secret("password password password password!").is_err());
        assert!(join_secret(&"a".repeat(64)).is_err());
        assert!(join_secret("short").is_err());
        assert!(sha256_hex(&"ab".repeat(32)).is_ok());
        assert!(sha256_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn elf_executables_for_this_arch() {
        let mut head = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        head.extend([0; 8]);
        head.extend([2, 0, 0x3e, 0]);
        assert_eq!(elf_executable(&head, "amd64"), Ok(()));
        assert!(elf_executable(&head, "arm64")
            .unwrap_err()
            .contains("for amd64"));
        assert!(elf_executable(b"#!/bin/sh\nexit 0\n\0\0\0", "amd64").is_err());
        head[16] = 1;
        assert!(elf_executable(&head, "amd64")
            .unwrap_err()
            .contains("type 1"));
    }
}
