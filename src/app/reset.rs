//! `bootstrap reset`: the distro's own teardown, then everything bootstrap's journal says
//! it created (units, binaries, files, the `/etc/hosts` line), then its state. The cluster
//! image stays unless `--purge`. Safe to run again.

use std::path::{Path, PathBuf};

use super::{load_config, open_host, Error};
use crate::cli::{Cli, ResetArgs};
use crate::distro::DistroKind;
use crate::host::Host;
use crate::plan::apply::apply_unjournaled;
use crate::plan::journal::{Journal, Undo};
use crate::plan::{Action, Phase, Plan, ServiceAction, Step};
use crate::rootfs::ClusterImage;
use crate::state::{self, DoneMarker};
use crate::{lock, role};

pub(super) fn run(cli: &Cli, args: &ResetArgs) -> Result<(), Error> {
    let host = open_host(cli)?;
    let config = load_config(cli, &host)?;
    state::ensure_dir(&host)?;
    let _lock = lock::acquire(
        &super::real_path(&host, state::LOCK_FILE),
        config.lock_wait,
        &format!("pid {} (bootstrap reset)", std::process::id()),
    )?;
    super::stop::catch_stop_signals()?;
    let journal = Journal::load(&host)?;
    let distros = installed_distros(&host, &config.rootfs.dir);
    let mut plan = Plan::default();
    for kind in &distros {
        for step in crate::distro::driver(*kind).teardown_steps() {
            plan.push(step);
        }
    }
    let undo = journal.undo_list();
    let image = image_paths(&config.rootfs.dir);
    let keep: &[PathBuf] = if args.purge { &[] } else { &image };
    for item in &undo {
        if let Undo::Unit { name } = item {
            for action in [ServiceAction::Stop, ServiceAction::Disable] {
                plan.push(Step::new(
                    Phase::Reset,
                    "a unit bootstrap installed",
                    Action::Service {
                        unit: name.clone(),
                        action,
                    },
                ));
            }
        }
    }
    let mut created_dirs = Vec::new();
    for item in &undo {
        match item {
            Undo::File { path, dirs_from } | Undo::Dir { path, dirs_from } => {
                if keep.iter().any(|k| path.starts_with(k)) {
                    continue;
                }
                plan.push(Step::new(
                    Phase::Reset,
                    "bootstrap created it",
                    Action::Remove { path: path.clone() },
                ));
                if let Some(top) = dirs_from {
                    created_dirs.push((path.clone(), top.clone()));
                }
            }
            Undo::HostsEntry => plan.push(Step::new(
                Phase::Reset,
                "bootstrap's line",
                Action::RemoveHostsEntry {
                    names: vec![config.registry.domain.clone()],
                },
            )),
            Undo::Unit { .. } => {}
        }
    }
    for path in state_paths(&host, keep)? {
        plan.push(Step::new(
            Phase::Reset,
            "bootstrap's own state",
            Action::Remove { path },
        ));
    }
    if args.purge {
        for path in image {
            plan.push(Step::new(
                Phase::Reset,
                "--purge: the cluster image too",
                Action::Remove { path },
            ));
        }
    }
    plan.push(Step::new(
        Phase::Reset,
        "the success sentinel for Cluster API",
        Action::Remove {
            path: PathBuf::from(state::CAPI_SENTINEL),
        },
    ));
    let report = apply_unjournaled(&host, &crate::node_plan::NodePayloads, &plan)?;
    // Folders bootstrap created along with its files go too, when nothing else is in them.
    for (path, top) in created_dirs {
        let mut dir = path.parent();
        while let Some(d) = dir {
            if !d.starts_with(&top) || !host.remove_dir_if_empty(d)? {
                break;
            }
            dir = d.parent();
        }
    }
    for kind in &distros {
        for dir in crate::distro::driver(*kind).parent_dirs() {
            host.remove_dir_if_empty(Path::new(dir))?;
        }
    }
    if !report.applied.is_empty() {
        let _ = host.run(&crate::plan::check::systemctl(&["daemon-reload"]));
    }
    // Only now that everything it lists is gone (folders too; a reset killed before
    // this, found by the crash test, left the folders it created with no journal to
    // name them).
    crate::fault::point(|| "reset:remove-journal".to_owned());
    host.remove_file(Path::new(state::JOURNAL_FILE))?;
    // Nothing of bootstrap's may stay behind, not even its lock (held until we return).
    host.remove_file(Path::new(state::LOCK_FILE))?;
    let _ = host.remove_dir_if_empty(Path::new(state::STATE_DIR));
    log::info!(
        "reset: {} changes, {} already gone{}",
        report.applied.len(),
        report.in_place.len(),
        if args.purge {
            String::new()
        } else {
            format!(
                "; the cluster image at {} is kept (--purge removes it)",
                config.rootfs.dir.display()
            )
        }
    );
    Ok(())
}

/// The distro on this node: from the cluster image, else from the done marker, else
/// (nothing known) all three, whose teardowns skip what is not there.
fn installed_distros(host: &dyn Host, rootfs: &Path) -> Vec<DistroKind> {
    let arch = std::env::consts::ARCH;
    if let Ok(image) = ClusterImage::open(host, rootfs, arch) {
        return vec![image.distro];
    }
    if let Some(done) = state::read_json::<DoneMarker>(host, state::DONE_FILE) {
        let kind = match done.distro.as_str() {
            "k3s" => Some(DistroKind::K3s),
            "k0s" => Some(DistroKind::K0s),
            "kubeadm" => Some(DistroKind::Kubeadm),
            _ => None,
        };
        if let Some(kind) = kind {
            return vec![kind];
        }
    }
    if role::load(host).ok().flatten().is_some() {
        log::warn!("the cluster image is gone and the distro is not recorded; tearing down whichever is there");
    }
    vec![DistroKind::K3s, DistroKind::K0s, DistroKind::Kubeadm]
}

/// The cluster image: the rootfs folder and its versions.
fn image_paths(rootfs: &Path) -> Vec<PathBuf> {
    vec![
        rootfs.to_path_buf(),
        crate::rootfs::unpack::versions_dir(rootfs),
    ]
}

/// Everything in the state folder but the lock and the kept cluster image.
fn state_paths(host: &dyn Host, keep: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let dir = Path::new(state::STATE_DIR);
    let mut out = Vec::new();
    let lock_name = Path::new(state::LOCK_FILE)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    for name in host.list_dir(dir)?.unwrap_or_default() {
        if Some(&name) == lock_name.as_ref() {
            continue;
        }
        let path = dir.join(&name);
        if keep.iter().any(|k| k == &path || k.starts_with(&path)) {
            continue;
        }
        out.push(path);
    }
    // The journal is removed by `run` itself, after the folders it names: a reset cut
    // short can be run again and still knows what to undo.
    out.retain(|p| p.as_path() != Path::new(state::JOURNAL_FILE));
    Ok(out)
}
