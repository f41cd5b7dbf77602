//! `rootfs inspect` on folders and archives, and `up` unpacking `rootfs.archive`.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{to_run, Node, BIN};

fn tar_of(dir: &Path, out: &Path, flags: &[&str]) {
    let status = Command::new("tar")
        .args(flags)
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

/// A kubeadm image folder with images and a registry tree.
fn kubeadm_image(dir: &Path) {
    let w = |rel: &str, data: &[u8], mode: u32| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    w(
        "Metadata",
        format!(
            r#"{{"version":"v1.31.4","arch":"{}","ClusterRuntime":"kubernetes"}}"#,
            common::arch()
        )
        .as_bytes(),
        0o644,
    );
    for bin in ["kubeadm", "kubelet", "kubectl", "containerd"] {
        w(&format!("bin/{bin}"), b"#!/bin/sh\n", 0o755);
    }
    w("images/pause.tar", &[0u8; 2048], 0o644);
    w("images/coredns.tar.zst", &[0u8; 1024], 0o644);
    w(
        "registry/docker/registry/v2/repositories/library/nginx/_manifests/tags/1.25/current/link",
        b"sha256:00",
        0o644,
    );
    w(
        "registry/docker/registry/v2/repositories/pause/_manifests/tags/3.9/current/link",
        b"sha256:00",
        0o644,
    );
    w("manifests/calico.yaml", b"kind: List\n", 0o644);
}

#[test]
fn inspect_a_folder_and_the_same_image_as_an_archive() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    kubeadm_image(&img);
    let run = to_run(
        Command::new(BIN)
            .args(["rootfs", "inspect"])
            .arg(&img)
            .output()
            .unwrap(),
    );
    run.assert_code(0);
    assert!(
        run.stdout.contains("distro:     kubeadm v1.31.4"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("images:     2 archives"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("registry:   2 repositories: library/nginx, pause"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("problems:   none"), "{}", run.stdout);

    let archive = work.path().join("img.tar.zst");
    tar_of(&img, &archive, &["--zstd", "-cf"]);
    let run = to_run(
        Command::new(BIN)
            .args(["rootfs", "inspect", "--output", "json"])
            .arg(&archive)
            .output()
            .unwrap(),
    );
    run.assert_code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["format"], "tar+zstd");
    assert_eq!(json["distro"], "kubeadm");
    assert_eq!(json["images"]["count"], 2);
    assert_eq!(json["images"]["bytes"], 3072);
    assert_eq!(
        json["registry_repositories"],
        serde_json::json!(["library/nginx", "pause"])
    );
    assert_eq!(json["binaries"][0]["name"], "kubeadm");
    assert_eq!(json["problems"], serde_json::json!([]));
}

#[test]
fn inspect_names_what_is_missing() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    kubeadm_image(&img);
    fs::remove_file(img.join("bin/kubelet")).unwrap();
    let run = to_run(
        Command::new(BIN)
            .args(["rootfs", "inspect"])
            .arg(&img)
            .output()
            .unwrap(),
    );
    run.assert_code(1);
    assert!(
        run.stdout.contains("bin/kubelet is missing"),
        "{}",
        run.stdout
    );
}

#[test]
fn inspect_a_sealer_basefs_per_arch_image() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    let arch = common::arch();
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    for a in [arch, other] {
        fs::create_dir_all(img.join(a).join("bin")).unwrap();
        fs::write(
            img.join(a)
                .join("etc/Metadata")
                .parent()
                .map(|p| {
                    fs::create_dir_all(p).unwrap();
                    img.join(a).join("etc/Metadata")
                })
                .unwrap(),
            format!(r#"{{"version":"v1.22.15","arch":"{a}"}}"#),
        )
        .unwrap();
        for bin in ["kubeadm", "kubelet", "kubectl"] {
            let p = img.join(a).join("bin").join(bin);
            fs::write(&p, "#!").unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let inspect = || {
        to_run(
            Command::new(BIN)
                .args(["rootfs", "inspect", "--output", "json"])
                .arg(&img)
                .output()
                .unwrap(),
        )
    };
    // kubeadm runs the host's containerd: without one the image cannot come up.
    let run = inspect();
    run.assert_code(1);
    assert!(
        run.stdout.contains("no containerd for kubeadm"),
        "{}",
        run.stdout
    );
    // basefs ships it as a bundle beside the arch folders.
    fs::create_dir_all(img.join("cri")).unwrap();
    fs::write(img.join("cri/containerd.tar.gz"), "bundle").unwrap();
    let run = inspect();
    run.assert_code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["distro"], "kubeadm", "no ClusterRuntime means kubeadm");
    assert_eq!(json["metadata"], format!("{arch}/etc/Metadata"));
    assert_eq!(json["arch"], arch);
    assert_eq!(
        json["containerd"],
        "cri/containerd.tar.gz (containerd bundle)"
    );
}

/// A node whose cluster image comes as an archive at /images/k3s.tar.zst.
fn node_with_archive() -> (Node, String) {
    let node = Node::new();
    let staged = tempfile::tempdir().unwrap();
    let img = node.path("/var/lib/bootstrap/rootfs");
    for entry in fs::read_dir(&img).unwrap().flatten() {
        fs::rename(entry.path(), staged.path().join(entry.file_name())).unwrap();
    }
    fs::remove_dir(&img).unwrap();
    fs::create_dir_all(node.path("/images")).unwrap();
    let archive = node.path("/images/k3s.tar.zst");
    tar_of(staged.path(), &archive, &["--zstd", "-cf"]);
    let digest = sha256_file(&archive);
    (node, digest)
}

#[test]
fn up_unpacks_the_configured_archive_once() {
    let (node, digest) = node_with_archive();
    node.config(&format!(
        "rootfs:\n  archive: /images/k3s.tar.zst\n  sha256: {digest}\n"
    ));
    let plan = node.run(&["plan"]);
    plan.assert_code(0);
    assert!(
        plan.stdout.contains("distro:  k3s v1.31.4+k3s1"),
        "read from the archive: {}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(&format!(
            "unpack /images/k3s.tar.zst into /var/lib/bootstrap/rootfs (sha256 {})",
            &digest[..12]
        )),
        "{}",
        plan.stdout
    );
    assert!(
        !node.exists("/var/lib/bootstrap/rootfs"),
        "plan unpacked nothing"
    );

    node.run(&["up"]).assert_code(0);
    let link = fs::read_link(node.path("/var/lib/bootstrap/rootfs")).unwrap();
    assert!(
        link.starts_with("rootfs.versions"),
        "relative link, valid under any root: {link:?}"
    );
    assert!(node.exists("/var/lib/bootstrap/rootfs/bin/k3s"));

    let run = node.run(&["up"]);
    run.assert_code(0);
    assert!(run.stderr.contains("nothing to do"), "{}", run.stderr);
    let plan = node.run(&["plan"]);
    assert!(plan.stdout.contains("0 to apply"), "{}", plan.stdout);
}

#[test]
fn up_refuses_an_archive_whose_digest_differs_and_keeps_the_old_image() {
    let (node, _) = node_with_archive();
    fs::write(
        node.path("/images/k3s.tar.zst.sha256"),
        format!("{}  k3s.tar.zst\n", "ab".repeat(32)),
    )
    .unwrap();
    node.config("rootfs: {archive: /images/k3s.tar.zst}\n");
    let run = node.run(&["up"]);
    run.assert_code(1);
    assert!(run.stderr.contains("SHA-256"), "{}", run.stderr);
    assert!(run.stderr.contains("k3s.tar.zst.sha256"), "{}", run.stderr);
    assert!(!node.exists("/var/lib/bootstrap/rootfs"), "no half image");
    let failed = node.read("/var/lib/bootstrap/failed.json").unwrap();
    assert!(
        failed.contains("unpack:/var/lib/bootstrap/rootfs"),
        "{failed}"
    );
}
