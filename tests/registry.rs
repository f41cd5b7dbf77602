//! The local registry's files against the real components: golden `config.yml` and
//! unit, `systemd-analyze verify` on the unit, and `/usr/bin/docker-registry` serving a
//! seeded image over TLS with bootstrap's certificates (and htpasswd), checked by
//! `skopeo` and a rustls client on 127.0.0.1 only.
//!
//! Needs the Debian packages `docker-registry`, `skopeo` and `systemd`; scripts/test.sh
//! installs them. Without them these tests fail rather than pass unseen.

mod common;

#[path = "seed_support/archives.rs"]
mod archives;

use common::golden;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

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

/// A port nobody listens on now. Another process could take it before the registry
/// does; then the registry exits and `start` says so with its log.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

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
            listen_address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port: free_port(),
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
        format!("docker://127.0.0.1:{}/{reference}", self.config.port)
    }

    /// `skopeo --insecure-policy inspect ARGS IMAGE` with no stored credentials.
    fn inspect(&self, registry: &mut Registry, args: &[&str]) -> (ExitStatus, String, String) {
        let skopeo = require("skopeo", "skopeo");
        let mut command = Command::new(skopeo);
        command
            .arg("--insecure-policy")
            .arg("inspect")
            // A file that does not exist: no credentials from the user's auth.json.
            .arg("--authfile")
            .arg(self.path("no-auth.json"))
            .args(args)
            .arg(self.image(IMAGE));
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
        let log = setup.path("registry.log");
        let out = File::create(&log).expect("registry log");
        let err = out.try_clone().expect("registry log");
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(setup.path("config.yml"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {REGISTRY}: {e}"));
        let mut registry = Registry {
            child,
            port: setup.config.port,
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
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
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
}

impl Response {
    fn parse(bytes: &[u8]) -> Result<Response, String> {
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
        Ok(Response { status, headers })
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
