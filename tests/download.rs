//! Cluster images from a URL, against a local HTTPS server started here (rustls, with a
//! CA and certificate made by bootstrap's own PKI code, on 127.0.0.1 only): `up`
//! downloads straight into the unpacker and unpacks once, a dropped connection is
//! resumed with a Range request, a wrong digest publishes nothing, a server whose
//! certificate chains to no given CA is refused at once, `URL.sha256` stands in for
//! `rootfs.sha256`, `http://` needs `rootfs.insecure_http`, `HTTPS_PROXY` / `NO_PROXY`
//! are honoured, and `upgrade --rootfs URL` switches only to an image it accepts.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Node;
use sha2::Digest;

/// What the test server saw: one line per request, `GET /path [range]`.
type Log = Arc<Mutex<Vec<String>>>;

struct Server {
    port: u16,
    ca_pem: String,
    log: Log,
}

/// Serves `files` over HTTPS on 127.0.0.1 with a certificate for 127.0.0.1 and
/// localhost from a fresh CA. With `drop_at`, the first full response of each file
/// stops after that many body bytes and the connection is cut (no TLS close_notify).
fn serve(files: BTreeMap<String, Vec<u8>>, drop_at: Option<usize>) -> Server {
    let now = time::OffsetDateTime::now_utc();
    let ca = bootstrap::registry::generate_ca(now).unwrap();
    let names = bootstrap::registry::ServerNames::new("localhost", ["127.0.0.1".parse().unwrap()]);
    let serving = bootstrap::registry::issue_serving_cert(&ca, &names, now).unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut serving.cert_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut serving.key_pem.expose().as_bytes())
        .unwrap()
        .unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let files = Arc::new(files);
    let dropped = Arc::new(AtomicBool::new(false));
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, files, log, dropped) =
                    (config.clone(), files.clone(), log.clone(), dropped.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let tls = rustls::StreamOwned::new(conn, stream);
                    let _ = answer(tls, &files, &log, drop_at, &dropped);
                });
            }
        });
    }
    Server {
        port,
        ca_pem: ca.cert_pem,
        log,
    }
}

fn answer<S: Read + Write>(
    stream: S,
    files: &BTreeMap<String, Vec<u8>>,
    log: &Log,
    drop_at: Option<usize>,
    dropped: &AtomicBool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("range:") {
            range = Some(value.trim().to_owned());
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    log.lock().unwrap().push(format!(
        "GET {path}{}",
        range.as_ref().map(|r| format!(" {r}")).unwrap_or_default()
    ));
    let mut stream = reader.into_inner();
    let Some(body) = files.get(&path) else {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return stream.flush();
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok());
    match start {
        Some(start) => {
            let rest = &body[start.min(body.len())..];
            write!(
                stream,
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                rest.len(),
                body.len() - 1,
                body.len()
            )?;
            stream.write_all(rest)?;
        }
        None => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            match drop_at {
                Some(n) if !dropped.swap(true, Ordering::SeqCst) => {
                    // Cut mid-body: the client must resume where this stopped.
                    stream.write_all(&body[..n])?;
                    stream.flush()?;
                    return Ok(());
                }
                _ => stream.write_all(body)?,
            }
        }
    }
    stream.flush()
}

