//! `bootstrap serve`: hands join material to callers that prove they hold the join
//! secret. Connections come in through `intake` (caps per peer and before
//! authentication, a short pre-auth deadline, no thread per silent socket); a fixed pool
//! of worker threads answers whole requests within a deadline counted from accept;
//! minted material is reused while more than half its life remains; controller joins are
//! admitted one at a time.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::admission::Admission;
use super::deadline::DeadlineStream;
use super::intake::{self, Arrived};
use super::keys::JoinKeys;
use super::mint::{Materials, NoMaterial};
use super::proto::{self, ClusterInfo, Request, RequestKind, Response, Status};
use super::throttle::{Throttled, WARN_EVERY};
use crate::distro::JoinRole;

/// Worker threads serving connections.
pub const WORKERS: usize = 64;
/// Connections one peer address may have open at once, by default (`serve
/// --max-per-peer`).
pub const MAX_PER_PEER: usize = 32;
/// Connections the kernel queues until they are accepted (capped by net.core.somaxconn).
pub const BACKLOG: i32 = 1024;
/// Everything about one connection (handshake, request, response) must fit in this,
/// counted from accept; the handshake and request alone in [`intake::PRE_AUTH_DEADLINE`].
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// What carrying out an authenticated request may take (a join, a release, a controller's
/// upgrade turn): the lease, the node and the mint each ask the API server or run the
/// distro's tool, which a loaded control plane answers in seconds, not milliseconds.
/// Counted from when the request was authenticated; a mint still running then goes on,
/// and its material waits for the node that asked (see [`Materials`]).
pub const WORK_TIME: Duration = Duration::from_secs(60);

pub use super::mint::{Minter, FAILURE_MEMORY};

/// Why a manual credential key was or was not found.
pub trait Credentials: Send + Sync {
    /// The request key and allowed role of the manual credential `id`, if it is live.
    fn lookup(&self, id: &str) -> Option<(ring::hmac::Key, JoinRole)>;

    /// Whether `id` has already brought in a node other than `node` (a join line brings
    /// in one node; that node may ask again, as its answer may have been lost).
    fn used(&self, id: &str, node: &str) -> bool {
        let _ = (id, node);
        false
    }

    /// Marks `id` used by `node`: join material went out for it. It still lets that
    /// controller give the admission lease back.
    fn consume(&self, id: &str, node: &str) {
        let _ = (id, node);
    }
}

/// Takes worker nodes out of the cluster on their request (`bootstrap leave` on a worker,
/// whose own credentials may not drain it).
pub trait Nodes: Send + Sync {
    /// Cordons, drains (within `drain_timeout`) and deletes worker node `name`; what was
    /// done, or why it could not be.
    fn remove(&self, name: &str, drain_timeout: Duration) -> Result<String, String>;

    /// Before controller `name` at `address` gets join material: removes a controller of
    /// that name or address whose machine is gone (a replaced first controller), so the
    /// new one joins in its place. `Ok(Some(what))` when something was removed; `Err`
    /// when the joiner must wait (the old node still looks alive, or quorum is lost).
    fn replace(&self, name: &str, address: IpAddr) -> Result<Option<String>, String> {
        let _ = (name, address);
        Ok(None)
    }
}

/// Control-plane admission: one controller joins at a time. The lease may live in a file
/// of this node ([`Admission`]) or in the cluster, where every controller's join service
/// grants from the same lease.
pub trait Admit: Send + Sync {
    /// Gives the lease to `node` (again, if it holds it); `Err` says who holds it, or why
    /// the lease cannot be read now.
    fn acquire(&self, node: &str) -> Result<(), String>;
    /// Ends `node`'s lease (a no-op for anyone else).
    fn release(&self, node: &str);
}

impl Admit for Mutex<Admission> {
    fn acquire(&self, node: &str) -> Result<(), String> {
        lock(self).acquire(node)
    }

    fn release(&self, node: &str) {
        lock(self).release(node)
    }
}

/// The fleet's upgrade turns ([`RequestKind::Upgrade`], [`RequestKind::Upgraded`]):
/// controllers one at a time, then workers in batches.
pub trait Upgrades: Send + Sync {
    /// Gives `node` its turn to move to `target` (again, if it has it); `Err` says what
    /// it waits for.
    fn acquire(&self, node: &str, role: JoinRole, target: &str) -> Result<(), String>;
    /// Ends `node`'s turn: it now runs `version`.
    fn finish(&self, node: &str, version: &str) -> Result<(), String>;
}

