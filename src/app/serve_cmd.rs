//! `bootstrap serve`: the join service on a controller (run by `bootstrap-join.service`).

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::{Error, Session};
use crate::cli::{Cli, ServeArgs};
use crate::distro::{JoinMaterial, JoinRole};
use crate::host::{Host, RootedHost};
use crate::join::{admission::Admission, server, JoinKeys};
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
    // The first controller admits controller joins, one at a time.
    let admission = (decision.role == crate::role::Role::InitController).then(|| {
        let file = session
            .host
            .real_path(std::path::Path::new(crate::join::LEASE_FILE))
            .ok();
        if let Some(dir) = file.as_ref().and_then(|f| f.parent()) {
            let _ = std::fs::create_dir_all(dir);
        }
        Admission::new(file, crate::join::admission::LEASE)
    });
    let credentials_file = session
        .host
        .real_path(std::path::Path::new(crate::join::manual::CREDENTIALS_FILE))?;
    let nodes = DistroNodes {
        host: session.host.clone(),
        distro: session.image.distro,
    };
    let ttl = session.config.join.token_ttl;
    let max_per_peer = args.max_per_peer;
    let description = format!(
        "{} {}",
        session.image.distro, session.image.metadata.version
    );
    let minter = DistroMinter {
        session,
        decision,
        keys: keys.clone(),
    };
    let service = server::Service::new(
        keys,
        Box::new(minter),
        Box::new(crate::join::manual::CredentialStore {
            file: credentials_file,
        }),
        admission,
        ttl,
    )
    .map_err(Error::Failed)?
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
