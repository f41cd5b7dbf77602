//! The real thing, on one machine: `bootstrap up` for a kubeadm cluster image writes the
//! registry and containerd units; a stand-in `systemctl` starts their real `ExecStart`
//! lines (Debian's distribution registry and containerd, in a private mount namespace over
//! the temp root); bootstrap seeds two images built here; then the real containerd pulls
//! one by an upstream-looking name through the generated mirror config and CA, and
//! `ctr run` prints what the image's binary says. Needs root (CI runs as root).

mod common;

#[path = "seed_support/archives.rs"]
mod archives;

use std::fs;
use std::process::Command;

use archives::{docker_save, oci_layout, tar, TestImage};
use common::{Node, Units};

fn install(node: &Node, at: &str, from: &str) {
    let dest = node.path(at);
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::copy(from, &dest).unwrap_or_else(|e| panic!("{from}: {e} (scripts/test.sh installs it)"));
}

/// A layer holding a static busybox at /bin/busybox.
fn busybox_layer() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox")
        .expect("/bin/busybox (busybox-static; scripts/test.sh installs it)");
    let mut builder = ::tar::Builder::new(Vec::new());
    let mut dir = ::tar::Header::new_gnu();
    dir.set_entry_type(::tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "bin", std::io::empty())
        .unwrap();
    let mut h = ::tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    builder
        .append_data(&mut h, "bin/busybox", &busybox[..])
        .unwrap();
    builder.into_inner().unwrap()
}

