//! A node's turn in the fleet's upgrade: asked of the controllers' join services before
//! anything changes, waited for (bounded by `upgrade.wait`, the reason logged), and given
//! back with the version the node then runs. A one-node cluster has no fleet to wait for.

use std::time::{Duration, Instant};

use super::{Error, Session};
use crate::distro::upgrade_lease::reaches;
use crate::distro::{DistroError, JoinMaterial, JoinRole, NodeOps};
use crate::join::client::{self, Cause};
use crate::join::keys::NODE_CREDENTIAL_PREFIX;
use crate::join::proto::{Request, RequestKind};
use crate::join::JoinKeys;
use crate::role::RoleDecision;

/// How often a waiting node asks again.
const ASK_EVERY: Duration = Duration::from_secs(2);
/// How long a controller waits for the API server to report its new version.
const VERSION_WAIT: Duration = Duration::from_secs(5 * 60);
/// How long the end of a turn is retried before it is left to lapse.
const FINISH_PATIENCE: Duration = Duration::from_secs(60);

/// How this node proves itself to a join service: the cluster's join secret, or (a
/// worker without it) the node credential its join material holds.
pub(super) fn service_keys(
    session: &Session,
    node: &str,
) -> Result<Option<(JoinKeys, Option<String>)>, Error> {
    if let Some(keys) = session.join_keys()? {
        return Ok(Some((keys, None)));
    }
    let material = JoinMaterial::load(&session.host).map_err(DistroError::from)?;
    Ok(material
        .as_ref()
        .and_then(|m| m.join.pin.zip(m.join.node_credential.clone()))
        .map(|(pin, own)| {
            (
                JoinKeys::from_credential(pin, &own),
                Some(format!("{NODE_CREDENTIAL_PREFIX}{node}")),
            )
        }))
}

/// This node's turn, held until [`Turn::finish`].
pub(super) struct Turn {
    keys: JoinKeys,
    targets: Vec<String>,
    request: Request,
}

/// Waits for this node's turn to move to `target`; `None` on a one-node cluster.
pub(super) fn wait(
    session: &Session,
    decision: &RoleDecision,
    target: &str,
) -> Result<Option<Turn>, Error> {
    if !session.config.is_multi_node() {
        return Ok(None);
    }
    let node = session.node_name();
    let role = if decision.role.is_controller() {
        JoinRole::Controller
    } else {
        JoinRole::Worker
    };
    let refused = |why: String| {
        Error::Failed(format!(
            "upgrade: {node} cannot ask for its turn in the fleet's upgrade: {why}"
        ))
    };
    let (keys, credential) = service_keys(session, &node)?.ok_or_else(|| {
        refused(
            "it holds neither the join secret nor a node credential from its join material".into(),
        )
    })?;
    let targets = session.join_services(decision)?;
    if targets.is_empty() {
        return Err(refused(
            "no join service is known (cluster.controllers is empty and the join material names none)".into(),
        ));
    }
    let request = Request {
        version: 1,
        kind: RequestKind::Upgrade,
        role,
        node: node.clone(),
        credential,
        drain_timeout_secs: None,
        kube_version: Some(target.to_owned()),
    };
    let limit = session.config.upgrade.wait;
    let start = Instant::now();
    let mut said = String::new();
    loop {
        let why = match client::upgrade_turn(&keys, &targets, &request) {
            Ok(_) => {
                log::info!("{node}'s turn to upgrade to {target} has come");
                return Ok(Some(Turn {
                    keys,
                    targets,
                    request,
                }));
            }
            Err(Cause::Busy(why)) => why,
            Err(cause @ (Cause::Unreachable(_) | Cause::Protocol(_) | Cause::NotReady(_))) => {
                format!("waiting: no join service answers ({cause})")
            }
            Err(cause) => return Err(refused(cause.to_string())),
        };
        if why != said {
            log::info!("{why}");
            said = why;
        }
        if start.elapsed() >= limit {
            return Err(Error::PeerTimeout(format!(
                "upgrade: {node}'s turn has not come within upgrade.wait ({}); last reason: {said}. Nothing on this node was changed; run `bootstrap upgrade` again",
                humantime::format_duration(limit)
            )));
        }
        // Nothing has changed yet: a stop signal ends the wait at once.
        if let Some(signal) =
            crate::interrupt::sleep(ASK_EVERY.min(limit.saturating_sub(start.elapsed())))
        {
            return Err(Error::Stopped {
                signal,
                during: format!("waiting for {node}'s turn to upgrade; nothing was changed"),
            });
        }
    }
}

