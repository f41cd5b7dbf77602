//! Applying a plan: check each step, apply what is not in place, journal every change.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use super::check::{self, Status};
use super::journal::{EntryStatus, Journal, Undo};
use super::payloads::{ImageFile, PayloadError, Payloads, Unpack};
use super::step::{Action, Phase, ServiceAction, Step};
use super::Plan;
use crate::host::{Host, HostError};
use crate::state;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Ids of steps that changed the host.
    pub applied: Vec<String>,
    /// Ids of steps found already in place.
    pub in_place: Vec<String>,
}

/// Why applying stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("step {id} ({description}) failed: {source}")]
    Step {
        id: String,
        description: String,
        #[source]
        source: HostError,
    },
    #[error("step {id}: gave up after {} waiting until {probe}{}", humantime::format_duration(*.timeout), last_error(.last))]
    Timeout {
        id: String,
        probe: String,
        timeout: Duration,
        last: Option<String>,
    },
    #[error("step {id}: stopped waiting until {probe}: {why}{}", last_error(.last))]
    GaveUp {
        id: String,
        probe: String,
        why: String,
        last: Option<String>,
    },
    /// Unpacking or seeding failed; the source names the archive, entry or path.
    #[error("step {id}: {source}")]
    Payload {
        id: String,
        #[source]
        source: PayloadError,
    },
    #[error("cannot record progress in {path}: {0}", path = state::JOURNAL_FILE)]
    Journal(#[source] HostError),
    /// A stop signal arrived; applying stopped at a safe point, the journal says where.
    #[error("stopped by {signal} {} step {id}; a re-run resumes there", if *.in_flight { "in" } else { "before" })]
    Interrupted {
        id: String,
        signal: crate::interrupt::Stop,
        /// The step was under way (its command stopped, its wait cut short) rather than
        /// not begun.
        in_flight: bool,
    },
}

fn last_error(last: &Option<String>) -> String {
    last.as_ref()
        .map(|e| format!(" (last probe error: {e})"))
        .unwrap_or_default()
}

impl ApplyError {
    /// The step the error happened in.
    pub fn step_id(&self) -> Option<&str> {
        match self {
            ApplyError::Step { id, .. }
            | ApplyError::Timeout { id, .. }
            | ApplyError::GaveUp { id, .. }
            | ApplyError::Payload { id, .. }
            | ApplyError::Interrupted { id, .. } => Some(id),
            ApplyError::Journal(_) => None,
        }
    }

    /// The stop signal that ended applying, when one did.
    pub fn stopped_by(&self) -> Option<crate::interrupt::Stop> {
        match self {
            ApplyError::Interrupted { signal, .. } => Some(*signal),
            _ => None,
        }
    }
}

/// Stops before `step` when a stop signal has arrived: between steps is always safe.
fn stop_before(step: &Step) -> Result<(), ApplyError> {
    match crate::interrupt::pending() {
        Some(signal) => Err(ApplyError::Interrupted {
            id: step.id.clone(),
            signal,
            in_flight: false,
        }),
        None => Ok(()),
    }
}

/// A step whose command was stopped by a stop signal reads as interrupted, not failed.
fn interrupted_in(step: &Step, error: ApplyError) -> ApplyError {
    match error {
        ApplyError::Step {
            source: HostError::Interrupted { signal, .. },
            ..
        } => ApplyError::Interrupted {
            id: step.id.clone(),
            signal,
            in_flight: true,
        },
        other => other,
    }
}

