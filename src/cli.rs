//! The command line (clap derive). Flags that set configuration share the config's field
//! names and are merged as the last figment layer.

pub use crate::logging::LogFormat;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{FlagLayer, RoleSetting};

/// Bring up this node of a k3s, k0s or kubeadm cluster from a cluster image.
#[derive(Debug, Parser)]
#[command(name = "bootstrap", version, about, max_term_width = 80)]
#[command(after_help = "Without a command, `bootstrap` runs `up`.\n\
Exit codes: 0 done, 1 failed, 2 bad usage or config, 3 preflight failed,\n\
4 timed out waiting for a peer.")]
pub struct Cli {
    /// Config file [default: /etc/bootstrap/config.yaml under --root]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Treat DIR as the host's `/` (tests, image baking)
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Log line format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More detail in logs (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Take host facts from this JSON file instead of probing the host
    #[arg(long, global = true, value_name = "FILE")]
    pub facts: Option<PathBuf>,

    #[command(flatten)]
    pub overrides: Overrides,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// The line of `up --join FILE`, read once before anything else (FILE may be
    /// standard input, which can be read only once).
    #[arg(skip)]
    pub join_line: Option<crate::join::manual::JoinLine>,
}

/// Settings that may also come from flags (they win over file and environment).
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// This node's role (config `role`)
    #[arg(long, global = true, value_enum)]
    pub role: Option<RoleSetting>,

    /// Kubernetes node name (config `node.name`)
    #[arg(long, global = true, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Address other nodes reach this one on (config `node.address`)
    #[arg(long, global = true, value_name = "IP")]
    pub node_address: Option<IpAddr>,

    /// A controller address or name; repeat in order (config
    /// `cluster.controllers`)
    #[arg(long = "controller", global = true, value_name = "HOST")]
    pub controllers: Vec<String>,

    /// API endpoint host:port (config `cluster.endpoint`)
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,

    /// File holding the join secret (config `cluster.join_secret_file`)
    #[arg(long, global = true, value_name = "FILE")]
    pub join_secret_file: Option<PathBuf>,

    /// The unpacked cluster image (config `rootfs.dir`)
    #[arg(long, global = true, value_name = "DIR")]
    pub rootfs_dir: Option<PathBuf>,

    /// Report this preflight check's failure but go on; repeatable
    #[arg(long, global = true, value_name = "NAME")]
    pub ignore_preflight: Vec<String>,
}

/// Output format of reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Converge this node: preflight, host preparation, cluster image, runtime,
    /// registry, distro init or join
    Up(UpArgs),
    /// Print what `up` would do; change nothing
    Plan(PlanArgs),
    /// Role, distro, progress, services and last error of this node
    Status(StatusArgs),
    /// Run the host checks only
    Preflight(OutputArgs),
    /// Join material for other nodes (on a running controller)
    #[command(subcommand)]
    Token(TokenCommand),
    /// Join secrets
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The join service: hands join material to nodes that prove they hold the join
    /// secret (run on controllers by bootstrap-join.service)
    Serve(ServeArgs),
    /// The node-local API load balancer of a kubeadm cluster without cluster.endpoint:
    /// passes connections on 127.0.0.1:6444 to a controller that answers (run by
    /// bootstrap-apiserver-proxy.service)
    ApiserverProxy(ApiserverProxyArgs),
    /// Take this node out of the cluster (drain, delete the node and its etcd
    /// member), then reset it
    Leave(LeaveArgs),
    /// Undo what bootstrap installed on this node: the distro's teardown, then
    /// every file, unit and /etc/hosts line in bootstrap's journal
    Reset(ResetArgs),
    /// Move this node to a newer cluster image (version-skew rules checked first)
    Upgrade(UpgradeArgs),
    /// Cluster-image tools (paths here are paths on this machine, not under
    /// --root)
    #[command(subcommand)]
    Rootfs(RootfsCommand),
    /// Print the version
    Version,
}

/// `bootstrap rootfs …`
#[derive(Debug, Subcommand)]
pub enum RootfsCommand {
    /// Show what a cluster image (folder or archive) holds
    Inspect {
        /// A cluster-image folder or archive (.tar, .tar.gz, .tar.zst), or an
        /// https:// URL (read as it downloads; nothing is written)
        path: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Unpack an archive safely into DEST (staged, verified, versioned)
    Unpack {
        /// The archive (plain, gzip or zstd tar; recognised by content)
        archive: PathBuf,
        /// Where the image should appear (a symlink to its version folder)
        dest: PathBuf,
        /// Expected SHA-256 [default: from ARCHIVE.sha256 if present]
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Refuse archives holding more, e.g. 8G [default: free space at DEST]
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
    },
}

/// `up` options.
#[derive(Debug, Clone, Default, Args)]
pub struct UpArgs {
    /// `install`: only put binaries, units and the cluster image in place (image
    /// baking, with --root): no role, no service started, nothing node-specific
    #[arg(long, value_enum, default_value_t = Stage::All)]
    pub stage: Stage,
    /// Join with a line from `bootstrap token create` on a controller, read from
    /// FILE (`-`: standard input) — never from argv, which other users can read
    #[arg(long, value_name = "FILE")]
    pub join: Option<PathBuf>,
    /// On cluster.controllers[0]: initialise a new cluster even though another listed
    /// controller reports one (a deliberate new cluster; never needed on a fresh one)
    #[arg(long)]
    pub new_cluster: bool,
}

/// How much of `up` to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Everything: the node ends up in the cluster
    #[default]
    All,
    /// What is the same on every node, for baking into a VM image
    Install,
}

