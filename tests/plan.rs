//! `plan` and friends: golden output for the example single-node cluster, nothing written,
//! and the README's first command working as documented.

mod common;

use std::path::{Path, PathBuf};

use common::{golden, Node};

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn facts(name: &str) -> PathBuf {
    manifest().join("tests/fixtures/facts").join(name)
}

/// Step ids keyed by content (`restart:x.service@1a2b3c4d5e6f`) hash freshly generated
/// certificates, so they differ on every run; the golden file keeps the shape.
fn without_content_keys(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let hex = rest.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        if hex == 12 {
            out.push_str("<digest>");
            rest = &rest[hex..];
        }
    }
    out.push_str(rest);
    out
}

/// A root holding a copy of the example single-node tree.
fn example_node() -> Node {
    let node = Node::bare();
    copy_tree(&manifest().join("examples/single-node"), node.root());
    node
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn plan_of_the_example_single_node_cluster() {
    let node = example_node();
    let facts = facts("node-1.json");
    let facts = facts.to_str().unwrap();
    let text = node.run(&["--facts", facts, "plan"]);
    text.assert_code(0);
    golden("plan-single-node.txt", &text.stdout);
    let json = node.run(&["--facts", facts, "plan", "--output", "json"]);
    json.assert_code(0);
    golden("plan-single-node.json", &without_content_keys(&json.stdout));
    let config = node.run(&["plan", "--print-config"]);
    config.assert_code(0);
    golden("config-single-node.yaml", &config.stdout);
}

#[test]
fn plan_changes_nothing() {
    let node = Node::new();
    let before = node.snapshot();
    node.run(&["plan"]).assert_code(0);
    node.run(&["plan", "--output", "json"]).assert_code(0);
    node.run(&["preflight"]).assert_code(0);
    node.run(&["status"]).assert_code(0);
    assert_eq!(before, node.snapshot());
    // Only read-only questions: is a unit enabled or active?
    let changing: Vec<String> = node
        .calls()
        .into_iter()
        .filter(|c| {
            !(c.starts_with("systemctl is-enabled") || c.starts_with("systemctl is-active"))
        })
        .collect();
    assert!(changing.is_empty(), "{changing:?}");
}

#[test]
fn plan_marks_steps_already_in_place() {
    let node = Node::new();
    node.run(&["up"]).assert_code(0);
    let run = node.run(&["plan"]);
    run.assert_code(0);
    assert!(run.stdout.contains(" steps, 0 to apply"), "{}", run.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&node.run(&["plan", "--output", "json"]).stdout).unwrap();
    for step in json["steps"].as_array().unwrap() {
        assert_eq!(step["status"], "done", "{step}");
    }
}

#[test]
fn status_of_a_fresh_node() {
    let node = Node::new();
    let run = node.run(&["status", "--output", "json"]);
    run.assert_code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["state"], "not set up");
    assert_eq!(json["distro"]["kind"], "k3s");
    assert!(json["role"].is_null());
}

#[test]
fn status_reports_a_broken_config_but_still_answers() {
    let node = Node::new();
    node.run(&["up"]).assert_code(0);
    node.config("role: boss\n");
    let run = node.run(&["status"]);
    run.assert_code(0);
    assert!(run.stdout.contains("state:     up"), "{}", run.stdout);
    assert!(
        run.stdout.contains("role: expected one of"),
        "{}",
        run.stdout
    );
}

#[test]
fn missing_or_bad_cluster_image_is_named() {
    let node = Node::new();
    std::fs::remove_file(node.path("/var/lib/bootstrap/rootfs/Metadata")).unwrap();
    let run = node.run(&["plan"]);
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("no cluster image at /var/lib/bootstrap/rootfs: no Metadata file"),
        "{}",
        run.stderr
    );
    node.write(
        "/var/lib/bootstrap/rootfs/Metadata",
        r#"{"ClusterRuntime":"rke2"}"#,
    );
    let run = node.run(&["plan"]);
    assert!(
        run.stderr.contains("k3s, k0s, k8s, kubernetes"),
        "{}",
        run.stderr
    );
}

#[test]
fn version_and_usage_errors() {
    let node = Node::bare();
    let run = node.run(&["version"]);
    run.assert_code(0);
    assert!(run.stdout.starts_with("bootstrap "), "{}", run.stdout);
    node.run(&["frobnicate"]).assert_code(2);
    let run = common::to_run(
        std::process::Command::new(common::BIN)
            .args(["--root", "/definitely/not/here", "plan"])
            .output()
            .unwrap(),
    );
    run.assert_code(2);
    assert!(
        run.stderr.contains("/definitely/not/here"),
        "{}",
        run.stderr
    );
}

#[test]
fn readme_first_command_works_from_a_clean_checkout() {
    let readme = std::fs::read_to_string(manifest().join("README.md")).unwrap();
    let line = "cargo run -- --root examples/single-node plan";
    assert!(readme.contains(line), "README must show `{line}`");
    let out = std::process::Command::new(common::BIN)
        .current_dir(manifest())
        .args(["--root", "examples/single-node", "plan"])
        .output()
        .unwrap();
    let run = common::to_run(out);
    run.assert_code(0);
    assert!(run.stdout.contains("k3s v1.31.4+k3s1"), "{}", run.stdout);
}

#[test]
fn registries_yaml_with_a_password_is_secret_in_the_plan() {
    const PASSWORD: &str = "pull-password-7c1e";
    let node = Node::new().with_registry();
    node.write_mode(
        "/etc/bootstrap/registry-password",
        &format!("{PASSWORD}\n"),
        0o600,
    );
    node.config("registry: {username: puller, password_file: /etc/bootstrap/registry-password}\n");
    let facts = facts("node-1.json");
    let run = node.run(&[
        "--facts",
        facts.to_str().unwrap(),
        "plan",
        "--output",
        "json",
    ]);
    run.assert_code(0);
    assert!(!run.all().contains(PASSWORD), "the password is shown");
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let steps = json["steps"].as_array().unwrap();
    let registries = steps
        .iter()
        .find(|s| s["path"] == "/etc/rancher/k3s/registries.yaml")
        .unwrap_or_else(|| panic!("no registries.yaml step: {}", run.stdout));
    let contents = &registries["contents"];
    assert_eq!(contents["secret"], true, "{registries}");
    assert!(
        !contents["sha256"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_hexdigit()),
        "a digest of the file is shown: {registries}"
    );
    // The text plan says so instead of a digest.
    let text = node.run(&["--facts", facts.to_str().unwrap(), "plan"]);
    text.assert_code(0);
    let line = text
        .stdout
        .lines()
        .find(|l| l.contains("write /etc/rancher/k3s/registries.yaml"))
        .unwrap_or_else(|| panic!("{}", text.stdout));
    assert!(
        line.contains("(0600, secret)") && !line.contains("sha256"),
        "{line}"
    );

    // Without credentials the file is public, digest and all.
    let plain = Node::new().with_registry();
    let run = plain.run(&[
        "--facts",
        facts.to_str().unwrap(),
        "plan",
        "--output",
        "json",
    ]);
    run.assert_code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let registries = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "/etc/rancher/k3s/registries.yaml")
        .unwrap()
        .clone();
    assert_eq!(registries["contents"]["secret"], false, "{registries}");
    assert_eq!(registries["contents"]["sha256"].as_str().unwrap().len(), 64);
}
