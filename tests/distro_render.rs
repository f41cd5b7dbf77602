//! Golden files for what each distro driver writes and plans, for every distro × role
//! (first controller, extra controller, worker), from one multi-node config.

mod common;

use std::net::IpAddr;
use std::path::Path;

use bootstrap::config::{self, Sources};
use bootstrap::distro::{self, Context, DistroKind, JoinMaterial, JoinRole};
use bootstrap::host::{FakeHost, Host};
use bootstrap::plan::{Action, Step};
use bootstrap::role::Role;
use bootstrap::rootfs::ClusterImage;
use bootstrap::secret::Secret;

const CONFIG: &str = r#"
cluster:
  name: render
  controllers: [10.0.0.10, 10.0.0.11, 10.0.0.12]
  endpoint: 10.0.0.100:6443
  join_secret: bjs1-f24e2a3237e68f8f739fc22cb08c24112ad629d690ecdf9b17e3f6d5ed9eb33c-2080a866
  pod_cidr: 10.244.0.0/16
  service_cidr: 10.96.0.0/12
node:
  labels: {zone: a, tier: db}
  taints: ["dedicated=db:NoSchedule"]
registry:
  enabled: false
"#;

fn host_for(runtime: &str, version: &str, config: &str) -> FakeHost {
    let bins: &[&str] = match runtime {
        "k3s" => &["k3s"],
        "k0s" => &["k0s"],
        _ => &["kubeadm", "kubelet", "kubectl"],
    };
    let host = FakeHost::new()
        .with_file("/etc/bootstrap/config.yaml", config)
        .with_file(
            "/var/lib/bootstrap/rootfs/Metadata",
            format!(
                r#"{{"version":"{version}","arch":"{}","ClusterRuntime":"{runtime}"}}"#,
                common::arch()
            ),
        )
        .with_file(
            "/var/lib/bootstrap/rootfs/manifests/cni.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: cni}\n",
        );
    for bin in bins {
        host.write_atomic(
            Path::new(&format!("/var/lib/bootstrap/rootfs/bin/{bin}")),
            b"#!/bin/sh\n",
            0o755,
            None,
        )
        .unwrap();
    }
    // Secrets an earlier run chose, so the output is the same every time.
    host.with_file(distro::k3s::TOKEN_FILE, "0123456789abcdef0123456789abcdef")
        .with_file(
            distro::kubeadm::SECRETS,
            format!(
                r#"{{"token":"abcdef.0123456789abcdef","certificate_key":"{}"}}"#,
                "c".repeat(64)
            ),
        )
}

fn material(kind: DistroKind, version: &str, role: JoinRole) -> JoinMaterial {
    JoinMaterial {
        distro: kind,
        version: version.into(),
        role,
        endpoint: "10.0.0.100:6443".into(),
        token: Secret::new(match kind {
            DistroKind::K3s => format!("K10{}::server:{}", "a".repeat(64), "b".repeat(32)),
            DistroKind::K0s => "H4sIAAAAAAAC/k0s-token".to_owned(),
            DistroKind::Kubeadm => "ghijkl.0123456789ghijkl".to_owned(),
        }),
        ca_cert_hash: (kind == DistroKind::Kubeadm).then(|| format!("sha256:{}", "d".repeat(64))),
        certificate_key: (kind == DistroKind::Kubeadm && role == JoinRole::Controller)
            .then(|| Secret::new("e".repeat(64))),
        expires_at: Some("2026-12-01T00:00:00Z".into()),
        pod_cidr: Some("10.244.0.0/16".into()),
        service_cidr: Some("10.96.0.0/12".into()),
        registry_ca: None,
        registry_auth: None,
        cluster: Some("render".into()),
        join: Default::default(),
    }
}

