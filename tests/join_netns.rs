//! The join service across network namespaces: one namespace per node (a first
//! controller, two extra controllers, three workers, and a node with the wrong secret),
//! each with a veth link to a bridge in a "switch" namespace of its own (where the test's
//! admission probe stands), addresses in 10.77.0.0/24 that exist only inside these
//! namespaces. Every node is a temp root with the k3s stand-ins, sharing one stand-in
//! cluster; `bootstrap up` and `bootstrap serve` run with `ip netns exec`.
//!
//! Scenarios, each asserted: joiners started before the first controller is up; the first
//! controller's join service killed and restarted while joins are in flight; a link taken
//! down during a join and restored; a wrong secret refused with exit 4 and its cause;
//! control-plane joins admitted one at a time. Every node must end joined with material
//! matching the first controller's.
//!
//! Needs root and `ip netns` (iproute2); without them it prints `SKIPPED` and passes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::{in_netns, unsupported, wait_until, Lab};
use common::Node;

const SECRET: &str =
    "bjs1-43c5e1829229e3972ef53098d6e85d966a06e7fe8817cb262a5824076041fdbf-6161d300";
const WRONG_SECRET: &str =
    "bjs1-5a883274f8808c3fb1ce2ba4ed146c933f0f8d72abd58ee2512fad1fe855299a-f81b7196";
/// The cluster's name, which salts the join keys.
const CLUSTER: &str = "netns";
const PREFIX: &str = "10.77.0";
/// The switch namespace's own address on the bridge: where the test's probe stands.
const OBSERVER: &str = "10.77.0.254";
const JOIN_PORT: u16 = 7443;
const CONTROLLERS: [&str; 3] = ["c1", "c2", "c3"];
/// Every node, with its host number on the subnet.
const NODES: [(&str, u8); 7] = [
    ("c1", 1),
    ("c2", 2),
    ("c3", 3),
    ("w1", 11),
    ("w2", 12),
    ("w3", 13),
    // Holds the wrong secret; never joins.
    ("x1", 99),
];
/// How long a joiner that must succeed keeps trying. The client's backoff is capped at
/// 30 s (not configurable), so this cannot be much shorter.
const JOIN_TIMEOUT: &str = "100s";

fn address(name: &str) -> String {
    let (_, host) = NODES.iter().find(|(n, _)| *n == name).unwrap();
    format!("{PREFIX}.{host}")
}

/// A node's root: the k3s stand-in image, its config, its host name, the shared cluster.
fn make_node(cluster: &Path, name: &str, role: &str, secret: &str, timeout: &str) -> Node {
    let mut node = Node::new().env("STANDIN_CLUSTER", &cluster.display().to_string());
    if CONTROLLERS[1..].contains(&name) {
        // Extra controllers hold the admission lease for a while: long enough for the
        // test to look at the first controller while one of them holds it.
        node = node.env("STANDIN_SLEEP", "k3s:server=3");
    }
    node.write("/proc/sys/kernel/hostname", &format!("{name}\n"));
    node.write_mode("/etc/bootstrap/join-secret", &format!("{secret}\n"), 0o600);
    write_config(&node, name, role, timeout);
    node
}

fn write_config(node: &Node, name: &str, role: &str, timeout: &str) {
    let controllers: Vec<String> = CONTROLLERS.iter().map(|c| address(c)).collect();
    node.config(&format!(
        "role: {role}\n\
         node: {{name: {name}, address: {}}}\n\
         preflight: {{ignore: [address]}}\n\
         registry: {{enabled: false}}\n\
         cluster:\n  name: {CLUSTER}\n  controllers: [{}]\n  join_secret_file: /etc/bootstrap/join-secret\n  init_wait: 20s\n\
         join: {{port: {JOIN_PORT}, timeout: {timeout}}}\n",
        address(name),
        controllers.join(", ")
    ));
}

