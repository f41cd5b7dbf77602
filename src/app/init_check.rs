//! Initialising is a cluster-wide decision: before `cluster.controllers[0]` creates a
//! cluster, it asks the other listed controllers whether one already exists. A first
//! controller whose machine was replaced (same user-data, empty disk) then joins the
//! cluster its peers still run instead of starting a second one with its own CA.

use super::{Error, Session};
use crate::role::{self, Role, RoleDecision};

/// Settles a first decision of "initialise" on a multi-controller cluster: when another
/// controller reports a cluster, records "join it" instead. Controllers that stay silent
/// for `cluster.init_wait` count as having none (see docs/high-availability.md for
/// what that means in a partition).
pub(super) fn settle(
    session: &Session,
    computed: &RoleDecision,
    new_cluster: bool,
) -> Result<(), Error> {
    let config = &session.config;
    let others: Vec<String> = config.cluster.controllers.iter().skip(1).cloned().collect();
    if computed.role != Role::InitController || computed.decided_at.is_some() || others.is_empty() {
        return Ok(());
    }
    if new_cluster {
        log::warn!(
            "--new-cluster: initialising a new cluster without asking {} whether one exists",
            others.join(", ")
        );
        return Ok(());
    }
    let Some(keys) = session.join_keys()? else {
        log::warn!("no join secret: cannot ask the other controllers whether a cluster exists");
        return Ok(());
    };
    let targets = crate::join::targets(&others, config.join.port);
    log::info!(
        "asking {} whether a cluster already exists before initialising one (at most {})",
        targets.join(", "),
        humantime::format_duration(config.cluster.init_wait)
    );
    let survey = crate::join::client::survey(
        &keys,
        &targets,
        &session.node_name(),
        config.cluster.init_wait,
    );
    let Some((target, cluster)) = survey.found else {
        let silent: Vec<String> = survey
            .silent
            .iter()
            .map(|(t, why)| format!("{t} ({why})"))
            .collect();
        if silent.is_empty() {
            log::info!(
                "no cluster yet: {} answered none; initialising",
                survey.none.join(", ")
            );
        } else {
            log::warn!(
                "initialising: {} answered no cluster, and {} did not answer within cluster.init_wait ({}); if they run a cluster this node cannot reach, this is a second one",
                if survey.none.is_empty() { "none".to_owned() } else { survey.none.join(", ") },
                silent.join(", "),
                humantime::format_duration(config.cluster.init_wait)
            );
        }
        return Ok(());
    };
    let distro = session.image.distro.to_string();
    if cluster.distro != distro {
        return Err(Error::Failed(format!(
            "{target} belongs to a {} cluster ({}), but this node's cluster image is {distro}; refusing to initialise a second cluster or to join that one",
            cluster.distro, cluster.id
        )));
    }
    let reason = format!(
        "this host is cluster.controllers[0], but {target} belongs to cluster {} ({} {}, controllers: {}): joining it instead of initialising a second cluster",
        cluster.id,
        cluster.distro,
        cluster.version,
        if cluster.members.is_empty() { "?".to_owned() } else { cluster.members.join(", ") }
    );
    log::warn!("{reason}");
    role::record(
        &session.host,
        RoleDecision {
            role: Role::JoinController,
            reason,
            decided_at: None,
            joined_existing: Some(cluster.id),
        },
    )?;
    Ok(())
}
