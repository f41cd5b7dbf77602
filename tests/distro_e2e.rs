//! `up`, `token create`, `leave`, `reset` and `upgrade` end to end for k3s, k0s and
//! kubeadm, each node a temp root, against the strict stand-ins (tests/standins/
//! kube-standin) which share one cluster state between the nodes of a test.

mod common;

use std::collections::BTreeSet;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Node;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

struct Case {
    runtime: &'static str,
    version: &'static str,
    next: &'static str,
    skips_one: &'static str,
    older: &'static str,
}

const K3S: Case = Case {
    runtime: "k3s",
    version: "v1.31.4+k3s1",
    next: "v1.32.0+k3s1",
    skips_one: "v1.33.0+k3s1",
    older: "v1.30.2+k3s1",
};
const K0S: Case = Case {
    runtime: "k0s",
    version: "v1.31.4+k0s.0",
    next: "v1.32.0+k0s.0",
    skips_one: "v1.33.0+k0s.0",
    older: "v1.30.2+k0s.0",
};
const KUBEADM: Case = Case {
    runtime: "kubernetes",
    version: "v1.31.4",
    next: "v1.32.0",
    skips_one: "v1.33.0",
    older: "v1.30.2",
};

const SECRET: &str =
    "bjs1-3e3a98ae115f23ff69f7489d6e796877ec10c6c08288948221fdf8d2c5a7f8a7-6e4eed29";

/// One node of a test cluster, with what keeps its fake containerd socket open.
struct ClusterNode {
    node: Node,
    _socket: Option<UnixListener>,
}

