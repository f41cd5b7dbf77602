//! Test harness: a temp `--root` shaped like a node, stand-ins on `PATH`, and helpers to
//! run the real binary against it and look at what it did.
#![allow(dead_code)]

pub mod crash;
pub mod crash_normalise;
pub mod netns;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::SystemTime;

pub const BIN: &str = env!("CARGO_BIN_EXE_bootstrap");

/// The result of one run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A node: a temp root, a log of stand-in calls, and extra environment.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

pub fn standins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standins")
}

impl Node {
    /// An empty root with nothing in it.
    pub fn bare() -> Node {
        Node {
            dir: tempfile::tempdir().expect("temp dir"),
            env: Vec::new(),
        }
    }

    /// A root that looks like a fresh Debian node: systemd running, cgroup v2, no
    /// modules loaded, ip_forward off, no swap, and a k3s cluster image.
    pub fn new() -> Node {
        let mut node = Node::bare();
        // Most tests are about other phases: the registry would need a real server to
        // answer its readiness probe. The runtime tests turn it back on (`with_registry`).
        node.env
            .push(("BOOTSTRAP_REGISTRY__ENABLED".into(), "false".into()));
        node.write("/proc/sys/kernel/hostname", "node-1\n");
        node.write("/proc/sys/net/ipv4/ip_forward", "0\n");
        node.write("/proc/modules", "");
        node.write(
            "/proc/swaps",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
        );
        node.write(
            "/sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory pids\n",
        );
        node.write("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n");
        fs::create_dir_all(node.path("/run/systemd/system")).unwrap();
        fs::create_dir_all(node.path("/etc/systemd/system")).unwrap();
        node.image("k3s", "v1.31.4+k3s1");
        node
    }

    /// Puts a cluster image with this ClusterRuntime (and the binaries it needs) at the
    /// default rootfs.dir.
    pub fn image(&self, runtime: &str, version: &str) {
        let binaries: &[&str] = match runtime {
            "k3s" => &["k3s"],
            "k0s" => &["k0s"],
            _ => &["kubeadm", "kubelet", "kubectl"],
        };
        // The kube stand-in (tests/standins/kube-standin), named and versioned like the
        // real binary; its logic is found through STANDIN_LIB (see `command`).
        let launcher = fs::read_to_string(standins().join("kube-standin")).unwrap();
        for bin in binaries {
            let text = launcher
                .replace("@NAME@", bin)
                .replace("@VERSION@", version);
            self.write_mode(
                &format!("/var/lib/bootstrap/rootfs/bin/{bin}"),
                &text,
                0o755,
            );
        }
        // The local registry (on by default); a stand-in, since only the runtime tests
        // start it for real (and they install the real one).
        self.write_mode(
            "/var/lib/bootstrap/rootfs/bin/registry",
            "#!/bin/sh\n",
            0o755,
        );
        if binaries.contains(&"kubeadm") {
            // kubeadm runs on the host containerd: a stand-in that checks its config and
            // opens the socket when the stand-in systemctl really starts it.
            let standin = std::fs::read_to_string(standins().join("containerd-standin")).unwrap();
            self.write_mode("/var/lib/bootstrap/rootfs/bin/containerd", &standin, 0o755);
            for bin in ["runc", "containerd-shim-runc-v2", "ctr"] {
                self.write_mode(
                    &format!("/var/lib/bootstrap/rootfs/bin/{bin}"),
                    "#!/bin/sh\n",
                    0o755,
                );
            }
        }
        self.write(
            "/var/lib/bootstrap/rootfs/Metadata",
            &format!(
                r#"{{"version":"{version}","arch":"{}","ClusterRuntime":"{runtime}"}}"#,
                arch()
            ),
        );
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The real path of a host path.
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root().join(host_path.trim_start_matches('/'))
    }

