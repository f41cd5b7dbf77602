//! Small builders for the steps every driver uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::CommandSpec;
use crate::plan::{Action, Contents, Phase, Probe, ServiceAction, Step};
use crate::secret::Secret;

pub fn write(phase: Phase, reason: &str, path: &str, mode: u32, bytes: Vec<u8>) -> Step {
    Step::write_file(phase, reason, path, mode, Contents::Public(bytes))
}

pub fn write_secret(phase: Phase, reason: &str, path: &str, secret: Secret) -> Step {
    Step::write_file(phase, reason, path, 0o600, Contents::Secret(secret))
}

pub fn install(phase: Phase, reason: &str, source: PathBuf, dest: &str) -> Step {
    Step::new(
        phase,
        reason,
        Action::InstallBinary {
            source,
            dest: PathBuf::from(dest),
            mode: 0o755,
        },
    )
}

pub fn symlink(phase: Phase, reason: &str, path: &str, target: &str) -> Step {
    Step::new(
        phase,
        reason,
        Action::Symlink {
            path: PathBuf::from(path),
            target: PathBuf::from(target),
        },
    )
}

pub fn service(phase: Phase, reason: &str, unit: &str, action: ServiceAction) -> Step {
    Step::new(
        phase,
        reason,
        Action::Service {
            unit: unit.to_owned(),
            action,
        },
    )
}

pub fn run(phase: Phase, reason: &str, command: CommandSpec, done_when: Option<Probe>) -> Step {
    Step::new(phase, reason, Action::RunCommand { command, done_when })
}

pub fn remove(phase: Phase, reason: &str, path: &str) -> Step {
    Step::new(
        phase,
        reason,
        Action::Remove {
            path: PathBuf::from(path),
        },
    )
}

pub fn wait(
    phase: Phase,
    reason: &str,
    probe: Probe,
    fail_when: Option<Probe>,
    timeout: Duration,
) -> Step {
    Step::new(
        phase,
        reason,
        Action::WaitFor {
            probe,
            fail_when,
            timeout,
            interval: Duration::from_secs(2),
        },
    )
}

/// A bounded wait for the distro to come up that gives up at once when `unit` fails.
pub fn until_ready(phase: Phase, reason: &str, probe: Probe, unit: &str) -> Step {
    wait(
        phase,
        reason,
        probe,
        Some(failed(unit)),
        super::READY_TIMEOUT,
    )
}

/// Waits until the API server answers `/readyz` through `kubectl`.
pub fn until_readyz(phase: Phase, kubectl: CommandSpec, unit: &str) -> Step {
    until_ready(
        phase,
        "the API server answers /readyz",
        Probe::CommandSucceeds {
            command: kubectl.args(["get", "--raw", "/readyz"]),
        },
        unit,
    )
}

pub fn file_exists(path: &str) -> Probe {
    Probe::FileExists {
        path: PathBuf::from(path),
    }
}

pub fn absent(path: &str) -> Probe {
    Probe::Absent {
        path: PathBuf::from(path),
    }
}

pub fn active(unit: &str) -> Probe {
    Probe::ServiceActive {
        unit: unit.to_owned(),
    }
}

pub fn failed(unit: &str) -> Probe {
    Probe::ServiceFailed {
        unit: unit.to_owned(),
    }
}

/// A path relative to `from`'s folder that leads to `to` (both absolute host paths), so
/// a symlink works the same under `--root` as on the node.
pub fn relative_target(from: &str, to: &str) -> String {
    let dir = Path::new(from).parent().unwrap_or(Path::new("/"));
    crate::io::relative::link_target(dir, Path::new(to))
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_targets() {
        assert_eq!(
            relative_target("/root/.kube/config", "/etc/rancher/k3s/k3s.yaml"),
            "../../etc/rancher/k3s/k3s.yaml"
        );
        assert_eq!(
            relative_target("/usr/local/bin/kubectl", "/usr/local/bin/k3s"),
            "k3s"
        );
    }
}
