//! The HTTPS readiness probe: a TLS handshake verified against one CA, then `GET`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Whether `https://server_name{path}` at `address` (`host:port`) answers 200 or 401 with a
/// certificate chaining to `ca_pem`. `Err` says why not, for the wait's final message.
pub fn https_ok(
    ca_pem: &[u8],
    address: &str,
    server_name: &str,
    path: &str,
) -> Result<bool, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let cert = cert.map_err(|e| format!("CA file: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA file: {e}"))?;
    }
    if roots.is_empty() {
        return Err("CA file holds no certificate".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("{server_name}: {e}"))?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let addr = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    let mut sock =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{address}: {e}"))?;
    sock.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("{address}: {e}"))?;
    let mut head = [0u8; 64];
    let n = tls.read(&mut head).map_err(|e| format!("{address}: {e}"))?;
    let status = String::from_utf8_lossy(&head[..n]);
    let code = status.split_whitespace().nth(1).unwrap_or("");
    match code {
        "200" | "401" => Ok(true),
        other => Err(format!("{address}: answered {other:?}")),
    }
}
