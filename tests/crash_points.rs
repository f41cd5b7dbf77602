//! Crash anywhere, re-run anything: every fault point of every scenario (first controller
//! of each distro, image baking then first boot, joins, reset, upgrade) is killed in turn,
//! the command is run again, and the end state must equal an uninterrupted run's; a second
//! run after success must change nothing. Needs `--features fault-injection`
//! (scripts/test.sh runs it so); see docs/reliability.md.

#[path = "seed_support/archives.rs"]
mod archives;
mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use common::crash::{self, Prepared, Scenario, Step};
use common::Node;

struct Distro {
    runtime: &'static str,
    version: &'static str,
    next: &'static str,
}

const K3S: Distro = Distro {
    runtime: "k3s",
    version: "v1.31.4+k3s1",
    next: "v1.32.0+k3s1",
};
const K0S: Distro = Distro {
    runtime: "k0s",
    version: "v1.31.4+k0s.0",
    next: "v1.32.0+k0s.0",
};
const KUBEADM: Distro = Distro {
    runtime: "kubernetes",
    version: "v1.31.4",
    next: "v1.32.0",
};

const SECRET: &str =
    "bjs1-3e3a98ae115f23ff69f7489d6e796877ec10c6c08288948221fdf8d2c5a7f8a7-6e4eed29";
const FIRST: &str = "127.0.10.10";

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// A node of `distro` called `name` at `address`, its stand-in cluster at `cluster` (by
/// default inside its own root).
fn node(
    distro: &Distro,
    name: &str,
    address: &str,
    role: &str,
    controllers: &str,
    cluster: Option<&Path>,
) -> Prepared {
    node_with(distro, name, address, role, controllers, cluster, "")
}

/// [`node`] with more configuration.
fn node_with(
    distro: &Distro,
    name: &str,
    address: &str,
    role: &str,
    controllers: &str,
    cluster: Option<&Path>,
    more_config: &str,
) -> Prepared {
    let mut node = Node::new();
    if let Some(c) = cluster {
        node = node.env("STANDIN_CLUSTER", &c.display().to_string());
    }
    // The default image is k3s; another distro's binaries replace it.
    let _ = std::fs::remove_dir_all(node.path("/var/lib/bootstrap/rootfs"));
    node.image(distro.runtime, distro.version);
    node.write("/proc/sys/kernel/hostname", &format!("{name}\n"));
    node.config(&format!(
        "role: {role}\nnode:\n  name: {name}\n  address: {address}\npreflight:\n  ignore: [address]\ncluster:\n  name: crash\n  controllers: [{controllers}]\n  join_secret: {SECRET}\n  pod_cidr: 10.244.0.0/16\n  init_wait: 1s\n{more_config}"
    ));
    let mut keep: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
    if distro.runtime == "kubernetes" {
        // kubeadm runs on the host containerd: its socket must answer.
        let path = node.path("/run/containerd/containerd.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        keep.push(Box::new(
            UnixListener::bind(&path).expect("bind the containerd socket"),
        ));
    }
    let cluster = cluster
        .map(Path::to_path_buf)
        .unwrap_or_else(|| node.standin_cluster());
    Prepared {
        node,
        cluster: Some(cluster),
        keep,
    }
}

fn first_controller(distro: &'static Distro) -> Scenario {
    Scenario {
        name: format!("{} first controller", distro.runtime),
        prepare: Box::new(|| node(distro, "node-a", FIRST, "auto", FIRST, None)),
        steps: vec![Step {
            args: args("up"),
            faults: true,
        }],
        again: args("up"),
        serial: false,
    }
}