/// The planned steps, then every file the plan writes, as one text.
fn render(runtime: &str, version: &str, role: Role, config: &str) -> String {
    let host = host_for(runtime, version, config);
    let config = config::load(
        &host,
        &Sources {
            file: None,
            env: Vec::new(),
            flags: Default::default(),
            manual_join: false,
            persisted: None,
        },
    )
    .expect("config");
    let image = ClusterImage::open(
        &host,
        Path::new("/var/lib/bootstrap/rootfs"),
        common::arch(),
    )
    .expect("image");
    let join_role = if role.is_controller() {
        JoinRole::Controller
    } else {
        JoinRole::Worker
    };
    let material = role
        .joins()
        .then(|| material(image.distro, version, join_role));
    let ctx = Context {
        host: &host,
        config: &config,
        image: &image,
        role,
        node_name: "node-b".into(),
        node_address: Some("10.0.0.11".parse::<IpAddr>().unwrap()),
        material: material.as_ref(),
    };
    let driver = distro::driver(image.distro);
    let mut steps: Vec<Step> = driver.install_steps(&ctx).expect("install steps");
    steps.extend(driver.cluster_steps(&ctx).expect("cluster steps"));
    steps.extend(driver.post_install_steps(&ctx).expect("post-install steps"));
    let mut out = String::from("## plan\n");
    for step in &steps {
        out.push_str(&format!("{}: {}\n", step.phase, step.action));
    }
    for step in &steps {
        if let Action::WriteFile {
            path,
            mode,
            contents,
            ..
        } = &step.action
        {
            out.push_str(&format!("\n## {} ({mode:04o})\n", path.display()));
            out.push_str(&String::from_utf8_lossy(contents.bytes()));
        }
    }
    // Nothing the plan shows may carry a secret.
    let shown: String = steps.iter().map(|s| s.action.to_string()).collect();
    for secret in [
        "0123456789abcdef0123456789abcdef",
        "0123456789abcdef",
        "k0s-token",
    ] {
        assert!(!shown.contains(secret), "plan shows a secret: {shown}");
    }
    let _ = host.exists(Path::new("/"));
    out
}

fn all_roles(runtime: &str, version: &str, name: &str) {
    for (role, label) in [
        (Role::InitController, "first-controller"),
        (Role::JoinController, "extra-controller"),
        (Role::Worker, "worker"),
    ] {
        common::golden(
            &format!("distro/{name}-{label}.txt"),
            &render(runtime, version, role, CONFIG),
        );
    }
}

#[test]
fn k3s_files_for_every_role() {
    all_roles("k3s", "v1.31.4+k3s1", "k3s");
}

#[test]
fn k0s_files_for_every_role() {
    all_roles("k0s", "v1.31.4+k0s.0", "k0s");
}

#[test]
fn kubeadm_files_for_every_role() {
    all_roles("kubernetes", "v1.31.4", "kubeadm");
}

#[test]
fn kubeadm_before_1_31_speaks_v1beta3() {
    let text = render("kubernetes", "v1.30.6", Role::InitController, CONFIG);
    assert!(
        text.contains("\"apiVersion\": \"kubeadm.k8s.io/v1beta3\""),
        "{text}"
    );
    assert!(!text.contains("v1beta4"), "{text}");
    // v1beta3 takes kubelet arguments as a map.
    assert!(text.contains("\"node-ip\": \"10.0.0.11\""), "{text}");
    common::golden("distro/kubeadm-1.30-first-controller.txt", &text);
}

#[test]
fn single_node_controllers_run_workloads() {
    let single = "node: {address: 10.0.0.11}\nregistry: {enabled: false}\n";
    let k0s = render("k0s", "v1.31.4+k0s.0", Role::InitController, single);
    assert!(k0s.contains("--enable-worker --no-taints"), "{k0s}");
    let kubeadm = render("kubernetes", "v1.31.4", Role::InitController, single);
    assert!(kubeadm.contains("\"taints\": []"), "{kubeadm}");
    let multi = render("kubernetes", "v1.31.4", Role::InitController, CONFIG);
    assert!(
        multi.contains("node-role.kubernetes.io/control-plane"),
        "{multi}"
    );
}

