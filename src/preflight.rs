//! Host checks before anything changes: a table of pass / warn / fail / fix with reasons.
//!
//! Items `up` can put right itself (kernel modules, sysctls, swap) are reported as `fix`
//! and become plan steps instead of failures. `--ignore-preflight NAME` (or
//! `preflight.ignore`) turns one check's failure into a reported, ignored one.

use std::fmt::Write;

use serde::Serialize;

use crate::config::Config;
use crate::distro_kind::{kube_version, DistroKind};
use crate::facts::Facts;
use crate::role::Role;
use crate::rootfs::ClusterImage;
use crate::validate;

/// Every check, by the name `preflight.ignore` and `--ignore-preflight` use.
pub use crate::config::PREFLIGHT_CHECKS as CHECK_NAMES;

/// Kernel modules every distro needs loaded.
pub const REQUIRED_MODULES: [&str; 2] = ["overlay", "br_netfilter"];

/// Free space under `/var/lib` below which `up` refuses, and below which it warns.
const DISK_FAIL_BYTES: u64 = 2 << 30;
const DISK_WARN_BYTES: u64 = 10 << 30;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Warn,
    /// Not right yet, but `up` fixes it with a plan step.
    Fix,
    Fail,
    /// Failed, but the operator asked to go on.
    Ignored,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub outcome: Outcome,
    pub reason: String,
}

/// All results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// Checks that failed and were not ignored.
    pub fn failures(&self) -> Vec<&CheckResult> {
        self.checks
            .iter()
            .filter(|c| c.outcome == Outcome::Fail)
            .collect()
    }

    /// The result of one check.
    pub fn get(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// An aligned table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let outcome = match c.outcome {
                Outcome::Pass => "pass",
                Outcome::Warn => "warn",
                Outcome::Fix => "fix",
                Outcome::Fail => "FAIL",
                Outcome::Ignored => "ignored",
            };
            let _ = writeln!(out, "  {outcome:<7} {:<10} {}", c.name, c.reason);
        }
        out
    }
}

/// What the checks look at.
pub struct Context<'a> {
    pub facts: &'a Facts,
    pub config: &'a Config,
    pub role: Role,
    pub image: &'a ClusterImage,
    /// Checks named on the command line to ignore (on top of `preflight.ignore`).
    pub ignore: &'a [String],
    /// bootstrap has already changed this host (its journal has entries): ports in use may
    /// be our own services.
    pub already_set_up: bool,
}

