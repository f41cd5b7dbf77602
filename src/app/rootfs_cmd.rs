//! `bootstrap rootfs inspect|unpack`: cluster-image tools for operators and image builders.

use std::path::{Path, PathBuf};

use super::{print_json, Error};
use crate::cli::{Output, RootfsCommand};
use crate::facts::go_arch;
use crate::host::RootedHost;
use crate::rootfs::inspect::{self, InspectReport};
use crate::rootfs::tree::{HostTree, Tree};
use crate::rootfs::unpack::{self, UnpackOptions};
use crate::rootfs::ClusterImage;
use crate::validate;

pub(super) fn run(command: &RootfsCommand) -> Result<(), Error> {
    match command {
        RootfsCommand::Inspect { path, output } => run_inspect(path, *output),
        RootfsCommand::Unpack {
            archive,
            dest,
            sha256,
            max_size,
        } => run_unpack(archive, dest, sha256.as_deref(), max_size.as_deref()),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

fn run_inspect(path: &Path, output: Output) -> Result<(), Error> {
    let arch = go_arch(std::env::consts::ARCH);
    if let Some(url) = crate::rootfs::remote::url_of(path) {
        // Read as it downloads; nothing is written. The system's CAs and HTTPS_PROXY
        // apply; a digest is not needed to look.
        let remote = crate::rootfs::remote::Remote::new(url, crate::http::Trust::default(), false)?;
        let (listing, compression) = remote.list()?;
        let (report, problems) = describe(&listing, &arch, &compression.to_string())?;
        return finish_inspect(path, report, problems, output);
    }
    let path = absolute(path)?;
    let meta =
        std::fs::metadata(&path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let host = RootedHost::new("/");
    let (report, problems) = if meta.is_dir() {
        let dir = std::fs::canonicalize(&path)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        let tree = HostTree {
            host: &host,
            dir: &dir,
        };
        describe(&tree, &arch, "folder")?
    } else {
        let (listing, compression) = inspect::list_archive(&path)?;
        describe(&listing, &arch, &compression.to_string())?
    };
    finish_inspect(&path, report, problems, output)
}

fn finish_inspect(
    path: &Path,
    report: InspectReport,
    problems: Vec<String>,
    output: Output,
) -> Result<(), Error> {
    match output {
        Output::Json => {
            let mut value = serde_json::to_value(&report).unwrap_or_default();
            value["problems"] = serde_json::json!(problems);
            print_json(&value);
        }
        Output::Text => print_text(&report, &problems),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "{}: {}",
            path.display(),
            problems.join("; ")
        )))
    }
}

fn describe(
    tree: &dyn Tree,
    arch: &str,
    format: &str,
) -> Result<(InspectReport, Vec<String>), Error> {
    let image = ClusterImage::read_unchecked(tree, arch)?;
    let mut problems = Vec::new();
    if !image.arches.is_empty() && image.arch_dir.is_none() {
        problems.push(format!(
            "no {arch} folder (the image has {})",
            image.arches.join(", ")
        ));
    } else if let Err(e) = image.check_binaries(tree) {
        problems.push(e.to_string());
    }
    problems.extend(layout_problems(tree, &image)?);
    let report = inspect::report(tree, &image, format)?;
    Ok((report, problems))
}