#[test]
fn user_settings_merge_into_the_upstream_configs() {
    let config = format!(
        "{CONFIG}distro:\n  k3s: {{disable: [traefik], kubelet-arg: [max-pods=200]}}\n  k0s: {{spec: {{network: {{provider: calico}}}}}}\n  kubeadm:\n    ClusterConfiguration: {{etcd: {{local: {{dataDir: /data/etcd}}}}}}\n"
    );
    let k3s = render("k3s", "v1.31.4+k3s1", Role::InitController, &config);
    assert!(
        k3s.contains("- traefik") && k3s.contains("- max-pods=200"),
        "{k3s}"
    );
    // A server-only key is left out of an agent's config.
    let agent = render("k3s", "v1.31.4+k3s1", Role::Worker, &config);
    assert!(
        !agent.contains("traefik") && agent.contains("max-pods=200"),
        "{agent}"
    );
    let k0s = render("k0s", "v1.31.4+k0s.0", Role::InitController, &config);
    assert!(k0s.contains("\"provider\": \"calico\""), "{k0s}");
    assert!(k0s.contains("\"default_pull_policy\": \"Never\""), "{k0s}");
    let kubeadm = render("kubernetes", "v1.31.4", Role::InitController, &config);
    assert!(kubeadm.contains("/data/etcd"), "{kubeadm}");
}

#[test]
fn settings_bootstrap_owns_are_refused_with_the_field() {
    for (extra, field) in [
        ("distro:\n  k3s: {token: hunter2}\n", "distro.k3s.token"),
        (
            "distro:\n  k3s: {server: https://x:6443}\n",
            "distro.k3s.server",
        ),
        (
            "distro:\n  kubeadm: {InitConfig: {}}\n",
            "distro.kubeadm.InitConfig",
        ),
    ] {
        let config = format!("{CONFIG}{extra}");
        let runtime = if field.contains("k3s") {
            "k3s"
        } else {
            "kubernetes"
        };
        let version = if runtime == "k3s" {
            "v1.31.4+k3s1"
        } else {
            "v1.31.4"
        };
        let host = host_for(runtime, version, &config);
        let config = config::load(
            &host,
            &Sources {
                file: None,
                env: Vec::new(),
                flags: Default::default(),
                manual_join: false,
                persisted: None,
            },
        )
        .unwrap();
        let image = ClusterImage::open(
            &host,
            Path::new("/var/lib/bootstrap/rootfs"),
            common::arch(),
        )
        .unwrap();
        let ctx = Context {
            host: &host,
            config: &config,
            image: &image,
            role: Role::InitController,
            node_name: "node-a".into(),
            node_address: None,
            material: None,
        };
        let error = distro::driver(image.distro)
            .cluster_steps(&ctx)
            .err()
            .unwrap_or_else(|| panic!("{field} accepted"));
        assert!(error.to_string().starts_with(field), "{error}");
    }
}

#[test]
fn kubeadm_ca_hash_is_the_sha256_of_the_public_key() {
    let key = rcgen_free_ca();
    let hash = distro::kubeadm::ca_cert_hash(key.as_bytes()).unwrap();
    assert!(
        hash.starts_with("sha256:") && hash.len() == 7 + 64,
        "{hash}"
    );
    // openssl computes the same over the DER SubjectPublicKeyInfo.
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("ca.crt");
    std::fs::write(&pem, &key).unwrap();
    let spki = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -pubkey -noout -in \"$1\" | openssl pkey -pubin -outform der | sha256sum",
        )
        .arg("sh")
        .arg(&pem)
        .output()
        .expect("openssl");
    assert!(
        spki.status.success(),
        "openssl is missing: run scripts/test.sh"
    );
    let expected = String::from_utf8_lossy(&spki.stdout);
    assert_eq!(&hash[7..], expected.split_whitespace().next().unwrap());
}

/// A self-signed certificate made with openssl, independent of bootstrap's own code.
fn rcgen_free_ca() -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kubernetes",
        ])
        .arg("-keyout")
        .arg(dir.path().join("ca.key"))
        .arg("-out")
        .arg(dir.path().join("ca.crt"))
        .output()
        .expect("openssl is missing: run scripts/test.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dir.path().join("ca.crt")).unwrap()
}