/// Applies `plan`, resuming from `journal`, saving it after each change. A step is
/// skipped when the host shows it in place, or, for steps the host cannot judge, when
/// the journal has it done with the same fingerprint.
pub fn apply(
    host: &dyn Host,
    payloads: &dyn Payloads,
    plan: &Plan,
    journal: &mut Journal,
) -> Result<ApplyReport, ApplyError> {
    let mut report = ApplyReport::default();
    let total = plan.len();
    for (index, step) in plan.steps.iter().enumerate() {
        stop_before(step)?;
        let fingerprint = step.fingerprint();
        let status = check::check(host, payloads, &step.action)
            .map_err(|source| interrupted_in(step, step_error(step, source)))?;
        let journaled = journal.is_done(&step.id, &fingerprint);
        if status == Status::Done || (status == Status::Unknown && journaled) {
            if !journaled {
                journal.record(
                    &step.id,
                    &fingerprint,
                    EntryStatus::Done,
                    Some("already in place".into()),
                );
                journal.save(host).map_err(ApplyError::Journal)?;
            }
            log::debug!("[{}/{total}] in place: {}", index + 1, step.action);
            report.in_place.push(step.id.clone());
            continue;
        }
        if step.phase == Phase::Join
            && !host
                .exists(Path::new(state::JOIN_STARTED_FILE))
                .map_err(ApplyError::Journal)?
        {
            host.write_atomic(
                Path::new(state::JOIN_STARTED_FILE),
                state::now_rfc3339().as_bytes(),
                0o600,
                None,
            )
            .map_err(ApplyError::Journal)?;
        }
        // What reset must take away is written ahead, with the start: a run that dies
        // after the step took effect leaves a re-run that finds it in place and can no
        // longer tell it was not there before.
        let undo = undo_for(host, &step.action).map_err(|source| step_error(step, source))?;
        journal.record(&step.id, &fingerprint, EntryStatus::Started, None);
        if let Some(undo) = undo {
            journal.set_undo(&step.id, undo);
        }
        journal.save(host).map_err(ApplyError::Journal)?;
        log::info!("[{}/{total}] {}", index + 1, step.action);
        crate::fault::point(|| format!("step-before:{}", step.id));
        match run(host, payloads, step) {
            Ok(()) => {
                // Done on the host, not yet in the journal: the re-run must see it in place.
                crate::fault::point(|| format!("step-applied:{}", step.id));
                journal.record(&step.id, &fingerprint, EntryStatus::Done, None);
                journal.save(host).map_err(ApplyError::Journal)?;
                crate::fault::point(|| format!("step-recorded:{}", step.id));
                report.applied.push(step.id.clone());
            }
            Err(error) => {
                let error = interrupted_in(step, error);
                journal.record(
                    &step.id,
                    &fingerprint,
                    EntryStatus::Failed,
                    Some(error.to_string()),
                );
                journal.save(host).map_err(ApplyError::Journal)?;
                return Err(error);
            }
        }
    }
    Ok(report)
}

/// What `reset` must remove if this action goes ahead: looked at before it runs, so only
/// what was not there already counts.
fn undo_for(host: &dyn Host, action: &Action) -> Result<Option<Undo>, HostError> {
    Ok(match action {
        Action::WriteFile { path, .. }
        | Action::InstallBinary { dest: path, .. }
        | Action::InstallFromImage { dest: path, .. }
        | Action::CopyFile { dest: path, .. }
        | Action::Symlink { path, .. } => {
            if host.metadata(path)?.is_some() {
                None
            } else {
                Some(Undo::File {
                    path: path.clone(),
                    dirs_from: highest_missing(host, path.parent())?,
                })
            }
        }
        Action::MakeDir { path, .. } => {
            if host.metadata(path)?.is_some() {
                None
            } else {
                Some(Undo::Dir {
                    path: path.clone(),
                    dirs_from: highest_missing(host, Some(path))?,
                })
            }
        }
        Action::HostsEntry { .. } => Some(Undo::HostsEntry),
        Action::Service {
            unit,
            action: ServiceAction::Enable,
        } => Some(Undo::Unit { name: unit.clone() }),
        _ => None,
    })
}

/// The highest folder of `dir`'s ancestry (itself included) that does not exist yet.
fn highest_missing(
    host: &dyn Host,
    dir: Option<&Path>,
) -> Result<Option<std::path::PathBuf>, HostError> {
    let mut highest = None;
    let mut current = dir;
    while let Some(d) = current {
        if d == Path::new("/") || host.metadata(d)?.is_some() {
            break;
        }
        highest = Some(d.to_path_buf());
        current = d.parent();
    }
    Ok(highest)
}

fn step_error(step: &Step, source: HostError) -> ApplyError {
    ApplyError::Step {
        id: step.id.clone(),
        description: step.action.to_string(),
        source,
    }
}

