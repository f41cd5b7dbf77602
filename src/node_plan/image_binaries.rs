//! Binaries a cluster image ships packed, as sealer's basefs builds it: containerd, its
//! shims, `ctr`, `runc` and the CNI plugins in a `cri/` bundle, unpacked the safe way
//! (verified, staged, versioned) into bootstrap's own folder and installed from there;
//! and the registry as a container image, whose `/bin/registry` is installed straight
//! from its layers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::containerd;
use crate::distro::Context;
use crate::host::{CommandSpec, HostError};
use crate::plan::{Action, Phase, Step};
use crate::rootfs::bundle::{self, BundleFiles};
use crate::rootfs::sources::BinarySource;
use crate::rootfs::tree::HostTree;
use crate::rootfs::{inspect, unpack};

/// Where a containerd bundle is unpacked (a symlink to its version, as `rootfs.dir`).
pub const BUNDLE_DIR: &str = "/var/lib/bootstrap/cri";
/// The registry binary's path in the `registry:2` image.
const REGISTRY_IN_IMAGE: &str = "/bin/registry";
/// Bound on `containerd --version`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a packed binary cannot be installed.
#[derive(Debug, thiserror::Error)]
pub enum PackedError {
    #[error("cluster image {image}: {what} is missing ({why})")]
    MissingInImage {
        image: String,
        what: String,
        why: String,
    },
    #[error(transparent)]
    Host(#[from] HostError),
}

fn missing(inputs: &Context<'_>, what: String, why: &str) -> PackedError {
    PackedError::MissingInImage {
        image: inputs.image.dir.display().to_string(),
        what,
        why: why.to_owned(),
    }
}

/// The registry binary's install step, and the image archive (its file name) not to
/// seed when the binary comes from one.
pub(super) fn registry_install(
    inputs: &Context<'_>,
) -> Result<(Step, Option<String>), PackedError> {
    let reason = "the CNCF distribution registry serves the cluster's images";
    let dest = PathBuf::from(crate::registry::BINARY);
    match &inputs.image.registry {
        Some(BinarySource::Bin { path }) => Ok((
            Step::new(
                Phase::Registry,
                reason,
                Action::InstallBinary {
                    source: inputs.image.dir.join(path),
                    dest,
                    mode: 0o755,
                },
            ),
            None,
        )),
        Some(BinarySource::Image { path }) => Ok((
            Step::new(
                Phase::Registry,
                "the registry, from its container image's layers (no container runtime needed to start it)",
                Action::InstallFromImage {
                    image: inputs.image.dir.join(path),
                    file: REGISTRY_IN_IMAGE.to_owned(),
                    dest,
                    mode: 0o755,
                    arch: target_arch(inputs),
                },
            ),
            registry_image_name(inputs),
        )),
        Some(ambiguous @ BinarySource::Ambiguous { .. }) => Err(missing(
            inputs,
            "an unambiguous registry".into(),
            &ambiguous.to_string(),
        )),
        Some(BinarySource::Bundle { .. }) | None => Err(missing(
            inputs,
            "bin/registry (or the registry's image, images/*registry*.tar)".into(),
            "registry.enabled is true; set registry.enabled: false to go without a local registry",
        )),
    }
}

/// The architecture binaries taken from the image must be built for: the image's, else
/// this machine's.
fn target_arch(inputs: &Context<'_>) -> String {
    match inputs.image.metadata.arch.as_str() {
        "" => crate::facts::go_arch(std::env::consts::ARCH),
        arch => arch.to_owned(),
    }
}

/// The file name of the archive under `images/` the registry binary comes from: it is
/// neither seeded nor imported as an application image.
pub(super) fn registry_image_name(inputs: &Context<'_>) -> Option<String> {
    match &inputs.image.registry {
        Some(BinarySource::Image { path }) => {
            path.file_name().map(|n| n.to_string_lossy().into_owned())
        }
        _ => None,
    }
}

/// kubeadm's containerd from a bundle: the unpack step and the install steps (CNI
/// plugins named in `skip_cni` come from the image's own `cni/` folder instead), and
/// what its containerd says to `--version`.
pub(super) fn containerd_from_bundle(
    inputs: &Context<'_>,
    rel: &Path,
    docker: bool,
    skip_cni: &[String],
) -> Result<(Vec<Step>, String), PackedError> {
    let host = inputs.host;
    let archive = inputs.image.dir.join(rel);
    let archive_real = host.real_path(&archive)?;
    let dest_real = host.real_path(Path::new(BUNDLE_DIR))?;
    let unpacked = unpack::find_unpacked(&archive_real, &dest_real, None)
        .is_some_and(|dir| unpack::points_at(&dest_real, &dir));
    let bundle_error = |e: crate::rootfs::unpack::UnpackError| {
        missing(
            inputs,
            rel.display().to_string(),
            &format!("cannot read it: {e}"),
        )
    };
    let files: BundleFiles = if unpacked {
        bundle::files(&HostTree {
            host,
            dir: Path::new(BUNDLE_DIR),
        })?
    } else {
        let (listing, _) = inspect::list_archive(&archive_real).map_err(bundle_error)?;
        bundle::files(&listing)?
    };
    for needed in ["containerd", "containerd-shim-runc-v2", "runc"] {
        if files.binary(needed).is_none() {
            return Err(missing(
                inputs,
                format!("{needed} in {}", rel.display()),
                "kubeadm needs containerd, its runc shim and runc on the host",
            ));
        }
    }
    let mut steps = vec![Step::new(
        Phase::Runtime,
        if docker {
            "containerd, its shim, ctr and runc come from docker's bundle (docker itself is not installed: kubelet 1.24 and later has no dockershim)"
        } else {
            "containerd comes as a bundle; unpacked the same safe way as the image"
        },
        Action::UnpackRootfs {
            archive: archive.clone(),
            dest: PathBuf::from(BUNDLE_DIR),
            sha256: None,
            sha256_source: None,
            arch: target_arch(inputs),
            bundle: true,
            ca_file: None,
            insecure_http: false,
        },
    )];
    let names: Vec<String> = files.binaries.iter().map(|(n, _)| n.clone()).collect();
    for (name, dest) in containerd::binaries(&names) {
        if let Some(source) = files.binary(&name) {
            steps.push(Step::new(
                Phase::Runtime,
                "kubeadm runs on the host's containerd",
                Action::InstallBinary {
                    source: Path::new(BUNDLE_DIR).join(source),
                    dest,
                    mode: 0o755,
                },
            ));
        }
    }
    for (name, source) in &files.cni {
        if !skip_cni.contains(name) {
            steps.push(Step::new(
                Phase::Runtime,
                "pod networking plugins",
                Action::InstallBinary {
                    source: Path::new(BUNDLE_DIR).join(source),
                    dest: Path::new(containerd::CNI_BIN_DIR).join(name),
                    mode: 0o755,
                },
            ));
        }
    }
    let containerd_rel = files
        .binary("containerd")
        .unwrap_or(Path::new("containerd"));
    let version = if unpacked {
        let binary = Path::new(BUNDLE_DIR).join(containerd_rel);
        host.run(&CommandSpec::new(binary.display().to_string()).arg("--version"))?
            .stdout_text()
    } else {
        version_from_archive(&archive_real, containerd_rel).map_err(|why| {
            missing(
                inputs,
                format!("a working containerd in {}", rel.display()),
                &why,
            )
        })?
    };
    Ok((steps, version))
}

/// What the bundle's containerd says to `--version`, before the bundle is unpacked: the
/// one binary is copied into a private temporary folder (outside the node's root: this
/// is reading the image, not changing the host), run, and removed.
fn version_from_archive(archive: &Path, member: &Path) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!(
        "bootstrap-containerd-{}-{}",
        std::process::id(),
        crate::random::hex(6).map_err(|e| e.to_string())?
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let binary = dir.join("containerd");
    let result = (|| {
        use std::os::unix::fs::PermissionsExt;
        if !bundle::copy_member(archive, member, &binary).map_err(|e| e.to_string())? {
            return Err(format!("{} is not a regular file", member.display()));
        }
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        run_version(&binary)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `BINARY --version`, bounded.
fn run_version(binary: &Path) -> Result<String, String> {
    let mut child = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{} --version: {e}", binary.display()))?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "containerd --version gave no answer in {VERSION_TIMEOUT:?}"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out).map_err(|e| e.to_string())?;
    }
    Ok(out)
}
