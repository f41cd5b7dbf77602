//! The k0s and kubeadm stand-ins (tests/standins/kube/{k0s,kubeadm,kubelet}.py) refuse
//! what the real CLIs refuse and accept what they accept: run directly, without bootstrap.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{to_run, Node, Run};

/// A node whose /usr/local/bin holds the stand-ins `bins` at `version`, sharing `cluster`.
fn node(cluster: &Path, hostname: &str, bins: &[&str], version: &str) -> Node {
    let node = Node::bare().env("STANDIN_CLUSTER", &cluster.display().to_string());
    node.write("/proc/sys/kernel/hostname", &format!("{hostname}\n"));
    install(&node, bins, version);
    node
}

fn install(node: &Node, bins: &[&str], version: &str) {
    let launcher = std::fs::read_to_string(common::standins().join("kube-standin")).unwrap();
    for bin in bins {
        let text = launcher
            .replace("@NAME@", bin)
            .replace("@VERSION@", version);
        node.write_mode(&format!("/usr/local/bin/{bin}"), &text, 0o755);
    }
}

/// Runs the stand-in `bin` of `node` as bootstrap would (same environment as the harness).
fn run(node: &Node, bin: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(node.path(&format!("/usr/local/bin/{bin}")));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("STANDIN_") {
            cmd.env_remove(k);
        }
    }
    let path = format!(
        "{}:{}",
        common::standins().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path)
        .env("STANDIN_ROOT", node.root())
        .env("STANDIN_LOG", node.log_path())
        .env("STANDIN_LIB", common::standins())
        .stdin(Stdio::null());
    for (k, v) in &node.env {
        cmd.env(k, v);
    }
    to_run(cmd.output().expect("run the stand-in"))
}

fn fails_with(run: &Run, text: &str) {
    assert_ne!(
        run.code,
        0,
        "expected a failure mentioning {text:?}: {}",
        run.all()
    );
    assert!(
        run.all().contains(text),
        "expected {text:?} in:\n{}",
        run.all()
    );
}

