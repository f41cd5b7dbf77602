//! The kube stand-ins (tests/standins/kube) on their own, called directly the way
//! bootstrap and the stand-in systemctl call them: they must behave like k3s and kubectl
//! where bootstrap depends on it, or the end-to-end tests prove nothing.

mod common;

use common::{standins, to_run, Node, Run};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const TOKEN_FILE: &str = "/etc/rancher/k3s/bootstrap-token";
const SERVER_TOKEN: &str = "/var/lib/rancher/k3s/server/token";
const SERVER_CA: &str = "/var/lib/rancher/k3s/server/tls/server-ca.crt";
const KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

/// A node with the k3s stand-in installed (as bootstrap installs it) and `cluster` as the
/// shared cluster directory.
fn k3s_node(hostname: &str, version: &str) -> Node {
    let node = Node::new();
    node.write("/proc/sys/kernel/hostname", &format!("{hostname}\n"));
    node.image("k3s", version);
    let launcher = node.read("/var/lib/bootstrap/rootfs/bin/k3s").unwrap();
    node.write_mode("/usr/local/bin/k3s", &launcher, 0o755);
    node
}

/// Runs `program` (a host path under the node, or a stand-in of tests/standins) with the
/// stand-in environment; `cluster` shares one fake cluster between nodes.
fn call(node: &Node, cluster: &Path, program: &str, args: &[&str]) -> Run {
    let path = if program.starts_with('/') {
        node.path(program)
    } else {
        standins().join(program)
    };
    let mut cmd = Command::new(path);
    for (k, _) in std::env::vars() {
        if k.starts_with("STANDIN_") || k == "KUBECONFIG" || k == "K3S_TOKEN" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .env("STANDIN_ROOT", node.root())
        .env("STANDIN_LOG", node.log_path())
        .env("STANDIN_LIB", standins())
        .env("STANDIN_CLUSTER", cluster)
        .stdin(Stdio::null())
        .output()
        .expect("run stand-in");
    to_run(out)
}

fn k3s(node: &Node, cluster: &Path, args: &[&str]) -> Run {
    call(node, cluster, "/usr/local/bin/k3s", args)
}

fn systemctl(node: &Node, cluster: &Path, args: &[&str]) -> Run {
    call(node, cluster, "systemctl", args)
}

fn unit(node: &Node, name: &str, command: &str) {
    node.write(
        &format!("/etc/systemd/system/{name}"),
        &format!("[Service]\nType=notify\nExecStart=/usr/local/bin/k3s {command}\n"),
    );
}

fn unit_log(node: &Node, name: &str) -> String {
    node.read(&format!("/.standin-systemd/{name}.log"))
        .unwrap_or_default()
}

/// The first server, up: cluster-init with a short token from token-file.
fn first_server(cluster: &Path) -> Node {
    let node = k3s_node("node-a", "v1.31.4+k3s1");
    node.write(
        "/etc/rancher/k3s/config.yaml",
        "# Written by bootstrap\ncluster-init: true\nnode-ip: 10.0.0.11\nnode-label:\n- tier=db\n\
         cluster-cidr: 10.244.0.0/16\ntoken-file: /etc/rancher/k3s/bootstrap-token\n\
         write-kubeconfig-mode: '0600'\n",
    );
    node.write(
        "/etc/rancher/k3s/config.yaml.d/50-registry.yaml",
        "disable-default-registry-endpoint: true\n",
    );
    node.write_mode(TOKEN_FILE, "0123456789abcdef0123456789abcdef\n", 0o600);
    unit(&node, "k3s.service", "server");
    systemctl(&node, cluster, &["restart", "--no-block", "k3s.service"]).assert_code(0);
    systemctl(&node, cluster, &["is-active", "--quiet", "k3s.service"]).assert_code(0);
    node
}

/// An agent configured to join with `token`.
fn agent(name: &str, token: &str) -> Node {
    let node = k3s_node(name, "v1.31.4+k3s1");
    node.write(
        "/etc/rancher/k3s/config.yaml",
        "node-ip: 10.0.0.21\nserver: https://10.0.0.11:6443\ntoken-file: /etc/rancher/k3s/bootstrap-token\n",
    );
    node.write_mode(TOKEN_FILE, &format!("{token}\n"), 0o600);
    unit(&node, "k3s-agent.service", "agent");
    node
}

#[test]
fn the_first_server_writes_a_token_that_pins_its_ca_file() {
    let cluster = tempfile::tempdir().unwrap();
    let node = first_server(cluster.path());
    let token = node.read(SERVER_TOKEN).unwrap();
    let ca = std::fs::read(node.path(SERVER_CA)).unwrap();
    let hash = hex::encode(Sha256::digest(&ca));
    assert_eq!(
        token.trim(),
        format!("K10{hash}::server:0123456789abcdef0123456789abcdef")
    );
    assert!(String::from_utf8_lossy(&ca).starts_with("-----BEGIN CERTIFICATE-----"));
    let mode = |p: &str| {
        std::fs::metadata(node.path(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(SERVER_TOKEN), 0o600);
    assert_eq!(mode(KUBECONFIG), 0o600);
    let link = std::fs::read_link(node.path("/var/lib/rancher/k3s/server/node-token")).unwrap();
    assert_eq!(link, Path::new("token"));
    assert!(node.exists("/var/lib/rancher/k3s/agent/kubelet.kubeconfig"));
    let ready = k3s(
        &node,
        cluster.path(),
        &[
            "kubectl",
            "--kubeconfig",
            KUBECONFIG,
            "get",
            "--raw",
            "/readyz",
        ],
    );
    ready.assert_code(0);
    assert_eq!(ready.stdout, "ok\n");
    assert!(
        node.calls().contains(&"k3s server".to_owned()),
        "{:?}",
        node.calls()
    );
    // Once stopped, the API is gone.
    systemctl(&node, cluster.path(), &["stop", "k3s.service"]).assert_code(0);
    let down = k3s(
        &node,
        cluster.path(),
        &[
            "kubectl",
            "--kubeconfig",
            KUBECONFIG,
            "get",
            "--raw",
            "/readyz",
        ],
    );
    down.assert_code(1);
    assert!(
        down.stderr.contains("127.0.0.1:6443 was refused"),
        "{}",
        down.stderr
    );
}

#[test]
fn an_agent_joins_with_a_bootstrap_token_and_not_with_a_wrong_ca_hash() {
    let cluster = tempfile::tempdir().unwrap();
    let server = first_server(cluster.path());
    let created = k3s(
        &server,
        cluster.path(),
        &[
            "token",
            "create",
            "--ttl",
            "1h0m0s",
            "--description",
            "bootstrap join",
        ],
    );
    created.assert_code(0);
    let token = created.stdout.trim().to_owned();
    let (_, cred) = token.split_once("::").unwrap();
    let wrong = format!("K10{}::{cred}", "a".repeat(64));

    let bad = agent("node-b", &wrong);
    let run = systemctl(&bad, cluster.path(), &["start", "k3s-agent.service"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("Job for k3s-agent.service failed"),
        "{}",
        run.stderr
    );
    systemctl(
        &bad,
        cluster.path(),
        &["is-failed", "--quiet", "k3s-agent.service"],
    )
    .assert_code(0);
    assert!(
        unit_log(&bad, "k3s-agent.service")
            .contains("token CA hash does not match the Cluster CA certificate hash"),
        "{}",
        unit_log(&bad, "k3s-agent.service")
    );
    // --no-block does not wait: the start "succeeds", the unit fails.
    systemctl(
        &bad,
        cluster.path(),
        &["start", "--no-block", "k3s-agent.service"],
    )
    .assert_code(0);
    let state = systemctl(&bad, cluster.path(), &["is-active", "k3s-agent.service"]);
    state.assert_code(3);
    assert_eq!(state.stdout, "failed\n");

    let good = agent("node-c", &token);
    systemctl(&good, cluster.path(), &["start", "k3s-agent.service"]).assert_code(0);
    assert!(good.exists("/var/lib/rancher/k3s/agent/kubelet.kubeconfig"));
    assert!(!good.exists(KUBECONFIG), "agents write no admin kubeconfig");
}

#[test]
fn a_token_on_the_command_line_is_refused() {
    let cluster = tempfile::tempdir().unwrap();
    let node = k3s_node("node-a", "v1.31.4+k3s1");
    for args in [
        &["server", "--token", "s3cret"][..],
        &["server", "--token=s3cret"],
        &[
            "agent",
            "-t",
            "s3cret",
            "--server",
            "https://10.0.0.11:6443",
        ],
    ] {
        let run = k3s(&node, cluster.path(), args);
        run.assert_code(1);
        assert!(
            run.stderr.contains("token on the command line"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // Nor in config.yaml: tokens come from token-file only.
    node.write(
        "/etc/rancher/k3s/config.yaml",
        "cluster-init: true\ntoken: s3cret\n",
    );
    let run = k3s(&node, cluster.path(), &["server"]);
    run.assert_code(1);
    assert!(run.stderr.contains("token-file"), "{}", run.stderr);
    // And a token file others can read is refused.
    node.write(
        "/etc/rancher/k3s/config.yaml",
        "cluster-init: true\ntoken-file: /etc/rancher/k3s/bootstrap-token\n",
    );
    node.write_mode(TOKEN_FILE, "0123456789abcdef\n", 0o644);
    let run = k3s(&node, cluster.path(), &["server"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("is readable by others"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_and_server_only_config_keys_are_refused() {
    let cluster = tempfile::tempdir().unwrap();
    let node = k3s_node("node-a", "v1.31.4+k3s1");
    node.write("/etc/rancher/k3s/config.yaml", "cluster-init: true\n");
    node.write(
        "/etc/rancher/k3s/config.yaml.d/90-x.yaml",
        "no-such-key: 1\n",
    );
    let run = k3s(&node, cluster.path(), &["server"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("unknown flag --no-such-key"),
        "{}",
        run.stderr
    );

    node.write("/etc/rancher/k3s/config.yaml", "node-ip: 10.0.0.21\n");
    node.write(
        "/etc/rancher/k3s/config.yaml.d/90-x.yaml",
        "tls-san: [10.0.0.100]\n",
    );
    let run = k3s(&node, cluster.path(), &["agent"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("unknown flag --tls-san"),
        "{}",
        run.stderr
    );

    let run = k3s(&node, cluster.path(), &["server", "--no-such-flag"]);
    run.assert_code(1);
    assert!(run.stderr.contains("--no-such-flag"), "{}", run.stderr);
    let run = k3s(&node, cluster.path(), &["bogus"]);
    run.assert_code(1);
    assert!(run.stderr.contains("Incorrect Usage"), "{}", run.stderr);
    let version = k3s(&node, cluster.path(), &["--version"]);
    version.assert_code(0);
    assert!(
        version.stdout.starts_with("k3s version v1.31.4+k3s1 ("),
        "{}",
        version.stdout
    );
}

#[test]
fn token_create_needs_a_running_server() {
    let cluster = tempfile::tempdir().unwrap();
    let node = k3s_node("node-a", "v1.31.4+k3s1");
    let run = k3s(&node, cluster.path(), &["token", "create", "--ttl", "1h"]);
    run.assert_code(1);
    assert!(run.stderr.contains("k3s is not running"), "{}", run.stderr);
}

fn kubectl(node: &Node, cluster: &Path, args: &[&str]) -> Run {
    let mut all = vec!["kubectl", "--kubeconfig", KUBECONFIG];
    all.extend_from_slice(args);
    k3s(node, cluster, &all)
}

#[test]
fn kubectl_lists_drains_and_deletes_nodes() {
    let cluster = tempfile::tempdir().unwrap();
    let server = first_server(cluster.path());
    let token = server.read(SERVER_TOKEN).unwrap();
    let worker = agent("node-b", token.trim());
    systemctl(&worker, cluster.path(), &["start", "k3s-agent.service"]).assert_code(0);
    let c = cluster.path();

    let names = kubectl(
        &server,
        c,
        &["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"],
    );
    names.assert_code(0);
    assert_eq!(names.stdout, "node-a node-b");
    let controllers = kubectl(
        &server,
        c,
        &[
            "get",
            "nodes",
            "-l",
            "node-role.kubernetes.io/control-plane",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    assert_eq!(controllers.stdout, "node-a");
    let versions = kubectl(
        &server,
        c,
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.nodeInfo.kubeletVersion}",
        ],
    );
    assert_eq!(versions.stdout, "v1.31.4+k3s1 v1.31.4+k3s1");
    let labelled = kubectl(&server, c, &["get", "nodes", "-l", "tier=db", "-o", "name"]);
    assert_eq!(labelled.stdout, "node/node-a\n");

    // kubectl refuses to drain without these flags: every node runs DaemonSet pods.
    let run = kubectl(&server, c, &["drain", "node-b", "--timeout", "30s"]);
    run.assert_code(1);
    assert!(run.stderr.contains("--ignore-daemonsets"), "{}", run.stderr);
    kubectl(
        &server,
        c,
        &[
            "drain",
            "node-b",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout",
            "30s",
        ],
    )
    .assert_code(0);
    let table = kubectl(&server, c, &["get", "nodes"]);
    assert!(
        table.stdout.contains("Ready,SchedulingDisabled"),
        "{}",
        table.stdout
    );
    let run = kubectl(&server, c, &["drain", "node-x", "--ignore-daemonsets"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains(r#"nodes "node-x" not found"#),
        "{}",
        run.stderr
    );
    let run = kubectl(&server, c, &["drain", "node-b", "--no-such-flag"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("error: unknown flag: --no-such-flag"),
        "{}",
        run.stderr
    );

    kubectl(
        &server,
        c,
        &["delete", "node", "node-b", "--timeout", "60s"],
    )
    .assert_code(0);
    let names = kubectl(
        &server,
        c,
        &["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"],
    );
    assert_eq!(names.stdout, "node-a");
    let run = kubectl(&server, c, &["delete", "node", "node-b"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains(r#"nodes "node-b" not found"#),
        "{}",
        run.stderr
    );

    // No kubeconfig: kubectl falls back to localhost:8080.
    let run = k3s(
        &server,
        c,
        &["kubectl", "--kubeconfig", "/nowhere", "get", "nodes"],
    );
    run.assert_code(1);
    assert!(
        run.stderr.contains("localhost:8080 was refused"),
        "{}",
        run.stderr
    );
}

#[test]
fn extra_servers_must_match_the_critical_config_and_upgrades_show() {
    let cluster = tempfile::tempdir().unwrap();
    let c = cluster.path();
    let first = first_server(c);
    let token = first.read(SERVER_TOKEN).unwrap();
    let extra = k3s_node("node-c", "v1.31.4+k3s1");
    extra.write(
        "/etc/rancher/k3s/config.yaml",
        "node-ip: 10.0.0.13\nserver: https://10.0.0.11:6443\ntoken-file: /etc/rancher/k3s/bootstrap-token\n",
    );
    extra.write_mode(TOKEN_FILE, &token, 0o600);
    unit(&extra, "k3s.service", "server");
    let run = systemctl(&extra, c, &["restart", "k3s.service"]);
    run.assert_code(1);
    assert!(
        unit_log(&extra, "k3s.service")
            .contains("critical configuration value mismatch between servers: cluster-cidr"),
        "{}",
        unit_log(&extra, "k3s.service")
    );
    extra.write(
        "/etc/rancher/k3s/config.yaml",
        "node-ip: 10.0.0.13\nserver: https://10.0.0.11:6443\ntoken-file: /etc/rancher/k3s/bootstrap-token\n\
         cluster-cidr: 10.244.0.0/16\n",
    );
    systemctl(&extra, c, &["restart", "k3s.service"]).assert_code(0);
    assert_eq!(extra.read(SERVER_TOKEN), first.read(SERVER_TOKEN));

    // A new binary and a restart: the node reports the new version.
    extra.image("k3s", "v1.32.1+k3s1");
    let launcher = extra.read("/var/lib/bootstrap/rootfs/bin/k3s").unwrap();
    extra.write_mode("/usr/local/bin/k3s", &launcher, 0o755);
    systemctl(&extra, c, &["restart", "k3s.service"]).assert_code(0);
    let versions = kubectl(
        &first,
        c,
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.nodeInfo.kubeletVersion}",
        ],
    );
    assert_eq!(versions.stdout, "v1.31.4+k3s1 v1.32.1+k3s1");
}
