//! The commands: each loads what it needs through one [`Session`] and returns a typed
//! [`Error`] that `main` maps to an exit code.

mod plan_cmd;
mod preflight_cmd;
mod status;
mod up;

use std::path::{Path, PathBuf};

use crate::cli::{Cli, Command};
use crate::config::{self, Config, ConfigError};
use crate::facts::{Facts, FactsError};
use crate::host::{Host, HostError, RootedHost};
use crate::plan::{journal::Journal, ApplyError, Plan};
use crate::preflight::{self, CheckResult};
use crate::role::{RoleDecision, RoleError};
use crate::rootfs::{ClusterImage, RootfsError};
use crate::{hostprep, lock};

/// Exit codes (DESIGN.md).
pub mod exit {
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PREFLIGHT: i32 = 3;
    pub const PEER_TIMEOUT: i32 = 4;
}

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Facts(#[from] FactsError),
    #[error("preflight failed:\n{}", list_failures(.0))]
    Preflight(Vec<CheckResult>),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Host(#[from] HostError),
}

fn list_failures(failures: &[CheckResult]) -> String {
    let mut lines: Vec<String> = failures
        .iter()
        .map(|c| format!("  - {}: {}", c.name, c.reason))
        .collect();
    lines.push("  (use --ignore-preflight NAME to go on despite one)".to_owned());
    lines.join("\n")
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config(_) => exit::USAGE,
            Error::Role(RoleError::Host(_)) => exit::FAILED,
            Error::Role(_) => exit::USAGE,
            Error::Preflight(_) => exit::PREFLIGHT,
            _ => exit::FAILED,
        }
    }
}

/// Runs the command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    match &cli.command {
        Some(Command::Version) => {
            println!(
                "bootstrap {} ({}-{})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH,
                std::env::consts::OS
            );
            Ok(())
        }
        None | Some(Command::Up) => up::run(&cli),
        Some(Command::Plan(args)) => plan_cmd::run(&cli, args),
        Some(Command::Status(args)) => status::run(&cli, args),
        Some(Command::Preflight(args)) => preflight_cmd::run(&cli, args),
    }
}

/// The host, config, facts and cluster image for one command.
pub(crate) struct Session {
    pub host: RootedHost,
    pub config: Config,
    pub facts: Facts,
    pub image: ClusterImage,
}

/// The host rooted at `--root`, which must be an existing folder.
pub(crate) fn open_host(cli: &Cli) -> Result<RootedHost, Error> {
    if !cli.root.is_dir() {
        return Err(Error::Usage(format!(
            "--root {}: not an existing folder",
            cli.root.display()
        )));
    }
    Ok(RootedHost::new(&cli.root))
}

/// Loads configuration (all layers) for this command line.
pub(crate) fn load_config(cli: &Cli, host: &dyn Host) -> Result<Config, Error> {
    let sources = config::Sources {
        file: cli.config.clone(),
        env: std::env::vars().collect(),
        flags: cli.overrides.to_layer(),
    };
    let config = config::load(host, &sources)?;
    for (i, name) in cli.overrides.ignore_preflight.iter().enumerate() {
        if !preflight::CHECK_NAMES.contains(&name.as_str()) {
            return Err(Error::Usage(format!(
                "--ignore-preflight #{}: unknown check {name:?}; expected one of {}",
                i + 1,
                preflight::CHECK_NAMES.join(", ")
            )));
        }
    }
    Ok(config)
}

impl Session {
    pub(crate) fn open(cli: &Cli) -> Result<Session, Error> {
        let host = open_host(cli)?;
        let config = load_config(cli, &host)?;
        let facts = match &cli.facts {
            Some(path) => Facts::load(path)?,
            None => Facts::gather(&host)?,
        };
        let image = ClusterImage::open(&host, &config.rootfs.dir)?;
        Ok(Session {
            host,
            config,
            facts,
            image,
        })
    }

    /// Whether bootstrap has changed this host before (its journal has entries).
    pub(crate) fn already_set_up(&self) -> Result<bool, Error> {
        Ok(!Journal::load(&self.host)?.entries.is_empty())
    }

    /// Preflight for a role.
    pub(crate) fn preflight(
        &self,
        role: &RoleDecision,
        ignore: &[String],
    ) -> Result<preflight::Report, Error> {
        Ok(preflight::run(&preflight::Context {
            facts: &self.facts,
            config: &self.config,
            role: role.role,
            image: &self.image,
            ignore,
            already_set_up: self.already_set_up()?,
        }))
    }

    /// The plan for a role.
    pub(crate) fn plan(&self, role: &RoleDecision) -> Plan {
        let requirements = self.image.distro.requirements(role.role.is_controller());
        let ipv6 = [
            self.config.cluster.pod_cidr,
            self.config.cluster.service_cidr,
        ]
        .iter()
        .flatten()
        .any(|n| matches!(n, ipnet::IpNet::V6(_)));
        let mut plan = Plan::default();
        for step in hostprep::steps(&self.facts, &requirements, ipv6) {
            plan.push(step);
        }
        plan
    }

    /// The node name Kubernetes will know this node by.
    pub(crate) fn node_name(&self) -> String {
        self.config
            .node
            .name
            .clone()
            .unwrap_or_else(|| self.facts.hostname.clone())
    }

    /// The address other nodes reach this one on.
    pub(crate) fn node_address(&self) -> Option<std::net::IpAddr> {
        self.config.node.address.or(self.facts.default_address)
    }
}

/// A host path's real location, for display and for the lock.
pub(crate) fn real_path(host: &RootedHost, path: &str) -> PathBuf {
    host.resolve(Path::new(path))
        .unwrap_or_else(|_| PathBuf::from(path))
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => log::error!("cannot render JSON: {e}"),
    }
}
