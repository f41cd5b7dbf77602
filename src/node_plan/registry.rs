//! The registry phase of the plan: the local registry's binary, CA and serving
//! certificate, `config.yml`, unit and seeded storage on the node(s) that run it, and
//! the writable push registry when `registry.push` asks for one.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::runtime::{step, write, Inputs, RuntimeError};
use crate::host::{Host, HostError};
use crate::plan::{Action, Contents, Phase, Probe, ServiceAction, Step};
use crate::systemd::daemon_reload;

/// How long to wait for the registry to answer over TLS.
const REGISTRY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// The names the serving certificate was issued for, to tell when to issue a new one.
const SERVER_NAMES_FILE: &str = "/etc/bootstrap/registry/server.names";

/// A short digest of what the image sources hold: each file's name, size and mtime (the
/// registry tree's repositories by name), without reading the data.
fn sources_digest(
    host: &dyn Host,
    dirs: impl IntoIterator<Item = Option<PathBuf>>,
) -> Result<String, HostError> {
    let mut hasher = Sha256::new();
    for dir in dirs.into_iter().flatten() {
        let dir = dir.as_path();
        hasher.update(dir.as_os_str().as_encoded_bytes());
        for name in host.list_dir(dir)?.unwrap_or_default() {
            let path = dir.join(&name);
            let real = host.real_path(&path)?;
            let stamp = std::fs::metadata(&real)
                .map(|m| (m.len(), m.modified().ok()))
                .unwrap_or((0, None));
            hasher.update(format!("{name}\0{stamp:?}\n").as_bytes());
        }
    }
    Ok(hex::encode(&hasher.finalize()[..8]))
}

/// A restart keyed by what the service reads, so a change of any of it restarts the
/// service once, and an unchanged re-run does not.
fn keyed_restart(phase: Phase, unit: &str, inputs: &[&[u8]]) -> Step {
    step(
        phase,
        "(re)start with the files above",
        Action::Service {
            unit: unit.to_owned(),
            action: ServiceAction::Restart,
        },
    )
    .keyed(inputs)
}