/// Runs every check.
pub fn run(ctx: &Context<'_>) -> Report {
    let facts = ctx.facts;
    let distro = ctx.image.distro;
    let req = distro.requirements(ctx.role.is_controller());
    let mut checks = Vec::new();
    let mut add = |name: &'static str, outcome: Outcome, reason: String| {
        checks.push(CheckResult {
            name,
            outcome,
            reason,
        })
    };

    if facts.root {
        add("root", Outcome::Pass, "running as root".into());
    } else {
        add(
            "root",
            Outcome::Fail,
            "not running as root: `up` installs binaries and services".into(),
        );
    }

    let image_arch = ctx.image.metadata.arch.as_str();
    if !["amd64", "arm64"].contains(&facts.arch.as_str()) {
        add(
            "arch",
            Outcome::Fail,
            format!("{} is not supported (amd64, arm64)", facts.arch),
        );
    } else if !ctx.image.arches.is_empty() && ctx.image.arch_dir.is_none() {
        add(
            "arch",
            Outcome::Fail,
            format!(
                "the cluster image has folders for {} only, this host is {}",
                ctx.image.arches.join(", "),
                facts.arch
            ),
        );
    } else if !image_arch.is_empty() && image_arch != facts.arch {
        add(
            "arch",
            Outcome::Fail,
            format!(
                "the cluster image is for {image_arch}, this host is {}",
                facts.arch
            ),
        );
    } else {
        add("arch", Outcome::Pass, facts.arch.clone());
    }

    let kind = if ctx.role.is_controller() {
        "controller"
    } else {
        "worker"
    };
    if facts.cpus >= req.min_cpus {
        add(
            "cpu",
            Outcome::Pass,
            format!(
                "{} CPUs (a {distro} {kind} needs {})",
                facts.cpus, req.min_cpus
            ),
        );
    } else {
        add(
            "cpu",
            Outcome::Fail,
            format!(
                "{} CPUs; a {distro} {kind} needs at least {}",
                facts.cpus, req.min_cpus
            ),
        );
    }
    let mib = facts.memory_bytes >> 20;
    if mib >= req.min_memory_mib {
        add(
            "memory",
            Outcome::Pass,
            format!(
                "{mib} MiB (a {distro} {kind} needs {} MiB)",
                req.min_memory_mib
            ),
        );
    } else {
        add(
            "memory",
            Outcome::Fail,
            format!(
                "{mib} MiB; a {distro} {kind} needs at least {} MiB",
                req.min_memory_mib
            ),
        );
    }

    let free_gib = facts.disk_free_bytes as f64 / (1u64 << 30) as f64;
    if facts.disk_free_bytes < DISK_FAIL_BYTES {
        add(
            "disk",
            Outcome::Fail,
            format!("{free_gib:.1} GiB free under /var/lib; at least 2 GiB needed"),
        );
    } else if facts.disk_free_bytes < DISK_WARN_BYTES {
        add(
            "disk",
            Outcome::Warn,
            format!("{free_gib:.1} GiB free under /var/lib; 10 GiB or more advised for images"),
        );
    } else {
        add(
            "disk",
            Outcome::Pass,
            format!("{free_gib:.1} GiB free under /var/lib"),
        );
    }

    if facts.swap.is_empty() {
        add("swap", Outcome::Pass, "no active swap".into());
    } else {
        let areas: Vec<&str> = facts.swap.iter().map(|s| s.path.as_str()).collect();
        if req.swap_off {
            add(
                "swap",
                Outcome::Fix,
                format!(
                    "swap active on {}; `up` turns it off and masks it (kubelet refuses swap)",
                    areas.join(", ")
                ),
            );
        } else {
            add("swap", Outcome::Warn, format!("swap active on {}; {distro} runs with it, but memory limits are less predictable", areas.join(", ")));
        }
    }

    match facts.ip_forward {
        Some(true) => add(
            "ip-forward",
            Outcome::Pass,
            "net.ipv4.ip_forward = 1".into(),
        ),
        Some(false) => add(
            "ip-forward",
            Outcome::Fix,
            "net.ipv4.ip_forward = 0; `up` sets it to 1".into(),
        ),
        None => add(
            "ip-forward",
            Outcome::Fix,
            "net.ipv4.ip_forward unreadable; `up` sets it to 1".into(),
        ),
    }

    let missing: Vec<&str> = REQUIRED_MODULES
        .iter()
        .copied()
        .filter(|m| !facts.modules.contains(*m))
        .collect();
    if missing.is_empty() {
        add(
            "modules",
            Outcome::Pass,
            REQUIRED_MODULES.join(", ") + " loaded",
        );
    } else {
        add(
            "modules",
            Outcome::Fix,
            format!("{} not loaded; `up` loads them", missing.join(", ")),
        );
    }

    let busy: Vec<String> = ports(ctx)
        .into_iter()
        .filter(|(p, _)| facts.listening_ports.contains(p))
        .map(|(p, what)| format!("{p} ({what})"))
        .collect();
    if busy.is_empty() {
        add("ports", Outcome::Pass, "needed ports are free".into());
    } else if ctx.already_set_up {
        add(
            "ports",
            Outcome::Pass,
            format!("in use, by this node's own services: {}", busy.join(", ")),
        );
    } else {
        add(
            "ports",
            Outcome::Fail,
            format!("already in use: {}", busy.join(", ")),
        );
    }

    let needs_v2 = kube_version(&ctx.image.metadata.version).is_some_and(|v| v >= (1, 35, 0));
    match (facts.cgroup_v2, needs_v2) {
        (true, _) => add("cgroups", Outcome::Pass, "cgroup v2".into()),
        (false, true) => add("cgroups", Outcome::Fail, "cgroup v1: kubelet 1.35 and later refuses it; boot with systemd.unified_cgroup_hierarchy=1".into()),
        (false, false) => add("cgroups", Outcome::Warn, "cgroup v1 is deprecated; kubelet 1.35 and later refuses it".into()),
    }

    if facts.systemd {
        add("systemd", Outcome::Pass, "systemd is running".into());
    } else {
        add("systemd", Outcome::Fail, "systemd is not running (/run/systemd/system is missing); bootstrap runs services through it".into());
    }

    match &ctx.config.node.name {
        Some(name) => add(
            "hostname",
            Outcome::Pass,
            format!("node name {name} (from node.name)"),
        ),
        None if facts.hostname == "localhost" || facts.hostname.is_empty() => add(
            "hostname",
            Outcome::Fail,
            format!(
                "host name {:?} cannot be a node name; set one, or node.name",
                facts.hostname
            ),
        ),
        None => match validate::dns_subdomain(&facts.hostname) {
            Ok(()) => add(
                "hostname",
                Outcome::Pass,
                format!("node name {}", facts.hostname),
            ),
            Err(what) => add(
                "hostname",
                Outcome::Fail,
                format!(
                    "host name {:?} is not a valid node name: expected {what}; set node.name",
                    facts.hostname
                ),
            ),
        },
    }

    match (ctx.config.node.address, facts.default_address) {
        (Some(a), _) if facts.addresses.iter().any(|i| i.address == a) => {
            add("address", Outcome::Pass, format!("{a} (from node.address)"))
        }
        (Some(a), _) => add(
            "address",
            Outcome::Fail,
            format!("node.address {a} is not an address of this host"),
        ),
        (None, Some(a)) => add("address", Outcome::Pass, format!("{a} (default route)")),
        (None, None) => add(
            "address",
            if ctx.config.is_multi_node() {
                Outcome::Fail
            } else {
                Outcome::Warn
            },
            "no default route and no node.address: other nodes cannot know where to reach this one"
                .into(),
        ),
    }

    let mut ignore: Vec<&str> = ctx
        .config
        .preflight
        .ignore
        .iter()
        .map(String::as_str)
        .collect();
    ignore.extend(ctx.ignore.iter().map(String::as_str));
    for check in &mut checks {
        if check.outcome == Outcome::Fail && ignore.contains(&check.name) {
            check.outcome = Outcome::Ignored;
        }
    }
    Report { checks }
}

