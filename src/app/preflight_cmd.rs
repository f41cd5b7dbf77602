//! `bootstrap preflight`: the host checks alone; exit code 3 when one fails.

use super::{print_json, Error, Session};
use crate::cli::{Cli, Output, OutputArgs};
use crate::role;

pub(super) fn run(cli: &Cli, args: &OutputArgs) -> Result<(), Error> {
    let session = Session::open(cli)?;
    let decision = role::resolve(&session.host, &session.config, &session.facts, false)?;
    let report = session.preflight(&decision, &cli.overrides.ignore_preflight)?;
    match args.output {
        Output::Json => print_json(&report),
        Output::Text => {
            println!(
                "preflight for {} as {} ({} {}):",
                session.node_name(),
                decision.role,
                session.image.distro,
                session.image.metadata.version
            );
            print!("{}", report.render());
        }
    }
    let failures: Vec<_> = report.failures().into_iter().cloned().collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Preflight(failures))
    }
}
