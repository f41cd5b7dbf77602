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
    host: RootedHost,
    config: crate::config::Config,
    image: crate::rootfs::ClusterImage,
    decision: RoleDecision,
    node_name: String,
    node_address: Option<std::net::IpAddr>,
}

impl server::Minter for DistroMinter {
    fn mint(&self, role: JoinRole, ttl: Duration) -> Result<JoinMaterial, String> {
        let ctx = crate::distro::Context {
            host: &self.host,
            config: &self.config,
            image: &self.image,
            role: self.decision.role,
            node_name: self.node_name.clone(),
            node_address: self.node_address,
            material: None,
        };
        crate::distro::driver(self.image.distro)
            .mint(&ctx, role, ttl)
            .map_err(|e| e.to_string())
    }
}

pub(super) fn run(cli: &Cli, args: &ServeArgs) -> Result<(), Error> {
    let session = Session::open(cli)?;
    let secret = session.config.join_secret().cloned().ok_or_else(|| {
        Error::Usage("serve: no join secret configured (cluster.join_secret_file)".into())
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
    let keys = JoinKeys::from_secret(&secret);
    let minter = DistroMinter {
        node_name: session.node_name(),
        node_address: session.node_address(),
        host: session.host.clone(),
        config: session.config.clone(),
        image: session.image.clone(),
        decision,
    };
    let service = server::Service::new(
        keys,
        Box::new(minter),
        Box::new(crate::join::manual::CredentialStore {
            file: session
                .host
                .real_path(std::path::Path::new(crate::join::manual::CREDENTIALS_FILE))?,
        }),
        admission,
        session.config.join.token_ttl,
    )
    .map_err(Error::Failed)?
    .with_max_per_peer(args.max_per_peer);
    // `[::]` takes IPv4 too on Linux; a host without IPv6 gets 0.0.0.0.
    let listener = TcpListener::bind(&listen)
        .or_else(|e| match &args.listen {
            None => TcpListener::bind(("0.0.0.0", port)),
            Some(_) => Err(e),
        })
        .map_err(|e| Error::Failed(format!("serve: cannot listen on {listen}: {e}")))?;
    log::info!(
        "join service for this {} {} cluster listening on {listen}",
        session.image.distro,
        session.image.metadata.version
    );
    server::serve(
        listener,
        Arc::new(service),
        Arc::new(AtomicBool::new(false)),
    )
    .map_err(|e| Error::Failed(format!("serve: {e}")))
}
