//! kubeadm: kubeadm, kubelet and kubectl with the kubelet unit and its `10-kubeadm.conf`
//! drop-in; Init/Cluster/Join/KubeletConfiguration in the API version the Kubernetes
//! version needs; token and certificate key chosen up front, only ever in 0600 files.

use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[cfg(test)]
use super::kubeadm_config::taint;
pub use super::kubeadm_config::{api_version, CRI_SOCKET, KINDS};
use super::kubeadm_config::{render_docs, render_init, render_join, Secrets};
use super::steps;
use super::{Context, Distro, DistroError, DistroKind, JoinMaterial, JoinRole, Joined, Layout};
use crate::host::CommandSpec;
use crate::plan::{Phase, ServiceAction, Step};
use crate::role::Role;
use crate::secret::Secret;

pub const KUBEADM: &str = "/usr/local/bin/kubeadm";
pub const KUBELET: &str = "/usr/local/bin/kubelet";
pub const KUBECTL: &str = "/usr/local/bin/kubectl";
pub const KUBELET_UNIT: &str = "kubelet.service";
pub const KUBELET_UNIT_PATH: &str = "/etc/systemd/system/kubelet.service";
pub const KUBELET_DROPIN: &str = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf";
pub const STATE_DIR: &str = "/var/lib/bootstrap/kubeadm";
pub const INIT_CONFIG: &str = "/var/lib/bootstrap/kubeadm/init.yaml";
pub const JOIN_CONFIG: &str = "/var/lib/bootstrap/kubeadm/join.yaml";
pub const UPLOAD_CONFIG: &str = "/var/lib/bootstrap/kubeadm/upload-certs.yaml";
/// The token and certificate key this cluster was initialised with (0600).
pub const SECRETS: &str = "/var/lib/bootstrap/kubeadm/secrets.json";
/// When the control-plane certificates were last uploaded (RFC 3339).
pub const CERTS_UPLOADED: &str = "/var/lib/bootstrap/kubeadm/certs-uploaded";
pub const ADMIN_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";
pub const KUBELET_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
pub const CA_CERT: &str = "/etc/kubernetes/pki/ca.crt";
const KUBEADM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// Bound on draining a controller before its kubelet is replaced.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

pub struct Kubeadm;

fn secrets(ctx: &Context<'_>) -> Result<Secrets, DistroError> {
    if let Some(text) = ctx.host.read_string(Path::new(SECRETS))? {
        if let Ok(existing) = serde_json::from_str::<Secrets>(&text) {
            return Ok(existing);
        }
        log::warn!("{SECRETS} is unreadable; choosing a new token and certificate key");
    }
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let id = crate::random::from_alphabet(6, alphabet).map_err(DistroError::Random)?;
    let secret = crate::random::from_alphabet(16, alphabet).map_err(DistroError::Random)?;
    Ok(Secrets {
        token: format!("{id}.{secret}"),
        certificate_key: crate::random::hex(32).map_err(DistroError::Random)?,
    })
}

/// `kubelet.service` as the Kubernetes packages ship it, for our binary path.
pub fn kubelet_unit() -> String {
    format!(
        "# Written by bootstrap (as the Kubernetes packages ship it); `bootstrap reset` removes it.\n\
[Unit]\n\
Description=kubelet: The Kubernetes Node Agent\n\
Wants=network-online.target\n\
After=network-online.target\n\
\n\
[Service]\n\
ExecStart={KUBELET}\n\
Restart=always\n\
StartLimitInterval=0\n\
RestartSec=10\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n"
    )
}

/// The `10-kubeadm.conf` drop-in: kubeadm's kubeconfigs, config and flags file.
pub fn kubelet_dropin() -> String {
    format!(
        "# Written by bootstrap (kubeadm's drop-in); `bootstrap reset` removes it.\n\
[Service]\n\
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"\n\
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"\n\
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n\
EnvironmentFile=-/etc/default/kubelet\n\
ExecStart=\n\
ExecStart={KUBELET} $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS\n"
    )
}

/// `sha256:` + hex SHA-256 of the CA certificate's DER SubjectPublicKeyInfo, as kubeadm
/// pins it.
pub fn ca_cert_hash(pem: &[u8]) -> Result<String, String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(spki))))
}

