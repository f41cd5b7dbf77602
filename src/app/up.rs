//! `bootstrap up`: converge this node, resumably, one run at a time.

use std::path::Path;

use super::{real_path, Error, Session};
use crate::cli::{Cli, Stage, UpArgs};
use crate::host::Host;
use crate::plan::{apply, journal::Journal};
use crate::state::{self, DoneMarker};
use crate::{lock, role};

pub(super) fn run(cli: &Cli, args: &UpArgs) -> Result<(), Error> {
    if args.stage == Stage::Install {
        return install_stage(cli);
    }
    // Nothing is written until config, facts, image and role are known to be good (an
    // archive URL is downloaded first: staged, it publishes nothing unless verified).
    let mut session = Session::open_with(cli, super::Fetch::Allowed)?;
    role::resolve(&session.host, &session.config, &session.facts, false)?;

    state::ensure_dir(&session.host)?;
    let holder = format!(
        "pid {} (bootstrap up, since {})",
        std::process::id(),
        state::now_rfc3339()
    );
    let _lock = lock::acquire(
        &real_path(&session.host, state::LOCK_FILE),
        session.config.lock_wait,
        &holder,
    )?;

    super::stop::catch_stop_signals()?;
    let result = converge(cli, &mut session);
    match &result {
        Ok(()) => {}
        Err(error) => super::stop::record_failure(&session.host, error),
    }
    result
}

fn converge(cli: &Cli, session: &mut Session) -> Result<(), Error> {
    let host = &session.host;
    let new_cluster = matches!(&cli.command, Some(crate::cli::Command::Up(a)) if a.new_cluster);
    let computed = role::resolve(host, &session.config, &session.facts, false)?;
    super::init_check::settle(session, &computed, new_cluster)?;
    let decision = role::resolve(host, &session.config, &session.facts, true)?;
    log::info!(
        "node {} is a {} of a {} {} cluster ({})",
        session.node_name(),
        decision.role,
        session.image.distro,
        session.image.metadata.version,
        decision.reason
    );

    if cli.join_line.is_some() {
        super::persist_manual(host, &session.config, None)?;
    }

    let report = session.preflight(&decision, &cli.overrides.ignore_preflight)?;
    for check in &report.checks {
        use crate::preflight::Outcome;
        match check.outcome {
            Outcome::Warn => log::warn!("preflight {}: {}", check.name, check.reason),
            Outcome::Ignored => log::warn!(
                "preflight {} failed, ignored as asked: {}",
                check.name,
                check.reason
            ),
            Outcome::Fix => log::info!("preflight {}: {}", check.name, check.reason),
            _ => {}
        }
    }
    let failures: Vec<_> = report.failures().into_iter().cloned().collect();
    if !failures.is_empty() {
        return Err(Error::Preflight(failures));
    }

    // Whether this run brings the node up (a retried `up` after a failed join counts).
    let coming_up = !host.exists(Path::new(state::DONE_FILE))?;
    let access = match decision.role.joins() {
        true => JoinAccess::of(cli.join_line.as_ref(), &session.config)?,
        false => None,
    };
    if decision.role.joins() {
        fetch_material(cli, session, &decision, access.as_ref())?;
    }
    if decision.role.joins() && session.join_material(&decision)?.is_none() {
        return Err(crate::distro::DistroError::NoMaterial {
            path: crate::distro::MATERIAL_FILE,
            role: if decision.role.is_controller() {
                crate::distro::JoinRole::Controller
            } else {
                crate::distro::JoinRole::Worker
            },
        }
        .into());
    }

    let mut journal = Journal::load(host)?;
    if let Some(entry) = journal.unfinished() {
        log::info!("resuming: step {} did not finish last time", entry.id);
    }
    let mut plan = session.plan(&decision)?;
    let mut report = apply(host, &crate::node_plan::NodePayloads, &plan, &mut journal)?;
    if session.from_archive {
        // The image came as an archive: what the runtime needs from it can only be
        // planned now that it is unpacked.
        session.reopen_image()?;
        plan = session.plan(&decision)?;
        let second = apply(
            &session.host,
            &crate::node_plan::NodePayloads,
            &plan,
            &mut journal,
        )?;
        report.applied.extend(second.applied);
        report.in_place = second.in_place;
    }
    let host = &session.host;

    if coming_up && decision.role == crate::role::Role::JoinController {
        if let Some(access) = &access {
            release_lease(session, access)?;
        }
    }

    record_cluster(session, &decision)?;
    let marker_present = host.exists(Path::new(state::DONE_FILE))?;
    if !report.applied.is_empty() || !marker_present {
        state::write_json(
            host,
            state::DONE_FILE,
            &DoneMarker {
                at: state::now_rfc3339(),
                bootstrap_version: env!("CARGO_PKG_VERSION").to_owned(),
                role: format!("{:?}", decision.role),
                distro: session.image.distro.to_string(),
                distro_version: session.image.metadata.version.clone(),
                steps: plan.len(),
            },
        )?;
    }
    host.remove_file(Path::new(state::FAILED_FILE))?;
    if session.config.cluster_api_sentinel && !host.exists(Path::new(state::CAPI_SENTINEL))? {
        host.write_atomic(Path::new(state::CAPI_SENTINEL), b"success", 0o644, None)?;
    }
    if decision.role.is_controller() && session.config.join_secret().is_none() {
        log::info!(
            "no join secret is configured: this controller's join service uses the one in {} (0600); add nodes with `bootstrap token create worker` or `bootstrap token create controller`",
            crate::join::NODE_SECRET_FILE
        );
    }
    if report.applied.is_empty() {
        log::info!(
            "node {} is up; nothing to do: all {} steps already in place",
            session.node_name(),
            plan.len()
        );
    } else {
        log::info!(
            "node {} is up: {} steps applied, {} already in place",
            session.node_name(),
            report.applied.len(),
            report.in_place.len()
        );
    }
    Ok(())
}