/// What `up` would refuse beyond missing binaries: no containerd for kubeadm, an
/// ambiguous registry image, applications to launch that are not in the image.
fn layout_problems(tree: &dyn Tree, image: &ClusterImage) -> Result<Vec<String>, Error> {
    use crate::rootfs::kubefile::Launch;
    use crate::rootfs::sources::BinarySource;
    let mut problems = Vec::new();
    if image.distro == crate::distro_kind::DistroKind::Kubeadm && image.containerd.is_none() {
        problems.push(
            "no containerd for kubeadm: ship bin/containerd (with its shim, ctr and runc) or cri/containerd.tar.gz".to_owned(),
        );
    }
    if let Some(source @ BinarySource::Ambiguous { .. }) = &image.registry {
        problems.push(format!("registry: {source}"));
    }
    for launch in image.kubefile.iter().flat_map(|k| &k.launch) {
        if let Launch::App { name, files, .. } = launch {
            for file in files {
                if image.app_file(tree, name, file)?.is_none() {
                    problems.push(format!(
                        "Kubefile line {}: app {name}: {file} is in the image neither at application/apps/{name}/ nor at {file}",
                        launch.line_number()
                    ));
                }
            }
        }
    }
    Ok(problems)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn print_text(r: &InspectReport, problems: &[String]) {
    println!("image:      {} ({})", r.source, r.format);
    println!(
        "distro:     {} {} ({})",
        r.distro,
        r.version,
        if r.arch.is_empty() {
            "arch not stated"
        } else {
            &r.arch
        }
    );
    if !r.arches.is_empty() {
        println!("arches:     {}", r.arches.join(", "));
    }
    println!("metadata:   {}", r.metadata);
    let bins: Vec<String> = r
        .binaries
        .iter()
        .map(|b| format!("{} ({})", b.name, mib(b.bytes)))
        .collect();
    println!(
        "binaries:   {}",
        if bins.is_empty() {
            "none".to_owned()
        } else {
            bins.join(", ")
        }
    );
    println!(
        "images:     {} archives, {}",
        r.images.count,
        mib(r.images.bytes)
    );
    for f in &r.images.files {
        println!("            {} ({})", f.name, mib(f.bytes));
    }
    println!(
        "registry:   {} repositories{}",
        r.registry_repositories.len(),
        if r.registry_repositories.is_empty() {
            String::new()
        } else {
            format!(": {}", r.registry_repositories.join(", "))
        }
    );
    if !r.manifests.is_empty() {
        println!("manifests:  {}", r.manifests.join(", "));
    }
    if let Some(c) = &r.containerd {
        println!("containerd: {c}");
    }
    println!(
        "registry binary: {}",
        r.registry
            .as_deref()
            .unwrap_or("none (set registry.enabled: false to go without one)")
    );
    if let Some(k) = &r.kubefile {
        println!("kubefile:   {k}");
    }
    for (key, value) in &r.labels {
        println!("label:      {key}={value}");
    }
    for l in &r.launch {
        println!("launch:     {l}");
    }
    if let Some(k) = &r.kubeadm_config {
        println!("kubeadm config: {k} (the base of the one bootstrap writes)");
    }
    if problems.is_empty() {
        println!("problems:   none");
    } else {
        for p in problems {
            println!("problem:    {p}");
        }
    }
}

fn run_unpack(
    archive: &Path,
    dest: &Path,
    sha256: Option<&str>,
    max_size: Option<&str>,
) -> Result<(), Error> {
    if let Some(hex) = sha256 {
        validate::sha256_hex(hex)
            .map_err(|what| Error::Usage(format!("--sha256: expected {what}, got {hex:?}")))?;
    }
    let max_size = max_size
        .map(|s| {
            validate::byte_size(s)
                .map_err(|what| Error::Usage(format!("--max-size: expected {what}, got {s:?}")))
        })
        .transpose()?;
    let archive = absolute(archive)?;
    let dest = absolute(dest)?;
    let digest = unpack::expected_digest(&archive, sha256)?;
    let options = UnpackOptions {
        sha256_source: digest.as_ref().map(|(_, source)| {
            if sha256.is_some() {
                "--sha256".to_owned()
            } else {
                source.clone()
            }
        }),
        sha256: digest.map(|(hex, _)| hex),
        max_size,
        host_arch: go_arch(std::env::consts::ARCH),
        bundle: false,
        no_switch: false,
    };
    let report = unpack::unpack(&archive, &dest, &options)?;
    println!(
        "{} -> {} ({}{})",
        dest.display(),
        report.version_dir.display(),
        report.sha256,
        if report.reused {
            ", already unpacked"
        } else {
            ""
        }
    );
    Ok(())
}
