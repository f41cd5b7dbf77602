//! `bootstrap serve`: the join service on a controller (run by `bootstrap-join.service`).

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::{Error, Session};
use crate::cli::{Cli, ServeArgs};
use crate::distro::{JoinMaterial, JoinRole};
use crate::host::{Host, RootedHost};
use crate::join::{server, JoinKeys};
use crate::role::{self, RoleDecision};

/// Mints through the distro driver of this controller.
struct DistroMinter {
    session: Session,
    decision: RoleDecision,
    /// The service's own keys, derived once: their pin goes into the material.
    keys: JoinKeys,
}

impl server::Minter for DistroMinter {
    fn mint(&self, role: JoinRole, ttl: Duration) -> Result<JoinMaterial, String> {
        self.session
            .mint(&self.decision, role, ttl, Some(&self.keys))
            .map_err(|e| e.to_string())
    }
}

/// Removes worker nodes with this controller's admin credentials.
struct DistroNodes {
    host: RootedHost,
    distro: crate::distro::DistroKind,
    /// This controller's node name.
    this_node: String,
}

impl server::Nodes for DistroNodes {
    fn remove(&self, name: &str, drain_timeout: Duration) -> Result<String, String> {
        let driver = crate::distro::driver(self.distro);
        let ops = crate::distro::NodeOps::new(&self.host, driver, driver.admin_kubeconfig());
        if ops.is_controller(name).map_err(|e| e.to_string())? {
            return Err(format!(
                "{name} is a controller; a controller leaves with `bootstrap leave` on itself"
            ));
        }
        ops.remove(name, drain_timeout).map_err(|e| e.to_string())
    }

    /// A controller asking for join material has no join material of its own: it is a
    /// new machine. A Node of its name or address that is NotReady is the machine it
    /// replaces; that Node and its etcd member go first, so the new one joins in its
    /// place. Removing a member that is down never costs quorum, but only a control plane
    /// that has quorum now (its API answers /readyz) may change its membership.
    fn replace(&self, name: &str, address: std::net::IpAddr) -> Result<Option<String>, String> {
        let driver = crate::distro::driver(self.distro);
        let ops = crate::distro::NodeOps::new(&self.host, driver, driver.admin_kubeconfig());
        let found = ops.find(name, Some(address)).map_err(|e| e.to_string())?;
        let stale = match found {
            Some((node, true)) => {
                if node == name {
                    // Ready under its own name: the same machine asking again.
                    return Ok(None);
                }
                return Err(format!(
                    "node {node} still has address {address} and is Ready; a new controller cannot take its place until it is gone"
                ));
            }
            Some((node, false)) => Some(node),
            None => None,
        };
        if !ops.api_ready().map_err(|e| e.to_string())? {
            return Err("the control plane does not answer /readyz (no quorum?); not changing its membership now".into());
        }
        let removed = driver
            .forget_controller(&self.host, &self.this_node, stale.as_deref(), address)
            .map_err(|e| e.to_string())?;
        Ok((!removed.is_empty()).then(|| removed.join(", ")))
    }
}

/// The control-plane join lease in the cluster, through this controller's kubectl.
struct InClusterAdmission {
    host: RootedHost,
    distro: crate::distro::DistroKind,
}

impl InClusterAdmission {
    fn lease(&self) -> crate::distro::lease::ClusterLease<'_> {
        crate::distro::lease::ClusterLease {
            host: &self.host,
            driver: crate::distro::driver(self.distro),
            duration: crate::join::admission::LEASE,
        }
    }
}

impl server::Admit for InClusterAdmission {
    fn acquire(&self, node: &str) -> Result<(), String> {
        self.lease().acquire(node)
    }

