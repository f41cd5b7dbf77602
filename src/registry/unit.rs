//! The registry's systemd unit, `bootstrap-registry.service`, rendered from sections
//! and keys.
//!
//! The unit sandboxes the registry: the whole file system is read-only to it except
//! its storage, and it sees no homes, devices or kernel knobs. It still runs as root,
//! since the storage is written by bootstrap as root too, but with no capability
//! beyond binding a low port.

use std::path::{Path, PathBuf};

use super::config::RegistryConfig;
use super::{BINARY, CONFIG_FILE};
use crate::systemd::{exec_argument, exec_program, path_word, SystemdUnit, UnitError, UnitSection};

/// What `bootstrap-registry.service` runs, and the paths its sandbox must leave open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryUnit {
    /// `Description=`, shown by `systemctl status`.
    pub description: String,
    /// The registry binary (`registry` from the cluster image, installed by bootstrap).
    pub binary: PathBuf,
    /// The `config.yml` the registry is started with.
    pub config_file: PathBuf,
    /// The storage root: the only place the registry may write.
    pub storage_dir: PathBuf,
    /// The files the registry reads besides its config (certificate, key, htpasswd).
    /// They are only checked against the sandbox: one under `/home` or `/tmp` turns the
    /// matching protection off rather than hiding the file.
    pub read_files: Vec<PathBuf>,
}

impl Default for RegistryUnit {
    /// `/usr/local/bin/registry serve /etc/bootstrap/registry/config.yml` with the
    /// default configuration's paths.
    fn default() -> Self {
        RegistryUnit::new(
            PathBuf::from(BINARY),
            PathBuf::from(CONFIG_FILE),
            &RegistryConfig::default(),
        )
    }
}

/// Under these, `ProtectHome=yes` would hide a path.
const HOME_DIRS: [&str; 3] = ["/home", "/root", "/run/user"];
/// Under these, `PrivateTmp=yes` would swap a path for an empty private folder.
const TMP_DIRS: [&str; 2] = ["/tmp", "/var/tmp"];

impl RegistryUnit {
    /// The unit for a registry whose `config.yml`, at `config_file`, is rendered from
    /// `config`.
    pub fn new(binary: PathBuf, config_file: PathBuf, config: &RegistryConfig) -> Self {
        RegistryUnit {
            description: "bootstrap local image registry".into(),
            binary,
            config_file,
            storage_dir: config.storage_dir.clone(),
            read_files: config
                .files_read()
                .into_iter()
                .map(Path::to_path_buf)
                .collect(),
        }
    }

