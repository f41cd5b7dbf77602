//! The README's bare-metal commands, run as written, on machines that hold only the binary
//! and a cluster image (no config file, no join secret), each in its own network
//! namespace, for k3s, k0s and kubeadm.
//!
//! The lines between `<!-- bare-metal:start -->` and `<!-- bare-metal:end -->` in
//! README.md are `mN$ bootstrap …` commands; each runs on machine mN, with `< FILE` and
//! `> FILE` taken from one folder the machines share (the operator's `scp`). What the test
//! adds around them: the stand-ins' environment (as on every test node), a fourth machine
//! that joins as a controller at the same moment as m3 (admitted one at a time), and,
//! before m2's `leave`, the same `leave` with m2 cut off from the controllers, which must
//! refuse and change nothing. At the end, m1 and m4 are the cluster, and m2 and m3 hold
//! nothing bootstrap wrote.
//!
//! Needs root and `ip netns` (iproute2); without them it prints `SKIPPED` and passes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::netns::{unsupported, wait_until, Lab};
use common::Node;

const OBSERVER: &str = "10.78.0.254";
const MACHINES: [(&str, &str); 4] = [
    ("m1", "10.78.0.1"),
    ("m2", "10.78.0.2"),
    ("m3", "10.78.0.3"),
    ("m4", "10.78.0.4"),
];

/// One README line: the machine and the command's words (redirections apart).
#[derive(Debug, Clone)]
struct Line {
    machine: String,
    args: Vec<String>,
    stdin: Option<String>,
    stdout: Option<String>,
    text: String,
}

/// The bare-metal section's command lines, parsed; panics on anything the test cannot
/// run as written (so the README cannot grow a line nobody checks).
fn readme_lines() -> Vec<Line> {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- bare-metal:start -->")
        .expect("README: no <!-- bare-metal:start --> marker");
    let end = readme
        .find("<!-- bare-metal:end -->")
        .expect("README: no <!-- bare-metal:end --> marker");
    let mut lines = Vec::new();
    for raw in readme[start..end].lines().skip(1) {
        let text = raw.trim();
        if text.is_empty() {
            continue;
        }
        let (machine, command) = text
            .split_once("$ ")
            .unwrap_or_else(|| panic!("README bare-metal line without `mN$ `: {text:?}"));
        assert!(
            MACHINES.iter().any(|(m, _)| *m == machine),
            "README bare-metal line on an unknown machine: {text:?}"
        );
        let mut words = command.split_whitespace();
        assert_eq!(
            words.next(),
            Some("bootstrap"),
            "README bare-metal line that is not a bootstrap command: {text:?}"
        );
        let mut line = Line {
            machine: machine.to_owned(),
            args: Vec::new(),
            stdin: None,
            stdout: None,
            text: text.to_owned(),
        };
        while let Some(word) = words.next() {
            match word {
                "<" => line.stdin = Some(words.next().expect("a file after <").to_owned()),
                ">" => line.stdout = Some(words.next().expect("a file after >").to_owned()),
                w => {
                    assert!(
                        !w.contains(['|', ';', '&', '$', '`', '\'', '"']),
                        "README bare-metal line with shell syntax the test cannot run: {text:?}"
                    );
                    line.args.push(w.to_owned());
                }
            }
        }
        lines.push(line);
    }
    assert!(!lines.is_empty(), "README: the bare-metal section is empty");
    lines
}

#[test]
fn readme_bare_metal_lines_are_commands_the_test_runs() {
    let lines = readme_lines();
    let has = |machine: &str, words: &[&str]| {
        lines
            .iter()
            .any(|l| l.machine == machine && words.iter().all(|w| l.args.iter().any(|a| a == w)))
    };
    // What the issue asked of this path, as the README shows it.
    assert!(has("m1", &["--role", "controller"]), "{lines:?}");
    assert!(has("m1", &["token", "create", "worker"]), "{lines:?}");
    assert!(has("m1", &["token", "create", "controller"]), "{lines:?}");
    assert!(has("m2", &["up", "--join", "-"]), "{lines:?}");
    assert!(has("m3", &["up", "--join", "-"]), "{lines:?}");
    assert!(has("m2", &["leave"]), "{lines:?}");
    assert!(has("m3", &["leave"]), "{lines:?}");
}

struct Machine {
    node: Node,
    /// kubeadm runs on the host's containerd: its socket must answer.
    _socket: Option<UnixListener>,
}