fn cluster_json(cluster: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(cluster.join("cluster.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

// --- k0s -----------------------------------------------------------------------------------

const K0S: &str = "v1.31.4+k0s.0";
const K0S_CONFIG: &str = r#"{"apiVersion": "k0s.k0sproject.io/v1beta1", "kind": "ClusterConfig",
 "metadata": {"name": "k0s"},
 "spec": {"api": {"address": "10.0.0.10", "port": 6443, "sans": ["10.0.0.10"]},
          "storage": {"type": "etcd", "etcd": {"peerAddress": "10.0.0.10"}},
          "network": {"provider": "kuberouter", "podCIDR": "10.244.0.0/16"},
          "images": {"default_pull_policy": "Never"}, "telemetry": {"enabled": false}}}"#;
const INSTALL_CONTROLLER: &[&str] = &[
    "install",
    "controller",
    "-c",
    "/etc/k0s/k0s.yaml",
    "--data-dir",
    "/var/lib/k0s",
    "--disable-components",
    "update-prober",
];

#[test]
fn k0s_install_refuses_unknown_flags_keys_and_tokens_on_argv() {
    let cluster = tempfile::tempdir().unwrap();
    let a = node(cluster.path(), "node-a", &["k0s"], K0S);
    a.write_mode("/etc/k0s/k0s.yaml", K0S_CONFIG, 0o600);
    let unit = "/etc/systemd/system/k0scontroller.service";

    let mut args = INSTALL_CONTROLLER.to_vec();
    args.push("--bogus");
    fails_with(&run(&a, "k0s", &args), "Error: unknown flag: --bogus");
    let mut args = INSTALL_CONTROLLER.to_vec();
    args.extend(["--token", "abc"]);
    fails_with(&run(&a, "k0s", &args), "unknown flag: --token");
    // A controller-only flag on a worker, and a token as an argument.
    fails_with(
        &run(&a, "k0s", &["install", "worker", "--enable-worker"]),
        "unknown flag: --enable-worker",
    );
    fails_with(
        &run(&a, "k0s", &["install", "worker", "H4sIAAAA"]),
        "world-readable",
    );
    // An unknown ClusterConfig key.
    a.write_mode(
        "/etc/k0s/k0s.yaml",
        &K0S_CONFIG.replace("\"telemetry\"", "\"telemetree\""),
        0o600,
    );
    fails_with(
        &run(&a, "k0s", INSTALL_CONTROLLER),
        "unknown field \"telemetree\"",
    );
    assert!(!a.exists(unit), "a refused install wrote the unit");

    a.write_mode("/etc/k0s/k0s.yaml", K0S_CONFIG, 0o600);
    run(&a, "k0s", INSTALL_CONTROLLER).assert_code(0);
    let text = a.read(unit).unwrap();
    assert!(
        text.contains(
            "ExecStart=/usr/local/bin/k0s controller --config=/etc/k0s/k0s.yaml \
             --data-dir=/var/lib/k0s --disable-components=update-prober\n"
        ),
        "{text}"
    );
    fails_with(&run(&a, "k0s", INSTALL_CONTROLLER), "already exists");
    // Not running yet.
    fails_with(&run(&a, "k0s", &["status", "-o", "json"]), "status.sock");
}

/// Starts a controller on `a` and returns a token of `role` from `k0s token create`.
fn k0s_controller_token(a: &Node, role: &str) -> String {
    a.write_mode("/etc/k0s/k0s.yaml", K0S_CONFIG, 0o600);
    if !a.exists("/etc/systemd/system/k0scontroller.service") {
        run(a, "k0s", INSTALL_CONTROLLER).assert_code(0);
        run(a, "k0s", &["start"]).assert_code(0);
    }
    let status = run(a, "k0s", &["status", "-o", "json"]);
    status.assert_code(0);
    assert!(
        status.stdout.contains("\"Role\": \"controller\""),
        "{}",
        status.all()
    );
    let token = run(
        a,
        "k0s",
        &["token", "create", "--role", role, "--expiry", "1h0m0s"],
    );
    token.assert_code(0);
    token.stdout.trim().to_owned()
}

/// The kubeconfig inside a k0s join token, and back.
fn k0s_decode(token: &str) -> String {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn k0s_encode(kubeconfig: &str) -> String {
    use base64::Engine;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(kubeconfig.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

#[test]
fn k0s_worker_accepts_a_minted_token_and_refuses_a_tampered_one() {
    let cluster = tempfile::tempdir().unwrap();
    let a = node(cluster.path(), "node-a", &["k0s"], K0S);
    let w = node(cluster.path(), "node-w", &["k0s"], K0S);
    let token = k0s_controller_token(&a, "worker");
    let install = [
        "install",
        "worker",
        "--data-dir",
        "/var/lib/k0s",
        "--token-file",
        "/etc/k0s/join-token",
        "--labels",
        "team=a",
    ];

    // Tampered: a byte changed in the middle (base64 of gzip no longer decodes).
    let mid = token.len() / 2;
    let flipped = if &token[mid..=mid] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &token[..mid], &token[mid + 1..]);
    w.write_mode("/etc/k0s/join-token", &tampered, 0o600);
    fails_with(&run(&w, "k0s", &install), "failed to decode join token");
    // Well-formed, but with a secret the cluster never issued.
    let kubeconfig = k0s_decode(&token);
    let secret = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .to_owned();
    let forged = kubeconfig.replace(&secret, &format!("{}0000000000000000", &secret[..7]));
    w.write_mode("/etc/k0s/join-token", &k0s_encode(&forged), 0o600);
    fails_with(&run(&w, "k0s", &install), "401 Unauthorized");
    // A controller token is not a worker token; a readable token file is refused.
    let controller_token = k0s_controller_token(&a, "controller");
    w.write_mode("/etc/k0s/join-token", &controller_token, 0o600);
    fails_with(&run(&w, "k0s", &install), "not a worker token");
    w.write_mode("/etc/k0s/join-token", &token, 0o644);
    fails_with(&run(&w, "k0s", &install), "must be 0600");
    assert!(!w.exists("/etc/systemd/system/k0sworker.service"));

    w.write_mode("/etc/k0s/join-token", &token, 0o600);
    run(&w, "k0s", &install).assert_code(0);
    run(&w, "k0s", &["start"]).assert_code(0);
    assert!(w.exists("/var/lib/k0s/kubelet.conf"));
    let state = cluster_json(cluster.path());
    assert_eq!(state["nodes"]["node-w"]["role"], "worker", "{state}");
    assert_eq!(state["nodes"]["node-w"]["labels"]["team"], "a", "{state}");
    assert_eq!(state["nodes"]["node-w"]["version"], K0S, "{state}");
    // The controller runs no kubelet (no --enable-worker): no Node object.
    assert!(state["nodes"].get("node-a").is_none(), "{state}");

    // reset refuses while running, then clears the data dir and the unit.
    fails_with(&run(&w, "k0s", &["reset"]), "please stop k0s before reset");
    run(&w, "k0s", &["stop"]).assert_code(0);
    run(&w, "k0s", &["reset", "--data-dir", "/var/lib/k0s"]).assert_code(0);
    assert!(!w.exists("/var/lib/k0s"));
    assert!(!w.exists("/etc/systemd/system/k0sworker.service"));
    assert!(w.exists("/usr/local/bin/k0s"));
}

// --- kubeadm -------------------------------------------------------------------------------

const KUBE: &str = "v1.31.4";
const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const INIT: &[&str] = &[
    "init",
    "--config",
    "/var/lib/bootstrap/kubeadm/init.yaml",
    "--upload-certs",
    "--skip-token-print",
    "--skip-certificate-key-print",
];
const JOIN: &[&str] = &["join", "--config", "/var/lib/bootstrap/kubeadm/join.yaml"];

/// A kubeadm node: kubeadm and kubelet installed, kubelet.service present, containerd's
/// socket in place.
fn kubeadm_node(cluster: &Path, name: &str, version: &str) -> Node {
    let n = node(cluster, name, &["kubeadm", "kubelet"], version);
    n.write(
        "/etc/systemd/system/kubelet.service",
        "[Service]\nExecStart=/usr/local/bin/kubelet\n",
    );
    n.write("/run/containerd/containerd.sock", "");
    n
}

fn init_config(api: &str, extra_init_field: &str) -> String {
    format!(
        r#"---
{{"apiVersion": "kubeadm.k8s.io/{api}", "kind": "InitConfiguration",
  "bootstrapTokens": [{{"token": "abcdef.0123456789abcdef", "ttl": "24h0m0s",
                       "usages": ["signing", "authentication"]}}],
  "nodeRegistration": {{"name": "node-a",
                        "criSocket": "unix:///var/run/containerd/containerd.sock",
                        "kubeletExtraArgs": [{{"name": "node-ip", "value": "10.0.0.10"}}]}},
  "localAPIEndpoint": {{"advertiseAddress": "10.0.0.10", "bindPort": 6443}},
  "certificateKey": "{KEY}"{extra_init_field}}}
---
{{"apiVersion": "kubeadm.k8s.io/{api}", "kind": "ClusterConfiguration",
  "kubernetesVersion": "{KUBE}", "controlPlaneEndpoint": "10.0.0.10:6443",
  "networking": {{"podSubnet": "10.244.0.0/16"}}}}
---
{{"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
  "cgroupDriver": "systemd"}}
"#
    )
}

fn join_config(token: &str, hash: &str) -> String {
    format!(
        r#"---
{{"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration",
  "discovery": {{"bootstrapToken": {{"token": "{token}", "apiServerEndpoint": "10.0.0.10:6443",
                                    "caCertHashes": ["{hash}"]}}}},
  "nodeRegistration": {{"name": "node-w",
                        "criSocket": "unix:///var/run/containerd/containerd.sock",
                        "kubeletExtraArgs": [{{"name": "node-ip", "value": "10.0.0.20"}}]}}}}
"#
    )
}

fn init(a: &Node) {
    a.write_mode(
        "/var/lib/bootstrap/kubeadm/init.yaml",
        &init_config("v1beta4", ""),
        0o600,
    );
    let run = run(a, "kubeadm", INIT);
    run.assert_code(0);
}

#[test]
fn kubeadm_init_decodes_its_config_strictly() {
    let cluster = tempfile::tempdir().unwrap();
    let a = kubeadm_node(cluster.path(), "node-a", KUBE);
    let config = "/var/lib/bootstrap/kubeadm/init.yaml";

    // An unknown field, a v1beta3-only field in v1beta4, a v1beta3 map where v1beta4 wants a
    // list, a readable file, and a secret on argv: all refused, nothing written.
    a.write_mode(config, &init_config("v1beta4", r#", "bogus": 1"#), 0o600);
    fails_with(&run(&a, "kubeadm", INIT), r#"unknown field "bogus""#);
    let v3_map = init_config("v1beta4", "").replace(
        r#"[{"name": "node-ip", "value": "10.0.0.10"}]"#,
        r#"{"node-ip": "10.0.0.10"}"#,
    );
    a.write_mode(config, &v3_map, 0o600);
    fails_with(&run(&a, "kubeadm", INIT), "[]v1beta4.Arg");
    a.write_mode(config, &init_config("v1beta4", ""), 0o644);
    fails_with(&run(&a, "kubeadm", INIT), "must be 0600");
    a.write_mode(config, &init_config("v1beta4", ""), 0o600);
    let mut args = INIT.to_vec();
    args.extend(["--certificate-key", KEY]);
    fails_with(&run(&a, "kubeadm", &args), "world-readable");
    let mut args = INIT.to_vec();
    args.push("--bogus");
    fails_with(&run(&a, "kubeadm", &args), "unknown flag: --bogus");
    let unpinned = init_config("v1beta4", "").replace(r#""kubernetesVersion": "v1.31.4","#, "");
    a.write_mode(config, &unpinned, 0o600);
    fails_with(&run(&a, "kubeadm", INIT), "stable-1");
    assert!(!a.exists("/etc/kubernetes/admin.conf"));

    // v1beta4 is not known to kubeadm 1.30.
    let old = kubeadm_node(cluster.path(), "node-old", "v1.30.2");
    old.write_mode(config, &init_config("v1beta4", ""), 0o600);
    fails_with(
        &run(&old, "kubeadm", INIT),
        r#"no kind "InitConfiguration" is registered for version "kubeadm.k8s.io/v1beta4""#,
    );

    // v1beta4 on 1.31 works.
    init(&a);
    for f in [
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/pki/ca.crt",
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
        "/var/lib/kubelet/config.yaml",
        "/var/lib/kubelet/kubeadm-flags.env",
    ] {
        assert!(a.exists(f), "{f} missing");
    }
    let state = cluster_json(cluster.path());
    assert_eq!(state["version"], KUBE, "{state}");
    assert_eq!(state["nodes"]["node-a"]["role"], "control-plane", "{state}");
    assert_eq!(state["kubeadm"]["certificate_key"], KEY, "{state}");
    // Once initialised, the manifests folder is not empty: a second init fails preflight.
    fails_with(
        &run(&a, "kubeadm", INIT),
        "[ERROR DirAvailable--etc-kubernetes-manifests]",
    );
}

#[test]
fn kubeadm_join_pins_the_ca_and_needs_a_live_token() {
    let cluster = tempfile::tempdir().unwrap();
    let a = kubeadm_node(cluster.path(), "node-a", KUBE);
    let w = kubeadm_node(cluster.path(), "node-w", KUBE);
    init(&a);
    let pem = a.read("/etc/kubernetes/pki/ca.crt").unwrap();
    let hash = bootstrap::distro::kubeadm::ca_cert_hash(pem.as_bytes()).unwrap();
    let config = "/var/lib/bootstrap/kubeadm/join.yaml";

    // Secrets on argv are refused.
    fails_with(
        &run(
            &w,
            "kubeadm",
            &[
                "join",
                "10.0.0.10:6443",
                "--token",
                "abcdef.0123456789abcdef",
            ],
        ),
        "world-readable",
    );
    fails_with(
        &run(
            &a,
            "kubeadm",
            &["token", "create", "abcdef.0123456789abcdef"],
        ),
        "world-readable",
    );
    // A wrong CA hash.
    let wrong = format!("sha256:{}", "0".repeat(64));
    w.write_mode(
        config,
        &join_config("abcdef.0123456789abcdef", &wrong),
        0o600,
    );
    fails_with(&run(&w, "kubeadm", JOIN), "none of the public keys");
    // An expired token.
    let short = run(&a, "kubeadm", &["token", "create", "--ttl", "1s"]);
    short.assert_code(0);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    w.write_mode(config, &join_config(short.stdout.trim(), &hash), 0o600);
    fails_with(
        &run(&w, "kubeadm", JOIN),
        "could not find a JWS signature in the cluster-info ConfigMap",
    );
    // Discovery without pinning is refused.
    let unsafe_skip = join_config("abcdef.0123456789abcdef", &hash).replace(
        r#""caCertHashes""#,
        r#""unsafeSkipCAVerification": true, "caCertHashes""#,
    );
    w.write_mode(config, &unsafe_skip, 0o600);
    fails_with(&run(&w, "kubeadm", JOIN), "unsafeSkipCAVerification");
    assert!(!w.exists("/etc/kubernetes/kubelet.conf"));

    // A fresh token and the right hash.
    let fresh = run(&a, "kubeadm", &["token", "create", "--ttl", "1h0m0s"]);
    fresh.assert_code(0);
    w.write_mode(config, &join_config(fresh.stdout.trim(), &hash), 0o600);
    run(&w, "kubeadm", JOIN).assert_code(0);
    assert!(w.exists("/etc/kubernetes/kubelet.conf"));
    let state = cluster_json(cluster.path());
    assert_eq!(state["nodes"]["node-w"]["role"], "worker", "{state}");
    assert_eq!(state["nodes"]["node-w"]["address"], "10.0.0.20", "{state}");
    // kubeadm started kubelet through systemctl.
    assert!(
        w.calls()
            .iter()
            .any(|c| c == "systemctl restart kubelet.service"),
        "{:?}",
        w.calls()
    );

    // reset -f: the kubeadm files go, /etc/cni/net.d stays.
    w.write("/etc/cni/net.d/10-flannel.conflist", "{}");
    run(&w, "kubeadm", &["reset", "--force"]).assert_code(0);
    assert!(!w.exists("/etc/kubernetes/kubelet.conf"));
    assert!(!w.exists("/var/lib/kubelet/config.yaml"));
    assert!(w.exists("/etc/cni/net.d/10-flannel.conflist"));
    // Without -f it asks, and stdin is closed.
    fails_with(&run(&w, "kubeadm", &["reset"]), "didn't answer");
}