fn run(host: &dyn Host, payloads: &dyn Payloads, step: &Step) -> Result<(), ApplyError> {
    let fail = |source| step_error(step, source);
    let payload_failed = |source| ApplyError::Payload {
        id: step.id.clone(),
        source,
    };
    match &step.action {
        Action::MakeDir { path, mode } => host.create_dir_all(path, *mode).map_err(fail),
        Action::WriteFile {
            path,
            mode,
            owner,
            contents,
        } => host
            .write_atomic(path, contents.bytes(), *mode, *owner)
            .map_err(fail),
        Action::InstallBinary { source, dest, mode } => {
            copy_file(host, source, dest, *mode, false).map_err(fail)
        }
        Action::InstallFromImage {
            image,
            file,
            dest,
            mode,
            arch,
        } => {
            let image = host.real_path(image).map_err(fail)?;
            let dest = host.real_path(dest).map_err(fail)?;
            payloads
                .install_image_file(&ImageFile {
                    image: &image,
                    file,
                    dest: &dest,
                    mode: *mode,
                    arch,
                })
                .map_err(payload_failed)
        }
        Action::RunCommand { command, .. } => host.run_checked(command).map(drop).map_err(fail),
        Action::Service { unit, action } => {
            let mut args = vec![action.verb()];
            if matches!(
                action,
                ServiceAction::StartNoBlock | ServiceAction::RestartNoBlock
            ) {
                args.push("--no-block");
            }
            args.push(unit);
            host.run_checked(&check::systemctl(&args))
                .map(drop)
                .map_err(fail)
        }
        Action::WaitFor {
            probe,
            fail_when,
            timeout,
            interval,
        } => wait_for(host, step, probe, fail_when.as_ref(), *timeout, *interval),
        Action::CopyFile {
            source,
            dest,
            mode,
            decompress,
        } => copy_file(host, source, dest, *mode, *decompress).map_err(fail),
        Action::SeedImages {
            images_dir,
            registry_tree,
            storage,
            skip,
            ..
        } => {
            let real = |path: &Option<std::path::PathBuf>| {
                path.as_deref().map(|p| host.real_path(p)).transpose()
            };
            let tree = real(registry_tree).map_err(fail)?;
            let dir = real(images_dir).map_err(fail)?;
            let storage = host.real_path(storage).map_err(fail)?;
            payloads
                .seed(tree.as_deref(), dir.as_deref(), skip, &storage)
                .map_err(payload_failed)
        }
        Action::HostsEntry { ip, names } => {
            let path = std::path::Path::new("/etc/hosts");
            let current = host.read_string(path).map_err(fail)?.unwrap_or_default();
            let mode = host
                .metadata(path)
                .map_err(fail)?
                .map(|m| m.mode)
                .unwrap_or(0o644);
            let updated = crate::plan::hosts_file::with_entry(&current, ip, names);
            host.write_atomic(path, updated.as_bytes(), mode, None)
                .map_err(fail)
        }
        Action::Symlink { path, target } => host.symlink(target, path).map_err(fail),
        Action::Remove { path } => host.remove_all(path).map_err(fail),
        Action::Unmount { under } => {
            let mut real = Vec::new();
            for path in under {
                real.push(host.real_path(path).map_err(fail)?);
            }
            crate::host::system::unmount_under(&real).map_err(fail)
        }
        Action::KillProcesses { under } => {
            let real = host.real_path(under).map_err(fail)?;
            crate::host::system::kill_processes_under(&real).map_err(fail)
        }
        Action::RemoveHostsEntry { .. } => {
            let path = std::path::Path::new("/etc/hosts");
            let Some(current) = host.read_string(path).map_err(fail)? else {
                return Ok(());
            };
            let mode = host
                .metadata(path)
                .map_err(fail)?
                .map(|m| m.mode)
                .unwrap_or(0o644);
            let updated = crate::plan::hosts_file::without_entry(&current);
            host.write_atomic(path, updated.as_bytes(), mode, None)
                .map_err(fail)
        }
        Action::UnpackRootfs {
            archive,
            dest,
            sha256,
            sha256_source,
            arch,
            bundle,
            ca_file,
            insecure_http,
        } => {
            let archive = if super::payloads::is_url(archive) {
                archive.clone()
            } else {
                host.real_path(archive).map_err(fail)?
            };
            let dest = host.real_path(dest).map_err(fail)?;
            let ca_file = ca_file
                .as_deref()
                .map(|p| host.real_path(p))
                .transpose()
                .map_err(fail)?;
            payloads
                .unpack(&Unpack {
                    archive: &archive,
                    dest: &dest,
                    sha256: sha256.as_deref(),
                    sha256_source: sha256_source.as_deref(),
                    arch,
                    bundle: *bundle,
                    ca_file: ca_file.as_deref(),
                    insecure_http: *insecure_http,
                })
                .map_err(payload_failed)
        }
    }
}

