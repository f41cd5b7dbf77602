//! Distro-independent host preparation: kernel modules, sysctls and swap.
//!
//! Settings persist through drop-in files bootstrap owns (and `reset` removes) — never by
//! editing shared files — and take effect now through `modprobe`, `sysctl -p` and
//! `swapoff`, each skipped while the host already shows the wanted state.

use std::path::{Path, PathBuf};

use crate::distro_kind::Requirements;
use crate::facts::Facts;
use crate::host::CommandSpec;
use crate::plan::{Action, Contents, Phase, Probe, ServiceAction, Step};
use crate::preflight::REQUIRED_MODULES;

/// The modules-load.d drop-in bootstrap owns.
pub const MODULES_LOAD_FILE: &str = "/etc/modules-load.d/bootstrap.conf";
/// The sysctl.d drop-in bootstrap owns.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-bootstrap.conf";

const OWNED_HEADER: &str = "# Written by bootstrap; `bootstrap reset` removes it.\n";

/// The sysctls every node needs.
pub fn sysctls(ipv6: bool) -> Vec<(String, String)> {
    let mut values = vec![
        ("net.ipv4.ip_forward", "1"),
        ("net.bridge.bridge-nf-call-iptables", "1"),
        ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ];
    if ipv6 {
        values.push(("net.ipv6.conf.all.forwarding", "1"));
    }
    values
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The host-preparation steps for this node.
pub fn steps(facts: &Facts, requirements: &Requirements, ipv6: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let modules: String = REQUIRED_MODULES.iter().map(|m| format!("{m}\n")).collect();
    steps.push(Step::new(
        Phase::HostPrep,
        "load overlay and br_netfilter at every boot",
        Action::WriteFile {
            path: PathBuf::from(MODULES_LOAD_FILE),
            mode: 0o644,
            owner: None,
            contents: Contents::Public(format!("{OWNED_HEADER}{modules}").into_bytes()),
        },
    ));
    for module in REQUIRED_MODULES {
        steps.push(Step::new(
            Phase::HostPrep,
            format!("the container runtime and pod networking need {module} now"),
            Action::RunCommand {
                command: CommandSpec::new("modprobe").arg(module),
                done_when: Some(Probe::ModuleLoaded {
                    name: module.to_owned(),
                }),
            },
        ));
    }

    let values = sysctls(ipv6);
    let body: String = values.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    steps.push(Step::new(
        Phase::HostPrep,
        "pod traffic must be forwarded and seen by iptables, at every boot",
        Action::WriteFile {
            path: PathBuf::from(SYSCTL_FILE),
            mode: 0o644,
            owner: None,
            contents: Contents::Public(format!("{OWNED_HEADER}{body}").into_bytes()),
        },
    ));
    steps.push(Step::new(
        Phase::HostPrep,
        "apply the sysctls now",
        Action::RunCommand {
            command: CommandSpec::new("sysctl")
                .arg("-p")
                .arg(Path::new(SYSCTL_FILE)),
            done_when: Some(Probe::SysctlsSet { values }),
        },
    ));

    if requirements.swap_off && !facts.swap.is_empty() {
        steps.push(Step::new(
            Phase::HostPrep,
            "kubelet refuses to start with swap on",
            Action::RunCommand {
                command: CommandSpec::new("swapoff").arg("-a"),
                done_when: Some(Probe::NoActiveSwap),
            },
        ));
        for area in &facts.swap {
            steps.push(Step::new(
                Phase::HostPrep,
                format!("keep swap on {} off after a reboot", area.path),
                Action::Service {
                    unit: format!("{}.swap", systemd_escape_path(&area.path)),
                    action: ServiceAction::Mask,
                },
            ));
        }
    }
    steps
}

/// `systemd-escape --path`: the unit name systemd derives from a path.
pub fn systemd_escape_path(path: &str) -> String {
    let trimmed: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if trimmed.is_empty() {
        return "-".to_owned();
    }
    let joined = trimmed.join("/");
    let mut out = String::new();
    for (i, byte) in joined.bytes().enumerate() {
        match byte {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_paths_like_systemd() {
        assert_eq!(systemd_escape_path("/dev/sda2"), "dev-sda2");
        assert_eq!(systemd_escape_path("/swap.img"), "swap.img");
        assert_eq!(
            systemd_escape_path("/dev/disk/by-uuid/ab-cd"),
            "dev-disk-by\\x2duuid-ab\\x2dcd"
        );
        assert_eq!(systemd_escape_path("/.swap"), "\\x2eswap");
    }
}