    pub fn write(&self, host_path: &str, contents: &str) {
        let p = self.path(host_path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
    }

    pub fn write_mode(&self, host_path: &str, contents: &str, mode: u32) {
        self.write(host_path, contents);
        fs::set_permissions(self.path(host_path), fs::Permissions::from_mode(mode)).unwrap();
    }

    pub fn read(&self, host_path: &str) -> Option<String> {
        fs::read_to_string(self.path(host_path)).ok()
    }

    pub fn exists(&self, host_path: &str) -> bool {
        self.path(host_path).exists()
    }

    pub fn config(&self, yaml: &str) {
        self.write("/etc/bootstrap/config.yaml", yaml);
    }

    /// A second cluster image of `runtime` at `version` in this node's folder `dir` (the
    /// one `upgrade --rootfs DIR` moves to).
    pub fn image_in(&self, runtime: &str, version: &str, dir: &str) {
        let other = Node::bare();
        other.image(runtime, version);
        copy_tree(&other.path("/var/lib/bootstrap/rootfs"), &self.path(dir));
    }

    /// Turns the local registry (off by default in tests) back on.
    pub fn with_registry(mut self) -> Node {
        self.env.retain(|(k, _)| k != "BOOTSTRAP_REGISTRY__ENABLED");
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Node {
        self.env.push((key.to_owned(), value.to_owned()));
        // Units run for real include the join service, which listens on join.port of
        // every address: test binaries run side by side (scripts/run-tests.sh), so each
        // such node gets a port of its own unless the test chose one.
        if key == "STANDIN_REAL_UNITS" && !self.env.iter().any(|(k, _)| k == "BOOTSTRAP_JOIN__PORT")
        {
            self.env
                .push(("BOOTSTRAP_JOIN__PORT".to_owned(), free_port().to_string()));
        }
        self
    }

    /// Where the kube stand-ins keep this node's cluster (unless STANDIN_CLUSTER points
    /// several nodes at one).
    pub fn standin_cluster(&self) -> PathBuf {
        self.root().join(".standin-cluster")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(".standin.log")
    }

    /// What the stand-ins were asked, one call a line.
    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The environments the stand-ins saw.
    pub fn call_envs(&self) -> String {
        fs::read_to_string(format!("{}.env", self.log_path().display())).unwrap_or_default()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--root").arg(self.root()).args(args);
        // Only what the test sets reaches the binary: a stray BOOTSTRAP_* in the
        // developer's shell would be read as configuration.
        for (k, _) in std::env::vars() {
            if k.starts_with("BOOTSTRAP_") || k.starts_with("STANDIN_") {
                cmd.env_remove(k);
            }
        }
        let path = format!(
            "{}:{}",
            standins().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path)
            .env("STANDIN_ROOT", self.root())
            .env("STANDIN_LOG", self.log_path())
            .env("STANDIN_LIB", standins());
        if !is_root() {
            cmd.arg("--ignore-preflight").arg("root");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        to_run(self.command(args).output().expect("run bootstrap"))
    }

    /// One run with extra environment.
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        to_run(cmd.output().expect("run bootstrap"))
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bootstrap")
    }

    /// Every file under the root (except the stand-in logs) with its size, mode and
    /// modification time: equal snapshots mean nothing was written.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, (u64, u32, SystemTime, Vec<u8>)> {
        let mut out = BTreeMap::new();
        walk(self.root(), self.root(), &mut out);
        out
    }

    /// Files under the root, except the stand-ins' own bookkeeping, the kernel's state the
    /// stand-ins keep under /proc, and k3s's node password (k3s-uninstall.sh keeps
    /// `/etc/rancher/node` on purpose, and so does reset): what a reset must take away.
    pub fn installed_files(&self) -> std::collections::BTreeSet<PathBuf> {
        self.snapshot()
            .into_keys()
            .filter(|p| {
                let s = p.to_string_lossy();
                !s.contains(".standin") && !s.starts_with("proc/") && !s.starts_with("etc/rancher")
            })
            .collect()
    }

    /// Every file's text under the root, excluding the given host paths.
    pub fn all_text(&self, except: &[&str]) -> String {
        let mut text = String::new();
        for (path, (_, _, _, bytes)) in self.snapshot() {
            let host = format!("/{}", path.display());
            if except.contains(&host.as_str()) {
                continue;
            }
            text.push_str(&format!(
                "=== {host}\n{}\n",
                String::from_utf8_lossy(&bytes)
            ));
        }
        text
    }
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u64, u32, SystemTime, Vec<u8>)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".standin") {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(base).unwrap().to_path_buf();
        if meta.is_dir() {
            out.insert(
                rel,
                (
                    0,
                    meta.permissions().mode(),
                    meta.modified().unwrap(),
                    Vec::new(),
                ),
            );
            walk(base, &path, out);
        } else {
            let bytes = fs::read(&path).unwrap_or_default();
            out.insert(
                rel,
                (
                    meta.len(),
                    meta.permissions().mode(),
                    meta.modified().unwrap(),
                    bytes,
                ),
            );
        }
    }
}

