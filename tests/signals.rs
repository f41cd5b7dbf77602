//! SIGTERM and SIGINT during `up` and `reset`: bootstrap stops at the next safe point
//! with exit code 128 + the signal's number, the journal consistent and the failure
//! marker naming the signal; a command in flight is stopped with everything it started;
//! the next run finishes with what an uninterrupted one leaves.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{standin_processes, Node};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Whether one of them is the `sleep` a stand-in started (STANDIN_SLEEP).
fn sleeping(node: &Node, except: u32) -> bool {
    standin_processes(node, except).iter().any(|pid| {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A step id without the fingerprint some carry (`restart:k3s.service@5cc07df3ea90`):
/// it covers a random token, different on every node.
fn unkeyed(id: String) -> String {
    match id.split_once('@') {
        Some((id, _)) => id.to_owned(),
        None => id,
    }
}

/// The journal's entries as (id, status, note).
fn journal(node: &Node) -> Vec<(String, String, String)> {
    let text = node.read("/var/lib/bootstrap/journal.json").unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Calls that change something, with the node's root path taken out.
fn changes(node: &Node) -> Vec<String> {
    let root = node.root().display().to_string();
    node.calls()
        .into_iter()
        .filter(|c| !c.starts_with("systemctl is-") && !c.contains("get --raw /readyz"))
        .map(|c| c.replace(&root, "ROOT"))
        .collect()
}

/// What an uninterrupted `up` leaves and asks for.
fn reference() -> (BTreeSet<PathBuf>, Vec<String>, Vec<String>) {
    let node = Node::new();
    node.run(&["up"]).assert_code(0);
    let ids = journal(&node).into_iter().map(|e| unkeyed(e.0)).collect();
    (node.installed_files(), changes(&node), ids)
}

fn finish(child: std::process::Child) -> common::Run {
    common::to_run(child.wait_with_output().unwrap())
}

/// The marker after a stopped run.
fn marker(node: &Node) -> serde_json::Value {
    serde_json::from_str(&node.read("/var/lib/bootstrap/failed.json").unwrap()).unwrap()
}

/// A second `up` finishes, and the node ends as an uninterrupted run leaves one.
fn rerun_converges(node: Node, repeated: &str) {
    let mut node = node;
    node.env.retain(|(k, _)| !k.starts_with("STANDIN_"));
    node.run(&["up"]).assert_code(0);
    assert!(!node.exists("/var/lib/bootstrap/failed.json"));
    assert!(node.exists("/var/lib/bootstrap/done.json"));
    let entries = journal(&node);
    assert!(
        entries.iter().all(|e| e.1 == "done"),
        "journal after the re-run: {entries:?}"
    );
    let (files, calls, ids) = reference();
    assert_eq!(node.installed_files(), files);
    let ours: Vec<String> = entries.into_iter().map(|e| unkeyed(e.0)).collect();
    assert_eq!(ours, ids);
    // The step the signal cut short ran again; nothing else did.
    let mut once = changes(&node);
    let first = once.iter().position(|c| c == repeated).unwrap();
    once.remove(first);
    assert_eq!(once, calls);
}

/// A signal while a command runs: the command and its own child are stopped, the step is
/// journaled as stopped, the marker names the signal.
fn stopped_mid_command(signal: Signal, code: i32) {
    let node = Node::new().env("STANDIN_SLEEP", "modprobe:br_netfilter=60");
    let child = node.spawn(&["up"]);
    let pid = child.id();
    // The stand-in (bash) and the `sleep` it started.
    wait_until("the slow step runs with a child of its own", || {
        node.calls().iter().any(|c| c == "modprobe br_netfilter") && sleeping(&node, pid)
    });
    let started = Instant::now();
    kill(Pid::from_raw(pid as i32), signal).unwrap();
    let run = finish(child);
    run.assert_code(code);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?} to stop",
        started.elapsed()
    );
    assert!(
        run.stderr.contains(&format!(
            "stopped by {} in step run:modprobe br_netfilter",
            signal.as_str()
        )),
        "{}",
        run.stderr
    );
    let left = standin_processes(&node, pid);
    assert!(left.is_empty(), "still running: {left:?}");

    let m = marker(&node);
    assert_eq!(m["signal"], signal.as_str(), "{m}");
    assert_eq!(m["exit_code"], code, "{m}");
    assert_eq!(m["step"], "run:modprobe br_netfilter", "{m}");
    let entries = journal(&node);
    let (last, done) = entries.split_last().unwrap();
    assert!(done.iter().all(|e| e.1 == "done"), "{entries:?}");
    assert_eq!(last.0, "run:modprobe br_netfilter", "{entries:?}");
    assert_eq!(last.1, "failed", "{entries:?}");
    assert!(last.2.contains(signal.as_str()), "{entries:?}");
    assert!(!node.exists("/var/lib/bootstrap/done.json"));

    let status = node.run(&["status", "--output", "json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["state"], "failed");
    assert_eq!(json["failed"]["signal"], signal.as_str());

    rerun_converges(node, "modprobe br_netfilter");
}

#[test]
fn sigterm_stops_the_command_in_flight_with_its_group_and_up_resumes() {
    stopped_mid_command(Signal::SIGTERM, 143);
}

#[test]
fn sigint_stops_the_command_in_flight_with_its_group_and_up_resumes() {
    stopped_mid_command(Signal::SIGINT, 130);
}

/// A signal while a command is about to finish: the command completes (it ignores the
/// SIGTERM passed on to it), its step is journaled done, and `up` stops before the next.
fn stopped_between_steps(signal: Signal, code: i32) {
    let node = Node::new().env(
        "STANDIN_SIGNAL_PARENT",
        &format!("modprobe:overlay={}", &signal.as_str()[3..]),
    );
    let run = node.run(&["up"]);
    run.assert_code(code);
    assert!(
        run.stderr.contains(&format!(
            "stopped by {} before step run:modprobe br_netfilter",
            signal.as_str()
        )),
        "{}",
        run.stderr
    );
    assert!(node.read("/proc/modules").unwrap().contains("overlay"));
    assert!(!node.calls().iter().any(|c| c == "modprobe br_netfilter"));
    let entries = journal(&node);
    assert!(entries.iter().all(|e| e.1 == "done"), "{entries:?}");
    assert_eq!(entries.last().unwrap().0, "run:modprobe overlay");
    let m = marker(&node);
    assert_eq!(m["signal"], signal.as_str(), "{m}");
    assert_eq!(m["exit_code"], code, "{m}");
    assert_eq!(m["step"], "run:modprobe br_netfilter", "{m}");

    let mut node = node;
    node.env.retain(|(k, _)| !k.starts_with("STANDIN_"));
    let before = node.calls().len();
    node.run(&["up"]).assert_code(0);
    assert_eq!(node.calls()[before], "modprobe br_netfilter");
    assert!(!node.calls()[before..].contains(&"modprobe overlay".to_owned()));
    let (files, _, ids) = reference();
    assert_eq!(node.installed_files(), files);
    let ours: Vec<String> = journal(&node).into_iter().map(|e| unkeyed(e.0)).collect();
    assert_eq!(ours, ids);
}

#[test]
fn sigterm_between_steps_lets_the_step_finish_and_stops_before_the_next() {
    stopped_between_steps(Signal::SIGTERM, 143);
}

#[test]
fn sigint_between_steps_lets_the_step_finish_and_stops_before_the_next() {
    stopped_between_steps(Signal::SIGINT, 130);
}

#[test]
fn sigterm_during_reset_stops_it_and_a_second_reset_finishes() {
    let node = Node::new();
    node.run(&["up"]).assert_code(0);
    let node = node.env("STANDIN_SLEEP", "systemctl:k3s.service=60");
    let child = node.spawn(&["reset"]);
    let pid = child.id();
    wait_until("reset stops k3s", || sleeping(&node, pid));
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let run = finish(child);
    run.assert_code(143);
    assert!(run.stderr.contains("stopped by SIGTERM"), "{}", run.stderr);
    assert!(standin_processes(&node, pid).is_empty());
    let mut node = node;
    node.env.retain(|(k, _)| !k.starts_with("STANDIN_"));
    node.run(&["reset"]).assert_code(0);
    assert!(!node.exists("/var/lib/bootstrap/journal.json"));
    assert!(!node.exists("/etc/sysctl.d/90-bootstrap.conf"));
}

#[test]
fn sigterm_while_a_joiner_waits_for_material_stops_it_at_once() {
    // No join service answers on these loopback addresses: the worker keeps asking.
    let node = Node::new()
        .env("BOOTSTRAP_JOIN__TIMEOUT", "10m")
        .env("BOOTSTRAP_JOIN__PORT", "9");
    node.write_mode(
        "/etc/bootstrap/join-secret",
        &format!("{}\n", common::SECRET),
        0o600,
    );
    node.config(
        "cluster:\n  name: sig-test\n  controllers: [127.0.0.2]\n  join_secret_file: /etc/bootstrap/join-secret\n",
    );
    let child = node.spawn(&["up"]);
    wait_until("the role is decided", || {
        node.exists("/var/lib/bootstrap/role.json")
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let run = finish(child);
    run.assert_code(143);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        run.stderr
            .contains("stopped by SIGTERM while asking the controllers for join material"),
        "{}",
        run.stderr
    );
    assert_eq!(marker(&node)["signal"], "SIGTERM");
}

#[test]
fn sigterm_during_upgrade_stops_it_and_the_next_upgrade_finishes() {
    let node = Node::new();
    node.run(&["up"]).assert_code(0);
    node.image_in("k3s", "v1.32.0+k3s1", "/opt/images/next");
    // The restart of k3s on its new binary hangs until stopped.
    let node = node.env("STANDIN_SLEEP", "systemctl:--no-block=60");
    let child = node.spawn(&["upgrade", "--rootfs", "/opt/images/next"]);
    let pid = child.id();
    wait_until("k3s restarts", || sleeping(&node, pid));
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let run = finish(child);
    run.assert_code(143);
    assert!(standin_processes(&node, pid).is_empty());
    let m = marker(&node);
    assert_eq!(m["signal"], "SIGTERM", "{m}");
    assert!(
        m["step"]
            .as_str()
            .unwrap()
            .starts_with("restart:k3s.service"),
        "{m}"
    );
    let entries = journal(&node);
    let stopped = entries
        .iter()
        .find(|e| e.1 != "done")
        .expect("the stopped step");
    assert!(stopped.0.starts_with("restart:k3s.service"), "{entries:?}");
    assert!(stopped.2.contains("SIGTERM"), "{entries:?}");

    let mut node = node;
    node.env.retain(|(k, _)| !k.starts_with("STANDIN_"));
    node.run(&["upgrade", "--rootfs", "/opt/images/next"])
        .assert_code(0);
    let done = node.read("/var/lib/bootstrap/done.json").unwrap();
    assert!(done.contains("v1.32.0+k3s1"), "{done}");
    assert!(!node.exists("/var/lib/bootstrap/failed.json"));
}
