//! Validation: every field checked at once, and the secret files read.

use std::path::Path;

use super::*;

pub(super) fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
        origin: None,
    }
}

pub(super) fn expected(field: impl Into<String>, what: &str, got: &str) -> FieldError {
    err(field, format!("expected {what}, got {got:?}"))
}

pub(super) fn check_host_path_field(errors: &mut Vec<FieldError>, field: &str, path: &Path) {
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        errors.push(expected(
            field,
            "an absolute path without `..`",
            &path.display().to_string(),
        ));
    }
}

impl Config {
    /// Field-level checks that need nothing but the config itself.
    pub(super) fn check_fields(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let node = &self.node;
        if let Some(name) = &node.name {
            if let Err(what) = validate::dns_subdomain(name) {
                errors.push(expected("node.name", what, name));
            }
        }
        for (key, value) in &node.labels {
            if let Err(what) = validate::label_key(key) {
                errors.push(expected(format!("node.labels.{key}"), what, key));
            } else if let Err(what) = validate::label_value(value) {
                errors.push(expected(format!("node.labels.{key}"), what, value));
            }
        }
        for (i, taint) in node.taints.iter().enumerate() {
            if let Err(what) = validate::taint(taint) {
                errors.push(expected(format!("node.taints[{i}]"), what, taint));
            }
        }

        let cluster = &self.cluster;
        let mut seen = BTreeSet::new();
        for (i, controller) in cluster.controllers.iter().enumerate() {
            if let Err(what) = validate::host(controller) {
                errors.push(expected(
                    format!("cluster.controllers[{i}]"),
                    what,
                    controller,
                ));
            } else if !seen.insert(controller.as_str()) {
                errors.push(err(
                    format!("cluster.controllers[{i}]"),
                    format!("{controller:?} is listed twice"),
                ));
            }
        }
        if let Some(endpoint) = &cluster.endpoint {
            if let Err(what) = validate::endpoint(endpoint) {
                errors.push(expected("cluster.endpoint", what, endpoint));
            }
        }
        match (&cluster.join_secret, &cluster.join_secret_file) {
            (Some(_), Some(_)) => errors.push(err(
                "cluster.join_secret",
                "set only one of cluster.join_secret and cluster.join_secret_file",
            )),
            (None, None) if self.is_multi_node() => errors.push(err(
                "cluster.join_secret_file",
                "a cluster with controllers listed needs a join secret: set cluster.join_secret_file (or cluster.join_secret)",
            )),
            (Some(secret), None) => {
                if let Err(what) = validate::join_secret(secret.expose()) {
                    errors.push(err("cluster.join_secret", format!("expected {what}")));
                }
            }
            (None, Some(path)) => check_host_path_field(&mut errors, "cluster.join_secret_file", path),
            (None, None) => {}
        }
        match &cluster.name {
            Some(name) => {
                if let Err(what) = validate::dns_subdomain(name) {
                    errors.push(expected("cluster.name", what, name));
                }
            }
            None if cluster.join_secret.is_some() || cluster.join_secret_file.is_some() => {
                errors.push(err(
                    "cluster.name",
                    "a cluster with a join secret needs a name, the same on every node: it salts the keys derived from the secret, so that one list of guessed secrets cannot be tried against every cluster",
                ))
            }
            None => {}
        }
        if self.role == RoleSetting::Worker && !self.is_multi_node() {
            errors.push(err(
                "role",
                "a worker needs a controller to join: list them in cluster.controllers",
            ));
        }
        self.check_cidrs(&mut errors);

        check_host_path_field(&mut errors, "rootfs.dir", &self.rootfs.dir);
        match self.rootfs.archive.as_deref().map(|a| (a, a.to_str())) {
            Some((_, Some(url))) if url.contains("://") => {
                let scheme = url.split("://").next().unwrap_or_default();
                match scheme {
                    "https" => {}
                    "http" if self.rootfs.insecure_http => {}
                    "http" => errors.push(err(
                        "rootfs.archive",
                        "an http:// URL sends the image unprotected; use https://, or set rootfs.insecure_http: true (the SHA-256 is still checked)",
                    )),
                    _ => errors.push(err(
                        "rootfs.archive",
                        format!("{scheme}:// is not supported; expected a host path or an https:// URL"),
                    )),
                }
            }
            Some((path, _)) => check_host_path_field(&mut errors, "rootfs.archive", path),
            None => {}
        }
        if let Some(path) = &self.rootfs.ca_file {
            check_host_path_field(&mut errors, "rootfs.ca_file", path);
        }
        if let Some(sha) = &self.rootfs.sha256 {
            if let Err(what) = validate::sha256_hex(sha) {
                errors.push(expected("rootfs.sha256", what, sha));
            }
        }

        match (&self.registry.username, &self.registry.password_file) {
            (Some(user), Some(path)) => {
                check_registry_user(&mut errors, "registry.username", user);
                check_host_path_field(&mut errors, "registry.password_file", path);
            }
            (Some(_), None) => errors.push(err(
                "registry.password_file",
                "registry.username needs registry.password_file",
            )),
            (None, Some(_)) => errors.push(err(
                "registry.username",
                "registry.password_file needs registry.username",
            )),
            (None, None) => {}
        }
        if let Some(push) = &self.registry.push {
            check_registry_user(&mut errors, "registry.push.username", &push.username);
            check_host_path_field(
                &mut errors,
                "registry.push.password_file",
                &push.password_file,
            );
            if !self.registry.enabled {
                errors.push(err(
                    "registry.push",
                    "pushing needs the local registry: set registry.enabled: true, or remove registry.push",
                ));
            }
        }
        if let Err(what) = validate::dns_subdomain(&self.registry.domain) {
            errors.push(expected("registry.domain", what, &self.registry.domain));
        }
        let push_port = self.registry.push.as_ref().map(|p| p.port);
        for (field, port) in [
            ("registry.port", Some(self.registry.port)),
            ("registry.push.port", push_port),
            ("join.port", Some(self.join.port)),
        ]
        .into_iter()
        .filter_map(|(field, port)| Some((field, port?)))
        {
            if port == 0 {
                errors.push(expected(field, "a port number from 1 to 65535", "0"));
            } else if RESERVED_PORTS.contains(&port) {
                errors.push(err(
                    field,
                    format!("port {port} is used by Kubernetes or the distro; choose another"),
                ));
            }
        }
        if self.registry.enabled && self.registry.port == self.join.port && self.join.port != 0 {
            errors.push(err(
                "join.port",
                format!("port {} is already registry.port", self.join.port),
            ));
        }
        if let Some(port) = push_port.filter(|p| *p != 0) {
            for (other, taken) in [
                ("registry.port", self.registry.port),
                ("join.port", self.join.port),
            ] {
                if port == taken {
                    errors.push(err(
                        "registry.push.port",
                        format!("port {port} is already {other}"),
                    ));
                }
            }
        }
        if self.upgrade.max_unavailable == 0 {
            errors.push(err(
                "upgrade.max_unavailable",
                "expected at least 1 (workers upgrade this many at a time)",
            ));
        }
        if self.upgrade.wait.is_zero() {
            errors.push(err(
                "upgrade.wait",
                "expected a duration above zero, such as 30m",
            ));
        }
        if let Err(what) = check_token_ttl(self.join.token_ttl) {
            errors.push(err("join.token_ttl", what));
        }
        for (i, name) in self.preflight.ignore.iter().enumerate() {
            if !PREFLIGHT_CHECKS.contains(&name.as_str()) {
                errors.push(expected(
                    format!("preflight.ignore[{i}]"),
                    &format!("one of {}", PREFLIGHT_CHECKS.join(", ")),
                    name,
                ));
            }
        }
        errors
    }