    /// The unit's sections and keys.
    pub fn unit(&self) -> Result<SystemdUnit, UnitError> {
        let binary = exec_program("registry unit binary", &self.binary)?;
        let config = exec_argument("registry unit config file", &self.config_file)?;
        let storage = path_word("registry unit storage directory", &self.storage_dir)?;
        for file in &self.read_files {
            path_word("registry unit file read", file)?;
        }
        let paths: Vec<&Path> = [&self.binary, &self.config_file, &self.storage_dir]
            .into_iter()
            .map(PathBuf::as_path)
            .chain(self.read_files.iter().map(PathBuf::as_path))
            .collect();
        let under = |dirs: &[&str]| {
            paths
                .iter()
                .any(|path| dirs.iter().any(|dir| path.starts_with(dir)))
        };

        let unit = UnitSection::new("Unit")
            .set("Description", &self.description)
            .set("After", "network-online.target")
            .set("Wants", "network-online.target");
        let mut service = UnitSection::new("Service")
            .set("Type", "simple")
            .set("ExecStart", format!("{binary} serve {config}"))
            .set("Restart", "always")
            .set("RestartSec", "5")
            // Every layer pulled is an open file; kubelets on many nodes pull at once.
            .set("LimitNOFILE", "1048576")
            .set("NoNewPrivileges", "yes")
            .set("ProtectSystem", "strict")
            .set("ReadWritePaths", storage);
        if !under(&HOME_DIRS) {
            service = service.set("ProtectHome", "yes");
        }
        if !under(&TMP_DIRS) {
            service = service.set("PrivateTmp", "yes");
        }
        let service = service
            .set("PrivateDevices", "yes")
            .set("ProtectKernelTunables", "yes")
            .set("ProtectKernelModules", "yes")
            .set("ProtectControlGroups", "yes")
            .set("ProtectKernelLogs", "yes")
            .set("ProtectClock", "yes")
            .set("ProtectHostname", "yes")
            .set("RestrictNamespaces", "yes")
            .set("RestrictSUIDSGID", "yes")
            .set("RestrictRealtime", "yes")
            .set("LockPersonality", "yes")
            .set("SystemCallArchitectures", "native")
            .set(
                "RestrictAddressFamilies",
                "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            )
            // Root owns the storage and the key, so no capability is needed to use
            // them; a port below 1024 needs this one.
            .set("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE");
        let install = UnitSection::new("Install").set("WantedBy", "multi-user.target");
        Ok(SystemdUnit {
            header: vec![
                "Written by bootstrap; edits here are overwritten when it runs again.".into(),
            ],
            sections: vec![unit, service, install],
            gap_after_header: true,
        })
    }

    /// The unit file's text.
    pub fn render(&self) -> Result<String, UnitError> {
        self.unit()?.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'u>(unit: &'u SystemdUnit, section: &str, key: &str) -> Option<&'u str> {
        unit.sections
            .iter()
            .find(|s| s.name == section)?
            .entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn default_unit_runs_the_registry_sandboxed() {
        let unit = RegistryUnit::default().unit().unwrap();
        assert_eq!(
            value(&unit, "Service", "ExecStart"),
            Some("/usr/local/bin/registry serve /etc/bootstrap/registry/config.yml")
        );
        assert_eq!(value(&unit, "Unit", "After"), Some("network-online.target"));
        assert_eq!(value(&unit, "Unit", "Wants"), Some("network-online.target"));
        assert_eq!(value(&unit, "Service", "Restart"), Some("always"));
        assert_eq!(value(&unit, "Service", "RestartSec"), Some("5"));
        assert_eq!(value(&unit, "Service", "LimitNOFILE"), Some("1048576"));
        assert_eq!(value(&unit, "Service", "NoNewPrivileges"), Some("yes"));
        assert_eq!(value(&unit, "Service", "ProtectSystem"), Some("strict"));
        assert_eq!(
            value(&unit, "Service", "ReadWritePaths"),
            Some("/var/lib/bootstrap/registry")
        );
        assert_eq!(value(&unit, "Service", "ProtectHome"), Some("yes"));
        assert_eq!(value(&unit, "Service", "PrivateTmp"), Some("yes"));
        assert_eq!(
            value(&unit, "Install", "WantedBy"),
            Some("multi-user.target")
        );
        let text = unit.render().unwrap();
        assert!(text.contains("\n\n[Service]\n"), "{text}");
        assert!(text.ends_with("WantedBy=multi-user.target\n"), "{text}");
    }

    #[test]
    fn exec_words_are_escaped_and_quoted() {
        let unit = RegistryUnit {
            binary: "/opt/my registry/bin%1$x".into(),
            config_file: "/etc/reg$istry/config \"a\".yml".into(),
            storage_dir: "/srv/100% storage".into(),
            ..RegistryUnit::default()
        }
        .unit()
        .unwrap();
        assert_eq!(
            value(&unit, "Service", "ExecStart"),
            Some(r#""/opt/my registry/bin%%1$x" serve "/etc/reg$$istry/config \"a\".yml""#)
        );
        assert_eq!(
            value(&unit, "Service", "ReadWritePaths"),
            Some(r#""/srv/100%% storage""#)
        );
    }

    #[test]
    fn protections_that_would_hide_a_path_are_left_out() {
        let in_home = RegistryUnit {
            storage_dir: "/home/registry".into(),
            ..RegistryUnit::default()
        }
        .unit()
        .unwrap();
        assert_eq!(value(&in_home, "Service", "ProtectHome"), None);
        assert_eq!(value(&in_home, "Service", "PrivateTmp"), Some("yes"));

        let key_in_tmp = RegistryUnit {
            read_files: vec!["/tmp/certs/server.key".into()],
            ..RegistryUnit::default()
        }
        .unit()
        .unwrap();
        assert_eq!(value(&key_in_tmp, "Service", "PrivateTmp"), None);
        assert_eq!(value(&key_in_tmp, "Service", "ProtectHome"), Some("yes"));

        // `/tmpfoo` is not under `/tmp`.
        let lookalike = RegistryUnit {
            storage_dir: "/tmpfoo/registry".into(),
            ..RegistryUnit::default()
        }
        .unit()
        .unwrap();
        assert_eq!(value(&lookalike, "Service", "PrivateTmp"), Some("yes"));
    }

    #[test]
    fn refuses_what_would_break_the_file() {
        let relative = RegistryUnit {
            binary: "registry".into(),
            ..RegistryUnit::default()
        };
        assert_eq!(
            relative.render().unwrap_err().to_string(),
            "registry unit binary: registry is not an absolute path"
        );
        let newline = RegistryUnit {
            config_file: "/etc/x\n[Service]\nExecStartPre=/bin/evil".into(),
            ..RegistryUnit::default()
        };
        assert!(newline
            .render()
            .unwrap_err()
            .to_string()
            .contains("control character"));
        let description = RegistryUnit {
            description: "two\nlines".into(),
            ..RegistryUnit::default()
        };
        assert_eq!(
            description.render().unwrap_err().to_string(),
            "unit [Unit] Description: contains a control character (a line break?)"
        );
        let continuation = SystemdUnit {
            header: vec![],
            sections: vec![UnitSection::new("Service").set("Environment", "A=b\\")],
            gap_after_header: true,
        };
        assert!(continuation.render().is_err());
        let bad_key = SystemdUnit {
            header: vec![],
            sections: vec![UnitSection::new("Service").set("Exec Start", "x")],
            gap_after_header: true,
        };
        assert!(matches!(bad_key.render(), Err(UnitError::BadKey { .. })));
    }
}
