//! containerd as a host service (the kubeadm path): its `config.toml` in the schema
//! version its binary expects, and its systemd unit.
//!
//! k3s and k0s embed their own containerd; bootstrap never installs a second one for them
//! (see `mirrors` for how they are pointed at the local registry).

pub mod mirrors;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::systemd::{SystemdUnit, UnitSection};

/// Where the kubeadm path puts containerd's pieces.
pub const CONFIG_PATH: &str = "/etc/containerd/config.toml";
pub const CERTS_DIR: &str = "/etc/containerd/certs.d";
pub const SOCKET: &str = "/run/containerd/containerd.sock";
pub const UNIT_NAME: &str = "containerd.service";
pub const UNIT_PATH: &str = "/etc/systemd/system/containerd.service";
pub const BIN_DIR: &str = "/usr/local/bin";
pub const RUNC_PATH: &str = "/usr/local/sbin/runc";
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// containerd's config schema: version 2 for containerd 1.x, version 3 for 2.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConfigVersion {
    V2,
    V3,
}

/// Reads the schema version from `containerd --version` output, e.g.
/// `containerd github.com/containerd/containerd 1.6.20~ds1 …` or
/// `containerd containerd.io v2.0.2 …`.
pub fn version_from_output(text: &str) -> Option<ConfigVersion> {
    let version = text.split_whitespace().nth(2)?;
    let major: u32 = version
        .trim_start_matches('v')
        .split(['.', '~', '-', '+'])
        .next()?
        .parse()
        .ok()?;
    match major {
        1 => Some(ConfigVersion::V2),
        2.. => Some(ConfigVersion::V3),
        _ => None,
    }
}

/// What goes into `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The sandbox (pause) image, by its upstream name; the mirror config serves it from
    /// the local registry.
    pub pause_image: String,
    pub certs_dir: String,
    pub root: String,
    pub state: String,
    pub socket: String,
    pub cni_bin_dir: String,
    pub cni_conf_dir: String,
}

impl Settings {
    /// The standard locations with the given pause image.
    pub fn standard(pause_image: impl Into<String>) -> Settings {
        Settings {
            pause_image: pause_image.into(),
            certs_dir: CERTS_DIR.to_owned(),
            root: "/var/lib/containerd".to_owned(),
            state: "/run/containerd".to_owned(),
            socket: SOCKET.to_owned(),
            cni_bin_dir: CNI_BIN_DIR.to_owned(),
            cni_conf_dir: CNI_CONF_DIR.to_owned(),
        }
    }
}

/// The pause image kubeadm expects for a Kubernetes minor version.
pub fn pause_image(kube_minor: Option<(u32, u32)>) -> String {
    let tag = match kube_minor {
        Some((1, minor)) if minor < 27 => "3.8",
        Some((1, minor)) if minor < 31 => "3.9",
        _ => "3.10",
    };
    format!("registry.k8s.io/pause:{tag}")
}

#[derive(Serialize)]
struct Grpc {
    address: String,
}

#[derive(Serialize)]
struct RuncOptions {
    #[serde(rename = "SystemdCgroup")]
    systemd_cgroup: bool,
}

#[derive(Serialize)]
struct Runtime {
    runtime_type: &'static str,
    options: RuncOptions,
}

#[derive(Serialize)]
struct RegistryHosts {
    config_path: String,
}

#[derive(Serialize)]
struct Cni {
    bin_dir: String,
    conf_dir: String,
}

#[derive(Serialize)]
struct V2Containerd {
    snapshotter: &'static str,
    default_runtime_name: &'static str,
    runtimes: BTreeMap<&'static str, Runtime>,
}

#[derive(Serialize)]
struct V2Cri {
    sandbox_image: String,
    containerd: V2Containerd,
    registry: RegistryHosts,
    cni: Cni,
}

#[derive(Serialize)]
struct V2Plugins {
    #[serde(rename = "io.containerd.grpc.v1.cri")]
    cri: V2Cri,
}

#[derive(Serialize)]
struct V2Config {
    version: u32,
    root: String,
    state: String,
    grpc: Grpc,
    plugins: V2Plugins,
}

#[derive(Serialize)]
struct PinnedImages {
    sandbox: String,
}

#[derive(Serialize)]
struct V3Images {
    snapshotter: &'static str,
    pinned_images: PinnedImages,
    registry: RegistryHosts,
}

#[derive(Serialize)]
struct V3RuntimeContainerd {
    default_runtime_name: &'static str,
    runtimes: BTreeMap<&'static str, Runtime>,
}

#[derive(Serialize)]
struct V3Runtime {
    containerd: V3RuntimeContainerd,
    cni: Cni,
}

#[derive(Serialize)]
struct V3Plugins {
    #[serde(rename = "io.containerd.cri.v1.images")]
    images: V3Images,
    #[serde(rename = "io.containerd.cri.v1.runtime")]
    runtime: V3Runtime,
}

#[derive(Serialize)]
struct V3Config {
    version: u32,
    root: String,
    state: String,
    grpc: Grpc,
    plugins: V3Plugins,
}

fn runc() -> BTreeMap<&'static str, Runtime> {
    BTreeMap::from([(
        "runc",
        Runtime {
            runtime_type: "io.containerd.runc.v2",
            // kubelet's cgroupDriver is systemd; the two must agree.
            options: RuncOptions {
                systemd_cgroup: true,
            },
        },
    )])
}

const HEADER: &str = "# Written by bootstrap; `bootstrap reset` removes it.\n";

