//! The local registry's files against the real components: golden `config.yml` and
//! unit, `systemd-analyze verify` on the unit, and `/usr/bin/docker-registry` serving a
//! seeded image over TLS with bootstrap's certificates (and htpasswd), read-only to
//! every client, and writable only through the push registry with its credentials —
//! checked by `skopeo` and a rustls client on 127.0.0.1 only.
//!
//! Needs the Debian packages `docker-registry`, `skopeo` and `systemd`; scripts/test.sh
//! installs them. Without them these tests fail rather than pass unseen.

mod common;

#[path = "seed_support/archives.rs"]
mod archives;

use common::golden;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use sha2::Digest;

use archives::TestImage;
use bootstrap::images::seed_archive;
use bootstrap::registry::{
    self, generate_ca, generate_pki, htpasswd_line, CertificateAuthority, HtpasswdAuth,
    RegistryConfig, RegistryPki, RegistryUnit, ServerNames, DEFAULT_BCRYPT_COST,
};
use bootstrap::secret::Secret;

const REGISTRY: &str = "/usr/bin/docker-registry";
/// The registry answers `/v2/` within a second or two; 10 s is the most we wait.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(100);
/// Every command here talks only to the local registry or reads local files; anything
/// slower than this is a hang.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const IMAGE: &str = "library/hello:1.0";

fn missing_tool(what: &str, package: &str) -> ! {
    panic!(
        "{what} is missing: run scripts/test.sh, which installs the Debian package \
         {package} (or: apt-get install {package})"
    )
}

/// A program on PATH; fails the test when it is not installed.
fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| missing_tool(program, package))
}

fn require_registry() {
    if !Path::new(REGISTRY).is_file() {
        missing_tool(REGISTRY, "docker-registry");
    }
}

// ---------------------------------------------------------------- golden files

/// The configuration a controller gets with authentication on: every key bootstrap
/// writes.
fn golden_config() -> RegistryConfig {
    RegistryConfig {
        listen_address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)),
        htpasswd: Some(HtpasswdAuth {
            realm: "bootstrap registry".into(),
            path: registry::HTPASSWD_FILE.into(),
        }),
        ..RegistryConfig::default()
    }
}

#[test]
fn config_yml_matches_golden() {
    golden(
        "registry-config.yml",
        &golden_config().render().expect("config renders"),
    );
}

#[test]
fn unit_matches_golden() {
    let unit = RegistryUnit::new(
        registry::BINARY.into(),
        registry::CONFIG_FILE.into(),
        &golden_config(),
    );
    golden(
        "bootstrap-registry.service",
        &unit.render().expect("unit renders"),
    );
}

// ---------------------------------------------------------------- systemd-analyze

fn systemd_verify(text: &str, binaries: &[&str]) -> (bool, String) {
    let copies: Vec<(&str, &str)> = binaries.iter().map(|b| (*b, REGISTRY)).collect();
    common::systemd_verify(registry::UNIT_NAME, text, &copies)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    require_registry();
    let (ok, output) = systemd_verify(
        &RegistryUnit::default().render().expect("unit renders"),
        &[registry::BINARY],
    );
    assert!(ok, "systemd-analyze verify rejected the unit:\n{output}");

    // Paths that need quoting and escaping reach systemd as the same paths: verify
    // checks that ExecStart's binary exists.
    let odd_binary = "/opt/my registry/bin%1$x";
    let unit = RegistryUnit {
        binary: odd_binary.into(),
        config_file: "/etc/boot strap/config \"1\".yml".into(),
        storage_dir: "/srv/100% storage".into(),
        ..RegistryUnit::default()
    };
    let (ok, output) = systemd_verify(&unit.render().expect("unit renders"), &[odd_binary]);
    assert!(
        ok,
        "systemd-analyze verify rejected the quoted unit:\n{output}"
    );

    // The check itself catches a broken unit: here, a binary that is not there.
    let (ok, _) = systemd_verify(&RegistryUnit::default().render().expect("unit"), &[]);
    assert!(
        !ok,
        "systemd-analyze verify passed a unit whose binary is missing"
    );
}

