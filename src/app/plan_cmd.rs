//! `bootstrap plan`: what `up` would do, changing nothing.

use serde::Serialize;

use super::{print_json, Error, Session};
use crate::cli::{Cli, Output, PlanArgs};
use crate::host::Host;
use crate::plan::{check, Status, Step};
use crate::preflight::Report;
use crate::role::{self, RoleDecision};

#[derive(Serialize)]
struct PlannedStep<'a> {
    #[serde(flatten)]
    step: &'a Step,
    status: Status,
}

#[derive(Serialize)]
struct PlanOutput<'a> {
    node: NodeOutput,
    role: &'a RoleDecision,
    distro: DistroOutput,
    preflight: &'a Report,
    steps: Vec<PlannedStep<'a>>,
}

#[derive(Serialize)]
pub(super) struct NodeOutput {
    pub name: String,
    pub address: Option<std::net::IpAddr>,
}

#[derive(Serialize)]
pub(super) struct DistroOutput {
    pub kind: String,
    pub version: String,
    pub arch: String,
    pub image: String,
}

pub(super) fn distro_output(session: &Session) -> DistroOutput {
    DistroOutput {
        kind: session.image.distro.to_string(),
        version: session.image.metadata.version.clone(),
        arch: session.image.metadata.arch.clone(),
        image: session.image.dir.display().to_string(),
    }
}

pub(super) fn run(cli: &Cli, args: &PlanArgs) -> Result<(), Error> {
    if args.print_config {
        let host = super::open_host(cli)?;
        let config = super::load_config(cli, &host)?;
        print!("{}", config.to_redacted_yaml());
        return Ok(());
    }
    let session = Session::open(cli)?;
    let decision = role::resolve(&session.host, &session.config, &session.facts, false)?;
    let report = session.preflight(&decision, &cli.overrides.ignore_preflight)?;
    let plan = session.plan(&decision)?;
    // Steps the host cannot judge (a restart, a reload) count as in place when the journal
    // has them done with the same fingerprint, exactly as `up` decides.
    let journal = crate::plan::journal::Journal::load(&session.host)?;
    let statuses = plan
        .steps
        .iter()
        .map(|s| {
            check::check(&session.host, &crate::node_plan::NodePayloads, &s.action).map(|status| {
                if status == Status::Unknown && journal.is_done(&s.id, &s.fingerprint()) {
                    Status::Done
                } else {
                    status
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let node = NodeOutput {
        name: session.node_name(),
        address: session.node_address(),
    };
    let distro = distro_output(&session);
    match args.output {
        Output::Json => print_json(&PlanOutput {
            node,
            role: &decision,
            distro,
            preflight: &report,
            steps: plan
                .steps
                .iter()
                .zip(&statuses)
                .map(|(step, status)| PlannedStep {
                    step,
                    status: *status,
                })
                .collect(),
        }),
        Output::Text => {
            let address = node
                .address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "no address".into());
            println!("node:    {} ({address})", node.name);
            println!("role:    {} — {}", decision.role, decision.reason);
            println!(
                "distro:  {} {} ({}) from {}",
                distro.kind, distro.version, distro.arch, distro.image
            );
            println!("preflight:");
            print!("{}", report.render());
            let pending = statuses.iter().filter(|s| **s != Status::Done).count();
            println!(
                "plan: {} steps, {pending} to apply (ok = in place, + = to apply, ? = per journal)",
                plan.len()
            );
            print!("{}", plan.render(&statuses));
            if session.from_archive {
                println!("note: the runtime and registry steps are planned from the image's files, once `up` has unpacked it");
            }
            if decision.role.joins()
                && !session
                    .host
                    .exists(std::path::Path::new(crate::distro::MATERIAL_FILE))?
            {
                println!(
                    "note: the join steps are planned once join material is at {} (`bootstrap token create` on a controller)",
                    crate::distro::MATERIAL_FILE
                );
            }
        }
    }
    Ok(())
}