fn in_namespace_of(node: &Node, unit: &str, args: &[&str]) -> std::process::Output {
    let pid = fs::read_to_string(node.path(&format!("/.standin-systemd/pids/{unit}"))).unwrap();
    Command::new("timeout")
        .arg("120")
        .arg("nsenter")
        .arg(format!("--mount=/proc/{}/ns/mnt", pid.trim()))
        .arg("--")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn containerd_pulls_seeded_images_through_the_mirror_and_runs_them() {
    assert!(
        common::is_root(),
        "this test starts containerd and the registry, which needs root (CI runs as root)"
    );
    let node = Node::new().with_registry().env("STANDIN_REAL_UNITS", "1");
    let _units = Units(&node);
    node.image("kubernetes", "v1.31.4");
    node.write("/etc/hosts", "127.0.0.1 localhost\n");
    let img = "/var/lib/bootstrap/rootfs";
    install(
        &node,
        &format!("{img}/bin/containerd"),
        "/usr/bin/containerd",
    );
    install(
        &node,
        &format!("{img}/bin/containerd-shim-runc-v2"),
        "/usr/bin/containerd-shim-runc-v2",
    );
    install(&node, &format!("{img}/bin/ctr"), "/usr/bin/ctr");
    install(&node, &format!("{img}/bin/runc"), "/usr/sbin/runc");
    install(
        &node,
        &format!("{img}/bin/registry"),
        "/usr/bin/docker-registry",
    );

    let hello = TestImage::with_layers(1, vec![busybox_layer()]);
    let other = TestImage::random(2, 2, 4096);
    let images = node.path(&format!("{img}/images"));
    fs::create_dir_all(&images).unwrap();
    fs::write(
        images.join("hello.tar"),
        tar(&oci_layout(&[(
            &hello,
            &[("io.containerd.image.name", "docker.io/library/hello:1.0")],
        )])),
    )
    .unwrap();
    fs::write(
        images.join("other.tar"),
        tar(&docker_save(&[(&other, &["quay.io/acme/other:2"])])),
    )
    .unwrap();

    let port = common::free_port();
    node.write_mode(
        "/etc/bootstrap/registry-password",
        "e2e-registry-pw\n",
        0o600,
    );
    node.config(&format!(
        "node: {{address: 127.0.0.1}}\nregistry: {{port: {port}, username: puller, password_file: /etc/bootstrap/registry-password}}\n"
    ));
    let run = node.run(&["up"]);
    run.assert_code(0);

    // Seeded where the registry serves from, under the upstream path.
    assert!(node.exists("/var/lib/bootstrap/registry/docker/registry/v2/repositories/library/hello/_manifests/tags/1.0/current/link"));
    assert!(node.exists("/var/lib/bootstrap/registry/docker/registry/v2/repositories/acme/other/_manifests/tags/2/current/link"));

    // The registry asks for credentials; containerd had them from hosts.toml (0600).
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(node.path("/etc/containerd/certs.d/docker.io/hosts.toml"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "hosts.toml carries credentials");
    let certs = tempfile::tempdir().unwrap();
    fs::copy(
        node.path("/etc/bootstrap/registry/ca.crt"),
        certs.path().join("ca.crt"),
    )
    .unwrap();
    let skopeo = |creds: Option<&str>| {
        let mut cmd = Command::new("timeout");
        cmd.args(["60", "skopeo", "inspect", "--cert-dir"])
            .arg(certs.path());
        if let Some(c) = creds {
            cmd.args(["--creds", c]);
        }
        cmd.arg(format!("docker://127.0.0.1:{port}/library/hello:1.0"))
            .output()
            .unwrap()
    };
    let anonymous = skopeo(None);
    assert!(
        !anonymous.status.success(),
        "the registry served an anonymous client"
    );
    let authed = skopeo(Some("puller:e2e-registry-pw"));
    assert!(
        authed.status.success(),
        "{}",
        String::from_utf8_lossy(&authed.stderr)
    );

    let ctr = |args: &[&str]| {
        let mut full = vec![
            "ctr",
            "--address",
            "/run/containerd/containerd.sock",
            "--namespace",
            "e2e",
        ];
        full.extend_from_slice(args);
        in_namespace_of(&node, "containerd.service", &full)
    };
    let pull = ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        "/etc/containerd/certs.d",
        "docker.io/library/hello:1.0",
    ]);
    assert!(
        pull.status.success(),
        "pull: {}{}",
        String::from_utf8_lossy(&pull.stdout),
        String::from_utf8_lossy(&pull.stderr)
    );
    let run = ctr(&[
        "run",
        "--rm",
        "docker.io/library/hello:1.0",
        "e2e-hello",
        "/bin/busybox",
        "echo",
        "hello from a seeded image",
    ]);
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && out.contains("hello from a seeded image"),
        "ctr run: {out}{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Nothing reaches past the mirror: an image that was not seeded is not found.
    let missing = ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        "/etc/containerd/certs.d",
        "docker.io/library/not-seeded:1",
    ]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("not found") || err.contains("404"), "{err}");

    // Without our CA the registry is not trusted: the mirror config is what makes it work.
    let no_ca = in_namespace_of(
        &node,
        "containerd.service",
        &[
            "ctr",
            "--address",
            "/run/containerd/containerd.sock",
            "-n",
            "e2e",
            "images",
            "pull",
            &format!("sea.hub:{port}/library/hello:1.0"),
        ],
    );
    assert!(
        !no_ca.status.success(),
        "pulled without the hosts dir: the CA check is not in force"
    );

    // A second run changes nothing: certificates, htpasswd, units and seeding are in place.
    let again = node.run(&["up"]);
    again.assert_code(0);
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);

    // A new image in the cluster image is seeded on the next run, and nothing else redone.
    let third = TestImage::random(3, 1, 2048);
    fs::write(
        images.join("third.tar"),
        tar(&docker_save(&[(&third, &["ghcr.io/acme/third:3"])])),
    )
    .unwrap();
    let run = node.run(&["up"]);
    run.assert_code(0);
    assert!(node.exists("/var/lib/bootstrap/registry/docker/registry/v2/repositories/acme/third/_manifests/tags/3/current/link"));
    assert!(run.stderr.contains("seed images"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("restart"),
        "no restart for new images: {}",
        run.stderr
    );
}
