//! The join service and its client: authenticated join material from any controller, with
//! trust coming from the pre-shared join secret (see docs/join-protocol.md).

pub mod admission;
pub mod client;
pub mod credentials;
pub mod deadline;
pub mod intake;
pub mod keys;
pub mod manual;
pub mod mint;
pub mod proto;
pub mod responder;
pub mod server;
pub mod throttle;
pub mod tls;

pub use client::{Backoff, Cause, Fetch, GaveUp};
pub use keys::{JoinKeys, KeyError, DEFAULT_CLUSTER_NAME};

/// Where the first controller keeps the control-plane admission lease.
pub const LEASE_FILE: &str = "/var/lib/bootstrap/join/lease.json";
/// The join service's unit.
pub const UNIT: &str = "bootstrap-join.service";
/// The join secret of a controller that has none configured: made by `up` on a first
/// controller brought up without one, or received in a controller's join material (0600).
pub const NODE_SECRET_FILE: &str = "/var/lib/bootstrap/join/join-secret";
/// What `up --join FILE` settled (role, controller, join port), so later runs without the
/// line see the same configuration.
pub const MANUAL_FILE: &str = "/var/lib/bootstrap/join/manual.json";

/// `host:port` of each controller's join service, in `cluster.controllers` order.
pub fn targets(controllers: &[String], port: u16) -> Vec<String> {
    controllers
        .iter()
        .map(|c| crate::distro::host_port(c, port))
        .collect()
}

/// Seconds since the Unix epoch (lease and credential expiry).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `bootstrap-join.service`: `bootstrap serve`, restarted when it dies.
pub fn unit_text(binary: &str) -> Result<String, crate::systemd::UnitError> {
    crate::systemd::daemon_unit(
        "bootstrap join service (join material for new nodes)",
        format!("{binary} serve"),
        "5",
        &[],
        // It mints with the distro's own tools, as root; what it needs of the file
        // system is the distro's and bootstrap's state.
        &[("PrivateTmp", "yes"), ("ProtectHome", "yes")],
    )
    .render()
}

/// Steps that install and start the join service on a controller.
pub fn service_steps(
    image_binary: Option<std::path::PathBuf>,
    fallback_binary: &str,
) -> Result<Vec<crate::plan::Step>, crate::systemd::UnitError> {
    use crate::plan::{Action, Contents, Phase, ServiceAction, Step};
    const INSTALLED: &str = "/usr/local/bin/bootstrap";
    let mut steps = Vec::new();
    let binary = match image_binary {
        Some(source) => {
            steps.push(Step::new(
                Phase::PostInstall,
                "the join service runs the cluster image's bootstrap",
                Action::InstallBinary {
                    source,
                    dest: std::path::PathBuf::from(INSTALLED),
                    mode: 0o755,
                },
            ));
            INSTALLED.to_owned()
        }
        None => fallback_binary.to_owned(),
    };
    let unit = unit_text(&binary)?;
    let path = format!("/etc/systemd/system/{UNIT}");
    steps.push(Step::new(
        Phase::PostInstall,
        "controllers hand join material to new nodes",
        Action::WriteFile {
            path: std::path::PathBuf::from(&path),
            mode: 0o644,
            owner: None,
            contents: Contents::Public(unit.clone().into_bytes()),
        },
    ));
    steps.push(crate::systemd::daemon_reload(Phase::PostInstall, &[&unit]));
    for action in [ServiceAction::Enable, ServiceAction::Start] {
        steps.push(Step::new(
            Phase::PostInstall,
            "the join service runs now and at every boot",
            Action::Service {
                unit: UNIT.to_owned(),
                action,
            },
        ));
    }
    steps.push(
        Step::new(
            Phase::PostInstall,
            "a changed unit takes effect",
            Action::Service {
                unit: UNIT.to_owned(),
                action: ServiceAction::RestartNoBlock,
            },
        )
        .keyed(&[unit.as_bytes()]),
    );
    Ok(steps)
}
