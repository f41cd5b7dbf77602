//! The README's configuration reference lists exactly the keys of the schema.

use std::collections::BTreeSet;

use bootstrap::config::Config;
use bootstrap::secret::Secret;

fn leaves(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
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
fn config_reference_matches_the_schema() {
    let mut config = Config::default();
    // Optional fields that serialize only when set.
    config.cluster.join_secret = Some(Secret::new("x"));
    config.node.address = Some("10.0.0.1".parse().unwrap());
    config.cluster.pod_cidr = Some("10.42.0.0/16".parse().unwrap());
    config.cluster.service_cidr = Some("10.43.0.0/16".parse().unwrap());
    config.registry.push = Some(bootstrap::config::RegistryPushConfig {
        username: "pusher".into(),
        password_file: "/etc/bootstrap/registry-push-password".into(),
        port: bootstrap::config::DEFAULT_PUSH_PORT,
    });
    let mut schema = BTreeSet::new();
    leaves("", &serde_json::to_value(&config).unwrap(), &mut schema);

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- config-reference:start -->")
        .expect("start marker");
    let end = readme
        .find("<!-- config-reference:end -->")
        .expect("end marker");
    let documented: BTreeSet<String> = readme[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<_> = schema.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&schema).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README config reference: missing {missing:?}, not in schema {stale:?}"
    );
}

/// Where the user-data files write the join secret.
const SECRET_PATH: &str = "/etc/bootstrap/join-secret";

/// The config and secret a cloud-init user-data file writes, loaded as bootstrap would;
/// with `secret`, that in place of the secret file's content.
fn load_user_data(text: &str, secret: Option<&str>) -> Result<bootstrap::config::Config, String> {
    use bootstrap::host::{FakeHost, Host};
    assert!(
        text.starts_with("#cloud-config"),
        "user-data must start with #cloud-config"
    );
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let host = FakeHost::new();
    for file in doc["write_files"].as_sequence().expect("write_files") {
        let path = file["path"].as_str().expect("path");
        let content = match secret {
            Some(secret) if path == SECRET_PATH => secret,
            _ => file["content"].as_str().expect("content"),
        };
        let mode = u32::from_str_radix(file["permissions"].as_str().unwrap_or("0644"), 8).unwrap();
        host.write_atomic(std::path::Path::new(path), content.as_bytes(), mode, None)
            .unwrap();
    }
    bootstrap::config::load(&host, &bootstrap::config::Sources::default())
        .map_err(|e| e.to_string())
}

#[test]
fn cloud_init_examples_carry_valid_configs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/cloud-init");
    let generated = bootstrap::secret_format::generate().unwrap();
    let check = |name: &str, text: &str| {
        // As shipped, the placeholder is refused (and named as the placeholder)...
        let refused = load_user_data(text, None)
            .err()
            .unwrap_or_else(|| panic!("{name}: its example secret is accepted"));
        assert!(
            refused.contains("cluster.join_secret_file")
                && refused.contains("bootstrap secret generate"),
            "{name}: {refused}"
        );
        assert!(
            !refused.contains("cluster.name") && refused.lines().count() == 2,
            "{name}: only the secret may be wrong: {refused}"
        );
        // ...and with a generated secret in its place the config is good.
        let config = load_user_data(text, Some(generated.expose()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(config.join_secret().is_some());
        assert!(config.cluster.name.is_some(), "{name}: no cluster.name");
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        check(&entry.path().display().to_string(), &text);
        seen += 1;
    }
    assert!(seen > 0);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```yaml\n#cloud-config")
        .expect("README cloud-init example")
        + "```yaml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    check("README cloud-init example", &readme[start..end]);
}