/// The cluster image as an archive at `/opt/image.tar` instead of a folder, so the run
/// unpacks it (and crashes mid-unpack).
fn as_archive(prepared: &Prepared) {
    let node = &prepared.node;
    std::fs::create_dir_all(node.path("/opt")).unwrap();
    let status = std::process::Command::new("tar")
        // The same bytes in every run (the digest names the unpacked folder).
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
        ])
        .arg("-C")
        .arg(node.path("/var/lib/bootstrap/rootfs"))
        .arg("-cf")
        .arg(node.path("/opt/image.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(node.path("/var/lib/bootstrap/rootfs")).unwrap();
}

/// `up --stage install` from an archive (as an image bake does), then the first boot.
fn install_then_boot(distro: &'static Distro) -> Scenario {
    Scenario {
        name: format!("{} up --stage install, then first boot", distro.runtime),
        prepare: Box::new(|| {
            let prepared = node_with(
                distro,
                "node-a",
                FIRST,
                "auto",
                FIRST,
                None,
                "rootfs:\n  archive: /opt/image.tar\n",
            );
            as_archive(&prepared);
            prepared
        }),
        steps: vec![
            Step {
                args: args("up --stage install"),
                faults: true,
            },
            Step {
                args: args("up"),
                faults: true,
            },
        ],
        again: args("up"),
        serial: false,
    }
}

/// A first controller that is up, then `reset`.
fn reset(distro: &'static Distro) -> Scenario {
    Scenario {
        name: format!("{} reset", distro.runtime),
        prepare: Box::new(|| node(distro, "node-a", FIRST, "auto", FIRST, None)),
        steps: vec![
            Step {
                args: args("up"),
                faults: false,
            },
            Step {
                args: args("reset"),
                faults: true,
            },
        ],
        again: args("reset"),
        serial: false,
    }
}

/// Where the seeding scenario's registry listens: a fixed address its files name, used by
/// no other scenario (it runs one point at a time, see [`Scenario::serial`]).
const SEEDING: &str = "127.0.10.50";

/// A first controller with the local registry on and a cluster image holding images: its
/// `up` writes them into the registry's storage (`seed:` points between the blobs, links
/// and tags moved into place). The registry is a stand-in that answers the readiness
/// probe with the node's certificate (tests/standins/registry-standin).
fn seeding_controller(distro: &'static Distro) -> Scenario {
    Scenario {
        name: format!("{} first controller seeding the registry", distro.runtime),
        prepare: Box::new(|| {
            let Prepared {
                node,
                cluster,
                keep,
            } = node(distro, "node-a", SEEDING, "auto", SEEDING, None);
            let node = node.with_registry();
            let standin = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standins/registry-standin"),
            )
            .unwrap();
            node.write_mode("/var/lib/bootstrap/rootfs/bin/registry", &standin, 0o755);
            // Two images sharing a layer, in one docker-save archive: blobs, layer links,
            // revisions and tags to move, one blob only once.
            let shared = archives::random_layer(1, 4096);
            let app = archives::TestImage::with_layers(
                2,
                vec![shared.clone(), archives::random_layer(3, 2048)],
            );
            let tool = archives::TestImage::with_layers(4, vec![shared]);
            let archive = archives::tar(&archives::docker_save(&[
                (&app, &["crash.local/app:1.0"]),
                (&tool, &["crash.local/tool:2.1", "crash.local/tool:latest"]),
            ]));
            let path = node.path("/var/lib/bootstrap/rootfs/images/apps.tar");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, archive).unwrap();
            // The seed step is keyed on the archives' names, sizes and mtimes: every
            // run's copy is the same archive, so it gets the same mtime.
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
                .unwrap();
            Prepared {
                node,
                cluster,
                keep,
            }
        }),
        steps: vec![Step {
            args: args("up"),
            faults: true,
        }],
        again: args("up"),
        serial: true,
    }
}

/// A first controller that is up, then `upgrade` to the next minor.
fn upgrade(distro: &'static Distro) -> Scenario {
    Scenario {
        name: format!("{} upgrade", distro.runtime),
        prepare: Box::new(|| {
            // One node: a cluster of several would first wait for its upgrade turn from a
            // join service (tests/fleet_upgrade.rs covers that).
            let prepared = node(distro, "node-a", FIRST, "auto", "", None);
            prepared
                .node
                .image_in(distro.runtime, distro.next, "/opt/images/next");
            prepared
        }),
        steps: vec![
            Step {
                args: args("up"),
                faults: false,
            },
            Step {
                args: args("upgrade --rootfs /opt/images/next"),
                faults: true,
            },
        ],
        again: args("up"),
        serial: false,
    }
}