/// Streams `source` to a temp file beside `dest`, then renames it into place, keeping
/// the source's mtime (the cheap "already copied" check). With `decompress`, gzip and
/// zstd are decoded on the way.
fn copy_file(
    host: &dyn Host,
    source: &std::path::Path,
    dest: &std::path::Path,
    mode: u32,
    decompress: bool,
) -> Result<(), HostError> {
    use std::io::{BufReader, Write};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let src = host.real_path(source)?;
    let dst = host.real_path(dest)?;
    let io = |op: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| HostError::io(op, &path, e)
    };
    let parent = dst.parent().unwrap_or(std::path::Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io("create folder", dest))?;
    let file = std::fs::File::open(&src).map_err(io("open", source))?;
    let mtime = file
        .metadata()
        .and_then(|m| m.modified())
        .map_err(io("stat", source))?;
    let mut buffered = BufReader::with_capacity(1 << 20, file);
    let mut reader: Box<dyn std::io::Read + '_> = if decompress {
        let kind = crate::io::compression::detect(&mut buffered)
            .map_err(io("read", source))?
            .map_err(|format| {
                io("decompress", source)(std::io::Error::other(format!(
                    "{format} is not supported"
                )))
            })?;
        crate::io::compression::decoder(kind, &mut buffered).map_err(io("read", source))?
    } else {
        Box::new(&mut buffered)
    };
    let temp = crate::host::temp::name_beside(&dst).map_err(io("name a file beside", dest))?;
    let result = (|| -> std::io::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        std::io::copy(&mut reader, &mut out)?;
        out.flush()?;
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        out.set_modified(mtime)?;
        out.sync_all()?;
        crate::fault::point(|| format!("rename:{}", dest.display()));
        std::fs::rename(&temp, &dst)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(HostError::io_at("copy to", dest, parent, e));
    }
    Ok(())
}

/// `Ok(None)` when the probe passes; otherwise why not, when the probe can tell (a
/// command's stderr), so a timeout names the cause rather than just the probe.
fn probe_with_cause(
    host: &dyn Host,
    probe: &super::Probe,
) -> Result<Option<Option<String>>, HostError> {
    if let super::Probe::CommandSucceeds { command } = probe {
        let output = host.run(command)?;
        if output.success() {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let cause = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!("`{command}` {}: {}", output.status_text(), l.trim()))
            .unwrap_or_else(|| format!("`{command}` {}", output.status_text()));
        return Ok(Some(Some(cause)));
    }
    Ok(if check::probe(host, probe)? {
        None
    } else {
        Some(None)
    })
}

/// Applies steps without a journal (`reset`, `leave`): each is checked and run if not in
/// place; the first failure stops.
pub fn apply_unjournaled(
    host: &dyn Host,
    payloads: &dyn Payloads,
    plan: &Plan,
) -> Result<ApplyReport, ApplyError> {
    let mut report = ApplyReport::default();
    let total = plan.len();
    for (index, step) in plan.steps.iter().enumerate() {
        stop_before(step)?;
        let status = check::check(host, payloads, &step.action)
            .map_err(|source| interrupted_in(step, step_error(step, source)))?;
        if status == Status::Done {
            log::debug!("[{}/{total}] in place: {}", index + 1, step.action);
            report.in_place.push(step.id.clone());
            continue;
        }
        log::info!("[{}/{total}] {}", index + 1, step.action);
        crate::fault::point(|| format!("step-before:{}", step.id));
        run(host, payloads, step).map_err(|e| interrupted_in(step, e))?;
        crate::fault::point(|| format!("step-applied:{}", step.id));
        report.applied.push(step.id.clone());
    }
    Ok(report)
}