/// What this node knows of the cluster it belongs to, for [`RequestKind::Cluster`].
pub trait ClusterView: Send + Sync {
    /// The cluster, or `None` while this node belongs to none (a controller still waiting
    /// to join, or about to initialise).
    fn cluster(&self) -> Option<ClusterInfo>;
}

/// How long a worker's drain may take when its upgrade turn begins.
pub const UPGRADE_DRAIN: Duration = Duration::from_secs(120);

/// The longest drain a leave request may ask for.
pub const MAX_DRAIN: Duration = Duration::from_secs(60 * 60);

/// What an authenticated request may do, by the key that authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// The cluster's join secret: anything.
    Cluster,
    /// A join line's credential: join (and release) as this role.
    Manual(JoinRole),
    /// A node's own credential: only that node's leave.
    Node(String),
}

/// No manual credentials.
pub struct NoCredentials;

impl Credentials for NoCredentials {
    fn lookup(&self, _id: &str) -> Option<(ring::hmac::Key, JoinRole)> {
        None
    }
}

/// The service's shared state.
pub struct Service {
    keys: JoinKeys,
    tls: Arc<rustls::ServerConfig>,
    materials: Materials,
    credentials: Box<dyn Credentials>,
    /// `Some` on a node that admits controller joins.
    admission: Option<Box<dyn Admit>>,
    /// `None`: this service does not answer whether a cluster exists.
    cluster: Option<Box<dyn ClusterView>>,
    max_per_peer: usize,
    nodes: Option<Box<dyn Nodes>>,
    /// `None`: this service does not hand out upgrade turns.
    upgrades: Option<Box<dyn Upgrades>>,
    /// What an authenticated request's work may take ([`WORK_TIME`]).
    work_time: Duration,
}

impl Service {
    pub fn new(
        keys: JoinKeys,
        minter: Box<dyn Minter>,
        credentials: Box<dyn Credentials>,
        admission: Option<Admission>,
        ttl: Duration,
    ) -> Result<Service, String> {
        Ok(Service {
            tls: super::tls::server_config(&keys)?,
            keys,
            materials: Materials::new(minter, ttl),
            credentials,
            admission: admission.map(|a| Box::new(Mutex::new(a)) as Box<dyn Admit>),
            cluster: None,
            max_per_peer: MAX_PER_PEER,
            nodes: None,
            upgrades: None,
            work_time: WORK_TIME,
        })
    }

    /// Gives authenticated requests `work_time` instead of [`WORK_TIME`] (tests).
    pub fn with_work_time(mut self, work_time: Duration) -> Self {
        self.work_time = work_time;
        self
    }

