//! The joiner's side: ask the controllers in turn for join material, with exponential
//! backoff and full jitter until a deadline, logging why each try failed.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::keys::JoinKeys;
use super::proto::{self, Request, RequestKind, Response, Status};
use crate::distro::{JoinMaterial, JoinRole};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One try of a request the join service carries out (a join, a release, a turn): what
/// the work may take there ([`super::server::WORK_TIME`]), and the connection around it.
/// A service that is down is found out by the connect timeout, not by this.
const WORK_BUDGET: Duration = Duration::from_secs(
    CONNECT_TIMEOUT.as_secs() + super::server::WORK_TIME.as_secs() + ANSWER_SLACK.as_secs(),
);
/// Beyond the service's own deadline: the handshake and the answer on the wire.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// Why one try failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// No TCP connection (down, not listening yet, no route).
    Unreachable(String),
    /// TLS failed, or the server did not prove the join secret.
    Tls(String),
    /// The server refused our credentials or request.
    Refused(String),
    /// The cluster is not initialised yet, or cannot mint.
    NotReady(String),
    /// Another controller is joining.
    Busy(String),
    /// A broken or unauthenticated answer.
    Protocol(String),
    /// The request was allowed but the controller could not carry it out.
    Failed(String),
}

impl Cause {
    /// How much a cause says about why joining fails, to report the most telling one of
    /// a round (a refused pin matters more than a controller that is simply down).
    fn weight(&self) -> u8 {
        match self {
            Cause::Tls(_) | Cause::Refused(_) | Cause::Failed(_) => 4,
            Cause::Busy(_) | Cause::NotReady(_) => 3,
            Cause::Protocol(_) => 2,
            Cause::Unreachable(_) => 1,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Unreachable(m) => write!(f, "unreachable: {m}"),
            Cause::Tls(m) => write!(f, "TLS: {m}"),
            Cause::Refused(m) => write!(f, "refused credentials: {m}"),
            Cause::NotReady(m) => write!(f, "controller not initialised yet: {m}"),
            Cause::Busy(m) => write!(f, "admission busy: {m}"),
            Cause::Protocol(m) => write!(f, "bad answer: {m}"),
            Cause::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

/// Backoff between rounds over all controllers: a random delay up to
/// `min(cap, base * 2^round)` ("full jitter").
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    /// The delay before round `round + 1`.
    pub fn delay(&self, round: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(round.min(20)).unwrap_or(u32::MAX))
            .min(self.cap);
        ceiling.mul_f64(crate::random::fraction().unwrap_or(0.5))
    }
}

/// Gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    pub attempts: u32,
    pub waited: Duration,
    pub last: Cause,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no join material after {} tries in {}; last cause: {}",
            self.attempts,
            humantime::format_duration(Duration::from_secs(self.waited.as_secs())),
            self.last
        )
    }
}

/// One request to one controller, within the bound on one try of a request the service
/// carries out.
pub fn ask(address: &str, keys: &JoinKeys, request: &Request) -> Result<Response, Cause> {
    ask_within(address, keys, request, WORK_BUDGET)
}

/// One request to one controller; the whole try (connect, handshake, request, answer)
/// must fit in `budget`, so a silent or trickling server cannot hold the joiner.
pub fn ask_within(
    address: &str,
    keys: &JoinKeys,
    request: &Request,
    budget: Duration,
) -> Result<Response, Cause> {
    let addr = address
        .to_socket_addrs()
        .map_err(|e| Cause::Unreachable(format!("{address}: {e}")))?
        .next()
        .ok_or_else(|| Cause::Unreachable(format!("{address}: no address")))?;
    let sock = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT.min(budget))
        .map_err(|e| Cause::Unreachable(format!("{address}: {e}")))?;
    let mut sock = super::deadline::DeadlineStream::new(sock, budget);
    let config = super::tls::client_config(keys.pin()).map_err(Cause::Tls)?;
    let mut conn = rustls::ClientConnection::new(config, super::tls::server_name())
        .map_err(|e| Cause::Tls(e.to_string()))?;
    // Finish the handshake first: nothing is sent before the server has proved its key.
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                Cause::Unreachable(format!("{address}: no answer in time"))
            }
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof => {
                Cause::Unreachable(format!(
                    "{address}: the join service closed the connection (restarting, or too many connections from this address)"
                ))
            }
            _ => Cause::Tls(format!("{address}: {}", tls_reason(&e))),
        })?;
    }
    let binding = conn
        .export_keying_material(vec![0u8; 32], proto::EXPORTER_LABEL, None)
        .map_err(|e| Cause::Tls(e.to_string()))?;
    let body = serde_json::to_vec(request).map_err(|e| Cause::Protocol(e.to_string()))?;
    let tag = proto::tag(keys.mac_key(), proto::REQUEST_LABEL, &binding, &body);
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    proto::write_frame(&mut tls, &body, tag.as_ref())
        .map_err(|e| Cause::Unreachable(format!("{address}: sending: {e}")))?;
    let _ = tls.flush();
    read_response(&mut tls, keys, &binding, address)
}

