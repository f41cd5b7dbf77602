//! The user-data in `cloud-init/`: each file passes `cloud-init schema`, writes the join
//! secret 0600 — a placeholder the binary refuses until it is replaced by the output of
//! `bootstrap secret generate` — and a config the binary accepts, and writes the Cluster
//! API sentinel only after `bootstrap up` has succeeded (its runcmd is run with a
//! stand-in `bootstrap`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap");
const SENTINEL_DIR: &str = "/run/cluster-api";
const SENTINEL: &str = "/run/cluster-api/bootstrap-success.complete";
const SECRET_PATH: &str = "/etc/bootstrap/join-secret";
const CONFIG_PATH: &str = "/etc/bootstrap/config.yaml";
/// What the stand-in `cloud-init query` answers for the node address.
const QUERIED_ADDRESS: &str = "10.0.0.21";

fn user_data_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cloud-init");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the cloud-init examples in {dir:?}"
    );
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// The entries of `write_files` by path: (permissions, content).
fn written_files(doc: &serde_yaml::Value, file: &str) -> Vec<(String, String, String)> {
    doc["write_files"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{file}: no write_files"))
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_owned(),
                f["permissions"].as_str().unwrap_or("0644").to_owned(),
                f["content"].as_str().expect("content").to_owned(),
            )
        })
        .collect()
}