    fn release(&self, node: &str) {
        let lease = self.lease();
        match lease.holder() {
            Ok(Some(holder)) if holder == node => {
                // While the joined controller still holds the lease nobody else mints:
                // what was shared only for its join goes first (kubeadm's encrypted
                // certificates), then the lease.
                let driver = crate::distro::driver(self.distro);
                if let Err(e) = driver.after_controller_joined(&self.host) {
                    log::warn!("after {node} joined: {e}");
                }
                if let Err(e) = lease.release(node) {
                    log::warn!("could not release the control-plane join lease of {node}: {e}; it lapses by itself");
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!(
                "could not read the control-plane join lease to release it for {node}: {e}; it lapses by itself"
            ),
        }
    }
}

/// The fleet's upgrade turns, from the lease in the cluster, through this controller's
/// kubectl.
struct InClusterUpgrades {
    host: RootedHost,
    distro: crate::distro::DistroKind,
    max_workers: u32,
}

impl server::Upgrades for InClusterUpgrades {
    fn acquire(&self, node: &str, role: JoinRole, target: &str) -> Result<(), String> {
        use crate::distro::upgrade_lease::{Ask, UpgradeLease};
        let driver = crate::distro::driver(self.distro);
        // Only a worker's turn depends on the controllers; a controller's never does.
        let controllers = match role {
            JoinRole::Worker => driver
                .controllers(&self.host, driver.admin_kubeconfig())
                .map_err(|e| format!("waiting: cannot list the controllers: {e}"))?,
            JoinRole::Controller => Vec::new(),
        };
        let lease = UpgradeLease {
            host: &self.host,
            driver,
        };
        lease.acquire(&Ask {
            node,
            role,
            target,
            controllers: &controllers,
            max_workers: self.max_workers,
            now: crate::join::unix_now(),
        })?;
        if role == JoinRole::Worker {
            // Its pods move elsewhere before its kubelet is replaced; its own
            // credentials may not evict them, this controller's may.
            let ops = crate::distro::NodeOps::new(&self.host, driver, driver.admin_kubeconfig());
            if ops.presence(node).map_err(|e| format!("waiting: {e}"))?
                == crate::distro::Presence::Present
            {
                self.host
                    .run_checked(&ops.drain_command(node, server::UPGRADE_DRAIN))
                    .map_err(|e| format!("waiting: draining {node} failed: {e}"))?;
            }
        }
        Ok(())
    }

    fn finish(&self, node: &str, version: &str) -> Result<(), String> {
        let driver = crate::distro::driver(self.distro);
        let lease = crate::distro::upgrade_lease::UpgradeLease {
            host: &self.host,
            driver,
        };
        let ops = crate::distro::NodeOps::new(&self.host, driver, driver.admin_kubeconfig());
        // A drained worker takes pods again (a controller uncordons itself, or was never
        // cordoned); a node that is no Node has nothing to uncordon.
        if !ops.is_controller(node).unwrap_or(true)
            && ops.presence(node).ok() == Some(crate::distro::Presence::Present)
        {
            self.host
                .run_checked(&ops.uncordon_command(node))
                .map_err(|e| format!("cannot uncordon {node}: {e}"))?;
        }
        lease.finish(node, version)
    }
}

/// What this controller knows of its cluster, for a first controller asking before it
/// initialises.
struct NodeCluster {
    host: RootedHost,
    distro: crate::distro::DistroKind,
    version: String,
}

impl server::ClusterView for NodeCluster {
    fn cluster(&self) -> Option<crate::join::proto::ClusterInfo> {
        use crate::state::{self, ClusterRecord};
        use sha2::Digest;
        let record: Option<ClusterRecord> = state::read_json(&self.host, state::CLUSTER_FILE);
        let done = self
            .host
            .exists(std::path::Path::new(state::DONE_FILE))
            .unwrap_or(false);
        if record.is_none() && !done {
            return None;
        }
        let driver = crate::distro::driver(self.distro);
        let ca_hash = self
            .host
            .read(std::path::Path::new(driver.layout().ca_cert))
            .ok()
            .flatten()
            .map(|pem| format!("sha256:{}", hex::encode(sha2::Sha256::digest(pem))));
        let members = driver
            .controllers(&self.host, driver.admin_kubeconfig())
            .unwrap_or_default();
        Some(crate::join::proto::ClusterInfo {
            // A controller set up before clusters had ids is in a cluster all the same.
            id: record.map(|r| r.id).unwrap_or_else(|| "unrecorded".into()),
            distro: self.distro.to_string(),
            version: self.version.clone(),
            ca_hash,
            members,
        })
    }
}

pub(super) fn run(cli: &Cli, args: &ServeArgs) -> Result<(), Error> {
    let session = Session::open(cli)?;
    let keys = session.join_keys()?.ok_or_else(|| {
        Error::Usage(format!(
            "serve: no join secret (cluster.join_secret_file, or {} which `up` makes on a controller)",
            crate::join::NODE_SECRET_FILE
        ))
    })?;
    let decision = role::load(&session.host)?.ok_or_else(|| {
        Error::Failed("serve: this node has not been set up; run `bootstrap up` first".into())
    })?;
    if !decision.role.is_controller() {
        return Err(Error::Failed(format!(
            "serve: this node is a {}; only controllers serve join material",
            decision.role
        )));
    }
    let port = session.config.join.port;
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| format!("[::]:{port}"));
    let credentials_file = session.host.real_path(std::path::Path::new(
        crate::join::credentials::CREDENTIALS_FILE,
    ))?;
    let nodes = DistroNodes {
        host: session.host.clone(),
        distro: session.image.distro,
        this_node: session.node_name(),
    };
    let ttl = session.config.join.token_ttl;
    let max_per_peer = args.max_per_peer;
    let description = format!(
        "{} {}",
        session.image.distro, session.image.metadata.version
    );
    // Every controller admits controller joins, one at a time, from the lease in the
    // cluster; and answers whether a cluster exists.
    let admission = InClusterAdmission {
        host: session.host.clone(),
        distro: session.image.distro,
    };
    let upgrades = InClusterUpgrades {
        host: session.host.clone(),
        distro: session.image.distro,
        max_workers: session.config.upgrade.max_unavailable,
    };
    let cluster = NodeCluster {
        host: session.host.clone(),
        distro: session.image.distro,
        version: session.image.metadata.version.clone(),
    };
    let minter = DistroMinter {
        session,
        decision,
        keys: keys.clone(),
    };
    let service = server::Service::new(
        keys,
        Box::new(minter),
        Box::new(crate::join::credentials::CredentialStore::new(
            credentials_file,
        )),
        None,
        ttl,
    )
    .map_err(Error::Failed)?
    .with_admission(Box::new(admission))
    .with_upgrades(Box::new(upgrades))
    .with_cluster(Box::new(cluster))
    .with_max_per_peer(max_per_peer)
    .with_nodes(Box::new(nodes));
    // `[::]` takes IPv4 too on Linux; a host without IPv6 gets 0.0.0.0.
    let listener = TcpListener::bind(&listen)
        .or_else(|e| match &args.listen {
            None => TcpListener::bind(("0.0.0.0", port)),
            Some(_) => Err(e),
        })
        .map_err(|e| Error::Failed(format!("serve: cannot listen on {listen}: {e}")))?;
    log::info!("join service for this {description} cluster listening on {listen}");
    server::serve(
        listener,
        Arc::new(service),
        Arc::new(AtomicBool::new(false)),
    )
    .map_err(|e| Error::Failed(format!("serve: {e}")))
}
