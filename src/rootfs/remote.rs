//! Cluster images from a URL (`rootfs.archive`, `upgrade --rootfs`): `https://`, or
//! `http://` only when explicitly allowed; a SHA-256 is required (given, or `URL.sha256`
//! beside it); the download streams straight into the unpacker, which publishes nothing
//! unless the digest matches.

use std::path::Path;
use std::time::Duration;

use super::unpack::{self, UnpackError, UnpackOptions, UnpackReport};
use crate::http::download::{self, Download, Retry};
use crate::http::{self, Trust, Url};

/// How long one read may wait for the server.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A `.sha256` file is a line; more is not a digest file.
const DIGEST_FILE_LIMIT: u64 = 4096;

/// The URL a configured archive names, if it is one rather than a path.
pub fn url_of(archive: &Path) -> Option<&str> {
    archive
        .to_str()
        .filter(|s| s.starts_with("https://") || s.starts_with("http://"))
}

/// An archive on an HTTP(S) server.
pub struct Remote {
    url: Url,
    trust: Trust,
    allow_http: bool,
}

impl Remote {
    /// `text` as a URL: `https://`, or `http://` with `allow_http`.
    pub fn new(text: &str, trust: Trust, allow_http: bool) -> Result<Remote, UnpackError> {
        let url = Url::parse(text).map_err(|e| UnpackError::BadUrl {
            url: text.to_owned(),
            reason: e.to_string(),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            "http" => {
                return Err(UnpackError::BadUrl {
                    url: http::shown(&url),
                    reason: "http:// sends the image unprotected; use https://, or set rootfs.insecure_http: true (the SHA-256 is still checked)".into(),
                })
            }
            other => {
                return Err(UnpackError::BadUrl {
                    url: http::shown(&url),
                    reason: format!("{other}:// is not supported; use https://"),
                })
            }
        }
        Ok(Remote {
            url,
            trust,
            allow_http,
        })
    }

    /// The URL as it may be shown (no credentials).
    pub fn shown(&self) -> String {
        http::shown(&self.url)
    }

    fn client(&self) -> Result<reqwest::blocking::Client, UnpackError> {
        Ok(http::client(
            &self.trust,
            READ_TIMEOUT,
            self.allow_http,
            false,
        )?)
    }

    /// The SHA-256 to check the download against and where it came from: `given`, else
    /// the `URL.sha256` file beside it. Without either, the image is refused.
    pub fn digest(&self, given: Option<&str>) -> Result<(String, String), UnpackError> {
        if let Some(hex) = given {
            return Ok((hex.to_ascii_lowercase(), "given".to_owned()));
        }
        let mut sidecar = self.url.clone();
        sidecar.set_path(&format!("{}.sha256", self.url.path()));
        let shown = http::shown(&sidecar);
        let text = download::small_text(&self.client()?, &sidecar, DIGEST_FILE_LIMIT)?
            .ok_or_else(|| UnpackError::NoDigest { url: self.shown() })?;
        let hex = text.split_whitespace().next().unwrap_or("");
        crate::validate::sha256_hex(hex).map_err(|why| UnpackError::BadDigestFile {
            path: shown.clone().into(),
            reason: format!("expected {why}"),
        })?;
        Ok((hex.to_ascii_lowercase(), shown))
    }

    /// Lists the archive while downloading it, writing nothing (`rootfs inspect URL`).
    pub fn list(
        &self,
    ) -> Result<
        (
            super::tree::ListingTree,
            crate::io::compression::Compression,
        ),
        UnpackError,
    > {
        let download = Download::open(self.client()?, self.url.clone(), Retry::default())?;
        super::inspect::list_stream(Path::new(&self.shown()), download)
    }

    /// Downloads and unpacks the archive so that `dest` (a real path) points at it (or,
    /// with `opts.no_switch`, only publishes its version folder). `opts.sha256` must be
    /// set.
    pub fn unpack(&self, dest: &Path, opts: &UnpackOptions) -> Result<UnpackReport, UnpackError> {
        if opts.sha256.is_none() {
            return Err(UnpackError::NoDigest { url: self.shown() });
        }
        let download = Download::open(self.client()?, self.url.clone(), Retry::default())?;
        log::info!(
            "downloading {}{}",
            self.shown(),
            download
                .len()
                .map(|n| format!(" ({n} bytes)"))
                .unwrap_or_default()
        );
        unpack::unpack_download(download, dest, opts)
    }
}
