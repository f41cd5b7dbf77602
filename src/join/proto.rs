//! The join protocol's messages and frames: one request and one response per TLS
//! connection, each `[u32 length][JSON body][HMAC-SHA256 tag]`, the tag taken over a
//! direction label, the TLS session's exported keying material and the body — so a
//! message proves its sender knows the key, cannot be altered, and cannot be replayed
//! on another connection.

use std::io::{self, Read, Write};

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::distro::JoinRole;

/// The largest body either side accepts.
pub const MAX_BODY: usize = 64 * 1024;
/// The RFC 5705 exporter label that binds messages to their TLS session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-bootstrap-join-v1";
pub const REQUEST_LABEL: &[u8] = b"bootstrap-join-v1 request";
pub const RESPONSE_LABEL: &[u8] = b"bootstrap-join-v1 response";
/// Bytes of the HMAC-SHA256 tag that ends every frame.
pub const TAG_LEN: usize = 32;

/// What a joiner asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestKind {
    /// Join material for `role`.
    Join,
    /// A controller that has joined gives the admission lease back.
    Release,
    /// A worker asks to be cordoned, drained and deleted from the cluster.
    Leave,
    /// A controller about to initialise asks whether this node already belongs to a
    /// cluster (answered by joining controllers too, with none).
    Cluster,
    /// A node asks for its turn to upgrade to `kube_version` (the fleet's upgrade lease).
    Upgrade,
    /// A node has upgraded and runs `kube_version`: its turn ends.
    Upgraded,
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    pub kind: RequestKind,
    pub role: JoinRole,
    /// The joining node's name (lease holder, logs).
    pub node: String,
    /// The id of a manual-join credential, when the request is keyed by one instead of
    /// the cluster secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// With [`RequestKind::Leave`]: how long draining the node may take, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout_secs: Option<u64>,
    /// With [`RequestKind::Upgrade`], the version the node moves to; with
    /// [`RequestKind::Upgraded`], the version it now runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_version: Option<String>,
}

/// How a request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    /// The cluster cannot mint yet (not initialised, distro still starting).
    NotReady,
    /// Another controller is joining; try again.
    Busy,
    /// Authentication failed or the request is not allowed.
    Refused,
    /// The request was allowed but could not be carried out (the message says why).
    Failed,
}

/// The end of a `not-ready` answer's message while a mint for the asker goes on: asking
/// the same service again gets what it makes (a client keeps to that service rather
/// than have another controller mint too).
pub const STILL_MINTING: &str = "is still being minted; ask again";

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub status: Status,
    pub message: String,
    /// The join material's file text (see `distro::material`), with `Ok` to a join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub material: Option<String>,
    /// With `Ok` to [`RequestKind::Cluster`]: the cluster this node belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
}

impl Response {
    /// An answer without material or cluster.
    pub fn plain(status: Status, message: impl Into<String>) -> Response {
        Response {
            status,
            message: message.into(),
            material: None,
            cluster: None,
        }
    }
}

/// A cluster as one of its controllers knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Chosen when the cluster was initialised; every node records it.
    pub id: String,
    pub distro: String,
    pub version: String,
    /// `sha256:<hex>` of the cluster CA certificate, when the controller can read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_hash: Option<String>,
    /// The controllers the answering node knows of.
    #[serde(default)]
    pub members: Vec<String>,
}

/// A broken frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("a message of {0} bytes is over the {MAX_BODY}-byte limit")]
    TooLarge(usize),
}

/// The tag of `body` in direction `label` on the session whose exporter is `binding`.
pub fn tag(key: &hmac::Key, label: &[u8], binding: &[u8], body: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&(label.len() as u32).to_be_bytes());
    ctx.update(label);
    ctx.update(&(binding.len() as u32).to_be_bytes());
    ctx.update(binding);
    ctx.update(body);
    ctx.sign()
}

/// Whether `tag` authenticates `body` (constant time).
pub fn verify(key: &hmac::Key, label: &[u8], binding: &[u8], body: &[u8], tag: &[u8]) -> bool {
    let mut msg = Vec::with_capacity(8 + label.len() + binding.len() + body.len());
    msg.extend_from_slice(&(label.len() as u32).to_be_bytes());
    msg.extend_from_slice(label);
    msg.extend_from_slice(&(binding.len() as u32).to_be_bytes());
    msg.extend_from_slice(binding);
    msg.extend_from_slice(body);
    hmac::verify(key, &msg, tag).is_ok()
}

/// Writes one frame.
pub fn write_frame(out: &mut impl Write, body: &[u8], tag: &[u8]) -> Result<(), FrameError> {
    if body.len() > MAX_BODY {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len() + tag.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    frame.extend_from_slice(tag);
    out.write_all(&frame)?;
    out.flush()?;
    Ok(())
}

/// Reads one frame: the body and its tag. The length is checked before anything is
/// allocated for it.
pub fn read_frame(input: &mut impl Read) -> Result<(Vec<u8>, Vec<u8>), FrameError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_BODY {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    let mut tag = vec![0u8; TAG_LEN];
    input.read_exact(&mut tag)?;
    Ok((body, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[b; 32])
    }

    #[test]
    fn tags_bind_key_direction_session_and_body() {
        let t = tag(&key(1), REQUEST_LABEL, b"session-a", b"body");
        assert!(verify(
            &key(1),
            REQUEST_LABEL,
            b"session-a",
            b"body",
            t.as_ref()
        ));
        // Wrong key (wrong secret), other direction, replay on another session, tampering.
        assert!(!verify(
            &key(2),
            REQUEST_LABEL,
            b"session-a",
            b"body",
            t.as_ref()
        ));
        assert!(!verify(
            &key(1),
            RESPONSE_LABEL,
            b"session-a",
            b"body",
            t.as_ref()
        ));
        assert!(!verify(
            &key(1),
            REQUEST_LABEL,
            b"session-b",
            b"body",
            t.as_ref()
        ));
        assert!(!verify(
            &key(1),
            REQUEST_LABEL,
            b"session-a",
            b"bodY",
            t.as_ref()
        ));
    }

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused_before_reading() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{}", &[7u8; 32]).unwrap();
        let (body, tag) = read_frame(&mut &buf[..]).unwrap();
        assert_eq!(body, b"{}");
        assert_eq!(tag, vec![7u8; 32]);
        let huge = ((MAX_BODY + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(FrameError::TooLarge(_))
        ));
        // Cut short: an error, not a hang or a partial message.
        assert!(read_frame(&mut &buf[..buf.len() - 1]).is_err());
    }
}
