//! A node-local TCP load balancer for the Kubernetes API (`bootstrap apiserver-proxy`):
//! it listens on loopback and passes each connection through — TLS stays end to end — to
//! a controller whose API port accepts connections, so a node reaches the API while any
//! one controller is down. It is what kubeadm nodes of a cluster without
//! `cluster.endpoint` use as their `controlPlaneEndpoint`; k3s agents and k0s's
//! node-local load balancing do the same for themselves.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the proxy listens on every node: not 6443, which a controller's own API server
/// binds on every address.
pub const LISTEN: &str = "127.0.0.1:6444";
/// How often each controller's API port is tried.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long connecting to a controller may take, in a check or for a client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections passed through at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 1024;

/// The controllers' API endpoints (`host:port`) and which answered the last check.
pub struct Backends {
    targets: Vec<String>,
    healthy: Mutex<Vec<bool>>,
    next: AtomicUsize,
}

impl Backends {
    pub fn new(targets: Vec<String>) -> Backends {
        let healthy = Mutex::new(vec![true; targets.len()]);
        Backends {
            targets,
            healthy,
            next: AtomicUsize::new(0),
        }
    }

    fn connect(target: &str) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{target}: no address"));
        for addr in target.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Tries every controller once and records which accepted a connection.
    pub fn check(&self) {
        let now: Vec<bool> = self
            .targets
            .iter()
            .map(|t| Self::connect(t).is_ok())
            .collect();
        let mut healthy = self.healthy.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (was, is)) in healthy.iter().zip(&now).enumerate() {
            if was != is {
                let target = &self.targets[i];
                if *is {
                    log::info!("API server {target} answers again");
                } else {
                    log::warn!(
                        "API server {target} does not answer; passing connections to the others"
                    );
                }
            }
        }
        *healthy = now;
    }

    /// A connection to a controller: the healthy ones in turn (round robin), then the
    /// others, since a check may be up to a few seconds old.
    pub fn open(&self) -> io::Result<(String, TcpStream)> {
        let healthy = self
            .healthy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let order = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| healthy[i])
            .chain((0..n).map(|i| (start + i) % n).filter(|&i| !healthy[i]));
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no API server is listed");
        for i in order {
            match Self::connect(&self.targets[i]) {
                Ok(stream) => return Ok((self.targets[i].clone(), stream)),
                Err(e) => last = io::Error::new(e.kind(), format!("{}: {e}", self.targets[i])),
            }
        }
        Err(last)
    }
}

/// Serves until `stop` is set: checks the controllers every few seconds and passes each
/// accepted connection to one of them.
pub fn run(
    listener: TcpListener,
    backends: Arc<Backends>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let checker = {
        let backends = backends.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                backends.check();
                let mut waited = Duration::ZERO;
                while waited < CHECK_EVERY && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    waited += Duration::from_millis(100);
                }
            }
        })
    };
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, peer)) => {
                if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    log::warn!("{peer}: {MAX_CONNECTIONS} connections already open; closed");
                    continue;
                }
                let _ = client.set_nonblocking(false);
                active.fetch_add(1, Ordering::Relaxed);
                let backends = backends.clone();
                let active = active.clone();
                std::thread::spawn(move || {
                    if let Err(e) = pass(client, &backends) {
                        log::debug!("{peer}: {e}");
                    }
                    active.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _ = checker.join();
    Ok(())
}

/// Copies both ways between `client` and a controller until both sides are done.
fn pass(client: TcpStream, backends: &Backends) -> io::Result<()> {
    let (target, upstream) = match backends.open() {
        Ok(open) => open,
        Err(e) => {
            log::warn!("no API server takes the connection: {e}");
            return Err(e);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = (client.try_clone()?, client);
    let (mut upstream_read, mut upstream_write) = (upstream.try_clone()?, upstream);
    let up = std::thread::spawn(move || {
        let _ = copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(Shutdown::Write);
    });
    let _ = copy(&mut upstream_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Write);
    let _ = up.join();
    log::debug!("connection through {target} closed");
    Ok(())
}

fn copy(from: &mut TcpStream, to: &mut TcpStream) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// The API endpoints of `controllers` (addresses or names) on `port`.
pub fn targets(controllers: &[String], port: u16) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    controllers
        .iter()
        .map(|c| host_port(c, port))
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

/// Binds the listen address.
pub fn listen(address: &str) -> io::Result<TcpListener> {
    let addr: SocketAddr = address
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{address}: {e}")))?;
    TcpListener::bind(addr)
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