/// `bootstrap token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a join line for a new node of role ROLE (this join service's address
    /// and pin and a short-lived credential) for `bootstrap up --join FILE` on that
    /// node, or with --material the join material itself
    Create {
        /// The role the new node joins as (not this node's role, which --role
        /// sets)
        #[arg(value_enum, value_name = "ROLE", id = "new_node_role")]
        role: Option<NewNodeRole>,
        /// Print the join material itself (JSON, to place at
        /// /var/lib/bootstrap/join/material.json) instead of a join line
        #[arg(long)]
        material: bool,
        /// How long the token works [default: join.token_ttl]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// List the join lines this controller handed out that have not expired: id,
    /// role, expiry and whether a node used it (a line works once); never a secret
    List,
    /// Revoke join line ID (from `token list`) before it expires
    Revoke {
        /// The line's id
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// `bootstrap secret …`
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print a new join secret on stdout: 256 random bits with a checksum that
    /// catches a typo where the secret is read (bjs1-HEX-CHECKSUM)
    Generate,
}

/// The role of a node that is to join (`token create ROLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NewNodeRole {
    /// A worker node
    Worker,
    /// A further control-plane node
    Controller,
}

/// `serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to listen on [default: 0.0.0.0:join.port]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Connections one address may have open at once (raise it when many nodes
    /// reach the controllers through one NAT address)
    #[arg(long, value_name = "N", default_value_t = crate::join::server::MAX_PER_PEER)]
    pub max_per_peer: usize,
}

/// `apiserver-proxy` options.
#[derive(Debug, Clone, Args)]
pub struct ApiserverProxyArgs {
    /// Address and port to listen on
    #[arg(long, value_name = "ADDR:PORT", default_value = crate::api_proxy::LISTEN)]
    pub listen: String,
}

/// `leave` options.
#[derive(Debug, Clone, Args)]
pub struct LeaveArgs {
    /// Drain and delete this node with this kubeconfig's credentials [default: the
    /// admin kubeconfig on controllers; on workers, a controller's join service]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Bound on draining the node
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub drain_timeout: String,
    /// Reset this node even when the cluster could not be told (its Node object
    /// may remain in the cluster)
    #[arg(long)]
    pub force: bool,
}

/// `reset` options.
#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// Also remove the unpacked cluster image (rootfs.dir and its versions)
    #[arg(long)]
    pub purge: bool,
}

/// `upgrade` options.
#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    /// The new cluster image: a folder, an archive (.tar, .tar.gz, .tar.zst), or
    /// an https:// URL (rootfs.ca_file and rootfs.insecure_http apply)
    #[arg(long = "rootfs", value_name = "DIR|ARCHIVE|URL")]
    pub image: PathBuf,
    /// Expected SHA-256 of the archive [default: from ARCHIVE.sha256 (or
    /// URL.sha256) beside it; a URL needs one]
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
}

/// `plan` options.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Print the effective configuration (secrets redacted) instead
    #[arg(long)]
    pub print_config: bool,
}

/// `status` options.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Block until this node's `up` has succeeded (exit 0) or failed (its exit
    /// code), printing progress on stderr
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 4), e.g. 30m [default: no
    /// bound]
    #[arg(long, value_name = "DURATION", requires = "wait")]
    pub timeout: Option<String>,
}

/// `--output` only.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl Overrides {
    /// The flags as a config-shaped layer (only those given).
    pub fn to_layer(&self) -> FlagLayer {
        use serde_json::{json, Map, Value};
        let mut root = Map::new();
        let mut node = Map::new();
        let mut cluster = Map::new();
        let mut rootfs = Map::new();
        if let Some(role) = self.role {
            root.insert("role".into(), json!(role.to_string()));
        }
        if let Some(name) = &self.node_name {
            node.insert("name".into(), json!(name));
        }
        if let Some(address) = &self.node_address {
            node.insert("address".into(), json!(address.to_string()));
        }
        if !self.controllers.is_empty() {
            cluster.insert("controllers".into(), json!(self.controllers));
        }
        if let Some(endpoint) = &self.endpoint {
            cluster.insert("endpoint".into(), json!(endpoint));
        }
        if let Some(file) = &self.join_secret_file {
            cluster.insert("join_secret_file".into(), json!(file));
        }
        if let Some(dir) = &self.rootfs_dir {
            rootfs.insert("dir".into(), json!(dir));
        }
        for (key, map) in [("node", node), ("cluster", cluster), ("rootfs", rootfs)] {
            if !map.is_empty() {
                root.insert(key.into(), Value::Object(map));
            }
        }
        root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_model_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_fits_in_80_columns() {
        let mut cmd = Cli::command().term_width(80);
        let mut helps = vec![cmd.render_long_help().to_string()];
        for sub in cmd.get_subcommands_mut() {
            helps.push(sub.clone().term_width(80).render_long_help().to_string());
        }
        for help in helps {
            for line in help.lines() {
                assert!(line.chars().count() <= 80, "too wide: {line:?}");
            }
        }
    }

    #[test]
    fn token_create_takes_the_new_nodes_role_as_its_own_argument() {
        let cli = Cli::try_parse_from(["bootstrap", "token", "create", "controller"]).unwrap();
        assert!(cli.overrides.role.is_none());
        match cli.command {
            Some(Command::Token(TokenCommand::Create { role, .. })) => {
                assert_eq!(role, Some(NewNodeRole::Controller))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bare_role_flag_means_up() {
        let cli = Cli::try_parse_from(["bootstrap", "--role", "controller"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.overrides.role, Some(RoleSetting::Controller));
        let layer = cli.overrides.to_layer();
        assert_eq!(layer["role"], "controller");
    }
}
