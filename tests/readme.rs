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
