//! `bootstrap leave`: drain and delete this node (and its etcd member), then reset.

use std::path::Path;

use super::{Error, Session};
use crate::cli::{Cli, LeaveArgs, ResetArgs};
use crate::distro::Distro;
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
    let driver = crate::distro::driver(session.image.distro);
    let kubeconfig = match &args.kubeconfig {
        Some(path) => path.display().to_string(),
        None if decision.role.is_controller() => driver.admin_kubeconfig().to_owned(),
        None => driver.node_kubeconfig(decision.role).to_owned(),
    };
    if !session.host.exists(Path::new(&kubeconfig))? {
        return Err(Error::Failed(format!(
            "{kubeconfig} does not exist; pass --kubeconfig with credentials that may drain and delete nodes"
        )));
    }
    let node = session.node_name();
    {
        let _lock = lock::acquire(
            &super::real_path(&session.host, state::LOCK_FILE),
            session.config.lock_wait,
            &format!("pid {} (bootstrap leave)", std::process::id()),
        )?;
        if decision.role.is_controller() {
            refuse_last_controller(&session.host, driver, &kubeconfig, &node)?;
        }
        // A k0s controller without workloads is no Kubernetes node: nothing to drain.
        let is_node = session
            .host
            .run(
                &driver
                    .kubectl(&kubeconfig)
                    .args(["get", "node", &node, "-o", "name"]),
            )?
            .success();
        let ctx = session.distro_context(&decision, None);
        let mut plan = Plan::default();
        let kubectl = |args: Vec<String>, timeout| {
            driver
                .kubectl(&kubeconfig)
                .args(args)
                .timeout(timeout + std::time::Duration::from_secs(30))
        };
        if !is_node {
            log::info!("{node} is not a Kubernetes node (a controller without workloads); nothing to drain");
        }
        let mut node_steps = Vec::new();
        node_steps.push(Step::new(
            Phase::Leave,
            "move its pods elsewhere first",
            Action::RunCommand {
                command: kubectl(
                    vec![
                        "drain".into(),
                        node.clone(),
                        "--ignore-daemonsets".into(),
                        "--delete-emptydir-data".into(),
                        "--timeout".into(),
                        format!("{}s", drain_timeout.as_secs()),
                    ],
                    drain_timeout,
                ),
                done_when: None,
            },
        ));
        node_steps.push(Step::new(
            Phase::Leave,
            "the cluster forgets the node",
            Action::RunCommand {
                command: kubectl(
                    vec![
                        "delete".into(),
                        "node".into(),
                        node.clone(),
                        "--timeout".into(),
                        "60s".into(),
                    ],
                    std::time::Duration::from_secs(60),
                ),
                done_when: None,
            },
        ));
        if is_node {
            for step in node_steps {
                plan.push(step);
            }
        }
        for step in driver.leave_steps(&ctx)? {
            plan.push(step);
        }
        apply_unjournaled(&session.host, &plan)?;
        log::info!("node {node} has left the cluster; resetting it");
    }
    super::reset::run(cli, &ResetArgs { purge: false })
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