/// The runcmd entries that run `bootstrap`, each as the shell script it executes.
fn bootstrap_scripts(doc: &serde_yaml::Value, file: &str) -> Vec<String> {
    let runcmd = doc["runcmd"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{file}: no runcmd"));
    runcmd
        .iter()
        .filter_map(|entry| match entry {
            serde_yaml::Value::Sequence(argv) => {
                let argv: Vec<&str> = argv.iter().map(|a| a.as_str().expect("string")).collect();
                let mentions = argv.iter().any(|a| a.contains("bootstrap"));
                if !mentions {
                    return None;
                }
                assert!(
                    argv.len() == 3 && argv[0] == "sh" && argv[1] == "-c",
                    "{file}: expected runcmd [sh, -c, SCRIPT] running bootstrap, got {argv:?}"
                );
                Some(argv[2].to_owned())
            }
            serde_yaml::Value::String(s) if s.contains("bootstrap") => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn every_file_passes_cloud_init_schema() {
    let version = Command::new("cloud-init").arg("--version").output();
    let Ok(version) = version else {
        panic!(
            "cloud-init is missing: run scripts/test.sh, which installs it (Debian's cloud-init)"
        );
    };
    assert!(version.status.success());
    for file in user_data_files() {
        // cloud-init 22.4 (Debian 12) rejects `## template: jinja` files outright ("needs
        // to begin with #cloud-config"); the examples are plain cloud-config, the
        // instance-data one included (it queries at run time instead of rendering).
        let out = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cloud-init schema {}: {}\n{}{}",
            name(&file),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn join_secret_is_private_and_never_on_a_command_line() {
    for file in user_data_files() {
        let file_name = name(&file);
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        let files = written_files(&doc, &file_name);
        let (_, mode, secret) = files
            .iter()
            .find(|(p, _, _)| p == SECRET_PATH)
            .unwrap_or_else(|| panic!("{file_name}: does not write {SECRET_PATH}"));
        assert_eq!(mode, "0600", "{file_name}: {SECRET_PATH} must be 0600");
        assert!(secret.len() >= 32, "{file_name}: join secret too short");
        let config = files
            .iter()
            .find(|(p, _, _)| p == CONFIG_PATH)
            .unwrap_or_else(|| panic!("{file_name}: does not write {CONFIG_PATH}"));
        assert!(
            !config.2.contains(secret.as_str()),
            "{file_name}: the config must name the secret file, not hold the secret"
        );
        let runcmd = serde_yaml::to_string(&doc["runcmd"]).unwrap();
        assert!(
            !runcmd.contains(secret.as_str()),
            "{file_name}: runcmd must not carry the join secret (argv is world-readable)"
        );
    }
}

#[test]
fn embedded_configs_are_accepted_by_the_binary() {
    for file in user_data_files() {
        let file_name = name(&file);
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        // Write the files as cloud-init would, under a temp root.
        let root = tempfile::tempdir().unwrap();
        let mut shipped = String::new();
        for (path, mode, content) in written_files(&doc, &file_name) {
            let dest = root.path().join(path.trim_start_matches('/'));
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::write(&dest, &content).unwrap();
            let mode = u32::from_str_radix(&mode, 8).unwrap();
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).unwrap();
            if path == SECRET_PATH {
                shipped = content;
            }
        }
        let config = root.path().join(CONFIG_PATH.trim_start_matches('/'));
        // Add the flags the runcmd passes, so they are checked together with the file.
        let mut flags: Vec<&str> = Vec::new();
        if bootstrap_scripts(&doc, &file_name)
            .iter()
            .any(|s| s.contains("--node-address"))
        {
            flags.extend(["--node-address", QUERIED_ADDRESS]);
        }
        let print_config = || {
            let mut cmd = Command::new(BIN);
            cmd.arg("--root")
                .arg(root.path())
                .arg("--config")
                .arg(&config)
                .args(&flags)
                .args(["plan", "--print-config"]);
            for (key, _) in std::env::vars() {
                if key.starts_with("BOOTSTRAP_") {
                    cmd.env_remove(key);
                }
            }
            cmd.output().unwrap()
        };
        // As shipped: the placeholder secret is refused, nothing else.
        let out = print_config();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file_name}: {stderr}");
        assert!(
            stderr.contains("cluster.join_secret_file")
                && stderr.contains("bootstrap secret generate"),
            "{file_name}: the placeholder must be refused, naming the secret file: {stderr}"
        );
        assert_eq!(
            stderr.matches("\n  - ").count(),
            1,
            "{file_name}: only the secret may be refused: {stderr}"
        );
        assert!(
            !stderr.contains(&shipped),
            "{file_name}: the secret is repeated"
        );
        // With the secret made as the comments say, the config is accepted.
        let generated = Command::new(BIN)
            .args(["secret", "generate"])
            .output()
            .unwrap();
        assert!(generated.status.success());
        let secret = String::from_utf8(generated.stdout).unwrap();
        let secret_file = root.path().join(SECRET_PATH.trim_start_matches('/'));
        fs::write(&secret_file, &secret).unwrap();
        let secret = secret.trim_end().to_owned();
        let out = print_config();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file_name}: bootstrap plan --print-config exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("join_secret_file: {SECRET_PATH}")),
            "{file_name}: effective config lacks the secret file:\n{stdout}"
        );
        assert!(!stdout.contains(&secret), "{file_name}: secret printed");
    }
}

/// Runs a runcmd script with stand-ins for `bootstrap` (exiting `code`) and `cloud-init`
/// (answering the address query when `query_ok`), the sentinel directory moved into `dir`.
/// Returns whether the sentinel was written and the arguments `bootstrap` got (empty if
/// it did not run).
fn run_script(script: &str, dir: &Path, code: i32, query_ok: bool) -> (bool, String) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("bootstrap.args");
    let _ = fs::remove_file(&calls);
    let standins = [
        (
            "bootstrap",
            format!("#!/bin/sh\necho \"$*\" > '{}'\nexit {code}\n", calls.display()),
        ),
        (
            "cloud-init",
            format!(
                "#!/bin/sh\n[ \"$1 $2\" = 'query ds.meta_data.local_ipv4' ] && {query_ok} || exit 1\necho {QUERIED_ADDRESS}\n"
            ),
        ),
    ];
    for (standin, text) in standins {
        let path = bin.join(standin);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run = dir.join("run");
    let _ = fs::remove_dir_all(&run);
    let moved = script.replace(SENTINEL_DIR, &format!("{}/cluster-api", run.display()));
    assert_ne!(moved, script, "script does not write {SENTINEL}");
    let status = Command::new("sh")
        .arg("-c")
        .arg(&moved)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .status()
        .unwrap();
    let written = run.join("cluster-api/bootstrap-success.complete").exists();
    assert_eq!(
        status.success(),
        code == 0 && query_ok,
        "the runcmd must fail when bootstrap or the query fails"
    );
    (written, fs::read_to_string(&calls).unwrap_or_default())
}

#[test]
fn sentinel_is_written_only_after_bootstrap_up_succeeds() {
    for file in user_data_files() {
        let file_name = name(&file);
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        let scripts = bootstrap_scripts(&doc, &file_name);
        assert_eq!(
            scripts.len(),
            1,
            "{file_name}: expected one runcmd running bootstrap"
        );
        let script = &scripts[0];
        assert!(
            script.contains(SENTINEL),
            "{file_name}: runcmd does not write {SENTINEL}"
        );
        let dir = tempfile::tempdir().unwrap();
        let (written, args) = run_script(script, dir.path(), 0, true);
        assert!(written, "{file_name}: no sentinel after a successful up");
        assert!(
            args.trim_end().ends_with("up"),
            "{file_name}: bootstrap ran as `bootstrap {args}`, not `up`"
        );
        if script.contains("--node-address") {
            assert!(
                args.contains(&format!("--node-address {QUERIED_ADDRESS}")),
                "{file_name}: the queried address was not passed: {args}"
            );
        }
        for failure in [1, 2, 3, 4] {
            let (written, _) = run_script(script, dir.path(), failure, true);
            assert!(
                !written,
                "{file_name}: sentinel written although bootstrap up exited {failure}"
            );
        }
        if script.contains("cloud-init query") {
            let (written, args) = run_script(script, dir.path(), 0, false);
            assert!(
                !written && args.is_empty(),
                "{file_name}: bootstrap ran or the sentinel was written although the instance-data query failed"
            );
        }
    }
}