// ---------------------------------------------------------------- the real registry

// Ports come from `common::free_port`: another process could take one before the
// registry does; then the registry exits and `start` says so with its log.

/// A registry's files in a temp folder: PKI for `sea.hub` and 127.0.0.1, config.yml,
/// storage holding one seeded image.
struct Setup {
    work: tempfile::TempDir,
    pki: RegistryPki,
    config: RegistryConfig,
    /// The seeded image's manifest digest.
    digest: String,
}

impl Setup {
    fn new(htpasswd_lines: &[Secret]) -> Setup {
        require_registry();
        let work = tempfile::tempdir().expect("temp dir");
        let w = work.path();
        let names = ServerNames::new("sea.hub", [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let pki = generate_pki(&names, time::OffsetDateTime::now_utc()).expect("pki");

        let certs = w.join("certs");
        fs::create_dir_all(&certs).expect("certs");
        fs::write(certs.join("server.crt"), &pki.server.cert_pem).expect("cert");
        write_secret(&certs.join("server.key"), &pki.server.key_pem);
        // skopeo's --cert-dir takes every *.crt in the folder as a trusted CA.
        write_ca_dir(&w.join("ca"), &pki.ca);

        let htpasswd = (!htpasswd_lines.is_empty()).then(|| {
            let path = w.join("htpasswd");
            let text: String = htpasswd_lines
                .iter()
                .map(|line| format!("{}\n", line.expose()))
                .collect();
            write_secret(&path, &Secret::new(text));
            HtpasswdAuth {
                realm: "bootstrap registry".into(),
                path,
            }
        });
        let config = RegistryConfig {
            listen_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: common::free_port(),
            storage_dir: w.join("storage"),
            certificate: certs.join("server.crt"),
            key: certs.join("server.key"),
            htpasswd,
            ..RegistryConfig::default()
        };
        fs::write(w.join("config.yml"), config.render().expect("config")).expect("config.yml");

        let image = TestImage::random(7, 2, 64 * 1024);
        let archive = w.join("hello.tar");
        let entries = archives::docker_save(&[(&image, &["docker.io/library/hello:1.0"])]);
        fs::write(&archive, archives::tar(&entries)).expect("archive");
        let report = seed_archive(&archive, &config.storage_dir).expect("seeded");
        let digest = report
            .images
            .iter()
            .find(|i| i.repository == "library/hello" && i.tag.as_deref() == Some("1.0"))
            .unwrap_or_else(|| panic!("library/hello:1.0 not in {report:?}"))
            .digest
            .clone();
        Setup {
            work,
            pki,
            config,
            digest,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn image(&self, reference: &str) -> String {
        image_at(self.config.port, reference)
    }

    /// `skopeo --insecure-policy inspect ARGS IMAGE` with no stored credentials.
    fn inspect(&self, registry: &mut Registry, args: &[&str]) -> (ExitStatus, String, String) {
        self.inspect_image(registry, &self.image(IMAGE), args)
    }

    fn inspect_image(
        &self,
        registry: &mut Registry,
        image: &str,
        args: &[&str],
    ) -> (ExitStatus, String, String) {
        let skopeo = require("skopeo", "skopeo");
        let mut command = Command::new(skopeo);
        command
            .arg("--insecure-policy")
            .arg("inspect")
            // A file that does not exist: no credentials from the user's auth.json.
            .arg("--authfile")
            .arg(self.path("no-auth.json"))
            .args(args)
            .arg(image);
        let result = common::run_bounded(&mut command, self.work.path(), COMMAND_TIMEOUT);
        // The registry must still be up, or a failure below would prove nothing.
        registry.assert_running();
        result
    }

    fn inspect_ok(&self, registry: &mut Registry, args: &[&str]) -> serde_json::Value {
        let (status, stdout, stderr) = self.inspect(registry, args);
        assert!(
            status.success(),
            "skopeo inspect {args:?} failed ({status}):\n{stderr}\n--- registry log\n{}",
            registry.log_text()
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("skopeo inspect output: {e}\n{stdout}"))
    }

    fn inspect_err(&self, registry: &mut Registry, args: &[&str]) -> String {
        let (status, stdout, stderr) = self.inspect(registry, args);
        assert!(
            !status.success(),
            "skopeo inspect {args:?} succeeded but must not:\n{stdout}"
        );
        stderr
    }
}

fn image_at(port: u16, reference: &str) -> String {
    format!("docker://127.0.0.1:{port}/{reference}")
}

fn write_secret(path: &Path, secret: &Secret) {
    fs::write(path, secret.expose()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

fn write_ca_dir(dir: &Path, ca: &CertificateAuthority) {
    fs::create_dir_all(dir).expect("ca folder");
    fs::write(dir.join("ca.crt"), &ca.cert_pem).expect("ca.crt");
}

/// A running `docker-registry serve`, killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
    ca_pem: String,
}

impl Registry {
    fn start(setup: &Setup) -> Registry {
        Registry::start_with(setup, "config.yml", setup.config.port)
    }

    /// Another instance of the registry over the setup's storage: `config`, written to
    /// `name` in the setup's folder.
    fn start_other(setup: &Setup, name: &str, config: &RegistryConfig) -> Registry {
        fs::write(setup.path(name), config.render().expect("config")).expect(name);
        Registry::start_with(setup, name, config.port)
    }

    fn start_with(setup: &Setup, config_name: &str, port: u16) -> Registry {
        let log = setup.path(&format!("{config_name}.log"));
        let out = File::create(&log).expect("registry log");
        let err = out.try_clone().expect("registry log");
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(setup.path(config_name))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {REGISTRY}: {e}"));
        let mut registry = Registry {
            child,
            port,
            log,
            ca_pem: setup.pki.ca.cert_pem.clone(),
        };
        registry.wait_ready();
        registry
    }

    /// Waits until `/v2/` answers over TLS (200, or 401 with auth on).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let attempts = READY_TIMEOUT.as_millis() / READY_POLL.as_millis();
        let mut last = String::from("no answer");
        for _ in 0..attempts {
            self.assert_running();
            match self.get("/v2/") {
                Ok(response) if response.status == 200 || response.status == 401 => return,
                Ok(response) => last = format!("status {}", response.status),
                // A certificate the client rejects will not get better by waiting.
                Err(e) if e.contains("invalid peer certificate") => panic!(
                    "GET /v2/ on 127.0.0.1:{}: {e}\n{}",
                    self.port,
                    self.log_text()
                ),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                break;
            }
            sleep(READY_POLL);
        }
        panic!(
            "{REGISTRY} did not answer GET /v2/ on 127.0.0.1:{} within {READY_TIMEOUT:?} \
             ({last}):\n{}",
            self.port,
            self.log_text()
        );
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{REGISTRY} exited ({status}):\n{}", self.log_text());
        }
    }

    /// `GET path` over TLS, trusting only our CA and checking the certificate is for
    /// 127.0.0.1.
    fn get(&self, path: &str) -> Result<Response, String> {
        self.request("GET", path, &[], &[])
    }

    /// `METHOD path` with these headers and body, anonymously, over TLS as [`get`].
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let connection =
            rustls::ClientConnection::new(Arc::new(tls), name).map_err(|e| e.to_string())?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let tcp = TcpStream::connect_timeout(&address, Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut message = head.into_bytes();
        message.extend_from_slice(body);
        stream.write_all(&message).map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        let mut buf = [0u8; 8192];
        // HTTP/1.0: the registry closes the connection after the response; some
        // servers skip TLS close_notify, so an unexpected EOF after data is the end too.
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if response.len() + n <= 64 * 1024 => response.extend_from_slice(&buf[..n]),
                Ok(_) => return Err("response larger than 64 KiB".into()),
                Err(_) if !response.is_empty() => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        Response::parse(&response)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn parse(bytes: &[u8]) -> Result<Response, String> {
        let body = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| bytes[at + 4..].to_vec())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.lines();
        let status_line = lines.next().ok_or("empty response")?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers = lines
            .take_while(|line| !line.is_empty())
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[test]
fn registry_serves_seeded_image_with_our_certificate() {
    let setup = Setup::new(&[]);
    let mut registry = Registry::start(&setup);

    // The configured headers are sent (so `http.headers` is where the registry reads it).
    let v2 = registry.get("/v2/").expect("GET /v2/ with our CA");
    assert_eq!(v2.status, 200);
    assert_eq!(v2.header("x-content-type-options"), ["nosniff"]);

    // skopeo (Go's crypto/x509, as containerd) trusts the registry through our CA...
    let ca_dir = setup.path("ca");
    let ca_dir = ca_dir.to_str().expect("UTF-8 temp path");
    let inspected = setup.inspect_ok(&mut registry, &["--cert-dir", ca_dir]);
    assert_eq!(
        inspected["Digest"], setup.digest,
        "the seeded image is served"
    );

    // ...and only through it: no CA, or another CA, is a certificate error.
    let stderr = setup.inspect_err(&mut registry, &[]);
    assert!(
        stderr.contains("x509") && stderr.contains("unknown authority"),
        "without our CA skopeo must fail on the certificate:\n{stderr}"
    );
    let other = setup.path("other-ca");
    write_ca_dir(
        &other,
        &generate_ca(time::OffsetDateTime::now_utc()).expect("other CA"),
    );
    let stderr = setup.inspect_err(
        &mut registry,
        &["--cert-dir", other.to_str().expect("UTF-8")],
    );
    assert!(
        stderr.contains("x509"),
        "with another CA skopeo must fail on the certificate:\n{stderr}"
    );
}

#[test]
fn registry_requires_htpasswd_credentials() {
    let password = Secret::new("s3cret-registry-password");
    // bootstrap's own `$2y$` line, and a `$2b$` one as other tools write them.
    let ours = htpasswd_line("bootstrap", &password, DEFAULT_BCRYPT_COST).expect("line");
    assert!(ours.expose().starts_with("bootstrap:$2y$"));
    let other_password = "another-password";
    let two_b = bcrypt::hash_with_result(other_password, 4)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoB);
    let other = Secret::new(format!("other:{two_b}"));
    let setup = Setup::new(&[ours, other]);
    let mut registry = Registry::start(&setup);

    let v2 = registry.get("/v2/").expect("GET /v2/ with our CA");
    assert_eq!(v2.status, 401, "auth is on");
    let ca_dir = setup.path("ca");
    let ca_dir = ca_dir.to_str().expect("UTF-8 temp path");

    let stderr = setup.inspect_err(&mut registry, &["--cert-dir", ca_dir]);
    assert!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "without credentials skopeo must be refused:\n{stderr}"
    );
    let stderr = setup.inspect_err(
        &mut registry,
        &["--cert-dir", ca_dir, "--creds", "bootstrap:wrong-password"],
    );
    assert!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "a wrong password must be refused:\n{stderr}"
    );

    let creds = format!("bootstrap:{}", password.expose());
    let inspected = setup.inspect_ok(&mut registry, &["--cert-dir", ca_dir, "--creds", &creds]);
    assert_eq!(inspected["Digest"], setup.digest);
    let creds = format!("other:{other_password}");
    let inspected = setup.inspect_ok(&mut registry, &["--cert-dir", ca_dir, "--creds", &creds]);
    assert_eq!(inspected["Digest"], setup.digest);
}

/// What an anonymous client gets for trying to write: 405, the registry's answer while
/// its storage is read-only (the write handlers are not even routed).
fn assert_refused(what: &str, response: &Response, registry: &Registry) {
    assert!(
        response.status == 405,
        "{what} answered {} (expected 405, read-only):\n{}\n--- registry log\n{}",
        response.status,
        String::from_utf8_lossy(&response.body),
        registry.log_text()
    );
}

/// Every repository folder in the registry's storage.
fn repositories(storage: &Path) -> Vec<String> {
    let root = storage.join("docker/registry/v2/repositories");
    let mut out = Vec::new();
    for namespace in fs::read_dir(&root).expect("repositories").flatten() {
        for repo in fs::read_dir(namespace.path()).expect("namespace").flatten() {
            out.push(format!(
                "{}/{}",
                namespace.file_name().to_string_lossy(),
                repo.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn anonymous_clients_cannot_write_but_still_pull_the_seeded_images() {
    // bootstrap's own registry config.yml, as rendered, on loopback.
    let setup = Setup::new(&[]);
    assert!(setup.config.read_only, "read-only is the default");
    let mut registry = Registry::start(&setup);
    // Pulls work: the seeded image's manifest and one of its blobs.
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let manifest = registry
        .request(
            "GET",
            "/v2/library/hello/manifests/1.0",
            &[("Accept", accept)],
            &[],
        )
        .expect("GET manifest");
    assert_eq!(manifest.status, 200, "{}", registry.log_text());
    let manifest_type = manifest.header("content-type")[0].to_owned();
    let parsed: serde_json::Value = serde_json::from_slice(&manifest.body).expect("manifest");
    let config_digest = parsed["config"]["digest"].as_str().expect("config digest");
    let blob = registry
        .get(&format!("/v2/library/hello/blobs/{config_digest}"))
        .expect("GET blob");
    assert_eq!(blob.status, 200);

    // Starting a blob upload, and a monolithic one, are refused.
    let upload = registry
        .request("POST", "/v2/library/hello/blobs/uploads/", &[], &[])
        .expect("POST upload");
    assert_refused("POST /v2/library/hello/blobs/uploads/", &upload, &registry);
    let data = b"not a system image";
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)));
    let monolithic = registry
        .request(
            "POST",
            &format!("/v2/library/evil/blobs/uploads/?digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            data,
        )
        .expect("POST monolithic upload");
    assert_refused("a monolithic upload", &monolithic, &registry);
    // Putting a manifest (the seeded one, valid, under the tag every node pulls and
    // under a new one) is refused.
    for tag in ["1.0", "evil"] {
        let put = registry
            .request(
                "PUT",
                &format!("/v2/library/hello/manifests/{tag}"),
                &[("Content-Type", &manifest_type)],
                &manifest.body,
            )
            .expect("PUT manifest");
        assert_refused(&format!("PUT manifest {tag}"), &put, &registry);
    }
    let delete = registry
        .request(
            "DELETE",
            &format!("/v2/library/hello/manifests/{}", setup.digest),
            &[],
            &[],
        )
        .expect("DELETE manifest");
    assert!(delete.status == 405, "DELETE answered {}", delete.status);

    // A real client's push fails too, and nothing reached the storage.
    let ca_dir = setup.path("ca");
    let ca_dir = ca_dir.to_str().expect("UTF-8 temp path");
    let (status, _, stderr) = skopeo_copy(&setup, &setup.image("library/evil:1"), &[ca_dir], None);
    assert!(!status.success(), "an anonymous push succeeded");
    assert!(
        stderr.contains("405") || stderr.to_lowercase().contains("unsupported"),
        "the push must fail on the registry's refusal:\n{stderr}"
    );
    assert_eq!(repositories(&setup.config.storage_dir), ["library/hello"]);
    assert!(
        !setup
            .config
            .storage_dir
            .join("docker/registry/v2/repositories/library/hello/_uploads")
            .exists(),
        "an upload was started"
    );

    // And the seeded image is served as before.
    let inspected = setup.inspect_ok(&mut registry, &["--cert-dir", ca_dir]);
    assert_eq!(inspected["Digest"], setup.digest);
}

/// `skopeo copy` of the setup's docker-save archive to `dest`, trusting `cert_dir`,
/// with `creds` when given.
fn skopeo_copy(
    setup: &Setup,
    dest: &str,
    cert_dir: &[&str],
    creds: Option<&str>,
) -> (ExitStatus, String, String) {
    let skopeo = require("skopeo", "skopeo");
    let mut command = Command::new(skopeo);
    command
        .arg("--insecure-policy")
        .arg("copy")
        .arg("--dest-authfile")
        .arg(setup.path("no-auth.json"));
    for dir in cert_dir {
        command.arg("--dest-cert-dir").arg(dir);
    }
    if let Some(creds) = creds {
        command.arg("--dest-creds").arg(creds);
    }
    command
        .arg("--digestfile")
        .arg(setup.path("pushed.digest"))
        .arg(format!(
            "docker-archive:{}:docker.io/library/hello:1.0",
            setup.path("hello.tar").display()
        ))
        .arg(dest);
    common::run_bounded(&mut command, setup.work.path(), COMMAND_TIMEOUT)
}

#[test]
fn pushes_take_the_push_registry_and_its_credentials() {
    // The cluster's registry, read-only, and the push registry over the same storage,
    // writable, behind its own htpasswd (as `registry.push` sets them up).
    let setup = Setup::new(&[]);
    let mut pull = Registry::start(&setup);
    let password = Secret::new("push-password-3e9b");
    let htpasswd = setup.path("htpasswd-push");
    write_secret(
        &htpasswd,
        &Secret::new(format!(
            "{}\n",
            htpasswd_line("pusher", &password, DEFAULT_BCRYPT_COST)
                .expect("line")
                .expose()
        )),
    );
    let push_config = RegistryConfig {
        port: common::free_port(),
        read_only: false,
        htpasswd: Some(HtpasswdAuth {
            realm: "bootstrap-registry-push".into(),
            path: htpasswd,
        }),
        ..setup.config.clone()
    };
    let mut push = Registry::start_other(&setup, "config-push.yml", &push_config);
    let ca_dir = setup.path("ca");
    let ca_dir = ca_dir.to_str().expect("UTF-8 temp path");
    let pushed = image_at(push_config.port, "library/added:1");

    // Without credentials, or with the wrong ones: refused.
    let (status, _, stderr) = skopeo_copy(&setup, &pushed, &[ca_dir], None);
    assert!(!status.success(), "an anonymous push succeeded");
    assert!(
        stderr.contains("401")
            || stderr.contains("unauthorized")
            || stderr.contains("authentication required"),
        "{stderr}"
    );
    let (status, _, _) = skopeo_copy(&setup, &pushed, &[ca_dir], Some("pusher:wrong-password"));
    assert!(!status.success(), "a push with a wrong password succeeded");
    push.assert_running();

    // With them: pushed, and served by the read-only registry every node pulls from.
    let creds = format!("pusher:{}", password.expose());
    let (status, _, stderr) = skopeo_copy(&setup, &pushed, &[ca_dir], Some(&creds));
    assert!(
        status.success(),
        "push with credentials failed:\n{stderr}\n--- push registry log\n{}",
        push.log_text()
    );
    let digest = fs::read_to_string(setup.path("pushed.digest")).expect("digest file");
    let (status, stdout, stderr) = setup.inspect_image(
        &mut pull,
        &setup.image("library/added:1"),
        &["--cert-dir", ca_dir],
    );
    assert!(status.success(), "{stderr}\n{}", pull.log_text());
    let inspected: serde_json::Value = serde_json::from_str(&stdout).expect("inspect output");
    assert_eq!(inspected["Digest"], digest.trim(), "the image pushed");
    // The read-only one still refuses writes.
    let upload = pull
        .request("POST", "/v2/library/added/blobs/uploads/", &[], &[])
        .expect("POST upload");
    assert_refused("POST upload to the read-only registry", &upload, &pull);
}
