//! The join service end to end on loopback: a k3s controller's `bootstrap serve`, workers
//! that fetch their material with the join secret or with a manual join line, and the
//! refusals (wrong secret, tampered line) exiting 4 with their cause.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::Node;

const SECRET: &str =
    "bjs1-d20d8459b1ee670dc8f38e8a05bcc72e10c189c15317728ea4cb4abbb8e44c03-df6f2606";
const CONTROLLER: &str = "127.0.0.6";

/// Kills the join service when the test ends, however it ends.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(cluster: &std::path::Path, name: &str, config: &str) -> Node {
    let node = Node::new().env("STANDIN_CLUSTER", &cluster.display().to_string());
    node.write("/proc/sys/kernel/hostname", &format!("{name}\n"));
    node.config(config);
    node
}

/// A k3s controller that is up, with its join service answering on `port`.
fn controller(cluster: &std::path::Path, port: u16) -> (Node, Serve) {
    let a = node(
        cluster,
        "node-a",
        &format!(
            "node: {{name: node-a, address: {CONTROLLER}}}\npreflight: {{ignore: [address]}}\ncluster:\n  name: loopback\n  controllers: [{CONTROLLER}]\n  join_secret_file: /etc/bootstrap/join-secret\njoin: {{port: {port}}}\n"
        ),
    );
    a.write_mode("/etc/bootstrap/join-secret", &format!("{SECRET}\n"), 0o600);
    a.run(&["up"]).assert_code(0);
    let child = a
        .command(&["serve", "--listen", &format!("{CONTROLLER}:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let serve = Serve(child);
    // Bounded wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect((CONTROLLER, port)).is_err() {
        assert!(Instant::now() < deadline, "the join service did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (a, serve)
}

fn worker_config(port: u16, secret_file: bool) -> String {
    let mut config = format!(
        "role: worker\nnode: {{name: node-w, address: 10.0.0.20}}\npreflight: {{ignore: [address]}}\njoin: {{port: {port}, timeout: 20s}}\ncluster:\n  controllers: [{CONTROLLER}]\n"
    );
    if secret_file {
        config.push_str("  name: loopback\n  join_secret_file: /etc/bootstrap/join-secret\n");
    }
    config
}

fn joined(cluster: &std::path::Path, name: &str) -> bool {
    std::fs::read_to_string(cluster.join("cluster.json"))
        .unwrap_or_default()
        .contains(&format!("\"{name}\""))
}

#[test]
fn workers_fetch_material_with_the_secret_and_the_wrong_secret_exits_4() {
    let cluster = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let (_a, _serve) = controller(cluster.path(), port);

    let w = node(cluster.path(), "node-w", &worker_config(port, true));
    w.write_mode("/etc/bootstrap/join-secret", &format!("{SECRET}\n"), 0o600);
    let run = w.run(&["up"]);
    run.assert_code(0);
    assert!(joined(cluster.path(), "node-w"), "{}", run.all());
    let material = std::fs::metadata(w.path("/var/lib/bootstrap/join/material.json")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(material.permissions().mode() & 0o777, 0o600);
    assert!(run.stderr.contains("join material from"), "{}", run.all());

    let bad = node(
        cluster.path(),
        "node-x",
        &worker_config(port, true).replace("node-w", "node-x"),
    )
    .env("BOOTSTRAP_JOIN__TIMEOUT", "3s");
    bad.write_mode(
        "/etc/bootstrap/join-secret",
        "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b\n",
        0o600,
    );
    let run = bad.run(&["up"]);
    run.assert_code(4);
    assert!(
        run.stderr.contains("TLS") && run.stderr.contains("join secret"),
        "{}",
        run.all()
    );
    assert!(!joined(cluster.path(), "node-x"));
    assert!(!bad.exists("/var/lib/bootstrap/join-started"));
}

#[test]
fn a_manual_join_line_replaces_the_secret_on_the_new_node() {
    let cluster = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let (a, _serve) = controller(cluster.path(), port);
    // `--role` is this node's role; `token create` refuses it instead of turning the
    // controller into a worker (it once did), and says how to name the new node's.
    let run = a.run(&["token", "create", "--role", "worker"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("sets this node's role")
            && run.stderr.contains("bootstrap token create worker"),
        "{}",
        run.all()
    );
    // A lifetime under a second became a token that never expires (`0h0m0s`), and a
    // century was taken as asked: --ttl keeps to join.token_ttl's range.
    for ttl in ["500ms", "59s", "25h", "100y"] {
        let run = a.run(&["token", "create", "worker", "--ttl", ttl]);
        run.assert_code(2);
        assert!(
            run.stderr
                .contains(&format!("--ttl {ttl}: expected a duration from 1m to 24h")),
            "{}",
            run.all()
        );
        assert!(run.stdout.is_empty(), "a line was printed: {}", run.stdout);
    }
    let run = a.run(&["token", "create", "worker", "--ttl", "10m"]);
    run.assert_code(0);
    let line = run.stdout.trim().to_owned();
    assert!(line.starts_with("bootstrap-join://127.0.0.6:"), "{line}");
    let credential = line.split("credential=").nth(1).unwrap().to_owned();
    assert!(!run.stderr.contains(&credential), "credential in the log");

    // The new node knows nothing but the line: no controllers, no secret.
    let w = node(
        cluster.path(),
        "node-m",
        "node: {name: node-m, address: 10.0.0.21}\npreflight: {ignore: [address]}\njoin: {timeout: 20s}\n",
    );
    w.write_mode("/root/join-line", &format!("{line}\n"), 0o600);
    let run = w.run(&[
        "up",
        "--role",
        "worker",
        "--join",
        &w.path("/root/join-line").display().to_string(),
    ]);
    run.assert_code(0);
    assert!(joined(cluster.path(), "node-m"), "{}", run.all());
    for call in w.calls() {
        assert!(!call.contains(&credential), "credential on argv: {call}");
    }
    // Later runs without the line (after a reboot, say) see the configuration the line
    // gave, and find nothing to do.
    let again = w.run(&["up"]);
    again.assert_code(0);
    assert!(again.stderr.contains("nothing to do"), "{}", again.all());
    let status = w.run(&["status"]);
    status.assert_code(0);
    assert!(status.stdout.contains("worker"), "{}", status.all());
    // The line settled the cluster's name too (a controller joined this way serves with
    // keys salted with it).
    let manual: serde_json::Value =
        serde_json::from_str(&w.read("/var/lib/bootstrap/join/manual.json").unwrap()).unwrap();
    assert_eq!(manual["cluster"]["name"], "loopback", "{manual}");
    // A join line works once: `token list` shows it used, and another node with it is
    // refused.
    let listed = a.run(&["token", "list"]);
    listed.assert_code(0);
    let id = line
        .split("credential=")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let row = listed
        .stdout
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_default();
    assert!(
        row.contains("worker") && row.ends_with("yes"),
        "{}",
        listed.all()
    );
    assert!(
        !listed.stdout.contains(&credential),
        "a secret in token list"
    );
    let late = node(
        cluster.path(),
        "node-l",
        "node: {name: node-l, address: 10.0.0.25}\npreflight: {ignore: [address]}\njoin: {timeout: 3s}\n",
    );
    late.write_mode("/root/join-line", &format!("{line}\n"), 0o600);
    let run = late.run(&[
        "up",
        "--role",
        "worker",
        "--join",
        &late.path("/root/join-line").display().to_string(),
    ]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("has been used already"),
        "{}",
        run.all()
    );
    assert!(!joined(cluster.path(), "node-l"));
    // A revoked line is refused too.
    let revoked = a.run(&["token", "create", "worker", "--ttl", "10m"]);
    revoked.assert_code(0);
    let revoked_line = revoked.stdout.trim().to_owned();
    let revoked_id = revoked_line
        .split("credential=")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    a.run(&["token", "revoke", &revoked_id]).assert_code(0);
    a.run(&["token", "revoke", &revoked_id]).assert_code(1);
    late.write_mode("/root/join-line", &format!("{revoked_line}\n"), 0o600);
    let run = late.run(&[
        "up",
        "--role",
        "worker",
        "--join",
        &late.path("/root/join-line").display().to_string(),
    ]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(!joined(cluster.path(), "node-l"));

    // A node configured for another cluster refuses material for this one.
    let fresh = a.run(&["token", "create", "worker", "--ttl", "10m"]);
    fresh.assert_code(0);
    let x = node(
        cluster.path(),
        "node-x",
        "node: {name: node-x, address: 10.0.0.24}\npreflight: {ignore: [address]}\njoin: {timeout: 20s}\ncluster: {name: elsewhere}\n",
    );
    x.write_mode("/root/join-line", fresh.stdout.trim(), 0o600);
    let run = x.run(&[
        "up",
        "--role",
        "worker",
        "--join",
        &x.path("/root/join-line").display().to_string(),
    ]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains(
            r#"it is for cluster "loopback", but this node's cluster.name is "elsewhere""#
        ),
        "{}",
        run.all()
    );
    assert!(!joined(cluster.path(), "node-x"));

    // A line on standard input (`--join -`) works too: it is read once, though the
    // configuration and the join both need it.
    let second = a.run(&["token", "create", "worker", "--ttl", "10m"]);
    second.assert_code(0);
    let s = node(
        cluster.path(),
        "node-s",
        "node: {name: node-s, address: 10.0.0.23}\npreflight: {ignore: [address]}\njoin: {timeout: 20s}\n",
    );
    let mut child = s
        .command(&["up", "--role", "worker", "--join", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(second.stdout.as_bytes()).unwrap();
    }
    let run = common::to_run(child.wait_with_output().unwrap());
    run.assert_code(0);
    assert!(joined(cluster.path(), "node-s"), "{}", run.all());

    // The same line for a controller is refused; a line with another pin never trusts
    // the service.
    let run = w.run(&[
        "up",
        "--role",
        "controller",
        "--join",
        &w.path("/root/join-line").display().to_string(),
    ]);
    assert_ne!(run.code, 0, "{}", run.all());
    let tampered = node(
        cluster.path(),
        "node-t",
        "node: {name: node-t, address: 10.0.0.22}\npreflight: {ignore: [address]}\njoin: {timeout: 3s}\n",
    );
    let pin_start = line.find("pin=").unwrap() + 4;
    let mut bad = line.clone();
    let flipped = if &line[pin_start..pin_start + 1] == "0" {
        "1"
    } else {
        "0"
    };
    bad.replace_range(pin_start..pin_start + 1, flipped);
    tampered.write_mode("/root/join-line", &bad, 0o600);
    let run = tampered.run(&[
        "up",
        "--role",
        "worker",
        "--join",
        &tampered.path("/root/join-line").display().to_string(),
    ]);
    run.assert_code(4);
    assert!(run.stderr.contains("TLS"), "{}", run.all());
}