impl std::ops::Deref for ClusterNode {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

/// A node of `case`'s distro at `address`; `controllers` empty for a one-node cluster.
fn node(
    case: &Case,
    cluster: &Path,
    name: &str,
    address: &str,
    controllers: &[&str],
    role: &str,
) -> ClusterNode {
    let node = Node::new().env("STANDIN_CLUSTER", &cluster.display().to_string());
    node.image(case.runtime, case.version);
    // k0s names nodes by hostname; the others take node.name.
    node.write("/proc/sys/kernel/hostname", &format!("{name}\n"));
    // The addresses are the test's, not this machine's.
    let mut config = format!(
        "role: {role}\nnode:\n  name: {name}\n  address: {address}\npreflight:\n  ignore: [address]\n"
    );
    if !controllers.is_empty() {
        config.push_str(&format!(
            // The first controller comes up alone here: no other controller to wait for.
            "cluster:\n  name: e2e\n  controllers: [{}]\n  join_secret: {SECRET}\n  pod_cidr: 10.244.0.0/16\n  init_wait: 1s\n",
            controllers.join(", ")
        ));
    }
    node.config(&config);
    // kubeadm runs on the host containerd; its socket must answer (the stand-in systemctl
    // does not run containerd itself here).
    let socket = (case.runtime == "kubernetes").then(|| {
        let path = node.path("/run/containerd/containerd.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        UnixListener::bind(&path).expect("bind the containerd socket")
    });
    ClusterNode {
        node,
        _socket: socket,
    }
}

fn cluster_state(cluster: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(cluster.join("cluster.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

fn node_names(cluster: &Path) -> BTreeSet<String> {
    cluster_state(cluster)["nodes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Kubernetes nodes and etcd members: a k0s controller without workloads is only the
/// latter.
fn members(cluster: &Path) -> BTreeSet<String> {
    let state = cluster_state(cluster);
    let mut names = node_names(cluster);
    if let Some(etcd) = state["etcd"].as_object() {
        names.extend(etcd.keys().cloned());
    }
    names
}

/// Mints material on `controller` and puts it on `joiner` (0600), as an operator would.
fn hand_material(controller: &Node, joiner: &Node, role: &str) {
    let run = controller.run(&["token", "create", role, "--material"]);
    run.assert_code(0);
    assert!(run.stdout.contains("\"token\""), "{}", run.all());
    // The secret went to stdout only, never to the log.
    let material: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let token = material["token"].as_str().unwrap();
    assert!(
        !run.stderr.contains(token),
        "token in the log: {}",
        run.stderr
    );
    joiner.write_mode("/var/lib/bootstrap/join/material.json", &run.stdout, 0o600);
}

fn single_node_up_reset(case: &Case) {
    let cluster = tempfile::tempdir().unwrap();
    let a = node(case, cluster.path(), "node-a", "127.0.10.10", &[], "auto");
    let before = a.installed_files();
    let run = a.run(&["up"]);
    run.assert_code(0);
    assert!(
        node_names(cluster.path()).contains("node-a"),
        "{}",
        run.all()
    );
    assert!(
        std::fs::symlink_metadata(a.path("/root/.kube/config")).is_ok(),
        "no operator kubeconfig"
    );
    // Secrets only in 0600 files and never on any command line.
    for call in a.calls() {
        assert!(!call.contains(SECRET), "secret on argv: {call}");
    }

    // A second `up` changes nothing: no install, init, join or restart.
    let calls_before = a.calls().len();
    a.run(&["up"]).assert_code(0);
    let mutating: Vec<String> = a.calls()[calls_before..]
        .iter()
        .filter(|c| {
            !(c.contains(" is-") || c.contains("get --raw") || c.contains("status -o json"))
        })
        .cloned()
        .collect();
    assert!(mutating.is_empty(), "second up ran: {mutating:?}");

    // reset: the distro's teardown, then everything bootstrap wrote.
    let run = a.run(&["reset"]);
    run.assert_code(0);
    let after = a.installed_files();
    let left: Vec<&PathBuf> = after.difference(&before).collect();
    assert!(
        left.is_empty(),
        "reset left behind: {left:#?}\n{}",
        run.all()
    );
    assert!(
        a.exists("/var/lib/bootstrap/rootfs/Metadata"),
        "the image was kept"
    );
    // Twice is fine.
    a.run(&["reset"]).assert_code(0);
    // --purge takes the image too.
    a.run(&["reset", "--purge"]).assert_code(0);
    assert!(
        !a.exists("/var/lib/bootstrap/rootfs"),
        "--purge kept the image"
    );
}

#[test]
fn k3s_single_node_up_then_reset_leaves_nothing() {
    single_node_up_reset(&K3S);
}

#[test]
fn k0s_single_node_up_then_reset_leaves_nothing() {
    single_node_up_reset(&K0S);
}

#[test]
fn kubeadm_single_node_up_then_reset_leaves_nothing() {
    single_node_up_reset(&KUBEADM);
}

/// First controller, an extra controller and a worker; then the worker and the extra
/// controller leave, and the last controller refuses to.
fn three_nodes_join_and_leave(case: &Case) {
    let cluster = tempfile::tempdir().unwrap();
    let controllers = ["127.0.10.10", "127.0.10.11"];
    let a = node(
        case,
        cluster.path(),
        "node-a",
        "127.0.10.10",
        &controllers,
        "auto",
    );
    let b = node(
        case,
        cluster.path(),
        "node-b",
        "127.0.10.11",
        &controllers,
        "auto",
    );
    let w = node(
        case,
        cluster.path(),
        "node-w",
        "127.0.10.20",
        &controllers,
        "worker",
    );
    a.run(&["up"]).assert_code(0);

    // A joiner whose controllers' join service does not answer gives up at join.timeout
    // with exit 4 and the cause (here: nothing listens on loopback port 9).
    let run = w.run_with_env(
        &["up"],
        &[
            ("BOOTSTRAP_CLUSTER__CONTROLLERS", "[127.0.0.2]"),
            ("BOOTSTRAP_JOIN__PORT", "9"),
            ("BOOTSTRAP_JOIN__TIMEOUT", "2s"),
        ],
    );
    run.assert_code(4);
    assert!(run.stderr.contains("unreachable"), "{}", run.all());
    assert!(!w.exists("/var/lib/bootstrap/join-started"));

    hand_material(&a, &w, "worker");
    let run = w.run(&["up"]);
    run.assert_code(0);
    hand_material(&a, &b, "controller");
    let run = b.run(&["up"]);
    run.assert_code(0);
    // Handed material admitted no one: there is no lease to give back, so no join
    // service is asked (none runs here) and no 30 s of retries are spent on it.
    assert!(
        !run.stderr.contains("join lease"),
        "a controller with handed material tried to release a lease: {}",
        run.all()
    );
    assert!(node_names(cluster.path()).contains("node-w"));
    let names = members(cluster.path());
    assert!(
        ["node-a", "node-b", "node-w"]
            .iter()
            .all(|n| names.contains(*n)),
        "{names:?}"
    );
    for joiner in [&w, &b] {
        assert!(joiner.exists("/var/lib/bootstrap/join-started"));
        for call in joiner.calls() {
            assert!(
                !call.contains("K10") && !call.contains("server:"),
                "token on argv: {call}"
            );
        }
    }

    // The worker leaves with the operator's credentials (--kubeconfig; without it, it
    // asks a join service, see tests/bare_metal.rs): drained, deleted, reset.
    let admin = match case.runtime {
        "k3s" => "/etc/rancher/k3s/k3s.yaml",
        "k0s" => "/var/lib/k0s/pki/admin.conf",
        _ => "/etc/kubernetes/admin.conf",
    };
    w.write_mode("/root/admin.conf", &a.read(admin).unwrap(), 0o600);
    leave_stopped_mid_drain(&w, cluster.path());
    let run = w.run(&["leave", "--kubeconfig", "/root/admin.conf"]);
    run.assert_code(0);
    assert!(
        !node_names(cluster.path()).contains("node-w"),
        "{}",
        run.all()
    );
    assert!(
        w.calls().iter().any(|c| c.contains("drain node-w")),
        "{:?}",
        w.calls()
    );
    assert!(!w.exists("/var/lib/bootstrap/journal.json"));

    // The extra controller leaves; then the first is the last one and must refuse.
    let run = b.run(&["leave"]);
    run.assert_code(0);
    assert!(!members(cluster.path()).contains("node-b"), "{}", run.all());
    let run = a.run(&["leave"]);
    run.assert_code(1);
    assert!(run.stderr.contains("last controller"), "{}", run.all());
    assert!(members(cluster.path()).contains("node-a"));
}

/// SIGTERM while `leave` drains worker `w`: the drain stops with its process group, exit
/// 143, and the node is neither deleted from the cluster nor reset (`leave` again
/// finishes, as the caller goes on to check).
fn leave_stopped_mid_drain(w: &Node, cluster: &Path) {
    let mut slow = w.command(&["leave", "--kubeconfig", "/root/admin.conf"]);
    slow.env(
        "STANDIN_SLEEP",
        "k3s:drain=60 k0s:drain=60 kubectl:drain=60",
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = slow.spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w.calls().iter().any(|c| c.contains("drain node-w")) {
        assert!(Instant::now() < deadline, "the drain never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let run = common::to_run(child.wait_with_output().unwrap());
    run.assert_code(143);
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        stopped.elapsed()
    );
    assert!(run.stderr.contains("stopped by SIGTERM"), "{}", run.all());
    let left = common::standin_processes(w, pid);
    assert!(left.is_empty(), "the drain still runs: {left:?}");
    assert!(
        node_names(cluster).contains("node-w"),
        "a stopped leave deleted the node"
    );
    assert!(
        w.exists("/var/lib/bootstrap/journal.json"),
        "a stopped leave reset the node"
    );
}

#[test]
fn k3s_nodes_join_and_leave() {
    three_nodes_join_and_leave(&K3S);
}

#[test]
fn k0s_nodes_join_and_leave() {
    three_nodes_join_and_leave(&K0S);
}

#[test]
fn kubeadm_nodes_join_and_leave() {
    three_nodes_join_and_leave(&KUBEADM);
}

/// Puts a second cluster image (stand-ins at `version`) at `dir` on `node`.
fn second_image(node: &Node, case: &Case, dir: &str, version: &str) {
    node.image_in(case.runtime, version, dir);
}

/// `n` with its join service really running on `port` (the fleet's upgrade turns go
/// through it), and a short `upgrade.wait`.
fn with_join_service(mut n: ClusterNode, port: u16) -> ClusterNode {
    let config = n.read("/etc/bootstrap/config.yaml").unwrap();
    n.config(&format!(
        "{config}join:\n  port: {port}\nupgrade:\n  wait: 6s\n"
    ));
    n.node = n.node.env("STANDIN_JOIN_SERVICE", "1");
    n
}

fn upgrade_with_skew_rules(case: &Case) {
    let cluster = tempfile::tempdir().unwrap();
    // Each distro's case runs beside the others: its own addresses and join port.
    let (net, port) = match case.runtime {
        "k3s" => ("127.0.31", 17431),
        "k0s" => ("127.0.32", 17432),
        _ => ("127.0.33", 17433),
    };
    let (a_addr, w_addr) = (format!("{net}.10"), format!("{net}.20"));
    let controllers = [a_addr.as_str()];
    let a = with_join_service(
        node(
            case,
            cluster.path(),
            "node-a",
            &a_addr,
            &controllers,
            "auto",
        ),
        port,
    );
    let w = with_join_service(
        node(
            case,
            cluster.path(),
            "node-w",
            &w_addr,
            &controllers,
            "worker",
        ),
        port,
    );
    let _units = (common::Units(&a), common::Units(&w));
    a.run(&["up"]).assert_code(0);
    hand_material(&a, &w, "worker");
    w.run(&["up"]).assert_code(0);

    second_image(&a, case, "/opt/images/skip", case.skips_one);
    second_image(&a, case, "/opt/images/older", case.older);
    second_image(&a, case, "/opt/images/next", case.next);
    second_image(&w, case, "/opt/images/next", case.next);

    // Refusals come first and change nothing.
    let run = a.run(&["upgrade", "--rootfs", "/opt/images/skip"]);
    run.assert_code(1);
    assert!(run.stderr.contains("one minor at a time"), "{}", run.all());
    let run = a.run(&["upgrade", "--rootfs", "/opt/images/older"]);
    run.assert_code(1);
    assert!(run.stderr.contains("downgrade"), "{}", run.all());
    // A worker first waits for the controllers (bounded by upgrade.wait), saying why.
    let run = w.run(&["upgrade", "--rootfs", "/opt/images/next"]);
    run.assert_code(4);
    assert!(
        run.stderr
            .contains("waiting: controller node-a has not upgraded to")
            && run.stderr.contains("within upgrade.wait"),
        "{}",
        run.all()
    );

    // The controller first, then the worker.
    let run = a.run(&["upgrade", "--rootfs", "/opt/images/next"]);
    run.assert_code(0);
    let done = a.read("/var/lib/bootstrap/done.json").unwrap();
    assert!(done.contains(case.next), "{done}");
    let state = cluster_state(cluster.path());
    // The cluster's version is the control plane's.
    assert_eq!(
        state["version"].as_str().unwrap_or_default(),
        case.next,
        "{state}"
    );
    if case.runtime == "kubernetes" {
        // kubeadm: the controller is drained before its kubelet is replaced, then
        // uncordoned.
        let calls = a.calls().join("\n");
        assert!(calls.contains("drain node-a"), "{calls}");
        assert!(calls.contains("uncordon node-a"), "{calls}");
        assert_eq!(state["nodes"]["node-a"]["unschedulable"], false, "{state}");
    }
    // The previous image is kept for a rollback.
    let versions = a.path("/var/lib/bootstrap/rootfs.versions");
    assert!(
        std::fs::read_dir(&versions).map(|d| d.count()).unwrap_or(0) >= 1,
        "no previous image kept in {}",
        versions.display()
    );
    let run = w.run(&["upgrade", "--rootfs", "/opt/images/next"]);
    run.assert_code(0);
    let state = cluster_state(cluster.path());
    assert_eq!(
        state["nodes"]["node-w"]["version"]
            .as_str()
            .unwrap_or_default(),
        case.next,
        "{state}"
    );
    // The worker's kept join material names the version it moved to.
    let material = w.read("/var/lib/bootstrap/join/material.json").unwrap();
    assert!(material.contains(case.next), "{material}");
    // A controller's status shows which node runs which version.
    let status = a.run(&["status"]);
    status.assert_code(0);
    for name in ["node-a", "node-w"] {
        assert!(
            status
                .stdout
                .lines()
                .any(|l| l.starts_with("fleet:") && l.contains(name) && l.contains(case.next)),
            "{}",
            status.all()
        );
    }
    assert!(
        status.stdout.contains(&format!("version:   {}", case.next)),
        "{}",
        status.all()
    );
    // `up` stays safe to re-run on an upgraded node: the skew rules look at the cluster
    // as it is now, not at the version recorded when the node joined.
    for node in [&a, &w] {
        let run = node.run(&["up"]);
        run.assert_code(0);
        assert!(run.stderr.contains("nothing to do"), "{}", run.all());
    }
    // Again: nothing to do.
    let run = a.run(&["upgrade", "--rootfs", "/opt/images/next"]);
    run.assert_code(0);
    assert!(run.stderr.contains("nothing to upgrade"), "{}", run.all());
    // `up` after the upgrade keeps the new image.
    a.run(&["up"]).assert_code(0);
    assert!(a
        .read("/var/lib/bootstrap/done.json")
        .unwrap()
        .contains(case.next));
}

#[test]
fn k3s_upgrade_follows_the_skew_rules() {
    upgrade_with_skew_rules(&K3S);
}

#[test]
fn k0s_upgrade_follows_the_skew_rules() {
    upgrade_with_skew_rules(&K0S);
}

#[test]
fn kubeadm_upgrade_follows_the_skew_rules() {
    upgrade_with_skew_rules(&KUBEADM);
}

#[test]
fn material_for_another_distro_or_version_is_refused() {
    let cluster = tempfile::tempdir().unwrap();
    let controllers = ["127.0.10.10"];
    let a = node(
        &K3S,
        cluster.path(),
        "node-a",
        "127.0.10.10",
        &controllers,
        "auto",
    );
    a.run(&["up"]).assert_code(0);
    let k0s = node(
        &K0S,
        cluster.path(),
        "node-x",
        "10.0.0.30",
        &controllers,
        "worker",
    );
    hand_material(&a, &k0s, "worker");
    let run = k0s.run(&["up"]);
    run.assert_code(1);
    assert!(run.stderr.contains("the cluster runs k3s"), "{}", run.all());

    let newer = node(
        &Case {
            version: "v1.32.0+k3s1",
            ..K3S
        },
        cluster.path(),
        "node-y",
        "10.0.0.31",
        &controllers,
        "worker",
    );
    hand_material(&a, &newer, "worker");
    let run = newer.run(&["up"]);
    run.assert_code(1);
    assert!(run.stderr.contains("may not be newer"), "{}", run.all());

    // Worker material on a controller.
    let b = node(
        &K3S,
        cluster.path(),
        "node-b",
        "127.0.10.11",
        &["127.0.10.10", "127.0.10.11"],
        "auto",
    );
    hand_material(&a, &b, "worker");
    let run = b.run(&["up"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("joins as a controller"),
        "{}",
        run.all()
    );
}
