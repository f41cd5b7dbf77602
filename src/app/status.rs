//! `bootstrap status`: what this node is and how far `up` got, from its own records;
//! with `--wait`, blocks until `up` has finished (like `cloud-init status --wait`).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{open_host, print_json, real_path, Error, Session};
use crate::cli::{Cli, Output, StatusArgs};
use crate::host::{Host, RootedHost};
use crate::plan::check::systemctl;
use crate::plan::journal::{Entry, EntryStatus, Journal};
use crate::role::{self, RoleDecision};
use crate::state::{self, DoneMarker, FailedMarker};

#[derive(Serialize)]
struct Status {
    bootstrap_version: &'static str,
    state: &'static str,
    role: Option<RoleDecision>,
    distro: Option<super::plan_cmd::DistroOutput>,
    /// Why config or the cluster image could not be read, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    config_error: Option<String>,
    done: Option<DoneMarker>,
    failed: Option<FailedMarker>,
    steps_done: usize,
    steps_total: usize,
    unfinished: Option<Entry>,
    services: Vec<ServiceState>,
    /// The distro version this node runs (as its last `up` or `upgrade` left it).
    version: Option<String>,
    /// On a controller: which node runs which version, and who is upgrading now.
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<Vec<FleetNode>>,
    /// Why the fleet could not be read, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet_error: Option<String>,
}

/// One node of the cluster as a controller sees it during upgrades.
#[derive(Serialize)]
struct FleetNode {
    name: String,
    /// The kubelet's version, or (a controller that is no Node) the version it reported
    /// when its upgrade finished.
    version: Option<String>,
    /// The version it is upgrading to now, while its turn lasts.
    upgrading_to: Option<String>,
}

#[derive(Serialize)]
struct ServiceState {
    unit: String,
    state: String,
}

pub(super) fn run(cli: &Cli, args: &StatusArgs) -> Result<(), Error> {
    let host = open_host(cli)?;
    let outcome = if args.wait {
        let timeout = args
            .timeout
            .as_deref()
            .map(|text| {
                humantime::parse_duration(text).map_err(|e| {
                    Error::Usage(format!(
                        "--timeout: expected a duration such as 30m, got {text:?}: {e}"
                    ))
                })
            })
            .transpose()?;
        Some(wait(&host, timeout)?)
    } else {
        None
    };
    let status = collect(cli, &host)?;
    match args.output {
        Output::Json => print_json(&status),
        Output::Text => print_text(&status),
    }
    match outcome {
        Some(Finished::Failed(marker)) => Err(Error::UpFailed {
            exit_code: marker.exit_code,
            message: format!(
                "bootstrap up failed at {}{}: {}",
                marker.at,
                marker
                    .step
                    .as_ref()
                    .map(|s| format!(" in step {s}"))
                    .unwrap_or_default(),
                marker.error
            ),
        }),
        Some(Finished::Up) | None => Ok(()),
    }
}

/// How the `up` that `--wait` waited for ended.
enum Finished {
    Up,
    Failed(FailedMarker),
}

/// How often `--wait` looks again.
const WAIT_INTERVAL: Duration = Duration::from_millis(500);