/// Reads a controller's answer frame from `input` (the TLS stream whose exported keying
/// material is `binding`) and checks it: a `Refused` is told as such, anything else
/// must be authenticated by `keys`, and only an authenticated `Ok` is returned.
pub fn read_response(
    input: &mut impl Read,
    keys: &JoinKeys,
    binding: &[u8],
    address: &str,
) -> Result<Response, Cause> {
    let (reply, reply_tag) = proto::read_frame(input).map_err(|e| {
        Cause::Unreachable(match &e {
            proto::FrameError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                format!("{address}: no answer in time (the join service is slow or stuck)")
            }
            _ => format!("{address}: reading the answer: {e}"),
        })
    })?;
    let response: Response =
        serde_json::from_slice(&reply).map_err(|e| Cause::Protocol(format!("{address}: {e}")))?;
    let authentic = proto::verify(
        keys.mac_key(),
        proto::RESPONSE_LABEL,
        binding,
        &reply,
        &reply_tag,
    );
    match (response.status, authentic) {
        (Status::Refused, _) => Err(Cause::Refused(format!("{address}: {}", response.message))),
        (_, false) => Err(Cause::Protocol(format!(
            "{address}: the answer is not authenticated by the join secret"
        ))),
        (Status::NotReady, true) => {
            Err(Cause::NotReady(format!("{address}: {}", response.message)))
        }
        (Status::Busy, true) => Err(Cause::Busy(format!("{address}: {}", response.message))),
        (Status::Failed, true) => Err(Cause::Failed(format!("{address}: {}", response.message))),
        (Status::Ok, true) => Ok(response),
    }
}

fn tls_reason(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::General(m)) => m.clone(),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// What to ask, of whom, for how long.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// `host:port` of each controller, in order.
    pub targets: Vec<String>,
    pub node: String,
    pub role: JoinRole,
    pub credential: Option<String>,
    pub timeout: Duration,
    pub backoff: Backoff,
}