/// The default k3s image of a fresh node, moved out of its root into a tar.zst, with
/// a megabyte of random bytes so that a cut lands mid-stream.
fn image_archive(node: &Node) -> Vec<u8> {
    let dir = node.path("/var/lib/bootstrap/rootfs");
    let noise: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::create_dir_all(dir.join("extra")).unwrap();
    fs::write(dir.join("extra/noise.bin"), noise).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", &dir).unwrap();
    let tar = builder.into_inner().unwrap();
    fs::remove_dir_all(&dir).unwrap();
    zstd::encode_all(&tar[..], 1).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A node configured to take its image from `url`, trusting `ca_pem` when given.
fn configure(node: &Node, url: &str, sha: Option<&str>, ca_pem: Option<&str>) {
    let mut yaml = format!("rootfs:\n  archive: {url}\n");
    if let Some(sha) = sha {
        yaml.push_str(&format!("  sha256: {sha}\n"));
    }
    if let Some(pem) = ca_pem {
        node.write("/etc/bootstrap/images-ca.pem", pem);
        yaml.push_str("  ca_file: /etc/bootstrap/images-ca.pem\n");
    }
    node.config(&yaml);
}

/// Nothing of the image was published: no version folder, no link, no staging left.
fn assert_nothing_published(node: &Node) {
    assert!(
        !node.exists("/var/lib/bootstrap/rootfs"),
        "rootfs.dir appeared"
    );
    let versions = node.path("/var/lib/bootstrap/rootfs.versions");
    let left: Vec<_> = fs::read_dir(&versions)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "published: {left:?}");
    let staging: Vec<_> = fs::read_dir(node.path("/var/lib/bootstrap"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging"))
        .collect();
    assert!(staging.is_empty(), "staging left: {staging:?}");
}

fn gets(server: &Server, path: &str) -> Vec<String> {
    server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with(&format!("GET {path}")))
        .cloned()
        .collect()
}

#[test]
fn up_downloads_the_image_into_the_unpacker_once() {
    let node = Node::new();
    let archive = image_archive(&node);
    let digest = sha256(&archive);
    let server = serve(
        BTreeMap::from([
            ("/images/k3s.tar.zst".to_owned(), archive.clone()),
            (
                "/images/k3s.tar.zst.sha256".to_owned(),
                format!("{digest}  k3s.tar.zst\n").into_bytes(),
            ),
        ]),
        None,
    );
    let url = format!("https://127.0.0.1:{}/images/k3s.tar.zst", server.port);
    // The digest from URL.sha256 beside it.
    configure(&node, &url, None, Some(&server.ca_pem));

    let plan = node.run(&["plan"]);
    plan.assert_code(1);
    assert!(
        plan.stderr.contains("is not downloaded yet"),
        "{}",
        plan.stderr
    );
    assert!(
        gets(&server, "/images/k3s.tar.zst")
            .iter()
            .all(|l| l.contains(".sha256")),
        "plan reads the digest, never the image"
    );

    let run = node.run(&["up"]);
    run.assert_code(0);
    let image_gets: Vec<_> = gets(&server, "/images/k3s.tar.zst")
        .into_iter()
        .filter(|l| !l.contains(".sha256"))
        .collect();
    assert_eq!(image_gets, vec!["GET /images/k3s.tar.zst".to_owned()]);
    let link = fs::read_link(node.path("/var/lib/bootstrap/rootfs")).unwrap();
    assert!(
        link.to_string_lossy().contains(&digest[..12]),
        "{}",
        link.display()
    );
    assert!(node.exists("/var/lib/bootstrap/rootfs/bin/k3s"));
    assert!(
        node.exists("/usr/local/bin/k3s"),
        "and the node came up from it"
    );
    let marker = node
        .read("/var/lib/bootstrap/rootfs/.bootstrap-unpacked.json")
        .unwrap();
    assert!(marker.contains(&url), "{marker}");

    // Found by its digest from now on: never downloaded again.
    let again = node.run(&["up"]);
    again.assert_code(0);
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
    let image_gets = gets(&server, "/images/k3s.tar.zst")
        .into_iter()
        .filter(|l| !l.contains(".sha256"))
        .count();
    assert_eq!(image_gets, 1);
    node.run(&["plan"]).assert_code(0);
}

#[test]
fn a_dropped_connection_is_resumed_where_it_stopped() {
    let node = Node::new();
    let archive = image_archive(&node);
    let cut = archive.len() / 3;
    let server = serve(
        BTreeMap::from([("/k3s.tar.zst".to_owned(), archive.clone())]),
        Some(cut),
    );
    let url = format!("https://127.0.0.1:{}/k3s.tar.zst", server.port);
    configure(&node, &url, Some(&sha256(&archive)), Some(&server.ca_pem));
    let run = node.run(&["up"]);
    run.assert_code(0);
    let requests = gets(&server, "/k3s.tar.zst");
    assert_eq!(requests.len(), 2, "{requests:?}");
    let resumed_at: usize = requests[1]
        .strip_prefix("GET /k3s.tar.zst bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{requests:?}"));
    assert!(resumed_at > 0 && resumed_at <= cut, "{resumed_at} of {cut}");
    assert!(run.stderr.contains("resumed at byte"), "{}", run.stderr);
    assert!(node.exists("/var/lib/bootstrap/rootfs/extra/noise.bin"));
}

