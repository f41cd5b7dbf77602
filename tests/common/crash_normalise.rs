//! What the crash test does not compare, and why: only values that differ between any two
//! clean runs (times, process ids, random keys and tokens), since comparing them would
//! prove nothing. `tests/crash_points.rs` checks that two clean runs are equal under these
//! rules, so the list cannot hide a difference a crash makes unless a clean run makes it
//! too. Everything else — every path, mode, link target and all other bytes — is compared.

/// Files made of random material by design (CA keys and certificates, join tokens, the
/// kubeconfigs and status files that embed them or a process id), made fresh by every
/// clean run: compared by presence and mode only. Prefixes of host paths.
const RANDOM_FILES: &[&str] = &[
    // k3s: its CA, server token, node password and the kubeconfigs that carry them.
    "/etc/rancher/k3s/bootstrap-token",
    "/etc/rancher/k3s/k3s.yaml",
    "/etc/rancher/node/password",
    "/var/lib/rancher/k3s/agent/",
    "/var/lib/rancher/k3s/server/tls/",
    "/var/lib/rancher/k3s/server/token",
    // k0s: its PKI; the stand-in's status names the daemon's pid.
    "/var/lib/k0s/pki/",
    // A lone k0s controller runs a kubelet too: its kubeconfig carries the CA.
    "/var/lib/k0s/kubelet.conf",
    "/run/k0s/standin-status.json",
    // kubeadm: its PKI and kubeconfigs; the token and certificate key bootstrap minted.
    "/etc/kubernetes/pki/",
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/super-admin.conf",
    "/etc/kubernetes/controller-manager.conf",
    "/etc/kubernetes/scheduler.conf",
    "/etc/kubernetes/kubelet.conf",
    "/var/lib/bootstrap/kubeadm/secrets.json",
    // The local registry's CA and serving certificate, made by the first controller.
    "/etc/bootstrap/registry/ca.",
    "/etc/bootstrap/registry/server.crt",
    "/etc/bootstrap/registry/server.key",
    // The lock names the pid that last held it and since when.
    "/var/lib/bootstrap/lock",
];

/// Fields (JSON `"key":` or YAML `key:` lines) holding a time, a count of attempts, a
/// note on how a step was found done, or a random id or token, per file (prefixes).
const FIELDS: &[(&str, &[&str])] = &[
    ("/var/lib/bootstrap/done.json", &["at"]),
    ("/var/lib/bootstrap/role.json", &["decided_at"]),
    // The cluster id is random, chosen by the first controller.
    ("/var/lib/bootstrap/cluster.json", &["id", "since"]),
    ("/var/lib/bootstrap/join-started", &[]),
    (
        "/var/lib/bootstrap/kubeadm/init.yaml",
        &["token", "certificateKey"],
    ),
    // The unpack marker: when, and the archive file's identity (mtime, device, inode),
    // which is that of each run's own copy.
    (
        "/var/lib/bootstrap/rootfs.versions/",
        &["unpacked_at", "mtime_ns", "dev", "ino"],
    ),
];

/// Files that hold nothing but a time.
const TIME_ONLY: &[&str] = &["/var/lib/bootstrap/join-started"];

/// A file's text as compared.
pub fn file(path: &str, text: &str, root: &str) -> String {
    if RANDOM_FILES.iter().any(|p| path.starts_with(p)) || TIME_ONLY.contains(&path) {
        return "<random by design>".into();
    }
    let text = text.replace(root, "ROOT");
    if path == JOURNAL {
        return journal(&text);
    }
    let Some((_, keys)) = FIELDS.iter().find(|(p, _)| path.starts_with(p)) else {
        return text;
    };
    mask(&text, keys)
}

/// Steps keyed on random material: k3s restarts when its token file changes, the
/// registry when its certificate does.
const KEYED_ON_RANDOM: &[&str] = &["restart:k3s.service", "restart:bootstrap-registry.service"];

const JOURNAL: &str = "/var/lib/bootstrap/journal.json";

/// The journal, one line a step: its id, state, fingerprint and what reset must undo.
/// Not compared: when each step was recorded, how often it was tried, and the note
/// "already in place" when a re-run found a step's effect before its record — that is
/// the crash itself, not a difference in the outcome.
fn journal(text: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return text.to_owned();
    };
    let mut lines = Vec::new();
    for entry in value["entries"].as_array().into_iter().flatten() {
        let mut id = entry["id"].as_str().unwrap_or_default();
        // A step keyed on random material (`Step::keyed`) has that material's digest.
        if let Some((step, _)) = id.split_once('@') {
            if KEYED_ON_RANDOM.contains(&step) {
                id = step;
            }
        }
        // A step writing random material has a fingerprint of that material.
        let written = id.split_once(':').map(|(_, p)| p).unwrap_or_default();
        let fingerprint = if RANDOM_FILES.iter().any(|p| written.starts_with(p))
            || FIELDS.iter().any(|(p, _)| written.starts_with(p))
        {
            "<random by design>"
        } else {
            entry["fingerprint"].as_str().unwrap_or_default()
        };
        lines.push(format!(
            "{id} {} {fingerprint} undo={}",
            entry["status"].as_str().unwrap_or_default(),
            entry["undo"]
        ));
    }
    lines.join("\n")
}

/// Masks the value of every `"key": value` or `key: value` line for these keys.
fn mask(text: &str, keys: &[&str]) -> String {
    text.lines()
        .map(|line| {
            let t = line
                .trim_start()
                .trim_start_matches("- ")
                .trim_start_matches('"');
            for k in keys {
                if t.starts_with(&format!("{k}\":")) || t.starts_with(&format!("{k}:")) {
                    let comma = if line.trim_end().ends_with(',') {
                        ","
                    } else {
                        ""
                    };
                    let indent = &line[..line.len() - line.trim_start().len()];
                    return format!("{indent}{k}: <varies>{comma}");
                }
            }
            line.to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Keys of the stand-ins' cluster state that are random or times: CA material, minted
/// secrets and their expiry, node passwords, each node's temp root.
const CLUSTER_FIELDS: &[&str] = &[
    "ca_pem",
    "ca_key",
    "ca_hash",
    "certs",
    "certificate_key",
    "certs_uploaded",
    "root",
    "password",
    "expires",
    "secret",
    "token",
    "server_token",
    "agent_token",
];

/// The stand-ins' cluster state as compared: random values masked, and tokens (keyed by
/// their random id) reduced to how many there are and what they are for.
pub fn cluster(text: &str, root: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else {
        return text.replace(root, "ROOT");
    };
    scrub(&mut value);
    serde_json::to_string_pretty(&value)
        .unwrap_or_default()
        .replace(root, "ROOT")
}

fn scrub(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "tokens" {
                    if let serde_json::Value::Object(tokens) = v {
                        let mut list: Vec<serde_json::Value> = tokens.values().cloned().collect();
                        list.iter_mut().for_each(scrub);
                        let mut shown: Vec<String> = list.iter().map(|t| t.to_string()).collect();
                        shown.sort();
                        *v = serde_json::Value::from(shown);
                        continue;
                    }
                }
                if CLUSTER_FIELDS.contains(&key.as_str()) {
                    *v = serde_json::Value::from("<varies>");
                } else {
                    scrub(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}