/// The registry phase, on the node(s) that run it: binary, CA and serving certificate
/// (made once, then reused), `config.yml`, the unit, images seeded into its storage, and
/// a bounded wait until it answers over TLS with our CA.
pub fn registry_steps(inputs: &Inputs<'_>) -> Result<Vec<Step>, RuntimeError> {
    use crate::registry as reg;
    let mut steps = Vec::new();
    if !inputs.runs_registry() {
        return Ok(steps);
    }
    let host = inputs.host;
    let (install, registry_image) = super::image_binaries::registry_install(inputs)?;
    steps.push(install);

    let mut ips: Vec<IpAddr> = inputs
        .config
        .cluster
        .controllers
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let listen = inputs.registry_listen_ip();
    let push = inputs
        .config
        .registry
        .push
        .as_ref()
        .zip(inputs.config.registry_push_credentials());
    // Pushes go to loopback, so its address must be in the certificate then.
    let loopback = push.is_some().then_some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for a in [inputs.node_address, Some(listen), loopback]
        .into_iter()
        .flatten()
    {
        if !ips.contains(&a) {
            ips.push(a);
        }
    }
    let names = reg::ServerNames::new(inputs.config.registry.domain.clone(), ips.clone());
    let names_text = {
        let mut all: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
        all.insert(0, inputs.config.registry.domain.clone());
        all.join("\n") + "\n"
    };
    let read =
        |path: &str| -> Result<Option<String>, HostError> { host.read_string(Path::new(path)) };
    let now = time::OffsetDateTime::now_utc();
    let (ca_cert, ca_key, ca_fresh) = match (read(reg::CA_CERT_FILE)?, read(reg::CA_KEY_FILE)?) {
        (Some(cert), Some(key)) => (cert, crate::secret::Secret::new(key), false),
        _ => {
            let ca = reg::generate_ca(now)?;
            (ca.cert_pem, ca.key_pem, true)
        }
    };
    let same_names = read(SERVER_NAMES_FILE)?.as_deref() == Some(names_text.as_str());
    let (server_cert, server_key, server_fresh) =
        match (read(reg::CERT_FILE)?, read(reg::KEY_FILE)?) {
            (Some(cert), Some(key)) if same_names && !ca_fresh => {
                (cert, crate::secret::Secret::new(key), false)
            }
            _ => {
                let ca = reg::CertificateAuthority {
                    cert_pem: ca_cert.clone(),
                    key_pem: ca_key.clone(),
                };
                let serving = reg::issue_serving_cert(&ca, &names, now)?;
                (serving.cert_pem, serving.key_pem, true)
            }
        };
    let public = |fresh: bool, text: &str| {
        if fresh {
            Contents::Generated(text.as_bytes().to_vec())
        } else {
            Contents::Public(text.as_bytes().to_vec())
        }
    };
    steps.push(write(
        Phase::Registry,
        "every node trusts the registry through this CA",
        reg::CA_CERT_FILE,
        0o644,
        public(ca_fresh, &ca_cert),
    ));
    steps.push(write(
        Phase::Registry,
        "kept on controllers, to issue serving certificates",
        reg::CA_KEY_FILE,
        0o600,
        Contents::Secret(ca_key),
    ));
    steps.push(write(
        Phase::Registry,
        "the registry's TLS certificate, for its name and the controllers' addresses",
        reg::CERT_FILE,
        0o644,
        public(server_fresh, &server_cert),
    ));
    steps.push(write(
        Phase::Registry,
        "the registry's TLS key",
        reg::KEY_FILE,
        0o600,
        Contents::Secret(server_key.clone()),
    ));
    steps.push(write(
        Phase::Registry,
        "what the serving certificate was issued for",
        SERVER_NAMES_FILE,
        0o644,
        Contents::Public(names_text.clone().into_bytes()),
    ));

    let (htpasswd, htpasswd_text) = match inputs.config.registry_credentials() {
        Some((user, password)) => {
            let text = htpasswd_text(host, reg::HTPASSWD_FILE, &user, &password)?;
            steps.push(write(
                Phase::Registry,
                "the registry asks for these credentials (registry.username)",
                reg::HTPASSWD_FILE,
                0o600,
                Contents::Secret(crate::secret::Secret::new(text.clone())),
            ));
            let auth = reg::HtpasswdAuth {
                realm: "bootstrap-registry".to_owned(),
                path: PathBuf::from(reg::HTPASSWD_FILE),
            };
            (Some(auth), text)
        }
        None => (None, String::new()),
    };
    let config = reg::RegistryConfig {
        listen_address: listen,
        port: inputs.config.registry.port,
        htpasswd,
        // Every node pulls docker.io, registry.k8s.io … from here: a push would
        // replace them cluster-wide. Seeding writes the storage directly.
        read_only: true,
        ..reg::RegistryConfig::default()
    };
    let config_text = config.render()?;
    steps.push(write(
        Phase::Registry,
        "the registry's configuration",
        reg::CONFIG_FILE,
        0o644,
        Contents::Public(config_text.clone().into_bytes()),
    ));
    let unit_text = reg::RegistryUnit::new(
        PathBuf::from(reg::BINARY),
        PathBuf::from(reg::CONFIG_FILE),
        &config,
    )
    .render()?;
    steps.push(write(
        Phase::Registry,
        "the registry as a system service",
        &format!("/etc/systemd/system/{}", reg::UNIT_NAME),
        0o644,
        Contents::Public(unit_text.clone().into_bytes()),
    ));
    let push_files = match push {
        Some((push, (user, password))) => {
            Some(push_registry_files(host, push.port, &user, &password)?)
        }
        None => None,
    };
    if let Some(files) = &push_files {
        steps.push(write(
            Phase::Registry,
            "pushes must prove these credentials (registry.push)",
            reg::PUSH_HTPASSWD_FILE,
            0o600,
            Contents::Secret(crate::secret::Secret::new(files.htpasswd.clone())),
        ));
        steps.push(write(
            Phase::Registry,
            "the writable registry: loopback only, same storage, credentials required",
            reg::PUSH_CONFIG_FILE,
            0o644,
            Contents::Public(files.config.clone().into_bytes()),
        ));
        steps.push(write(
            Phase::Registry,
            "the writable registry as a system service",
            &format!("/etc/systemd/system/{}", reg::PUSH_UNIT_NAME),
            0o644,
            Contents::Public(files.unit.clone().into_bytes()),
        ));
    }
    let units: Vec<&str> = std::iter::once(unit_text.as_str())
        .chain(push_files.as_ref().map(|f| f.unit.as_str()))
        .collect();
    steps.push(daemon_reload(Phase::Registry, &units));

    let images = inputs.image_dir("images")?;
    let tree = inputs.image_dir("registry")?;
    let images = host.stat(&images)?.is_some().then_some(images);
    let tree = host.stat(&tree)?.is_some().then_some(tree);
    if images.is_some() || tree.is_some() {
        steps.push(step(
            Phase::Registry,
            "the cluster image's images, written straight into the registry's storage",
            Action::SeedImages {
                sources: sources_digest(
                    host,
                    [
                        images.clone(),
                        tree.as_ref()
                            .map(|t| t.join("docker/registry/v2/repositories")),
                    ],
                )?,
                images_dir: images,
                skip: registry_image.into_iter().collect(),
                registry_tree: tree,
                storage: PathBuf::from(reg::STORAGE_DIR),
            },
        ));
    }
    steps.push(step(
        Phase::Registry,
        "the registry runs now and at every boot",
        Action::Service {
            unit: reg::UNIT_NAME.to_owned(),
            action: ServiceAction::Enable,
        },
    ));
    steps.push(keyed_restart(
        Phase::Registry,
        reg::UNIT_NAME,
        &[
            config_text.as_bytes(),
            unit_text.as_bytes(),
            server_cert.as_bytes(),
            names_text.as_bytes(),
            htpasswd_text.as_bytes(),
        ],
    ));
    match &push_files {
        Some(files) => {
            steps.push(step(
                Phase::Registry,
                "the writable registry runs now and at every boot",
                Action::Service {
                    unit: reg::PUSH_UNIT_NAME.to_owned(),
                    action: ServiceAction::Enable,
                },
            ));
            steps.push(keyed_restart(
                Phase::Registry,
                reg::PUSH_UNIT_NAME,
                &[
                    files.config.as_bytes(),
                    files.unit.as_bytes(),
                    server_cert.as_bytes(),
                    names_text.as_bytes(),
                    files.htpasswd.as_bytes(),
                ],
            ));
        }
        None => {
            // Pushing was allowed before and is not now: nothing may write any more.
            let unit_file = PathBuf::from(format!("/etc/systemd/system/{}", reg::PUSH_UNIT_NAME));
            if host.stat(&unit_file)?.is_some() {
                for action in [ServiceAction::Disable, ServiceAction::Stop] {
                    steps.push(step(
                        Phase::Registry,
                        "registry.push is unset: the writable registry stops",
                        Action::Service {
                            unit: reg::PUSH_UNIT_NAME.to_owned(),
                            action,
                        },
                    ));
                }
            }
        }
    }
    // Asked where it listens, which is where its name leads on this node.
    steps.push(step(
        Phase::Registry,
        "images are pulled from it next",
        Action::WaitFor {
            fail_when: None,
            probe: Probe::Https {
                address: std::net::SocketAddr::new(listen, inputs.config.registry.port).to_string(),
                server_name: inputs.config.registry.domain.clone(),
                ca_file: PathBuf::from(reg::CA_CERT_FILE),
                path: "/v2/".to_owned(),
            },
            timeout: REGISTRY_WAIT,
            interval: std::time::Duration::from_millis(250),
        },
    ));
    Ok(steps)
}

