//! The real registry serves what seeding wrote. Archives (and a storage tree merged from
//! them) are seeded into a temp storage root, `/usr/bin/docker-registry` serves it on
//! 127.0.0.1, and `skopeo` inspects and copies the images back: the manifest digests,
//! tags and layer bytes must be the ones seeded.
//!
//! Needs the Debian packages `docker-registry` and `skopeo`; scripts/test.sh installs
//! them. Without them these tests fail rather than pass unseen.

#[path = "seed_support/archives.rs"]
mod archives;

mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use archives::{self as build, TestImage};
use bootstrap::images::{seed_archive, seed_images_dir, seed_storage_tree, SeedReport};

const REGISTRY: &str = "/usr/bin/docker-registry";
/// The registry answers `/v2/` within a second or two; 10 s is the most we wait.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(100);
/// skopeo talks only to the local registry; anything slower than this is a hang.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(60);

fn missing_tool(what: &str) -> ! {
    panic!(
        "{what} is missing: run scripts/test.sh, which installs the Debian packages \
         docker-registry and skopeo (or: apt-get install docker-registry skopeo)"
    )
}

/// The skopeo binary on PATH; fails the test when either tool is not installed.
fn require_tools() -> PathBuf {
    if !Path::new(REGISTRY).is_file() {
        missing_tool(REGISTRY);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("skopeo"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| missing_tool("skopeo"))
}

// Ports come from `common::free_port`: another process could take one before the
// registry does; then the registry exits and `start` says so with its log.

/// A running `docker-registry serve`, killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    fn start(storage: &Path, work: &Path) -> Registry {
        let port = common::free_port();
        let config = work.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .expect("write config.yml");
        let log = work.join("registry.log");
        let out = File::create(&log).expect("registry log");
        let err = out.try_clone().expect("registry log");
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {REGISTRY}: {e}"));
        let mut registry = Registry { child, port, log };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let max_attempts = (READY_TIMEOUT.as_millis() / READY_POLL.as_millis()) as usize;
        for _ in 0..max_attempts {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{REGISTRY} exited ({status}) before answering:\n{}",
                    self.log_text()
                );
            }
            if self.get_v2().is_some_and(|status| status.contains(" 200 ")) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            sleep(READY_POLL);
        }
        panic!(
            "{REGISTRY} did not answer GET /v2/ on 127.0.0.1:{} within {READY_TIMEOUT:?}:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// The status line of `GET /v2/`, if the registry answered at all.
    fn get_v2(&self) -> Option<String> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .ok()?;
        stream
            .write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut response = Vec::new();
        // HTTP/1.0: the registry closes the connection after the response.
        stream.take(64 * 1024).read_to_end(&mut response).ok()?;
        let text = String::from_utf8_lossy(&response);
        text.lines().next().map(str::to_string)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn image(&self, reference: &str) -> String {
        format!("docker://127.0.0.1:{}/{reference}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Skopeo {
    bin: PathBuf,
    work: PathBuf,
}

impl Skopeo {
    /// Runs `skopeo --insecure-policy ARGS` (no signature policy is needed to read
    /// from our own registry) and returns stdout; fails the test on a non-zero exit.
    fn run(&self, args: &[&str], registry: &Registry) -> String {
        let mut command = Command::new(&self.bin);
        command.arg("--insecure-policy").args(args);
        let (status, stdout, stderr) =
            common::run_bounded(&mut command, &self.work, SKOPEO_TIMEOUT);
        assert!(
            status.success(),
            "skopeo {args:?} failed ({status}):\n{stderr}\n--- registry log\n{}",
            registry.log_text()
        );
        stdout
    }

    fn inspect(&self, registry: &Registry, reference: &str) -> serde_json::Value {
        let out = self.run(
            &["inspect", "--tls-verify=false", &registry.image(reference)],
            registry,
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo inspect output: {e}\n{out}"))
    }

    fn raw_manifest(&self, registry: &Registry, reference: &str) -> Vec<u8> {
        let out = self.run(
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &registry.image(reference),
            ],
            registry,
        );
        out.into_bytes()
    }

    fn tags(&self, registry: &Registry, repository: &str) -> Vec<String> {
        let out = self.run(
            &[
                "list-tags",
                "--tls-verify=false",
                &registry.image(repository),
            ],
            registry,
        );
        let value: serde_json::Value = serde_json::from_str(&out).expect("list-tags json");
        let mut tags: Vec<String> = value["Tags"]
            .as_array()
            .expect("Tags")
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        tags.sort();
        tags
    }

    /// Copies an image to a `dir:` layout and returns the folder.
    fn copy_to_dir(&self, registry: &Registry, reference: &str, name: &str) -> PathBuf {
        let dest = self.work.join(name);
        self.run(
            &[
                "copy",
                "--src-tls-verify=false",
                &registry.image(reference),
                &format!("dir:{}", dest.display()),
            ],
            registry,
        );
        dest
    }
}

/// Checks one image as the registry serves it: digest, layers, config, tag list and,
/// after a full copy, every layer's bytes.
fn assert_served(
    skopeo: &Skopeo,
    registry: &Registry,
    reference: &str,
    expected_digest: &str,
    image: &TestImage,
) {
    let inspected = skopeo.inspect(registry, reference);
    assert_eq!(
        inspected["Digest"], expected_digest,
        "{reference}: {inspected}"
    );
    let layers: Vec<String> = inspected["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect();
    assert_eq!(layers, image.layer_digests(), "{reference}");
    assert_eq!(inspected["Architecture"], "amd64", "{reference}");

    let raw = skopeo.raw_manifest(registry, reference);
    assert_eq!(
        build::digest(&raw),
        expected_digest,
        "{reference}: served manifest"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&raw).expect("manifest json");
    assert_eq!(
        manifest["config"]["digest"],
        image.config_digest(),
        "{reference}"
    );

    let copy = skopeo.copy_to_dir(registry, reference, &reference.replace(['/', ':'], "_"));
    assert_eq!(
        build::digest(&fs::read(copy.join("manifest.json")).expect("copied manifest")),
        expected_digest,
        "{reference}: the copy keeps the manifest"
    );
    assert_eq!(
        fs::read(copy.join(build::sha256_hex(&image.config))).expect("copied config"),
        image.config,
        "{reference}: config"
    );
    for layer in &image.layers {
        let copied = fs::read(copy.join(build::sha256_hex(layer)))
            .unwrap_or_else(|e| panic!("{reference}: layer {}: {e}", build::digest(layer)));
        assert!(
            copied == *layer,
            "{reference}: layer {} differs",
            build::digest(layer)
        );
    }
}

fn digest_of(report: &SeedReport, repository: &str, tag: &str) -> String {
    report
        .images
        .iter()
        .find(|i| i.repository == repository && i.tag.as_deref() == Some(tag))
        .unwrap_or_else(|| panic!("{repository}:{tag} not in {report:?}"))
        .digest
        .clone()
}

#[test]
fn a_running_registry_serves_seeded_archives() {
    let skopeo_bin = require_tools();
    let work = tempfile::tempdir().expect("temp dir");
    let storage = work.path().join("storage");
    let images_dir = work.path().join("images");
    fs::create_dir_all(&storage).expect("storage");
    fs::create_dir_all(&images_dir).expect("images");

    // Classic docker save, gzip-compressed; an OCI layout, zstd-compressed; and what
    // docker save writes since 25, plain. All named .tar.
    let app = TestImage::random(101, 2, 256 * 1024);
    let pause = TestImage::random(102, 1, 32 * 1024);
    let tool = TestImage::random(103, 3, 64 * 1024);
    let docker_save = build::tar(&build::docker_save(&[(
        &app,
        &["docker.io/library/seedtest:1.0", "seedtest:latest"],
    )]));
    fs::write(images_dir.join("10-app.tar"), build::gzip(&docker_save)).expect("archive");
    let oci = build::tar(&build::oci_layout(&[(
        &pause,
        &[("io.containerd.image.name", "registry.k8s.io/pause:3.9")],
    )]));
    fs::write(images_dir.join("20-pause.tar"), build::zstd(&oci)).expect("archive");
    let new_docker = build::tar(&build::docker_save_oci(&[(&tool, "quay.io/org/tool:2")]));
    fs::write(images_dir.join("30-tool.tar"), new_docker).expect("archive");

    // Seeded while the registry runs: it must pick the images up without a restart.
    let registry = Registry::start(&storage, work.path());
    let report = seed_images_dir(&images_dir, &storage).expect("seeded");
    assert_eq!(report.images.len(), 4, "{report:?}");
    let skopeo = Skopeo {
        bin: skopeo_bin,
        work: work.path().to_path_buf(),
    };

    let app_digest = digest_of(&report, "library/seedtest", "1.0");
    assert_served(
        &skopeo,
        &registry,
        "library/seedtest:1.0",
        &app_digest,
        &app,
    );
    assert_eq!(
        skopeo.tags(&registry, "library/seedtest"),
        ["1.0", "latest"]
    );
    let latest = skopeo.inspect(&registry, "library/seedtest:latest");
    assert_eq!(latest["Digest"], app_digest);

    // OCI layouts keep the original manifest digest.
    assert_eq!(
        digest_of(&report, "pause", "3.9"),
        pause.oci_manifest_digest()
    );
    assert_served(
        &skopeo,
        &registry,
        "pause:3.9",
        &pause.oci_manifest_digest(),
        &pause,
    );
    assert_eq!(
        digest_of(&report, "org/tool", "2"),
        tool.oci_manifest_digest()
    );
    assert_served(
        &skopeo,
        &registry,
        "org/tool:2",
        &tool.oci_manifest_digest(),
        &tool,
    );

    // Seeding again writes nothing and the registry still serves the same.
    let again = seed_images_dir(&images_dir, &storage).expect("again");
    assert_eq!(again.blobs_written, 0, "{again:?}");
    assert_eq!(
        skopeo.inspect(&registry, "pause:3.9")["Digest"],
        pause.oci_manifest_digest()
    );
}

#[test]
fn a_registry_serves_a_merged_storage_tree() {
    let skopeo_bin = require_tools();
    let work = tempfile::tempdir().expect("temp dir");
    // The cluster image's `registry/` tree, made by seeding an archive into it.
    let tree = work.path().join("rootfs/registry");
    let image = TestImage::random(104, 2, 128 * 1024);
    let archive = work.path().join("image.tar");
    fs::write(
        &archive,
        build::tar(&build::docker_save(&[(
            &image,
            &["registry.k8s.io/coredns/coredns:v1.11.1"],
        )])),
    )
    .expect("archive");
    let source = seed_archive(&archive, &tree).expect("tree");
    let expected = digest_of(&source, "coredns/coredns", "v1.11.1");

    let storage = work.path().join("storage");
    let merged = seed_storage_tree(&tree, &storage).expect("merged");
    assert_eq!(merged.blobs_written, 4, "{merged:?}");
    assert_eq!(merged.blobs_linked, 4, "same file system: hardlinked");
    assert_eq!(digest_of(&merged, "coredns/coredns", "v1.11.1"), expected);

    let registry = Registry::start(&storage, work.path());
    let skopeo = Skopeo {
        bin: skopeo_bin,
        work: work.path().to_path_buf(),
    };
    assert_served(
        &skopeo,
        &registry,
        "coredns/coredns:v1.11.1",
        &expected,
        &image,
    );
}
