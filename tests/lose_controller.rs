//! Losing the first controller, per distro, in network namespaces with the stand-ins (whose
//! cluster state all nodes share, as etcd is shared, so losing a controller loses no state).
//!
//! Three controllers and two workers boot at the same moment: the first controller asks
//! the others whether a cluster exists before it initialises, and — since they answer
//! "none" while they wait to join — it does not sit out `cluster.init_wait`. Then c1's
//! machine dies for good (every process in its namespace killed, its link down, the
//! control plane marking its node NotReady). Two new controllers, c4 and c5, join at the
//! same moment through two different controllers' join services: the admission lease
//! lives in the cluster, so they are admitted one after the other. Last, a fresh c1 with
//! the same user-data boots: it finds the running cluster, joins it (same CA, one
//! cluster), and the join service that admits it first removes the dead c1's Node and etcd
//! member.
//!
//! A second scenario: a first controller whose peers stay silent (partitioned) waits
//! `cluster.init_wait`, says which peers did not answer, and initialises — the documented
//! behaviour (docs/high-availability.md).
//!
//! Needs root and `ip netns` (iproute2); without them it prints `SKIPPED` and passes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::{unsupported, Lab};
use common::Node;

const SECRET: &str = "3e8a1f6c2b9d4e7a0c5f8b1d6e3a9c2f7b4d0e8a";
const OBSERVER: &str = "10.79.0.254";
const JOIN_PORT: u16 = 7443;
const MACHINES: [(&str, &str); 7] = [
    ("c1", "10.79.0.1"),
    ("c2", "10.79.0.2"),
    ("c3", "10.79.0.3"),
    ("c4", "10.79.0.4"),
    ("c5", "10.79.0.5"),
    ("w1", "10.79.0.11"),
    ("w2", "10.79.0.12"),
];

fn address(name: &str) -> &'static str {
    MACHINES.iter().find(|(n, _)| *n == name).unwrap().1
}

struct Machine {
    node: Node,
    _socket: Option<UnixListener>,
}