#[test]
fn a_wrong_digest_publishes_nothing() {
    let node = Node::new();
    let archive = image_archive(&node);
    let server = serve(
        BTreeMap::from([("/k3s.tar.zst".to_owned(), archive.clone())]),
        None,
    );
    let url = format!("https://127.0.0.1:{}/k3s.tar.zst", server.port);
    let wrong = "0".repeat(64);
    configure(&node, &url, Some(&wrong), Some(&server.ca_pem));
    let run = node.run(&["up"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains(&format!(
            "SHA-256 is {}, expected {wrong}",
            sha256(&archive)
        )),
        "{}",
        run.stderr
    );
    assert_nothing_published(&node);
    assert!(!node.exists("/usr/local/bin/k3s"));

    // Without any digest, a URL is refused before anything is read.
    configure(&node, &url, None, Some(&server.ca_pem));
    let before = gets(&server, "/k3s.tar.zst").len();
    let run = node.run(&["up"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("needs its SHA-256") && run.stderr.contains("k3s.tar.zst.sha256"),
        "{}",
        run.stderr
    );
    assert_eq!(
        gets(&server, "/k3s.tar.zst").len(),
        before + 1,
        "only the .sha256 was asked for"
    );
    assert_nothing_published(&node);
}

#[test]
fn a_server_no_given_ca_vouches_for_is_refused_at_once() {
    let node = Node::new();
    let archive = image_archive(&node);
    let server = serve(
        BTreeMap::from([("/k3s.tar.zst".to_owned(), archive.clone())]),
        None,
    );
    let url = format!("https://127.0.0.1:{}/k3s.tar.zst", server.port);
    // Another CA than the server's, and the system's, which know nothing of it.
    let other = bootstrap::registry::generate_ca(time::OffsetDateTime::now_utc()).unwrap();
    configure(&node, &url, Some(&sha256(&archive)), Some(&other.cert_pem));
    let start = Instant::now();
    let run = node.run(&["up"]);
    run.assert_code(1);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "a certificate failure is not retried"
    );
    assert!(
        run.stderr.contains(&url) && run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
    assert_nothing_published(&node);
    // Without ca_file, only the system's CAs: refused the same way.
    configure(&node, &url, Some(&sha256(&archive)), None);
    let run = node.run(&["up"]);
    run.assert_code(1);
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
    assert_nothing_published(&node);
}

#[test]
fn plain_http_needs_insecure_http() {
    let node = Node::new();
    node.config("rootfs:\n  archive: http://127.0.0.1:9/k3s.tar.zst\n  sha256: 0000000000000000000000000000000000000000000000000000000000000000\n");
    let run = node.run(&["plan"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("rootfs.archive") && run.stderr.contains("rootfs.insecure_http"),
        "{}",
        run.stderr
    );
    node.config("rootfs:\n  archive: ftp://127.0.0.1/k3s.tar.zst\n");
    let run = node.run(&["plan"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("ftp:// is not supported"),
        "{}",
        run.stderr
    );
}

/// A CONNECT proxy on 127.0.0.1 that tunnels and records whom it was asked for.
fn proxy() -> (u16, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                }
                seen.lock().unwrap().push(line.trim().to_owned());
                let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let Ok(upstream) = TcpStream::connect(&target) else {
                    return;
                };
                let mut client = client;
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut up_read, mut up_write) = (upstream.try_clone().unwrap(), upstream);
                let mut down = client.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_read, &mut down);
                });
                let _ = std::io::copy(&mut reader, &mut up_write);
            });
        }
    });
    (port, log)
}

