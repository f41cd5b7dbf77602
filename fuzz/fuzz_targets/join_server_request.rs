//! The join service's side of a connection: the decrypted bytes a caller sends, cut
//! into reads of varying sizes, assembled into a request frame as the service's intake
//! does (checked against `proto::read_frame` on the same bytes), then answered by
//! `Service::respond` as sent, and again tagged with a key the service accepts (a join
//! line's credential, a node's own credential) so authenticated requests reach every
//! branch. The answer must always be a well-formed response.
//!
//! The first input byte picks the read sizes; the rest is the stream.
#![no_main]

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bootstrap::distro::{JoinMaterial, JoinRole};
use bootstrap::join::admission::{Admission, LEASE};
use bootstrap::join::intake::FrameBuf;
use bootstrap::join::keys::{credential_key, NODE_CREDENTIAL_PREFIX};
use bootstrap::join::proto::{self, ClusterInfo, Response};
use bootstrap::join::server::{ClusterView, Credentials, Minter, Nodes, Service};
use bootstrap::join::JoinKeys;
use bootstrap::secret::Secret;
use libfuzzer_sys::fuzz_target;

const CREDENTIAL_ID: &str = "fuzz-line";
const CREDENTIAL: &str = "fuzz credential 0123456789abcdef";
const BINDING: [u8; 32] = [9u8; 32];

fn keys() -> &'static JoinKeys {
    static KEYS: OnceLock<JoinKeys> = OnceLock::new();
    // Argon2id costs 46 MiB and a few hundred ms: once per process.
    KEYS.get_or_init(|| {
        JoinKeys::from_secret(
            &Secret::new("bjs1-fuzzing-secret-not-for-any-cluster-0123456789abcdef"),
            "fuzz",
        )
        .expect("join keys")
    })
}

const MATERIAL: &str = r#"{"format":1,"distro":"k3s","version":"v1.31.4+k3s1","role":"worker","endpoint":"10.0.0.1:6443","token":"K10abc::server:def","cluster_name":"fuzz"}"#;

struct Fixed;

impl Minter for Fixed {
    fn mint(&self, role: JoinRole, _ttl: Duration) -> Result<JoinMaterial, String> {
        let mut material = JoinMaterial::parse(MATERIAL, "fuzz").map_err(|e| e.to_string())?;
        material.role = role;
        Ok(material)
    }
}

impl Credentials for Fixed {
    fn lookup(&self, id: &str) -> Option<(ring::hmac::Key, JoinRole)> {
        (id == CREDENTIAL_ID).then(|| (credential_key(&Secret::new(CREDENTIAL)), JoinRole::Worker))
    }
}

impl Nodes for Fixed {
    fn remove(&self, name: &str, _drain_timeout: Duration) -> Result<String, String> {
        Ok(format!("removed {name}"))
    }
}

impl ClusterView for Fixed {
    fn cluster(&self) -> Option<ClusterInfo> {
        Some(ClusterInfo {
            id: "fuzz".into(),
            distro: "k3s".into(),
            version: "v1.31.4+k3s1".into(),
            ca_hash: None,
            members: vec!["10.0.0.1".into()],
        })
    }
}

/// Reads of the sizes `sizes` cycles through, each followed by a "would block".
struct Trickle<'a> {
    data: &'a [u8],
    sizes: [usize; 4],
    turn: usize,
    blocked: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.blocked && !self.data.is_empty() {
            self.blocked = false;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.blocked = true;
        let n = self.sizes[self.turn % 4]
            .min(buf.len())
            .min(self.data.len());
        self.turn += 1;
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let sizes = [
        1 + (mode & 0x3) as usize,
        1 + ((mode >> 2) & 0x7) as usize * 7,
        4096,
        1 + (mode >> 5) as usize,
    ];
    let mut input = Trickle {
        data: stream,
        sizes,
        turn: 0,
        blocked: false,
    };
    let mut frame = FrameBuf::default();
    let assembled = loop {
        match frame.take_from(&mut input) {
            Ok(Some(whole)) => break Some(whole),
            Ok(None) => continue,
            Err(_) => break None,
        }
    };
    // The intake and the blocking reader must agree on what a frame is.
    let read = proto::read_frame(&mut &stream[..]).ok();
    assert_eq!(assembled, read, "intake and read_frame disagree");
    let Some((body, tag)) = assembled else {
        return;
    };

    let service = Service::new(
        keys().clone(),
        Box::new(Fixed),
        Box::new(Fixed),
        Some(Admission::new(None, LEASE)),
        Duration::from_secs(3600),
    )
    .expect("service")
    .with_nodes(Box::new(Fixed))
    .with_cluster(Box::new(Fixed));
    let peer: SocketAddr = "[2001:db8::7]:40000".parse().expect("address");

    let mut tags = vec![tag];
    // As a join line's holder would tag it.
    let line = credential_key(&Secret::new(CREDENTIAL));
    tags.push(
        proto::tag(&line, proto::REQUEST_LABEL, &BINDING, &body)
            .as_ref()
            .to_vec(),
    );
    // As a node with its own credential would, for whatever node the body names.
    if let Some(node) = named_node(&body) {
        if let Some(secret) = keys().node_secret(&node) {
            let key = credential_key(&secret);
            tags.push(
                proto::tag(&key, proto::REQUEST_LABEL, &BINDING, &body)
                    .as_ref()
                    .to_vec(),
            );
        }
    }
    for tag in tags {
        let (answer, answer_tag) = service
            .respond(&body, &tag, &BINDING, peer, &mut |_| {})
            .expect("an answer");
        assert_eq!(answer_tag.len(), proto::TAG_LEN);
        assert!(
            answer.len() <= proto::MAX_BODY,
            "answer over the frame limit"
        );
        serde_json::from_slice::<Response>(&answer).expect("a well-formed response");
    }
});

/// The `credential` a request body names as `node:NAME`, if any.
fn named_node(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = value.get("credential")?.as_str()?;
    id.strip_prefix(NODE_CREDENTIAL_PREFIX).map(str::to_owned)
}
