//! The plan of `bootstrap upgrade`: the distro's stop-and-swap, every file of the node
//! written for the new version, the distro's start, then the rest of `up`'s plan.

use crate::distro::UpgradeSteps;
use crate::plan::{Action, Plan, Step};

/// Whether `step` only puts files in place (nothing starts or runs): such steps are what
/// a new binary reads when it starts, so they go before the start.
fn places_files(step: &Step) -> bool {
    matches!(
        step.action,
        Action::MakeDir { .. }
            | Action::WriteFile { .. }
            | Action::InstallBinary { .. }
            | Action::InstallFromImage { .. }
            | Action::CopyFile { .. }
            | Action::SeedImages { .. }
            | Action::HostsEntry { .. }
            | Action::Symlink { .. }
    )
}

/// `distro`'s swap, then the file steps of `up` (the plan made against the new image), then
/// `distro`'s start, then what is left of `up` in its order: commands and services, which
/// find the node upgraded and its files in place.
pub fn upgrade_plan(distro: UpgradeSteps, up: Plan) -> Plan {
    let (files, rest): (Vec<Step>, Vec<Step>) = up.steps.into_iter().partition(places_files);
    let mut plan = Plan::default();
    for step in distro
        .swap
        .into_iter()
        .chain(files)
        .chain(distro.start)
        .chain(rest)
    {
        plan.push(step);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CommandSpec;
    use crate::plan::{Contents, Phase, ServiceAction};

    fn run(program: &str) -> Step {
        Step::new(
            Phase::Upgrade,
            program,
            Action::RunCommand {
                command: CommandSpec::new(program),
                done_when: None,
            },
        )
    }

    fn write(path: &str) -> Step {
        Step::new(
            Phase::Runtime,
            path,
            Action::WriteFile {
                path: path.into(),
                mode: 0o644,
                owner: None,
                contents: Contents::Public(b"version = 3\n".to_vec()),
            },
        )
    }

    #[test]
    fn files_are_written_after_the_swap_and_before_the_start() {
        let distro = UpgradeSteps {
            swap: vec![run("stop"), run("swap")],
            start: vec![run("start"), run("ready")],
        };
        let mut up = Plan::default();
        up.push(write("/etc/k0s/containerd.d/bootstrap.toml"));
        up.push(Step::new(
            Phase::Install,
            "unit",
            Action::Service {
                unit: "k0scontroller.service".into(),
                action: ServiceAction::Enable,
            },
        ));
        up.push(write("/etc/k0s/k0s.yaml"));
        let order: Vec<String> = upgrade_plan(distro, up)
            .steps
            .into_iter()
            .map(|s| s.reason)
            .collect();
        assert_eq!(
            order,
            [
                "stop",
                "swap",
                "/etc/k0s/containerd.d/bootstrap.toml",
                "/etc/k0s/k0s.yaml",
                "start",
                "ready",
                "unit"
            ]
        );
    }
}