/// A machine of `runtime`: its host name, the cluster image, and a config naming c1..c3 as
/// the controllers. `asks` overrides which controllers it knows (a new controller that
/// only knows one of them).
fn machine(
    cluster: &Path,
    name: &str,
    runtime: &str,
    version: &str,
    asks: Option<&str>,
) -> Machine {
    let mut node = Node::new()
        .env("STANDIN_CLUSTER", &cluster.display().to_string())
        .env("STANDIN_JOIN_SERVICE", "1");
    if name == "c4" || name == "c5" {
        // Joining controllers hold the lease a few seconds, so the two joins overlap.
        node = node.env(
            "STANDIN_SLEEP",
            "k3s:server=3 k0s:controller=3 kubeadm:join=3",
        );
    }
    node.image(runtime, version);
    node.write("/proc/sys/kernel/hostname", &format!("{name}\n"));
    node.write_mode("/etc/bootstrap/join-secret", &format!("{SECRET}\n"), 0o600);
    let role = match name {
        "c1" | "c2" | "c3" => "auto",
        "c4" | "c5" => "controller",
        _ => "worker",
    };
    let controllers = asks
        .map(|a| address(a).to_owned())
        .unwrap_or_else(|| ["c1", "c2", "c3"].map(address).join(", "));
    node.config(&format!(
        "role: {role}\n\
         node: {{name: {name}, address: {}}}\n\
         preflight: {{ignore: [address]}}\n\
         registry: {{enabled: false}}\n\
         cluster:\n  name: lc\n  controllers: [{controllers}]\n  join_secret_file: /etc/bootstrap/join-secret\n  init_wait: 60s\n\
         join: {{port: {JOIN_PORT}, timeout: 150s}}\n",
        address(name),
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

/// The kubectl a node of `runtime` has (program and leading words, as host paths) and
/// its kubelet's kubeconfig.
fn kubelet_kubeconfig(runtime: &str) -> (&'static [&'static str], &'static str) {
    match runtime {
        "k3s" => (
            &["/usr/local/bin/k3s", "kubectl"],
            "/var/lib/rancher/k3s/agent/kubelet.kubeconfig",
        ),
        "k0s" => (
            &["/usr/local/bin/k0s", "kubectl"],
            "/var/lib/k0s/kubelet.conf",
        ),
        _ => (&["/usr/local/bin/kubectl"], "/etc/kubernetes/kubelet.conf"),
    }
}

/// Edits the shared cluster state as the control plane would see a dead machine: its API
/// server down, its node NotReady.
fn mark_dead(cluster: &Path, name: &str) {
    let path = cluster.join("cluster.json");
    let mut state = cluster_state(cluster);
    state["api_up"][name] = serde_json::json!(false);
    if state["nodes"].get(name).is_some() {
        state["nodes"][name]["ready"] = serde_json::json!(false);
    }
    fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
}

fn cluster_id(node: &Node) -> Option<String> {
    let text = node.read("/var/lib/bootstrap/cluster.json")?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    record["id"].as_str().map(str::to_owned)
}

fn up_all(lab: &mut Lab, machines: &BTreeMap<&str, Machine>, names: &[&str], round: &str) {
    for name in names {
        let tag = format!("{round}-{name}");
        lab.spawn(&tag, name, &machines[name].node, &["up"]);
    }
    for name in names {
        let tag = format!("{round}-{name}");
        let code = lab.wait(&tag, Duration::from_secs(200));
        assert_eq!(code, 0, "{round}: up on {name} failed:\n{}", lab.dump());
    }
}

/// Seconds between the first log lines holding `a` and `b` (log stamps have seconds).
fn seconds_between(log: &str, a: &str, b: &str) -> i64 {
    let stamp = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    };
    match (stamp(a), stamp(b)) {
        (Some(x), Some(y)) => y
            .duration_since(x)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(-1),
        _ => -1,
    }
}

/// The holders of the in-cluster lease, in the order the stand-in API stored them
/// (`None`: released).
fn lease_holders(cluster: &Path) -> Vec<Option<String>> {
    cluster_state(cluster)["lease_log"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| entry[2].as_str().map(str::to_owned))
        .collect()
}

fn lose_the_first_controller(runtime: &str, version: &str, prefix: &str) {
    let tag = format!("{prefix}{}", std::process::id());
    if let Some(why) = unsupported(&format!("{tag}-probe")) {
        println!("SKIPPED lose_controller ({runtime}): {why}");
        return;
    }
    let mut lab = Lab::new(&tag, OBSERVER, &MACHINES, false);
    let cluster = tempfile::tempdir().unwrap();
    let mut machines: BTreeMap<&str, Machine> = BTreeMap::new();
    for (name, _) in MACHINES {
        let asks = match name {
            "c4" => Some("c2"),
            "c5" => Some("c3"),
            _ => None,
        };
        machines.insert(name, machine(cluster.path(), name, runtime, version, asks));
    }

    // 1. Three controllers and two workers boot at once.
    let start = Instant::now();
    up_all(&mut lab, &machines, &["c1", "c2", "c3", "w1", "w2"], "boot");
    let boot = start.elapsed();
    let c1_log = lab.text("boot-c1");
    assert!(
        c1_log.contains("asking ") && c1_log.contains("whether a cluster already exists"),
        "{c1_log}"
    );
    assert!(
        c1_log.contains("no cluster yet:") && !c1_log.contains("did not answer"),
        "the waiting controllers must answer, so the first does not wait out init_wait:\n{c1_log}"
    );
    let ca = cluster_state(cluster.path())["ca_pem"].clone();
    assert!(ca.is_string());
    let id = cluster_id(&machines["c1"].node).expect("c1 records its cluster id");
    for name in ["c2", "c3", "w1", "w2"] {
        assert_eq!(
            cluster_id(&machines[name].node).as_deref(),
            Some(id.as_str()),
            "{name} records the cluster it joined"
        );
    }
    println!(
        "{runtime}: 3+2 fresh boot took {boot:?}, of which c1 spent {}s asking its peers",
        seconds_between(
            &c1_log,
            "whether a cluster already exists",
            "no cluster yet:"
        )
    );

    // 2. c1's machine dies for good.
    lab.kill_all("c1");
    lab.link("c1", false);
    mark_dead(cluster.path(), "c1");

    // The workers' kubelets still reach a live API server: their kubeconfigs name a
    // node-local balancer over every controller, not c1.
    for worker in ["w1", "w2"] {
        let (program, kubeconfig) = kubelet_kubeconfig(runtime);
        let node = &machines[worker].node;
        let mut args = program.to_vec();
        args.extend(["--kubeconfig", kubeconfig, "get", "nodes", "-o", "name"]);
        let out = lab
            .raw_command(worker, node, &args)
            .output()
            .expect("run kubectl on the worker");
        assert!(
            out.status.success(),
            "{worker}'s kubelet kubeconfig ({kubeconfig}: {}) does not reach a live API server: {}",
            node.read(kubeconfig)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("server:"))
                .unwrap_or(""),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // 3. c4 (asking c2) and c5 (asking c3) join at the same moment: one lease, in the
    //    cluster, admits them one after the other.
    let before = lease_holders(cluster.path()).len();
    let start = Instant::now();
    up_all(&mut lab, &machines, &["c4", "c5"], "grow");
    println!(
        "{runtime}: c4 and c5 joined without c1 in {:?}",
        start.elapsed()
    );
    let holders: Vec<Option<String>> = lease_holders(cluster.path())[before..].to_vec();
    let mut current: Option<String> = None;
    let mut granted = Vec::new();
    for holder in &holders {
        match (holder, &current) {
            (Some(h), Some(c)) if h != c => {
                panic!("the lease went to {h} while {c} held it: {holders:?}")
            }
            (Some(h), None) => {
                granted.push(h.clone());
                current = Some(h.clone());
            }
            (None, _) => current = None,
            _ => {}
        }
    }
    granted.sort();
    granted.dedup();
    assert_eq!(granted, ["c4", "c5"], "{holders:?}");
    for name in ["c4", "c5"] {
        assert_eq!(
            cluster_id(&machines[name].node).as_deref(),
            Some(id.as_str())
        );
    }
    if runtime == "kubernetes" {
        // Once the last joiner gave the lease back, kubeadm's uploaded certificates
        // (kube-system/kubeadm-certs) are gone rather than kept for 2 h.
        let state = cluster_state(cluster.path());
        assert!(
            state["kubeadm"]["certs_uploaded"].is_null(),
            "kubeadm-certs still there: {}",
            state["kubeadm"]
        );
    }

    // 4. A fresh c1 (a new disk, the same user-data) boots and joins the cluster that runs.
    lab.link("c1", true);
    let fresh = machine(cluster.path(), "c1", runtime, version, None);
    machines.insert("c1", fresh);
    let start = Instant::now();
    up_all(&mut lab, &machines, &["c1"], "again");
    println!("{runtime}: the replaced c1 joined in {:?}", start.elapsed());
    let log = lab.text("again-c1");
    assert!(
        log.contains("joining it instead of initialising a second cluster"),
        "{log}"
    );
    let state = cluster_state(cluster.path());
    assert_eq!(state["ca_pem"], ca, "one cluster, one CA");
    assert_eq!(state["api_up"]["c1"], serde_json::json!(true), "{state}");
    assert_eq!(
        cluster_id(&machines["c1"].node).as_deref(),
        Some(id.as_str())
    );
    let role = machines["c1"]
        .node
        .read("/var/lib/bootstrap/role.json")
        .unwrap();
    assert!(
        role.contains("join-controller") && role.contains(&id),
        "{role}"
    );
    let service_logs: String = ["c2", "c3"]
        .iter()
        .map(|name| {
            machines[name]
                .node
                .read("/.standin-systemd/bootstrap-join.service.log")
                .unwrap_or_default()
        })
        .collect();
    assert!(
        service_logs.lines().any(|l| l.contains("c1 (")
            && l.contains("10.79.0.1")
            && l.contains("takes the place of a controller that is gone")),
        "a live controller removes the dead c1 first:\n{service_logs}"
    );
    if let Some(etcd) = state["etcd"].as_object() {
        let at_c1: Vec<_> = etcd
            .iter()
            .filter(|(_, peer)| peer.as_str() == Some(address("c1")))
            .collect();
        assert!(
            at_c1.len() <= 1,
            "one etcd member at c1's address: {etcd:?}"
        );
    }
}

#[test]
fn k3s_survives_losing_its_first_controller() {
    lose_the_first_controller("k3s", "v1.31.4+k3s1", "lck3");
}

#[test]
fn k0s_survives_losing_its_first_controller() {
    lose_the_first_controller("k0s", "v1.31.4+k0s.0", "lck0");
}

#[test]
fn kubeadm_survives_losing_its_first_controller() {
    lose_the_first_controller("kubernetes", "v1.31.4", "lcka");
}

/// A first controller whose peers never answer (partitioned, or not booted) waits
/// `cluster.init_wait`, names them, and initialises.
#[test]
fn a_partitioned_first_controller_waits_then_initialises() {
    let tag = format!("lcp{}", std::process::id());
    if let Some(why) = unsupported(&format!("{tag}-probe")) {
        println!("SKIPPED lose_controller (partition): {why}");
        return;
    }
    let mut lab = Lab::new(&tag, OBSERVER, &MACHINES[..3], false);
    let cluster = tempfile::tempdir().unwrap();
    let c1 = machine(cluster.path(), "c1", "k3s", "v1.31.4+k3s1", None);
    c1.node.config(
        &c1.node
            .read("/etc/bootstrap/config.yaml")
            .unwrap()
            .replace("init_wait: 60s", "init_wait: 4s"),
    );
    lab.link("c2", false);
    lab.link("c3", false);
    let start = Instant::now();
    lab.spawn("p-c1", "c1", &c1.node, &["up"]);
    let code = lab.wait("p-c1", Duration::from_secs(120));
    let log = lab.text("p-c1");
    assert_eq!(code, 0, "{log}");
    assert!(start.elapsed() >= Duration::from_secs(4), "{log}");
    assert!(
        log.contains("did not answer within cluster.init_wait")
            && log.contains("10.79.0.2")
            && log.contains("10.79.0.3"),
        "{log}"
    );
    assert!(cluster_id(&c1.node).is_some());
}