/// `up --stage install`: what every node of this image needs, put in place without a role,
/// a started service or anything node-specific (image baking).
fn install_stage(cli: &Cli) -> Result<(), Error> {
    let mut session = Session::open_with(cli, super::Fetch::Allowed)?;
    state::ensure_dir(&session.host)?;
    let _lock = lock::acquire(
        &real_path(&session.host, state::LOCK_FILE),
        session.config.lock_wait,
        &format!("pid {} (bootstrap up --stage install)", std::process::id()),
    )?;
    super::stop::catch_stop_signals()?;
    let mut journal = Journal::load(&session.host)?;
    let payloads = crate::node_plan::NodePayloads;
    let mut report = apply(
        &session.host,
        &payloads,
        &session.install_plan()?,
        &mut journal,
    )?;
    if session.from_archive {
        session.reopen_image()?;
        let second = apply(
            &session.host,
            &payloads,
            &session.install_plan()?,
            &mut journal,
        )?;
        report.applied.extend(second.applied);
    }
    log::info!(
        "installed into {}: {} steps applied; the first boot's `bootstrap up` does the node-specific rest",
        session.host.root().display(),
        report.applied.len()
    );
    Ok(())
}

/// Fetches join material from the controllers' join service when this joiner has none
/// (or only expired material and has not joined yet). `Ok(true)` when it fetched.
fn fetch_material(
    cli: &Cli,
    session: &Session,
    decision: &role::RoleDecision,
    access: Option<&JoinAccess>,
) -> Result<bool, Error> {
    use crate::distro::{JoinMaterial, JoinRole, MATERIAL_FILE};
    let host = &session.host;
    let existing = JoinMaterial::load(host).map_err(crate::distro::DistroError::from)?;
    let joined = host.exists(Path::new(state::DONE_FILE))?;
    let usable = existing.as_ref().is_some_and(|m| {
        joined
            || m.expires_at
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .is_none_or(|t| t > std::time::SystemTime::now())
    });
    if usable {
        return Ok(false);
    }
    let role = if decision.role.is_controller() {
        JoinRole::Controller
    } else {
        JoinRole::Worker
    };
    if let Some(line) = &cli.join_line {
        if line.role != role {
            return Err(Error::Usage(format!(
                "--join: the line is for a {}, but this node joins as a {role}",
                line.role
            )));
        }
    }
    let Some(access) = access else {
        // Nothing to ask with: the caller reports the missing material.
        return Ok(false);
    };
    // While it waits, a controller tells a first controller asking "is there a cluster?"
    // that it belongs to none yet (only with the cluster's keys: a join line's differ).
    let _answering = (role == JoinRole::Controller && access.credential.is_none())
        .then(|| crate::join::responder::start(access.keys.clone(), session.config.join.port))
        .flatten();
    let fetch = crate::join::Fetch {
        targets: access.targets.clone(),
        node: session.node_name(),
        role,
        credential: access.credential.clone(),
        timeout: session.config.join.timeout,
        backoff: crate::join::Backoff::default(),
    };
    host.create_dir_all(Path::new("/var/lib/bootstrap/join"), 0o700)?;
    if role == JoinRole::Controller {
        // Before asking: a controller that hands out control-plane material admits this
        // node (one at a time), and the lease must be given back once it has joined.
        host.write_atomic(
            Path::new(ASKED_FOR_ADMISSION_FILE),
            format!("{}\n", fetch.targets.join("\n")).as_bytes(),
            0o600,
            None,
        )?;
    }
    log::info!(
        "asking the controllers for join material as a {role} ({}; at most {})",
        fetch.targets.join(", "),
        humantime::format_duration(fetch.timeout)
    );
    let material = crate::join::client::fetch(&access.keys, &fetch).map_err(|gave_up| {
        match crate::interrupt::pending() {
            Some(signal) => Error::Stopped {
                signal,
                during: format!("asking the controllers for join material ({gave_up})"),
            },
            None => Error::PeerTimeout(format!("join: {gave_up}")),
        }
    })?;
    host.write_atomic(
        Path::new(MATERIAL_FILE),
        material.to_file_text().as_bytes(),
        0o600,
        None,
    )?;
    if cli.join_line.is_some() && material.cluster.is_some() {
        // A controller joined by a line serves with the received join secret, salted
        // with the cluster's name: keep the name with what the line settled.
        super::persist_manual(host, &session.config, material.cluster.as_deref())?;
    }
    Ok(true)
}