    pub(super) fn check_cidrs(&self, errors: &mut Vec<FieldError>) {
        let cidrs = [
            ("cluster.pod_cidr", self.cluster.pod_cidr),
            ("cluster.service_cidr", self.cluster.service_cidr),
        ];
        for (field, cidr) in cidrs {
            let Some(cidr) = cidr else { continue };
            if cidr.trunc() != cidr {
                errors.push(err(
                    field,
                    format!(
                        "expected a network address, got {cidr} (host bits set; did you mean {}?)",
                        cidr.trunc()
                    ),
                ));
            }
            let mut addresses: Vec<(String, IpAddr)> = Vec::new();
            if let Some(a) = self.node.address {
                addresses.push(("node.address".to_owned(), a));
            }
            for (i, c) in self.cluster.controllers.iter().enumerate() {
                if let Ok(a) = c.parse::<IpAddr>() {
                    addresses.push((format!("cluster.controllers[{i}]"), a));
                }
            }
            for (name, address) in addresses {
                if cidr.contains(&address) {
                    errors.push(err(
                        field,
                        format!(
                            "{cidr} contains {name} {address}; pick a range the nodes are not in"
                        ),
                    ));
                }
            }
        }
        if let (Some(pod), Some(svc)) = (self.cluster.pod_cidr, self.cluster.service_cidr) {
            if pod.contains(&svc.network()) || svc.contains(&pod.network()) {
                errors.push(err(
                    "cluster.service_cidr",
                    format!("{svc} overlaps cluster.pod_cidr {pod}"),
                ));
            }
        }
    }

