//! A whole fleet upgrading at once, per distro, in network namespaces with the stand-ins
//! (whose cluster state all nodes share): three controllers and two workers at minor N−1
//! boot, then `bootstrap upgrade --rootfs NEW` starts on all five at the same moment, as
//! automation would run it. The join services hand out turns from the upgrade lease in the
//! cluster: the controllers upgrade one at a time, then the workers; never two controllers
//! at once (asserted from every write of the lease the stand-in API stored), and every node
//! ends on the new version with `up` a no-op after.
//!
//! Then (k3s) a controller killed in the middle of its upgrade: the others wait for it,
//! saying why, and a re-run of `upgrade` on it finishes.
//!
//! Needs root and `ip netns` (iproute2); without them it prints `SKIPPED` and passes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use common::netns::{unsupported, Lab};
use common::Node;

const SECRET: &str = "4f1a9e6c3b8d2e7a5c0f9b4d1e6a3c8f2b7d5e0a";
const OBSERVER: &str = "10.81.0.254";
const JOIN_PORT: u16 = 7443;
const MACHINES: [(&str, &str); 5] = [
    ("c1", "10.81.0.1"),
    ("c2", "10.81.0.2"),
    ("c3", "10.81.0.3"),
    ("w1", "10.81.0.11"),
    ("w2", "10.81.0.12"),
];
const CONTROLLERS: [&str; 3] = ["c1", "c2", "c3"];

struct Machine {
    node: Node,
    _socket: Option<UnixListener>,
}

fn address(name: &str) -> &'static str {
    MACHINES.iter().find(|(n, _)| *n == name).unwrap().1
}

/// A machine of `runtime` at `version`, with `next` as a second cluster image at
/// /opt/images/next.
fn machine(
    cluster: &Path,
    name: &str,
    runtime: &str,
    version: &str,
    next: &str,
    third: Option<&str>,
) -> Machine {
    let mut node = Node::new()
        .env("STANDIN_CLUSTER", &cluster.display().to_string())
        .env("STANDIN_JOIN_SERVICE", "1");
    if name == "c2" {
        // Its upgrade takes a few seconds: the others must wait for it, not overlap it.
        node = node.env(
            "STANDIN_SLEEP",
            "k3s:server=3 k0s:controller=3 kubeadm:upgrade=3",
        );
    }
    node.image(runtime, version);
    node.image_in(runtime, next, "/opt/images/next");
    if let Some(third) = third {
        node.image_in(runtime, third, "/opt/images/third");
    }
    node.write("/proc/sys/kernel/hostname", &format!("{name}\n"));
    node.write_mode("/etc/bootstrap/join-secret", &format!("{SECRET}\n"), 0o600);
    let role = if CONTROLLERS.contains(&name) {
        "auto"
    } else {
        "worker"
    };
    node.config(&format!(
        "role: {role}\n\
         node: {{name: {name}, address: {}}}\n\
         preflight: {{ignore: [address]}}\n\
         registry: {{enabled: false}}\n\
         cluster:\n  name: fleet\n  controllers: [{}]\n  join_secret_file: /etc/bootstrap/join-secret\n  init_wait: 60s\n\
         join: {{port: {JOIN_PORT}, timeout: 150s}}\n\
         upgrade: {{wait: 5m}}\n",
        address(name),
        CONTROLLERS.map(address).join(", "),
    ));
    let socket = (runtime == "kubernetes").then(|| {
        let path = node.path("/run/containerd/containerd.sock");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        UnixListener::bind(&path).expect("bind the containerd socket")
    });
    Machine {
        node,
        _socket: socket,
    }
}