/// How this joiner reaches the join service, worked out once per run (deriving the
/// keys is deliberately slow).
struct JoinAccess {
    keys: crate::join::JoinKeys,
    /// `host:port` of the join services to ask.
    targets: Vec<String>,
    /// A join line's credential id.
    credential: Option<String>,
}

impl JoinAccess {
    /// From a join line, or from the join secret and `cluster.controllers`; `None` when
    /// this node has neither.
    fn of(
        line: Option<&crate::join::manual::JoinLine>,
        config: &crate::config::Config,
    ) -> Result<Option<JoinAccess>, Error> {
        if let Some(line) = line {
            return Ok(Some(JoinAccess {
                keys: line.keys(),
                targets: vec![line.address.clone()],
                credential: Some(line.id.clone()),
            }));
        }
        let (Some(secret), controllers) = (config.join_secret(), &config.cluster.controllers)
        else {
            return Ok(None);
        };
        if controllers.is_empty() {
            return Ok(None);
        }
        let keys = crate::join::JoinKeys::from_secret(secret, config.cluster_name())
            .map_err(|e| Error::Failed(e.to_string()))?;
        Ok(Some(JoinAccess {
            keys,
            targets: crate::join::targets(controllers, config.join.port),
            credential: None,
        }))
    }
}

/// Written before a controller asks the join service for material: from then on it may
/// hold the control-plane admission lease. A controller whose material was handed to it
/// (`token create controller --material`) was never admitted and has nothing to give back.
const ASKED_FOR_ADMISSION_FILE: &str = "/var/lib/bootstrap/join/asked-for-admission";

/// Tells the controllers this controller has joined, so the next may — when it asked
/// them for material (else there is no lease, and no join service need be up to say so).
fn release_lease(session: &Session, access: &JoinAccess) -> Result<(), Error> {
    let host = &session.host;
    if !host.exists(Path::new(ASKED_FOR_ADMISSION_FILE))? {
        return Ok(());
    }
    if let Err(cause) = crate::join::client::release(
        &access.keys,
        &access.targets,
        &session.node_name(),
        access.credential.clone(),
    ) {
        log::warn!("could not release the control-plane join lease ({cause}); it lapses by itself");
    }
    // Asked once: a later run has no lease to give back (it lapses if this one failed).
    host.remove_file(Path::new(ASKED_FOR_ADMISSION_FILE))?;
    Ok(())
}

/// Records which cluster this node belongs to (once): the id the first controller chose,
/// as join material carries it.
fn record_cluster(session: &Session, decision: &role::RoleDecision) -> Result<(), Error> {
    let host = &session.host;
    if host.exists(Path::new(state::CLUSTER_FILE))? {
        return Ok(());
    }
    let id = if decision.role.joins() {
        crate::distro::JoinMaterial::load(host)
            .map_err(crate::distro::DistroError::from)?
            .and_then(|m| m.join.cluster_id)
    } else {
        Some(
            crate::random::hex(16)
                .map_err(|e| Error::Failed(format!("cannot choose a cluster id: {e}")))?,
        )
    };
    let Some(id) = id else {
        return Ok(());
    };
    let record = state::ClusterRecord {
        id,
        distro: session.image.distro.to_string(),
        since: state::now_rfc3339(),
    };
    state::write_json(host, state::CLUSTER_FILE, &record)?;
    Ok(())
}