/// Join material from the first controller that gives it, retrying until the timeout.
pub fn fetch(keys: &JoinKeys, fetch: &Fetch) -> Result<JoinMaterial, GaveUp> {
    let start = Instant::now();
    let request = Request {
        version: 1,
        kind: RequestKind::Join,
        role: fetch.role,
        node: fetch.node.clone(),
        credential: fetch.credential.clone(),
        drain_timeout_secs: None,
        kube_version: None,
    };
    let mut attempts = 0;
    let mut round = 0;
    let mut last = Cause::Unreachable("no controller to ask".into());
    // A service minting for this node: asked first in the next round, and the round
    // ends there. Another controller asked meanwhile would mint too, and of two kubeadm
    // mints only the later upload opens with its key.
    let mut minting: Option<usize> = None;
    loop {
        // The most telling cause of this round: what the joiner reports if it gives up.
        let mut telling: Option<Cause> = None;
        let first = minting.take().unwrap_or(0);
        let order = (0..fetch.targets.len()).map(|i| (first + i) % fetch.targets.len());
        for index in order {
            let target = &fetch.targets[index];
            attempts += 1;
            let budget = fetch
                .timeout
                .saturating_sub(start.elapsed())
                .clamp(Duration::from_secs(1), WORK_BUDGET);
            match ask_within(target, keys, &request, budget) {
                Ok(response) => {
                    let text = response.material.unwrap_or_default();
                    match JoinMaterial::parse(&text, &format!("the answer of {target}")) {
                        Ok(material) => {
                            log::info!("join material from {target} (try {attempts})");
                            return Ok(material);
                        }
                        Err(e) => last = Cause::Protocol(e.to_string()),
                    }
                }
                Err(cause) => last = cause,
            }
            log::warn!("join: try {attempts} failed: {last}");
            if telling.as_ref().is_none_or(|t| last.weight() > t.weight()) {
                telling = Some(last.clone());
            }
            if start.elapsed() >= fetch.timeout {
                break;
            }
            if matches!(&last, Cause::NotReady(m) if m.ends_with(proto::STILL_MINTING)) {
                minting = Some(index);
                break;
            }
        }
        let left = fetch.timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(GaveUp {
                attempts,
                waited: start.elapsed(),
                last: telling.unwrap_or(last),
            });
        }
        let delay = fetch.backoff.delay(round).min(left);
        log::info!(
            "join: asking again in {:.1} s ({} s left of join.timeout)",
            delay.as_secs_f64(),
            left.as_secs()
        );
        // A stop signal (SIGTERM, SIGINT) ends the wait; the caller tells why.
        if crate::interrupt::sleep(delay).is_some() {
            return Err(GaveUp {
                attempts,
                waited: start.elapsed(),
                last: telling.unwrap_or(last),
            });
        }
        round += 1;
    }
}

/// Gives a controller's admission lease back: retried with backoff for up to 30 s, which
/// outlasts a join service restarting (its unit restarts it after 5 s); no new try
/// starts after that, though one under way may take its whole budget.
pub fn release(
    keys: &JoinKeys,
    targets: &[String],
    node: &str,
    credential: Option<String>,
) -> Result<(), Cause> {
    const PATIENCE: Duration = Duration::from_secs(30);
    let request = Request {
        version: 1,
        kind: RequestKind::Release,
        role: JoinRole::Controller,
        node: node.to_owned(),
        credential,
        drain_timeout_secs: None,
        kube_version: None,
    };
    let start = Instant::now();
    let backoff = Backoff::default();
    let mut last = Cause::Unreachable("no controller to tell".into());
    for round in 0.. {
        for target in targets {
            match ask_within(target, keys, &request, WORK_BUDGET) {
                Ok(_) => return Ok(()),
                Err(cause) => last = cause,
            }
            if start.elapsed() >= PATIENCE {
                break;
            }
        }
        let left = PATIENCE.saturating_sub(start.elapsed());
        // A stop signal ends the wait; the lease lapses by itself.
        if left.is_zero() || crate::interrupt::sleep(backoff.delay(round).min(left)).is_some() {
            break;
        }
    }
    Err(last)
}

/// What the other controllers said when asked whether a cluster exists.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    /// The first controller that belongs to a cluster, and that cluster.
    pub found: Option<(String, super::proto::ClusterInfo)>,
    /// Controllers that answered: no cluster here.
    pub none: Vec<String>,
    /// Controllers that could not be asked, with the last cause.
    pub silent: Vec<(String, String)>,
}

/// Asks every target whether it belongs to a cluster, again and again until one says
/// yes, every one has said no, or `wait` has passed (then the rest count as silent).
pub fn survey(keys: &JoinKeys, targets: &[String], node: &str, wait: Duration) -> Survey {
    let request = Request {
        version: 1,
        kind: RequestKind::Cluster,
        role: JoinRole::Controller,
        node: node.to_owned(),
        credential: None,
        drain_timeout_secs: None,
        kube_version: None,
    };
    let start = Instant::now();
    let backoff = Backoff::default();
    let mut survey = Survey::default();
    let mut pending: Vec<String> = targets.to_vec();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for round in 0.. {
        let mut still = Vec::new();
        for target in pending {
            match ask_within(&target, keys, &request, Duration::from_secs(5)) {
                Ok(Response {
                    cluster: Some(cluster),
                    ..
                }) => {
                    survey.found = Some((target, cluster));
                    return survey;
                }
                Ok(_) => survey.none.push(target),
                // A refusal (wrong secret) or a broken answer will not change by asking
                // again: the node is counted as silent, not as "no cluster".
                Err(cause @ (Cause::Refused(_) | Cause::Protocol(_) | Cause::Tls(_))) => {
                    survey.silent.push((target, cause.to_string()));
                }
                Err(cause) => {
                    last.insert(target.clone(), cause.to_string());
                    still.push(target);
                }
            }
        }
        pending = still;
        let left = wait.saturating_sub(start.elapsed());
        if pending.is_empty() || left.is_zero() {
            break;
        }
        std::thread::sleep(backoff.delay(round).min(left).min(Duration::from_secs(5)));
    }
    for target in pending {
        let cause = last.remove(&target).unwrap_or_default();
        survey.silent.push((target, cause));
    }
    survey
}