impl Turn {
    /// Ends the turn: this node runs `version`. A controller first waits until the API
    /// server reports it (through its own credentials), so the next controller starts
    /// only against an upgraded control plane. A turn that cannot be given back lapses.
    pub(super) fn finish(mut self, session: &Session, kubeconfig: Option<&str>, version: &str) {
        if let Some(kubeconfig) = kubeconfig {
            let driver = crate::distro::driver(session.image.distro);
            let ops = NodeOps::new(&session.host, driver, kubeconfig);
            let start = Instant::now();
            loop {
                match ops.server_version() {
                    Ok(seen) if reaches(&seen, version) => break,
                    Ok(seen) if start.elapsed() >= VERSION_WAIT => {
                        log::warn!("the API server still reports {seen}, not {version}; ending this node's upgrade turn anyway");
                        break;
                    }
                    Err(e) if start.elapsed() >= VERSION_WAIT => {
                        log::warn!("cannot ask the API server its version ({e}); ending this node's upgrade turn anyway");
                        break;
                    }
                    // Upgraded already: a stop signal only cuts this wait short.
                    _ => {
                        if crate::interrupt::sleep(ASK_EVERY).is_some() {
                            break;
                        }
                    }
                }
            }
        }
        self.request.kind = RequestKind::Upgraded;
        self.request.kube_version = Some(version.to_owned());
        let start = Instant::now();
        loop {
            match client::upgrade_turn(&self.keys, &self.targets, &self.request) {
                Ok(_) => {
                    log::info!(
                        "upgrade turn given back: {} runs {version}",
                        self.request.node
                    );
                    return;
                }
                Err(cause) if start.elapsed() >= FINISH_PATIENCE => {
                    log::warn!(
                        "could not end this node's upgrade turn ({cause}); it lapses by itself"
                    );
                    return;
                }
                Err(_) => std::thread::sleep(ASK_EVERY),
            }
        }
    }
}

/// What a controller decided about leading the move to `target`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Lead {
    target: String,
    leads: bool,
}

/// Whether this node is the first controller to move the cluster to `target` (kubeadm
/// upgrades the control plane from it, the others follow): the API server still runs an
/// older version. Decided once, after this node's turn came, and kept, so a resumed
/// upgrade runs the commands the interrupted one began.
pub(super) fn leads(
    session: &Session,
    decision: &RoleDecision,
    target: &str,
) -> Result<bool, Error> {
    use crate::state;
    if !decision.role.is_controller() {
        return Ok(false);
    }
    if let Some(kept) = state::read_json::<Lead>(&session.host, state::UPGRADE_LEAD_FILE) {
        if kept.target == target {
            return Ok(kept.leads);
        }
    }
    let leads = if !session.config.is_multi_node() {
        true
    } else {
        let driver = crate::distro::driver(session.image.distro);
        match NodeOps::new(&session.host, driver, driver.admin_kubeconfig()).server_version() {
            Ok(seen) => !reaches(&seen, target),
            Err(e) => {
                log::warn!("cannot ask the API server its version ({e}); the first controller leads the upgrade");
                decision.role == crate::role::Role::InitController
            }
        }
    };
    if leads {
        log::info!(
            "this controller is the first to move to {target}: it upgrades the control plane"
        );
    }
    state::write_json(
        &session.host,
        state::UPGRADE_LEAD_FILE,
        &Lead {
            target: target.to_owned(),
            leads,
        },
    )?;
    Ok(leads)
}