pub fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A TCP port nothing listens on right now, on any address (so also on loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The host's architecture in cluster-image terms.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A join secret that passes validation (from `bootstrap secret generate`).
pub const SECRET: &str =
    "bjs1-27c42150f3dbcf4ee0d3df01457f7b1133bd45ad135500a7e0ec278242c40599-20c955b4";

/// Stops every process the stand-in started, and what they started in turn.
pub struct Units<'a>(pub &'a Node);

impl Drop for Units<'_> {
    fn drop(&mut self) {
        let dir = self.0.path("/.standin-systemd/pids");
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(pid) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(pid) = pid.trim().parse::<i32>() else {
                continue;
            };
            // Everything in the unit's mount namespace: the daemon, shims, containers.
            // A unit run in the test's own mount namespace (the join service) is only
            // itself: sweeping that namespace would kill every process of the machine.
            let own = fs::read_link("/proc/self/ns/mnt").ok();
            let ns = fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .ok()
                .filter(|ns| Some(ns) != own.as_ref());
            let mut victims = vec![pid];
            if let (Some(ns), Ok(procs)) = (ns, fs::read_dir("/proc")) {
                for p in procs.flatten() {
                    let Ok(other) = p.file_name().to_string_lossy().parse::<i32>() else {
                        continue;
                    };
                    if fs::read_link(format!("/proc/{other}/ns/mnt")).ok().as_ref() == Some(&ns) {
                        victims.push(other);
                    }
                }
            }
            for v in victims {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(v),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Copies a folder tree (files, folders, links), as a template for each run.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_file() {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Compares `actual` with `tests/golden/NAME`; `UPDATE_GOLDEN=1` rewrites the file.
pub fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    assert_eq!(
        expected,
        actual,
        "{} differs; if the change is intended, run with UPDATE_GOLDEN=1",
        path.display()
    );
}

/// `systemd-analyze verify --root` on a tree holding the unit `name`, the binaries it runs
/// (`(path in the tree, file to copy)`) and the system's own units (linked in). Returns
/// whether it passed, with its output; only complaints about this unit count, since the
/// system's units may draw warnings of their own under another root.
pub fn systemd_verify(name: &str, text: &str, binaries: &[(&str, &str)]) -> (bool, String) {
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        panic!("systemd-analyze is missing: run scripts/test.sh, which installs systemd");
    };
    assert!(version.status.success());
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    fs::create_dir_all(r.join("usr/lib")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/systemd", r.join("usr/lib/systemd")).unwrap();
    fs::write(r.join("etc/systemd/system").join(name), text).unwrap();
    for (at, from) in binaries {
        let dest = r.join(at.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    }
    let out = std::process::Command::new("timeout")
        .arg("60")
        .arg("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg(name)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let about_ours = stderr.lines().any(|l| l.contains(name));
    (
        out.status.success() && !about_ours,
        format!("{}\n{stderr}", out.status),
    )
}

/// Runs a command with output to files, killing it after `timeout`.
pub fn run_bounded(
    command: &mut std::process::Command,
    work: &Path,
    timeout: std::time::Duration,
) -> (std::process::ExitStatus, String, String) {
    let stdout_path = work.join("cmd.stdout");
    let stderr_path = work.join("cmd.stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("wait") {
            Some(status) => break status,
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{command:?} did not finish within {timeout:?}");
            }
            None => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    (status, stdout, stderr)
}

/// Processes other than `except` with this node's stand-in environment: the stand-ins
/// bootstrap ran and whatever they started.
pub fn standin_processes(node: &Node, except: u32) -> Vec<i32> {
    let needle = format!("STANDIN_ROOT={}\0", node.root().display());
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid as u32 == except {
            continue;
        }
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if String::from_utf8_lossy(&env).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Each unit log the stand-in `systemctl` kept under `root` (`.standin-systemd/*.log`),
/// in name order, with its text.
pub fn unit_logs(root: &Path) -> Vec<(PathBuf, String)> {
    let mut logs: Vec<PathBuf> = fs::read_dir(root.join(".standin-systemd"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.into_iter()
        .map(|log| {
            let text = fs::read_to_string(&log).unwrap_or_default();
            (log, text)
        })
        .collect()
}