/// One round of an upgrade-turn request ([`RequestKind::Upgrade`] or
/// [`RequestKind::Upgraded`]) over `targets`: the first answer counts, a controller that
/// cannot be reached is skipped. `Err(Cause::Busy(why))` when the node must wait.
pub fn upgrade_turn(
    keys: &JoinKeys,
    targets: &[String],
    request: &Request,
) -> Result<String, Cause> {
    let mut telling: Option<Cause> = None;
    // A worker's turn begins with its drain, which the answer waits for.
    let budget = WORK_BUDGET + super::server::UPGRADE_DRAIN + super::server::LEAVE_SLACK;
    for target in targets {
        match ask_within(target, keys, request, budget) {
            Ok(response) => return Ok(response.message),
            Err(cause @ (Cause::Unreachable(_) | Cause::Protocol(_) | Cause::NotReady(_))) => {
                if telling
                    .as_ref()
                    .is_none_or(|t| cause.weight() >= t.weight())
                {
                    telling = Some(cause);
                }
            }
            Err(cause) => return Err(cause),
        }
    }
    Err(telling.unwrap_or_else(|| Cause::Unreachable("no join service to ask".into())))
}

/// Asks a controller's join service to cordon, drain and delete worker `node`: each
/// join service in turn, for up to 30 s while none can be reached (a restarting service),
/// stopping at the first that answers. What it did, or the most telling cause.
pub fn leave(
    keys: &JoinKeys,
    targets: &[String],
    node: &str,
    credential: Option<String>,
    drain_timeout: Duration,
) -> Result<String, Cause> {
    const PATIENCE: Duration = Duration::from_secs(30);
    let drain_timeout = drain_timeout.min(super::server::MAX_DRAIN);
    let request = Request {
        version: 1,
        kind: RequestKind::Leave,
        role: JoinRole::Worker,
        node: node.to_owned(),
        credential,
        drain_timeout_secs: Some(drain_timeout.as_secs()),
        kube_version: None,
    };
    // The answer comes once the node is drained and deleted.
    let budget = drain_timeout + Duration::from_secs(120);
    let start = Instant::now();
    let backoff = Backoff::default();
    let mut telling: Option<Cause> = None;
    for round in 0.. {
        for target in targets {
            match ask_within(target, keys, &request, budget) {
                Ok(response) => return Ok(response.message),
                // An answer that is not about reachability is final: asking another
                // controller would get the same.
                Err(cause @ (Cause::Refused(_) | Cause::Failed(_) | Cause::Tls(_))) => {
                    return Err(cause)
                }
                Err(cause) => {
                    log::warn!("leave: {cause}");
                    if telling
                        .as_ref()
                        .is_none_or(|t| cause.weight() >= t.weight())
                    {
                        telling = Some(cause);
                    }
                }
            }
        }
        let left = PATIENCE.saturating_sub(start.elapsed());
        // A stop signal ends the wait; the caller tells why.
        if left.is_zero() || crate::interrupt::sleep(backoff.delay(round).min(left)).is_some() {
            break;
        }
    }
    Err(telling.unwrap_or_else(|| Cause::Unreachable("no join service to ask".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(800),
        };
        for round in 0..40 {
            let d = b.delay(round);
            assert!(d <= Duration::from_millis(800), "{d:?}");
        }
        assert!(b.delay(0) <= Duration::from_millis(100));
        let spread: std::collections::BTreeSet<u128> =
            (0..20).map(|_| b.delay(5).as_micros()).collect();
        assert!(spread.len() > 1, "no jitter");
    }
}
