//! The node-local API load balancer on loopback: connections pass through to the
//! controllers in turn, keep working while one controller is gone, and find it again
//! when it is back. The "API servers" are echo servers that say who they are.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bootstrap::api_proxy::{self, Backends};

/// An echo server answering `NAME:` + what it read, until stopped.
struct Upstream {
    address: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(name: &'static str, address: Option<&str>) -> Upstream {
        let listener = TcpListener::bind(address.unwrap_or("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let mut buf = [0u8; 64];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        let _ = conn.write_all(format!("{name}:").as_bytes());
                        let _ = conn.write_all(&buf[..n]);
                        let _ = conn.shutdown(Shutdown::Write);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Upstream {
            address,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request through the proxy: who answered, or `None` when the connection closed
/// without an answer.
fn ask(proxy: &str, word: &str) -> Option<String> {
    let mut conn = TcpStream::connect(proxy).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(word.as_bytes()).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    let (who, echoed) = answer.split_once(':')?;
    assert_eq!(echoed, word, "the bytes pass through unchanged");
    Some(who.to_owned())
}

#[test]
fn connections_go_to_any_controller_that_answers() {
    let a = Upstream::start("a", None);
    let mut b = Upstream::start("b", None);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let backends = Arc::new(Backends::new(vec![a.address.clone(), b.address.clone()]));
    let runner = {
        let stop = stop.clone();
        std::thread::spawn(move || api_proxy::run(listener, backends, stop))
    };

    let answers: Vec<String> = (0..6)
        .map(|i| ask(&proxy, &format!("x{i}")).unwrap())
        .collect();
    assert!(
        answers.contains(&"a".to_owned()) && answers.contains(&"b".to_owned()),
        "{answers:?}"
    );

    // b is gone: every connection still gets an answer, from a.
    let b_address = b.address.clone();
    b.stop();
    for i in 0..6 {
        assert_eq!(ask(&proxy, &format!("y{i}")).as_deref(), Some("a"));
    }

    // b comes back at the same address: within a few checks it takes connections again.
    let _b_again = Upstream::start("b", Some(&b_address));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_b = false;
    while Instant::now() < deadline && !seen_b {
        seen_b = ask(&proxy, "z").as_deref() == Some("b");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(seen_b, "b was not used again after it came back");

    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap().unwrap();
}

#[test]
fn with_no_controller_the_connection_closes_without_an_answer() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let backends = Arc::new(Backends::new(vec![dead]));
    let runner = {
        let stop = stop.clone();
        std::thread::spawn(move || api_proxy::run(listener, backends, stop))
    };
    assert_eq!(ask(&proxy, "hello"), None);
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap().unwrap();
}

#[test]
fn targets_are_the_controllers_api_ports_once_each() {
    let controllers = ["10.0.0.1", "fd00::2", "10.0.0.1", "cp-3.example"].map(String::from);
    assert_eq!(
        api_proxy::targets(&controllers, 6443),
        ["10.0.0.1:6443", "[fd00::2]:6443", "cp-3.example:6443"]
    );
}