#[test]
fn distro_units_pass_systemd_analyze_verify() {
    for (name, text) in [
        ("k3s.service", distro::k3s::unit_text(true)),
        ("k3s-agent.service", distro::k3s::unit_text(false)),
    ] {
        let (ok, output) =
            common::systemd_verify(name, &text, &[("/usr/local/bin/k3s", "/bin/true")]);
        assert!(ok, "systemd-analyze verify {name}:\n{output}");
    }
    // kubelet.service with kubeadm's drop-in in place.
    let dir = tempfile::tempdir().unwrap();
    let dropin = dir.path().join("10-kubeadm.conf");
    std::fs::write(&dropin, distro::kubeadm::kubelet_dropin()).unwrap();
    let (ok, output) = common::systemd_verify(
        "kubelet.service",
        &distro::kubeadm::kubelet_unit(),
        &[
            ("/usr/local/bin/kubelet", "/bin/true"),
            (
                "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
                dropin.to_str().unwrap(),
            ),
        ],
    );
    assert!(ok, "systemd-analyze verify kubelet.service:\n{output}");
}

#[test]
fn the_join_service_unit_passes_systemd_analyze_verify() {
    let text = bootstrap::join::unit_text("/usr/local/bin/bootstrap").unwrap();
    assert!(
        text.contains("ExecStart=/usr/local/bin/bootstrap serve"),
        "{text}"
    );
    let (ok, output) = common::systemd_verify(
        "bootstrap-join.service",
        &text,
        &[("/usr/local/bin/bootstrap", "/bin/true")],
    );
    assert!(
        ok,
        "systemd-analyze verify bootstrap-join.service:\n{output}"
    );
}

#[test]
fn controller_workloads_is_honoured_by_every_distro() {
    let on = CONFIG.replace("cluster:\n", "cluster:\n  controller_workloads: true\n");
    let off = CONFIG.replace("cluster:\n", "cluster:\n  controller_workloads: false\n");
    let k0s = render("k0s", "v1.31.4+k0s.0", Role::InitController, &on);
    assert!(k0s.contains("--enable-worker --no-taints"), "{k0s}");
    let k0s = render("k0s", "v1.31.4+k0s.0", Role::InitController, CONFIG);
    assert!(!k0s.contains("--enable-worker"), "{k0s}");
    let kubeadm = render("kubernetes", "v1.31.4", Role::JoinController, &on);
    assert!(
        !kubeadm.contains("node-role.kubernetes.io/control-plane"),
        "{kubeadm}"
    );
    let k3s = render("k3s", "v1.31.4+k3s1", Role::InitController, &off);
    assert!(
        k3s.contains("- node-role.kubernetes.io/control-plane:NoSchedule"),
        "{k3s}"
    );
    let k3s = render("k3s", "v1.31.4+k3s1", Role::InitController, CONFIG);
    assert!(!k3s.contains("control-plane:NoSchedule"), "{k3s}");
    // Agents are workers whatever the setting.
    let agent = render("k3s", "v1.31.4+k3s1", Role::Worker, &off);
    assert!(!agent.contains("control-plane:NoSchedule"), "{agent}");
}

#[test]
fn the_api_proxy_unit_passes_systemd_analyze_verify() {
    let text = bootstrap::node_plan::api_proxy_unit("/usr/local/bin/bootstrap").unwrap();
    assert!(
        text.contains("ExecStart=/usr/local/bin/bootstrap apiserver-proxy"),
        "{text}"
    );
    let (ok, output) = common::systemd_verify(
        bootstrap::node_plan::API_PROXY_UNIT,
        &text,
        &[("/usr/local/bin/bootstrap", "/bin/true")],
    );
    assert!(
        ok,
        "systemd-analyze verify bootstrap-apiserver-proxy.service:\n{output}"
    );
}
