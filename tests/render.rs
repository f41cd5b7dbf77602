//! Golden files for what bootstrap renders for the container runtimes, and
//! `systemd-analyze verify` on the containerd unit.

use std::path::Path;
use std::process::Command;

use bootstrap::runtime::containerd::{self, ConfigVersion, Settings};
use bootstrap::runtime::mirrors::{self, LocalRegistry};

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    assert_eq!(
        expected,
        actual,
        "{} differs; if intended, run with UPDATE_GOLDEN=1",
        path.display()
    );
}

fn registry() -> LocalRegistry {
    LocalRegistry {
        host: "sea.hub:5000".into(),
        ca_path: mirrors::CA_PATH.into(),
        auth: None,
    }
}

#[test]
fn containerd_configs() {
    let settings = Settings::standard(containerd::pause_image(Some((1, 31))));
    golden(
        "containerd-config-v2.toml",
        &containerd::render_config(ConfigVersion::V2, &settings),
    );
    golden(
        "containerd-config-v3.toml",
        &containerd::render_config(ConfigVersion::V3, &settings),
    );
    golden("containerd.service", &containerd::unit().render());
}

#[test]
fn mirror_configs() {
    golden("hosts.toml", &mirrors::hosts_toml(&registry()));
    golden("k3s-registries.yaml", &mirrors::k3s_registries(&registry()));
    golden("k3s-registry-dropin.yaml", &mirrors::k3s_dropin());
    golden(
        "k0s-containerd-dropin-v3.toml",
        &mirrors::k0s_dropin(Some((1, 36))),
    );
    golden(
        "k0s-containerd-dropin-v2.toml",
        &mirrors::k0s_dropin(Some((1, 35))),
    );
}

/// `systemd-analyze verify --root` on a tree holding the unit, the binaries it names and
/// the system's own units (linked in).
pub fn verify_unit(name: &str, text: &str, binaries: &[(&str, &str)]) {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing: run scripts/test.sh, which installs systemd");
    };
    assert!(out.status.success());
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    std::fs::create_dir_all(r.join("usr/lib")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/systemd", r.join("usr/lib/systemd")).unwrap();
    std::fs::write(r.join("etc/systemd/system").join(name), text).unwrap();
    for (at, from) in binaries {
        let dest = r.join(at.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from, &dest).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg(name)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_ours: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify {name}:\n{stderr}"
    );
}

#[test]
fn containerd_unit_passes_systemd_analyze_verify() {
    // ExecStartPre is `-/sbin/modprobe overlay`: optional, so it need not exist.
    let containerd = which("containerd");
    verify_unit(
        "containerd.service",
        &containerd::unit().render(),
        &[("/usr/local/bin/containerd", &containerd)],
    );
}

fn which(name: &str) -> String {
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{name} is missing: run scripts/test.sh, which installs it");
}