/// TCP ports this node will bind: the distro's, the registry's and the join service's.
pub fn ports(ctx: &Context<'_>) -> Vec<(u16, &'static str)> {
    let distro: DistroKind = ctx.image.distro;
    let mut ports = distro.requirements(ctx.role.is_controller()).ports;
    let registry_here = ctx.config.registry.enabled
        && (ctx.role == Role::InitController
            || (ctx.config.registry.ha && ctx.role.is_controller()));
    if registry_here {
        ports.push((ctx.config.registry.port, "registry"));
    }
    if ctx.role.is_controller() && ctx.config.is_multi_node() {
        ports.push((ctx.config.join.port, "join service"));
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::InterfaceAddress;
    use crate::rootfs::Metadata;
    use std::path::PathBuf;

    fn facts() -> Facts {
        Facts {
            hostname: "node-1".into(),
            addresses: vec![InterfaceAddress {
                interface: "eth0".into(),
                address: "10.0.0.10".parse().unwrap(),
            }],
            default_address: Some("10.0.0.10".parse().unwrap()),
            arch: "amd64".into(),
            cpus: 2,
            memory_bytes: 4 << 30,
            disk_free_bytes: 50 << 30,
            kernel: "6.1.0".into(),
            os_release: Default::default(),
            swap: vec![],
            cgroup_v2: true,
            modules: REQUIRED_MODULES.iter().map(|s| s.to_string()).collect(),
            ip_forward: Some(true),
            systemd: true,
            root: true,
            listening_ports: Default::default(),
        }
    }

    fn image(distro: DistroKind, arch: &str, version: &str) -> ClusterImage {
        ClusterImage {
            dir: PathBuf::from("/img"),
            metadata: Metadata {
                version: version.into(),
                arch: arch.into(),
                ..Default::default()
            },
            metadata_path: PathBuf::from("Metadata"),
            distro,
            arches: vec![],
            arch_dir: None,
            kubefile_path: None,
            kubefile: None,
            container_runtime: None,
            containerd: None,
            registry: None,
            kubeadm_config: None,
        }
    }

    fn run_with(
        facts: &Facts,
        config: &Config,
        image: &ClusterImage,
        role: Role,
        ignore: &[String],
    ) -> Report {
        run(&Context {
            facts,
            config,
            role,
            image,
            ignore,
            already_set_up: false,
        })
    }

    #[test]
    fn a_good_host_passes_everything() {
        let report = run_with(
            &facts(),
            &Config::default(),
            &image(DistroKind::K3s, "amd64", "v1.31.4+k3s1"),
            Role::InitController,
            &[],
        );
        assert!(
            report.checks.iter().all(|c| c.outcome == Outcome::Pass),
            "{}",
            report.render()
        );
        assert_eq!(report.checks.len(), CHECK_NAMES.len());
    }

    #[test]
    fn failures_fixes_and_ignores() {
        let mut f = facts();
        f.root = false;
        f.cpus = 1;
        f.memory_bytes = 1 << 30;
        f.ip_forward = Some(false);
        f.modules.remove("br_netfilter");
        f.swap = vec![crate::facts::SwapArea {
            path: "/swap.img".into(),
            kind: "file".into(),
            size_kib: 1,
        }];
        f.listening_ports.insert(6443);
        f.cgroup_v2 = false;
        f.hostname = "Bad_Name".into();
        let img = image(DistroKind::Kubeadm, "arm64", "v1.35.1");
        let report = run_with(
            &f,
            &Config::default(),
            &img,
            Role::InitController,
            &["cpu".to_string()],
        );
        let outcome = |n| report.get(n).unwrap().outcome;
        assert_eq!(outcome("root"), Outcome::Fail);
        assert_eq!(outcome("arch"), Outcome::Fail);
        assert!(report.get("arch").unwrap().reason.contains("arm64"));
        assert_eq!(outcome("cpu"), Outcome::Ignored);
        assert_eq!(outcome("memory"), Outcome::Fail);
        assert_eq!(outcome("swap"), Outcome::Fix);
        assert_eq!(outcome("ip-forward"), Outcome::Fix);
        assert_eq!(outcome("modules"), Outcome::Fix);
        assert!(report
            .get("modules")
            .unwrap()
            .reason
            .contains("br_netfilter"));
        assert_eq!(outcome("ports"), Outcome::Fail);
        assert!(report
            .get("ports")
            .unwrap()
            .reason
            .contains("6443 (kube-apiserver)"));
        assert_eq!(outcome("cgroups"), Outcome::Fail);
        assert_eq!(outcome("hostname"), Outcome::Fail);
        assert!(report.failures().iter().all(|c| c.name != "cpu"));
    }

    #[test]
    fn swap_is_only_a_warning_where_the_distro_copes() {
        let mut f = facts();
        f.swap = vec![crate::facts::SwapArea {
            path: "/dev/sda2".into(),
            kind: "partition".into(),
            size_kib: 1,
        }];
        let report = run_with(
            &f,
            &Config::default(),
            &image(DistroKind::K3s, "amd64", "v1.31.4+k3s1"),
            Role::Worker,
            &[],
        );
        assert_eq!(report.get("swap").unwrap().outcome, Outcome::Warn);
    }

    #[test]
    fn worker_minimums_are_lower_and_ports_differ() {
        let mut f = facts();
        f.cpus = 1;
        f.memory_bytes = 600 << 20;
        f.listening_ports.insert(6443);
        let report = run_with(
            &f,
            &Config::default(),
            &image(DistroKind::K3s, "amd64", "v1.31.4+k3s1"),
            Role::Worker,
            &[],
        );
        assert!(report.failures().is_empty(), "{}", report.render());
    }
}
