//! Image baking: `up --stage install` puts binaries, units and the cluster image into a
//! tree without a role or a started service; the first boot's `up` repeats none of it.

mod common;

use common::Node;

fn bake_then_boot(runtime: &str, version: &str, archive: bool) {
    let node = Node::new();
    node.image(runtime, version);
    let mut socket = None;
    if runtime == "kubernetes" {
        let path = node.path("/run/containerd/containerd.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        socket = Some(std::os::unix::net::UnixListener::bind(&path).unwrap());
    }
    if archive {
        // The image ships as an archive beside the tree, as a VM-image build would have it.
        std::fs::create_dir_all(node.path("/opt")).unwrap();
        let status = std::process::Command::new("tar")
            .arg("-C")
            .arg(node.path("/var/lib/bootstrap/rootfs"))
            .arg("-cf")
            .arg(node.path("/opt/image.tar"))
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::remove_dir_all(node.path("/var/lib/bootstrap/rootfs")).unwrap();
        node.config("rootfs:\n  archive: /opt/image.tar\n");
    }

    let run = node.run(&["up", "--stage", "install"]);
    run.assert_code(0);
    assert!(
        node.exists("/var/lib/bootstrap/rootfs/Metadata"),
        "{}",
        run.all()
    );
    let binary = match runtime {
        "k3s" => "/usr/local/bin/k3s",
        "k0s" => "/usr/local/bin/k0s",
        _ => "/usr/local/bin/kubeadm",
    };
    assert!(node.exists(binary), "{}", run.all());
    // No role, no marker, nothing started or enabled.
    assert!(!node.exists("/var/lib/bootstrap/role.json"));
    assert!(!node.exists("/var/lib/bootstrap/done.json"));
    let service_calls: Vec<String> = node
        .calls()
        .into_iter()
        .filter(|c| {
            c.starts_with("systemctl")
                && ["start", "restart", "enable"]
                    .iter()
                    .any(|v| c.split_whitespace().nth(1) == Some(*v))
        })
        .collect();
    assert!(
        service_calls.is_empty(),
        "baking touched services: {service_calls:?}"
    );
    assert!(
        !node
            .calls()
            .iter()
            .any(|c| c.starts_with("modprobe") || c.starts_with("sysctl")),
        "baking changed the build machine's kernel: {:?}",
        node.calls()
    );
    // What the bake did, by step description (`[n/total] <step>` lines).
    let did = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter_map(|l| l.split_once("] ").map(|(_, step)| step.to_owned()))
            .collect()
    };
    let baked = did(&run.stderr);
    assert!(
        baked.iter().any(|s| s.starts_with("install ")),
        "{}",
        run.all()
    );

    // First boot: nothing the bake did is done again.
    let run = node.run(&["up"]);
    run.assert_code(0);
    let repeated: Vec<String> = did(&run.stderr)
        .into_iter()
        .filter(|step| baked.contains(step))
        .collect();
    assert!(
        repeated.is_empty(),
        "first boot repeated: {repeated:#?}\n{}",
        run.all()
    );
    assert!(node.exists("/var/lib/bootstrap/done.json"));
    drop(socket);
}

#[test]
fn k3s_bake_then_boot() {
    bake_then_boot("k3s", "v1.31.4+k3s1", false);
}

#[test]
fn k3s_bake_from_an_archive_then_boot() {
    bake_then_boot("k3s", "v1.31.4+k3s1", true);
}

#[test]
fn k0s_bake_then_boot() {
    bake_then_boot("k0s", "v1.31.4+k0s.0", false);
}

#[test]
fn kubeadm_bake_then_boot() {
    bake_then_boot("kubernetes", "v1.31.4", false);
}
