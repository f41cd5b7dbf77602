//! The join service's front door: accepts connections, caps them per peer (an IPv4
//! address, or an IPv6 /64 — one host's usual share) and in total before they have
//! authenticated, and drives each TLS handshake and the first request frame on one
//! readiness-driven thread (`poll`). A silent or trickling socket therefore costs a
//! descriptor and a TLS state for at most [`PRE_AUTH_DEADLINE`], never a worker thread;
//! only a connection whose whole request frame has arrived goes to the workers.
//!
//! Why not blocking reads with short deadlines on the workers: an attacker reconnecting
//! as fast as it is dropped keeps every worker busy for the whole deadline, and honest
//! joiners wait behind it in the queue. Here the workers only ever see complete frames.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::proto::{MAX_BODY, TAG_LEN};
use super::throttle::{Throttled, WARN_EVERY};

/// How long a new connection has for its TLS handshake and its whole request frame.
pub const PRE_AUTH_DEADLINE: Duration = Duration::from_secs(5);
/// Connections in the handshake-and-request stage at once. At the cap the oldest one that
/// has sent nothing for [`EVICT_AFTER`] is dropped for the newest; while there is none,
/// newer connections wait in the kernel's backlog (their deadline counts from accept), so
/// a burst of honest joiners, each of which speaks first, is served in turn rather than
/// dropped for each other.
pub const MAX_PRE_AUTH: usize = 256;
/// How long a silent connection keeps its place at the cap.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);
/// How long the loop sleeps at most before it looks at `stop` and the deadlines again.
const TICK: Duration = Duration::from_millis(50);

/// A connection whose request frame has arrived, for a worker.
pub struct Arrived {
    pub conn: rustls::ServerConnection,
    /// Blocking again.
    pub sock: TcpStream,
    pub peer: SocketAddr,
    pub body: Vec<u8>,
    pub tag: Vec<u8>,
    /// When it was accepted: its deadline counts from here.
    pub accepted: Instant,
    /// Its place in the per-peer count, given back when this is dropped.
    pub slot: PeerSlot,
}

/// The peer a connection counts against: IPv4 addresses one by one (IPv4-mapped IPv6
/// ones too), IPv6 addresses by their /64.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Open connections per peer.
#[derive(Default)]
pub struct Peers(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`Peers`], given back on drop (whatever ends it).
pub struct PeerSlot {
    peers: Arc<Peers>,
    key: IpAddr,
}