/// An htpasswd file with one line for `user`. bcrypt salts every hash: the line already
/// in `path` is kept while it still matches, or every run would rewrite it and restart
/// the registry.
fn htpasswd_text(
    host: &dyn Host,
    path: &str,
    user: &str,
    password: &crate::secret::Secret,
) -> Result<String, RuntimeError> {
    use crate::registry as reg;
    let current = host.read_string(Path::new(path))?.filter(|line| {
        line.trim_end().split_once(':').is_some_and(|(u, hash)| {
            u == user && bcrypt::verify(password.expose(), hash).unwrap_or(false)
        })
    });
    Ok(match current {
        Some(line) => line,
        None => format!(
            "{}\n",
            reg::htpasswd_line(user, password, reg::DEFAULT_BCRYPT_COST)?.expose()
        ),
    })
}

/// The writable registry's files (`registry.push`).
struct PushRegistryFiles {
    htpasswd: String,
    config: String,
    unit: String,
}

/// A second registry over the same storage, writable, asking for the push credentials,
/// and on loopback only: pushing is done on this node (or through a tunnel to it). The
/// registry every node pulls from stays read-only, and the push credentials are never
/// handed to another node.
fn push_registry_files(
    host: &dyn Host,
    port: u16,
    user: &str,
    password: &crate::secret::Secret,
) -> Result<PushRegistryFiles, RuntimeError> {
    use crate::registry as reg;
    let htpasswd = htpasswd_text(host, reg::PUSH_HTPASSWD_FILE, user, password)?;
    let config = reg::RegistryConfig {
        listen_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
        htpasswd: Some(reg::HtpasswdAuth {
            realm: "bootstrap-registry-push".to_owned(),
            path: PathBuf::from(reg::PUSH_HTPASSWD_FILE),
        }),
        read_only: false,
        ..reg::RegistryConfig::default()
    };
    let mut unit = reg::RegistryUnit::new(
        PathBuf::from(reg::BINARY),
        PathBuf::from(reg::PUSH_CONFIG_FILE),
        &config,
    );
    unit.description = "bootstrap local image registry, writable (pushes, loopback only)".into();
    Ok(PushRegistryFiles {
        htpasswd,
        config: config.render()?,
        unit: unit.render()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::distro::Context;
    use crate::distro_kind::DistroKind;
    use crate::host::FakeHost;
    use crate::registry as reg;
    use crate::role::Role;
    use crate::rootfs::ClusterImage;

    fn image() -> ClusterImage {
        ClusterImage {
            dir: PathBuf::from("/img"),
            metadata: crate::rootfs::Metadata {
                version: "v1.31.4+k3s1".into(),
                arch: "amd64".into(),
                ..Default::default()
            },
            metadata_path: PathBuf::from("Metadata"),
            distro: DistroKind::K3s,
            arches: vec![],
            arch_dir: None,
            kubefile_path: None,
            kubefile: None,
            container_runtime: None,
            containerd: None,
            registry: Some(crate::rootfs::sources::BinarySource::Bin {
                path: PathBuf::from("bin/registry"),
            }),
            kubeadm_config: None,
        }
    }

    /// A host with the registry binary in the image and `config` (and the files it names)
    /// loaded as `up` would load it.
    fn host_and_config(config: &str, files: &[(&str, &str)]) -> (FakeHost, Config) {
        let host = FakeHost::new()
            .with_file("/img/bin/registry", "#!")
            .with_file("/etc/bootstrap/config.yaml", config);
        for (path, text) in files {
            host.write_atomic(Path::new(path), text.as_bytes(), 0o600, None)
                .unwrap();
        }
        let config = crate::config::load(&host, &crate::config::Sources::default()).unwrap();
        (host, config)
    }

    fn registry_steps_for(
        host: &FakeHost,
        config: &Config,
        role: Role,
        node_address: Option<&str>,
    ) -> Vec<Step> {
        let image = image();
        let ctx = Context {
            host,
            config,
            image: &image,
            role,
            node_name: "node-1".into(),
            node_address: node_address.map(|a| a.parse().unwrap()),
            material: None,
        };
        registry_steps(&Inputs::new(&ctx)).unwrap()
    }

    fn written<'s>(steps: &'s [Step], path: &str) -> Option<&'s Contents> {
        steps.iter().find_map(|s| match &s.action {
            Action::WriteFile {
                path: p, contents, ..
            } if p == Path::new(path) => Some(contents),
            _ => None,
        })
    }

    fn yaml(contents: &Contents) -> serde_yaml::Value {
        serde_yaml::from_slice(contents.bytes()).unwrap()
    }

    fn probed(steps: &[Step]) -> String {
        steps
            .iter()
            .find_map(|s| match &s.action {
                Action::WaitFor {
                    probe: Probe::Https { address, .. },
                    ..
                } => Some(address.clone()),
                _ => None,
            })
            .expect("a readiness wait")
    }

    #[test]
    fn the_registry_is_read_only_and_listens_where_its_name_leads() {
        let secret = "cluster: {name: c, join_secret_file: /etc/bootstrap/join-secret, ";
        let secret_file = [(
            "/etc/bootstrap/join-secret",
            "b50eb0e996877bdcd8663593348c93b8719ea884355afba15b627ec2951c2e99",
        )];
        for (config, role, node, addr) in [
            // A single node: its own address.
            (
                "{}",
                Role::InitController,
                Some("10.0.0.10"),
                "10.0.0.10:5000",
            ),
            // The first controller of several, whose default route is another network:
            // where sea.hub points every node (cluster.controllers[0]).
            (
                &format!("{secret}controllers: [10.0.0.10, 10.0.0.11]}}\n") as &str,
                Role::InitController,
                Some("192.168.1.5"),
                "10.0.0.10:5000",
            ),
            // Another controller with registry.ha: its own address.
            (
                &format!("{secret}controllers: [10.0.0.10, 10.0.0.11]}}\nregistry: {{ha: true}}\n"),
                Role::JoinController,
                Some("10.0.0.11"),
                "10.0.0.11:5000",
            ),
            // No address known: loopback, not every address.
            ("{}", Role::InitController, None, "127.0.0.1:5000"),
        ] {
            let (host, config) = host_and_config(config, &secret_file);
            let steps = registry_steps_for(&host, &config, role, node);
            let yml = yaml(written(&steps, reg::CONFIG_FILE).unwrap());
            assert_eq!(yml["http"]["addr"], addr, "{config:?}");
            assert_eq!(
                yml["storage"]["maintenance"]["readonly"]["enabled"],
                serde_yaml::Value::Bool(true)
            );
            assert_eq!(probed(&steps), addr);
            assert!(written(&steps, reg::PUSH_CONFIG_FILE).is_none());
        }
    }

    #[test]
    fn pushing_is_a_second_registry_on_loopback_behind_its_own_credentials() {
        let (host, config) = host_and_config(
            "registry:\n  username: puller\n  password_file: /etc/bootstrap/pull-pw\n  push: {username: pusher, password_file: /etc/bootstrap/push-pw}\n",
            &[
                ("/etc/bootstrap/pull-pw", "pull-password-1"),
                ("/etc/bootstrap/push-pw", "push-password-1"),
            ],
        );
        let steps = registry_steps_for(&host, &config, Role::InitController, Some("10.0.0.10"));
        // The registry every node pulls from: read-only, pull credentials.
        let pull = yaml(written(&steps, reg::CONFIG_FILE).unwrap());
        assert_eq!(pull["http"]["addr"], "10.0.0.10:5000");
        assert_eq!(
            pull["storage"]["maintenance"]["readonly"]["enabled"],
            serde_yaml::Value::Bool(true)
        );
        assert_eq!(pull["auth"]["htpasswd"]["path"], reg::HTPASSWD_FILE);
        // The push registry: loopback, writable, the same storage, its own htpasswd.
        let push = yaml(written(&steps, reg::PUSH_CONFIG_FILE).unwrap());
        assert_eq!(push["http"]["addr"], "127.0.0.1:5001");
        assert_eq!(
            push["storage"]["maintenance"]["readonly"]["enabled"],
            serde_yaml::Value::Bool(false)
        );
        assert_eq!(push["storage"]["filesystem"], pull["storage"]["filesystem"]);
        assert_eq!(push["auth"]["htpasswd"]["path"], reg::PUSH_HTPASSWD_FILE);
        let Some(Contents::Secret(line)) = written(&steps, reg::PUSH_HTPASSWD_FILE) else {
            panic!("the push htpasswd is not a secret");
        };
        let (user, hash) = line.expose().trim_end().split_once(':').unwrap();
        assert_eq!(user, "pusher");
        assert!(bcrypt::verify("push-password-1", hash).unwrap());
        let Some(Contents::Secret(pull_line)) = written(&steps, reg::HTPASSWD_FILE) else {
            panic!("no pull htpasswd");
        };
        assert!(!pull_line.expose().contains("pusher"));
        let unit = String::from_utf8(
            written(
                &steps,
                &format!("/etc/systemd/system/{}", reg::PUSH_UNIT_NAME),
            )
            .unwrap()
            .bytes()
            .to_vec(),
        )
        .unwrap();
        assert!(
            unit.contains(&format!("serve {}", reg::PUSH_CONFIG_FILE)),
            "{unit}"
        );
        // Clients reach it as 127.0.0.1: the certificate says so.
        let names = written(&steps, SERVER_NAMES_FILE).unwrap().bytes();
        assert!(String::from_utf8_lossy(names).contains("127.0.0.1\n"));
        for (unit, action) in [
            (reg::PUSH_UNIT_NAME, ServiceAction::Enable),
            (reg::PUSH_UNIT_NAME, ServiceAction::Restart),
        ] {
            assert!(
                steps.iter().any(|s| s.action
                    == Action::Service {
                        unit: unit.to_owned(),
                        action
                    }),
                "{unit} {action:?}"
            );
        }

        // Unset again: the push registry is stopped and disabled.
        let (host, config) = host_and_config("{}", &[]);
        host.write_atomic(
            Path::new(&format!("/etc/systemd/system/{}", reg::PUSH_UNIT_NAME)),
            unit.as_bytes(),
            0o644,
            None,
        )
        .unwrap();
        let steps = registry_steps_for(&host, &config, Role::InitController, Some("10.0.0.10"));
        for action in [ServiceAction::Disable, ServiceAction::Stop] {
            assert!(steps.iter().any(|s| s.action
                == Action::Service {
                    unit: reg::PUSH_UNIT_NAME.to_owned(),
                    action
                }));
        }
        assert!(written(&steps, reg::PUSH_CONFIG_FILE).is_none());
    }
}