/// Waits until no command holds the lock and `up` has left its success or failure marker,
/// saying on stderr whenever what it waits for changes. Without a marker, `up` has not run
/// (or stopped before writing anything, as on a configuration error), so it waits on.
fn wait(host: &RootedHost, timeout: Option<Duration>) -> Result<Finished, Error> {
    let lock_path = real_path(host, state::LOCK_FILE);
    let start = Instant::now();
    let mut said = String::new();
    loop {
        let line = match crate::lock::observe(&lock_path)? {
            Ok(_observer) => {
                // Held until the end of this arm: no run can start or end meanwhile.
                let failed: Option<FailedMarker> = state::read_json(host, state::FAILED_FILE);
                if let Some(marker) = failed {
                    eprintln!("bootstrap up failed (exit code {})", marker.exit_code);
                    return Ok(Finished::Failed(marker));
                }
                if state::read_json::<DoneMarker>(host, state::DONE_FILE).is_some() {
                    eprintln!("bootstrap up has succeeded");
                    return Ok(Finished::Up);
                }
                let journal = Journal::load(host)?;
                match journal.unfinished() {
                    Some(entry) => format!(
                        "bootstrap up is not running; it stopped in step {} and has not finished: waiting for it to run again",
                        entry.id
                    ),
                    None => "waiting for bootstrap up to start".to_owned(),
                }
            }
            Err(holder) => {
                let journal = Journal::load(host)?;
                let done = journal
                    .entries
                    .iter()
                    .filter(|e| e.status == EntryStatus::Done)
                    .count();
                let now = journal
                    .entries
                    .iter()
                    .rev()
                    .find(|e| e.status == EntryStatus::Started)
                    .map(|e| format!("; now: {}", e.id))
                    .unwrap_or_default();
                format!("bootstrap is running ({holder}): {done} steps done{now}")
            }
        };
        if line != said {
            eprintln!("{line}");
            said = line;
        }
        if let Some(limit) = timeout {
            if start.elapsed() >= limit {
                return Err(Error::PeerTimeout(format!(
                    "status --wait: bootstrap up has not finished after {}; last seen: {said}",
                    humantime::format_duration(limit)
                )));
            }
        }
        std::thread::sleep(WAIT_INTERVAL);
    }
}

/// Everything `status` reports, read from the node's records.
fn collect(cli: &Cli, host: &RootedHost) -> Result<Status, Error> {
    let host = host.clone();
    let journal = Journal::load(&host)?;
    let done: Option<DoneMarker> = state::read_json(&host, state::DONE_FILE);
    let failed: Option<FailedMarker> = state::read_json(&host, state::FAILED_FILE);
    let role = role::load(&host)?;
    let (distro, config_error, fleet) = match Session::open(cli) {
        Ok(session) => {
            let fleet = role
                .as_ref()
                .filter(|r| r.role.is_controller() && done.is_some())
                .map(|_| fleet(&session));
            (Some(super::plan_cmd::distro_output(&session)), None, fleet)
        }
        Err(e) => (None, Some(e.to_string()), None),
    };
    let (fleet, fleet_error) = match fleet {
        Some(Ok(nodes)) => (Some(nodes), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let status = Status {
        bootstrap_version: env!("CARGO_PKG_VERSION"),
        state: match (&failed, &done, journal.entries.is_empty()) {
            (Some(_), _, _) => "failed",
            (None, Some(_), _) => "up",
            (None, None, false) => "in progress or interrupted",
            (None, None, true) => "not set up",
        },
        version: done.as_ref().map(|d| d.distro_version.clone()),
        role,
        distro,
        fleet,
        fleet_error,
        config_error,
        steps_done: journal
            .entries
            .iter()
            .filter(|e| e.status == EntryStatus::Done)
            .count(),
        steps_total: journal.entries.len(),
        unfinished: journal.unfinished().cloned(),
        services: services(&host, &journal),
        done,
        failed,
    };
    Ok(status)
}

/// Every node's version, from the Nodes' kubelets and the upgrade lease's reports, with
/// the turns in progress.
fn fleet(session: &Session) -> Result<Vec<FleetNode>, String> {
    use std::collections::BTreeMap;
    let driver = crate::distro::driver(session.image.distro);
    let lease = crate::distro::upgrade_lease::UpgradeLease {
        host: &session.host,
        driver,
    };
    let (record, _) = lease.read()?;
    let mut nodes: BTreeMap<String, FleetNode> = BTreeMap::new();
    fn entry<'m>(nodes: &'m mut BTreeMap<String, FleetNode>, name: &str) -> &'m mut FleetNode {
        nodes.entry(name.to_owned()).or_insert_with(|| FleetNode {
            name: name.to_owned(),
            version: None,
            upgrading_to: None,
        })
    }
    for (name, version) in &record.versions {
        entry(&mut nodes, name).version = Some(version.clone());
    }
    let now = crate::join::unix_now();
    for (name, turn) in record.upgrading.iter().filter(|(_, t)| t.until > now) {
        entry(&mut nodes, name).upgrading_to = Some(turn.target.clone());
    }
    let ops = crate::distro::NodeOps::new(&session.host, driver, driver.admin_kubeconfig());
    for (name, version) in ops.kubelet_versions().map_err(|e| e.to_string())? {
        if !version.is_empty() {
            entry(&mut nodes, &name).version = Some(version);
        }
    }
    Ok(nodes.into_values().collect())
}