impl Peers {
    fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let key = peer_key(ip);
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            key,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A connection in the handshake-and-request stage.
struct Pending {
    conn: rustls::ServerConnection,
    sock: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    /// The request frame so far (plaintext).
    frame: FrameBuf,
    slot: PeerSlot,
    /// It has sent something (a joiner's ClientHello comes first).
    heard: bool,
}

/// Where the oldest connection that may be dropped at the cap is, and from when.
fn evictable(pending: &VecDeque<Pending>) -> Option<(usize, Instant)> {
    pending
        .iter()
        .enumerate()
        .find(|(_, p)| !p.heard)
        .map(|(i, p)| (i, p.accepted + EVICT_AFTER))
}

/// Refusals logged at most once per [`WARN_EVERY`] each.
static OVER_PEER_CAP: Throttled = Throttled::new(WARN_EVERY);
static OVER_TOTAL_CAP: Throttled = Throttled::new(WARN_EVERY);
static WORKERS_FULL: Throttled = Throttled::new(WARN_EVERY);

/// Accepts on `listener` until `stop` is set; each connection whose request frame
/// arrives in time goes to `hand_off`, which gives it back when no worker can take it
/// (it is then closed).
pub fn run(
    listener: &TcpListener,
    tls: &Arc<rustls::ServerConfig>,
    max_per_peer: usize,
    stop: &AtomicBool,
    mut hand_off: impl FnMut(Box<Arrived>) -> Result<(), Box<Arrived>>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let peers = Arc::new(Peers::default());
    // Oldest first.
    let mut pending: VecDeque<Pending> = VecDeque::new();
    // Whole requests the workers had no room for yet: held (they count against the cap,
    // so the listener waits too) and offered again each round until their pre-auth
    // deadline, rather than closed while a burst is answered.
    let mut held: VecDeque<Box<Arrived>> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        held.retain(|a| now < a.accepted + PRE_AUTH_DEADLINE);
        while let Some(arrived) = held.pop_front() {
            if let Err(back) = hand_off(arrived) {
                held.push_front(back);
                break;
            }
        }
        pending.retain(|p| {
            let live = now < p.accepted + PRE_AUTH_DEADLINE;
            if !live {
                log::debug!("{}: no request before the pre-auth deadline", p.peer);
            }
            live
        });
        // At the cap, the listener waits (the kernel queues) until the oldest may go.
        let full = pending.len() + held.len() >= MAX_PRE_AUTH;
        let evict_at = evictable(&pending).filter(|_| full).map(|(_, at)| at);
        let accepting = !full || evict_at.is_some_and(|at| at <= now);
        let wait = pending
            .front()
            .map(|p| (p.accepted + PRE_AUTH_DEADLINE).saturating_duration_since(now))
            .unwrap_or(TICK)
            // Held requests are offered again soon.
            .min(if held.is_empty() {
                TICK
            } else {
                Duration::from_millis(5)
            })
            .min(evict_at.map_or(TICK, |at| at.saturating_duration_since(now)))
            .clamp(Duration::from_millis(1), TICK);
        let (listener_ready, ready) = wait_ready(listener, accepting, &pending, wait)?;
        let mut next = VecDeque::with_capacity(pending.len());
        for (mut p, ready) in pending.drain(..).zip(ready) {
            if !ready {
                next.push_back(p);
                continue;
            }
            match advance(&mut p) {
                Ok(None) => next.push_back(p),
                Ok(Some((body, tag))) => {
                    if p.sock.set_nonblocking(false).is_err() {
                        continue;
                    }
                    let arrived = Box::new(Arrived {
                        conn: p.conn,
                        sock: p.sock,
                        peer: p.peer,
                        body,
                        tag,
                        accepted: p.accepted,
                        slot: p.slot,
                    });
                    if !held.is_empty() {
                        held.push_back(arrived);
                    } else if let Err(back) = hand_off(arrived) {
                        WORKERS_FULL.warn(|| {
                            format!(
                                "{}: every worker is busy and the queue is full; held",
                                back.peer
                            )
                        });
                        held.push_back(back);
                    }
                }
                Err(why) => log::debug!("{}: {why}", p.peer),
            }
        }
        pending = next;
        if listener_ready && accepting {
            let room = MAX_PRE_AUTH.saturating_sub(held.len());
            accept_ready(listener, tls, &peers, max_per_peer, room, &mut pending);
        }
    }
    Ok(())
}

/// Waits up to `wait` for the listener (when `accepting`) or a pending connection to be
/// ready; which are.
fn wait_ready(
    listener: &TcpListener,
    accepting: bool,
    pending: &VecDeque<Pending>,
    wait: Duration,
) -> io::Result<(bool, Vec<bool>)> {
    let mut fds = Vec::with_capacity(pending.len() + 1);
    let listen_for = if accepting {
        PollFlags::POLLIN
    } else {
        PollFlags::empty()
    };
    fds.push(PollFd::new(listener.as_fd(), listen_for));
    for p in pending {
        let mut events = PollFlags::POLLIN;
        if p.conn.wants_write() {
            events |= PollFlags::POLLOUT;
        }
        fds.push(PollFd::new(p.sock.as_fd(), events));
    }
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
    match nix::poll::poll(&mut fds, timeout) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    let ready: Vec<bool> = fds
        .iter()
        .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
        .collect();
    Ok((ready[0], ready[1..].to_vec()))
}

