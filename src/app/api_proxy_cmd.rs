//! `bootstrap apiserver-proxy`: the node-local API load balancer (run by
//! `bootstrap-apiserver-proxy.service` on kubeadm nodes of a cluster without
//! `cluster.endpoint`), over every controller this node knows of.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{Error, Session};
use crate::api_proxy::{self, Backends};
use crate::cli::{ApiserverProxyArgs, Cli};

pub(super) fn run(cli: &Cli, args: &ApiserverProxyArgs) -> Result<(), Error> {
    let session = Session::open(cli)?;
    let mut controllers = session.config.cluster.controllers.clone();
    // Controllers added by hand are not listed; the join services material names are.
    if let Some(material) = crate::distro::JoinMaterial::load(&session.host)
        .map_err(crate::distro::DistroError::from)?
    {
        controllers.extend(
            material
                .join
                .services
                .iter()
                .map(|s| crate::distro::endpoint_host(s)),
        );
    }
    let targets = api_proxy::targets(&controllers, crate::distro::API_PORT);
    if targets.is_empty() {
        return Err(Error::Failed(
            "apiserver-proxy: no controllers to pass connections to (cluster.controllers is empty)"
                .into(),
        ));
    }
    let listener = api_proxy::listen(&args.listen).map_err(|e| {
        Error::Failed(format!(
            "apiserver-proxy: cannot listen on {}: {e}",
            args.listen
        ))
    })?;
    log::info!(
        "API load balancer on {} over {}",
        args.listen,
        targets.join(", ")
    );
    api_proxy::run(
        listener,
        Arc::new(Backends::new(targets)),
        Arc::new(AtomicBool::new(false)),
    )
    .map_err(|e| Error::Failed(format!("apiserver-proxy: {e}")))
}