    /// Lets workers ask this service to remove them from the cluster.
    pub fn with_nodes(mut self, nodes: Box<dyn Nodes>) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// Admits controller joins through `admission` (a lease in the cluster, say).
    pub fn with_admission(mut self, admission: Box<dyn Admit>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Hands out the fleet's upgrade turns through `upgrades`.
    pub fn with_upgrades(mut self, upgrades: Box<dyn Upgrades>) -> Self {
        self.upgrades = Some(upgrades);
        self
    }

    /// Answers whether a cluster exists from `view`.
    pub fn with_cluster(mut self, view: Box<dyn ClusterView>) -> Self {
        self.cluster = Some(view);
        self
    }

    /// Allows `max` open connections per peer address (nodes behind one NAT address).
    pub fn with_max_per_peer(mut self, max: usize) -> Self {
        self.max_per_peer = max.max(1);
        self
    }

    fn answer(&self, request: &Request, peer: SocketAddr, deadline: Instant) -> Response {
        let started = Instant::now();
        let reply = |status, message: String| Response::plain(status, message);
        if request.version != 1 {
            return reply(
                Status::Refused,
                format!(
                    "protocol version {} is not spoken here (1 is)",
                    request.version
                ),
            );
        }
        // The name becomes a lease holder, a node credential, a kubectl argument and a
        // log line: only what Kubernetes accepts as a node name goes any further.
        if let Err(what) = crate::validate::dns_subdomain(&request.node) {
            let shown = shown_name(&request.node);
            log::warn!("{peer}: refused: node name {shown} is not a valid node name");
            return reply(
                Status::Refused,
                format!("node name {shown}: expected {what}"),
            );
        }
        if request.kind == RequestKind::Leave {
            return self.leave(request, peer);
        }
        if matches!(request.kind, RequestKind::Upgrade | RequestKind::Upgraded) {
            return self.upgrade(request, peer);
        }
        if request.kind == RequestKind::Release && request.role != JoinRole::Controller {
            return reply(
                Status::Refused,
                "only a controller gives the admission lease back".into(),
            );
        }
        if request.kind == RequestKind::Cluster {
            let Some(view) = &self.cluster else {
                return reply(
                    Status::Failed,
                    "this join service does not know its cluster".into(),
                );
            };
            let cluster = view.cluster();
            log::info!(
                "{} ({peer}) asks whether a cluster exists: {}",
                request.node,
                cluster
                    .as_ref()
                    .map(|c| format!("cluster {}", c.id))
                    .unwrap_or_else(|| "none here".into())
            );
            return Response {
                cluster,
                ..Response::plain(Status::Ok, "ok")
            };
        }
        if request.role == JoinRole::Controller || request.kind == RequestKind::Release {
            let Some(admission) = &self.admission else {
                return reply(
                    Status::Busy,
                    "this join service does not admit controller joins; ask another controller"
                        .into(),
                );
            };
            if request.kind == RequestKind::Release {
                admission.release(&request.node);
                log::info!(
                    "{} ({peer}) has joined the control plane; lease released",
                    request.node
                );
                return reply(Status::Ok, "released".into());
            }
            if let Err(busy) = admission.acquire(&request.node) {
                log::info!("{} ({peer}) waits: {busy}", request.node);
                return reply(Status::Busy, busy);
            }
            // Logged at once (the mint below may take seconds), so the log shows the
            // lease's holders in the order they held it.
            log::info!(
                "{} ({peer}) holds the control-plane join lease",
                request.node
            );
            if let Some(nodes) = &self.nodes {
                match nodes.replace(&request.node, peer.ip().to_canonical()) {
                    Ok(Some(removed)) => log::warn!(
                        "{} ({peer}) takes the place of a controller that is gone: removed {removed}",
                        request.node
                    ),
                    Ok(None) => {}
                    Err(why) => {
                        admission.release(&request.node);
                        log::info!("{} ({peer}) waits: {why}", request.node);
                        return reply(Status::Busy, why);
                    }
                }
            }
        }
        // A caller waiting on a mint (its own or another's, which goes on either way)
        // gives up in time to still be told so.
        let wait_until = deadline.checked_sub(ANSWER_TIME).unwrap_or(deadline);
        match self.materials.get(request.role, &request.node, wait_until) {
            Ok(mut material) => {
                // How long it took tells an operator whether the control plane is slow.
                log::info!(
                    "join material for {} ({peer}) as a {} ({:.1} s)",
                    request.node,
                    request.role,
                    started.elapsed().as_secs_f64()
                );
                if request.role == JoinRole::Worker {
                    material.join.node_credential = self.keys.node_secret(&request.node);
                }
                if material.join.pin.is_none() {
                    material.join.pin = Some(self.keys.pin());
                }
                Response {
                    material: Some(material.to_file_text()),
                    ..Response::plain(Status::Ok, "ok")
                }
            }
            Err(NoMaterial::Minting(why)) => {
                // The joiner keeps the lease: the mint goes on, for it.
                log::info!("{} ({peer}): {why}", request.node);
                reply(Status::NotReady, why)
            }
            Err(NoMaterial::Failed(why)) => {
                if request.role == JoinRole::Controller {
                    if let Some(admission) = &self.admission {
                        admission.release(&request.node);
                    }
                }
                log::info!("{} ({peer}): not ready: {why}", request.node);
                reply(Status::NotReady, why)
            }
        }
    }

    /// A node's upgrade turn: asked for, or given back with the version it now runs.
    fn upgrade(&self, request: &Request, peer: SocketAddr) -> Response {
        let reply = |status, message: String| Response::plain(status, message);
        let Some(upgrades) = &self.upgrades else {
            return reply(
                Status::Failed,
                "this join service does not hand out upgrade turns".into(),
            );
        };
        let Some(version) = request
            .kube_version
            .as_deref()
            .filter(|v| v.len() <= 64 && crate::distro::kube_version(v).is_some())
        else {
            return reply(
                Status::Refused,
                "an upgrade request names its version, such as v1.36.3".into(),
            );
        };
        let node = &request.node;
        if request.kind == RequestKind::Upgraded {
            return match upgrades.finish(node, version) {
                Ok(()) => {
                    log::info!("{node} ({peer}) has upgraded to {version}; its turn ends");
                    reply(Status::Ok, "turn ended".into())
                }
                Err(why) => reply(Status::Busy, why),
            };
        }
        match upgrades.acquire(node, request.role, version) {
            Ok(()) => {
                log::info!(
                    "{node} ({peer}), a {}, may upgrade to {version} now",
                    request.role
                );
                reply(Status::Ok, "your turn".into())
            }
            Err(why) => {
                log::info!("{node} ({peer}) waits to upgrade: {why}");
                reply(Status::Busy, why)
            }
        }
    }

    /// A worker's leave: cordon, drain and delete it through this controller.
    fn leave(&self, request: &Request, peer: SocketAddr) -> Response {
        let reply = |status, message: String| Response::plain(status, message);
        if request.role != JoinRole::Worker {
            return reply(
                Status::Refused,
                "only workers leave through the join service; a controller leaves with its own admin credentials".into(),
            );
        }
        let Some(nodes) = &self.nodes else {
            return reply(
                Status::Refused,
                "this join service does not remove nodes".into(),
            );
        };
        let drain = request
            .drain_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(300))
            .min(MAX_DRAIN);
        log::info!("{} ({peer}) asks to leave the cluster", request.node);
        match nodes.remove(&request.node, drain) {
            Ok(done) => {
                log::info!("{} ({peer}) left: {done}", request.node);
                reply(Status::Ok, done)
            }
            Err(why) => {
                log::warn!("{} ({peer}) could not leave: {why}", request.node);
                reply(Status::Failed, why)
            }
        }
    }