fn cluster_state(cluster: &Path) -> serde_json::Value {
    let text = fs::read_to_string(cluster.join("cluster.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// A controller-role event in the first controller's join-service log.
#[derive(Debug, PartialEq)]
enum Admit {
    Granted(String),
    Released(String),
    Busy { asker: String, holder: String },
}

/// The control-plane admission events, in order, of the first controller's join-service
/// logs (given in the order the services ran).
fn admission_events(logs: &[String]) -> Vec<Admit> {
    let mut events = Vec::new();
    for line in logs.iter().flat_map(|l| l.lines()) {
        if let Some(rest) = line.split(" info: join material for ").nth(1) {
            // "NAME (PEER) as a controller (N.N s)"
            if rest.contains(") as a controller") {
                events.push(Admit::Granted(rest.split(' ').next().unwrap().to_owned()));
            }
        } else if line.ends_with(" holds the control-plane join lease") {
            let rest = line.split(" info: ").nth(1).unwrap_or_default();
            events.push(Admit::Granted(rest.split(' ').next().unwrap().to_owned()));
        } else if line.ends_with("has joined the control plane; lease released") {
            let rest = line.split(" info: ").nth(1).unwrap_or_default();
            events.push(Admit::Released(rest.split(' ').next().unwrap().to_owned()));
        } else if line.contains(" waits: admission busy: ") {
            let rest = line.split(" info: ").nth(1).unwrap_or_default();
            let asker = rest.split(' ').next().unwrap().to_owned();
            let holder = rest
                .split("admission busy: ")
                .nth(1)
                .and_then(|h| h.split(' ').next())
                .unwrap_or_default()
                .to_owned();
            events.push(Admit::Busy { asker, holder });
        }
    }
    events
}

/// The controller that holds the lease after `events`, if any; panics when the events
/// show two holders at once or a release by someone who did not hold it.
fn holder_after(events: &[Admit]) -> Option<String> {
    let mut holder: Option<String> = None;
    for event in events {
        match event {
            Admit::Granted(node) => {
                assert!(
                    holder.is_none() || holder.as_deref() == Some(node.as_str()),
                    "{node} was admitted while {holder:?} held the lease: {events:?}"
                );
                holder = Some(node.clone());
            }
            Admit::Released(node) => {
                if holder.as_deref() == Some(node.as_str()) {
                    holder = None;
                }
            }
            Admit::Busy { holder: named, .. } => {
                // With no holder known, the grant's log line may have died with the
                // killed service (the lease is saved before it is logged): the named
                // holder has it.
                assert!(
                    holder.is_none() || holder.as_deref() == Some(named.as_str()),
                    "a busy answer named {named}, but the lease was {holder:?}: {events:?}"
                );
                holder = Some(named.clone());
            }
        }
    }
    holder
}

/// Asks the first controller's join service, from the switch namespace, to admit a
/// controller that is not one of the nodes; what it answered.
fn probe_admission(switch: &str, keys: &bootstrap::join::JoinKeys) -> String {
    use bootstrap::join::proto::{Request, RequestKind};
    let keys = keys.clone();
    let target = format!("{}:{JOIN_PORT}", address("c1"));
    in_netns(switch, move || {
        let ask = |kind| {
            bootstrap::join::client::ask(
                &target,
                &keys,
                &Request {
                    version: 1,
                    kind,
                    role: bootstrap::distro::JoinRole::Controller,
                    node: "admission-probe".into(),
                    credential: None,
                    drain_timeout_secs: None,
                    kube_version: None,
                },
            )
        };
        match ask(RequestKind::Join) {
            Err(cause) => cause.to_string(),
            Ok(_) => {
                // The lease was free and the probe took it: give it straight back.
                let released = ask(RequestKind::Release);
                format!("admitted (the lease was free); released: {released:?}")
            }
        }
    })
}

#[test]
fn nodes_join_across_network_namespaces() {
    let tag = format!("bj{}", std::process::id());
    if let Some(why) = unsupported(&format!("{tag}-probe")) {
        println!("SKIPPED join_netns::nodes_join_across_network_namespaces: {why}");
        return;
    }
    let started = Instant::now();
    let nodes_at: Vec<(&str, String)> = NODES.iter().map(|(n, _)| (*n, address(n))).collect();
    let nodes_at: Vec<(&str, &str)> = nodes_at.iter().map(|(n, a)| (*n, a.as_str())).collect();
    let mut lab = Lab::new(&tag, OBSERVER, &nodes_at, false);
    let cluster = tempfile::tempdir().unwrap();
    let cl = cluster.path();
    let mut nodes: BTreeMap<&str, Node> = BTreeMap::new();
    for name in CONTROLLERS {
        nodes.insert(name, make_node(cl, name, "auto", SECRET, JOIN_TIMEOUT));
    }
    for name in ["w1", "w2", "w3"] {
        nodes.insert(name, make_node(cl, name, "worker", SECRET, JOIN_TIMEOUT));
    }
    nodes.insert("x1", make_node(cl, "x1", "worker", WRONG_SECRET, "4s"));
    let secret = bootstrap::secret::Secret::new(SECRET);
    let keys = bootstrap::join::JoinKeys::from_secret(&secret, CLUSTER).unwrap();

    // 1. Extra controllers and workers start before the first controller is up: they
    //    find nothing to ask and keep trying.
    let early = ["c2", "c3", "w1", "w2"];
    for name in early {
        lab.spawn(&format!("{name}-up"), name, &nodes[name], &["up"]);
    }
    for name in early {
        let process = format!("{name}-up");
        assert!(
            wait_until(
                &format!("{name} to fail a try"),
                Duration::from_secs(20),
                || { lab.text(&process).contains("failed: unreachable") }
            ),
            "{name} did not report an unreachable controller\n{}",
            lab.dump()
        );
    }
    let (code, out) = lab.run("c1-up", "c1", &nodes["c1"], &["up"]);
    assert_eq!(code, 0, "the first controller's up failed:\n{out}");
    for name in early {
        assert_eq!(
            lab.exited(&format!("{name}-up")),
            None,
            "{name} ended before any join service answered\n{}",
            lab.dump()
        );
        assert!(!nodes[name].exists("/var/lib/bootstrap/join/material.json"));
    }

    // 2. The first controller's join service starts; once it has handed out material,
    //    it is killed while the other joins are in flight, and started again.
    let listen = format!("{}:{JOIN_PORT}", address("c1"));
    lab.spawn(
        "c1-serve-1",
        "c1",
        &nodes["c1"],
        &["serve", "--listen", &listen],
    );
    assert!(
        wait_until("the join service", Duration::from_secs(20), || lab
            .text("c1-serve-1")
            .contains("listening on")),
        "{}",
        lab.dump()
    );
    assert!(
        wait_until("the first join material", Duration::from_secs(60), || lab
            .text("c1-serve-1")
            .contains("info: join material for ")),
        "nobody got join material\n{}",
        lab.dump()
    );
    lab.kill("c1-serve-1");
    let in_flight: Vec<&str> = early
        .iter()
        .copied()
        .filter(|n| !nodes[n].exists("/var/lib/bootstrap/done.json"))
        .collect();
    // Controllers join one at a time, and each holds the lease for seconds: at least one
    // is still joining when the service goes.
    assert!(
        in_flight.iter().any(|n| n.starts_with('c')),
        "no controller join in flight when the join service was killed\n{}",
        lab.dump()
    );
    std::thread::sleep(Duration::from_millis(1500));
    lab.spawn(
        "c1-serve-2",
        "c1",
        &nodes["c1"],
        &["serve", "--listen", &listen],
    );
    assert!(
        wait_until(
            "the restarted join service",
            Duration::from_secs(20),
            || lab.text("c1-serve-2").contains("listening on")
        ),
        "{}",
        lab.dump()
    );

    // 3. A link taken down during a join: w3 starts with its link down, fails its tries
    //    as unreachable, and joins once the link is back.
    lab.link("w3", false);
    lab.spawn("w3-up", "w3", &nodes["w3"], &["up"]);
    let link_down = Instant::now();
    assert!(
        wait_until("w3 to fail a try", Duration::from_secs(20), || lab
            .text("w3-up")
            .contains("failed: unreachable")),
        "{}",
        lab.dump()
    );

    // 4. Control-plane admission: while an extra controller holds the lease, another
    //    controller asking is told to wait, with the holder named. The probe asks as soon
    //    as the log shows a holder (each holds the lease for more than 3 s).
    let mut probed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(100);
    let mut busy = None;
    while busy.is_none() && Instant::now() < deadline && probed.len() < 3 {
        let logs = [lab.text("c1-serve-1"), lab.text("c1-serve-2")];
        if let Some(holder) = holder_after(&admission_events(&logs)) {
            if !probed.contains(&holder) {
                let answer = probe_admission(&lab.switch, &keys);
                if answer.contains(&format!("admission busy: {holder} is joining")) {
                    busy = Some(answer.clone());
                }
                probed.push(holder.clone());
                eprintln!("join_netns: probe while {holder} held the lease: {answer:?}");
            }
        }
        if link_down.elapsed() > Duration::from_secs(4) {
            // The link has been down for a few seconds: back up.
            lab.link("w3", true);
        }
        if ["c2-up", "c3-up"].iter().all(|p| lab.exited(p).is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        busy.is_some(),
        "no busy answer naming the holder (probed while {probed:?} held the lease)\n{}",
        lab.dump()
    );
    if link_down.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_secs(4) - link_down.elapsed());
    }
    lab.link("w3", true);

    // Every joiner ends joined; controllers serve once they have joined.
    for name in ["c2", "c3"] {
        let code = lab.wait(&format!("{name}-up"), Duration::from_secs(110));
        assert_eq!(code, 0, "{name}\n{}", lab.dump());
        let listen = format!("{}:{JOIN_PORT}", address(name));
        lab.spawn(
            &format!("{name}-serve"),
            name,
            &nodes[name],
            &["serve", "--listen", &listen],
        );
    }
    for name in ["w1", "w2", "w3"] {
        let code = lab.wait(&format!("{name}-up"), Duration::from_secs(110));
        assert_eq!(code, 0, "{name}\n{}", lab.dump());
    }
    for name in ["c2", "c3"] {
        let process = format!("{name}-serve");
        assert!(
            wait_until(&process, Duration::from_secs(20), || lab
                .text(&process)
                .contains("listening on")),
            "{}",
            lab.dump()
        );
    }
    // w3's tries while its link was down failed as unreachable, and it joined after.
    let w3 = lab.text("w3-up");
    assert!(w3.contains("join material from"), "{w3}");
    assert!(
        w3.find("failed: unreachable") < w3.find("join material from"),
        "{w3}"
    );
    // The joiners that were waiting when the service was killed were served by a join
    // service after the restart (the restarted one, or an extra controller by then).
    let late_served: Vec<&str> = in_flight
        .iter()
        .copied()
        .filter(|n| {
            lab.text("c1-serve-2")
                .contains(&format!("join material for {n} "))
                || ["c2-serve", "c3-serve"]
                    .iter()
                    .any(|s| lab.text(s).contains(&format!("join material for {n} ")))
        })
        .collect();
    assert!(
        !late_served.is_empty(),
        "none of {in_flight:?} was served after the restart\n{}",
        lab.dump()
    );

    // 5. Admission, over both runs of the first controller's join service: every
    //    controller admitted and released, never two at once, nothing held at the end.
    let logs = [lab.text("c1-serve-1"), lab.text("c1-serve-2")];
    let events = admission_events(&logs);
    assert_eq!(holder_after(&events), None, "{events:?}");
    for name in ["c2", "c3"] {
        assert!(events.contains(&Admit::Granted(name.into())), "{events:?}");
        assert!(events.contains(&Admit::Released(name.into())), "{events:?}");
    }
    assert!(
        !nodes["c1"].exists("/var/lib/bootstrap/join/lease.json"),
        "the lease is still held"
    );
    let waits = events
        .iter()
        .filter(|e| matches!(e, Admit::Busy { asker, .. } if asker != "admission-probe"))
        .count();
    eprintln!("join_netns: admission events {events:?} ({waits} busy answers to nodes)");

    // 6. The wrong secret: every controller's key fails the pin, nothing is sent, and the
    //    node gives up at join.timeout with exit 4 and that cause.
    let (code, out) = lab.run("x1-up", "x1", &nodes["x1"], &["up"]);
    assert_eq!(code, 4, "{out}");
    for c in CONTROLLERS {
        assert!(
            out.contains(&format!(
                "failed: TLS: {}:{JOIN_PORT}: the server's key is not the one the join secret gives",
                address(c)
            )),
            "no pin failure from {c}:\n{out}"
        );
    }
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.contains("no join material after") && last.contains("last cause: TLS"),
        "{out}"
    );
    assert!(!nodes["x1"].exists("/var/lib/bootstrap/join/material.json"));
    for c in CONTROLLERS {
        let log = if c == "c1" {
            lab.text("c1-serve-2")
        } else {
            lab.text(&format!("{c}-serve"))
        };
        assert!(!log.contains(&address("x1")), "{c} served x1:\n{log}");
    }

    // 7. Every node is in the cluster, with material matching the first controller's.
    let state = cluster_state(cl);
    for name in ["c1", "c2", "c3", "w1", "w2", "w3"] {
        let role = state["nodes"][name]["role"].as_str().unwrap_or_default();
        let want = if name.starts_with('c') {
            "control-plane"
        } else {
            "worker"
        };
        assert_eq!(role, want, "{name} in the cluster: {state}");
        assert!(nodes[name].exists("/var/lib/bootstrap/done.json"), "{name}");
    }
    assert!(state["nodes"].get("x1").is_none(), "{state}");
    let mint = |lab: &mut Lab, role: &str| -> serde_json::Value {
        let process = format!("c1-token-{role}");
        let (code, out) = lab.run_split(
            &process,
            "c1",
            &nodes["c1"],
            &["token", "create", role, "--material"],
        );
        assert_eq!(code, 0, "{}", lab.text(&process));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let controller = mint(&mut lab, "controller");
    let worker = mint(&mut lab, "worker");
    let k3s_tokens = state["tokens"].as_object().cloned().unwrap_or_default();
    for name in ["c2", "c3", "w1", "w2", "w3"] {
        let path = nodes[name].path("/var/lib/bootstrap/join/material.json");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}'s material");
        let got: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let want = if name.starts_with('c') {
            &controller
        } else {
            &worker
        };
        for field in [
            "distro",
            "version",
            "role",
            "endpoint",
            "pod_cidr",
            "service_cidr",
        ] {
            assert_eq!(got[field], want[field], "{name}: {field}");
        }
        let token = got["token"].as_str().unwrap();
        let want_token = want["token"].as_str().unwrap();
        if name.starts_with('c') {
            // The server token: the same on every controller.
            assert_eq!(token, want_token, "{name}'s token");
        } else {
            // A minted agent token (each join service mints its own) for this cluster's
            // CA, live in the cluster.
            let (ca, credential) = token.split_once("::").unwrap();
            assert_eq!(
                ca,
                want_token.split_once("::").unwrap().0,
                "{name}'s CA pin"
            );
            let (id, secret) = credential.split_once('.').unwrap();
            assert_eq!(
                k3s_tokens.get(id).and_then(|t| t["secret"].as_str()),
                Some(secret),
                "{name}'s token is not one the cluster knows"
            );
        }
    }
    if std::env::var_os("JOIN_NETNS_VERBOSE").is_some() {
        eprintln!("{}", lab.dump());
    }
    eprintln!(
        "join_netns: all nodes joined in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