/// Renders `config.toml` for the given schema version.
pub fn render_config(version: ConfigVersion, s: &Settings) -> String {
    let cni = || Cni {
        bin_dir: s.cni_bin_dir.clone(),
        conf_dir: s.cni_conf_dir.clone(),
    };
    let registry = || RegistryHosts {
        config_path: s.certs_dir.clone(),
    };
    let body = match version {
        ConfigVersion::V2 => toml::to_string(&V2Config {
            version: 2,
            root: s.root.clone(),
            state: s.state.clone(),
            grpc: Grpc {
                address: s.socket.clone(),
            },
            plugins: V2Plugins {
                cri: V2Cri {
                    sandbox_image: s.pause_image.clone(),
                    containerd: V2Containerd {
                        snapshotter: "overlayfs",
                        default_runtime_name: "runc",
                        runtimes: runc(),
                    },
                    registry: registry(),
                    cni: cni(),
                },
            },
        }),
        ConfigVersion::V3 => toml::to_string(&V3Config {
            version: 3,
            root: s.root.clone(),
            state: s.state.clone(),
            grpc: Grpc {
                address: s.socket.clone(),
            },
            plugins: V3Plugins {
                images: V3Images {
                    snapshotter: "overlayfs",
                    pinned_images: PinnedImages {
                        sandbox: s.pause_image.clone(),
                    },
                    registry: registry(),
                },
                runtime: V3Runtime {
                    containerd: V3RuntimeContainerd {
                        default_runtime_name: "runc",
                        runtimes: runc(),
                    },
                    cni: cni(),
                },
            },
        }),
    };
    // Serializing these plain structs cannot fail; an empty body would be caught by the
    // config tests.
    format!("{HEADER}{}", body.unwrap_or_default())
}

/// `containerd.service` as upstream ships it, with the config path explicit.
pub fn unit() -> SystemdUnit {
    let section = |name: &str, entries: &[(&str, &str)]| {
        entries
            .iter()
            .fold(UnitSection::new(name), |section, (k, v)| {
                section.set(*k, *v)
            })
    };
    let exec = format!("{BIN_DIR}/containerd --config {CONFIG_PATH}");
    SystemdUnit {
        header: vec!["Written by bootstrap; `bootstrap reset` removes it.".to_owned()],
        gap_after_header: true,
        sections: vec![
            section(
                "Unit",
                &[
                    (
                        "Description",
                        "containerd container runtime (installed by bootstrap)",
                    ),
                    ("Documentation", "https://containerd.io"),
                    ("After", "network.target local-fs.target"),
                ],
            ),
            section(
                "Service",
                &[
                    ("ExecStartPre", "-/sbin/modprobe overlay"),
                    ("ExecStart", &exec),
                    ("Type", "notify"),
                    ("Delegate", "yes"),
                    ("KillMode", "process"),
                    ("Restart", "always"),
                    ("RestartSec", "5"),
                    ("LimitNPROC", "infinity"),
                    ("LimitCORE", "infinity"),
                    ("LimitNOFILE", "infinity"),
                    ("TasksMax", "infinity"),
                    ("OOMScoreAdjust", "-999"),
                ],
            ),
            section("Install", &[("WantedBy", "multi-user.target")]),
        ],
    }
}

/// Binaries of the kubeadm path, from the image's `bin/`: (name in the image, host path).
pub fn binaries(available: &[String]) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for name in available {
        let wanted = name == "containerd" || name == "ctr" || name.starts_with("containerd-shim");
        if wanted {
            out.push((name.clone(), PathBuf::from(BIN_DIR).join(name)));
        } else if name == "runc" {
            out.push((name.clone(), PathBuf::from(RUNC_PATH)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_from_the_binary() {
        assert_eq!(
            version_from_output(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
            ),
            Some(ConfigVersion::V2)
        );
        assert_eq!(
            version_from_output(
                "containerd containerd.io v2.0.2 c507a0257ea6462fbd6f5ba4f5c74facb04021f4"
            ),
            Some(ConfigVersion::V3)
        );
        assert_eq!(
            version_from_output("containerd github.com/containerd/containerd v1.7.24 x"),
            Some(ConfigVersion::V2)
        );
        assert_eq!(version_from_output("garbage"), None);
    }

    #[test]
    fn configs_parse_and_carry_the_kubernetes_keys() {
        let s = Settings::standard("registry.k8s.io/pause:3.10");
        let v2: toml::Value = toml::from_str(&render_config(ConfigVersion::V2, &s)).unwrap();
        let cri = &v2["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(v2["version"].as_integer(), Some(2));
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some("registry.k8s.io/pause:3.10")
        );
        assert_eq!(cri["registry"]["config_path"].as_str(), Some(CERTS_DIR));
        assert_eq!(
            cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
        let v3: toml::Value = toml::from_str(&render_config(ConfigVersion::V3, &s)).unwrap();
        let images = &v3["plugins"]["io.containerd.cri.v1.images"];
        assert_eq!(
            images["pinned_images"]["sandbox"].as_str(),
            Some("registry.k8s.io/pause:3.10")
        );
        assert_eq!(images["registry"]["config_path"].as_str(), Some(CERTS_DIR));
        let rt = &v3["plugins"]["io.containerd.cri.v1.runtime"];
        assert_eq!(
            rt["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
    }

    #[test]
    fn pause_follows_kubernetes() {
        assert_eq!(pause_image(Some((1, 31))), "registry.k8s.io/pause:3.10");
        assert_eq!(pause_image(Some((1, 28))), "registry.k8s.io/pause:3.9");
    }
}