/// A fresh machine: the stand-ins' kernel files, a host name, a default route on eth0
/// (its namespace's address is the default-route address), the cluster image — and no
/// config file, no secret.
fn machine(cluster: &Path, name: &str, runtime: &str, version: &str) -> Machine {
    let mut node = Node::new()
        .env("STANDIN_CLUSTER", &cluster.display().to_string())
        .env("STANDIN_JOIN_SERVICE", "1");
    if name == "m3" || name == "m4" {
        // Joining controllers hold the admission lease for a few seconds, so the two
        // joins overlap.
        node = node.env(
            "STANDIN_SLEEP",
            "k3s:server=3 k0s:controller=3 kubeadm:join=3",
        );
    }
    node.image(runtime, version);
    node.write("/proc/sys/kernel/hostname", &format!("{name}\n"));
    node.write(
        "/proc/net/route",
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         eth0\t00000000\tFE004E0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
    );
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

/// Kubernetes nodes and etcd members (a k0s controller without workloads is only the
/// latter), with their roles where they are nodes.
fn members(cluster: &Path) -> BTreeMap<String, String> {
    let state = cluster_state(cluster);
    let mut out = BTreeMap::new();
    if let Some(etcd) = state["etcd"].as_object() {
        for name in etcd.keys() {
            out.insert(name.clone(), "etcd member".to_owned());
        }
    }
    if let Some(nodes) = state["nodes"].as_object() {
        for (name, node) in nodes {
            out.insert(
                name.clone(),
                node["role"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    out
}

/// The controller joins m1's join service admitted, in order, from its log: a grant
/// (`join material for NAME … as a controller`) and a release per join.
fn admissions(log: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split(" info: join material for ").nth(1) {
            // "NAME (PEER) as a controller (N.N s)"
            if rest.contains(") as a controller") {
                out.push((rest.split(' ').next().unwrap().to_owned(), "granted"));
            }
        } else if line.ends_with("has joined the control plane; lease released") {
            let rest = line.split(" info: ").nth(1).unwrap_or_default();
            out.push((rest.split(' ').next().unwrap().to_owned(), "released"));
        }
    }
    out
}

struct Run {
    code: i32,
    out: String,
}

/// Runs one README line on its machine: stdin and stdout from and to the shared folder.
fn start(lab: &mut Lab, machines: &BTreeMap<&str, Machine>, shared: &Path, line: &Line, tag: &str) {
    let args: Vec<&str> = line.args.iter().map(String::as_str).collect();
    let mut cmd = lab.command(&line.machine, &machines[line.machine.as_str()].node, &args);
    match &line.stdin {
        Some(file) => cmd.stdin(fs::File::open(shared.join(file)).unwrap()),
        None => cmd.stdin(Stdio::null()),
    };
    let log = fs::File::create(lab.log(tag)).unwrap();
    match &line.stdout {
        Some(file) => cmd.stdout(fs::File::create(shared.join(file)).unwrap()),
        None => cmd.stdout(log.try_clone().unwrap()),
    };
    cmd.stderr(log);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{}: {e}", line.text));
    lab.adopt(tag, child);
}

fn finish(lab: &mut Lab, tag: &str) -> Run {
    let code = lab.wait(tag, Duration::from_secs(150));
    Run {
        code,
        out: lab.text(tag),
    }
}

fn bare_metal(runtime: &str, version: &str, tag_prefix: &str) {
    let tag = format!("{tag_prefix}{}", std::process::id());
    if let Some(why) = unsupported(&format!("{tag}-probe")) {
        println!("SKIPPED bare_metal ({runtime}): {why}");
        return;
    }
    let lines = readme_lines();
    let mut lab = Lab::new(&tag, OBSERVER, &MACHINES, false);
    let cluster = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let machines: BTreeMap<&str, Machine> = MACHINES
        .iter()
        .map(|(name, _)| (*name, machine(cluster.path(), name, runtime, version)))
        .collect();
    let fresh: BTreeMap<&str, BTreeSet<PathBuf>> = machines
        .iter()
        .map(|(name, m)| (*name, m.node.installed_files()))
        .collect();
    let join_service_log = |name: &str| {
        machines[name]
            .node
            .read("/.standin-systemd/bootstrap-join.service.log")
            .unwrap_or_default()
    };

    for (i, line) in lines.iter().enumerate() {
        let step = format!("{i}-{}", line.machine);
        let args: Vec<&str> = line.args.iter().map(String::as_str).collect();
        let is_up_join = args.contains(&"--join");
        let is_leave = args.contains(&"leave");

        if line.machine == "m2" && is_leave {
            // Cut off from every controller, the worker refuses to leave: the cluster
            // could not be told, so nothing on it changes.
            let before = machines["m2"].node.installed_files();
            lab.link("m2", false);
            start(
                &mut lab,
                &machines,
                shared.path(),
                line,
                &format!("{step}-cut"),
            );
            let cut = finish(&mut lab, &format!("{step}-cut"));
            lab.link("m2", true);
            assert_eq!(
                cut.code, 4,
                "{}: cut off, leave must refuse:\n{}",
                line.text, cut.out
            );
            assert!(
                cut.out.contains("was not taken out of the cluster")
                    && cut.out.contains("unreachable")
                    && cut.out.contains("--force"),
                "{}",
                cut.out
            );
            assert!(members(cluster.path()).contains_key("m2"), "{}", cut.out);
            let after = machines["m2"].node.installed_files();
            assert_eq!(before, after, "a refused leave changed files on m2");
        }

        if line.machine == "m3" && is_up_join {
            // A fourth machine joins as a controller at the same moment as m3, with a
            // line of its own: the two are admitted one after the other.
            let extra = Line {
                machine: "m1".into(),
                args: ["token", "create", "controller"].map(String::from).to_vec(),
                stdin: None,
                stdout: Some("m4.line".into()),
                text: "m1$ bootstrap token create controller > m4.line".into(),
            };
            start(&mut lab, &machines, shared.path(), &extra, "m4-line");
            let made = finish(&mut lab, "m4-line");
            assert_eq!(made.code, 0, "{}", made.out);
            let m4 = Line {
                machine: "m4".into(),
                stdin: Some("m4.line".into()),
                stdout: None,
                text: "m4$ bootstrap up --role controller --join - < m4.line".into(),
                ..line.clone()
            };
            start(&mut lab, &machines, shared.path(), &m4, "m4-up");
        }

        start(&mut lab, &machines, shared.path(), line, &step);
        let run = finish(&mut lab, &step);
        assert_eq!(
            run.code,
            0,
            "README line `{}` failed on {runtime}:\n{}\n{}",
            line.text,
            run.out,
            lab.dump()
        );

        if line.machine == "m1" && args.first() == Some(&"--role") {
            // `up` made the join service's secret and started the service.
            let secret = machines["m1"]
                .node
                .path("/var/lib/bootstrap/join/join-secret");
            let mode = fs::metadata(&secret)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", secret.display(), run.out))
                .permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
            assert!(
                run.out.contains("/var/lib/bootstrap/join/join-secret"),
                "up does not say where the secret is:\n{}",
                run.out
            );
            assert!(
                wait_until("m1's join service", Duration::from_secs(20), || {
                    join_service_log("m1").contains("listening on")
                }),
                "{}",
                join_service_log("m1")
            );
        }
        if line.machine == "m3" && is_up_join {
            let m4 = finish(&mut lab, "m4-up");
            assert_eq!(m4.code, 0, "m4's join:\n{}\n{}", m4.out, lab.dump());
            // Grants never overlap: each controller's lease is released before the
            // next is granted.
            let events = admissions(&join_service_log("m1"));
            let grants: Vec<&(String, &str)> =
                events.iter().filter(|(_, e)| *e == "granted").collect();
            assert!(grants.len() >= 2, "{events:?}");
            let mut holder: Option<&str> = None;
            for (node, event) in &events {
                match *event {
                    "granted" => {
                        assert!(
                            holder.is_none() || holder == Some(node.as_str()),
                            "{node} admitted while {holder:?} held the lease: {events:?}"
                        );
                        holder = Some(node);
                    }
                    _ => {
                        if holder == Some(node.as_str()) {
                            holder = None;
                        }
                    }
                }
            }
            assert_eq!(holder, None, "a lease is still held: {events:?}");
            // Each joined controller runs a join service of its own, with the cluster's
            // identity: it hands out lines too.
            for name in ["m3", "m4"] {
                assert!(
                    wait_until(
                        &format!("{name}'s join service"),
                        Duration::from_secs(20),
                        || { join_service_log(name).contains("listening on") }
                    ),
                    "{}",
                    join_service_log(name)
                );
            }
        }
    }

    // The cluster is m1 and m4; the worker and m3 are gone from it, and their machines
    // hold nothing bootstrap wrote.
    let state = members(cluster.path());
    assert!(
        state.contains_key("m1") && state.contains_key("m4"),
        "{state:?}"
    );
    assert!(
        !state.contains_key("m2") && !state.contains_key("m3"),
        "{state:?}"
    );
    for name in ["m2", "m3"] {
        let left = machines[name].node.installed_files();
        let extra: Vec<_> = left.difference(&fresh[name]).collect();
        assert!(extra.is_empty(), "{name} still holds {extra:?}");
    }
    // m2 left through a controller's join service: m1 or m4 logged it.
    assert!(
        ["m1", "m4"]
            .iter()
            .any(|m| join_service_log(m).contains("m2 (")
                && join_service_log(m).contains("left: cordoned, drained and deleted node m2")),
        "no join service removed m2:\n{}",
        lab.dump()
    );
    if std::env::var_os("BARE_METAL_VERBOSE").is_some() {
        eprintln!("{}", lab.dump());
        for m in ["m1", "m3", "m4"] {
            eprintln!("===== {m} join service\n{}", join_service_log(m));
        }
    }
}

#[test]
fn k3s_bare_metal_as_the_readme_says() {
    bare_metal("k3s", "v1.31.4+k3s1", "bmk3");
}

#[test]
fn k0s_bare_metal_as_the_readme_says() {
    bare_metal("k0s", "v1.31.4+k0s.0", "bmk0");
}

#[test]
fn kubeadm_bare_metal_as_the_readme_says() {
    bare_metal("kubernetes", "v1.31.4", "bmka");
}
