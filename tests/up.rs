//! `up` end to end against a temp root with stand-ins: host preparation applied, the
//! journal resuming after a failure or a kill, nothing changed by a second run, one run at
//! a time, markers and the Cluster API sentinel, preflight's exit code, and `status --wait`.

mod common;

use std::time::{Duration, Instant};

use common::{Node, SECRET};

const MUTATING: [&str; 4] = ["modprobe", "sysctl", "swapoff", "systemctl mask"];

/// Calls that only ask (unit state, readiness), which every run makes to check its steps.
fn is_question(call: &str) -> bool {
    call.starts_with("systemctl is-") || call.contains("get --raw /readyz")
}

fn mutating_calls(node: &Node) -> Vec<String> {
    node.calls()
        .into_iter()
        .filter(|c| MUTATING.iter().any(|m| c.starts_with(m)))
        .collect()
}

#[test]
fn up_prepares_the_host_and_a_second_run_changes_nothing() {
    let node = Node::new();
    node.run(&["up"]).assert_code(0);
    assert_eq!(
        node.calls()[..3],
        vec![
            "modprobe overlay".to_owned(),
            "modprobe br_netfilter".to_owned(),
            format!(
                "sysctl -p {}",
                node.path("/etc/sysctl.d/90-bootstrap.conf").display()
            ),
        ]
    );
    // Then k3s: enabled, started without blocking on Type=notify, readiness polled.
    let rest: Vec<String> = node.calls()[3..]
        .iter()
        .filter(|c| !is_question(c))
        .cloned()
        .collect();
    assert_eq!(
        rest,
        [
            "systemctl daemon-reload",
            "systemctl enable k3s.service",
            "systemctl restart --no-block k3s.service",
            "k3s server",
            // Every controller runs the join service, so nodes can be added by hand later.
            "systemctl daemon-reload",
            "systemctl enable bootstrap-join.service",
            "systemctl start bootstrap-join.service",
            "systemctl restart --no-block bootstrap-join.service"
        ]
    );
    let modules = node.read("/etc/modules-load.d/bootstrap.conf").unwrap();
    assert!(modules.contains("overlay\nbr_netfilter\n"), "{modules}");
    let sysctl = node.read("/etc/sysctl.d/90-bootstrap.conf").unwrap();
    assert!(sysctl.contains("net.ipv4.ip_forward = 1"), "{sysctl}");
    assert_eq!(
        node.read("/proc/sys/net/ipv4/ip_forward").unwrap().trim(),
        "1"
    );
    assert!(node.exists("/var/lib/bootstrap/done.json"));
    assert!(!node.exists("/var/lib/bootstrap/failed.json"));
    let role = node.read("/var/lib/bootstrap/role.json").unwrap();
    assert!(role.contains("init-controller"), "{role}");

    let before = node.snapshot();
    let calls_before = node.calls().len();
    let run = node.run(&["up"]);
    run.assert_code(0);
    assert!(run.stderr.contains("nothing to do"), "{}", run.stderr);
    let again: Vec<String> = node.calls()[calls_before..]
        .iter()
        .filter(|c| !is_question(c))
        .cloned()
        .collect();
    assert!(again.is_empty(), "second run ran commands: {again:?}");
    let after = node.snapshot();
    // The lock file names whoever holds it; that is the one write a run always makes.
    let lock = std::path::Path::new("var/lib/bootstrap/lock");
    let changed: Vec<_> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k) && k.as_path() != lock)
        .collect();
    assert!(changed.is_empty(), "second run changed {changed:?}");
    assert_eq!(before.len(), after.len());
}

