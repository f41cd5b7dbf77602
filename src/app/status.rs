//! `bootstrap status`: what this node is and how far `up` got, from its own records.

use serde::Serialize;

use super::{open_host, print_json, Error, Session};
use crate::cli::{Cli, Output, OutputArgs};
use crate::host::Host;
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
}

#[derive(Serialize)]
struct ServiceState {
    unit: String,
    state: String,
}

pub(super) fn run(cli: &Cli, args: &OutputArgs) -> Result<(), Error> {
    let host = open_host(cli)?;
    let journal = Journal::load(&host)?;
    let done: Option<DoneMarker> = state::read_json(&host, state::DONE_FILE);
    let failed: Option<FailedMarker> = state::read_json(&host, state::FAILED_FILE);
    let (distro, config_error) = match Session::open(cli) {
        Ok(session) => (Some(super::plan_cmd::distro_output(&session)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let status = Status {
        bootstrap_version: env!("CARGO_PKG_VERSION"),
        state: match (&failed, &done, journal.entries.is_empty()) {
            (Some(_), _, _) => "failed",
            (None, Some(_), _) => "up",
            (None, None, false) => "in progress or interrupted",
            (None, None, true) => "not set up",
        },
        role: role::load(&host)?,
        distro,
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
    match args.output {
        Output::Json => print_json(&status),
        Output::Text => print_text(&status),
    }
    Ok(())
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
}
