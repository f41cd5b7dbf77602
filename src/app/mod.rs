//! The commands: each loads what it needs through one [`Session`] and returns a typed
//! [`Error`] that `main` maps to an exit code.

mod api_proxy_cmd;
mod init_check;
mod join_material;
mod leave;
mod plan_cmd;
mod preflight_cmd;
mod reset;
mod rootfs_cmd;
mod secret_cmd;
mod serve_cmd;
mod status;
mod stop;
mod token_cmd;
mod up;
mod upgrade;
mod upgrade_turn;

use std::path::{Path, PathBuf};

use crate::cli::{Cli, Command};
use crate::config::{self, Config, ConfigError};
use crate::facts::{Facts, FactsError};
use crate::host::{Host, HostError, RootedHost};
use crate::lock;
use crate::plan::{journal::Journal, ApplyError, Plan};
use crate::preflight::{self, CheckResult};
use crate::role::{RoleDecision, RoleError};
use crate::rootfs::{unpack, ClusterImage, RootfsError};

/// Exit codes (DESIGN.md); a stop signal's is 128 + its number (`stop`).
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
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Unpack(Box<crate::rootfs::unpack::UnpackError>),
    #[error(transparent)]
    Facts(#[from] FactsError),
    #[error(transparent)]
    Runtime(#[from] crate::node_plan::runtime::RuntimeError),
    #[error(transparent)]
    NodePlan(#[from] crate::node_plan::NodePlanError),
    #[error(transparent)]
    Distro(#[from] crate::distro::DistroError),
    #[error("preflight failed:\n{}", list_failures(.0))]
    Preflight(Vec<CheckResult>),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Apply(Box<ApplyError>),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{0}")]
    PeerTimeout(String),
    /// A stop signal ended a wait outside the plan (the plan's own are `Apply`).
    #[error("stopped by {signal} while {during}")]
    Stopped {
        signal: crate::interrupt::Stop,
        during: String,
    },
    /// The `up` that `status --wait` waited for failed with this exit code.
    #[error("{message}")]
    UpFailed { exit_code: i32, message: String },
}

impl From<crate::rootfs::unpack::UnpackError> for Error {
    fn from(e: crate::rootfs::unpack::UnpackError) -> Self {
        Error::Unpack(Box::new(e))
    }
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Self {
        Error::Apply(Box::new(e))
    }
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
            Error::PeerTimeout(_) => exit::PEER_TIMEOUT,
            Error::UpFailed { exit_code, .. } if (1..=255).contains(exit_code) => *exit_code,
            _ => self.stopped_by().map_or(exit::FAILED, |s| s.exit_code()),
        }
    }
}

/// Runs the command line.
pub fn run(mut cli: Cli) -> Result<(), Error> {
    cli.join_line = read_join_line(&cli)?;
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
        None => up::run(&cli, &crate::cli::UpArgs::default()),
        Some(Command::Up(args)) => up::run(&cli, args),
        Some(Command::Plan(args)) => plan_cmd::run(&cli, args),
        Some(Command::Status(args)) => status::run(&cli, args),
        Some(Command::Preflight(args)) => preflight_cmd::run(&cli, args),
        Some(Command::Rootfs(command)) => rootfs_cmd::run(command),
        Some(Command::Token(command)) => token_cmd::run(&cli, command),
        Some(Command::Secret(command)) => secret_cmd::run(command),
        Some(Command::Serve(args)) => serve_cmd::run(&cli, args),
        Some(Command::ApiserverProxy(args)) => api_proxy_cmd::run(&cli, args),
        Some(Command::Leave(args)) => leave::run(&cli, args),
        Some(Command::Reset(args)) => reset::run(&cli, args),
        Some(Command::Upgrade(args)) => upgrade::run(&cli, args),
    }
}

/// The host, config, facts and cluster image for one command.
pub(crate) struct Session {
    pub host: RootedHost,
    pub config: Config,
    pub facts: Facts,
    pub image: ClusterImage,
    /// The image was read from `rootfs.archive`, not yet unpacked.
    pub from_archive: bool,
    /// `upgrade` is moving this node ahead of the version its join material names.
    pub upgrading: bool,
    /// For an archive URL: its SHA-256 and where that came from.
    pub archive_digest: Option<(String, String)>,
}