const LAYOUT: Layout = Layout {
    kind: DistroKind::Kubeadm,
    admin_kubeconfig: ADMIN_KUBECONFIG,
    node_kubeconfig: KUBELET_KUBECONFIG,
    kubectl: (KUBECTL, &[]),
    units: (KUBELET_UNIT, KUBELET_UNIT),
    worker_joined: (
        "the kubelet runs with its cluster credentials",
        Joined::Active(KUBELET_UNIT),
    ),
    ca_cert: CA_CERT,
};

impl Distro for Kubeadm {
    fn layout(&self) -> &'static Layout {
        &LAYOUT
    }

    fn install_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        let unit = kubelet_unit();
        let dropin = kubelet_dropin();
        Ok(vec![
            steps::install(
                Phase::Install,
                "kubeadm sets the node up",
                ctx.bin("kubeadm")?,
                KUBEADM,
            ),
            steps::install(
                Phase::Install,
                "the node agent",
                ctx.bin("kubelet")?,
                KUBELET,
            ),
            steps::install(
                Phase::Install,
                "for operators and manifests",
                ctx.bin("kubectl")?,
                KUBECTL,
            ),
            steps::write(
                Phase::Install,
                "kubeadm manages neither kubelet nor its unit",
                KUBELET_UNIT_PATH,
                0o644,
                unit.clone().into_bytes(),
            ),
            steps::write(
                Phase::Install,
                "kubelet runs with what kubeadm writes",
                KUBELET_DROPIN,
                0o644,
                dropin.clone().into_bytes(),
            ),
            crate::systemd::daemon_reload(Phase::Install, &[&unit, &dropin]),
            // kubeadm's preflight wants kubelet enabled; it crash-loops until init/join.
            steps::service(
                Phase::Install,
                "kubelet starts at every boot",
                KUBELET_UNIT,
                ServiceAction::Enable,
            ),
        ])
    }

    fn cluster_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        let mut out = Vec::new();
        if ctx.role == Role::InitController {
            let secrets = secrets(ctx)?;
            let secrets_text = serde_json::to_string(&secrets).unwrap_or_default();
            let init = render_init(ctx, &secrets)?;
            out.push(steps::write_secret(
                Phase::Init,
                "the token and certificate key, chosen before init so joins can be planned",
                SECRETS,
                Secret::new(secrets_text),
            ));
            out.push(steps::write_secret(
                Phase::Init,
                "kubeadm reads token and key from this 0600 file, never from argv",
                INIT_CONFIG,
                Secret::new(init),
            ));
            out.push(steps::run(
                Phase::Init,
                "initialise the control plane and upload its certificates for other controllers",
                CommandSpec::new(KUBEADM)
                    .args([
                        "init",
                        "--config",
                        INIT_CONFIG,
                        "--upload-certs",
                        "--skip-token-print",
                        "--skip-certificate-key-print",
                    ])
                    .timeout(KUBEADM_TIMEOUT),
                Some(steps::file_exists(ADMIN_KUBECONFIG)),
            ));
            out.push(self.readiness(ctx, Phase::Init));
        } else {
            let material = ctx.material()?;
            out.push(steps::write_secret(
                Phase::Join,
                "kubeadm reads token and key from this 0600 file, never from argv",
                JOIN_CONFIG,
                Secret::new(render_join(ctx, material)?),
            ));
            out.push(steps::run(
                Phase::Join,
                if ctx.role.is_controller() {
                    "join the control plane"
                } else {
                    "join as a worker"
                },
                CommandSpec::new(KUBEADM)
                    .args(["join", "--config", JOIN_CONFIG])
                    .timeout(KUBEADM_TIMEOUT),
                Some(steps::file_exists(KUBELET_KUBECONFIG)),
            ));
            out.push(self.readiness(ctx, Phase::Join));
        }
        Ok(out)
    }

    fn post_install_steps(&self, ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        let mut out = Vec::new();
        if !ctx.role.is_controller() {
            return Ok(out);
        }
        if ctx.role == Role::InitController {
            for (_, path) in ctx.manifests()? {
                let contents = ctx.host.read(&path)?.unwrap_or_default();
                out.push(
                    steps::run(
                        Phase::PostInstall,
                        "the cluster image's manifests",
                        self.kubectl(ADMIN_KUBECONFIG)
                            .args(["apply", "-f"])
                            .arg(path.display().to_string()),
                        None,
                    )
                    .keyed(&[&contents]),
                );
            }
        }
        out.extend(super::operator_kubeconfig(ctx, ADMIN_KUBECONFIG)?);
        Ok(out)
    }

    fn mint(
        &self,
        ctx: &Context<'_>,
        role: JoinRole,
        ttl: std::time::Duration,
    ) -> Result<JoinMaterial, DistroError> {
        let created = ctx.host.run_checked(&CommandSpec::new(KUBEADM).args([
            "token".to_owned(),
            "create".to_owned(),
            "--ttl".to_owned(),
            super::go_duration(ttl),
            "--description".to_owned(),
            "bootstrap join".to_owned(),
        ]))?;
        let token = created.stdout_text().trim().to_owned();
        if !is_bootstrap_token(&token) {
            return Err(DistroError::Cluster {
                what: "kubeadm token create".into(),
                reason: "printed no bootstrap token".into(),
            });
        }
        let pem = ctx
            .host
            .read(Path::new(CA_CERT))?
            .ok_or_else(|| DistroError::Cluster {
                what: CA_CERT.into(),
                reason: "missing: kubeadm has not initialised this controller".into(),
            })?;
        let hash = ca_cert_hash(&pem).map_err(|reason| DistroError::Cluster {
            what: CA_CERT.into(),
            reason,
        })?;
        let mut material =
            super::material(ctx, role, Secret::new(token), Some(super::expiry(ttl)))?;
        material.ca_cert_hash = Some(hash);
        if role == JoinRole::Controller {
            material.certificate_key = Some(certificate_key_for_join(ctx)?);
        }
        Ok(material)
    }

    /// The `kubeadm-certs` Secret: the control-plane certificates uploaded (encrypted with
    /// the joiner's certificate key) for the join that just ended. kubeadm would keep them
    /// 2 h; nobody needs them once the controller has joined.
    fn after_controller_joined(&self, host: &dyn crate::host::Host) -> Result<(), DistroError> {
        let command = self.kubectl(ADMIN_KUBECONFIG).args([
            "-n",
            "kube-system",
            "delete",
            "secret",
            "kubeadm-certs",
            "--ignore-not-found",
        ]);
        host.run_checked(&command)?;
        log::info!("deleted the uploaded control-plane certificates (kube-system/kubeadm-certs)");
        Ok(())
    }

    /// The Node, then its stacked etcd member, removed with etcdctl in this controller's
    /// etcd static pod (kubeadm removes a member only on `kubeadm reset` of that node).
    fn forget_controller(
        &self,
        host: &dyn crate::host::Host,
        this_node: &str,
        name: Option<&str>,
        address: std::net::IpAddr,
    ) -> Result<Vec<String>, DistroError> {
        let mut removed: Vec<String> = super::delete_node(self, host, name)?.into_iter().collect();
        let etcdctl = |args: &[&str]| {
            let pod = format!("etcd-{this_node}");
            self.kubectl(ADMIN_KUBECONFIG)
                .args(["-n", "kube-system", "exec", pod.as_str(), "--", "etcdctl"])
                .args([
                    "--endpoints=https://127.0.0.1:2379",
                    "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
                    "--cert=/etc/kubernetes/pki/etcd/server.crt",
                    "--key=/etc/kubernetes/pki/etcd/server.key",
                ])
                .args(args.iter().copied())
        };
        let list = host.run_checked(&etcdctl(&["member", "list", "-w", "json"]))?;
        let members: Value =
            serde_json::from_slice(&list.stdout).map_err(|e| DistroError::Cluster {
                what: "etcdctl member list".into(),
                reason: format!("unreadable: {e}"),
            })?;
        let peer = format!("https://{}", super::host_port(&address.to_string(), 2380));
        let stale = members["members"].as_array().and_then(|all| {
            all.iter().find(|m| {
                m["peerURLs"]
                    .as_array()
                    .is_some_and(|urls| urls.iter().any(|u| u == &Value::from(peer.as_str())))
            })
        });
        if let Some(member) = stale {
            let id = member["ID"].as_u64().unwrap_or_default();
            let hex_id = format!("{id:x}");
            host.run_checked(&etcdctl(&["member", "remove", hex_id.as_str()]))?;
            removed.push(format!(
                "etcd member {} ({peer})",
                member["name"].as_str().unwrap_or(&hex_id)
            ));
        }
        Ok(removed)
    }

    fn leave_steps(&self, _ctx: &Context<'_>) -> Result<Vec<Step>, DistroError> {
        // `kubeadm reset` removes a control plane's stacked etcd member itself.
        Ok(Vec::new())
    }

    fn teardown_steps(&self) -> Vec<Step> {
        let mut out = vec![steps::run(
            Phase::Reset,
            "kubeadm's own reset: static pods, etcd member, certificates, kubelet state",
            CommandSpec::new(KUBEADM)
                .args(["reset", "--force", "--cri-socket", CRI_SOCKET])
                .timeout(KUBEADM_TIMEOUT),
            Some(steps::absent(KUBELET_KUBECONFIG)),
        )];
        out.push(steps::service(
            Phase::Reset,
            "kubelet stops",
            KUBELET_UNIT,
            ServiceAction::Stop,
        ));
        out.extend(super::teardown_common(
            &[],
            "/usr/local/bin/containerd-shim-runc-v2",
            &[
                "/var/lib/kubelet",
                "/run/containerd",
                "/var/lib/containerd",
                "/run/netns",
            ],
            &[
                "cni0",
                "flannel.1",
                "kube-ipvs0",
                "cilium_host",
                "vxlan.calico",
            ],
        ));
        // What kubeadm reset leaves behind (distros.md §3.4).
        for path in [
            "/etc/kubernetes",
            "/var/lib/kubelet",
            "/var/lib/etcd",
            "/etc/cni/net.d",
            "/var/lib/cni",
            "/var/lib/containerd",
            "/run/containerd",
            STATE_DIR,
        ] {
            out.push(steps::remove(
                Phase::Reset,
                "state kubeadm reset leaves behind",
                path,
            ));
        }
        out
    }

    fn upgrade_steps(
        &self,
        ctx: &Context<'_>,
        leads: bool,
    ) -> Result<super::UpgradeSteps, DistroError> {
        let target = ctx.kube_version();
        // The first controller to move upgrades the control plane; the others follow it.
        let upgrade = if leads {
            CommandSpec::new(KUBEADM).args(["upgrade", "apply", target.as_str(), "--yes"])
        } else {
            CommandSpec::new(KUBEADM).args(["upgrade", "node"])
        };
        // The kubelet swap moves this node's pods: on a controller of a bigger cluster
        // they go elsewhere first (a worker's kubelet credentials may not drain).
        let drain = ctx.role.is_controller() && !ctx.single_node();
        let kubectl = |args: &[&str]| {
            self.kubectl(ADMIN_KUBECONFIG)
                .args(args.iter().copied())
                .timeout(DRAIN_TIMEOUT + std::time::Duration::from_secs(30))
        };
        let mut out = vec![
            steps::install(
                Phase::Upgrade,
                "kubeadm first: it upgrades the control plane",
                ctx.bin("kubeadm")?,
                KUBEADM,
            ),
            steps::run(
                Phase::Upgrade,
                if leads {
                    "upgrade the control plane (the first controller to move)"
                } else {
                    "upgrade this node's kubeadm-managed parts"
                },
                upgrade.timeout(KUBEADM_TIMEOUT),
                None,
            )
            .keyed(&[target.as_bytes()]),
        ];
        let timeout = format!("{}s", DRAIN_TIMEOUT.as_secs());
        if drain {
            out.push(
                steps::run(
                    Phase::Upgrade,
                    "its pods move elsewhere before the kubelet is replaced",
                    kubectl(&[
                        "drain",
                        &ctx.node_name,
                        "--ignore-daemonsets",
                        "--delete-emptydir-data",
                        "--timeout",
                        &timeout,
                    ]),
                    None,
                )
                .keyed(&[target.as_bytes()]),
            );
        }
        out.extend([
            steps::install(
                Phase::Upgrade,
                "then the node agent",
                ctx.bin("kubelet")?,
                KUBELET,
            ),
            steps::install(Phase::Upgrade, "and kubectl", ctx.bin("kubectl")?, KUBECTL),
        ]);
        // The kubelet restarts once the node's files are written for the new version.
        let mut start = vec![
            steps::service(
                Phase::Upgrade,
                "kubelet restarts on the new binary",
                KUBELET_UNIT,
                ServiceAction::Restart,
            )
            .keyed(&[target.as_bytes()]),
            self.readiness(ctx, Phase::Upgrade),
        ];
        if drain {
            start.push(
                steps::run(
                    Phase::Upgrade,
                    "it takes pods again",
                    kubectl(&["uncordon", &ctx.node_name]),
                    None,
                )
                .keyed(&[target.as_bytes()]),
            );
        }
        Ok(super::UpgradeSteps { swap: out, start })
    }
}

