//! `bootstrap leave`: drain and delete this node (and its etcd member), then reset. A
//! worker asks a controller's join service to do it; nothing is reset when the cluster
//! could not be told, unless `--force`.

use std::path::Path;

use super::{Error, Session};
use crate::cli::{Cli, LeaveArgs, ResetArgs};
use crate::distro::{Distro, NodeOps, Presence};
use crate::host::Host;
use crate::plan::{apply::apply_unjournaled, Action, Phase, Plan, Step};
use crate::{lock, role, state};

pub(super) fn run(cli: &Cli, args: &LeaveArgs) -> Result<(), Error> {
    let drain_timeout = humantime::parse_duration(&args.drain_timeout)
        .map_err(|e| Error::Usage(format!("--drain-timeout {:?}: {e}", args.drain_timeout)))?;
    let session = Session::open(cli)?;
    let decision = role::load(&session.host)?.ok_or_else(|| {
        Error::Failed("this node has not been set up (no role recorded); nothing to leave".into())
    })?;
    let node = session.node_name();
    {
        let _lock = lock::acquire(
            &super::real_path(&session.host, state::LOCK_FILE),
            session.config.lock_wait,
            &format!("pid {} (bootstrap leave)", std::process::id()),
        )?;
        // A stop (SIGTERM, SIGINT) ends a drain in flight with its process group and
        // never goes on to the reset, --force or not: the node stays as it is, and
        // `leave` again picks up where this one stopped.
        super::stop::catch_stop_signals()?;
        let left = match &args.kubeconfig {
            None if !decision.role.is_controller() => {
                leave_through_controller(&session, &decision, &node, drain_timeout)
            }
            _ => leave_with_kubeconfig(&session, &decision, args, &node, drain_timeout),
        };
        if let Some(signal) = crate::interrupt::pending() {
            return Err(Error::Stopped {
                signal,
                during: match &left {
                    Ok(()) => format!(
                        "leaving: {node} has left the cluster but this node was not reset; run `bootstrap reset`"
                    ),
                    Err(e) => format!("leaving the cluster ({e})"),
                },
            });
        }
        match left {
            Ok(()) => log::info!("node {node} has left the cluster; resetting it"),
            Err(e) if args.force => log::warn!(
                "{e}; --force: resetting this node anyway. Its Node object may remain in the cluster: remove it with `kubectl delete node {node}` on a controller"
            ),
            Err(e) => return Err(e),
        }
    }
    super::reset::run(cli, &ResetArgs { purge: false })
}

/// Why leaving failed, with what the operator can do; nothing has been changed.
fn not_left(node: &str, cause: impl std::fmt::Display) -> String {
    format!(
        "leave: {node} was not taken out of the cluster: {cause}. Nothing on this node was changed; fix the cause and run `bootstrap leave` again, or add --force to reset it anyway"
    )
}

/// Drain and delete with a kubeconfig on this node: the admin one on a controller, or
/// the operator's `--kubeconfig`.
fn leave_with_kubeconfig(
    session: &Session,
    decision: &role::RoleDecision,
    args: &LeaveArgs,
    node: &str,
    drain_timeout: std::time::Duration,
) -> Result<(), Error> {
    let driver = crate::distro::driver(session.image.distro);
    let kubeconfig = match &args.kubeconfig {
        Some(path) => path.display().to_string(),
        None => driver.admin_kubeconfig().to_owned(),
    };
    if !session.host.exists(Path::new(&kubeconfig))? {
        return Err(Error::Failed(not_left(
            node,
            format!("{kubeconfig} does not exist; pass --kubeconfig with credentials that may drain and delete nodes"),
        )));
    }
    if decision.role.is_controller() {
        refuse_last_controller(&session.host, driver, &kubeconfig, node)?;
    }
    let ops = NodeOps::new(&session.host, driver, &kubeconfig);
    let presence = ops
        .presence(node)
        .map_err(|e| Error::Failed(not_left(node, e)))?;
    let ctx = session.distro_context(decision, None);
    let mut plan = Plan::default();
    match presence {
        Presence::Present => {
            plan.push(Step::new(
                Phase::Leave,
                "move its pods elsewhere first",
                Action::RunCommand {
                    command: ops.drain_command(node, drain_timeout),
                    done_when: None,
                },
            ));
            plan.push(Step::new(
                Phase::Leave,
                "the cluster forgets the node",
                Action::RunCommand {
                    command: ops.delete_command(node),
                    done_when: None,
                },
            ));
        }
        Presence::NotFound => log::info!(
            "{node} is not a Kubernetes node (a controller without workloads); nothing to drain"
        ),
    }
    for step in driver.leave_steps(&ctx)? {
        plan.push(step);
    }
    apply_unjournaled(&session.host, &crate::node_plan::NodePayloads, &plan)
        .map_err(|e| Error::Failed(not_left(node, e)))?;
    Ok(())
}

/// A worker's kubelet may not evict pods or delete its Node: it asks a controller's
/// join service to cordon, drain and delete it, proving itself with the join secret or
/// the node credential its join material holds.
fn leave_through_controller(
    session: &Session,
    decision: &role::RoleDecision,
    node: &str,
    drain_timeout: std::time::Duration,
) -> Result<(), Error> {
    let targets = session.join_services(decision)?;
    let Some((keys, credential)) = super::upgrade_turn::service_keys(session, node)? else {
        return Err(Error::Failed(not_left(
            node,
            "this worker holds neither the join secret nor a node credential from its join material; pass --kubeconfig with credentials that may drain and delete nodes",
        )));
    };
    if targets.is_empty() {
        return Err(Error::Failed(not_left(
            node,
            "no join service is known (cluster.controllers is empty and the join material names none)",
        )));
    }
    log::info!(
        "asking a controller's join service ({}) to cordon, drain (at most {}) and delete {node}",
        targets.join(", "),
        humantime::format_duration(drain_timeout)
    );
    match crate::join::client::leave(&keys, &targets, node, credential, drain_timeout) {
        Ok(done) => {
            log::info!("the join service answered: {done}");
            Ok(())
        }
        Err(cause @ crate::join::Cause::Unreachable(_)) => {
            Err(Error::PeerTimeout(not_left(node, cause)))
        }
        Err(cause) => Err(Error::Failed(not_left(node, cause))),
    }
}

/// Counts the control-plane nodes; removing the last one would destroy the cluster.
fn refuse_last_controller(
    host: &dyn Host,
    driver: &dyn Distro,
    kubeconfig: &str,
    node: &str,
) -> Result<(), Error> {
    let names = driver.controllers(host, kubeconfig)?;
    let others: Vec<&String> = names.iter().filter(|n| n.as_str() != node).collect();
    if others.is_empty() {
        return Err(Error::Failed(format!(
            "{node} is the last controller of this cluster; leaving would destroy it. Use `bootstrap reset` to tear the whole cluster down"
        )));
    }
    log::info!(
        "{} other controller(s) remain: {}",
        others.len(),
        others
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
