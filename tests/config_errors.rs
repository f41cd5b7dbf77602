//! Invalid configuration from file, environment and flags: each is refused with exit code
//! 2, an error naming the field (and where it came from), and nothing written under --root.

mod common;

use common::{Node, SECRET};

struct Case {
    name: &'static str,
    yaml: Option<&'static str>,
    env: &'static [(&'static str, &'static str)],
    flags: &'static [&'static str],
    /// Every one of these must appear in the error output.
    expect: &'static [&'static str],
}

const fn file(name: &'static str, yaml: &'static str, expect: &'static [&'static str]) -> Case {
    Case {
        name,
        yaml: Some(yaml),
        env: &[],
        flags: &[],
        expect,
    }
}

const fn env(
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
    expect: &'static [&'static str],
) -> Case {
    Case {
        name,
        yaml: None,
        env,
        flags: &[],
        expect,
    }
}

const fn flags(
    name: &'static str,
    flags: &'static [&'static str],
    expect: &'static [&'static str],
) -> Case {
    Case {
        name,
        yaml: None,
        env: &[],
        flags,
        expect,
    }
}

const SECRET_FILE: &str = "/etc/bootstrap/join-secret";

fn cases() -> Vec<Case> {
    vec![
        file("unknown role", "role: master\n", &["role", "auto, controller, worker", "master"]),
        file("bad node name", "node: {name: Node_1}\n", &["node.name", "RFC 1123", "Node_1"]),
        file("bad node address", "node: {address: 10.0.0.300}\n", &["node.address", "IP address", "10.0.0.300"]),
        file("bad label key", "node: {labels: {\"bad key!\": x}}\n", &["node.labels.bad key!", "Kubernetes key"]),
        file("bad label value", "node: {labels: {app: \"-web\"}}\n", &["node.labels.app", "label value", "-web"]),
        file("bad taint effect", "node: {taints: [\"gpu=true:Sometimes\"]}\n", &["node.taints[0]", "NoSchedule", "gpu=true:Sometimes"]),
        file("bad controller", "cluster: {name: c, controllers: [10.0.0.1, bad_host], join_secret_file: /etc/bootstrap/join-secret}\n", &["cluster.controllers[1]", "host name", "bad_host"]),
        file("duplicate controller", "cluster: {name: c, controllers: [10.0.0.1, 10.0.0.1], join_secret_file: /etc/bootstrap/join-secret}\n", &["cluster.controllers[1]", "listed twice"]),
        file("endpoint without port", "cluster: {endpoint: 10.0.0.1}\n", &["cluster.endpoint", "host:port", "10.0.0.1"]),
        file("cidr prefix too long", "cluster: {pod_cidr: 10.42.0.0/33}\n", &["cluster.pod_cidr", "CIDR", "10.42.0.0/33"]),
        file("overlapping cidrs", "cluster: {pod_cidr: 10.42.0.0/16, service_cidr: 10.42.128.0/17}\n", &["cluster.service_cidr", "overlaps", "10.42.0.0/16"]),
        file("cidr holds a node", "node: {address: 10.42.3.4}\ncluster: {pod_cidr: 10.42.0.0/16}\n", &["cluster.pod_cidr", "node.address 10.42.3.4"]),
        file("port out of range", "registry: {port: 70000}\n", &["registry.port", "70000"]),
        file("port taken by kubernetes", "registry: {port: 6443}\n", &["registry.port", "6443"]),
        file("join and registry share a port", "registry: {port: 7000}\njoin: {port: 7000}\n", &["join.port", "registry.port"]),
        file("bad duration", "join: {timeout: soon}\n", &["join.timeout", "duration", "soon"]),
        file("token ttl too long", "join: {token_ttl: 48h}\n", &["join.token_ttl", "1m to 24h"]),
        file("controllers without a secret", "cluster: {controllers: [10.0.0.1]}\n", &["cluster.join_secret_file", "needs a join secret"]),
        file("both secret forms", "cluster: {join_secret: SENTINEL-7f3a9c1e5b2d8f4a6c0e9b7d5f3a1c8e, join_secret_file: /etc/bootstrap/join-secret}\n", &["cluster.join_secret", "only one of"]),
        file("weak secret", "cluster: {name: c, join_secret: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}\n", &["cluster.join_secret", "128 bits of entropy", "bootstrap secret generate"]),
        file("short secret", "cluster: {name: c, join_secret: abc123}\n", &["cluster.join_secret", "128 bits"]),
        file("passphrase", "cluster: {name: c, join_secret: correct horse battery staple 2024}\n", &["cluster.join_secret", "128 bits"]),
        file("repeated words", "cluster: {name: c, join_secret: password password password password!}\n", &["cluster.join_secret", "128 bits"]),
        file("the secret once published", "cluster: {name: c, join_secret: 3f9c0d1e5b7a48c2e6d0f1a3b5c7e9d1f3a5b7c9e1d3f5a7b9c1e3d5f7a9b1c3}\n", &["cluster.join_secret", "example printed in bootstrap's README"]),
        file("the placeholder", "cluster: {name: c, join_secret: REPLACE-WITH-THE-OUTPUT-OF-bootstrap-secret-generate}\n", &["cluster.join_secret", "example printed"]),
        file("a generated secret with a typo", "cluster: {name: c, join_secret: bjs1-27c42150f3dbcf4ee0d3df01457f7b1133bd45ad135500a7e0ec278242c40598-20c955b4}\n", &["cluster.join_secret", "checksum does not match"]),
        file("a generated secret cut short", "cluster: {name: c, join_secret: bjs1-27c42150f3dbcf4ee0d3df01457f7b1133bd45ad135500a7e0ec278242c40599-20c955b}\n", &["cluster.join_secret", "bootstrap secret generate"]),
        file("weak secret in its file", "cluster: {name: c, join_secret_file: /etc/bootstrap/weak-secret}\n", &["cluster.join_secret_file", "/etc/bootstrap/weak-secret", "128 bits"]),
        file("a secret without a cluster name", "cluster: {join_secret_file: /etc/bootstrap/join-secret}\n", &["cluster.name", "needs a name"]),
        file("bad cluster name", "cluster: {name: Prod_1, join_secret_file: /etc/bootstrap/join-secret}\n", &["cluster.name", "RFC 1123", "Prod_1"]),
        file("secret file readable by others", "cluster: {join_secret_file: /etc/bootstrap/open-secret}\n", &["cluster.join_secret_file", "0644", "chmod 600"]),
        file("secret file missing", "cluster: {join_secret_file: /etc/bootstrap/nope}\n", &["cluster.join_secret_file", "/etc/bootstrap/nope", "does not exist"]),
        file("secret file relative", "cluster: {join_secret_file: join-secret}\n", &["cluster.join_secret_file", "absolute"]),
        file("bad sha256", "rootfs: {sha256: xyz}\n", &["rootfs.sha256", "64 hexadecimal", "xyz"]),
        file("relative rootfs dir", "rootfs: {dir: images/k3s}\n", &["rootfs.dir", "absolute"]),
        file("unknown top-level key", "nodes: {name: a}\n", &["nodes", "unknown key", "expected one of"]),
        file("unknown nested key", "cluster: {controler: [10.0.0.1]}\n", &["cluster.controler", "unknown key", "controllers"]),
        file("worker with no controllers", "role: worker\n", &["role", "needs a controller"]),
        file("unknown preflight check", "preflight: {ignore: [bogus]}\n", &["preflight.ignore[0]", "bogus", "swap"]),
        file("registry user without a password", "registry: {username: puller}\n", &["registry.password_file", "needs"]),
        file("registry password readable by others", "registry: {username: puller, password_file: /etc/bootstrap/open-secret}\n", &["registry.password_file", "0644"]),
        file("registry user name with a colon", "registry: {username: \"a:b\", password_file: /etc/bootstrap/join-secret}\n", &["registry.username", "a:b"]),
        file("bad registry domain", "registry: {domain: Sea_Hub}\n", &["registry.domain", "Sea_Hub"]),
        file("push without credentials", "registry: {push: {port: 5001}}\n", &["registry.push", "username"]),
        file("push with the pull password", "registry: {username: puller, password_file: /etc/bootstrap/registry-pw, push: {username: pusher, password_file: /etc/bootstrap/registry-pw}}\n", &["registry.push.password_file", "same password"]),
        file("push password readable by others", "registry: {push: {username: pusher, password_file: /etc/bootstrap/open-secret}}\n", &["registry.push.password_file", "0644"]),
        file("push without the registry", "registry: {enabled: false, push: {username: pusher, password_file: /etc/bootstrap/registry-pw}}\n", &["registry.push", "registry.enabled"]),
        file("push on the registry's port", "registry: {push: {username: pusher, password_file: /etc/bootstrap/registry-pw, port: 5000}}\n", &["registry.push.port", "already registry.port"]),
        file("wrong type", "cluster: {controllers: 10.0.0.1}\n", &["cluster.controllers", "sequence"]),
        file("not a mapping", "- role: controller\n", &["(top level)", "mapping"]),
        file("yaml syntax error", "node:\n  name: a\n   labels: {x: y}\n", &["config.yaml", "YAML syntax error at line 3, column"]),
        file("several errors at once", "node: {name: Bad_Name}\nregistry: {port: 0}\n", &["node.name", "registry.port"]),
        env("env: zero port", &[("BOOTSTRAP_JOIN__PORT", "0")], &["join.port", "BOOTSTRAP_JOIN__PORT"]),
        env("env: bad address", &[("BOOTSTRAP_NODE__ADDRESS", "nope")], &["node.address", "BOOTSTRAP_NODE__ADDRESS", "nope"]),
        env("env: unknown key", &[("BOOTSTRAP_NODEZ", "x")], &["nodez", "unknown key"]),
        env("env: host bits in cidr", &[("BOOTSTRAP_CLUSTER__SERVICE_CIDR", "10.96.0.1/12")], &["cluster.service_cidr", "host bits", "10.96.0.0/12", "BOOTSTRAP_CLUSTER__SERVICE_CIDR"]),
        env("env: weak secret", &[("BOOTSTRAP_CLUSTER__JOIN_SECRET", "passwordpasswordpasswordpassword")], &["cluster.join_secret", "BOOTSTRAP_CLUSTER__JOIN_SECRET"]),
        flags("flag: unknown role", &["--role", "boss"], &["--role", "boss"]),
        flags("flag: bad node name", &["--node-name", "UPPER"], &["node.name", "command-line flags", "UPPER"]),
        flags("flag: endpoint port zero", &["--endpoint", "10.0.0.1:0"], &["cluster.endpoint", "command-line flags"]),
        flags("flag: bad address", &["--node-address", "1.2.3"], &["--node-address", "1.2.3"]),
        flags("flag: unknown preflight check", &["--ignore-preflight", "bogus"], &["--ignore-preflight", "bogus"]),
        flags("flag: bad controller", &["--controller", "bad host", "--join-secret-file", SECRET_FILE], &["cluster.controllers[0]", "bad host"]),
        flags("flag: missing config file", &["--config", "/definitely/not/here.yaml"], &["/definitely/not/here.yaml"]),
    ]
}

