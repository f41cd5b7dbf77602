//! `bootstrap upgrade --rootfs DIR|ARCHIVE`: version skew checked first, the new cluster
//! image put in place (the previous one kept for rollback), the distro's upgrade steps,
//! then `up`'s plan against the new image.

use std::path::Path;

use super::{Error, Session};
use crate::cli::{Cli, UpgradeArgs};
use crate::distro::skew::{self, UpgradeKind};
use crate::host::Host;
use crate::plan::{apply, journal::Journal};
use crate::rootfs::{unpack, ClusterImage};
use crate::state::{self, DoneMarker};
use crate::{lock, role};

pub(super) fn run(cli: &Cli, args: &UpgradeArgs) -> Result<(), Error> {
    let session = Session::open(cli)?;
    let host = &session.host;
    let decision = role::load(host)?.ok_or_else(|| {
        Error::Failed(
            "this node has not been set up (no role recorded); run `bootstrap up` first".into(),
        )
    })?;
    let done: DoneMarker = state::read_json(host, state::DONE_FILE).ok_or_else(|| {
        Error::Failed(format!(
            "{} is missing: `bootstrap up` has not finished on this node; finish it before upgrading",
            state::DONE_FILE
        ))
    })?;
    let _lock = lock::acquire(
        &super::real_path(host, state::LOCK_FILE),
        session.config.lock_wait,
        &format!("pid {} (bootstrap upgrade)", std::process::id()),
    )?;
    super::stop::catch_stop_signals()?;

    let arch = session.facts.arch.clone();
    let url = crate::rootfs::remote::url_of(&args.image);
    let source = match url {
        Some(_) => std::path::PathBuf::new(),
        None => host.real_path(&args.image)?,
    };
    // A URL is downloaded and unpacked beside the current image (not switched to)
    // before the checks: it cannot be looked into without reading all of it.
    let mut fetched = None;
    let (target, is_archive) = if let Some(url) = url {
        let remote = super::remote(host, &session.config, url)?;
        let (sha256, source) = remote.digest(args.sha256.as_deref())?;
        let options = unpack::UnpackOptions {
            sha256: Some(sha256),
            sha256_source: Some(if args.sha256.is_some() {
                "--sha256".to_owned()
            } else {
                source
            }),
            host_arch: arch.clone(),
            no_switch: true,
            ..unpack::UnpackOptions::default()
        };
        let dest = host.real_path(&session.config.rootfs.dir)?;
        let report = remote.unpack(&dest, &options)?;
        let image = unpack::open_unpacked(&report.version_dir, &arch)?;
        fetched = Some(Fetched {
            version_dir: report.version_dir,
            new: !report.reused,
        });
        (image, false)
    } else if source.is_dir() {
        (ClusterImage::open(host, &args.image, &arch)?, false)
    } else if source.is_file() {
        let (listing, _) = crate::rootfs::inspect::list_archive(&source)?;
        (ClusterImage::read(&listing, &arch)?, true)
    } else {
        return Err(Error::Usage(format!(
            "--rootfs {}: neither a cluster-image folder nor an archive",
            args.image.display()
        )));
    };

    let driver = crate::distro::driver(session.image.distro);
    let refuse = |e: crate::distro::skew::SkewError| {
        // A refused download is not kept.
        if let Some(f) = fetched.as_ref().filter(|f| f.new) {
            let _ = std::fs::remove_dir_all(&f.version_dir);
        }
        Error::Failed(format!("upgrade refused: {e}"))
    };
    // The rules about this node alone first: a refused upgrade waits for nothing.
    let kind = skew::check_upgrade(
        session.image.distro,
        &done.distro_version,
        target.distro,
        &target.metadata.version,
        None,
    )
    .map_err(refuse)?;
    let turn = if kind == UpgradeKind::Same {
        None
    } else {
        super::upgrade_turn::wait(&session, &decision, &target.metadata.version)?
    };
    if !decision.role.is_controller() && kind != UpgradeKind::Same {
        // Its turn came once every controller reported the new version; the API server
        // has the last word.
        let controller_versions =
            control_plane_versions(host, driver, driver.node_kubeconfig(decision.role))?;
        skew::check_upgrade(
            session.image.distro,
            &done.distro_version,
            target.distro,
            &target.metadata.version,
            Some(&controller_versions),
        )
        .map_err(refuse)?;
    }
    if kind == UpgradeKind::Same {
        log::info!(
            "this node already runs {} {}; nothing to upgrade",
            target.distro,
            target.metadata.version
        );
        return Ok(());
    }
    log::info!(
        "upgrading {} from {} to {} ({})",
        target.distro,
        done.distro_version,
        target.metadata.version,
        if kind == UpgradeKind::Minor {
            "next minor"
        } else {
            "patch"
        }
    );

    let dest = host.real_path(&session.config.rootfs.dir)?;
    let previous = std::fs::canonicalize(&dest).ok();
    if let Some(f) = &fetched {
        unpack::switch_link(&dest, &f.version_dir, &arch)?;
    } else if is_archive {
        let digest = unpack::expected_digest(&source, args.sha256.as_deref())?;
        let options = unpack::UnpackOptions {
            sha256: digest.as_ref().map(|d| d.0.clone()),
            sha256_source: digest.map(|d| d.1),
            max_size: None,
            host_arch: arch.clone(),
            bundle: false,
            no_switch: false,
        };
        unpack::unpack(&source, &dest, &options)?;
    } else {
        unpack::switch_link(&dest, &source, &arch)?;
    }
    if let Some(previous) = previous {
        log::info!(
            "the previous cluster image is kept at {} (for a rollback)",
            previous.display()
        );
    }

    let mut upgraded = Session::open(cli)?;
    upgraded.upgrading = true;
    let material = upgraded.join_material(&decision)?;
    let ctx = upgraded.distro_context(&decision, material.as_ref());
    let leads = super::upgrade_turn::leads(&upgraded, &decision, &target.metadata.version)?;
    let plan = crate::node_plan::upgrade_plan(
        driver.upgrade_steps(&ctx, leads)?,
        upgraded.plan(&decision)?,
    );
    let mut journal = Journal::load(host)?;
    let report = match apply(host, &crate::node_plan::NodePayloads, &plan, &mut journal) {
        Ok(report) => report,
        Err(e) => {
            let error = Error::from(e);
            // Stopped by a signal, the node is between images: say so where `status`
            // and `status --wait` look.
            if error.stopped_by().is_some() {
                super::stop::record_failure(host, &error);
            }
            return Err(error);
        }
    };
    state::write_json(
        host,
        state::DONE_FILE,
        &DoneMarker {
            at: state::now_rfc3339(),
            distro_version: target.metadata.version.clone(),
            steps: plan.len(),
            ..done
        },
    )?;
    host.remove_file(Path::new(state::FAILED_FILE))?;
    log::info!(
        "node {} now runs {} {}: {} steps applied",
        upgraded.node_name(),
        target.distro,
        target.metadata.version,
        report.applied.len()
    );
    refresh_material(host, &target.metadata.version)?;
    if let Some(turn) = turn {
        let kubeconfig = decision
            .role
            .is_controller()
            .then(|| driver.admin_kubeconfig());
        turn.finish(&upgraded, kubeconfig, &target.metadata.version);
    }
    Ok(())
}

