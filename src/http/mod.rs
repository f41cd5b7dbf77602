//! The one HTTP client (reqwest, blocking, rustls on ring): clients that trust exactly
//! what they are told, the registry's readiness probe, and resumable downloads of cluster
//! images (`download`).

pub mod download;

use std::net::ToSocketAddrs;
use std::path::Path;
use std::time::Duration;

pub use reqwest::Url;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an HTTP operation failed; names the URL (never its credentials) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {reason}")]
    Failed { url: String, reason: String },
    #[error("{path}: {reason}")]
    CaFile { path: String, reason: String },
}

/// Whom a client trusts.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// CA certificates (PEM) to trust besides or instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// Where `ca_pem` came from, for messages.
    pub ca_source: String,
    /// Trust only `ca_pem`, not the system's CA certificates.
    pub only_ca: bool,
}

impl Trust {
    /// The system's CA certificates plus those in the PEM file at the real path `path`.
    pub fn with_ca_file(path: &Path) -> Result<Trust, HttpError> {
        let pem = std::fs::read(path).map_err(|e| HttpError::CaFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Trust {
            ca_pem: Some(pem),
            ca_source: path.display().to_string(),
            only_ca: false,
        })
    }
}

/// A blocking client: connect and per-read timeouts (never one bound on a whole
/// download), no automatic decompression (bytes are hashed as served), redirects only
/// to HTTPS unless `allow_http`, proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`
/// unless `direct`.
pub fn client(
    trust: &Trust,
    timeout: Duration,
    allow_http: bool,
    direct: bool,
) -> Result<reqwest::blocking::Client, HttpError> {
    let mut builder = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .timeout(timeout)
        .https_only(!allow_http)
        .user_agent(concat!("bootstrap/", env!("CARGO_PKG_VERSION")))
        .tls_built_in_root_certs(!trust.only_ca);
    if let Some(pem) = &trust.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| HttpError::CaFile {
            path: trust.ca_source.clone(),
            reason: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(HttpError::CaFile {
                path: trust.ca_source.clone(),
                reason: "holds no PEM certificate".into(),
            });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if direct {
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| HttpError::Failed {
        url: "(client)".into(),
        reason: describe(&e),
    })
}

/// A URL as it may be shown: without user name or password.
pub fn shown(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// An error with its causes, which reqwest keeps in its source chain (the TLS alert,
/// the refused connection).
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Whether an error is one that trying again cannot mend: the server's certificate or
/// name did not verify, or the TLS configuration is wrong.
pub fn is_permanent(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<rustls::Error>() {
        return true;
    }
    // I/O errors nest (hyper-rustls wraps rustls' error, hyper-util wraps that), and
    // `source()` skips the error an `io::Error` holds: look inside it.
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        if io.get_ref().is_some_and(|inner| is_permanent(inner)) {
            return true;
        }
    }
    error.source().is_some_and(is_permanent)
}

/// Whether `https://server_name{path}` at `address` (`host:port`) answers 200 or 401 with a
/// certificate for `server_name` chaining to `ca_pem` (and nothing else). `Err` says why
/// not, for the wait's final message.
pub fn https_ok(
    ca_pem: &[u8],
    address: &str,
    server_name: &str,
    path: &str,
) -> Result<bool, String> {
    let addr = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    // The name is verified, the address is connected to: no DNS, no proxy.
    let client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .resolve(server_name, addr)
        .no_proxy()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none());
    let certs =
        reqwest::Certificate::from_pem_bundle(ca_pem).map_err(|e| format!("CA file: {e}"))?;
    if certs.is_empty() {
        return Err("CA file holds no certificate".to_owned());
    }
    let client = certs
        .into_iter()
        .fold(client, |c, cert| c.add_root_certificate(cert))
        .build()
        .map_err(|e| describe(&e))?;
    let host = if server_name.contains(':') {
        format!("[{server_name}]")
    } else {
        server_name.to_owned()
    };
    let url = format!("https://{host}:{}{path}", addr.port());
    let response = client
        .get(&url)
        .send()
        .map_err(|e| format!("{address}: {}", describe(&e.without_url())))?;
    match response.status().as_u16() {
        200 | 401 => Ok(true),
        other => Err(format!("{address}: answered {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn certificate_failures_are_permanent_however_deeply_wrapped() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
        let wrapped = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, tls));
        assert!(is_permanent(&wrapped));
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert!(!is_permanent(&io::Error::other(refused)));
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        let url = Url::parse("https://user:pw@images.example.invalid/k3s.tar.zst").unwrap();
        assert_eq!(shown(&url), "https://images.example.invalid/k3s.tar.zst");
    }
}
