//! A download read as a stream: what the reader takes comes straight off the network
//! (nothing is copied to a temporary file first), a connection that drops is resumed
//! with an HTTP `Range` request where it stopped, and failures are retried with backoff
//! and jitter until a bounded time has passed without progress.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, RANGE};

use super::{describe, is_permanent, shown, HttpError, Url};

/// How failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Give up once this long has passed without a byte of progress.
    pub window: Duration,
    /// The first wait; each further one doubles, up to `max`.
    pub first: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            window: Duration::from_secs(5 * 60),
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// Why one attempt failed, and whether another could succeed.
struct Failure {
    permanent: bool,
    reason: String,
}

/// An HTTP(S) download, readable from start to end across dropped connections.
pub struct Download {
    client: Client,
    url: Url,
    shown: String,
    offset: u64,
    total: Option<u64>,
    etag: Option<String>,
    response: Option<Response>,
    retry: Retry,
    failing_since: Option<Instant>,
    attempt: u32,
    /// Connections resumed so far (for the log and tests).
    pub resumed: u32,
}

impl Download {
    /// Starts the download: returns once the server has answered (retrying within the
    /// window), so a missing file or an untrusted certificate shows at once.
    pub fn open(client: Client, url: Url, retry: Retry) -> Result<Download, HttpError> {
        let mut download = Download {
            shown: shown(&url),
            client,
            url,
            offset: 0,
            total: None,
            etag: None,
            response: None,
            retry,
            failing_since: None,
            attempt: 0,
            resumed: 0,
        };
        loop {
            match download.connect() {
                Ok(()) => return Ok(download),
                Err(failure) => {
                    download
                        .wait_or_give_up(failure)
                        .map_err(|e| HttpError::Failed {
                            url: download.shown.clone(),
                            reason: e.to_string(),
                        })?
                }
            }
        }
    }

    /// The download's size, when the server said.
    pub fn len(&self) -> Option<u64> {
        self.total
    }

    /// Whether the server said the download is empty.
    pub fn is_empty(&self) -> bool {
        self.total == Some(0)
    }

    /// The URL as it may be shown.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn connect(&mut self) -> Result<(), Failure> {
        let mut request = self.client.get(self.url.clone());
        if self.offset > 0 {
            request = request.header(RANGE, format!("bytes={}-", self.offset));
            if let Some(etag) = &self.etag {
                // A changed file comes whole (200), never spliced onto the old one.
                request = request.header(IF_RANGE, etag.clone());
            }
        }
        let response = request.send().map_err(|e| {
            // The URL is named by whoever reports this; reqwest would repeat it.
            let e = e.without_url();
            Failure {
                permanent: is_permanent(&e),
                reason: describe(&e),
            }
        })?;
        let status = response.status().as_u16();
        match status {
            200 => {
                if self.offset > 0 {
                    log::warn!(
                        "{}: the server does not resume this download; reading its first {} bytes again",
                        self.shown,
                        self.offset
                    );
                    let mut response = response;
                    let skipped = io::copy(&mut (&mut response).take(self.offset), &mut io::sink())
                        .map_err(|e| Failure {
                            permanent: false,
                            reason: e.to_string(),
                        })?;
                    if skipped < self.offset {
                        return Err(Failure {
                            permanent: false,
                            reason: format!("it now has only {skipped} bytes"),
                        });
                    }
                    self.response = Some(response);
                    return Ok(());
                }
                self.total = response.content_length();
                self.etag = response
                    .headers()
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.starts_with("W/"))
                    .map(str::to_owned);
            }
            206 if self.offset > 0 => {
                let range = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let start = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<u64>().ok());
                if start != Some(self.offset) {
                    return Err(Failure {
                        permanent: true,
                        reason: format!(
                            "asked to resume at byte {}, the server answered with the range {range:?}",
                            self.offset
                        ),
                    });
                }
                self.resumed += 1;
                log::info!("{}: resumed at byte {}", self.shown, self.offset);
            }
            408 | 425 | 429 | 500..=599 => {
                return Err(Failure {
                    permanent: false,
                    reason: format!("the server answered {}", response.status()),
                })
            }
            _ => {
                return Err(Failure {
                    permanent: true,
                    reason: format!("the server answered {}", response.status()),
                })
            }
        }
        self.response = Some(response);
        Ok(())
    }

    /// Waits before the next attempt, or gives up: at once for a failure another try
    /// cannot mend, else once the retry window has passed without progress.
    fn wait_or_give_up(&mut self, failure: Failure) -> io::Result<()> {
        let at = if self.offset > 0 {
            format!(" at byte {}", self.offset)
        } else {
            String::new()
        };
        // Errors do not repeat the URL: whoever reports them names it.
        let position = match self.offset {
            0 => String::new(),
            n => format!("at byte {n}: "),
        };
        if failure.permanent {
            return Err(io::Error::other(format!("{position}{}", failure.reason)));
        }
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.retry.window {
            return Err(io::Error::other(format!(
                "{position}gave up after {} without progress; last: {}",
                humantime::format_duration(self.retry.window),
                failure.reason
            )));
        }
        let base = self
            .retry
            .first
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.retry.max);
        let jitter = base.mul_f64(crate::random::fraction().unwrap_or(0.5) * 0.25);
        let delay = (base + jitter).min(self.retry.window.saturating_sub(since.elapsed()));
        log::warn!(
            "{}{at}: {}; trying again in {}",
            self.shown,
            failure.reason,
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        );
        std::thread::sleep(delay);
        self.attempt += 1;
        Ok(())
    }
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(response) = self.response.as_mut() else {
                if let Err(failure) = self.connect() {
                    self.wait_or_give_up(failure)?;
                }
                continue;
            };
            match response.read(buf) {
                Ok(0) => match self.total {
                    Some(total) if self.offset < total => {
                        self.response = None;
                        let reason = format!(
                            "the connection ended after {} of {total} bytes",
                            self.offset
                        );
                        self.wait_or_give_up(Failure {
                            permanent: false,
                            reason,
                        })?;
                    }
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.offset += n as u64;
                    self.failing_since = None;
                    self.attempt = 0;
                    return Ok(n);
                }
                Err(e) => {
                    self.response = None;
                    self.wait_or_give_up(Failure {
                        permanent: false,
                        reason: describe(&e),
                    })?;
                }
            }
        }
    }
}

/// Reads a small text file over HTTP(S) (a `.sha256` beside an archive): `Ok(None)`
/// when the server has none (404).
pub fn small_text(client: &Client, url: &Url, limit: u64) -> Result<Option<String>, HttpError> {
    let fail = |reason: String| HttpError::Failed {
        url: shown(url),
        reason,
    };
    let response = client
        .get(url.clone())
        .send()
        .map_err(|e| fail(describe(&e.without_url())))?;
    match response.status().as_u16() {
        200 => {}
        404 | 410 => return Ok(None),
        _ => return Err(fail(format!("the server answered {}", response.status()))),
    }
    let mut text = String::new();
    response
        .take(limit)
        .read_to_string(&mut text)
        .map_err(|e| fail(describe(&e)))?;
    Ok(Some(text))
}