fn wait_for(
    host: &dyn Host,
    step: &Step,
    probe: &super::Probe,
    fail_when: Option<&super::Probe>,
    timeout: Duration,
    interval: Duration,
) -> Result<(), ApplyError> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("waiting until {probe}"));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let start = Instant::now();
    let mut last;
    let result = loop {
        match probe_with_cause(host, probe) {
            Ok(None) => break Ok(()),
            Ok(Some(cause)) => last = cause,
            Err(e) => last = Some(e.to_string()),
        }
        if let Some(fail) = fail_when {
            if check::probe(host, fail).unwrap_or(false) {
                break Err(ApplyError::GaveUp {
                    id: step.id.clone(),
                    probe: probe.to_string(),
                    why: fail.to_string(),
                    last: last.clone(),
                });
            }
        }
        if let Some(signal) = crate::interrupt::pending() {
            break Err(ApplyError::Interrupted {
                id: step.id.clone(),
                signal,
                in_flight: true,
            });
        }
        if start.elapsed() >= timeout {
            break Err(ApplyError::Timeout {
                id: step.id.clone(),
                probe: probe.to_string(),
                timeout,
                last,
            });
        }
        std::thread::sleep(interval.min(timeout.saturating_sub(start.elapsed())));
    };
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{CommandOutput, CommandSpec, FakeHost};
    use crate::plan::payloads::NoPayloads;
    use crate::plan::{Contents, Probe};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn plan() -> Plan {
        let mut plan = Plan::default();
        plan.push(Step::new(
            Phase::HostPrep,
            "test",
            Action::WriteFile {
                path: PathBuf::from("/etc/a.conf"),
                mode: 0o644,
                owner: None,
                contents: Contents::Public(b"a\n".to_vec()),
            },
        ));
        plan.push(Step::new(
            Phase::HostPrep,
            "test",
            Action::RunCommand {
                command: CommandSpec::new("modprobe").arg("overlay"),
                done_when: None,
            },
        ));
        plan.push(Step::new(
            Phase::HostPrep,
            "test",
            Action::Service {
                unit: "x.service".into(),
                action: ServiceAction::Restart,
            },
        ));
        plan
    }

    #[test]
    fn resumes_at_the_failed_step_and_then_does_nothing() {
        let host = FakeHost::new();
        let failing = Arc::new(AtomicBool::new(true));
        let f = failing.clone();
        host.respond(move |cmd| CommandOutput {
            code: Some(if cmd.program == "modprobe" && f.load(Ordering::SeqCst) {
                1
            } else {
                0
            }),
            stderr: b"modprobe: FATAL: Module overlay not found".to_vec(),
            ..Default::default()
        });
        let mut journal = Journal::default();
        let err = apply(&host, &NoPayloads, &plan(), &mut journal).unwrap_err();
        assert_eq!(err.step_id(), Some("run:modprobe overlay"));
        assert!(
            err.to_string().contains("Module overlay not found"),
            "{err}"
        );
        let saved = Journal::load(&host).unwrap();
        assert_eq!(saved.unfinished().unwrap().id, "run:modprobe overlay");
        assert_eq!(saved.unfinished().unwrap().status, EntryStatus::Failed);

        failing.store(false, Ordering::SeqCst);
        let mut journal = Journal::load(&host).unwrap();
        let report = apply(&host, &NoPayloads, &plan(), &mut journal).unwrap();
        assert_eq!(report.in_place, vec!["write:/etc/a.conf"]);
        assert_eq!(
            report.applied,
            vec!["run:modprobe overlay", "restart:x.service"]
        );

        let before = host.commands().len();
        let report = apply(&host, &NoPayloads, &plan(), &mut journal).unwrap();
        assert!(report.applied.is_empty(), "{report:?}");
        assert_eq!(
            host.commands().len(),
            before,
            "no command on a converged host"
        );
    }

    #[test]
    fn a_changed_step_is_applied_again() {
        let host = FakeHost::new();
        let mut journal = Journal::default();
        apply(&host, &NoPayloads, &plan(), &mut journal).unwrap();
        let mut changed = plan();
        changed.steps[1].action = Action::RunCommand {
            command: CommandSpec::new("modprobe").arg("overlay"),
            done_when: Some(Probe::FileExists {
                path: "/nope".into(),
            }),
        };
        let report = apply(&host, &NoPayloads, &changed, &mut journal).unwrap();
        assert_eq!(report.applied, vec!["run:modprobe overlay"]);
    }

    #[test]
    fn waits_are_bounded_and_name_the_probe() {
        let host = FakeHost::new();
        let mut plan = Plan::default();
        plan.push(Step::new(
            Phase::Init,
            "test",
            Action::WaitFor {
                fail_when: None,
                probe: Probe::FileExists {
                    path: "/run/ready".into(),
                },
                timeout: Duration::from_millis(200),
                interval: Duration::from_millis(20),
            },
        ));
        let err = apply(&host, &NoPayloads, &plan, &mut Journal::default()).unwrap_err();
        assert!(err.to_string().contains("/run/ready exists"), "{err}");
    }

    #[test]
    fn join_steps_leave_the_join_marker() {
        let host = FakeHost::new();
        let mut plan = Plan::default();
        plan.push(Step::new(
            Phase::Join,
            "test",
            Action::RunCommand {
                command: CommandSpec::new("k3s").arg("agent"),
                done_when: None,
            },
        ));
        apply(&host, &NoPayloads, &plan, &mut Journal::default()).unwrap();
        assert!(host.file(state::JOIN_STARTED_FILE).is_some());
    }
}
