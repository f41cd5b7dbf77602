//! What the cluster image's `Kubefile` launches once the cluster is up — its `CMD` and
//! `CMDS` lines and the applications `LAUNCH` names — run once, on the initialising
//! controller, from the image folder, with `KUBECONFIG` set, each a journaled step.

use std::path::Path;
use std::time::Duration;

use super::{NodePlanError, NodeView};
use crate::distro::DistroError;
use crate::host::CommandSpec;
use crate::plan::{Action, Phase, Step};
use crate::rootfs::kubefile::Launch;
use crate::rootfs::tree::HostTree;

/// Bound on one launch command (applying a CNI's manifests, say).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The launch steps, in Kubefile order; none on other nodes.
pub(super) fn steps(view: &NodeView<'_>) -> Result<Vec<Step>, NodePlanError> {
    let image = view.image;
    let Some(kubefile) = &image.kubefile else {
        return Ok(Vec::new());
    };
    if view.role != crate::role::Role::InitController || kubefile.launch.is_empty() {
        return Ok(Vec::new());
    }
    let admin = crate::distro::driver(image.distro)
        .layout()
        .admin_kubeconfig;
    // The environment is not mapped under --root: give the kubeconfig's real path.
    let kubeconfig = view.host.real_path(Path::new(admin))?;
    let kubefile_path = image
        .kubefile_path
        .as_ref()
        .map(|p| image.dir.join(p).display().to_string())
        .unwrap_or_default();
    let tree = HostTree {
        host: view.host,
        dir: &image.dir,
    };
    let mut out = Vec::new();
    for launch in &kubefile.launch {
        let line = launch.line_number();
        let reason = format!(
            "{kubefile_path} line {line}: the image's launch command, run once the cluster is up"
        );
        for command in commands(view, &tree, launch)? {
            let command = CommandSpec {
                env: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
                ..command.timeout(LAUNCH_TIMEOUT)
            };
            let step = Step::new(
                Phase::PostInstall,
                reason.clone(),
                Action::RunCommand {
                    command: command.clone(),
                    done_when: None,
                },
            );
            // Once: a re-run finds it journaled, unless the image's command changed.
            let key = serde_json::to_vec(&command).unwrap_or_default();
            out.push(step.keyed(&[&key]));
        }
    }
    Ok(out)
}

/// The commands one launch runs.
fn commands(
    view: &NodeView<'_>,
    tree: &HostTree<'_>,
    launch: &Launch,
) -> Result<Vec<CommandSpec>, NodePlanError> {
    let image = view.image;
    let dir = image.dir.clone();
    Ok(match launch {
        // sealer defines CMD as a shell line, so a shell runs it: the line is one argv
        // element, exactly as the Kubefile has it, with nothing put into it.
        Launch::Shell { line, .. } => vec![shell(line).cwd(dir)],
        Launch::Exec { argv, .. } => {
            let (program, args) = argv
                .split_first()
                .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
            vec![CommandSpec::new(program)
                .args(args.iter().cloned())
                .cwd(dir)]
        }
        Launch::App {
            name, files, cmds, ..
        } => {
            let mut app_dir = dir.clone();
            let mut found = Vec::new();
            for file in files {
                let rel = image.app_file(tree, name, file)?.ok_or_else(|| {
                    missing(
                        view,
                        launch,
                        format!("app {name}: {file}"),
                        "it is in the image neither at application/apps/<name>/ nor at that path",
                    )
                })?;
                app_dir = image.dir.join(rel.parent().unwrap_or(Path::new("")));
                found.push(image.dir.join(rel));
            }
            if !cmds.is_empty() {
                cmds.iter().map(|c| shell(c).cwd(app_dir.clone())).collect()
            } else {
                let mut out = Vec::new();
                for path in found {
                    out.push(app_command(view, launch, name, &path)?.cwd(app_dir.clone()));
                }
                out
            }
        }
    })
}

fn shell(line: &str) -> CommandSpec {
    CommandSpec::new("sh").args(["-c", line])
}

/// How sealer launches an application file: a script is run, manifests are applied.
fn app_command(
    view: &NodeView<'_>,
    launch: &Launch,
    name: &str,
    path: &Path,
) -> Result<CommandSpec, NodePlanError> {
    let file = path.display().to_string();
    let is_dir = view
        .host
        .stat(path)?
        .is_some_and(|m| m.kind == crate::host::FileKind::Dir);
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    match ext.as_deref() {
        _ if is_dir => Err(missing(
            view,
            launch,
            format!("app {name}: {file}"),
            "a folder (a Helm chart?); bootstrap launches scripts (.sh) and manifests (.yaml, .yml, .json) only",
        )),
        Some("sh") => Ok(CommandSpec::new("bash").arg(path)),
        Some("yaml" | "yml" | "json") => Ok(CommandSpec::new("kubectl")
            .args(["apply", "-f"])
            .arg(path)),
        _ => Err(missing(
            view,
            launch,
            format!("app {name}: {file}"),
            "bootstrap launches scripts (.sh) and manifests (.yaml, .yml, .json) only",
        )),
    }
}

fn missing(view: &NodeView<'_>, launch: &Launch, what: String, why: &str) -> NodePlanError {
    DistroError::MissingInImage {
        image: view.image.dir.display().to_string(),
        what: format!("Kubefile line {}: {what}", launch.line_number()),
        why: why.to_owned(),
    }
    .into()
}
