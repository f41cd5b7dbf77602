//! `scripts/build-cluster-image.sh`: for each distro it lays out a cluster image from
//! stand-in binaries and a small image archive, packs it with its `.sha256`, and the
//! binary reads the archive back (`rootfs inspect`) and unpacks it (`rootfs unpack`,
//! checked against the `.sha256`); a missing binary fails the script, naming it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap");

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-cluster-image.sh")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn require_tools() {
    for tool in ["zstd", "tar", "sha256sum"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .unwrap()
            .status
            .success();
        assert!(
            found,
            "{tool} is missing: run scripts/test.sh, which installs it"
        );
    }
}

/// Inputs in `dir`: a stand-in executable per name, a docker-save-shaped image archive,
/// a manifest and a CNI plugin.
fn inputs(dir: &Path, names: &[&str]) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    for name in names {
        let path = dir.join("bin").join(name);
        fs::write(&path, format!("#!/bin/sh\necho {name} stand-in\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let image = dir.join("image");
    fs::create_dir_all(&image).unwrap();
    fs::write(
        image.join("manifest.json"),
        r#"[{"Config":"config.json","RepoTags":["example.com/demo:1"],"Layers":[]}]"#,
    )
    .unwrap();
    fs::write(image.join("config.json"), "{}").unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(&image)
        .arg("-cf")
        .arg(dir.join("demo.tar"))
        .args(["manifest.json", "config.json"])
        .status()
        .unwrap();
    assert!(status.success());
    fs::create_dir_all(dir.join("manifests")).unwrap();
    fs::write(
        dir.join("manifests/demo.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
    )
    .unwrap();
    fs::create_dir_all(dir.join("cni")).unwrap();
    fs::write(dir.join("cni/bridge"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("cni/bridge"), fs::Permissions::from_mode(0o755)).unwrap();
}

fn build(dir: &Path, distro: &str, version: &str, arch: &str, bins: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .args(["--distro", distro, "--version", version, "--arch", arch])
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--images")
        .arg(dir.join("demo.tar"))
        .arg("--manifests")
        .arg(dir.join("manifests"))
        .arg("--cni")
        .arg(dir.join("cni"));
    for name in bins {
        cmd.arg("--bin").arg(dir.join("bin").join(name));
    }
    cmd.output().unwrap()
}

const DISTROS: [(&str, &str, &str, &[&str]); 3] = [
    ("k3s", "v1.31.4+k3s1", "amd64", &["k3s", "registry"]),
    ("k0s", "v1.31.3+k0s.0", "arm64", &["k0s", "registry"]),
    (
        "kubeadm",
        "v1.31.4",
        "amd64",
        &[
            "kubeadm",
            "kubelet",
            "kubectl",
            "containerd",
            "containerd-shim-runc-v2",
            "runc",
            "ctr",
            "registry",
        ],
    ),
];

#[test]
fn builds_an_image_bootstrap_reads_and_unpacks() {
    require_tools();
    for (distro, version, arch, bins) in DISTROS {
        let dir = tempfile::tempdir().unwrap();
        inputs(dir.path(), bins);
        let out = build(dir.path(), distro, version, arch, bins);
        assert!(out.status.success(), "{distro}: {}", text(&out));

        let name = format!("{distro}-{version}-{arch}");
        let archive = dir.path().join("out").join(format!("{name}.tar.zst"));
        let folder = dir.path().join("out").join(&name);
        let metadata: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(folder.join("Metadata")).unwrap()).unwrap();
        let runtime = if distro == "kubeadm" {
            "kubernetes"
        } else {
            distro
        };
        assert_eq!(metadata["ClusterRuntime"], runtime, "{distro}");
        for bin in bins {
            let mode = fs::metadata(folder.join("bin").join(bin))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755, "{distro}: bin/{bin}");
        }
        assert!(folder.join("cni/bin/bridge").is_file(), "{distro}: cni/bin");

        // sha256sum format, and the digest of the archive.
        let sums = fs::read_to_string(archive.with_extension("zst.sha256")).unwrap();
        let check = Command::new("sha256sum")
            .arg("--check")
            .arg("--status")
            .current_dir(dir.path().join("out"))
            .stdin(fs::File::open(archive.with_extension("zst.sha256")).unwrap())
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{distro}: sha256sum --check: {sums}"
        );
        assert!(
            sums.ends_with(&format!("  {name}.tar.zst\n")),
            "{distro}: {sums:?}"
        );

        // The folder and the archive both read as this distro, version and arch.
        for source in [&archive, &folder] {
            let out = Command::new(BIN)
                .args(["rootfs", "inspect"])
                .arg(source)
                .args(["--output", "json"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{distro}: inspect {}", text(&out));
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["distro"], distro, "{distro}: {report}");
            assert_eq!(report["version"], version, "{distro}: {report}");
            assert_eq!(report["arch"], arch, "{distro}: {report}");
            assert_eq!(
                report["problems"],
                serde_json::json!([]),
                "{distro}: {report}"
            );
            assert_eq!(report["images"]["count"], 1, "{distro}: {report}");
            assert_eq!(
                report["manifests"],
                serde_json::json!(["demo.yaml"]),
                "{distro}"
            );
        }

        // Unpacked safely, checked against the .sha256 beside it.
        let dest = dir.path().join("rootfs");
        let out = Command::new(BIN)
            .args(["rootfs", "unpack"])
            .arg(&archive)
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "{distro}: unpack {}", text(&out));
        assert!(dest.join("Metadata").is_file(), "{distro}: unpacked");
        let first = bins[0];
        assert!(
            dest.join("bin").join(first).is_file(),
            "{distro}: bin/{first}"
        );

        // A .sha256 that does not match is refused.
        let bad = dir.path().join("bad.tar.zst");
        fs::copy(&archive, &bad).unwrap();
        fs::write(
            dir.path().join("bad.tar.zst.sha256"),
            format!("{}  bad.tar.zst\n", "0".repeat(64)),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["rootfs", "unpack"])
            .arg(&bad)
            .arg(dir.path().join("elsewhere"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{distro}: bad digest accepted");
    }
}

#[test]
fn a_missing_binary_fails_naming_it() {
    require_tools();
    for (distro, version, arch, bins) in DISTROS {
        for missing in bins.iter().filter(|b| **b != "ctr") {
            let dir = tempfile::tempdir().unwrap();
            inputs(dir.path(), bins);
            let given: Vec<&str> = bins.iter().copied().filter(|b| b != missing).collect();
            let out = build(dir.path(), distro, version, arch, &given);
            assert!(
                !out.status.success(),
                "{distro} without {missing}: {}",
                text(&out)
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(&format!("bin/{missing} ")),
                "{distro} without {missing}: the error does not name it: {stderr}"
            );
            assert!(
                !dir.path().join("out").exists(),
                "{distro} without {missing}: wrote output"
            );
        }
    }
}

#[test]
fn refuses_an_archive_that_is_not_an_image() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    inputs(dir.path(), &["k3s", "registry"]);
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-cf")
        .arg(dir.path().join("demo.tar"))
        .arg("manifests")
        .status()
        .unwrap();
    assert!(status.success());
    let out = build(
        dir.path(),
        "k3s",
        "v1.31.4+k3s1",
        "amd64",
        &["k3s", "registry"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no manifest.json or index.json"),
        "{}",
        text(&out)
    );
}
