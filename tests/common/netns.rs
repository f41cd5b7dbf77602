//! Network namespaces for multi-node tests: a "switch" namespace with a bridge, one
//! namespace per node linked to it with a veth pair, and the processes run in them. All
//! of it goes when the [`Lab`] is dropped, also on a panic. Addresses exist only inside
//! these namespaces.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Node;

/// `ip …`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why this test cannot run here, if it cannot.
pub fn unsupported(probe_ns: &str) -> Option<String> {
    if !super::is_root() {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    match Command::new("ip")
        .args(["netns", "add", probe_ns])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Some(format!("no `ip` command ({e}); install iproute2")),
        Ok(out) if !out.status.success() => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip")
                .args(["netns", "del", probe_ns])
                .stdin(Stdio::null())
                .status();
            None
        }
    }
}

/// The namespaces, links and processes of one run; all of it goes when this is dropped,
/// also on a panic.
pub struct Lab {
    tag: String,
    pub switch: String,
    /// Namespaces created so far, the switch's first.
    namespaces: Vec<String>,
    /// Processes started (`ip netns exec` execs the program, so each is the bootstrap
    /// process itself), by name.
    children: Vec<(String, Child)>,
    /// Each machine's root, as last started (its units' logs go in the dump).
    roots: Vec<(String, PathBuf)>,
    pub work: tempfile::TempDir,
}