/// `[a-z0-9]{6}.[a-z0-9]{16}`, kubeadm's token format.
pub fn is_bootstrap_token(token: &str) -> bool {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(token.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

/// The certificate key for a controller join: every controller mint uploads the
/// control-plane certificates again, encrypted with a key of its own. Any controller may
/// mint, so an earlier key — this controller's or another's — may no longer open what
/// kubeadm keeps; and a key once handed out opens nothing uploaded later.
fn certificate_key_for_join(ctx: &Context<'_>) -> Result<Secret, DistroError> {
    let key = crate::random::hex(32).map_err(DistroError::Random)?;
    let config = render_docs(
        ctx,
        vec![
            json!({
                "apiVersion": api_version(ctx),
                "kind": "InitConfiguration",
                "certificateKey": key,
                "nodeRegistration": {"criSocket": CRI_SOCKET},
            }),
            json!({
                "apiVersion": api_version(ctx),
                "kind": "ClusterConfiguration",
                "kubernetesVersion": ctx.kube_version(),
                "controlPlaneEndpoint": ctx.endpoint(),
            }),
        ],
    )?;
    ctx.host
        .write_atomic(Path::new(UPLOAD_CONFIG), config.as_bytes(), 0o600, None)?;
    log::info!("uploading the control-plane certificates with a new key for this controller join");
    ctx.host.run_checked(
        &CommandSpec::new(KUBEADM)
            .args([
                "init",
                "phase",
                "upload-certs",
                "--upload-certs",
                "--config",
                UPLOAD_CONFIG,
            ])
            .timeout(KUBEADM_TIMEOUT),
    )?;
    ctx.host.write_atomic(
        Path::new(CERTS_UPLOADED),
        crate::state::now_rfc3339().as_bytes(),
        0o600,
        None,
    )?;
    Ok(Secret::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeadm controller with a default config, on `host`.
    fn with_context<T>(host: &crate::host::FakeHost, f: impl FnOnce(&Context<'_>) -> T) -> T {
        let config = crate::config::load(host, &crate::config::Sources::default()).unwrap();
        let image = crate::distro::ClusterImage {
            dir: "/img".into(),
            metadata: crate::rootfs::Metadata {
                version: "v1.31.4".into(),
                ..Default::default()
            },
            metadata_path: "Metadata".into(),
            distro: crate::distro_kind::DistroKind::Kubeadm,
            arches: vec![],
            arch_dir: None,
            kubefile_path: None,
            kubefile: None,
            container_runtime: None,
            containerd: None,
            registry: None,
            kubeadm_config: None,
        };
        let ctx = Context {
            host,
            config: &config,
            image: &image,
            role: crate::role::Role::InitController,
            node_name: "cp-1".into(),
            node_address: Some("10.0.0.10".parse().unwrap()),
            material: None,
        };
        f(&ctx)
    }

    #[test]
    fn every_controller_join_uploads_the_certificates_with_a_new_key() {
        let host = crate::host::FakeHost::new();
        let keys: Vec<String> = (0..2)
            .map(|_| {
                with_context(&host, |ctx| {
                    let key = certificate_key_for_join(ctx).unwrap();
                    let uploaded = String::from_utf8(host.file(UPLOAD_CONFIG).unwrap()).unwrap();
                    assert!(uploaded.contains(key.expose()), "{uploaded}");
                    key.expose().to_owned()
                })
            })
            .collect();
        assert_ne!(keys[0], keys[1], "a certificate key was used twice");
        assert_eq!(keys[0].len(), 64, "32 random bytes, hex");
        let uploads = host
            .commands()
            .iter()
            .filter(|c| c.contains("upload-certs --upload-certs"))
            .count();
        assert_eq!(uploads, 2, "{:?}", host.commands());
    }

    #[test]
    fn the_uploaded_certificates_are_deleted_once_the_controller_has_joined() {
        let host = crate::host::FakeHost::new();
        Kubeadm.after_controller_joined(&host).unwrap();
        let commands = host.commands();
        assert!(
            commands
                .iter()
                .any(|c| c.contains("kube-system delete secret kubeadm-certs")
                    && c.contains(ADMIN_KUBECONFIG)),
            "{commands:?}"
        );
    }

    #[test]
    fn taints_parse_like_kubectl() {
        assert_eq!(
            taint("dedicated=gpu:NoSchedule"),
            json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})
        );
        assert_eq!(
            taint("maintenance:NoExecute"),
            json!({"key": "maintenance", "effect": "NoExecute"})
        );
    }
}