fn cluster_state(cluster: &Path) -> serde_json::Value {
    let text = fs::read_to_string(cluster.join("cluster.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// Who was upgrading after each write of the upgrade lease: `(node, role)` pairs.
fn upgrade_log(cluster: &Path) -> Vec<Vec<(String, String)>> {
    cluster_state(cluster)["upgrade_log"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|state| {
            state
                .as_array()
                .into_iter()
                .flatten()
                .map(|pair| {
                    (
                        pair[0].as_str().unwrap_or_default().to_owned(),
                        pair[1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .collect()
}

fn run_all(lab: &mut Lab, machines: &BTreeMap<&str, Machine>, args: &[&str], round: &str) {
    for (name, _) in MACHINES {
        lab.spawn(&format!("{round}-{name}"), name, &machines[name].node, args);
    }
    for (name, _) in MACHINES {
        let code = lab.wait(&format!("{round}-{name}"), Duration::from_secs(400));
        assert_eq!(
            code,
            0,
            "{round}: {args:?} on {name} failed:\n{}",
            lab.dump()
        );
    }
}

/// `versions`: where the fleet starts, the next minor, and (to kill a controller in the
/// middle of an upgrade) the one after.
fn fleet_upgrades_in_order(runtime: &str, versions: [&str; 3], kill: bool, prefix: &str) {
    let [version, next, third] = versions;
    let tag = format!("{prefix}{}", std::process::id());
    if let Some(why) = unsupported(&format!("{tag}-probe")) {
        println!("SKIPPED fleet_upgrade ({runtime}): {why}");
        return;
    }
    let mut lab = Lab::new(&tag, OBSERVER, &MACHINES, false);
    let cluster = tempfile::tempdir().unwrap();
    let machines: BTreeMap<&str, Machine> = MACHINES
        .iter()
        .map(|(name, _)| {
            let third = kill.then_some(third);
            (
                *name,
                machine(cluster.path(), name, runtime, version, next, third),
            )
        })
        .collect();
    run_all(&mut lab, &machines, &["up"], "boot");

    // All five at the same moment.
    run_all(
        &mut lab,
        &machines,
        &["upgrade", "--rootfs", "/opt/images/next"],
        "upgrade",
    );

    // Never two controllers, never a controller beside a worker, never two workers
    // (upgrade.max_unavailable is 1), in any state the lease was ever in.
    let log = upgrade_log(cluster.path());
    assert!(!log.is_empty(), "the upgrade lease was never written");
    for state in &log {
        assert!(
            state.len() <= 1,
            "two nodes upgrading at once: {state:?}\n{log:?}"
        );
    }
    // Controllers first, then workers.
    let order: Vec<&str> = log
        .iter()
        .filter_map(|s| s.first().map(|(n, _)| n.as_str()))
        .fold(Vec::new(), |mut seen, n| {
            if seen.last() != Some(&n) {
                seen.push(n);
            }
            seen
        });
    assert_eq!(order.len(), 5, "each node upgraded once: {order:?}");
    assert!(
        order[..3].iter().all(|n| n.starts_with('c'))
            && order[3..].iter().all(|n| n.starts_with('w')),
        "controllers first, then workers: {order:?}"
    );
    if runtime == "kubernetes" {
        // Whichever controller went first upgraded the control plane; the others followed.
        let applied: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| {
                machines[c]
                    .node
                    .calls()
                    .iter()
                    .any(|l| l.contains("kubeadm upgrade apply"))
            })
            .collect();
        assert_eq!(
            applied,
            [order[0]],
            "upgrade apply ran on {applied:?}; order {order:?}"
        );
    }
    // The workers said what they waited for.
    for worker in ["w1", "w2"] {
        let text = lab.text(&format!("upgrade-{worker}"));
        assert!(text.contains("waiting: "), "{worker} never waited:\n{text}");
    }
    for (name, _) in MACHINES {
        let done = machines[name]
            .node
            .read("/var/lib/bootstrap/done.json")
            .unwrap();
        assert!(done.contains(next), "{name}: {done}");
    }
    // Each worker was drained when its turn began and takes pods again.
    let calls: String = CONTROLLERS
        .iter()
        .flat_map(|c| machines[c].node.calls())
        .collect::<Vec<_>>()
        .join("\n");
    let state = cluster_state(cluster.path());
    for worker in ["w1", "w2"] {
        assert!(
            calls.contains(&format!("drain {worker}")),
            "{worker} not drained:\n{calls}"
        );
        assert!(
            calls.contains(&format!("uncordon {worker}")),
            "{worker} not uncordoned:\n{calls}"
        );
        assert_eq!(state["nodes"][worker]["unschedulable"], false, "{state}");
    }
    // `up` afterwards changes nothing anywhere.
    run_all(&mut lab, &machines, &["up"], "again");
    for (name, _) in MACHINES {
        let text = lab.text(&format!("again-{name}"));
        assert!(text.contains("nothing to do"), "{name}:\n{text}");
    }
    if kill {
        killed_in_the_middle(&mut lab, &machines, third);
    }
}

/// c2 dies in the middle of its upgrade to `third`: c1, c3 and w1, upgrading too, wait for it
/// and say why; `upgrade` run again on c2 finishes, and then so do they.
fn killed_in_the_middle(lab: &mut Lab, machines: &BTreeMap<&str, Machine>, third: &str) {
    let args = ["upgrade", "--rootfs", "/opt/images/third"];
    lab.spawn("third-c2", "c2", &machines["c2"].node, &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !lab.text("third-c2").contains("turn to upgrade") {
        assert!(
            std::time::Instant::now() < deadline && lab.exited("third-c2").is_none(),
            "c2 never got its turn:\n{}",
            lab.text("third-c2")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // In the middle: its turn taken, its new binary on the way in.
    std::thread::sleep(Duration::from_secs(1));
    lab.kill("third-c2");
    for name in ["c1", "c3", "w1"] {
        lab.spawn(&format!("third-{name}"), name, &machines[name].node, &args);
    }
    let waiting = |lab: &Lab, name: &str| {
        lab.text(&format!("third-{name}"))
            .contains("waiting: c2 is upgrading")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(waiting(lab, "c1") && waiting(lab, "w1")) {
        assert!(
            std::time::Instant::now() < deadline,
            "c1 and w1 should wait for c2, saying so:\n{}",
            lab.dump()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lab.exited("third-c1").is_none() && lab.exited("third-w1").is_none());
    // c2's re-run finishes its upgrade; the others follow.
    lab.spawn("third-c2-again", "c2", &machines["c2"].node, &args);
    for process in ["third-c2-again", "third-c1", "third-c3", "third-w1"] {
        let code = lab.wait(process, Duration::from_secs(300));
        assert_eq!(code, 0, "{process}:\n{}", lab.dump());
    }
    for name in ["c1", "c2", "c3", "w1"] {
        let done = machines[name]
            .node
            .read("/var/lib/bootstrap/done.json")
            .unwrap();
        assert!(done.contains(third), "{name}: {done}");
    }
}

#[test]
fn k3s_fleet_upgrades_in_order() {
    fleet_upgrades_in_order(
        "k3s",
        ["v1.35.2+k3s1", "v1.36.3+k3s1", "v1.37.0+k3s1"],
        true,
        "fuk3",
    );
}

#[test]
fn k0s_fleet_upgrades_in_order() {
    fleet_upgrades_in_order("k0s", ["v1.35.2+k0s.0", "v1.36.3+k0s.0", ""], false, "fuk0");
}

#[test]
fn kubeadm_fleet_upgrades_in_order() {
    fleet_upgrades_in_order("kubernetes", ["v1.35.2", "v1.36.3", ""], false, "fuka");
}
