//! Golden files for what bootstrap renders for the container runtimes, and
//! `systemd-analyze verify` on the containerd unit.

mod common;

use std::path::Path;

use common::golden;

use bootstrap::containerd::mirrors::{self, LocalRegistry};
use bootstrap::containerd::{self, ConfigVersion, Settings};

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
    golden("containerd.service", &containerd::unit().render().unwrap());
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

#[test]
fn containerd_unit_passes_systemd_analyze_verify() {
    // ExecStartPre is `-/sbin/modprobe overlay`: optional, so it need not exist.
    let containerd = which("containerd");
    let (ok, output) = common::systemd_verify(
        "containerd.service",
        &containerd::unit().render().unwrap(),
        &[("/usr/local/bin/containerd", &containerd)],
    );
    assert!(ok, "systemd-analyze verify containerd.service:\n{output}");
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