/// A cluster image downloaded from a URL into the versions folder.
struct Fetched {
    version_dir: std::path::PathBuf,
    /// Published by this run (not found already unpacked).
    new: bool,
}

/// The control plane's version, as the API server reports it through `kubeconfig`.
fn control_plane_versions(
    host: &dyn Host,
    driver: &dyn crate::distro::Distro,
    kubeconfig: &str,
) -> Result<Vec<String>, Error> {
    crate::distro::NodeOps::new(host, driver, kubeconfig)
        .server_version()
        .map(|v| vec![v])
        .map_err(|e| {
            Error::Failed(format!(
                "upgrade refused: cannot learn the control plane's version to check that this worker stays behind it: {e}"
            ))
        })
}

/// The join material names the cluster's version when this node joined: once the node has
/// upgraded, it names the version the node moved to with the cluster, so what is kept
/// stays true (the skew rules themselves ask the API server).
fn refresh_material(host: &dyn Host, version: &str) -> Result<(), Error> {
    let Some(mut material) =
        crate::distro::JoinMaterial::load(host).map_err(crate::distro::DistroError::from)?
    else {
        return Ok(());
    };
    if material.version == version {
        return Ok(());
    }
    material.version = version.to_owned();
    host.write_atomic(
        Path::new(crate::distro::MATERIAL_FILE),
        material.to_file_text().as_bytes(),
        0o600,
        None,
    )?;
    Ok(())
}