    pub(super) fn read_secret(&self, host: &dyn Host) -> Result<Option<Secret>, FieldError> {
        if let Some(secret) = &self.cluster.join_secret {
            return Ok(Some(secret.clone()));
        }
        let Some(path) = &self.cluster.join_secret_file else {
            return Ok(None);
        };
        const FIELD: &str = "cluster.join_secret_file";
        let Some(secret) = read_secret_file(host, FIELD, path, "a join secret")? else {
            return Ok(None);
        };
        if let Err(what) = validate::join_secret(secret.expose()) {
            return Err(err(FIELD, format!("{}: expected {what}", path.display())));
        }
        Ok(Some(secret))
    }

    pub(super) fn read_registry_password(
        &self,
        host: &dyn Host,
    ) -> Result<Option<Secret>, FieldError> {
        let (Some(_), Some(path)) = (&self.registry.username, &self.registry.password_file) else {
            return Ok(None);
        };
        read_registry_password(host, "registry.password_file", path)
    }

    pub(super) fn read_push_password(&self, host: &dyn Host) -> Result<Option<Secret>, FieldError> {
        let Some(push) = &self.registry.push else {
            return Ok(None);
        };
        read_registry_password(host, "registry.push.password_file", &push.password_file)
    }
}

/// A registry user name as htpasswd and basic auth take it.
fn check_registry_user(errors: &mut Vec<FieldError>, field: &str, user: &str) {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        errors.push(expected(field, "1-64 of [A-Za-z0-9._-]", user));
    }
}

/// A registry password from its file: private, and 8 to 71 bytes.
fn read_registry_password(
    host: &dyn Host,
    field: &str,
    path: &Path,
) -> Result<Option<Secret>, FieldError> {
    let Some(password) = read_secret_file(host, field, path, "a registry password")? else {
        return Ok(None);
    };
    // bcrypt uses at most 72 bytes; a longer password would be cut without a word.
    if password.len() < 8 || password.len() > 71 {
        return Err(err(
            field,
            format!(
                "{}: expected a password of 8 to 71 bytes, got {}",
                path.display(),
                password.len()
            ),
        ));
    }
    Ok(Some(password))
}

/// A secret from a file: absolute, private (no group or other access), UTF-8, one line.
/// `Ok(None)` when the path itself is invalid (reported by the field checks).
fn read_secret_file(
    host: &dyn Host,
    field: &str,
    path: &Path,
    what: &str,
) -> Result<Option<Secret>, FieldError> {
    if crate::host::check_host_path(path).is_err() {
        return Ok(None);
    }
    let info = host
        .metadata(path)
        .map_err(|e| err(field, e.to_string()))?
        .ok_or_else(|| err(field, format!("{} does not exist", path.display())))?;
    if info.mode & 0o077 != 0 {
        return Err(err(
            field,
            format!(
                "{} has mode {:04o}: {what} must not be readable or writable by group or others (chmod 600)",
                path.display(),
                info.mode
            ),
        ));
    }
    let bytes = host
        .read(path)
        .map_err(|e| err(field, e.to_string()))?
        .unwrap_or_default();
    let text = String::from_utf8(bytes)
        .map_err(|_| err(field, format!("{} is not UTF-8 text", path.display())))?;
    Ok(Some(Secret::new(text.trim_end_matches(['\n', '\r']))))
}