/// Whether opening the image may download `rootfs.archive` when it is a URL not yet
/// unpacked (`up`, which changes the host anyway) or not (`plan`, `status` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetch {
    Allowed,
    Never,
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
    let mut flags = cli.overrides.to_layer();
    let line = &cli.join_line;
    if let Some(line) = line {
        // The line names the controller to ask; it stands in for cluster.controllers
        // and the join secret on this node.
        let (host, port) = crate::validate::endpoint(&line.address)
            .map_err(|what| Error::Usage(format!("--join: {what}")))?;
        let cluster = flags
            .entry("cluster".to_owned())
            .or_insert_with(|| serde_json::json!({}));
        cluster["controllers"] = serde_json::json!([host]);
        let join = flags
            .entry("join".to_owned())
            .or_insert_with(|| serde_json::json!({}));
        join["port"] = serde_json::json!(port);
    }
    // A node that once joined with a line keeps what the line settled.
    let persisted = match line {
        Some(_) => None,
        None => read_manual(host)?,
    };
    let sources = config::Sources {
        file: cli.config.clone(),
        env: std::env::vars().collect(),
        flags,
        manual_join: line.is_some(),
        persisted,
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

/// What an earlier `up --join` settled on this node (see [`crate::join::MANUAL_FILE`]).
fn read_manual(host: &dyn Host) -> Result<Option<config::FlagLayer>, Error> {
    let path = Path::new(crate::join::MANUAL_FILE);
    let Some(bytes) = host.read(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::Failed(format!(
            "{}: unreadable ({e}); remove it, or run `bootstrap reset` to start over",
            crate::join::MANUAL_FILE
        ))
    })
}

/// Keeps what `up --join` settled: the role, the controller named by the line and its
/// join port, and the cluster's name once join material has told it, so `up`, `leave`,
/// `status` and this node's own join service see the same configuration later without
/// the line.
pub(crate) fn persist_manual(
    host: &dyn Host,
    config: &Config,
    cluster_name: Option<&str>,
) -> Result<(), Error> {
    let mut layer = serde_json::json!({
        "role": config.role.to_string(),
        "cluster": {"controllers": config.cluster.controllers},
        "join": {"port": config.join.port},
    });
    if let Some(name) = cluster_name.or(config.cluster.name.as_deref()) {
        layer["cluster"]["name"] = serde_json::json!(name);
    }
    host.create_dir_all(Path::new("/var/lib/bootstrap/join"), 0o700)?;
    let mut text = serde_json::to_vec_pretty(&layer).unwrap_or_default();
    text.push(b'\n');
    host.write_atomic(Path::new(crate::join::MANUAL_FILE), &text, 0o600, None)?;
    Ok(())
}