#[test]
fn drift_is_put_right_on_the_next_run() {
    let node = Node::new();
    node.run(&["up"]).assert_code(0);
    node.write(
        "/etc/sysctl.d/90-bootstrap.conf",
        "net.ipv4.ip_forward = 0\n",
    );
    node.write("/proc/sys/net/ipv4/ip_forward", "0\n");
    let calls = node.calls().len();
    node.run(&["up"]).assert_code(0);
    assert!(node
        .read("/etc/sysctl.d/90-bootstrap.conf")
        .unwrap()
        .contains("ip_forward = 1"));
    let new: Vec<_> = node.calls()[calls..]
        .iter()
        .filter(|c| !is_question(c))
        .cloned()
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].starts_with("sysctl -p"), "{new:?}");
}

#[test]
fn a_failed_step_is_recorded_and_the_next_run_resumes_there() {
    let node = Node::new().env("STANDIN_FAIL", "modprobe:br_netfilter");
    let run = node.run(&["up"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("run:modprobe br_netfilter"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Module br_netfilter not found"),
        "{}",
        run.stderr
    );
    let failed = node.read("/var/lib/bootstrap/failed.json").unwrap();
    assert!(
        failed.contains("\"step\": \"run:modprobe br_netfilter\""),
        "{failed}"
    );
    assert!(!node.exists("/var/lib/bootstrap/done.json"));
    assert!(
        !node.exists("/etc/sysctl.d/90-bootstrap.conf"),
        "stopped at the failed step"
    );

    let status = node.run(&["status", "--output", "json"]);
    status.assert_code(0);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["state"], "failed");
    assert_eq!(json["unfinished"]["id"], "run:modprobe br_netfilter");
    assert_eq!(json["failed"]["exit_code"], 1);

    let mut node = node;
    node.env.retain(|(k, _)| !k.starts_with("STANDIN_"));
    let calls = node.calls().len();
    node.run(&["up"]).assert_code(0);
    let new: Vec<_> = node.calls()[calls..].to_vec();
    assert_eq!(
        new[0], "modprobe br_netfilter",
        "resumes at the failed step: {new:?}"
    );
    assert!(
        !new.iter().any(|c| c == "modprobe overlay"),
        "done steps are not redone: {new:?}"
    );
    assert!(!node.exists("/var/lib/bootstrap/failed.json"));
    assert!(node.exists("/var/lib/bootstrap/done.json"));
    let status = node.run(&["status"]);
    assert!(status.stdout.contains("state:     up"), "{}", status.stdout);
}

#[test]
fn a_killed_run_resumes_at_the_step_it_was_in() {
    let node = Node::new().env("STANDIN_SLEEP", "modprobe:br_netfilter=30");
    let mut child = node.spawn(&["up"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.calls().iter().any(|c| c == "modprobe br_netfilter") {
        assert!(Instant::now() < deadline, "never reached the slow step");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let journal = node.read("/var/lib/bootstrap/journal.json").unwrap();
    let j: serde_json::Value = serde_json::from_str(&journal).unwrap();
    let entry = j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "run:modprobe br_netfilter")
        .unwrap();
    assert_eq!(entry["status"], "started", "{journal}");

    let mut node = node;
    node.env.retain(|(k, _)| !k.starts_with("STANDIN_"));
    let calls = node.calls().len();
    node.run(&["up"]).assert_code(0);
    let new: Vec<_> = node.calls()[calls..].to_vec();
    assert_eq!(
        new.first().map(String::as_str),
        Some("modprobe br_netfilter"),
        "{new:?}"
    );
    assert!(node.exists("/var/lib/bootstrap/done.json"));
}

#[test]
fn two_runs_at_once_one_waits_and_the_other_names_the_holder() {
    let node = Node::new().env("STANDIN_SLEEP", "modprobe:overlay=3");
    let mut first = node.spawn(&["up"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.calls().iter().any(|c| c == "modprobe overlay") {
        assert!(Instant::now() < deadline, "first run never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Same root, short lock wait: refused, naming the first run's pid.
    let run = common::to_run(
        node.command(&["up"])
            .env("BOOTSTRAP_LOCK_WAIT", "300ms")
            .env_remove("STANDIN_SLEEP")
            .output()
            .unwrap(),
    );
    run.assert_code(1);
    assert!(
        run.stderr.contains(&format!("pid {}", first.id())),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("bootstrap up"), "{}", run.stderr);
    // Same root, patient: waits for the first, then finds nothing to do.
    let patient = common::to_run(
        node.command(&["up"])
            .env("BOOTSTRAP_LOCK_WAIT", "60s")
            .env_remove("STANDIN_SLEEP")
            .output()
            .unwrap(),
    );
    let first_status = first.wait().unwrap();
    assert!(first_status.success());
    patient.assert_code(0);
    assert!(
        patient.stderr.contains("waiting up to"),
        "{}",
        patient.stderr
    );
    assert!(
        patient.stderr.contains("nothing to do"),
        "{}",
        patient.stderr
    );
    assert_eq!(mutating_calls(&node).len(), 3, "{:?}", node.calls());
}

#[test]
fn preflight_failure_exits_3_and_changes_nothing_but_the_failure_marker() {
    let node = Node::new();
    std::fs::remove_dir_all(node.path("/run/systemd")).unwrap();
    let run = node.run(&["up"]);
    run.assert_code(3);
    assert!(run.stderr.contains("systemd"), "{}", run.stderr);
    assert!(run.stderr.contains("--ignore-preflight"), "{}", run.stderr);
    assert!(node.calls().is_empty(), "{:?}", node.calls());
    assert!(!node.exists("/etc/sysctl.d/90-bootstrap.conf"));
    assert!(node
        .read("/var/lib/bootstrap/failed.json")
        .unwrap()
        .contains("\"exit_code\": 3"));
    node.run(&["preflight"]).assert_code(3);
    node.run(&["up", "--ignore-preflight", "systemd"])
        .assert_code(0);
}

#[test]
fn swap_is_turned_off_and_masked_for_kubeadm() {
    // containerd (a stand-in) really starts: kubeadm's plan waits for its socket.
    let node = Node::new().env("STANDIN_REAL_UNITS", "1");
    let _units = common::Units(&node);
    node.image("kubernetes", "v1.31.4");
    node.write(
        "/proc/swaps",
        "Filename\tType\tSize\tUsed\tPriority\n/dev/sda2 partition 2097148 0 -2\n/swap.img file 1048572 0 -3\n",
    );
    let plan = node.run(&["plan"]);
    plan.assert_code(0);
    assert!(plan.stdout.contains("fix     swap"), "{}", plan.stdout);
    node.run(&["up"]).assert_code(0);
    let calls = node.calls();
    assert!(calls.contains(&"swapoff -a".to_owned()), "{calls:?}");
    assert!(
        calls.contains(&"systemctl mask dev-sda2.swap".to_owned()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"systemctl mask swap.img.swap".to_owned()),
        "{calls:?}"
    );
    let before = mutating_calls(&node).len();
    node.run(&["up"]).assert_code(0);
    assert_eq!(mutating_calls(&node).len(), before, "{:?}", node.calls());
}

#[test]
fn cluster_api_sentinel_only_on_success() {
    let node = Node::new().env("STANDIN_FAIL", "modprobe:overlay");
    node.config("cluster_api_sentinel: true\n");
    node.run(&["up"]).assert_code(1);
    assert!(!node.exists("/run/cluster-api/bootstrap-success.complete"));
    let mut node = node;
    node.env.retain(|(k, _)| !k.starts_with("STANDIN_"));
    node.run(&["up"]).assert_code(0);
    assert!(node.exists("/run/cluster-api/bootstrap-success.complete"));
}

#[test]
fn the_role_is_persisted_and_a_joined_node_never_initialises() {
    // No join service answers on these loopback addresses: the worker gives up quickly.
    let node = Node::new()
        .env("BOOTSTRAP_JOIN__TIMEOUT", "1s")
        .env("BOOTSTRAP_JOIN__PORT", "9");
    node.write_mode("/etc/bootstrap/join-secret", &format!("{SECRET}\n"), 0o600);
    node.config(
        "cluster:\n  name: up-test\n  controllers: [127.0.0.2, 127.0.0.3]\n  join_secret_file: /etc/bootstrap/join-secret\n",
    );
    // A worker that gets no join material stops (exit 4) before changing the host, but
    // its role is decided and kept.
    let run = node.run(&["up"]);
    run.assert_code(4);
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
    let role = node.read("/var/lib/bootstrap/role.json").unwrap();
    assert!(role.contains("\"worker\""), "{role}");
    // The config now names this host first: it would initialise a second cluster.
    node.config(
        "cluster:\n  name: up-test\n  controllers: [node-1, 127.0.0.2]\n  join_secret_file: /etc/bootstrap/join-secret\n",
    );
    let run = node.run(&["up"]);
    run.assert_code(2);
    assert!(run.stderr.contains("never initialise"), "{}", run.stderr);
    let plan = node.run(&["plan"]);
    plan.assert_code(2);
    // Back to the old settings: no role conflict (only the join service is still missing).
    node.config(
        "cluster:\n  name: up-test\n  controllers: [127.0.0.2, 127.0.0.3]\n  join_secret_file: /etc/bootstrap/join-secret\n",
    );
    let run = node.run(&["up"]);
    run.assert_code(4);
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
}

#[test]
fn the_secret_never_leaks() {
    let node = Node::new().env("BOOTSTRAP_CLUSTER__JOIN_SECRET", SECRET);
    node.config("cluster:\n  name: up-test\n  controllers: [127.0.0.1]\n");
    let mut outputs = String::new();
    for args in [
        &["plan"][..],
        &["plan", "--output", "json"],
        &["plan", "--print-config"],
        &["preflight", "--output", "json"],
        &["-vv", "up"],
        &["--log-format", "json", "-vv", "up"],
        &["status"],
        &["status", "--output", "json"],
    ] {
        let run = node.run(args);
        assert!(run.code == 0, "{args:?}: {}", run.all());
        outputs.push_str(&run.all());
    }
    assert!(
        outputs.contains("<redacted>"),
        "print-config shows the secret redacted"
    );
    assert!(!outputs.contains(SECRET), "secret in output");
    assert!(!node.calls().join("\n").contains(SECRET), "secret in argv");
    let envs = node.call_envs();
    assert!(!envs.is_empty());
    assert!(!envs.contains(SECRET), "secret in a child's environment");
    assert!(
        !envs.contains("BOOTSTRAP_"),
        "bootstrap's environment leaked to a child"
    );
    assert!(
        !node.all_text(&[]).contains(SECRET),
        "secret in a file under the root"
    );
}

#[test]
fn the_secret_file_is_not_copied_or_shown() {
    // No join service answers on these loopback addresses: the worker gives up quickly.
    let node = Node::new()
        .env("BOOTSTRAP_JOIN__TIMEOUT", "1s")
        .env("BOOTSTRAP_JOIN__PORT", "9");
    node.write_mode("/etc/bootstrap/join-secret", &format!("{SECRET}\n"), 0o600);
    node.config(
        "cluster:\n  name: up-test\n  controllers: [127.0.0.1]\n  join_secret_file: /etc/bootstrap/join-secret\n",
    );
    let mut out = String::new();
    for args in [
        &["-vv", "up"][..],
        &["plan", "--print-config"],
        &["status", "--output", "json"],
    ] {
        let run = node.run(args);
        run.assert_code(0);
        out.push_str(&run.all());
    }
    assert!(!out.contains(SECRET));
    assert!(!node
        .all_text(&["/etc/bootstrap/join-secret"])
        .contains(SECRET));
}

#[test]
fn a_controller_without_a_secret_makes_one_that_passes_the_rule() {
    // Bare metal: `up` with nothing configured keeps its own join secret for its join
    // service. It is made as `bootstrap secret generate` makes one.
    let node = Node::new();
    node.run(&["up"]).assert_code(0);
    let kept = node.read("/var/lib/bootstrap/join/join-secret").unwrap();
    let kept = kept.trim_end();
    assert!(kept.starts_with("bjs1-") && kept.len() == 78, "{kept}");
    bootstrap::validate::join_secret(kept).unwrap();

    let generate = || node.run(&["secret", "generate"]);
    let first = generate();
    first.assert_code(0);
    let secret = first.stdout.trim_end();
    assert_eq!(first.stdout.lines().count(), 1, "{}", first.stdout);
    bootstrap::validate::join_secret(secret).unwrap();
    assert!(!first.stderr.contains(secret), "the secret is in the log");
    assert_ne!(generate().stdout, first.stdout);
    // What it prints is what a config takes.
    node.write_mode("/etc/bootstrap/join-secret", &first.stdout, 0o600);
    node.config("cluster: {name: generated, join_secret_file: /etc/bootstrap/join-secret}\n");
    node.run(&["plan"]).assert_code(0);
}

/// Reads a spawned command's exit code and output.
fn finish(child: std::process::Child) -> common::Run {
    let out = child.wait_with_output().unwrap();
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn status_wait_blocks_until_up_succeeds() {
    let node = Node::new().env("STANDIN_SLEEP", "modprobe:br_netfilter=2");
    // Started before `up`: it waits for a run to begin, then for it to end.
    let waiter = node.spawn(&["status", "--wait", "--timeout", "60s"]);
    std::thread::sleep(Duration::from_millis(700));
    let up = node.spawn(&["up"]);
    let waited = finish(waiter);
    let up = finish(up);
    up.assert_code(0);
    waited.assert_code(0);
    assert!(
        waited.stderr.contains("waiting for bootstrap up to start"),
        "{}",
        waited.stderr
    );
    assert!(
        waited.stderr.contains("bootstrap is running (pid")
            && waited.stderr.contains("now: run:modprobe br_netfilter"),
        "progress while it runs: {}",
        waited.stderr
    );
    assert!(waited.stdout.contains("state:     up"), "{}", waited.stdout);
    // Once up, it returns at once.
    let again = node.run(&["status", "--wait", "--output", "json"]);
    again.assert_code(0);
    let json: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(json["state"], "up");
}

#[test]
fn status_wait_exits_with_the_code_of_the_failed_up() {
    let node = Node::new();
    std::fs::remove_dir_all(node.path("/run/systemd")).unwrap();
    let waiter = node.spawn(&["status", "--wait", "--timeout", "60s"]);
    std::thread::sleep(Duration::from_millis(300));
    node.run(&["up"]).assert_code(3);
    let waited = finish(waiter);
    waited.assert_code(3);
    assert!(
        waited.stderr.contains("bootstrap up failed") && waited.stderr.contains("systemd"),
        "{}",
        waited.stderr
    );
    // A step failure keeps its own code, 1, and names the step.
    let node = Node::new().env("STANDIN_FAIL", "modprobe:br_netfilter");
    node.run(&["up"]).assert_code(1);
    let waited = node.run(&["status", "--wait"]);
    waited.assert_code(1);
    assert!(
        waited.stderr.contains("in step run:modprobe br_netfilter"),
        "{}",
        waited.stderr
    );
}

#[test]
fn status_wait_gives_up_after_its_timeout() {
    let node = Node::new();
    let start = Instant::now();
    let run = node.run(&["status", "--wait", "--timeout", "1s"]);
    run.assert_code(4);
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(
        run.stderr.contains("has not finished after 1s")
            && run.stderr.contains("waiting for bootstrap up to start"),
        "{}",
        run.stderr
    );
    assert!(
        !node.exists("/var/lib/bootstrap/lock"),
        "waiting writes nothing"
    );
    node.run(&["status", "--timeout", "1s"]).assert_code(2);
}
