//! What the .deb ships besides the binary: the example config is a valid configuration
//! as shipped and with every commented-out setting switched on, and it mentions every key
//! of the schema; `bootstrap.service` passes `systemd-analyze verify`.
//! (`scripts/test-deb.sh` checks the installed package itself.)

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use bootstrap::config::Config;
use bootstrap::secret::Secret;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap");

fn example() -> String {
    fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/config.example.yaml"
    ))
    .unwrap()
}

/// Lines `# key: value` made live; prose comments stay comments.
fn switched_on(text: &str) -> String {
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            match trimmed.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(": ").is_some_and(|(key, _)| {
                        !key.is_empty()
                            && key
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    }) =>
                {
                    format!("{indent}{rest}\n")
                }
                _ => format!("{line}\n"),
            }
        })
        .collect()
}

/// `plan --print-config` on `config` under a root holding the secret files it may name.
fn print_config(config: &str) -> (bool, String) {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/bootstrap");
    fs::create_dir_all(&etc).unwrap();
    for (name, text) in [
        (
            "join-secret",
            "bjs1-c4b177c1262846654ce8e5e2d54ab998bdaf3b08b2fde7efac58b11b6f1161cd-4d50b08d",
        ),
        ("registry-password", "registry-password-1"),
        ("registry-push-password", "registry-push-password-1"),
    ] {
        fs::write(etc.join(name), text).unwrap();
        fs::set_permissions(etc.join(name), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let file = root.path().join("config.yaml");
    fs::write(&file, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--root")
        .arg(root.path())
        .arg("--config")
        .arg(&file)
        .args(["plan", "--print-config"]);
    for (key, _) in std::env::vars() {
        if key.starts_with("BOOTSTRAP_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn example_config_is_valid_as_shipped() {
    // As shipped it must also work on a host with no secret files: copy and go.
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--root")
        .arg(root.path())
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/config.example.yaml"
        ))
        .args(["plan", "--print-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "packaging/config.example.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It says what the defaults are: the effective config equals having no file.
    let shipped: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let defaults: serde_yaml::Value =
        serde_yaml::from_str(&Config::default().to_redacted_yaml()).unwrap();
    assert_eq!(
        shipped, defaults,
        "as shipped, the example must be the defaults"
    );
}

#[test]
fn example_config_is_valid_with_every_setting_switched_on() {
    let text = switched_on(&example());
    let (ok, out) = print_config(&text);
    assert!(
        ok,
        "the example with its settings uncommented:\n{text}\n{out}"
    );
}

fn leaves(prefix: &str, value: &serde_yaml::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_yaml::Value::Mapping(map) if !map.is_empty() && !prefix.starts_with("distro.") => {
            for (k, v) in map {
                let k = k.as_str().unwrap();
                let key = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn example_config_mentions_every_key() {
    let mut config = Config::default();
    config.cluster.join_secret = Some(Secret::new("x"));
    config.node.address = Some("10.0.0.1".parse().unwrap());
    config.cluster.pod_cidr = Some("10.42.0.0/16".parse().unwrap());
    config.cluster.service_cidr = Some("10.43.0.0/16".parse().unwrap());
    config.registry.push = Some(bootstrap::config::RegistryPushConfig {
        username: "pusher".into(),
        password_file: "/etc/bootstrap/registry-push-password".into(),
        port: bootstrap::config::DEFAULT_PUSH_PORT,
    });
    let schema_yaml: serde_yaml::Value =
        serde_yaml::to_value(serde_json::to_value(&config).unwrap()).unwrap();
    let mut schema = BTreeSet::new();
    leaves("", &schema_yaml, &mut schema);

    let text = example();
    let doc: serde_yaml::Value = serde_yaml::from_str(&switched_on(&text)).unwrap();
    let mut shown = BTreeSet::new();
    leaves("", &doc, &mut shown);
    // cluster.join_secret is an alternative to join_secret_file, named in prose.
    if text.contains("cluster.join_secret holds the secret") {
        shown.insert("cluster.join_secret".to_owned());
    }
    let missing: Vec<_> = schema.difference(&shown).collect();
    let unknown: Vec<_> = shown.difference(&schema).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "packaging/config.example.yaml: missing {missing:?}, not in the schema {unknown:?}"
    );
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let unit_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/systemd/bootstrap.service"
    );
    let unit = fs::read_to_string(unit_path).unwrap();
    for line in [
        "ConditionPathExists=!/var/lib/bootstrap/done.json",
        "Wants=network-online.target",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=/usr/bin/bootstrap up",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "bootstrap.service lacks {line}"
        );
    }
    assert!(unit
        .lines()
        .any(|l| l.starts_with("After=") && l.contains("network-online.target")));

    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing: run scripts/test.sh, which installs systemd");
    };
    assert!(version.status.success());
    // A root with the unit, the binary it runs and the system's own units; the man pages
    // it names are checked by scripts/test-deb.sh once installed (--man=no here).
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::create_dir_all(r.join("usr/lib")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/systemd", r.join("usr/lib/systemd")).unwrap();
    fs::write(r.join("etc/systemd/system/bootstrap.service"), &unit).unwrap();
    fs::copy(BIN, r.join("usr/bin/bootstrap")).unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", r.display()))
        .arg("bootstrap.service")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The system's own units may draw complaints under another root; ours must not.
    assert!(
        out.status.success() && !stderr.lines().any(|l| l.contains("bootstrap.service")),
        "systemd-analyze verify bootstrap.service: {}\n{stderr}",
        out.status
    );
}