/// Units bootstrap enabled, started or masked, with what systemd says of them now.
fn services(host: &dyn Host, journal: &Journal) -> Vec<ServiceState> {
    let mut units: Vec<String> = journal
        .entries
        .iter()
        .filter_map(|e| {
            let (verb, unit) = e.id.split_once(':')?;
            // Keyed restarts carry `@<12 hex digits>` after the unit name (template units
            // such as `getty@tty1.service` keep theirs).
            let unit = unit
                .rsplit_once('@')
                .filter(|(_, d)| d.len() == 12 && d.chars().all(|c| c.is_ascii_hexdigit()))
                .map_or(unit, |(u, _)| u);
            matches!(verb, "enable" | "start" | "restart" | "mask").then(|| unit.to_owned())
        })
        .collect();
    units.sort();
    units.dedup();
    units
        .into_iter()
        .map(|unit| {
            let state = match host.run(&systemctl(&["is-active", &unit])) {
                Ok(out) => {
                    let text = out.stdout_text().trim().to_owned();
                    if text.is_empty() {
                        out.status_text()
                    } else {
                        text
                    }
                }
                Err(e) => format!("unknown ({e})"),
            };
            ServiceState { unit, state }
        })
        .collect()
}

fn print_text(s: &Status) {
    println!("state:     {}", s.state);
    match &s.role {
        Some(r) => println!(
            "role:      {} ({}; decided {})",
            r.role,
            r.reason,
            r.decided_at.as_deref().unwrap_or("?")
        ),
        None => println!("role:      not decided yet"),
    }
    match (&s.distro, &s.config_error) {
        (Some(d), _) => println!(
            "distro:    {} {} ({}) from {}",
            d.kind, d.version, d.arch, d.image
        ),
        (None, Some(e)) => println!("distro:    unknown: {e}"),
        (None, None) => println!("distro:    unknown"),
    }
    println!("bootstrap: {}", s.bootstrap_version);
    if let Some(v) = &s.version {
        println!("version:   {v}");
    }
    println!("steps:     {} of {} done", s.steps_done, s.steps_total);
    if let Some(u) = &s.unfinished {
        println!(
            "unfinished: {} ({:?}, {} attempts){}",
            u.id,
            u.status,
            u.attempts,
            u.note
                .as_ref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
    }
    if let Some(d) = &s.done {
        println!("up since:  {}", d.at);
    }
    if let Some(f) = &s.failed {
        println!(
            "last error ({}, exit code {}): {}",
            f.at, f.exit_code, f.error
        );
    }
    for svc in &s.services {
        println!("service:   {} {}", svc.unit, svc.state);
    }
    for node in s.fleet.iter().flatten() {
        println!(
            "fleet:     {} {}{}",
            node.name,
            node.version.as_deref().unwrap_or("?"),
            node.upgrading_to
                .as_ref()
                .map(|t| format!(" (upgrading to {t})"))
                .unwrap_or_default()
        );
    }
    if let Some(e) = &s.fleet_error {
        println!("fleet:     unknown: {e}");
    }
}
