//! Image references (`nginx:1.25`, `registry.k8s.io/pause:3.9`) and the repository each
//! one is stored under in the node's local registry.

use std::fmt;

/// Longest repository name the registry accepts.
const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag the registry accepts.
const MAX_TAG_LEN: usize = 128;

/// Where an image lives in the local registry: repository, and tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository path without a registry host: `library/nginx`, `pause`, `org/x`.
    pub repository: String,
    /// The tag; `latest` when the reference names neither a tag nor a digest.
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a digest.
    pub digest: Option<String>,
}

/// Why an image reference could not be mapped to a repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("the reference is empty")]
    Empty,
    #[error("tag {0:?} is not valid (letters, digits, `_`, `.`, `-`; at most 128, not starting with `.` or `-`)")]
    BadTag(String),
    #[error("digest {0:?} is not valid (expected sha256: and 64 lowercase hex digits)")]
    BadDigest(String),
    #[error("path component {0:?} is not valid (lowercase letters and digits, separated by `.`, `_`, `__` or dashes)")]
    BadComponent(String),
    #[error("the repository name is {0} characters long; at most 255 are allowed")]
    TooLong(usize),
}

impl ImageRef {
    /// Maps a reference to the repository it is served under by the local registry.
    ///
    /// The name is normalised as docker and containerd do (`nginx` is
    /// `docker.io/library/nginx`), then the registry host is dropped: containerd's
    /// mirror configuration sends every upstream host to this one registry and keeps
    /// the path, so `registry.k8s.io/pause` is asked for as `pause` and
    /// `docker.io/library/nginx` as `library/nginx`. Two upstream hosts with the same
    /// path therefore share a repository; cluster images do not carry such pairs.
    pub fn parse(reference: &str) -> Result<ImageRef, ImageRefError> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let (name_and_tag, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                if !is_digest(digest) {
                    return Err(ImageRefError::BadDigest(digest.to_string()));
                }
                (name, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        // The tag separator is a colon after the last slash; earlier colons are ports.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                let tag = &name_and_tag[at + 1..];
                if !is_tag(tag) {
                    return Err(ImageRefError::BadTag(tag.to_string()));
                }
                (&name_and_tag[..at], Some(tag.to_string()))
            }
            None => (name_and_tag, None),
        };
        let path = strip_host(name);
        let repository = if path.contains('/') || !is_docker_hub(name) {
            path.to_string()
        } else {
            format!("library/{path}")
        };
        validate_repository(&repository)?;
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Ok(ImageRef {
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The first path component is a registry host when docker would take it for one: it
/// has a dot or a port, is `localhost`, or has upper case (which repositories cannot).
fn host_of(name: &str) -> Option<&str> {
    let (first, _) = name.split_once('/')?;
    let is_host = first.contains(['.', ':'])
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase());
    is_host.then_some(first)
}

fn strip_host(name: &str) -> &str {
    match host_of(name) {
        Some(host) => &name[host.len() + 1..],
        None => name,
    }
}

fn is_docker_hub(name: &str) -> bool {
    matches!(host_of(name), None | Some("docker.io" | "index.docker.io"))
}

/// Checks a repository name against the registry's grammar: lowercase components of
/// letters and digits, joined inside by `.`, `_`, `__` or runs of `-`, separated by `/`.
pub(crate) fn validate_repository(repository: &str) -> Result<(), ImageRefError> {
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err(ImageRefError::TooLong(repository.len()));
    }
    for component in repository.split('/') {
        if !is_component(component) {
            return Err(ImageRefError::BadComponent(component.to_string()));
        }
    }
    Ok(())
}

fn is_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Between alphanumeric runs: exactly `.`, `_` or `__`, or any number of `-`.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn is_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    tag.len() <= MAX_TAG_LEN
        && (first.is_ascii_alphanumeric() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn maps_references_to_local_repositories() {
        let pinned = format!("registry.k8s.io/pause@{DIGEST}");
        let both = format!("nginx:1.25@{DIGEST}");
        let table: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            (
                "docker.io/library/nginx:1.25",
                "library/nginx",
                Some("1.25"),
                None,
            ),
            ("nginx:1.25", "library/nginx", Some("1.25"), None),
            ("nginx", "library/nginx", Some("latest"), None),
            ("docker.io/nginx", "library/nginx", Some("latest"), None),
            ("index.docker.io/nginx:1", "library/nginx", Some("1"), None),
            ("library/nginx:1.25", "library/nginx", Some("1.25"), None),
            ("bitnami/redis:7", "bitnami/redis", Some("7"), None),
            (
                "docker.io/bitnami/redis:7",
                "bitnami/redis",
                Some("7"),
                None,
            ),
            ("registry.k8s.io/pause:3.9", "pause", Some("3.9"), None),
            (
                "registry.k8s.io/coredns/coredns:v1.11.1",
                "coredns/coredns",
                Some("v1.11.1"),
                None,
            ),
            ("quay.io/org/x:1", "org/x", Some("1"), None),
            (
                "ghcr.io/a/b/c:v_1.2-rc.3",
                "a/b/c",
                Some("v_1.2-rc.3"),
                None,
            ),
            ("localhost/foo", "foo", Some("latest"), None),
            ("localhost:5000/team/app:2", "team/app", Some("2"), None),
            (
                "sea.hub:5000/library/nginx:1.25",
                "library/nginx",
                Some("1.25"),
                None,
            ),
            ("Registry/app:1", "app", Some("1"), None),
            ("my-reg/a__b.c--d:x", "my-reg/a__b.c--d", Some("x"), None),
            (&pinned, "pause", None, Some(DIGEST)),
            (&both, "library/nginx", Some("1.25"), Some(DIGEST)),
        ];
        for (reference, repository, tag, digest) in table {
            let parsed = ImageRef::parse(reference)
                .unwrap_or_else(|e| panic!("{reference}: unexpected error {e}"));
            assert_eq!(parsed.repository, *repository, "{reference}");
            assert_eq!(parsed.tag.as_deref(), *tag, "{reference}");
            assert_eq!(parsed.digest.as_deref(), *digest, "{reference}");
        }
    }