#[test]
fn every_invalid_config_is_refused_before_anything_is_written() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in &cases {
        let mut node = Node::new().with_registry();
        node.write_mode(SECRET_FILE, &format!("{SECRET}\n"), 0o600);
        node.write_mode("/etc/bootstrap/open-secret", &format!("{SECRET}\n"), 0o644);
        node.write_mode("/etc/bootstrap/registry-pw", "registry-password-1\n", 0o600);
        node.write_mode(
            "/etc/bootstrap/weak-secret",
            "correct horse battery staple 2024\n",
            0o600,
        );
        if let Some(yaml) = case.yaml {
            node.config(yaml);
        }
        for (k, v) in case.env {
            node = node.env(k, v);
        }
        let before = node.snapshot();
        let mut args = vec!["up"];
        args.extend_from_slice(case.flags);
        let run = node.run(&args);
        let after = node.snapshot();
        let output = run.all();
        let mut problems = Vec::new();
        if run.code != 2 {
            problems.push(format!("exit code {} (want 2)", run.code));
        }
        for want in case.expect {
            if !output.contains(want) {
                problems.push(format!("output lacks {want:?}"));
            }
        }
        // A refused secret is never repeated back.
        if let Some(secret) = case
            .yaml
            .and_then(|y| y.split("join_secret: ").nth(1))
            .and_then(|rest| rest.split(['}', ',']).next())
        {
            if output.contains(secret) {
                problems.push("the secret is in the output".to_owned());
            }
        }
        if before != after {
            let changed: Vec<_> = after
                .keys()
                .filter(|k| before.get(*k) != after.get(*k))
                .collect();
            problems.push(format!("files changed under --root: {changed:?}"));
        }
        if !node.calls().is_empty() {
            problems.push(format!("commands were run: {:?}", node.calls()));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "[{}] {}\n    output: {}",
                case.name,
                problems.join("; "),
                output.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn an_empty_config_is_a_single_node_cluster() {
    let node = Node::new();
    node.config("");
    let run = node.run(&["plan"]);
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("no controllers listed: a single-node cluster"),
        "{}",
        run.stdout
    );
}

#[test]
fn later_layers_win_file_then_env_then_flags() {
    let node = Node::new()
        .env("BOOTSTRAP_NODE__NAME", "from-env")
        .env("BOOTSTRAP_REGISTRY__PORT", "5001");
    node.config("node: {name: from-file}\nregistry: {port: 5002, domain: hub.local}\n");
    let run = node.run(&["plan", "--print-config"]);
    run.assert_code(0);
    assert!(run.stdout.contains("name: from-env"), "{}", run.stdout);
    assert!(run.stdout.contains("port: 5001"), "{}", run.stdout);
    assert!(run.stdout.contains("domain: hub.local"), "{}", run.stdout);
    let run = node.run(&["plan", "--print-config", "--node-name", "from-flag"]);
    assert!(run.stdout.contains("name: from-flag"), "{}", run.stdout);
}
