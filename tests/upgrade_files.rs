//! `bootstrap upgrade` writes the node's version-dependent files before the new binary
//! starts: a k0s node with the local registry (Debian's distribution registry, run for
//! real by the stand-in systemctl) moves from 1.35 to 1.36, across the containerd drop-in's
//! config version (2 before 1.36, 3 from it), and the k0s stand-in refuses to start with a
//! drop-in of the wrong version — as k0s's containerd does. Needs root for the registry's
//! private mount namespace (CI runs as root).

mod common;

use std::fs;

use common::{Node, Units};

const OLD: &str = "v1.35.2+k0s.0";
const NEW: &str = "v1.36.3+k0s.0";
const DROPIN: &str = "/etc/k0s/containerd.d/bootstrap-registry.toml";

/// The real registry binary as the cluster image's `bin/registry` under `image`.
fn real_registry(node: &Node, image: &str) {
    let dest = node.path(&format!("{image}/bin/registry"));
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::copy("/usr/bin/docker-registry", &dest)
        .unwrap_or_else(|e| panic!("/usr/bin/docker-registry: {e} (scripts/test.sh installs it)"));
}

fn dropin_version(node: &Node) -> Option<i64> {
    let text = node.read(DROPIN)?;
    let doc: toml::Value = toml::from_str(&text).unwrap();
    doc["version"].as_integer()
}

#[test]
fn k0s_starts_on_the_new_binary_with_a_drop_in_written_for_it() {
    if !common::is_root() {
        println!("SKIPPED upgrade_files: the registry runs in a private mount namespace, which needs root (CI runs as root)");
        return;
    }
    let node = Node::new()
        .with_registry()
        .env("STANDIN_REAL_UNITS", "bootstrap-registry.service");
    let _units = Units(&node);
    node.image("k0s", OLD);
    real_registry(&node, "/var/lib/bootstrap/rootfs");
    node.write("/etc/hosts", "127.0.0.1 localhost\n");
    node.config(&format!(
        "node: {{address: 127.0.0.1}}\nregistry: {{port: {}}}\n",
        common::free_port()
    ));
    node.run(&["up"]).assert_code(0);
    assert_eq!(
        dropin_version(&node),
        Some(2),
        "k0s 1.35 runs containerd 1.7"
    );

    // The next minor, as a second cluster image folder.
    node.image_in("k0s", NEW, "/opt/images/next");
    real_registry(&node, "/opt/images/next");

    let run = node.run(&["upgrade", "--rootfs", "/opt/images/next"]);
    run.assert_code(0);
    assert_eq!(dropin_version(&node), Some(3), "k0s 1.36 runs containerd 2");
    let unit_log = node
        .read("/.standin-systemd/k0scontroller.service.log")
        .unwrap_or_default();
    assert!(
        !unit_log.contains("is not supported by k0s"),
        "k0s started with a drop-in of the old version:\n{unit_log}"
    );
    // The binary stopped, then the drop-in moved, then the new binary started.
    let calls = node.calls().join("\n");
    let stop = calls.find("k0s stop").expect("k0s stopped");
    let start = calls[stop..].find("k0s start").expect("k0s started again");
    assert!(start > 0, "{calls}");
    // Re-running is a no-op.
    let run = node.run(&["up"]);
    run.assert_code(0);
    assert!(run.stderr.contains("nothing to do"), "{}", run.all());
}