/// Accepts what the kernel has queued, within the caps.
fn accept_ready(
    listener: &TcpListener,
    tls: &Arc<rustls::ServerConfig>,
    peers: &Arc<Peers>,
    max_per_peer: usize,
    room: usize,
    pending: &mut VecDeque<Pending>,
) {
    // Bounded, so a flood of connects cannot starve the connections already pending.
    for _ in 0..MAX_PRE_AUTH {
        if pending.len() >= room {
            match evictable(pending) {
                Some((i, at)) if at <= Instant::now() => {
                    if let Some(silent) = pending.remove(i) {
                        OVER_TOTAL_CAP.warn(|| {
                            format!(
                                "{}: {MAX_PRE_AUTH} connections without a request yet; the oldest silent one closed",
                                silent.peer
                            )
                        });
                    }
                }
                // The rest wait in the kernel's backlog for a place.
                _ => return,
            }
        }
        let (sock, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors, say: the next round tries again.
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
        };
        let accepted = Instant::now();
        let Some(slot) = peers.admit(peer.ip(), max_per_peer) else {
            OVER_PEER_CAP.warn(|| {
                format!("{peer}: too many connections from this address (or its /64); closed")
            });
            continue;
        };
        if sock.set_nonblocking(true).is_err() {
            continue;
        }
        let _ = sock.set_nodelay(true);
        let Ok(conn) = rustls::ServerConnection::new(tls.clone()) else {
            continue;
        };
        pending.push_back(Pending {
            conn,
            sock,
            peer,
            accepted,
            frame: FrameBuf::default(),
            slot,
            heard: false,
        });
    }
}

/// Moves one connection on as far as what has arrived allows: the whole frame (body,
/// tag), not yet, or why it is dropped.
#[allow(clippy::type_complexity)]
fn advance(p: &mut Pending) -> Result<Option<(Vec<u8>, Vec<u8>)>, String> {
    loop {
        if let Some(frame) = take_frame(p)? {
            flush(p)?;
            return Ok(Some(frame));
        }
        match p.conn.read_tls(&mut p.sock) {
            Ok(0) => return Err("closed before a whole request".into()),
            Ok(_) => {
                p.heard = true;
                p.conn
                    .process_new_packets()
                    .map_err(|e| format!("TLS: {e}"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    flush(p)?;
    Ok(None)
}

/// Writes what TLS has to send (handshake messages) as far as the socket takes it.
fn flush(p: &mut Pending) -> Result<(), String> {
    while p.conn.wants_write() {
        match p.conn.write_tls(&mut p.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Moves decrypted bytes into the frame, never past its end; the frame once whole.
#[allow(clippy::type_complexity)]
fn take_frame(p: &mut Pending) -> Result<Option<(Vec<u8>, Vec<u8>)>, String> {
    p.frame.take_from(&mut p.conn.reader())
}

/// A request frame (`[u32 length][body][tag]`) assembled from what a connection has
/// sent so far, reading never past its end (whatever follows belongs to nobody).
#[derive(Debug, Default)]
pub struct FrameBuf {
    frame: Vec<u8>,
}

impl FrameBuf {
    /// Reads from `input` until the frame is whole (its body and tag), the input would
    /// block (`Ok(None)`: call again when more has arrived), or the frame is refused:
    /// a length over [`MAX_BODY`], the input closed, or a read failed.
    #[allow(clippy::type_complexity)]
    pub fn take_from(
        &mut self,
        input: &mut impl Read,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, String> {
        loop {
            let wanted = match self.frame.get(..4) {
                Some(len) => {
                    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    if len > MAX_BODY {
                        return Err(format!("request of {len} bytes is over the limit"));
                    }
                    4 + len + TAG_LEN
                }
                None => 4,
            };
            if self.frame.len() == wanted && wanted > 4 {
                let mut frame = std::mem::take(&mut self.frame);
                let tag = frame.split_off(wanted - TAG_LEN);
                let body = frame.split_off(4);
                return Ok(Some((body, tag)));
            }
            let have = self.frame.len();
            let mut chunk = vec![0u8; (wanted - have).min(16 * 1024)];
            match input.read(&mut chunk) {
                Ok(0) => return Err("closed before a whole request".into()),
                Ok(n) => self.frame.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_count_per_64_and_ipv4_per_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(peer_key(mapped), v4);
        assert_ne!(peer_key("10.0.0.2".parse().unwrap()), peer_key(v4));
    }

    #[test]
    fn a_peer_slot_is_given_back_when_dropped() {
        let peers = Arc::new(Peers::default());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let first = peers.admit(a, 2).unwrap();
        let _second = peers.admit(b, 2).unwrap();
        assert!(peers.admit(a, 2).is_none(), "same /64: over the cap");
        drop(first);
        assert!(peers.admit(b, 2).is_some());
    }
}