/// The join line of `up --join FILE`, read and parsed.
fn read_join_line(cli: &Cli) -> Result<Option<crate::join::manual::JoinLine>, Error> {
    let Some(Command::Up(crate::cli::UpArgs {
        join: Some(path), ..
    })) = &cli.command
    else {
        return Ok(None);
    };
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Error::Usage(format!("--join -: cannot read standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("--join {}: {e}", path.display())))?
    };
    crate::join::manual::JoinLine::parse(&text)
        .map(Some)
        .map_err(|why| Error::Usage(format!("--join {}: {why}", path.display())))
}

impl Session {
    pub(crate) fn open(cli: &Cli) -> Result<Session, Error> {
        Session::open_with(cli, Fetch::Never)
    }

    /// Opens the session; `fetch` says whether an archive URL may be downloaded now.
    pub(crate) fn open_with(cli: &Cli, fetch: Fetch) -> Result<Session, Error> {
        let host = open_host(cli)?;
        let config = load_config(cli, &host)?;
        let facts = match &cli.facts {
            Some(path) => Facts::load(path)?,
            None => Facts::gather(&host)?,
        };
        let opened = open_image(&host, &config, &facts.arch, fetch)?;
        Ok(Session {
            from_archive: opened.from_archive,
            archive_digest: opened.digest,
            upgrading: false,
            host,
            config,
            facts,
            image: opened.image,
        })
    }

    /// Reads the cluster image again, now that `rootfs.archive` is unpacked.
    pub(crate) fn reopen_image(&mut self) -> Result<(), Error> {
        let opened = open_image(&self.host, &self.config, &self.facts.arch, Fetch::Never)?;
        self.image = opened.image;
        self.from_archive = opened.from_archive;
        Ok(())
    }

    /// The join secret this node's join service and join requests use: the configured
    /// one, else the one `up` made or received ([`crate::join::NODE_SECRET_FILE`]).
    pub(crate) fn join_secret(&self) -> Result<Option<crate::secret::Secret>, Error> {
        if let Some(secret) = self.config.join_secret() {
            return Ok(Some(secret.clone()));
        }
        self.node_secret()
    }

    /// The keys of this node's join secret ([`Session::join_secret`]), salted with the
    /// cluster's name; `None` without a secret. Argon2id: derive once per command.
    pub(crate) fn join_keys(&self) -> Result<Option<crate::join::JoinKeys>, Error> {
        let Some(secret) = self.join_secret()? else {
            return Ok(None);
        };
        crate::join::JoinKeys::from_secret(&secret, self.config.cluster_name())
            .map(Some)
            .map_err(|e| Error::Failed(e.to_string()))
    }

    /// The secret in [`crate::join::NODE_SECRET_FILE`], if there is one.
    fn node_secret(&self) -> Result<Option<crate::secret::Secret>, Error> {
        let path = Path::new(crate::join::NODE_SECRET_FILE);
        let Some(text) = self.host.read_string(path)? else {
            return Ok(None);
        };
        let secret = text.trim();
        if secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(crate::secret::Secret::new(secret)))
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
    pub(crate) fn plan(&self, role: &RoleDecision) -> Result<Plan, Error> {
        let material = self.join_material(role)?;
        let mut view = self.view(role, material.as_ref());
        if role.role.is_controller() && self.config.join_secret().is_none() {
            view.kept_join_secret = self.node_secret()?;
        }
        Ok(crate::node_plan::plan(&view)?)
    }

    /// What `up --stage install` puts in place (see [`crate::node_plan::install_plan`]).
    pub(crate) fn install_plan(&self) -> Result<Plan, Error> {
        let decision = RoleDecision {
            role: crate::role::Role::InitController,
            reason: "image baking: no role yet".into(),
            decided_at: None,
            joined_existing: None,
        };
        Ok(crate::node_plan::install_plan(&self.view(&decision, None))?)
    }

    /// This node as the plan sees it, for a role and (a joiner's) checked material.
    pub(crate) fn view<'a>(
        &'a self,
        role: &RoleDecision,
        material: Option<&'a crate::distro::JoinMaterial>,
    ) -> crate::node_plan::NodeView<'a> {
        crate::node_plan::NodeView {
            host: &self.host,
            config: &self.config,
            facts: &self.facts,
            image: &self.image,
            from_archive: self.from_archive,
            role: role.role,
            node_name: self.node_name(),
            node_address: self.node_address(),
            material,
            kept_join_secret: None,
            running_binary: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "/usr/bin/bootstrap".to_owned()),
            archive_digest: self.archive_digest.clone(),
        }
    }

    /// The driver's view of this node.
    pub(crate) fn distro_context<'a>(
        &'a self,
        role: &RoleDecision,
        material: Option<&'a crate::distro::JoinMaterial>,
    ) -> crate::distro::Context<'a> {
        self.view(role, material).distro_context()
    }

    /// Join material for a node of `role`, minted on this controller, with what the
    /// node needs to reach the join services later: their addresses and the pin of
    /// `keys` (this node's join keys, when it has a secret), and for a controller the
    /// join secret (its own join service will need it) and the cluster's name.
    pub(crate) fn mint(
        &self,
        decision: &RoleDecision,
        role: crate::distro::JoinRole,
        ttl: std::time::Duration,
        keys: Option<&crate::join::JoinKeys>,
    ) -> Result<crate::distro::JoinMaterial, Error> {
        let ctx = self.distro_context(decision, None);
        let mut material = crate::distro::driver(self.image.distro).mint(&ctx, role, ttl)?;
        material.join.services = self.join_services(decision)?;
        material.join.cluster_id = crate::state::read_json::<crate::state::ClusterRecord>(
            &self.host,
            crate::state::CLUSTER_FILE,
        )
        .map(|r| r.id);
        material.join.pin = keys.map(crate::join::JoinKeys::pin);
        if role == crate::distro::JoinRole::Controller {
            material.join.secret = self.join_secret()?;
        }
        Ok(material)
    }

    /// `host:port` of every join service this node knows: the configured controllers',
    /// those its own join material named, and its own on a controller.
    pub(crate) fn join_services(&self, decision: &RoleDecision) -> Result<Vec<String>, Error> {
        let port = self.config.join.port;
        let mut out = crate::join::targets(&self.config.cluster.controllers, port);
        if let Some(material) = crate::distro::JoinMaterial::load(&self.host)
            .map_err(crate::distro::DistroError::from)?
        {
            out.extend(material.join.services);
        }
        if decision.role.is_controller() {
            if let Some(address) = self.node_address() {
                out.push(crate::distro::host_port(&address.to_string(), port));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|t| seen.insert(t.clone()));
        Ok(out)
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

/// The cluster image as a command finds it.
struct Opened {
    image: ClusterImage,
    /// Read from the archive, which is not unpacked yet.
    from_archive: bool,
    /// An archive URL's SHA-256 and where it came from.
    digest: Option<(String, String)>,
}

/// The cluster image: the unpacked folder, or — while `rootfs.archive` is not unpacked
/// yet — the archive itself, read without unpacking it. An archive URL is downloaded
/// and unpacked first when `fetch` allows; it is never read twice.
fn open_image(
    host: &RootedHost,
    config: &Config,
    arch: &str,
    fetch: Fetch,
) -> Result<Opened, Error> {
    let dir = &config.rootfs.dir;
    let opened = |image, from_archive| Opened {
        image,
        from_archive,
        digest: None,
    };
    let Some(archive) = &config.rootfs.archive else {
        unpack::restore_moved_aside(&host.real_path(dir)?)?;
        return Ok(opened(ClusterImage::open(host, dir, arch)?, false));
    };
    if let Some(url) = crate::rootfs::remote::url_of(archive) {
        return open_remote(host, config, arch, url, fetch);
    }
    let archive_real = host.real_path(archive)?;
    let dest_real = host.real_path(dir)?;
    let digest = unpack::expected_digest(&archive_real, config.rootfs.sha256.as_deref())?;
    let unpacked = unpack::find_unpacked(
        &archive_real,
        &dest_real,
        digest.as_ref().map(|d| d.0.as_str()),
    );
    // Published but `rootfs.dir` not there at all: a run died between publishing the
    // unpacked folder and linking it; the unpack step finishes that (reusing the copy).
    let unpacked = unpacked.filter(|_| std::fs::symlink_metadata(&dest_real).is_ok());
    if let Some(version) = unpacked {
        if !unpack::points_at(&dest_real, &version) {
            // `bootstrap upgrade` moved the node to a newer image since this archive
            // was unpacked; unpacking it again would be a downgrade.
            log::info!(
                "rootfs.archive {} was unpacked before and has been superseded (bootstrap upgrade); using the image at {}",
                archive.display(),
                dir.display()
            );
        }
        return Ok(opened(ClusterImage::open(host, dir, arch)?, false));
    }
    let (listing, _) = crate::rootfs::inspect::list_archive(&archive_real)?;
    let mut image = ClusterImage::read(&listing, arch)?;
    image.dir = dir.clone();
    Ok(opened(image, true))
}

/// The image `rootfs.archive` names by URL: unpacked already (found by its digest), or
/// downloaded and unpacked now when `fetch` allows.
fn open_remote(
    host: &RootedHost,
    config: &Config,
    arch: &str,
    url: &str,
    fetch: Fetch,
) -> Result<Opened, Error> {
    let remote = remote(host, config, url)?;
    let (sha256, source) = remote.digest(config.rootfs.sha256.as_deref())?;
    let source = match config.rootfs.sha256 {
        Some(_) => "rootfs.sha256".to_owned(),
        None => source,
    };
    let dir = &config.rootfs.dir;
    let dest_real = host.real_path(dir)?;
    let unpacked = unpack::find_unpacked(Path::new(&remote.shown()), &dest_real, Some(&sha256))
        // As for a local archive: published but never linked, so unpack (reuse) again.
        .filter(|_| std::fs::symlink_metadata(&dest_real).is_ok());
    if unpacked.is_none() {
        if fetch == Fetch::Never {
            return Err(Error::Failed(format!(
                "rootfs.archive {} is not downloaded yet: `bootstrap up` downloads and unpacks it (`bootstrap rootfs inspect URL` shows what it holds)",
                remote.shown()
            )));
        }
        let options = unpack::UnpackOptions {
            sha256: Some(sha256.clone()),
            sha256_source: Some(source.clone()),
            host_arch: arch.to_owned(),
            ..unpack::UnpackOptions::default()
        };
        remote.unpack(&dest_real, &options)?;
    } else if unpacked.is_some_and(|v| !unpack::points_at(&dest_real, &v)) {
        log::info!(
            "rootfs.archive {} was unpacked before and has been superseded (bootstrap upgrade); using the image at {}",
            remote.shown(),
            dir.display()
        );
    }
    Ok(Opened {
        image: ClusterImage::open(host, dir, arch)?,
        from_archive: false,
        digest: Some((sha256, source)),
    })
}

/// The archive URL with the trust and scheme `rootfs.*` allow.
pub(crate) fn remote(
    host: &RootedHost,
    config: &Config,
    url: &str,
) -> Result<crate::rootfs::remote::Remote, Error> {
    let trust = match &config.rootfs.ca_file {
        Some(path) => crate::http::Trust::with_ca_file(&host.real_path(path)?)
            .map_err(unpack::UnpackError::from)?,
        None => crate::http::Trust::default(),
    };
    Ok(crate::rootfs::remote::Remote::new(
        url,
        trust,
        config.rootfs.insecure_http,
    )?)
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