    /// The key that authenticates a request with credential `id` (`None`: the join
    /// secret), and what that key allows.
    fn key_for(&self, id: Option<&str>) -> Option<(ring::hmac::Key, Scope)> {
        match id {
            None => Some((self.keys.mac_key().clone(), Scope::Cluster)),
            Some(id) => match id.strip_prefix(super::keys::NODE_CREDENTIAL_PREFIX) {
                Some(node) => {
                    crate::validate::dns_subdomain(node).ok()?;
                    let secret = self.keys.node_secret(node)?;
                    Some((
                        super::keys::credential_key(&secret),
                        Scope::Node(node.to_owned()),
                    ))
                }
                None => self
                    .credentials
                    .lookup(id)
                    .map(|(key, role)| (key, Scope::Manual(role))),
            },
        }
    }

    /// Answers one connection whose request frame has arrived, by its deadline.
    fn handle(&self, arrived: Box<Arrived>) -> Result<(), String> {
        let Arrived {
            mut conn,
            sock,
            peer,
            body,
            tag,
            accepted,
            slot: _slot,
        } = *arrived;
        let deadline = accepted + CONNECTION_DEADLINE;
        let mut sock = DeadlineStream::until(sock, deadline);
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        let binding = exporter(tls.conn)?;
        let (body, tag) = self.respond(&body, &tag, &binding, peer, &mut |later| {
            tls.sock.extend_to(later)
        })?;
        proto::write_frame(&mut tls, &body, &tag).map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        let _ = tls.flush();
        Ok(())
    }