impl Lab {
    /// A switch namespace with a bridge holding `observer/24`, and a namespace per
    /// `(name, address)` node linked to it, with its address on `eth0` and — with
    /// `default_route` — a default route through the switch's address (so the node has
    /// a default-route address, as a real machine does; nothing leaves the namespaces).
    pub fn new(tag: &str, observer: &str, nodes: &[(&str, &str)], default_route: bool) -> Lab {
        let mut lab = Lab {
            tag: tag.to_owned(),
            switch: format!("{tag}-sw"),
            namespaces: Vec::new(),
            children: Vec::new(),
            roots: Vec::new(),
            work: tempfile::tempdir().unwrap(),
        };
        let sw = lab.switch.clone();
        lab.add_namespace(&sw);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &sw,
            "addr",
            "add",
            &format!("{observer}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (name, address) in nodes {
            let name = *name;
            let ns = lab.ns(name);
            lab.add_namespace(&ns);
            // The node's end is eth0 in its namespace; the switch's end is named after
            // the node. Both are created in place, never in the root namespace.
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", name, "netns",
                &sw,
            ]);
            ip(&["-n", &sw, "link", "set", name, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", name, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            if default_route {
                ip(&["-n", &ns, "route", "add", "default", "via", observer]);
            }
        }
        lab
    }

    pub fn add_namespace(&mut self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.namespaces.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.tag)
    }

    /// The node's eth0 up or down, from inside its namespace.
    pub fn link(&self, node: &str, up: bool) {
        let ns = self.ns(node);
        ip(&[
            "-n",
            &ns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
    }

    /// `node.command(args)` run inside the node's namespace, with exactly its environment.
    pub fn command(&self, name: &str, node: &Node, args: &[&str]) -> Command {
        let inner = node.command(args);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(name)])
            .arg(inner.get_program())
            .args(inner.get_args());
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn log(&self, process: &str) -> PathBuf {
        self.work.path().join(format!("{process}.log"))
    }

    /// Starts `bootstrap args` on `name` as process `process`, stdout and stderr to
    /// `<process>.log`.
    pub fn spawn(&mut self, process: &str, name: &str, node: &Node, args: &[&str]) {
        let log = fs::File::create(self.log(process)).unwrap();
        let child = self
            .command(name, node, args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {process}: {e}"));
        self.children.push((process.to_owned(), child));
        self.remember_root(name, node);
    }

    fn remember_root(&mut self, name: &str, node: &Node) {
        self.roots.retain(|(n, _)| n != name);
        self.roots
            .push((name.to_owned(), node.root().to_path_buf()));
    }

    /// Keeps a process started elsewhere (its output already going where it should),
    /// to wait for and clean up like the others.
    pub fn adopt(&mut self, process: &str, child: Child) {
        self.children.push((process.to_owned(), child));
    }

    pub fn text(&self, process: &str) -> String {
        fs::read_to_string(self.log(process)).unwrap_or_default()
    }

    pub fn child(&mut self, process: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(p, _)| p == process)
            .unwrap_or_else(|| panic!("no process {process}"))
            .1
    }

    /// The exit code, if the process has ended.
    pub fn exited(&mut self, process: &str) -> Option<i32> {
        self.child(process)
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Waits (bounded) for the process to end; its exit code.
    pub fn wait(&mut self, process: &str, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exited(process) {
                return code;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{process} did not finish within {timeout:?}\n{}",
                    self.text(process)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self, process: &str) {
        let child = self.child(process);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs `bootstrap args` on `name` to its end (bounded); its exit code and output.
    pub fn run(&mut self, process: &str, name: &str, node: &Node, args: &[&str]) -> (i32, String) {
        self.spawn(process, name, node, args);
        let code = self.wait(process, Duration::from_secs(90));
        (code, self.text(process))
    }

    /// Runs `bootstrap args` on `name` to its end (bounded), stdout apart from the log.
    pub fn run_split(
        &mut self,
        process: &str,
        name: &str,
        node: &Node,
        args: &[&str],
    ) -> (i32, String) {
        let out = self.work.path().join(format!("{process}.out"));
        let log = fs::File::create(self.log(process)).unwrap();
        let child = self
            .command(name, node, args)
            .stdout(fs::File::create(&out).unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {process}: {e}"));
        self.children.push((process.to_owned(), child));
        self.remember_root(name, node);
        let code = self.wait(process, Duration::from_secs(90));
        (code, fs::read_to_string(out).unwrap_or_default())
    }

    /// A program of the node's root (`args[0]`, a host path) run inside its namespace
    /// with the node's environment — a stand-in as bootstrap would run it.
    pub fn raw_command(&self, name: &str, node: &Node, args: &[&str]) -> Command {
        let inner = node.command(&[]);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(name)])
            .arg(node.path(args[0]))
            .args(&args[1..]);
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Kills every process inside the node's namespace (its machine is gone).
    pub fn kill_all(&self, node: &str) {
        kill_in(&self.ns(node));
    }

    /// Everything the processes wrote, and the end of each machine's unit logs (its join
    /// service's among them), for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (process, _) in &self.children {
            out.push_str(&format!("===== {process}\n{}\n", self.text(process)));
        }
        for (name, root) in &self.roots {
            for (log, text) in super::unit_logs(root) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(UNIT_LOG_TAIL)..];
                out.push_str(&format!(
                    "===== {name}: {} (last {} lines)\n{}\n",
                    log.file_name().unwrap_or_default().to_string_lossy(),
                    tail.len(),
                    tail.join("\n")
                ));
            }
        }
        out
    }
}

/// Lines of each unit log a dump shows.
const UNIT_LOG_TAIL: usize = 60;

/// SIGKILL to every process inside namespace `ns`.
fn kill_in(ns: &str) {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything still inside our namespaces (stand-ins a killed `up` had started) was
        // started by this test: end it by pid.
        for ns in &self.namespaces {
            kill_in(ns);
        }
        // Node namespaces first (their veths go with them), then the switch.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (the rest of the test
/// stays where it is).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    extern "C" {
        fn setns(fd: i32, nstype: i32) -> i32;
    }
    const CLONE_NEWNET: i32 = 0x4000_0000;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this thread only, with a namespace file kept open for the call.
        let rc = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the thread in the namespace panicked")
}

/// Waits (bounded) until `ready` holds.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("join_netns: gave up waiting for {what} after {timeout:?}");
    false
}
