//! Cluster images as sealer's basefs builds them, end to end with the real containerd and
//! distribution registry: containerd from `cri/containerd.tar.gz` (made here from the
//! real binaries), the registry from a docker-save image that holds the real registry
//! binary, the runtime named by Kubefile labels, `etc/kubeadm.yml` under the generated
//! kubeadm config, and the Kubefile's `CMD` run once after the cluster is up — then the
//! same for a k0s image in the per-arch layout (`amd64/bin/k0s`,
//! `amd64/images/registry.tar.gz`, `amd64/Metadata`, `rootfs/etc/registry.yml`). Needs
//! root (CI runs as root).

mod common;

#[path = "seed_support/archives.rs"]
mod archives;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use archives::{docker_save, gzip, tar, TestImage};
use common::{arch, standins, Node, Units};

const IMG: &str = "/var/lib/bootstrap/rootfs";

/// A tar of (path, bytes, mode), folders implied.
fn tarball(files: &[(&str, Vec<u8>, u32)]) -> Vec<u8> {
    let mut builder = ::tar::Builder::new(Vec::new());
    for (path, bytes, mode) in files {
        let mut header = ::tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_size(bytes.len() as u64);
        header.set_mtime(1_700_000_000);
        builder
            .append_data(&mut header, path, bytes.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn read(path: &str) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (scripts/test.sh installs it)"))
}

/// `registry:2.7.1` as docker save writes it: an alpine-like base layer, then one
/// holding the real distribution registry at /bin/registry.
fn registry_image() -> Vec<u8> {
    let base = tarball(&[
        ("bin/sh", read("/bin/busybox"), 0o755),
        ("etc/os-release", b"ID=alpine\n".to_vec(), 0o644),
    ]);
    let registry = tarball(&[
        ("bin/registry", read("/usr/bin/docker-registry"), 0o755),
        (
            "etc/docker/registry/config.yml",
            b"version: 0.1\n".to_vec(),
            0o644,
        ),
    ]);
    let image = TestImage::with_layers(271, vec![base, registry]);
    gzip(&tar(&docker_save(&[(&image, &["registry:2.7.1"])])))
}

/// An application image the cluster needs (seeded, unlike the registry's).
fn app_image() -> Vec<u8> {
    let image = TestImage::random(5, 1, 4096);
    tar(&docker_save(&[(&image, &["docker.io/library/hello:1.0"])]))
}

/// A folder to put first on PATH with the image's own CLI (the stand-in), as a node has
/// it in /usr/local/bin, for the Kubefile's commands.
fn cli_path(node: &Node, binary_in_image: &str, name: &str) -> String {
    let dir = node.root().join(".standin-path");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(node.path(binary_in_image), dir.join(name)).unwrap();
    fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}:{}",
        dir.display(),
        standins().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn repositories(node: &Node) -> Vec<String> {
    let dir = node.path("/var/lib/bootstrap/registry/docker/registry/v2/repositories/library");
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn count(calls: &[String], wanted: &str) -> usize {
    calls.iter().filter(|c| c.as_str() == wanted).count()
}

const KUBEADM_YML: &str = r#"apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
kubernetesVersion: v1.31.4
controlPlaneEndpoint: apiserver.cluster.local:6443
imageRepository: sea.hub:5000
networking:
  dnsDomain: cluster.basefs
  serviceSubnet: 10.96.0.0/22
apiServer:
  timeoutForControlPlane: 4m0s
  certSANs: [apiserver.cluster.local]
  extraArgs:
    audit-log-maxage: "7"
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 192.168.2.110
nodeRegistration:
  criSocket: /var/run/dockershim.sock
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
maxPods: 150
"#;

#[test]
fn kubeadm_basefs_image_comes_up_with_the_bundle_the_registry_image_and_its_own_settings() {
    assert!(
        common::is_root(),
        "this test starts containerd and the registry, which needs root (CI runs as root)"
    );
    let node = Node::new().with_registry().env("STANDIN_REAL_UNITS", "1");
    node.image("kubernetes", "v1.31.4");
    // sealer's basefs ships none of these in bin/.
    for bin in [
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "runc",
        "registry",
    ] {
        fs::remove_file(node.path(&format!("{IMG}/bin/{bin}"))).unwrap();
    }
    node.write(
        &format!("{IMG}/Metadata"),
        &format!(r#"{{"version":"v1.31.4","arch":"{}"}}"#, arch()),
    );
    node.write(
        &format!("{IMG}/Kubefile"),
        "FROM scratch\nCOPY . .\n\
         LABEL cluster.alpha.sealer.io/cluster-runtime-type=\"kubernetes\"\n\
         LABEL cluster.alpha.sealer.io/cluster-runtime-version=\"v1.31.4\" \\\n  \
         cluster.alpha.sealer.io/container-runtime-type=\"containerd\"\n\
         CMD kubectl apply -f apps/hello.yaml\n",
    );
    let bundle = tarball(&[
        (
            "usr/local/bin/containerd",
            read("/usr/bin/containerd"),
            0o755,
        ),
        (
            "usr/local/bin/containerd-shim-runc-v2",
            read("/usr/bin/containerd-shim-runc-v2"),
            0o755,
        ),
        ("usr/local/bin/ctr", read("/usr/bin/ctr"), 0o755),
        ("usr/local/sbin/runc", read("/usr/sbin/runc"), 0o755),
        ("opt/cni/bin/bridge", read("/usr/lib/cni/bridge"), 0o755),
        ("opt/cni/bin/loopback", read("/usr/lib/cni/loopback"), 0o755),
        (
            "etc/systemd/system/containerd.service",
            b"[Service]\n".to_vec(),
            0o644,
        ),
    ]);
    fs::create_dir_all(node.path(&format!("{IMG}/cri"))).unwrap();
    fs::write(
        node.path(&format!("{IMG}/cri/containerd.tar.gz")),
        gzip(&bundle),
    )
    .unwrap();
    fs::create_dir_all(node.path(&format!("{IMG}/images"))).unwrap();
    fs::write(
        node.path(&format!("{IMG}/images/registry.tar.gz")),
        registry_image(),
    )
    .unwrap();
    fs::write(node.path(&format!("{IMG}/images/hello.tar")), app_image()).unwrap();
    node.write(&format!("{IMG}/etc/kubeadm.yml"), KUBEADM_YML);
    node.write(
        &format!("{IMG}/apps/hello.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hello\ndata:\n  a: b\n",
    );
    node.write("/etc/hosts", "127.0.0.1 localhost\n");
    let port = common::free_port();
    node.config(&format!(
        "node: {{address: 127.0.0.1}}\ncluster: {{service_cidr: 10.96.0.0/16}}\nregistry: {{port: {port}}}\n"
    ));
    let path = cli_path(&node, &format!("{IMG}/bin/kubectl"), "kubectl");
    let node = node.env("PATH", &path);
    let _units = Units(&node);

    // inspect says where everything comes from.
    let image_dir = node.path(IMG).display().to_string();
    let inspect = node.run(&["rootfs", "inspect", &image_dir]);
    inspect.assert_code(0);
    for wanted in [
        "distro:     kubeadm v1.31.4",
        "containerd: cri/containerd.tar.gz (containerd bundle)",
        "registry binary: images/registry.tar.gz (container image",
        "label:      cluster.alpha.sealer.io/cluster-runtime-type=kubernetes",
        "label:      cluster.alpha.sealer.io/container-runtime-type=containerd",
        "launch:     line 6: kubectl apply -f apps/hello.yaml",
        "kubeadm config: etc/kubeadm.yml",
        "problems:   none",
    ] {
        assert!(
            inspect.stdout.contains(wanted),
            "{wanted}: {}",
            inspect.stdout
        );
    }
    let json = node.run(&["rootfs", "inspect", &image_dir, "--output", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        json["labels"]["cluster.alpha.sealer.io/cluster-runtime-version"],
        "v1.31.4"
    );

    // plan shows the bundle, the registry from its image and the launch command.
    let plan = node.run(&["plan"]);
    plan.assert_code(0);
    for wanted in [
        "unpack the bundle /var/lib/bootstrap/rootfs/cri/containerd.tar.gz into /var/lib/bootstrap/cri",
        "install /usr/local/bin/containerd from /var/lib/bootstrap/cri/usr/local/bin/containerd",
        "install /usr/local/sbin/runc from /var/lib/bootstrap/cri/usr/local/sbin/runc",
        "install /opt/cni/bin/bridge from /var/lib/bootstrap/cri/opt/cni/bin/bridge",
        "install /usr/local/bin/registry from /bin/registry in the image /var/lib/bootstrap/rootfs/images/registry.tar.gz",
        "run `sh -c kubectl apply -f apps/hello.yaml`",
    ] {
        assert!(plan.stdout.contains(wanted), "{wanted}: {}", plan.stdout);
    }
    assert!(
        !node.exists("/var/lib/bootstrap/cri"),
        "plan unpacks nothing"
    );

    let up = node.run(&["up"]);
    up.assert_code(0);
    // The real binaries came out of the bundle and the image.
    let same = |installed: &str, original: &str| {
        assert_eq!(
            fs::read(node.path(installed)).unwrap(),
            read(original),
            "{installed}"
        )
    };
    same("/usr/local/bin/containerd", "/usr/bin/containerd");
    same("/usr/local/sbin/runc", "/usr/sbin/runc");
    same("/usr/local/bin/registry", "/usr/bin/docker-registry");
    assert!(node.exists("/opt/cni/bin/loopback"));
    assert!(!node.exists("/usr/local/bin/docker"));
    // The registry's own image is not served; the application's is.
    assert_eq!(repositories(&node), vec!["hello".to_owned()]);

    // The image's kubeadm settings under bootstrap's, each replaced value logged.
    let init = node.read("/var/lib/bootstrap/kubeadm/init.yaml").unwrap();
    let docs: Vec<serde_json::Value> = init
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let doc = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap().clone();
    let cluster = doc("ClusterConfiguration");
    assert_eq!(cluster["apiVersion"], "kubeadm.k8s.io/v1beta4");
    assert_eq!(cluster["networking"]["dnsDomain"], "cluster.basefs");
    assert_eq!(cluster["imageRepository"], "sea.hub:5000");
    assert_eq!(cluster["networking"]["serviceSubnet"], "10.96.0.0/16");
    assert_eq!(cluster["controlPlaneEndpoint"], "127.0.0.1:6443");
    assert_eq!(
        cluster["apiServer"]["extraArgs"],
        serde_json::json!([{"name": "audit-log-maxage", "value": "7"}])
    );
    assert!(cluster["apiServer"].get("timeoutForControlPlane").is_none());
    let init_doc = doc("InitConfiguration");
    assert_eq!(
        init_doc["nodeRegistration"]["criSocket"],
        "unix:///var/run/containerd/containerd.sock"
    );
    assert_eq!(
        init_doc["localAPIEndpoint"]["advertiseAddress"],
        "127.0.0.1"
    );
    let kubelet = doc("KubeletConfiguration");
    assert_eq!(kubelet["maxPods"], 150);
    assert_eq!(kubelet["cgroupDriver"], "systemd");
    for wanted in [
        "etc/kubeadm.yml: ClusterConfiguration.controlPlaneEndpoint (\"apiserver.cluster.local:6443\") is not used: bootstrap sets it",
        "etc/kubeadm.yml: ClusterConfiguration.networking.serviceSubnet = \"10.96.0.0/22\" replaced by bootstrap's \"10.96.0.0/16\"",
        "etc/kubeadm.yml: KubeletConfiguration.cgroupDriver (\"cgroupfs\") is not used: bootstrap sets it",
    ] {
        assert!(up.stderr.contains(wanted), "{wanted}: {}", up.stderr);
    }

    // The Kubefile's CMD ran once, from the image folder, once the API answered.
    assert_eq!(count(&node.calls(), "kubectl apply -f apps/hello.yaml"), 1);
    let state = fs::read_to_string(node.standin_cluster().join("cluster.json")).unwrap();
    assert!(state.contains("ConfigMap/hello"), "{state}");

    let again = node.run(&["up"]);
    again.assert_code(0);
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
    assert_eq!(count(&node.calls(), "kubectl apply -f apps/hello.yaml"), 1);
}

#[test]
fn k0s_image_in_the_per_arch_layout_runs_the_registry_from_its_image() {
    assert!(
        common::is_root(),
        "this test starts the registry, which needs root (CI runs as root)"
    );
    let node = Node::new()
        .with_registry()
        .env("STANDIN_REAL_UNITS", "bootstrap-registry.service");
    fs::remove_dir_all(node.path(IMG)).unwrap();
    let a = arch();
    let version = "v1.31.3+k0s.0";
    let launcher = fs::read_to_string(standins().join("kube-standin"))
        .unwrap()
        .replace("@NAME@", "k0s")
        .replace("@VERSION@", version);
    node.write_mode(&format!("{IMG}/{a}/bin/k0s"), &launcher, 0o755);
    node.write(
        &format!("{IMG}/{a}/Metadata"),
        &format!(r#"{{"version":"{version}","arch":"{a}","ClusterRuntime":"k0s"}}"#),
    );
    fs::create_dir_all(node.path(&format!("{IMG}/{a}/images"))).unwrap();
    fs::write(
        node.path(&format!("{IMG}/{a}/images/registry.tar.gz")),
        registry_image(),
    )
    .unwrap();
    fs::write(
        node.path(&format!("{IMG}/{a}/images/hello.tar")),
        app_image(),
    )
    .unwrap();
    node.write(
        &format!("{IMG}/rootfs/etc/registry.yml"),
        "domain: sea.hub\nport: \"5000\"\n",
    );
    node.write(
        &format!("{IMG}/Kubefile"),
        "FROM scratch\nLABEL cluster.alpha.sealer.io/cluster-runtime-type=\"k0s\"\n\
         CMD k0s kubectl apply -f apps/hello.yaml\n",
    );
    node.write(
        &format!("{IMG}/apps/hello.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hello\n",
    );
    node.write("/etc/hosts", "127.0.0.1 localhost\n");
    let port = common::free_port();
    node.config(&format!(
        "node: {{address: 127.0.0.1}}\nregistry: {{port: {port}}}\n"
    ));
    let path = cli_path(&node, &format!("{IMG}/{a}/bin/k0s"), "k0s");
    let node = node.env("PATH", &path);
    let _units = Units(&node);

    let inspect = node.run(&["rootfs", "inspect", &node.path(IMG).display().to_string()]);
    inspect.assert_code(0);
    for wanted in [
        format!("distro:     k0s {version}"),
        format!("metadata:   {a}/Metadata"),
        format!("registry binary: {a}/images/registry.tar.gz (container image"),
        "launch:     line 3: k0s kubectl apply -f apps/hello.yaml".to_owned(),
        "problems:   none".to_owned(),
    ] {
        assert!(
            inspect.stdout.contains(&wanted),
            "{wanted}: {}",
            inspect.stdout
        );
    }
    let plan = node.run(&["plan"]);
    plan.assert_code(0);
    assert!(
        plan.stdout.contains(&format!(
            "install /usr/local/bin/registry from /bin/registry in the image /var/lib/bootstrap/rootfs/{a}/images/registry.tar.gz"
        )),
        "{}",
        plan.stdout
    );

    let up = node.run(&["up"]);
    up.assert_code(0);
    assert_eq!(
        fs::read(node.path("/usr/local/bin/registry")).unwrap(),
        read("/usr/bin/docker-registry")
    );
    // Served and imported: the application image, never the registry's own.
    assert_eq!(repositories(&node), vec!["hello".to_owned()]);
    let imported: Vec<PathBuf> = fs::read_dir(node.path("/var/lib/k0s/images"))
        .unwrap()
        .flatten()
        .map(|e| PathBuf::from(e.file_name()))
        .collect();
    assert_eq!(imported, vec![PathBuf::from("hello.tar")]);
    assert_eq!(
        count(&node.calls(), "k0s kubectl apply -f apps/hello.yaml"),
        1
    );

    let again = node.run(&["up"]);
    again.assert_code(0);
    assert_eq!(
        count(&node.calls(), "k0s kubectl apply -f apps/hello.yaml"),
        1
    );
}

#[test]
fn a_failing_launch_command_names_its_line_and_output_and_is_retried() {
    // Stand-ins only: k3s, registry off.
    let node = Node::new();
    node.write(
        &format!("{IMG}/Kubefile"),
        "FROM scratch\nCMD test -e ready || { echo \"manifests are not ready\"; exit 3; }\n",
    );
    let run = node.run(&["up"]);
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("`sh -c test -e ready || { echo \"manifests are not ready\"; exit 3; }` failed (exit code 3): manifests are not ready"),
        "{}",
        run.stderr
    );
    let failed = node.read("/var/lib/bootstrap/failed.json").unwrap();
    assert!(failed.contains("run:sh -c test -e ready"), "{failed}");
    // Run from the image folder: once the file is there, the retry goes through.
    node.write(&format!("{IMG}/ready"), "");
    let run = node.run(&["up"]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("run `sh -c test -e ready"),
        "{}",
        run.stderr
    );
    let again = node.run(&["up"]);
    again.assert_code(0);
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
}