    /// The answer (body, tag) to one request frame (`body`, `tag`) that arrived on the
    /// TLS session whose exported keying material is `binding`: parsed, authenticated,
    /// carried out. Whatever the bytes, the answer is a response, never a panic; only one
    /// that proved its key is tagged. `extend` is given the later deadline of an
    /// authenticated request (the time its work may take) before that work begins, so
    /// the connection's deadline can be moved.
    pub fn respond(
        &self,
        body: &[u8],
        tag: &[u8],
        binding: &[u8],
        peer: SocketAddr,
        extend: &mut dyn FnMut(Instant),
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let request: Option<Request> = serde_json::from_slice(body).ok();
        let key = self.key_for(request.as_ref().and_then(|r| r.credential.as_deref()));
        let authentic = key
            .as_ref()
            .is_some_and(|(key, _)| proto::verify(key, proto::REQUEST_LABEL, binding, body, tag));
        let refuse = |message: &str| Response::plain(Status::Refused, message);
        let response = match (&request, authentic) {
            (Some(request), true) => match key.as_ref().map(|(_, scope)| scope) {
                Some(Scope::Manual(role)) if *role != request.role => {
                    refuse("this credential is for another role")
                }
                Some(Scope::Manual(_)) if request.kind == RequestKind::Leave => {
                    refuse("a join line's credential does not remove nodes")
                }
                Some(Scope::Manual(_))
                    if matches!(request.kind, RequestKind::Upgrade | RequestKind::Upgraded) =>
                {
                    refuse("a join line's credential does not upgrade nodes")
                }
                Some(Scope::Manual(_))
                    if request.kind == RequestKind::Join
                        && request
                            .credential
                            .as_deref()
                            .is_some_and(|id| self.credentials.used(id, &request.node)) =>
                {
                    refuse("this join line has been used already; make a new one with `bootstrap token create`")
                }
                Some(Scope::Node(name))
                    if !matches!(
                        request.kind,
                        RequestKind::Leave | RequestKind::Upgrade | RequestKind::Upgraded
                    ) || *name != request.node
                        || request.role != JoinRole::Worker =>
                {
                    refuse("a node's own credential only lets that worker leave or upgrade")
                }
                _ => {
                    // A caller that proved its key gets the time its request takes: the
                    // short deadline only guards against callers that prove nothing.
                    let work = if request.kind == RequestKind::Leave {
                        // Draining takes as long as it takes (bounded by the request).
                        let drain = request
                            .drain_timeout_secs
                            .map(Duration::from_secs)
                            .unwrap_or_default()
                            .min(MAX_DRAIN);
                        drain + LEAVE_SLACK
                    } else if request.kind == RequestKind::Upgrade
                        && request.role == JoinRole::Worker
                    {
                        // A worker's turn begins with its drain.
                        UPGRADE_DRAIN + LEAVE_SLACK
                    } else {
                        self.work_time
                    };
                    let deadline = Instant::now() + work;
                    extend(deadline);
                    let answer = self.answer(request, peer, deadline);
                    if let (Some(Scope::Manual(_)), Some(id)) =
                        (key.as_ref().map(|(_, scope)| scope), &request.credential)
                    {
                        if request.kind == RequestKind::Join && answer.material.is_some() {
                            self.credentials.consume(id, &request.node);
                        }
                    }
                    answer
                }
            },
            _ => {
                NOT_AUTHENTICATED.warn(|| {
                    format!("{peer}: request refused: not authenticated by the join secret")
                });
                refuse("not authenticated: the request does not prove the join secret")
            }
        };
        let body = serde_json::to_vec(&response).map_err(|e| e.to_string())?;
        // A caller that has not proved the secret gets no tag: it learns nothing it
        // could use against the key.
        let reply_key = if authentic { key.map(|(k, _)| k) } else { None };
        let tag = match &reply_key {
            Some(k) => proto::tag(k, proto::RESPONSE_LABEL, binding, &body)
                .as_ref()
                .to_vec(),
            None => vec![0u8; 32],
        };
        Ok((body, tag))
    }
}

/// Refusals of unauthenticated requests, logged at most once per interval.
static NOT_AUTHENTICATED: Throttled = Throttled::new(WARN_EVERY);

/// A caller's node name for a message or log line: quoted and escaped, and cut short,
/// since it may be anything up to the body limit.
fn shown_name(name: &str) -> String {
    const MAX: usize = 64;
    match name.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &name[..cut], name.len()),
        None => format!("{name:?}"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The session's exported keying material, which binds messages to this connection.
fn exporter(conn: &rustls::ServerConnection) -> Result<Vec<u8>, String> {
    conn.export_keying_material(vec![0u8; 32], proto::EXPORTER_LABEL, None)
        .map_err(|e| e.to_string())
}

/// What writing an answer may take, kept back from a connection's deadline.
const ANSWER_TIME: Duration = Duration::from_secs(1);

/// What a leave may take beyond its drain: cordon, delete and the answer.
pub const LEAVE_SLACK: Duration = Duration::from_secs(90);

/// Accepts connections until `stop` is set (checked at least every 50 ms), taking them
/// through [`intake`] and answering them on [`WORKERS`] threads.
pub fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<Box<Arrived>>(WORKERS * 4);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let rx = rx.clone();
        let service = service.clone();
        workers.push(std::thread::spawn(move || loop {
            let next = lock(&rx).recv();
            let Ok(arrived) = next else { break };
            let peer = arrived.peer;
            if arrived.accepted.elapsed() >= CONNECTION_DEADLINE {
                log::debug!("{peer}: connection deadline passed in the queue");
                continue;
            }
            if let Err(e) = service.handle(arrived) {
                log::debug!("{peer}: {e}");
            }
        }));
    }
    // std listens with a backlog of 128: a fleet booting at once overflows it and each
    // dropped SYN costs the joiner a 1 s retransmission. Listening again deepens it.
    let backlog = nix::sys::socket::Backlog::new(BACKLOG).map_err(io::Error::from)?;
    nix::sys::socket::listen(&listener, backlog).map_err(io::Error::from)?;
    let served = intake::run(
        &listener,
        &service.tls,
        service.max_per_peer,
        &stop,
        |arrived| {
            tx.try_send(arrived).map_err(|e| match e {
                mpsc::TrySendError::Full(a) | mpsc::TrySendError::Disconnected(a) => a,
            })
        },
    );
    drop(tx);
    for worker in workers {
        let _ = worker.join();
    }
    served
}
