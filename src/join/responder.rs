//! While a controller waits for its turn to join, it still answers the one question a
//! first controller asks before it initialises — "do you belong to a cluster?" — with no,
//! so a cluster whose machines all boot at once is not slowed by `cluster.init_wait`.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::proto::ClusterInfo;
use super::server::{ClusterView, Minter, NoCredentials, Service};
use super::JoinKeys;
use crate::distro::{JoinMaterial, JoinRole};

/// Answers until dropped.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct NotJoinedYet;

impl Minter for NotJoinedYet {
    fn mint(&self, _role: JoinRole, _ttl: Duration) -> Result<JoinMaterial, String> {
        Err("this controller is still waiting to join; ask another".into())
    }
}

impl ClusterView for NotJoinedYet {
    fn cluster(&self) -> Option<ClusterInfo> {
        None
    }
}

/// Starts answering on the join port; `None` when the port is taken (this node's join
/// service already runs and answers for itself) or cannot be opened.
pub fn start(keys: JoinKeys, port: u16) -> Option<Responder> {
    let listener = TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .map_err(|e| log::debug!("not answering cluster questions on port {port}: {e}"))
        .ok()?;
    let service = Service::new(
        keys,
        Box::new(NotJoinedYet),
        Box::new(NoCredentials),
        None,
        Duration::from_secs(60),
    )
    .map_err(|e| log::warn!("cannot answer cluster questions: {e}"))
    .ok()?
    .with_cluster(Box::new(NotJoinedYet));
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        if let Err(e) = super::server::serve(listener, Arc::new(service), flag) {
            log::warn!("answering cluster questions stopped: {e}");
        }
    });
    log::debug!("answering cluster questions on port {port} while this controller waits");
    Some(Responder {
        stop,
        thread: Some(thread),
    })
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