    #[test]
    fn refuses_references_the_registry_cannot_store() {
        let long = format!("a/{}", "b".repeat(300));
        let table: &[(&str, ImageRefError)] = &[
            ("", ImageRefError::Empty),
            ("  ", ImageRefError::Empty),
            ("nginx:", ImageRefError::BadTag(String::new())),
            ("nginx:.hidden", ImageRefError::BadTag(".hidden".into())),
            (
                "nginx@sha256:abc",
                ImageRefError::BadDigest("sha256:abc".into()),
            ),
            ("nginx@md5:0", ImageRefError::BadDigest("md5:0".into())),
            ("quay.io/Org/x", ImageRefError::BadComponent("Org".into())),
            ("quay.io/org//x", ImageRefError::BadComponent(String::new())),
            ("quay.io/org/-x", ImageRefError::BadComponent("-x".into())),
            (
                "quay.io/org/a...b",
                ImageRefError::BadComponent("a...b".into()),
            ),
            (
                "quay.io/org/a___b",
                ImageRefError::BadComponent("a___b".into()),
            ),
            ("quay.io/../etc", ImageRefError::BadComponent("..".into())),
            (&long, ImageRefError::TooLong(302)),
        ];
        for (reference, expected) in table {
            assert_eq!(
                ImageRef::parse(reference).as_ref(),
                Err(expected),
                "{reference:?}"
            );
        }
    }

    #[test]
    fn displays_as_repository_tag_and_digest() {
        let parsed = ImageRef::parse("registry.k8s.io/pause:3.9").expect("parses");
        assert_eq!(parsed.to_string(), "pause:3.9");
    }
}