/// A controller that is up, and join material it minted for a worker and a controller.
struct Controller {
    cluster: tempfile::TempDir,
    _node: Prepared,
    worker: String,
    controller: String,
}

const BOTH: &str = "127.0.10.10, 127.0.10.11";

fn controller(distro: &'static Distro) -> Controller {
    let cluster = tempfile::tempdir().unwrap();
    let a = node(distro, "node-a", FIRST, "auto", BOTH, Some(cluster.path()));
    a.node.run(&["up"]).assert_code(0);
    let mint = |role: &str| {
        let run = a.node.run(&["token", "create", role, "--material"]);
        run.assert_code(0);
        run.stdout
    };
    Controller {
        worker: mint("worker"),
        controller: mint("controller"),
        cluster,
        _node: a,
    }
}

/// A node joining `a`'s cluster (a copy of it per run) with material handed to it.
fn join(distro: &'static Distro, a: Arc<Controller>, worker: bool) -> Scenario {
    let kind = if worker { "worker" } else { "controller" };
    Scenario {
        name: format!("{} {kind} join", distro.runtime),
        prepare: Box::new(move || {
            let copy = tempfile::tempdir().unwrap();
            common::copy_tree(a.cluster.path(), copy.path());
            let (name, address, role, material) = if worker {
                ("node-w", "127.0.10.20", "worker", &a.worker)
            } else {
                ("node-b", "127.0.10.11", "auto", &a.controller)
            };
            let mut prepared = node(distro, name, address, role, BOTH, Some(copy.path()));
            prepared
                .node
                .write_mode("/var/lib/bootstrap/join/material.json", material, 0o600);
            prepared.keep.push(Box::new(copy));
            prepared
        }),
        steps: vec![Step {
            args: args("up"),
            faults: true,
        }],
        again: args("up"),
        serial: false,
    }
}

fn run_all(scenarios: Vec<Scenario>) {
    let mut total = 0;
    for scenario in &scenarios {
        total += crash::check(scenario);
    }
    eprintln!(
        "crash points: {} scenarios, {total} points, all converged",
        scenarios.len()
    );
}

#[test]
fn k3s_first_controller_converges_from_every_point() {
    run_all(vec![first_controller(&K3S)]);
}

#[test]
fn k0s_first_controller_converges_from_every_point() {
    run_all(vec![first_controller(&K0S)]);
}

#[test]
fn kubeadm_first_controller_converges_from_every_point() {
    run_all(vec![first_controller(&KUBEADM)]);
}

#[test]
fn k3s_seeding_the_registry_converges_from_every_point() {
    run_all(vec![seeding_controller(&K3S)]);
}

#[test]
fn k3s_install_then_first_boot_converges_from_every_point() {
    run_all(vec![install_then_boot(&K3S)]);
}

#[test]
fn k3s_joins_converge_from_every_point() {
    let a = Arc::new(controller(&K3S));
    run_all(vec![join(&K3S, a.clone(), true), join(&K3S, a, false)]);
}

#[test]
fn k0s_joins_converge_from_every_point() {
    let a = Arc::new(controller(&K0S));
    run_all(vec![join(&K0S, a.clone(), true), join(&K0S, a, false)]);
}

#[test]
fn kubeadm_joins_converge_from_every_point() {
    let a = Arc::new(controller(&KUBEADM));
    run_all(vec![
        join(&KUBEADM, a.clone(), true),
        join(&KUBEADM, a, false),
    ]);
}

#[test]
fn reset_converges_from_every_point() {
    run_all(vec![reset(&K3S), reset(&K0S), reset(&KUBEADM)]);
}

#[test]
fn upgrade_converges_from_every_point() {
    run_all(vec![upgrade(&K3S), upgrade(&K0S), upgrade(&KUBEADM)]);
}