#[test]
fn https_proxy_is_used_unless_no_proxy_says_otherwise() {
    let node = Node::new();
    let archive = image_archive(&node);
    let server = serve(
        BTreeMap::from([("/k3s.tar.zst".to_owned(), archive.clone())]),
        None,
    );
    let (proxy_port, proxied) = proxy();
    let url = format!("https://127.0.0.1:{}/k3s.tar.zst", server.port);
    configure(&node, &url, Some(&sha256(&archive)), Some(&server.ca_pem));
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    let run = node.run_with_env(
        &["up"],
        &[("HTTPS_PROXY", &proxy_url), ("NO_PROXY", "example.invalid")],
    );
    run.assert_code(0);
    assert_eq!(
        proxied.lock().unwrap().clone(),
        vec![format!("CONNECT 127.0.0.1:{} HTTP/1.1", server.port)]
    );

    // NO_PROXY: straight to the server.
    let node = Node::new();
    let archive = image_archive(&node);
    let server = serve(
        BTreeMap::from([("/k3s.tar.zst".to_owned(), archive.clone())]),
        None,
    );
    let url = format!("https://127.0.0.1:{}/k3s.tar.zst", server.port);
    configure(&node, &url, Some(&sha256(&archive)), Some(&server.ca_pem));
    let run = node.run_with_env(
        &["up"],
        &[("HTTPS_PROXY", &proxy_url), ("NO_PROXY", "127.0.0.1")],
    );
    run.assert_code(0);
    assert_eq!(
        proxied.lock().unwrap().len(),
        1,
        "NO_PROXY bypasses the proxy"
    );
    assert_eq!(gets(&server, "/k3s.tar.zst").len(), 1);
}

/// A k3s cluster image at `version` (stand-ins), as a tar.zst.
fn k3s_archive(version: &str) -> Vec<u8> {
    let other = Node::bare();
    other.image("k3s", version);
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_dir_all(".", other.path("/var/lib/bootstrap/rootfs"))
        .unwrap();
    zstd::encode_all(&builder.into_inner().unwrap()[..], 1).unwrap()
}

#[test]
fn upgrade_takes_a_url_and_keeps_nothing_it_refuses() {
    let node = Node::new();
    node.run(&["up"]).assert_code(0);
    let skip = k3s_archive("v1.33.0+k3s1");
    let next = k3s_archive("v1.32.0+k3s1");
    let server = serve(
        BTreeMap::from([
            ("/skip.tar.zst".to_owned(), skip.clone()),
            ("/next.tar.zst".to_owned(), next.clone()),
            (
                "/next.tar.zst.sha256".to_owned(),
                sha256(&next).into_bytes(),
            ),
        ]),
        None,
    );
    node.write("/etc/bootstrap/images-ca.pem", &server.ca_pem);
    node.config("rootfs:\n  ca_file: /etc/bootstrap/images-ca.pem\n");
    let link = || fs::read_link(node.path("/var/lib/bootstrap/rootfs")).ok();
    let versions = || {
        fs::read_dir(node.path("/var/lib/bootstrap/rootfs.versions"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let (before_link, before_versions) = (link(), versions());

    let url = |name: &str| format!("https://127.0.0.1:{}/{name}", server.port);
    let skip_url = url("skip.tar.zst");
    let run = node.run(&["upgrade", "--rootfs", &skip_url, "--sha256", &sha256(&skip)]);
    run.assert_code(1);
    assert!(run.stderr.contains("one minor at a time"), "{}", run.all());
    assert_eq!(link(), before_link, "a refused image is not switched to");
    assert_eq!(versions(), before_versions, "nor kept");

    let run = node.run(&["upgrade", "--rootfs", &url("next.tar.zst")]);
    run.assert_code(0);
    assert!(
        node.read("/var/lib/bootstrap/done.json")
            .unwrap()
            .contains("v1.32.0+k3s1"),
        "{}",
        run.all()
    );
    let now = link().unwrap();
    assert!(
        now.to_string_lossy().contains(&sha256(&next)[..12]),
        "{}",
        now.display()
    );
}
